"""Timestamped, levelled logs as text or JSON lines, each record with the current request id,
and the access log (logger `tandem.access`)."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import TextIO

from runtime.observability.config import ObservabilityConfig
from runtime.observability.context import current_request_id

ACCESS_LOGGER = "tandem.access"
# LogRecord attributes every record has: the rest are a call's `extra` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
_HANDLER_NAME = "tandem-observability"


def _timestamp(record: logging.LogRecord) -> str:
    when = datetime.fromtimestamp(record.created, tz=timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the context that wrote it (None outside)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO 8601), level, logger, message,
    request_id when serving one, the call's `extra` fields, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            out["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-12-06T00:10:00.123Z INFO logger [request id] message`."""

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        line = (
            f"{_timestamp(record)} {record.levelname} {record.name}"
            f"{f' [{request_id}]' if request_id else ''} {record.getMessage()}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(config: ObservabilityConfig, stream: TextIO | None = None) -> None:
    """Route the root logger to `stream` (default stderr) in the configured format and level.
    Calling it again replaces the handler it installed, nothing else; the access log is
    silenced when `config.access_log` is off."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(config.log_level.upper())
    logging.getLogger(ACCESS_LOGGER).disabled = not config.access_log


def log_access(
    protocol: str, method: str, path: str, status: int | str, started: float, **fields
) -> None:
    """One access-log line for a finished call; `started` is its `time.monotonic()` start."""
    duration_ms = round((time.monotonic() - started) * 1000, 3)
    logging.getLogger(ACCESS_LOGGER).info(
        '%s "%s %s" %s %.1f ms',
        protocol,
        method,
        path,
        status,
        duration_ms,
        extra={
            "protocol": protocol,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": duration_ms,
            "request_id": current_request_id(),
            **fields,
        },
    )
