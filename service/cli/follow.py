"""`tailor jobs follow`: a live view of one fine-tuning job, read through the public API.

Polls the job and its events with the `openai` SDK, draws a progress bar (step/total, ETA)
with the latest losses, prints message events as they come, and returns the finished job.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from service.jobs.lifecycle import TERMINAL

BAR_WIDTH = 30


def render_bar(data: dict[str, Any], eta_seconds: int | None) -> str:
    step, total = int(data.get("step", 0)), max(1, int(data.get("total_steps", 1)))
    filled = int(BAR_WIDTH * min(step, total) / total)
    parts = [f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {step}/{total} {100 * step // total:3d}%"]
    if eta_seconds is not None:
        parts.append(f"ETA {eta_seconds // 60}:{eta_seconds % 60:02d}")
    if "train_loss" in data:
        parts.append(f"loss {data['train_loss']:.4f}")
    if "valid_loss" in data:
        parts.append(f"valid {data['valid_loss']:.4f}")
    return "  ".join(parts)


def _new_events(client: Any, job_id: str, seen: set[str]) -> list[Any]:
    """Events not shown yet, oldest first (the API lists newest first)."""
    fresh = []
    for event in client.fine_tuning.jobs.list_events(job_id, limit=100).data:
        if event.id in seen:
            break
        fresh.append(event)
    for event in fresh:
        seen.add(event.id)
    return list(reversed(fresh))


def follow_job(
    client: Any, job_id: str, *, out: TextIO = sys.stdout, poll_seconds: float = 1.0, timeout: float | None = None
) -> Any:
    """Show the job until it ends (or `timeout` passes); return the last job object seen."""
    seen: set[str] = set()
    tty = out.isatty()
    bar_shown = False
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        for event in _new_events(client, job_id, seen):
            if event.type == "metrics" and event.data:
                eta = max(0, job.estimated_finish - int(time.time())) if job.estimated_finish else None
                line = render_bar(event.data, eta)
                if tty:
                    out.write("\r" + line + "\033[K")
                    bar_shown = True
                else:
                    out.write(line + "\n")
            else:
                if bar_shown:
                    out.write("\n")
                    bar_shown = False
                out.write(f"[{event.level}] {event.message}\n")
            out.flush()
        if job.status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            if bar_shown:
                out.write("\n")
            return job
        time.sleep(poll_seconds)


def loss_chart(losses: list[float], width: int = 60, height: int = 10) -> str:
    """An ASCII plot of the training loss per step, for terminals and logs."""
    if not losses:
        return "(no metrics)"
    # Average neighbouring steps into at most `width` columns.
    columns = []
    per = max(1, -(-len(losses) // width))
    for i in range(0, len(losses), per):
        chunk = losses[i : i + per]
        columns.append(sum(chunk) / len(chunk))
    top, bottom = max(columns), min(columns)
    span = (top - bottom) or 1.0
    rows = []
    for r in range(height, -1, -1):
        level = bottom + span * r / height
        cells = "".join("*" if round((v - bottom) / span * height) == r else " " for v in columns)
        rows.append(f"{level:8.3f} |{cells}")
    rows.append(" " * 9 + "+" + "-" * len(columns))
    rows.append(" " * 10 + f"step 1 … {len(losses)}")
    return "\n".join(rows)
