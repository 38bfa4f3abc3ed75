"""The intake: a delivery's decision made the RQ job it asks for, once, before it is answered.

`submit` enqueues the decision's job with workers.common.queue: its deterministic id, RQ's
`unique=True` (a re-sent delivery, or a project hook and a group hook for the same event,
finds the job and is answered "duplicate"), CLEANUP_DELAY for a cleanup. That is one Redis
round trip; counting the delivery for /metrics is one more, pipelined after it. An accepted
delivery is an RQ job (queued or scheduled) by the time it is answered.

Jobs are named by dotted path, so the web process never imports the worker's jobs. One
Intake per app: one connection pool, one queue.
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
from rq import Queue

from hooks.events import Cleanup, RecordDeployment, RecordPipeline
from workers.common import metrics, queue

EXTENSION = "tagsweeper.intake"

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
        self.cleanup_options = queue.cleanup_options(cleanup_delay, retries, retry_intervals)
        self.queue_name = queue_name
        self._redacted = _url_secrets(redis_url)
        pool = redis.ConnectionPool.from_url(
            redis_url,
            socket_connect_timeout=SOCKET_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            # One immediate retry survives a pooled connection that Redis closed meanwhile;
            # a retried enqueue that had in fact run finds its job and answers "duplicate".
            retry=RedisRetry(NoBackoff(), 1),
        )
        self.connection = redis.Redis(connection_pool=pool)
        self.queue = Queue(queue_name, connection=self.connection)

    def submit(self, decision: Cleanup | RecordPipeline | RecordDeployment, event: str | None = None) -> Receipt:
        """Enqueue the decision's job unless its id is a job already; counts the delivery too."""
        job_id = decision.job_id()
        cleanup = isinstance(decision, Cleanup)

        def count(pipe, status: str) -> None:
            pipe.hincrby(metrics.DELIVERIES.key, _delivery_series(event, status), 1)
            if cleanup and status == queue.ENQUEUED:
                pipe.hincrby(metrics.CLEANUPS_ENQUEUED.key, _cleanup_series(decision.trigger), 1)

        try:
            status = queue.enqueue(
                self.queue, decision.func, job_id, kwargs=decision.job_kwargs(),
                options=self.cleanup_options if cleanup else _HINT_OPTIONS[decision.name], description=decision.describe(),
                meta={"delivery": decision.delivery, "trigger": decision.trigger}, then=count)
        except redis.RedisError as exc:
            raise QueueUnavailable(self.describe_error(exc)) from None
        return Receipt(status, job_id)

    def ping(self) -> None:
        try:
            self.connection.ping()
        except redis.RedisError as exc:
            raise QueueUnavailable(self.describe_error(exc)) from None

    def describe_error(self, exc: BaseException) -> str:
        """A Redis error for a person, with any password from REDIS_URL blanked out."""
        return redact(f"queue unavailable (Redis): {type(exc).__name__}: {exc}", self._redacted)


# The jobs that record a hint (a pipeline, a deployment): short-lived, retried briefly.
_HINT_OPTIONS = {"record_pipeline": queue.PIPELINE, "record_deployment": queue.DEPLOYMENT}


# Label strings of the delivery counters; their values come from small fixed sets.
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
