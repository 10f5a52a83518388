"""The sensor's log on stderr, the one way every part of it says something (`logging`,
the `stockade.sensor` logger): JSON lines for the Kubernetes sensor (what log collectors on
a node parse), `stockade sensor: MESSAGE` lines for the standalone one."""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime

__all__ = ["configure_logging", "formatter"]

# what every LogRecord has: anything else was passed as `extra` and is written as a field
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def formatter(json_lines: bool) -> logging.Formatter:
    """One JSON object per line, or the standalone sensor's plain lines."""
    return JsonFormatter() if json_lines else logging.Formatter("stockade sensor: %(message)s")


def configure_logging(level: str, *, json_lines: bool) -> None:
    """Everything logged goes to stderr as `formatter` writes it; the client libraries only
    from warnings up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(json_lines))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelName(level.upper())
    root.setLevel(numeric if isinstance(numeric, int) else logging.INFO)
    for noisy in ("kubernetes", "urllib3", "elastic_transport"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.captureWarnings(True)  # a library's warnings too, not as bare lines
    threading.excepthook = _thread_died


def _thread_died(args: threading.ExceptHookArgs) -> None:
    """A thread's uncaught exception as one JSON line, not a bare traceback."""
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("stockade.sensor").error(
        f"thread {name} died: {args.exc_type.__name__}: {args.exc_value}",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
