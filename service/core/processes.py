"""Helpers for the processes Tailor starts (training children, vLLM servers)."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send this process `sig` when its parent dies, however the parent dies,
    so a killed worker or launcher leaves nothing running. False where that is not possible
    (another OS, no libc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, sig) == 0)
    except OSError:
        return False
