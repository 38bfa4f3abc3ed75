"""The inbox: accepted deliveries on their way to becoming RQ jobs.

The web side answers a delivery after one Redis round trip, the `ACCEPT` script: it
refuses a job id seen before (its `seen` key, or the RQ job itself), appends the job's
record to the queue's inbox stream and counts the delivery for /metrics. Building an RQ
job in the web process cost more CPU than the rest of the request (docs/benchmarks.md,
intake), so the worker does that part.

Every `tagsweeper worker` runs a `Mover` thread: one consumer of the stream's consumer
group. It reads records, enqueues each as the RQ job it describes (same id, `unique=True`,
so a record moved twice is still one job), then acknowledges and deletes them. A record
read by a worker that died before acknowledging it stays pending, and any mover claims it
once it has been idle CLAIM_IDLE_MS.

A record is compact JSON (`Record`, `encode`). Its due time is the stream entry's time (Redis's
clock, when the delivery was accepted) plus its `delay`. Only the functions in JOB_FUNCS
are ever enqueued from it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

import redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.job import Job

log = logging.getLogger("tagsweeper.inbox")

KEY_PREFIX = "tagsweeper:inbox:"
SEEN_PREFIX = "tagsweeper:seen:"
GROUP = "movers"
BATCH = 100
CLAIM_IDLE_MS = 60_000  # a record read this long ago and not acknowledged: its mover died
CLAIM_EVERY = 30.0  # seconds between a mover's looks for such records
FORGET_CONSUMER_MS = 24 * 3600 * 1000  # group members idle this long with nothing pending are removed

JOB_FUNCS = frozenset({"workers.jobs.cleanup_branch", "workers.jobs.record_pipeline"})

# KEYS: 1 seen key, 2 the RQ job's key, 3 the inbox stream, 4 deliveries counter hash, 5 cleanups counter hash.
# ARGV: 1 seconds the id stays seen, 2 the record, 3 and 4 the delivery counter's field if accepted
# and if a duplicate, 5 the cleanup counter's field ('' for none).
# Answers 1 when accepted, 0 for a duplicate. The record is written before the id is marked seen,
# so a script stopped by an error (a refused write) leaves the id free for GitLab's re-send; a
# counter that cannot be written (pcall) never stops the script.
ACCEPT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  redis.pcall('HINCRBY', KEYS[4], ARGV[4], 1)
  return 0
end
redis.call('XADD', KEYS[3], '*', 'r', ARGV[2])
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
redis.pcall('HINCRBY', KEYS[4], ARGV[3], 1)
if ARGV[5] ~= '' then
  redis.pcall('HINCRBY', KEYS[5], ARGV[5], 1)
end
return 1
"""


class BadRecord(ValueError):
    """An inbox entry that is not a record this version can enqueue."""


def key(queue: str) -> str:
    return KEY_PREFIX + queue


def seen_key(job_id: str) -> str:
    return SEEN_PREFIX + job_id


def job_key(job_id: str) -> str:
    return Job.redis_job_namespace_prefix + job_id


@dataclass(frozen=True)
class Record:
    id: str
    func: str
    kwargs: dict
    description: str
    meta: dict
    delay: int
    timeout: int
    result_ttl: int
    failure_ttl: int
    retry: tuple[int, list[int]] | None


def encode(rec: Record) -> str:
    """The JSON text of one record, as the web side writes it (its fields are the keys)."""
    return json.dumps(vars(rec), separators=(",", ":"), ensure_ascii=False)


def parse(text: bytes | str) -> Record:
    """A record from its JSON text; BadRecord when it is not one (nothing is enqueued from it)."""
    try:
        data = json.loads(text)
        retry = data["retry"]
        if retry is not None:
            retry = (int(retry[0]), [int(x) for x in retry[1]]) if isinstance(retry[1], list) \
                else (int(retry[0]), [int(retry[1])])
        rec = Record(id=str(data["id"]), func=str(data["func"]), kwargs=dict(data["kwargs"]),
                     description=str(data["description"]), meta=dict(data["meta"]), delay=int(data["delay"]),
                     timeout=int(data["timeout"]), result_ttl=int(data["result_ttl"]),
                     failure_ttl=int(data["failure_ttl"]), retry=retry)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise BadRecord(f"not an inbox record: {type(exc).__name__}: {exc}") from None
    if rec.func not in JOB_FUNCS:
        raise BadRecord(f"not a tagsweeper job: {rec.func!r}")
    if not rec.id or len(rec.id) > 200:
        raise BadRecord("job id missing or too long")
    return rec


def entry_time(entry_id: bytes | str) -> float:
    """When the stream entry was added (seconds since the epoch, Redis's clock)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0]) / 1000.0


def enqueue(queue: Queue, rec: Record, accepted_at: float, now: float | None = None) -> str:
    """Enqueue the record's job; "enqueued", "scheduled" or "duplicate" (its id is an RQ job already)."""
    options: dict[str, Any] = {
        "kwargs": rec.kwargs, "job_id": rec.id, "unique": True, "description": rec.description,
        "meta": rec.meta, "result_ttl": rec.result_ttl, "failure_ttl": rec.failure_ttl,
        # RQ's Retry needs max >= 1; no retry means a failed job goes straight to "failed".
        "retry": Retry(max=rec.retry[0], interval=rec.retry[1]) if rec.retry and rec.retry[0] > 0 else None,
    }
    due = accepted_at + rec.delay
    try:
        if rec.delay > 0 and due > (time.time() if now is None else now):
            queue.enqueue_at(datetime.fromtimestamp(due, timezone.utc), rec.func, job_timeout=rec.timeout, **options)
            return "scheduled"
        queue.enqueue_call(rec.func, timeout=rec.timeout, **options)
        return "enqueued"
    except DuplicateJobError:
        return "duplicate"


