"""The hooks app against a real redis-server: what each answer leaves in Redis, and nothing else."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from hooks import create_app
from hooks.logs import LOGGER_NAME, JsonFormatter
from tests.support.webapp import SECOND_SECRET, SECRET, body_of, headers, keyspace, make_app, post
from workers.common.settings import MISSING_SECRET
from tests.support.procs import free_port
from tests.support.queue import job_ids

REDIS_PASSWORD = "hunter2-redis-pass"
QUEUE = "tagsweeper"
TIP = "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"
KEY = "e1a2b3c4-d5e6-47f8-9a0b-c1d2e3f4a5b6"


@pytest.fixture
def client(redis_url):
    return make_app(redis_url).test_client()


def job_keys(conn: redis.Redis) -> list[bytes]:
    return sorted(conn.keys("rq:job:*"))




def dead_redis_url() -> str:
    return f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0"


# --- enqueued --------------------------------------------------------------------------


def test_merge_schedules_one_cleanup_job(client, conn):
    before = datetime.now(timezone.utc)
    resp = post(client, "merge_request_merge.json")
    assert resp.status_code == 202, resp.json
    job_id = resp.json["job_id"]
    assert resp.json == {"status": "enqueued", "job_id": job_id, "action": "cleanup_branch"}
    assert job_id.startswith("cleanup-4711-merge-")
    assert job_ids(conn) == [job_id]  # an RQ job the moment it is answered
    queue = Queue(QUEUE, connection=conn)
    registry = ScheduledJobRegistry(queue=queue)
    assert registry.get_job_ids(cleanup=False) == [job_id]
    assert queue.count == 0  # delayed, not runnable yet
    assert job_keys(conn) == [f"rq:job:{job_id}".encode()]
    scheduled = registry.get_scheduled_time(job_id)
    assert before + timedelta(seconds=58) <= scheduled <= datetime.now(timezone.utc) + timedelta(seconds=61)

    job = Job.fetch(job_id, connection=conn)
    assert job.func_name == "workers.jobs.cleanup_branch"
    assert job.args == ()
    assert job.kwargs == {
        "project_id": 4711,
        "branch": "Feature/Checkout-Flow",
        "trigger": "merge",
        "project_path": "acme/shop",
        "target_project_id": 4711,
        "target_branch": "main",
        "mr_iid": 38,
        "default_branch": "main",
        "shas": [TIP],
        "delivery": KEY,
    }
    assert job.meta == {"delivery": KEY, "trigger": "merge"}
    assert job.description == "cleanup acme/shop branch Feature/Checkout-Flow after merge !38"
    assert job.origin == QUEUE
    assert job.timeout == 900
    assert job.result_ttl == 30 * 86400
    assert job.failure_ttl == 30 * 86400
    assert job.retries_left == 5
    assert job.retry_intervals == [30, 60, 300, 900, 3600]
    assert job.get_status() == "scheduled"


def test_without_delay_the_cleanup_is_queued_now(redis_url, conn):
    client = make_app(redis_url, CLEANUP_DELAY="0").test_client()
    resp = post(client, "push_branch_deleted.json", "Push Hook")
    assert resp.status_code == 202, resp.json
    queue = Queue(QUEUE, connection=conn)
    assert queue.job_ids == [resp.json["job_id"]]
    assert ScheduledJobRegistry(queue=queue).count == 0
    job = Job.fetch(resp.json["job_id"], connection=conn)
    assert job.get_status() == "queued"
    assert job.kwargs["trigger"] == "branch_deleted"
    assert job.kwargs["branch"] == "Feature/Checkout-Flow"
    assert job.kwargs["shas"] == [TIP]
    assert job.description == "cleanup acme/shop branch Feature/Checkout-Flow after branch deletion"


def test_resent_delivery_is_a_duplicate(client, conn):
    first = post(client, "merge_request_merge.json")
    snapshot = keyspace(conn)
    again = post(client, "merge_request_merge.json")
    assert again.status_code == 200
    assert again.json == {"status": "duplicate", "job_id": first.json["job_id"]}
    assert job_ids(conn) == [first.json["job_id"]]
    assert keyspace(conn) == snapshot


def test_an_id_that_is_an_rq_job_already_is_a_duplicate(client, conn):
    # The job came from elsewhere (`tagsweeper replay`, another web process): it blocks a repeat.
    job_id = post(client, "merge_request_merge.json").json["job_id"]
    conn.flushall()
    Queue(QUEUE, connection=conn).enqueue_call("workers.jobs.cleanup_branch", kwargs={"branch": "kept"},
                                               job_id=job_id)
    snapshot = keyspace(conn)
    again = post(client, "merge_request_merge.json")
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    assert keyspace(conn) == snapshot
    assert Job.fetch(job_id, connection=conn).kwargs == {"branch": "kept"}


def test_project_hook_and_group_hook_make_one_job(client, conn):
    project_hook = post(client, "merge_request_merge.json", **{"Idempotency-Key": "project-hook-key"})
    group_hook = post(client, "merge_request_merge.json", **{"Idempotency-Key": "group-hook-key",
                                                              "X-Gitlab-Token": SECOND_SECRET})
    assert project_hook.status_code == 202
    assert group_hook.status_code == 200 and group_hook.json["status"] == "duplicate"
    assert group_hook.json["job_id"] == project_hook.json["job_id"]
    assert job_ids(conn) == [project_hook.json["job_id"]]
    assert Job.fetch(project_hook.json["job_id"], connection=conn).meta["delivery"] == "project-hook-key"


def test_merge_and_branch_deletion_are_separate_jobs(client, conn):
    assert post(client, "merge_request_merge.json").status_code == 202
    assert post(client, "push_branch_deleted.json", "Push Hook").status_code == 202
    assert len(set(job_ids(conn))) == 2
    assert len(job_keys(conn)) == 2


def test_recreated_branch_deleted_again_is_a_new_job(client, conn):
    payload = json.loads(body_of("push_branch_deleted.json"))
    first = client.post("/hooks/gitlab", json=payload, headers=headers("Push Hook"))
    payload["before"] = "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"
    second = client.post("/hooks/gitlab", json=payload, headers=headers("Push Hook"))
    assert first.status_code == second.status_code == 202
    assert first.json["job_id"] != second.json["job_id"]
    assert job_ids(conn) == [first.json["job_id"], second.json["job_id"]]


def test_pipeline_is_recorded_at_once_and_status_changes_collapse(client, conn):
    payload = json.loads(body_of("pipeline_merge_request.json"))
    payload["object_attributes"]["status"] = "running"
    resp = client.post("/hooks/gitlab", json=payload, headers=headers("Pipeline Hook", **{"Idempotency-Key": "k1"}))
    assert resp.status_code == 202, resp.json
    assert resp.json["action"] == "record_pipeline"
    queue = Queue(QUEUE, connection=conn)
    assert queue.job_ids == [resp.json["job_id"]]  # no delay, even with CLEANUP_DELAY=60
    job = Job.fetch(resp.json["job_id"], connection=conn)
    assert job.func_name == "workers.jobs.record_pipeline"
    assert job.kwargs == {"project_id": 4711, "ref": "Feature/Checkout-Flow", "sha": TIP, "tag": False,
                          "pipeline_id": 90211, "delivery": "k1", "status": "running"}
    assert job.result_ttl == 3600
    assert job.retries_left == 3 and job.retry_intervals == [10]
    assert job.meta == {"delivery": "k1", "trigger": "pipeline"}

    payload["object_attributes"]["status"] = "pending"
    again = client.post("/hooks/gitlab", json=payload, headers=headers("Pipeline Hook", **{"Idempotency-Key": "k2"}))
    assert again.json == {"status": "duplicate", "job_id": resp.json["job_id"]}
    assert job_ids(conn) == [resp.json["job_id"]]
    assert queue.count == 1

    # Its success is a job of its own (it may schedule the branch's retention pass); sent twice, one job.
    succeeded = post(client, "pipeline_merge_request.json", "Pipeline Hook")
    assert succeeded.status_code == 202 and succeeded.json["job_id"] == resp.json["job_id"] + "-success"
    assert Job.fetch(succeeded.json["job_id"], connection=conn).kwargs["status"] == "success"
    resent = post(client, "pipeline_merge_request.json", "Pipeline Hook")
    assert resent.json == {"status": "duplicate", "job_id": succeeded.json["job_id"]}
    assert queue.count == 2


def test_a_successful_deployment_is_recorded_at_once_and_a_failed_one_ignored(client, conn):
    resp = post(client, "deployment_success.json", "Deployment Hook")
    assert resp.status_code == 202, resp.json
    assert resp.json["action"] == "record_deployment"
    job = Job.fetch(resp.json["job_id"], connection=conn)
    assert Queue(QUEUE, connection=conn).job_ids == [job.id]  # no delay: a hint is wanted at once
    assert job.func_name == "workers.jobs.record_deployment"
    assert job.kwargs == {"project_id": 4711, "deployment_id": 812, "environment": "review/feature-checkout-flow",
                          "sha": TIP, "status": "success", "delivery": KEY}
    assert job.meta == {"delivery": KEY, "trigger": "deployment"}
    again = post(client, "deployment_success.json", "Deployment Hook", **{"Idempotency-Key": "k2"})
    assert again.json == {"status": "duplicate", "job_id": job.id}

    payload = json.loads(body_of("deployment_success.json"))
    payload["status"] = "failed"
    failed = client.post("/hooks/gitlab", json=payload, headers=headers("Deployment Hook", **{"Idempotency-Key": "k3"}))
    assert failed.status_code == 200 and failed.json["status"] == "ignored"
    assert job_ids(conn) == [job.id]


def test_chunked_body_without_content_length_is_read(client, conn):
    body = body_of("merge_request_merge.json")
    resp = client.post("/hooks/gitlab", input_stream=io.BytesIO(body), headers=headers(),
                       environ_overrides={"wsgi.input_terminated": True})
    assert resp.status_code == 202, resp.json
    assert job_ids(conn) == [resp.json["job_id"]]


# --- ignored ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, event, body, reason",
    [
        ("merge_request_close.json", "Merge Request Hook", None, "close"),
        (None, "Issue Hook", {"object_kind": "issue", "object_attributes": {"id": 1}}, "Issue Hook"),
        (None, "Tag Push Hook", {"object_kind": "tag_push", "ref": "refs/tags/v1", "after": "1" * 40},
         "Tag Push Hook"),
        (None, "Push Hook", {"object_kind": "push", "ref": "refs/heads/x", "after": "1" * 40,
                             "project_id": 1}, "not a branch deletion"),
        (None, "Strange New Hook", {"object_kind": "strange"}, "Strange New Hook"),
    ],
)
def test_authentic_deliveries_that_need_nothing_are_ignored(client, conn, name, event, body, reason):
    snapshot = keyspace(conn)
    data = body_of(name) if name else json.dumps(body).encode()
    resp = client.post("/hooks/gitlab", data=data, headers=headers(event))
    assert resp.status_code == 200, resp.json
    assert resp.json["status"] == "ignored"
    assert reason in resp.json["reason"]
    assert keyspace(conn) == snapshot


# --- refused ---------------------------------------------------------------------------


def with_token(token):
    h = headers()
    if token is None:
        del h["X-Gitlab-Token"]
    else:
        h["X-Gitlab-Token"] = token
    return h


BAD_MERGE = json.loads(body_of("merge_request_merge.json"))
BAD_MERGE["object_attributes"]["iid"] = "38"

REFUSALS = [
    ("no token", with_token(None), body_of("merge_request_merge.json"), 401, "missing or wrong X-Gitlab-Token"),
    ("wrong token", with_token("nope"), body_of("merge_request_merge.json"), 401,
     "missing or wrong X-Gitlab-Token"),
    ("wrong token, bad body", with_token("nope"), b"\xff", 401, "missing or wrong X-Gitlab-Token"),
    ("not json", headers(), b"{oops", 400, "body is not valid JSON"),
    ("not utf-8", headers(), b'{"a": "\xe9"}', 400, "body is not UTF-8"),
    ("a list", headers(), b"[]", 400, "body must be a JSON object"),
    ("iid as string", headers(), json.dumps(BAD_MERGE).encode(), 400, "object_attributes.iid"),
    ("kind mismatch", headers("Push Hook"), body_of("merge_request_merge.json"), 400,
     "object_kind does not match X-Gitlab-Event"),
    ("too large", with_token("nope"), b" " * 2048 + b"{}", 413, "larger than the limit of 1024 bytes"),
]


@pytest.mark.parametrize("hdrs, data, status, message", [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refused_deliveries_change_nothing(redis_url, conn, hdrs, data, status, message):
    client = make_app(redis_url, MAX_BODY_BYTES=64 * 1024 if status != 413 else 1024).test_client()
    conn.set("unrelated", "value")
    snapshot = keyspace(conn)
    resp = client.post("/hooks/gitlab", data=data, headers=hdrs)
    assert resp.status_code == status
    assert resp.is_json and set(resp.json) == {"error"}
    assert message in resp.json["error"]
    assert keyspace(conn) == snapshot


def test_chunked_body_over_the_limit_is_refused(redis_url, conn):
    client = make_app(redis_url, MAX_BODY_BYTES=1000).test_client()
    snapshot = keyspace(conn)
    resp = client.post("/hooks/gitlab", input_stream=io.BytesIO(b" " * 5000), headers=headers(),
                       environ_overrides={"wsgi.input_terminated": True})
    assert resp.status_code == 413
    assert "larger than the limit of 1000 bytes" in resp.json["error"]
    assert keyspace(conn) == snapshot


def test_body_of_exactly_the_limit_is_accepted(redis_url, conn):
    body = body_of("merge_request_merge.json")
    client = make_app(redis_url, MAX_BODY_BYTES=len(body)).test_client()
    assert client.post("/hooks/gitlab", data=body, headers=headers()).status_code == 202


def test_unreachable_redis_is_503_without_the_password(caplog):
    client = make_app(dead_redis_url()).test_client()
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        resp = post(client, "merge_request_merge.json")
    assert resp.status_code == 503
    assert resp.json["error"].startswith("queue unavailable (Redis): ")
    assert REDIS_PASSWORD not in resp.get_data(as_text=True)
    assert REDIS_PASSWORD not in caplog.text
    # An ignored delivery needs no Redis and still answers 200.
    assert post(client, "merge_request_close.json").status_code == 200


def test_other_errors_are_json(client):
    assert client.get("/hooks/gitlab").status_code == 405
    assert "error" in client.get("/hooks/gitlab").json
    assert client.get("/nowhere").status_code == 404
    assert "error" in client.get("/nowhere").json


# --- health ----------------------------------------------------------------------------


def test_healthz_needs_no_redis():
    client = make_app(dead_redis_url()).test_client()
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.json == {"status": "ok"}


def test_readyz(client):
    resp = client.get("/readyz")
    assert resp.status_code == 200 and resp.json == {"status": "ready"}


def test_readyz_on_dead_redis():
    client = make_app(dead_redis_url()).test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json["error"].startswith("queue unavailable (Redis): ")
    assert REDIS_PASSWORD not in resp.get_data(as_text=True)


# --- settings --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", " , ,", []])
def test_missing_webhook_secret_refuses_to_start(redis_url, monkeypatch, value):
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    config = {"REDIS_URL": redis_url}
    if value is not None:
        config["WEBHOOK_SECRET"] = value
    with pytest.raises(RuntimeError) as err:
        create_app(config)
    assert str(err.value) == MISSING_SECRET
    assert "WEBHOOK_SECRET is not set: the web process refuses to start without a webhook secret; " \
           "set it to the secret token configured on the GitLab webhook" == str(err.value)


def test_settings_come_from_the_environment_when_the_app_is_created(redis_url, conn, monkeypatch):
    # hooks was imported above already: what counts is the environment at create_app().
    monkeypatch.setenv("WEBHOOK_SECRET", " env-secret ,")
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("CLEANUP_DELAY", "0")
    monkeypatch.setenv("RQ_QUEUE", "other-queue")
    monkeypatch.setenv("MAX_BODY_BYTES", "100000")
    app = create_app()
    assert app.config["WEBHOOK_SECRETS"] == ("env-secret",)
    assert app.config["MAX_CONTENT_LENGTH"] == 100000
    resp = app.test_client().post("/hooks/gitlab", data=body_of("merge_request_merge.json"),
                                  headers=headers(**{"X-Gitlab-Token": "env-secret"}))
    assert resp.status_code == 202
    assert job_ids(conn, "other-queue") == [resp.json["job_id"]]
    assert Queue("other-queue", connection=conn).job_ids == [resp.json["job_id"]]


def test_defaults(monkeypatch):
    for name in ("REDIS_URL", "CLEANUP_DELAY", "MAX_BODY_BYTES", "RQ_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    app = create_app({"WEBHOOK_SECRET": "x"})
    assert app.config["REDIS_URL"] == "redis://localhost:6379/0"
    assert app.config["CLEANUP_DELAY"] == 60
    assert app.config["MAX_BODY_BYTES"] == app.config["MAX_CONTENT_LENGTH"] == 1048576
    assert app.config["RQ_QUEUE"] == "tagsweeper"


@pytest.mark.parametrize(
    "setting, value",
    [("CLEANUP_DELAY", "soon"), ("CLEANUP_DELAY", "-1"), ("CLEANUP_DELAY", "1.5"), ("CLEANUP_DELAY", True),
     ("MAX_BODY_BYTES", "0"), ("MAX_BODY_BYTES", "1MB"), ("REDIS_URL", f"http://:{REDIS_PASSWORD}@x/0")],
)
def test_bad_settings_refuse_to_start(setting, value):
    with pytest.raises(RuntimeError) as err:
        create_app({"WEBHOOK_SECRET": "x", setting: value})
    assert setting in str(err.value)
    assert REDIS_PASSWORD not in str(err.value)


# --- logs ------------------------------------------------------------------------------


def test_one_structured_line_per_delivery_and_never_a_secret(redis_url, caplog):
    client = make_app(redis_url).test_client()
    wrong_token = "wrong-token-" + SECRET
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        responses = [
            post(client, "merge_request_merge.json"),
            post(client, "merge_request_merge.json", **{"X-Gitlab-Token": SECOND_SECRET}),
            post(client, "merge_request_close.json"),
            post(client, "merge_request_merge.json", **{"X-Gitlab-Token": wrong_token}),
            client.post("/hooks/gitlab", data=b"[]", headers=headers()),
            post(client, "push_branch_deleted.json", "Push Hook"),
        ]
    # Deliveries only: creating the app also logs whether the dashboard is on (hooks/dashboard.py).
    records = [r for r in caplog.records if r.name == LOGGER_NAME and r.getMessage() == "gitlab delivery"]
    assert len(records) == len(responses)
    lines = [json.loads(JsonFormatter().format(r)) for r in records]
    assert [(line["outcome"], line["status"]) for line in lines] == [
        ("enqueued", 202), ("duplicate", 200), ("ignored", 200), ("unauthorized", 401),
        ("bad_request", 400), ("enqueued", 202),
    ]
    first = lines[0]
    assert first["event"] == "Merge Request Hook"
    assert first["delivery"] == KEY
    assert first["project_id"] == 4711
    assert first["branch"] == "Feature/Checkout-Flow"
    assert first["job_id"] == responses[0].json["job_id"]
    assert isinstance(first["duration_ms"], float)

    everything = caplog.text + "\n".join(json.dumps(line) for line in lines)
    everything += "".join(r.get_data(as_text=True) for r in responses)
    for secret in (SECRET, SECOND_SECRET, wrong_token):
        assert secret not in everything
    # Nor the body: a field only the body carries.
    assert "Dana Developer" not in everything
