"""The intake: hands a decision to the worker side, once, in one Redis round trip.

`submit` runs workers.inbox's ACCEPT script: it refuses a job id that is already known
(a re-sent delivery, or a project hook and a group hook for the same event: answered
"duplicate"), else appends the job's record to the queue's inbox stream, and counts the
delivery for /metrics either way. A worker's mover turns the record into the RQ job with
that id, delayed by CLEANUP_DELAY from the moment the delivery was accepted.

The web process does not build RQ jobs: that cost more CPU than the rest of the request
(docs/benchmarks.md). Jobs are named by dotted path, so the web process never imports the
worker's jobs. One Intake per app: one connection pool, one registered script.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from flask import Flask, current_app
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry

from hooks.events import Cleanup, RecordPipeline
from workers import inbox
from workers.common import metrics

EXTENSION = "tagsweeper.intake"

DAY = 86400
CLEANUP_RESULT_TTL = 30 * DAY  # a finished cleanup's id blocks repeats this long: the dedupe window
FAILURE_TTL = 30 * DAY
JOB_TIMEOUT = 900
PIPELINE_RESULT_TTL = 3600
PIPELINE_RETRY = (3, [10])

# GitLab gives up after 10 s: with 2 s timeouts and one retry a dead Redis is a 503 well before.
SOCKET_TIMEOUT = 2.0


class QueueUnavailable(Exception):
    """Redis could not be reached or refused the write; the message is safe to show."""


@dataclass(frozen=True)
class Receipt:
    status: str  # "enqueued" or "duplicate"
    job_id: str


class Intake:
    def __init__(self, redis_url: str, queue_name: str, cleanup_delay: int,
                 retries: int = 5, retry_intervals: tuple[int, ...] = (30, 60, 300, 900, 3600)):
        self.cleanup_delay = cleanup_delay
        # No retry object with CLEANUP_RETRIES=0: a failed cleanup goes straight to "failed".
        self.cleanup_retry = (retries, list(retry_intervals)) if retries else None
        self.queue_name = queue_name
        self.inbox_key = inbox.key(queue_name)
        self._redacted = _url_secrets(redis_url)
        pool = redis.ConnectionPool.from_url(
            redis_url,
            socket_connect_timeout=SOCKET_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            # One immediate retry survives a pooled connection that Redis closed meanwhile;
            # a retried script that had in fact run finds the id seen and answers "duplicate".
            retry=RedisRetry(NoBackoff(), 1),
        )
        self.connection = redis.Redis(connection_pool=pool)
        self._accept = self.connection.register_script(inbox.ACCEPT)

    def submit(self, decision: Cleanup | RecordPipeline, event: str | None = None) -> Receipt:
        """Accept the decision's job unless its id is known already; counts the delivery too."""
        job_id = decision.job_id()
        if isinstance(decision, Cleanup):
            retry, result_ttl, delay = self.cleanup_retry, CLEANUP_RESULT_TTL, self.cleanup_delay
            counted = _cleanup_series(decision.trigger)
        else:
            retry, result_ttl, delay = PIPELINE_RETRY, PIPELINE_RESULT_TTL, 0
            counted = ""
        text = inbox.encode(inbox.Record(
            id=job_id, func=decision.func, kwargs=decision.job_kwargs(), description=decision.describe(),
            meta={"delivery": decision.delivery, "trigger": decision.trigger}, delay=delay,
            timeout=JOB_TIMEOUT, result_ttl=result_ttl, failure_ttl=FAILURE_TTL, retry=retry))
        try:
            accepted = self._accept(
                keys=[inbox.seen_key(job_id), inbox.job_key(job_id), self.inbox_key,
                      metrics.DELIVERIES.key, metrics.CLEANUPS_ENQUEUED.key],
                args=[result_ttl, text, _delivery_series(event, "enqueued"), _delivery_series(event, "duplicate"),
                      counted])
        except redis.RedisError as exc:
            raise QueueUnavailable(self.describe_error(exc)) from None
        return Receipt("enqueued" if accepted else "duplicate", job_id)

    def ping(self) -> None:
        try:
            self.connection.ping()
        except redis.RedisError as exc:
            raise QueueUnavailable(self.describe_error(exc)) from None

    def describe_error(self, exc: BaseException) -> str:
        """A Redis error for a person, with any password from REDIS_URL blanked out."""
        return redact(f"queue unavailable (Redis): {type(exc).__name__}: {exc}", self._redacted)


# Label strings of the counters ACCEPT increments; their values come from small fixed sets.
@lru_cache(maxsize=256)
def _delivery_series(event: str | None, outcome: str) -> str:
    return metrics.delivery_series(event, outcome)


@lru_cache(maxsize=16)
def _cleanup_series(trigger: str) -> str:
    return metrics.cleanup_series(trigger)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _url_secrets(url: str) -> tuple[str, ...]:
    """The password in a Redis URL, raw and percent-decoded, to blank out of messages."""
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            found.update({parts.password, unquote(parts.password)})
        for value in parse_qs(parts.query).get("password", []):
            found.update({value, unquote(value)})
    except ValueError:
        pass
    # Longest first, so a secret containing another is blanked whole.
    return tuple(sorted(found, key=len, reverse=True))


def init_app(app: Flask) -> None:
    try:
        intake = Intake(app.config["REDIS_URL"], app.config["RQ_QUEUE"], app.config["CLEANUP_DELAY"],
                        app.config["CLEANUP_RETRIES"], app.config["CLEANUP_RETRY_INTERVALS"])
    except ValueError as exc:  # a malformed URL; redis-py's message does not quote it
        raise RuntimeError(f"REDIS_URL is not a valid Redis URL: {exc}") from None
    app.extensions[EXTENSION] = intake


def get_intake() -> Intake:
    return current_app.extensions[EXTENSION]
