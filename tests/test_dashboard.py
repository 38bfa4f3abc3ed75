"""The operator's dashboard: rq-dashboard at /rq/ and GET /audit, behind HTTP basic auth, on real Redis.

The app runs under Flask's test client against the suite's redis-server; failed jobs come
from a real RQ worker. The last test is end to end: gunicorn, a worker subprocess, the
GitLab emulator and the real registry, with the failed cleanup requeued over HTTP.
"""

from __future__ import annotations

import base64
import json
import logging
import time

import pytest
import requests
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import FailedJobRegistry

from hooks import create_app
from hooks.dashboard import dashboard_redis_url
from hooks.logs import LOGGER_NAME
from tests.support.procs import free_port
from tests.support.service import Service
from tests.support.webapp import DASHBOARD_PASSWORD as PASSWORD
from tests.support.webapp import DASHBOARD_SECRET as SECRET
from tests.support.webapp import DASHBOARD_USER as USER
from tests.support.webapp import basic
from tests.support.webapp import dashboard_app as make_app
from workers.common import audit

QUEUE = "tagsweeper"
REALM = 'Basic realm="tagsweeper"'


@pytest.fixture
def client(redis_url):
    return make_app(redis_url).test_client()


def failed_job(conn, monkeypatch, redis_url, job_id: str = "pipeline-7-bad") -> Job:
    """A job that really failed on a real (in-process) RQ worker: a bad setting, which `fix` puts right."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("PIPELINE_MEMORY_CAP", "0")
    queue = Queue(QUEUE, connection=conn)
    job = queue.enqueue_call("workers.jobs.record_pipeline", kwargs={"project_id": 7, "ref": "main", "sha": "a" * 40},
                             job_id=job_id, description="record pipeline of project 7 ref main")
    run_worker(conn)
    assert job.get_status(refresh=True) == "failed"
    return job


def fix(monkeypatch):
    monkeypatch.delenv("PIPELINE_MEMORY_CAP")


def run_worker(conn) -> None:
    SimpleWorker([Queue(QUEUE, connection=conn)], connection=conn).work(burst=True)


def everything(responses) -> str:
    """Bodies and headers of the responses, as one text to search for secrets."""
    return "\n".join(r.get_data(as_text=True) + str(r.headers) for r in responses)


# --- off --------------------------------------------------------------------------------


@pytest.mark.parametrize("user, password, missing", [
    ("", "", "DASHBOARD_USER,DASHBOARD_PASSWORD"),
    (USER, "", "DASHBOARD_PASSWORD"),
    ("", PASSWORD, "DASHBOARD_USER"),
    (USER, "   ", "DASHBOARD_PASSWORD"),
])
def test_without_both_credentials_the_dashboard_is_off_and_says_so(redis_url, caplog, user, password, missing):
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        client = make_app(redis_url, DASHBOARD_USER=user, DASHBOARD_PASSWORD=password).test_client()
    for path in ("/rq/", "/rq/0/data/queues.json", "/rq/static/css/main.css", "/audit"):
        resp = client.get(path, headers=basic())
        assert resp.status_code == 404, path
        assert "WWW-Authenticate" not in resp.headers
    assert client.post("/rq/job/x/requeue", headers=basic()).status_code == 404
    lines = [r for r in caplog.records if r.name == LOGGER_NAME and "dashboard off" in r.getMessage()]
    assert len(lines) == 1
    assert "set DASHBOARD_USER and DASHBOARD_PASSWORD" in lines[0].getMessage()
    assert lines[0].missing == missing
    assert lines[0].levelno == (logging.INFO if "," in missing else logging.WARNING)
    assert PASSWORD not in caplog.text
    # The webhook side does not care.
    assert client.get("/healthz").status_code == 200


def test_credentials_come_from_the_environment_when_the_app_starts(redis_url, monkeypatch, caplog):
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("DASHBOARD_USER", USER)
    monkeypatch.setenv("DASHBOARD_PASSWORD", PASSWORD)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        client = create_app({"TESTING": True}).test_client()
    monkeypatch.delenv("DASHBOARD_PASSWORD")  # read once, at start-up
    assert client.get("/rq/", headers=basic()).status_code == 200
    assert "dashboard on at /rq/ and /audit" in caplog.text
    assert PASSWORD not in caplog.text


def test_a_user_name_with_a_colon_refuses_to_start(redis_url):
    with pytest.raises(RuntimeError, match="DASHBOARD_USER must not contain ':'"):
        make_app(redis_url, DASHBOARD_USER="ops:team")


# --- the gate ---------------------------------------------------------------------------


BAD_LOGINS = [
    {},
    basic(password="wrong"),
    basic(password=PASSWORD + "x"),
    basic(password=PASSWORD[:-1]),
    basic(user="admin"),
    basic(user=USER.upper()),
    basic(user="", password=""),
    {"Authorization": f"Bearer {PASSWORD}"},
    {"Authorization": "Basic not-base64!"},
    {"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:" + PASSWORD.encode()).decode()},
]


@pytest.mark.parametrize("headers", BAD_LOGINS)
def test_without_the_right_credentials_every_dashboard_path_is_401(client, conn, monkeypatch, redis_url,
                                                                    caplog, headers):
    job = failed_job(conn, monkeypatch, redis_url)
    responses = []
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        for method, path in [("GET", "/rq/"), ("GET", "/rq"), ("GET", "/rq/0/view/workers"),
                             ("GET", "/rq/0/data/queues.json"), ("GET", f"/rq/0/data/job/{job.id}.json"),
                             ("GET", "/rq/0/data/jobs/tagsweeper/failed/8/asc/1.json"),
                             ("GET", "/rq/static/css/main.css"), ("GET", "/rq/no/such/page"),
                             ("GET", "/audit"), ("GET", "/audit?limit=0"),
                             ("POST", f"/rq/job/{job.id}/requeue"), ("POST", "/rq/requeue/tagsweeper"),
                             ("POST", f"/rq/job/{job.id}/delete")]:
            resp = client.open(path, method=method, headers=headers)
            assert resp.status_code == 401, (method, path)
            assert resp.headers["WWW-Authenticate"] == REALM
            assert "login required" in resp.json["error"]
            responses.append(resp)
    # Nothing was requeued or deleted.
    assert job.get_status(refresh=True) == "failed"
    assert FailedJobRegistry(QUEUE, connection=conn).get_job_ids() == [job.id]
    assert PASSWORD not in everything(responses)
    assert PASSWORD not in caplog.text


def test_a_refused_login_is_logged_without_what_was_typed(client, caplog):
    typed = "typed-" + PASSWORD
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        client.get("/rq/", headers=basic(user=PASSWORD, password=typed))
    refused = [r for r in caplog.records if r.getMessage() == "dashboard login refused"]
    assert len(refused) == 1 and refused[0].path == "/rq/"
    assert PASSWORD not in caplog.text and typed not in caplog.text


def test_cross_site_posts_and_state_changing_gets_are_refused(client, conn, monkeypatch, redis_url):
    job = failed_job(conn, monkeypatch, redis_url)
    for site in ("cross-site", "same-site"):
        resp = client.post(f"/rq/job/{job.id}/requeue", headers={**basic(), "Sec-Fetch-Site": site})
        assert resp.status_code == 403
    resp = client.get("/rq/requeue/tagsweeper", headers=basic())
    assert resp.status_code == 405 and resp.headers["Allow"] == "POST"
    assert job.get_status(refresh=True) == "failed"
    # The dashboard's own page (same origin) may.
    resp = client.post(f"/rq/job/{job.id}/requeue", headers={**basic(), "Sec-Fetch-Site": "same-origin"})
    assert resp.status_code == 200 and resp.json == {"status": "OK"}
    assert job.get_status(refresh=True) == "queued"


# --- the dashboard itself ---------------------------------------------------------------


def test_the_dashboard_pages_and_json_show_our_queue_and_its_failed_job(client, conn, monkeypatch, redis_url,
                                                                        caplog):
    job = failed_job(conn, monkeypatch, redis_url)
    auth = basic()
    responses = []

    def get(path):
        resp = client.get(path, headers=auth)
        responses.append(resp)
        return resp

    for page in ("/rq/", "/rq/0/view/workers",
                 f"/rq/0/view/jobs/{QUEUE}/failed/8/asc/1", f"/rq/0/view/job/{job.id}"):
        resp = get(page)
        assert resp.status_code == 200, page
        assert resp.mimetype == "text/html" and "RQ dashboard" in resp.get_data(as_text=True)
    assert get("/rq/static/css/main.css").status_code == 200
    # The "Jobs" tab opens our queue's failed jobs, not RQ's "default" queue.
    resp = get("/rq/0/view/jobs")
    assert resp.status_code == 302 and resp.headers["Location"] == f"/rq/0/view/jobs/{QUEUE}/failed/8/asc/1"

    queues = get("/rq/0/data/queues.json").json["queues"]
    ours = next(q for q in queues if q["name"] == QUEUE)
    assert ours["failed_job_registry_count"] == 1 and ours["count"] == 0

    listed = get(f"/rq/0/data/jobs/{QUEUE}/failed/8/asc/1.json").json
    assert [j["id"] for j in listed["jobs"]] == [job.id]
    assert "ConfigError: PIPELINE_MEMORY_CAP must be at least 1" in listed["jobs"][0]["exc_info"]
    assert listed["jobs"][0]["description"] == "record pipeline of project 7 ref main"

    info = get(f"/rq/0/data/job/{job.id}.json").json
    assert info["status"] == "failed" and info["origin"] == QUEUE
    assert get("/rq/0/data/workers.json").json == {"workers": []}  # the burst worker has left

    assert PASSWORD not in everything(responses) and SECRET not in everything(responses)
    assert PASSWORD not in caplog.text


def test_secrets_in_a_job_s_exception_are_blanked_out_of_the_dashboard(redis_url, conn, monkeypatch):
    """The dashboard shows tracebacks verbatim; whatever an exception quoted, the secrets never show."""
    gitlab_token = "configured-gitlab-token-1234"
    leaky = f"{PASSWORD} {SECRET} {gitlab_token} glpat-AbCdEfGhIjKlMnOpQrSt"
    monkeypatch.setenv("REDIS_URL", redis_url)
    job = Queue(QUEUE, connection=conn).enqueue_call(
        "workers.jobs.record_pipeline", kwargs={"project_id": 7, "ref": "main", "sha": leaky}, job_id="pipeline-7-leak")
    run_worker(conn)
    assert PASSWORD in job.latest_result().exc_string  # RQ keeps what the exception said
    client = make_app(redis_url, GITLAB_TOKEN=gitlab_token).test_client()
    responses = [client.get(p, headers=basic()) for p in
                 (f"/rq/0/data/jobs/{QUEUE}/failed/8/asc/1.json", f"/rq/0/data/job/{job.id}.json",
                  f"/rq/0/view/job/{job.id}", "/rq/0/view/workers")]
    assert [r.status_code for r in responses] == [200] * 4
    assert "sha must be 40 lower-case hex characters, got '*** *** *** ***'" in responses[1].json["exc_info"]
    text = everything(responses)
    for secret in (PASSWORD, SECRET, gitlab_token, "glpat-AbCdEfGhIjKlMnOpQrSt"):
        assert secret not in text


def test_requeue_through_the_dashboard_makes_the_job_run_again(client, conn, monkeypatch, redis_url):
    job = failed_job(conn, monkeypatch, redis_url)
    fix(monkeypatch)
    resp = client.post(f"/rq/job/{job.id}/requeue", headers=basic())
    assert resp.status_code == 200 and resp.json == {"status": "OK"}
    assert client.get(f"/rq/0/data/jobs/{QUEUE}/failed/8/asc/1.json", headers=basic()).json["jobs"] == []
    assert Queue(QUEUE, connection=conn).job_ids == [job.id]
    run_worker(conn)
    assert job.get_status(refresh=True) == "finished"
    assert client.get(f"/rq/0/data/job/{job.id}.json", headers=basic()).json["status"] == "finished"


def test_requeue_all_takes_every_failed_job(client, conn, monkeypatch, redis_url):
    first = failed_job(conn, monkeypatch, redis_url, "pipeline-7-one")
    second = failed_job(conn, monkeypatch, redis_url, "pipeline-7-two")
    resp = client.post(f"/rq/requeue/{QUEUE}", headers=basic())
    assert resp.status_code == 200 and resp.json == {"status": "OK", "count": 2}
    assert sorted(Queue(QUEUE, connection=conn).job_ids) == sorted([first.id, second.id])


def test_the_redis_password_never_reaches_the_dashboard(redis_url, conn):
    """A REDIS_URL with a password (in the userinfo, or as ?password=) works, and the pages never show it."""
    redis_password = "redis-acl-Pa55-for-dashboard"
    conn.execute_command("ACL", "SETUSER", "dash", "on", f">{redis_password}", "~*", "&*", "+@all")
    try:
        host = redis_url.split("://", 1)[1].split("/", 1)[0]
        for url in (f"redis://dash:{redis_password}@{host}/0",
                    f"redis://{host}/0?username=dash&password={redis_password}"):
            client = make_app(url).test_client()
            responses = [client.get(p, headers=basic()) for p in
                         ("/rq/", "/rq/0/view/workers", f"/rq/0/view/jobs/{QUEUE}/failed/8/asc/1",
                          "/rq/0/data/queues.json", "/audit")]
            assert [r.status_code for r in responses] == [200] * len(responses)
            assert "Connection Error" not in responses[0].get_data(as_text=True)
            assert redis_password not in everything(responses)
    finally:
        conn.execute_command("ACL", "DELUSER", "dash")


def test_dashboard_redis_url_moves_the_password_out_and_adds_timeouts():
    assert dashboard_redis_url("redis://:p%40ss@h:1/2") == (
        "redis://h:1/2?socket_timeout=5&socket_connect_timeout=2", "p@ss")
    assert dashboard_redis_url("redis://u:pw@h/0?db=3") == (
        "redis://u@h/0?db=3&socket_timeout=5&socket_connect_timeout=2", "pw")
    assert dashboard_redis_url("redis://h/0?password=a%20b&socket_timeout=1") == (
        "redis://h/0?socket_timeout=1&socket_connect_timeout=2", "a b")
    assert dashboard_redis_url("unix:///run/redis.sock?db=1") == (
        "unix:///run/redis.sock?db=1&socket_timeout=5&socket_connect_timeout=2", None)


# --- GET /audit -------------------------------------------------------------------------


def test_audit_answers_the_trail_newest_first_with_filters(client, conn):
    now = time.time()
    for i, (pid, path, tag) in enumerate([(4711, "acme/shop", "feature-a"), (4800, "acme/other", "feature-b"),
                                          (4711, "acme/shop", "feature-c")]):
        audit.record(conn, {"time": now + i, "project_id": pid, "project": path, "branch": "f", "trigger": "merge",
                            "repository": path, "tag": tag, "decision": "deleted", "reason": "branch tag"})
        time.sleep(0.002)  # distinct stream ids
    resp = client.get("/audit", headers=basic())
    assert resp.status_code == 200
    assert [e["tag"] for e in resp.json["entries"]] == ["feature-c", "feature-b", "feature-a"]
    assert resp.json["count"] == 3
    assert [e["tag"] for e in client.get("/audit?project=4711", headers=basic()).json["entries"]] == \
        ["feature-c", "feature-a"]
    assert [e["tag"] for e in client.get("/audit?project=acme/other", headers=basic()).json["entries"]] == \
        ["feature-b"]
    assert [e["tag"] for e in client.get("/audit?limit=1", headers=basic()).json["entries"]] == ["feature-c"]
    # since: unix seconds or ISO 8601, in the future means nothing yet.
    assert client.get(f"/audit?since={now - 60}", headers=basic()).json["count"] == 3
    assert client.get(f"/audit?since={int(now) + 3600}", headers=basic()).json["count"] == 0
    assert client.get("/audit?since=2000-01-01T00:00:00Z", headers=basic()).json["count"] == 3
    assert client.get("/audit?since=2999-01-01", headers=basic()).json["count"] == 0


@pytest.mark.parametrize("query, message", [
    ("limit=0", "limit must be a whole number from 1 to 1000"),
    ("limit=1001", "limit must be a whole number from 1 to 1000"),
    ("limit=ten", "limit must be a whole number from 1 to 1000"),
    ("limit=-5", "limit must be a whole number from 1 to 1000"),
    ("since=yesterday", "since must be unix seconds or an ISO 8601 time"),
    ("since=-1", "since must be unix seconds or an ISO 8601 time"),
    ("since=nan", "since must be unix seconds or an ISO 8601 time"),
    ("since=1e20", "since must be unix seconds or an ISO 8601 time"),
    ("project=a%20b", "project must be a numeric project id or a path"),
    ("project=", "project must be a numeric project id or a path"),
])
def test_audit_refuses_bad_query_values(client, query, message):
    resp = client.get(f"/audit?{query}", headers=basic())
    assert resp.status_code == 400
    assert resp.json["error"].startswith(message)


def test_audit_on_a_dead_redis_is_503_without_the_password():
    redis_password = "dead-redis-Pa55"
    client = make_app(f"redis://:{redis_password}@127.0.0.1:{free_port()}/0").test_client()
    resp = client.get("/audit", headers=basic())
    assert resp.status_code == 503 and resp.json["error"].startswith("queue unavailable (Redis)")
    assert redis_password not in resp.get_data(as_text=True)


# --- end to end -------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_failed_cleanup_requeued_from_the_dashboard_finishes_on_a_real_worker(tmp_path, redis_url,
                                                                                gitlab_stack, gitlab):
    from tests.support.shop import EARLIER, LAST, assert_registry, make_shop, merge_payload

    emu = gitlab_stack.emulator
    svc = Service(tmp_path / "svc", redis_url, emu.url, emu.token, CLEANUP_RETRIES="1", CLEANUP_RETRY_INTERVALS="1",
                  REGISTRY_MODE="api", SWEEP_CRON="off", DASHBOARD_USER=USER, DASHBOARD_PASSWORD=PASSWORD).start()
    auth = (USER, PASSWORD)
    seen: list[requests.Response] = []

    def call(method, path, **kw):
        resp = requests.request(method, svc.url + path, auth=kw.pop("auth", auth), timeout=10, **kw)
        seen.append(resp)
        return resp

    gone = {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8]}
    try:
        project, repos, digests = make_shop(gitlab)
        # GitLab fails the deletes in the second repository only: the first one is cleaned.
        second = project.registry_repositories[1].id
        emu.inject_fault("DELETE", rf"/registry/repositories/{second}/tags/", 500, times=-1)
        job_id = svc.post(merge_payload(project), "Merge Request Hook", key="dash-1").json()["job_id"]
        assert svc.wait_for_job(job_id, timeout=120).get_status() == "failed"
        assert_registry(gitlab, repos[:1], digests, gone)
        assert_registry(gitlab, repos[1:], digests, set())

        assert call("GET", "/rq/", auth=None).status_code == 401
        assert call("GET", "/rq/", auth=(USER, "wrong")).status_code == 401
        # The operator finds the failed cleanup ...
        assert call("GET", "/rq/").status_code == 200
        queues = call("GET", "/rq/0/data/queues.json").json()["queues"]
        assert next(q for q in queues if q["name"] == QUEUE)["failed_job_registry_count"] == 1
        failed = call("GET", f"/rq/0/data/jobs/{QUEUE}/failed/8/asc/1.json").json()["jobs"]
        assert [j["id"] for j in failed] == [job_id]
        assert "still failing" in failed[0]["exc_info"]
        assert failed[0]["description"].startswith(f"cleanup {project.path} branch ")
        info = call("GET", f"/rq/0/data/job/{job_id}.json").json()
        assert info["status"] == "failed"
        assert json.loads(info["metadata"])["report"]["summary"]["failed"] > 0
        workers = call("GET", "/rq/0/data/workers.json").json()["workers"]
        assert len(workers) == 1 and workers[0]["queues"] == [QUEUE]
        assert call("GET", f"/rq/0/view/job/{job_id}").status_code == 200

        # ... GitLab is fixed, and the operator presses "requeue".
        emu.clear_faults()
        resp = call("POST", f"/rq/job/{job_id}/requeue")
        assert resp.status_code == 200 and resp.json() == {"status": "OK"}
        job = svc.wait_for_job(job_id, timeout=60)
        assert job.get_status() == "finished", svc.logs()[-3000:]
        # Run again, it deleted what was left and took the tags already gone as done.
        outcomes = {(d["repository"], d["tag"]): d["decision"] for d in job.return_value()["decisions"]
                    if d["tag"] in gone}
        assert outcomes == {**{(repos[0], t): "absent" for t in gone}, **{(repos[1], t): "deleted" for t in gone}}
        assert call("GET", f"/rq/0/data/job/{job_id}.json").json()["status"] == "finished"
        assert call("GET", f"/rq/0/data/jobs/{QUEUE}/failed/8/asc/1.json").json()["jobs"] == []
        # The trail shows the deletions, newest first, behind the same login.
        assert call("GET", "/audit", auth=None).status_code == 401
        entries = call("GET", f"/audit?project={project.id}&limit=1000").json()["entries"]
        assert {(e["repository"], e["tag"]) for e in entries if e["decision"] == "deleted"} == \
            {(r, t) for r in repos for t in gone}
        assert entries[0]["time"] >= entries[-1]["time"]
    finally:
        svc.stop()
    assert_registry(gitlab, repos, digests, gone)
    text = "\n".join(r.text + str(r.headers) for r in seen) + svc.logs()
    for secret in (PASSWORD, SECRET, emu.token, "e2e-webhook-secret"):
        assert secret not in text
