"""The intake on a real redis-server: an accepted delivery is the RQ job it asks for, once.

What the web side promises GitLab: a delivery answered 202 is an RQ job (queued, or
scheduled CLEANUP_DELAY after it was accepted) before the answer leaves, and survives a
Redis restart with persistence; a delivery whose job id is a job already is "duplicate"
and writes nothing, for as long as the job is kept (30 days after a cleanup ended); a write
Redis refuses is a 503 that leaves nothing behind, so GitLab's re-send is accepted; and a
plain `rq worker` runs what was accepted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis
import redis.connection
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from tests.support.procs import RedisServer, stop
from tests.support.queue import job_ids
from tests.support.service import ROOT, load_payload
from tests.support.shop import EARLIER, LAST, assert_registry, make_shop, merge_payload
from tests.support.webapp import headers, keyspace, make_app, post

QUEUE = "tagsweeper"
DAY = 86400


def merge(client, iid: int, key: str | None = None):
    """A distinct cleanup per merge request iid (the example merge, renumbered)."""
    body = load_payload("merge_request_merge.json")
    body["object_attributes"]["iid"] = iid
    return client.post("/hooks/gitlab", data=json.dumps(body),
                       headers=headers(**({"Idempotency-Key": key} if key else {})))


def acl_user(conn: redis.Redis, name: str, *refused: str) -> str:
    """A Redis user that may do everything but the `refused` commands; its URL."""
    conn.acl_setuser(name, enabled=True, passwords=[f"+pw-{name}"], keys=["*"], channels=["*"],
                     commands=["+@all", *(f"-{c}" for c in refused)])
    kwargs = conn.connection_pool.connection_kwargs
    return f"redis://{name}:pw-{name}@{kwargs['host']}:{kwargs['port']}/0"


# --- accepted: a job at once ------------------------------------------------------------------


def test_an_accepted_cleanup_is_a_scheduled_job_at_once_its_delay_counted_from_acceptance(redis_url, conn):
    client = make_app(redis_url, CLEANUP_DELAY=60).test_client()
    before = time.time()
    resp = post(client, "merge_request_merge.json")
    after = time.time()
    assert resp.status_code == 202 and resp.json["status"] == "enqueued"
    job_id = resp.json["job_id"]
    registry = ScheduledJobRegistry(queue=Queue(QUEUE, connection=conn))
    assert registry.get_job_ids(cleanup=False) == [job_id]
    assert Job.fetch(job_id, connection=conn).get_status() == "scheduled"
    # RQ keeps the due time in whole seconds.
    due = registry.get_scheduled_time(job_id)
    assert datetime.fromtimestamp(int(before) + 60, timezone.utc) <= due
    assert due <= datetime.fromtimestamp(after + 60, timezone.utc)


def test_an_accepted_delivery_without_delay_is_a_queued_job_at_once(redis_url, conn):
    cleanup = post(make_app(redis_url, CLEANUP_DELAY=0).test_client(), "push_branch_deleted.json", "Push Hook")
    pipeline = post(make_app(redis_url).test_client(), "pipeline_main.json", "Pipeline Hook")
    assert cleanup.status_code == pipeline.status_code == 202
    assert Queue(QUEUE, connection=conn).job_ids == [cleanup.json["job_id"], pipeline.json["job_id"]]
    assert {Job.fetch(j, connection=conn).get_status() for j in job_ids(conn)} == {"queued"}
    # Listed as a queue of this Redis, as RQ's own enqueue does (rq-dashboard, `tagsweeper status`).
    assert [q.name for q in Queue.all(connection=conn)] == [QUEUE]


def test_a_second_delivery_of_the_same_job_is_a_duplicate_and_writes_nothing(redis_url, conn):
    client = make_app(redis_url).test_client()
    first = post(client, "merge_request_merge.json", **{"Idempotency-Key": "project-hook"})
    snapshot = keyspace(conn)
    again = post(client, "merge_request_merge.json", **{"Idempotency-Key": "group-hook"})
    assert again.status_code == 200
    assert again.json == {"status": "duplicate", "job_id": first.json["job_id"]}
    assert keyspace(conn) == snapshot
    assert Job.fetch(first.json["job_id"], connection=conn).meta["delivery"] == "project-hook"


def test_an_accepted_delivery_costs_two_redis_round_trips(redis_url, monkeypatch):
    """RQ's unique enqueue script, then the delivery's counters in one pipeline; a duplicate the same."""
    client = make_app(redis_url).test_client()
    merge(client, 1)  # the first delivery also loads the script
    sent: list[bytes] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def spy(self, command, check_health=True):
        parts = command if isinstance(command, (list, tuple)) else [command]
        sent.append(b"".join(bytes(p) for p in parts))
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", spy)
    for deliver, status in ((lambda: merge(client, 2), "enqueued"), (lambda: merge(client, 2), "duplicate"),
                            (lambda: post(client, "pipeline_main.json", "Pipeline Hook"), "enqueued")):
        sent.clear()
        assert deliver().json["status"] == status
        assert len(sent) == 2 and sent[0].split(b"\r\n")[2] == b"EVALSHA", sent


# --- the dedupe window -----------------------------------------------------------------------


def test_a_failed_cleanup_keeps_its_id_blocked_for_30_days(redis_url, conn, monkeypatch):
    client = make_app(redis_url, CLEANUP_DELAY=0, CLEANUP_RETRIES=0).test_client()
    job_id = post(client, "merge_request_merge.json").json["job_id"]
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GITLAB_URL", "")  # a setting the job refuses: it fails for good
    SimpleWorker([Queue(QUEUE, connection=conn)], connection=conn).work(burst=True)
    assert Job.fetch(job_id, connection=conn).get_status() == "failed"
    assert conn.ttl(f"rq:job:{job_id}") > 29 * DAY
    again = post(client, "merge_request_merge.json")
    assert again.status_code == 200 and again.json == {"status": "duplicate", "job_id": job_id}


# --- a refused write -------------------------------------------------------------------------


@pytest.mark.parametrize("refused, delay", [(("hset",), 60), (("hset",), 0), (("evalsha", "eval"), 60)],
                         ids=["no-hset-scheduled", "no-hset-queued", "no-scripts"])
def test_a_refused_write_leaves_the_id_free_for_gitlabs_resend(redis_url, conn, refused, delay):
    """Redis refuses the job's write (an ACL user without it): 503, nothing written, the re-send is taken."""
    conn.set("unrelated", "value")
    snapshot = keyspace(conn)
    try:
        refused_app = make_app(acl_user(conn, "refused", *refused), CLEANUP_DELAY=delay)
        answer = post(refused_app.test_client(), "merge_request_merge.json")
        assert answer.status_code == 503 and answer.json["error"].startswith("queue unavailable (Redis): ")
        assert "pw-refused" not in answer.get_data(as_text=True)
        assert keyspace(conn) == snapshot
    finally:
        conn.acl_deluser("refused")
    resent = post(make_app(redis_url, CLEANUP_DELAY=delay).test_client(), "merge_request_merge.json")
    assert resent.status_code == 202 and resent.json["status"] == "enqueued"
    assert job_ids(conn) == [resent.json["job_id"]]


