"""Structured logs for the daemon: one event name plus key=value fields, as text or JSON lines.

    event(log, "session_open", session=3, client="a1b2", prompt_chars=42)
    -> 2026-01-01 12:00:00,000 INFO session_open session=3 client=a1b2 prompt_chars=42
    -> {"ts": "...", "level": "INFO", "event": "session_open", "session": 3, ...}   (format "json")
"""

from __future__ import annotations

import json
import logging
import sys

LOGGER = logging.getLogger("worldsim.serve")


def event(logger: logging.Logger, name: str, level: int = logging.INFO, /, **fields) -> None:
    logger.log(level, name, extra={"fields": fields})


def _fields(record: logging.LogRecord) -> dict:
    return getattr(record, "fields", {})


def _text_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v) if not v or any(c in v for c in ' ="\n') else v
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, default=str)
    return str(v)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{self.formatTime(record)} {record.levelname} {record.getMessage()}"]
        parts += [f"{k}={_text_value(v)}" for k, v in _fields(record).items()]
        text = " ".join(parts)
        return text + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": self.formatTime(record), "level": record.levelname, "event": record.getMessage(),
               **_fields(record)}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(fmt: str = "text", level: str = "INFO") -> None:
    """Send worldsim.serve logs to stderr in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False
