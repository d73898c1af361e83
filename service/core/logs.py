"""Logging for `tailor serve`, `tailor worker` and `tailor inference`: plain text, or one JSON
object per line (TAILOR_LOG_FORMAT=json) with the id of the request being handled.

While a request is handled, a ContextVar holds its `scope["state"]`, where the API's
middleware (service/api/middleware.py) puts the request id; every line logged meanwhile
carries that id, the access line included.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from service.core.settings import get_settings

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The state of the request being handled (scope["state"]), or None outside requests.
request_state_var: ContextVar[MutableMapping[str, Any] | None] = ContextVar("tailor_request_state", default=None)


def current_request_id() -> str | None:
    state = request_state_var.get()
    return state.get("request_id") if state is not None else None


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and
    request_id / exception when there are any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            out["request_id"] = request_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def setup_logging(level: str | int = "info", log_format: LogFormat | None = None) -> None:
    """Configure the root logger once for a `tailor` command. `log_format` defaults to the
    TAILOR_LOG_FORMAT setting."""
    if log_format is None:
        log_format = get_settings().log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)  # Python warnings become log lines in the same format
    if log_format == "json":
        # Progress bars (model loading in a training child) are not log lines; children inherit this.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")


def call_with_logging(level: str | int, log_format: LogFormat, target: Callable[..., Any], *args: Any) -> Any:
    """A spawned process's entry point: set up logging as its parent did, then run `target`."""
    setup_logging(level, log_format)
    return target(*args)
