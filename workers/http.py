"""The HTTP layer both clients share: a pooled session, counts of what was answered, one retrying send.

Transient answers (429, 5xx, dropped connections, timeouts) are retried with exponential
backoff and jitter that honours `Retry-After`; what still fails raises the client's own
TransientError, and the job's RQ retry takes over from there. Every call has a timeout.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from typing import Any, Callable

import requests

from workers.common import errors

TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})


def retry_after_seconds(value: str | None) -> float | None:
    """Parse Retry-After (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Client:
    """What a service's client is built on; subclasses set the names their messages use."""

    transient_error: type[errors.TransientError] = errors.TransientError
    log: logging.Logger = logging.getLogger("tagsweeper")
    log_message = "call failed"  # the warning logged for each failed attempt
    asked = "asked"  # "<what>: <asked> to retry after …": who asked, when a client names it
    follow_redirects = True

    def __init__(self, *, timeout: float, attempts: int, backoff: float, max_wait: float, pool_size: int,
                 sleep: Callable[[float], None], headers: dict[str, str]):
        self.timeout = (min(10.0, timeout), timeout)  # (connect, read)
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_wait = max_wait
        self._sleep = sleep
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": "tagsweeper", **headers})
        self._lock = threading.Lock()
        self.calls: dict[int | str, int] = {}  # status (or error name) -> count, for reports

    def close(self) -> None:
        self.session.close()

    def _count(self, key: int | str) -> None:
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1

    def _send(self, method: str, url: str, what: str, **options: Any) -> requests.Response:
        """Send one request, retrying transient failures; return any other response."""
        last = ""
        for attempt in range(1, self.attempts + 1):
            wait = self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            try:
                response = self.session.request(method, url, timeout=self.timeout,
                                                allow_redirects=self.follow_redirects, **options)
            except (requests.ConnectionError, requests.Timeout) as exc:
                self._count(type(exc).__name__)
                last = type(exc).__name__
                self.log.warning(self.log_message, extra={"call": what, "error": last, "attempt": attempt})
            else:
                self._count(response.status_code)
                response.attempts = attempt  # type: ignore[attr-defined]
                status = response.status_code
                if status not in TRANSIENT_STATUSES:
                    return response
                last = f"HTTP {status}"
                hinted = retry_after_seconds(response.headers.get("Retry-After"))
                if hinted is not None:
                    if hinted > self.max_wait:
                        raise self.transient_error(
                            f"{what}: {self.asked} to retry after {hinted:.0f}s (HTTP {status})", status)
                    wait = hinted
                self.log.warning(self.log_message, extra={"call": what, "error": last, "attempt": attempt})
            if attempt < self.attempts:
                self._sleep(wait)
        raise self.transient_error(f"{what}: still failing after {self.attempts} attempts ({last})")