def ensure_group(conn: redis.Redis, queue_name: str) -> None:
    """Create the movers' group (reading from the stream's start), unless it exists."""
    try:
        conn.xgroup_create(key(queue_name), GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


@contextmanager
def _regrouping(conn: redis.Redis, queue_name: str) -> Iterator[None]:
    """Start the movers' group again when its stream went away under it (FLUSHALL)."""
    try:
        yield
    except redis.ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        ensure_group(conn, queue_name)


def settle(conn: redis.Redis, queue: Queue, entries: list) -> int:
    """Enqueue the jobs of read entries, then acknowledge and delete them; how many there were.

    A Redis error part-way leaves the rest pending for this consumer (see Mover) and raises.
    """
    stream = key(queue.name)
    done: list = []
    try:
        for entry_id, fields in entries:
            if fields:  # XAUTOCLAIM answers entries deleted meanwhile with no fields
                try:
                    rec = parse(fields.get(b"r", b""))
                    enqueue(queue, rec, entry_time(entry_id))
                except redis.RedisError:
                    raise
                except Exception as exc:  # it would fail the same way each time: don't let it block the rest
                    log.error("inbox entry dropped: it cannot become a job", extra={
                        "entry": _text(entry_id), "error": f"{type(exc).__name__}: {exc}"})
            done.append(entry_id)
    finally:
        if done:
            pipe = conn.pipeline(transaction=False)
            pipe.xack(stream, GROUP, *done)
            pipe.xdel(stream, *done)
            pipe.execute()
    return len(done)


def read(conn: redis.Redis, queue: Queue, consumer: str, *, block_ms: int | None = None,
         own_pending: bool = False) -> int:
    """Move what is waiting (up to BATCH), waiting up to `block_ms` for something to arrive.

    With `own_pending`, move instead what this consumer read before without acknowledging.
    """
    got = None
    with _regrouping(conn, queue.name):
        got = conn.xreadgroup(GROUP, consumer, {key(queue.name): "0" if own_pending else ">"},
                              count=BATCH, block=None if own_pending else block_ms)
    if isinstance(got, dict):  # RESP3 answers {stream: entries}
        got = list(got.items())
    entries = got[0][1] if got else []
    return settle(conn, queue, entries) if entries else 0


def claim(conn: redis.Redis, queue: Queue, consumer: str, min_idle_ms: int = CLAIM_IDLE_MS) -> int:
    """Move the records that other (dead) consumers read and never acknowledged."""
    stream, moved, start = key(queue.name), 0, "0-0"
    with _regrouping(conn, queue.name):
        while True:
            answer = conn.xautoclaim(stream, GROUP, consumer, min_idle_ms, start_id=start, count=BATCH)
            start, entries = answer[0], answer[1]
            if entries:
                moved += settle(conn, queue, entries)
            if _text(start) == "0-0":
                break
        for member in conn.xinfo_consumers(stream, GROUP):
            if (not member["pending"] and member["idle"] > FORGET_CONSUMER_MS
                    and _text(member["name"]) != consumer):
                conn.xgroup_delconsumer(stream, GROUP, member["name"])
    return moved


def drain(conn: redis.Redis, queue_name: str, consumer: str, *, min_idle_ms: int = CLAIM_IDLE_MS) -> int:
    """Move everything waiting now, without blocking (`tagsweeper worker --burst`)."""
    queue = Queue(queue_name, connection=conn)
    ensure_group(conn, queue_name)
    moved = claim(conn, queue, consumer, min_idle_ms) + read(conn, queue, consumer, own_pending=True)
    while True:
        n = read(conn, queue, consumer)
        moved += n
        if not n:
            return moved


def depth(conn: redis.Redis, queue_name: str) -> int:
    """Records waiting in the inbox (read-only)."""
    return int(conn.xlen(key(queue_name)))


class Mover(threading.Thread):
    """Moves the inbox into RQ from inside `tagsweeper worker`, until stopped; outlives Redis outages."""

    def __init__(self, redis_url: str, queue_name: str, consumer: str, *, block_ms: int = 1000,
                 claim_every: float = CLAIM_EVERY, min_idle_ms: int = CLAIM_IDLE_MS):
        super().__init__(name="tagsweeper-inbox-mover", daemon=True)
        self.redis_url = redis_url
        self.queue_name = queue_name
        self.consumer = consumer
        self.block_ms = block_ms
        self.claim_every = claim_every
        self.min_idle_ms = min_idle_ms
        self._halt = threading.Event()

    def run(self) -> None:
        conn = redis.Redis.from_url(self.redis_url)
        queue = Queue(self.queue_name, connection=conn)
        recover = True  # first, and after every error: records this consumer read and did not settle
        next_claim = 0.0
        delay = 0.5
        try:
            while not self._halt.is_set():
                try:
                    if recover:
                        ensure_group(conn, self.queue_name)
                        read(conn, queue, self.consumer, own_pending=True)
                        recover = False
                    if time.monotonic() >= next_claim:
                        claim(conn, queue, self.consumer, self.min_idle_ms)
                        next_claim = time.monotonic() + self.claim_every
                    read(conn, queue, self.consumer, block_ms=self.block_ms)
                    delay = 0.5
                except Exception as exc:  # Redis away, or a job that would not enqueue: wait, then again
                    log.warning("inbox not moved, trying again", extra={
                        "error": f"{type(exc).__name__}: {exc}", "retry_in": delay})
                    recover = True
                    self._halt.wait(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            conn.close()

    def stop(self, timeout: float | None = None) -> None:
        self._halt.set()
        if timeout is not None and self.is_alive():
            self.join(timeout)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