# --- a Redis restart -------------------------------------------------------------------------


def test_nothing_accepted_is_lost_or_doubled_across_a_redis_restart(tmp_path):
    """Redis with appendfsync always is killed and started again on the same files: every job
    answered 202 is still there, once; each re-send is a duplicate; what was refused during the
    outage is accepted after it."""
    server = RedisServer(tmp_path / "redis", appendfsync="always").start()
    try:
        conn = redis.Redis.from_url(server.url)
        client = make_app(server.url, CLEANUP_DELAY=60).test_client()
        accepted = [merge(client, iid).json["job_id"] for iid in (101, 102, 103)]
        pipeline = post(client, "pipeline_main.json", "Pipeline Hook")
        assert pipeline.status_code == 202
        accepted.append(pipeline.json["job_id"])
        assert job_ids(conn) == accepted

        server.crash()
        during = merge(client, 104)
        assert during.status_code == 503 and "Redis" in during.json["error"]
        server.start()  # same port, same append-only file

        assert job_ids(conn) == accepted  # fsynced before the 202: all there, once
        for iid, job_id in zip((101, 102, 103), accepted):
            again = merge(client, iid, key=f"resent-{iid}")  # GitLab's "Resend" of an answered delivery
            assert again.json == {"status": "duplicate", "job_id": job_id}
        assert post(client, "pipeline_main.json", "Pipeline Hook").json["status"] == "duplicate"
        resent = merge(client, 104)  # the one refused during the outage
        assert resent.status_code == 202 and resent.json["status"] == "enqueued"
        assert job_ids(conn) == accepted + [resent.json["job_id"]]
        registry = ScheduledJobRegistry(queue=Queue(QUEUE, connection=conn))
        assert registry.count == 4 and Queue(QUEUE, connection=conn).job_ids == [accepted[3]]
        conn.close()
    finally:
        server.stop()


# --- a plain RQ worker -----------------------------------------------------------------------


@pytest.mark.e2e
def test_a_plain_rq_worker_runs_an_accepted_cleanup(tmp_path, redis_url, conn, gitlab):
    """`rq worker tagsweeper --with-scheduler` needs nothing of tagsweeper's to run a delivery's job;
    the finished cleanup then blocks its id for the 30-day dedupe window."""
    project, repos, digests = make_shop(gitlab)
    client = make_app(redis_url, CLEANUP_DELAY=1).test_client()
    body = json.dumps(merge_payload(project))
    resp = client.post("/hooks/gitlab", data=body, headers=headers())
    assert resp.status_code == 202, resp.json
    job_id = resp.json["job_id"]
    time.sleep(1.5)  # due: the burst worker's scheduler enqueues it
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "GITLAB_URL": gitlab.url,
           "GITLAB_TOKEN": gitlab.token, "REGISTRY_MODE": "api", "LOG_FORMAT": "text"}
    log = open(tmp_path / "rq-worker.log", "wb")
    worker = subprocess.Popen([str(Path(sys.executable).parent / "rq"), "worker", QUEUE, "--with-scheduler",
                               "--burst", "--url", redis_url], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while Job.fetch(job_id, connection=conn).get_status(refresh=True) not in ("finished", "failed"):
            assert time.monotonic() < deadline, (tmp_path / "rq-worker.log").read_text()
            time.sleep(0.1)
    finally:
        # RQ's burst teardown can wait on its pubsub thread for a minute: the job is done, stop it.
        stop(worker)
    job = Job.fetch(job_id, connection=conn)
    assert job.get_status() == "finished", (tmp_path / "rq-worker.log").read_text()[-4000:]
    assert_registry(gitlab, repos, digests, {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8]})
    assert conn.ttl(f"rq:job:{job_id}") > 29 * DAY  # the dedupe window, from when it finished
    again = client.post("/hooks/gitlab", data=body, headers=headers(**{"Idempotency-Key": "resent"}))
    assert again.status_code == 200 and again.json == {"status": "duplicate", "job_id": job_id}
