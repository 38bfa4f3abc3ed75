"""The inbox between the web side and RQ, on a real redis-server: records, the accept script, the mover."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from datetime import datetime, timezone

import pytest
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from tests.support.webapp import make_app, post
from workers import inbox

QUEUE = "tagsweeper"
RECORD = inbox.Record(id="pipeline-7-abc", func="workers.jobs.record_pipeline",
                      kwargs={"project_id": 7, "ref": "main", "sha": "a" * 40}, description="record pipeline of 7",
                      meta={"delivery": "d-1", "trigger": "pipeline"}, delay=0, timeout=900, result_ttl=3600,
                      failure_ttl=86400, retry=(3, [10]))


def record(**changes) -> str:
    return inbox.encode(dataclasses.replace(RECORD, **changes))


def add(conn, text: str, at_ms: int | None = None, queue: str = QUEUE) -> bytes:
    """Put a record in the inbox as the accept script does (optionally as if accepted at `at_ms`)."""
    return conn.xadd(inbox.key(queue), {"r": text}, id=f"{at_ms}-0" if at_ms else "*")


def waiting(conn, queue: str = QUEUE) -> int:
    return conn.xlen(inbox.key(queue))


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


# --- records ------------------------------------------------------------------------------


def test_a_record_round_trips():
    rec = inbox.parse(record())
    assert rec == inbox.Record(id="pipeline-7-abc", func="workers.jobs.record_pipeline",
                               kwargs={"project_id": 7, "ref": "main", "sha": "a" * 40},
                               description="record pipeline of 7", meta={"delivery": "d-1", "trigger": "pipeline"},
                               delay=0, timeout=900, result_ttl=3600, failure_ttl=86400, retry=(3, [10]))
    assert inbox.parse(record(retry=None)).retry is None
    # Names from payloads pass through untouched, whatever their characters.
    assert inbox.parse(record(kwargs={"branch": "fe\u00e9ture/\"x\"\\y"})).kwargs == {"branch": "fe\u00e9ture/\"x\"\\y"}


@pytest.mark.parametrize("text, message", [
    (b"", "not an inbox record"),
    (b"not json", "not an inbox record"),
    (b"[]", "not an inbox record"),
    (json.dumps({**json.loads(record()), "delay": "soon"}), "not an inbox record"),
    (json.dumps({k: v for k, v in json.loads(record()).items() if k != "kwargs"}), "not an inbox record"),
    (record(func="os.system"), "not a tagsweeper job: 'os.system'"),
    (record(func="workers.jobs.sweep_project"), "not a tagsweeper job"),  # a job, but never from a delivery
    (record(id=""), "job id missing or too long"),
    (record(id="x" * 201), "job id missing or too long"),
])
def test_what_is_not_a_record_is_refused(text, message):
    with pytest.raises(inbox.BadRecord, match=message.replace("(", r"\(")):
        inbox.parse(text)


# --- moving ---------------------------------------------------------------------------------


def test_drain_makes_each_record_the_job_it_describes(conn):
    add(conn, record())
    add(conn, record(id="cleanup-7-merge-x", func="workers.jobs.cleanup_branch", kwargs={"branch": "b"},
                     delay=0, retry=None))
    assert inbox.drain(conn, QUEUE, "mover-a") == 2
    assert waiting(conn) == 0
    assert conn.xpending(inbox.key(QUEUE), inbox.GROUP)["pending"] == 0
    queue = Queue(QUEUE, connection=conn)
    assert queue.job_ids == ["pipeline-7-abc", "cleanup-7-merge-x"]
    job = Job.fetch("pipeline-7-abc", connection=conn)
    assert (job.func_name, job.kwargs, job.description, job.meta) == (
        "workers.jobs.record_pipeline", {"project_id": 7, "ref": "main", "sha": "a" * 40},
        "record pipeline of 7", {"delivery": "d-1", "trigger": "pipeline"})
    assert (job.timeout, job.result_ttl, job.failure_ttl, job.retries_left, job.retry_intervals) == (
        900, 3600, 86400, 3, [10])
    assert Job.fetch("cleanup-7-merge-x", connection=conn).retries_left is None


def test_the_delay_counts_from_when_the_delivery_was_accepted(conn):
    now_ms = int(time.time() * 1000)
    add(conn, record(id="late", delay=60), at_ms=now_ms - 120_000)  # a worker was down for two minutes
    add(conn, record(id="fresh", delay=60), at_ms=now_ms - 10_000)
    inbox.drain(conn, QUEUE, "mover-a")
    queue = Queue(QUEUE, connection=conn)
    assert queue.job_ids == ["late"]  # overdue: runnable now
    registry = ScheduledJobRegistry(queue=queue)
    assert registry.get_job_ids(cleanup=False) == ["fresh"]
    assert registry.get_scheduled_time("fresh") == datetime.fromtimestamp((now_ms - 10_000) // 1000 + 60,
                                                                          timezone.utc)


def test_a_record_moved_twice_is_one_job(conn):
    add(conn, record())
    add(conn, record(kwargs={"project_id": 7, "ref": "other", "sha": "b" * 40}))  # same id, e.g. a lost XACK
    assert inbox.drain(conn, QUEUE, "mover-a") == 2
    assert Queue(QUEUE, connection=conn).job_ids == ["pipeline-7-abc"]
    assert Job.fetch("pipeline-7-abc", connection=conn).kwargs["ref"] == "main"  # the first one stands


def test_an_id_that_is_a_job_already_is_left_as_it_is(conn):
    existing = Queue(QUEUE, connection=conn).enqueue_call(
        "workers.jobs.record_pipeline", kwargs={"project_id": 7, "ref": "kept", "sha": "c" * 40},
        job_id="pipeline-7-abc")
    add(conn, record())
    inbox.drain(conn, QUEUE, "mover-a")
    assert Job.fetch(existing.id, connection=conn).kwargs["ref"] == "kept"
    assert Queue(QUEUE, connection=conn).count == 1


def test_a_record_that_cannot_become_a_job_is_dropped_and_blocks_nothing(conn, caplog):
    add(conn, record(id="evil", func="os.system", kwargs={"command": "rm -rf /"}))
    add(conn, "{truncated")
    add(conn, record())
    with caplog.at_level(logging.ERROR, logger="tagsweeper.inbox"):
        assert inbox.drain(conn, QUEUE, "mover-a") == 3
    assert Queue(QUEUE, connection=conn).job_ids == ["pipeline-7-abc"]
    assert not conn.exists("rq:job:evil")
    assert waiting(conn) == 0
    dropped = [r for r in caplog.records if r.getMessage().startswith("inbox entry dropped")]
    assert len(dropped) == 2 and "not a tagsweeper job: 'os.system'" in dropped[0].error


def test_records_a_dead_worker_had_read_are_claimed_by_another(conn):
    inbox.ensure_group(conn, QUEUE)
    add(conn, record())
    # A worker reads the record and dies before it is a job (nothing acknowledged).
    got = conn.xreadgroup(inbox.GROUP, "dead-worker", {inbox.key(QUEUE): ">"}, count=10)
    assert len(got[0][1]) == 1
    assert inbox.drain(conn, QUEUE, "mover-b") == 0  # not idle long enough: maybe it is only slow
    assert Queue(QUEUE, connection=conn).count == 0
    assert inbox.drain(conn, QUEUE, "mover-b", min_idle_ms=0) == 1
    assert Queue(QUEUE, connection=conn).job_ids == ["pipeline-7-abc"]
    assert conn.xpending(inbox.key(QUEUE), inbox.GROUP)["pending"] == 0 and waiting(conn) == 0


def test_the_mover_thread_moves_what_arrives_and_outlives_a_flush(redis_url, conn):
    mover = inbox.Mover(redis_url, QUEUE, "mover-thread", block_ms=100)
    mover.start()
    try:
        client = make_app(redis_url, CLEANUP_DELAY=0).test_client()
        first = post(client, "merge_request_merge.json")
        assert first.status_code == 202
        wait_for(lambda: Queue(QUEUE, connection=conn).job_ids == [first.json["job_id"]])
        conn.flushall()  # the stream and its group are gone: the mover starts them again
        second = post(client, "push_branch_deleted.json", "Push Hook")
        assert second.status_code == 202
        wait_for(lambda: Queue(QUEUE, connection=conn).job_ids == [second.json["job_id"]])
        assert waiting(conn) == 0
    finally:
        mover.stop(timeout=5)
    assert not mover.is_alive()


# --- the accept script -------------------------------------------------------------------------


def test_a_refused_write_leaves_the_id_free_for_gitlabs_resend(redis_url, conn):
    """Redis refuses the record (here: an ACL without XADD): 503, no id marked seen, and the re-send is taken."""
    conn.acl_setuser("no-xadd", enabled=True, passwords=["+pw-no-xadd"], keys=["*"], channels=["*"],
                     commands=["+@all", "-xadd"])
    try:
        kwargs = conn.connection_pool.connection_kwargs
        refused_app = make_app(f"redis://no-xadd:pw-no-xadd@{kwargs['host']}:{kwargs['port']}/0")
        refused = post(refused_app.test_client(), "merge_request_merge.json")
        assert refused.status_code == 503 and "Redis" in refused.json["error"]
        assert conn.keys(inbox.SEEN_PREFIX + "*") == [] and waiting(conn) == 0
    finally:
        conn.acl_deluser("no-xadd")
    resent = post(make_app(redis_url).test_client(), "merge_request_merge.json")
    assert resent.status_code == 202 and resent.json["status"] == "enqueued"
    assert waiting(conn) == 1
    assert conn.ttl(inbox.seen_key(resent.json["job_id"])) > 29 * 86400  # the dedupe window of a cleanup
