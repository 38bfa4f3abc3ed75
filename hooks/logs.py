"""Structured logs: one line per delivery on the "tagsweeper.hooks" logger.

Callers pass only chosen fields (event, outcome, status, job id, delivery key, project,
branch, reason); the token and the body are never handed to the logger. The line's
shape (JSON, or text with LOG_FORMAT=text) is the same as the worker's.
"""

from __future__ import annotations

import logging
from typing import Any

from workers.common.logs import JsonFormatter, TextFormatter

LOGGER_NAME = "tagsweeper.hooks"
log = logging.getLogger(LOGGER_NAME)

__all__ = ["JsonFormatter", "LOGGER_NAME", "init_app", "log_delivery"]


class _Handler(logging.StreamHandler):
    """Marks the handler this module installed, so creating many apps adds it once."""


def init_app(app: Any) -> None:
    """Send the hooks logger's records to stderr (still propagating to root, for tests)."""
    formatter = TextFormatter() if app.config.get("LOG_FORMAT") == "text" else JsonFormatter()
    for handler in log.handlers:
        if isinstance(handler, _Handler):
            handler.setFormatter(formatter)
            break
    else:
        handler = _Handler()
        handler.setFormatter(formatter)
        log.addHandler(handler)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def log_delivery(**fields: Any) -> None:
    """The one line a delivery leaves: None-valued fields are dropped."""
    fields = {k: v for k, v in fields.items() if v is not None}
    level = logging.WARNING if fields.get("status", 200) >= 500 else logging.INFO
    log.log(level, "gitlab delivery", extra=fields)
