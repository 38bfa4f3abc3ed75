"""The intake: puts a decision on the RQ queue shared with the worker, once.

Jobs are named by dotted path ("workers.jobs.cleanup_branch"), so the web process never
imports the worker. The job id is the decision's deterministic id and the enqueue is
`unique=True`: RQ checks and writes in one Lua script, so a re-sent delivery or a second
hook for the same event is refused atomically (DuplicateJobError) and answered
"duplicate". One Intake per app: one connection pool, one Queue.

Round trips: a delayed cleanup is one EVALSHA; so is an immediate job (a pipeline record, or
a cleanup with CLEANUP_DELAY=0), except the first one per QUEUE_REGISTERED_FOR seconds, which
also sends RQ's own SADD of the queue name to rq:queues (see `submit`). The first call per
connection also pays for HELLO, INFO (RQ caches the server version) and SCRIPT LOAD.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from flask import Flask, current_app
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError

from hooks.events import Cleanup, RecordPipeline

EXTENSION = "tagsweeper.intake"

DAY = 86400
CLEANUP_RESULT_TTL = 30 * DAY  # a finished cleanup's id blocks repeats this long: the dedupe window
FAILURE_TTL = 30 * DAY
JOB_TIMEOUT = 900
PIPELINE_RESULT_TTL = 3600
PIPELINE_RETRY = (3, 10)

# GitLab gives up after 10 s: with 2 s timeouts and one retry a dead Redis is a 503 well before.
SOCKET_TIMEOUT = 2.0

# RQ SADDs the queue's name to rq:queues (what `Queue.all()`, the dashboard and `tagsweeper status`
# list) on every immediate enqueue, in a round trip of its own. A process that did so less than this
# many seconds ago skips it: the name is there (nothing in tagsweeper removes it) and workers find
# their queue by name anyway.
QUEUE_REGISTERED_FOR = 60.0


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
        # RQ's Retry needs max >= 1; with CLEANUP_RETRIES=0 a failed cleanup goes straight to "failed".
        self.cleanup_retry = Retry(max=retries, interval=list(retry_intervals)) if retries else None
        self._redacted = _url_secrets(redis_url)
        pool = redis.ConnectionPool.from_url(
            redis_url,
            socket_connect_timeout=SOCKET_TIMEOUT,
            socket_timeout=SOCKET_TIMEOUT,
            # One immediate retry survives a pooled connection that Redis closed meanwhile;
            # a retried script that had in fact run answers DuplicateJobError, i.e. "duplicate".
            retry=RedisRetry(NoBackoff(), 1),
        )
        self.connection = redis.Redis(connection_pool=pool)
        self.queue = Queue(queue_name, connection=self.connection)
        self._registered_until = 0.0  # time.monotonic() until which RQ's SADD of the queue name is skipped

    def submit(self, decision: Cleanup | RecordPipeline) -> Receipt:
        """Enqueue the decision's job unless its id exists already."""
        job_id = decision.job_id()
        options: dict[str, Any] = {
            "kwargs": decision.job_kwargs(),
            "job_id": job_id,
            "unique": True,
            "description": decision.describe(),
            "meta": {"delivery": decision.delivery, "trigger": decision.trigger},
            "failure_ttl": FAILURE_TTL,
        }
        if isinstance(decision, Cleanup):
            options["retry"] = self.cleanup_retry
            options["result_ttl"] = CLEANUP_RESULT_TTL
            delay = self.cleanup_delay
        else:
            options["retry"] = Retry(max=PIPELINE_RETRY[0], interval=PIPELINE_RETRY[1])
            options["result_ttl"] = PIPELINE_RESULT_TTL
            delay = 0
        try:
            if delay > 0:
                # Scheduled: one Lua script (check, save, add to the scheduled registry).
                self.queue.enqueue_in(
                    timedelta(seconds=delay), decision.func, job_timeout=JOB_TIMEOUT, **options
                )
            elif time.monotonic() < self._registered_until:
                # RQ queues its SADD on a pipeline it is handed and leaves sending it to the caller;
                # the unique enqueue itself is the script, sent at once. This pipeline is never sent.
                unsent = self.connection.pipeline()
                try:
                    self.queue.enqueue_call(decision.func, timeout=JOB_TIMEOUT, pipeline=unsent, **options)
                finally:
                    unsent.reset()
            else:
                self.queue.enqueue_call(decision.func, timeout=JOB_TIMEOUT, **options)
                self._registered_until = time.monotonic() + QUEUE_REGISTERED_FOR
        except DuplicateJobError:
            return Receipt("duplicate", job_id)
        except redis.RedisError as exc:
            raise QueueUnavailable(self.describe_error(exc)) from None
        return Receipt("enqueued", job_id)

    def ping(self) -> None:
        try:
            self.connection.ping()
        except redis.RedisError as exc:
            raise QueueUnavailable(self.describe_error(exc)) from None

    def describe_error(self, exc: BaseException) -> str:
        """A Redis error for a person, with any password from REDIS_URL blanked out."""
        return redact(f"queue unavailable (Redis): {type(exc).__name__}: {exc}", self._redacted)


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
