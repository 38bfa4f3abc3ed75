"""Structured logging: one JSON object per line (or plain text with LOG_FORMAT=text).

Fields passed with `extra=` become JSON keys. Anything that looks like a credential is
dropped before a line is written: secrets never reach a log.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
import time

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_SECRET_KEY = re.compile(r"token|secret|password|authorization|private", re.I)


@functools.lru_cache(maxsize=1024)
def _shown(key: str) -> bool:
    """Whether a record attribute is a field of the line (cached: a handful of names recur on every line)."""
    return key not in _STANDARD and not key.startswith("_") and not _SECRET_KEY.search(key)


def _fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if _shown(k)}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items() if v is not None)
        text = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname.lower():7} {record.getMessage()}"
        text = f"{text}  {extra}" if extra else text
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure(fmt: str = "json", level: int = logging.INFO, stream=None) -> None:
    """Send tagsweeper's log records to stderr in the chosen format (RQ keeps its own lines)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    logger = logging.getLogger("tagsweeper")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
