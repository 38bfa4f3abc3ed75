"""Metrics and the audit trail on real parts: gunicorn with two workers, an RQ worker, redis-server.

The counters live in Redis, so every scrape, whichever gunicorn worker answers it, shows
what all processes counted; the audit trail says the same as the counters and the job's
report, stays bounded, and `tagsweeper audit` reads it back. No secret ever shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest
import redis
import requests

from hooks import create_app
from tests.support.procs import free_port
from tests.support.service import ROOT, SECRET, Service, load_payload
from tests.support.shop import EARLIER, LAST, assert_registry, make_shop, merge_payload
from workers import deletion, jobs, rules
from workers.common import audit, errors, metrics
from workers.common.settings import ConfigError

GONE = {"feature-checkout-flow", LAST, LAST[:8]}  # EARLIER is kept: it is another live branch's head


def scrape(url: str) -> tuple[str, dict[str, float]]:
    # A new connection each time: gunicorn hands them to whichever worker accepts first.
    response = requests.get(url + "/metrics", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.text, metrics.parse(response.text)


def cli(redis_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT), "LOG_FORMAT": "text"}
    return subprocess.run([sys.executable, "-m", "workers.cli", "audit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.e2e
def test_metrics_and_audit_agree_across_processes(tmp_path, redis_url, gitlab_stack, gitlab):
    emu = gitlab_stack.emulator
    # Registry mode: the cleanup talks to GitLab and to the registry, so both request families count.
    svc = Service(tmp_path / "svc", redis_url, emu.url, emu.token, REGISTRY_MODE="registry",
                  REGISTRY_URL=gitlab_stack.registry.url).start()
    try:
        project, repos, digests = make_shop(gitlab)
        project.branches["feature/other"] = EARLIER
        body = merge_payload(project)
        refused = svc.post(body, "Merge Request Hook", key="m-0", token="not-" + SECRET)
        first = svc.post(body, "Merge Request Hook", key="m-1")
        again = svc.post(body, "Merge Request Hook", key="m-1")  # GitLab's "Resend"
        odd = svc.post(body, "Made Up {label} Hook", key="m-2", token="wrong")
        assert (refused.status_code, first.status_code, again.status_code, odd.status_code) == (401, 202, 200, 401)
        assert again.json()["status"] == "duplicate"
        job_id = first.json()["job_id"]
        job = svc.wait_for_job(job_id)
        assert job.get_status() == "finished", svc.logs()[-3000:]
        report = job.return_value()

        # A second project whose branch exists again: the cleanup is skipped, and audited as such.
        other, _, _ = make_shop(gitlab, 4712)
        other.branches["Feature/Checkout-Flow"] = LAST
        push = load_payload("push_branch_deleted.json")
        push["project_id"] = push["project"]["id"] = other.id
        push["project"]["path_with_namespace"] = other.path
        skipped = svc.post(push, "Push Hook", key="p-1")
        assert skipped.status_code == 202
        assert "exists again" in svc.wait_for_job(skipped.json()["job_id"]).return_value()["skipped"]
        svc.wait_idle()

        scrapes = [scrape(svc.url) for _ in range(6)]
    finally:
        svc.stop()
    assert_registry(gitlab, repos, digests, GONE)

    # Every scrape, whichever gunicorn worker answered, shows the same totals.
    texts = [text for text, _ in scrapes]
    assert all(t == texts[0] for t in texts), "scrapes disagree between gunicorn workers"
    text, samples = scrapes[0]
    t = metrics.total
    name = "tagsweeper_deliveries_total"
    assert t(samples, name) == 5
    assert t(samples, name, event="Merge Request Hook", outcome="enqueued") == 1
    assert t(samples, name, event="Merge Request Hook", outcome="duplicate") == 1
    assert t(samples, name, event="Merge Request Hook", outcome="unauthorized") == 1
    assert t(samples, name, event="other", outcome="unauthorized") == 1  # a made-up header is no new label
    assert t(samples, name, event="Push Hook", outcome="enqueued") == 1
    assert "Made Up" not in text
    assert t(samples, "tagsweeper_cleanups_enqueued_total", trigger="merge") == 1
    assert t(samples, "tagsweeper_cleanups_enqueued_total", trigger="branch_deleted") == 1

    # Tag decisions: the counters, the job's report and the audit trail say the same.
    conn = redis.Redis.from_url(redis_url)
    trail = audit.read(conn, project=project.path, limit=1000)
    deleted_in_report = report["summary"]["deleted"]
    assert deleted_in_report == len(GONE) * len(repos)
    assert t(samples, "tagsweeper_tags_total", decision="deleted") == deleted_in_report
    assert t(samples, "tagsweeper_tags_total", decision="deleted", reason_kind="owned") == deleted_in_report
    assert sum(1 for e in trail if e["decision"] == "deleted") == deleted_in_report
    for outcome in ("deleted", "kept", "absent", "failed", "would_delete"):
        in_trail = sum(1 for e in trail if e["decision"] == outcome)
        assert t(samples, "tagsweeper_tags_total", decision=outcome) == in_trail == report["summary"][outcome]
    # Kept tags are counted by kind of reason: bounded words, never a tag or branch name.
    assert {(e["tag"], e["reason_kind"]) for e in trail if e["decision"] == "kept"} == \
        {(EARLIER, "live_head"), (EARLIER[:8], "live_head")}
    assert t(samples, "tagsweeper_tags_total", decision="kept", reason_kind="live_head") == 2
    for tag in GONE | {"latest", "main", "Feature/Checkout-Flow"}:
        assert f'"{tag}"' not in text

    # The trail carries the context of each decision.
    assert {(e["repository"], e["tag"]) for e in trail if e["decision"] == "deleted"} == \
        {(r, tag) for r in repos for tag in GONE}
    for e in trail:
        assert e["project_id"] == project.id and e["project"] == project.path
        assert e["branch"] == "Feature/Checkout-Flow" and e["trigger"] == "merge"
        assert e["delivery"] == "m-1" and e["job_id"] == job_id and e["dry_run"] is False
        assert e["reason"] and isinstance(e["time"], float)
    assert all(e["digest"] == digests[(e["repository"], e["tag"])] for e in trail if e["decision"] == "deleted")
    # Newest first by the stream's own order (ids); decisions made in parallel threads may reach
    # Redis in another order than their clocks read, so their `time`s need not be sorted.
    ids = [tuple(int(part) for part in e["id"].split("-")) for e in trail]
    assert ids == sorted(ids, reverse=True)
    skip = audit.read(conn, project=other.id)
    assert len(skip) == 1 and skip[0]["decision"] == "skipped" and skip[0]["tag"] is None
    assert "exists again" in skip[0]["reason"] and skip[0]["project"] == other.path

    # Jobs: attempts by outcome, their durations, and what they asked GitLab and the registry.
    assert t(samples, "tagsweeper_jobs_total", job="cleanup_branch", outcome="ok") == 1
    assert t(samples, "tagsweeper_jobs_total", job="cleanup_branch", outcome="skipped") == 1
    assert t(samples, "tagsweeper_job_duration_seconds_count", job="cleanup_branch") == 2
    assert t(samples, "tagsweeper_job_duration_seconds_bucket", job="cleanup_branch", le="+Inf") == 2
    assert t(samples, "tagsweeper_job_duration_seconds_sum", job="cleanup_branch") > 0
    assert t(samples, "tagsweeper_gitlab_requests_total", status="200") > 0
    assert t(samples, "tagsweeper_registry_requests_total") > 0
    # Queue depth, computed at scrape time from RQ: all idle now.
    for state in ("queued", "scheduled", "started", "failed"):
        assert f'tagsweeper_queue_depth{{queue="tagsweeper",state="{state}"}}' in samples
    assert t(samples, "tagsweeper_queue_depth") == 0
    assert samples["tagsweeper_up"] == 1

    # No secret anywhere: not in the metrics, not in the audit stream as stored.
    stored = json.dumps([[i.decode(), {k.decode(): v.decode() for k, v in f.items()}]
                         for i, f in conn.xrange(audit.STREAM)])
    for secret in (SECRET, emu.token, "not-" + SECRET):
        assert secret not in text and secret not in stored
    assert "eyJ" not in stored  # nor a registry JWT


# --- the web side alone --------------------------------------------------------------------------


def test_metrics_answers_503_when_redis_is_unreachable_and_deliveries_still_answer():
    app = create_app({"TESTING": True, "WEBHOOK_SECRET": SECRET, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    client = app.test_client()
    response = client.get("/metrics")
    assert response.status_code == 503
    assert "Redis" in response.get_json()["error"]
    # A delivery that needs no Redis is answered as before, though its count is lost.
    ignored = client.post("/hooks/gitlab", data=b'{"object_kind": "issue"}',
                          headers={"X-Gitlab-Event": "Issue Hook", "X-Gitlab-Token": SECRET,
                                   "Content-Type": "application/json"})
    assert ignored.status_code == 200 and ignored.get_json()["status"] == "ignored"


def test_a_failing_counter_never_fails_an_accepted_delivery(redis_url):
    """A Redis user that may write but not HINCRBY: the delivery is still 202, its job still made."""
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser("no-metrics", enabled=True, passwords=["+pw-no-metrics"], keys=["*"], channels=["*"],
                      commands=["+@all", "-hincrby"])
    try:
        host, port = admin.connection_pool.connection_kwargs["host"], admin.connection_pool.connection_kwargs["port"]
        app = create_app({"TESTING": True, "WEBHOOK_SECRET": SECRET, "CLEANUP_DELAY": 60,
                          "REDIS_URL": f"redis://no-metrics:pw-no-metrics@{host}:{port}/0"})
        response = app.test_client().post(
            "/hooks/gitlab", data=json.dumps(load_payload("merge_request_merge.json")),
            headers={"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": SECRET,
                     "Content-Type": "application/json"})
        assert response.status_code == 202, response.get_json()
        assert admin.exists(f"rq:job:{response.get_json()['job_id']}")
        assert not admin.exists(metrics.DELIVERIES.key)
    finally:
        admin.acl_deluser("no-metrics")


def test_scrape_from_the_app_counts_the_scheduled_jobs(redis_url):
    app = create_app({"TESTING": True, "WEBHOOK_SECRET": SECRET, "REDIS_URL": redis_url, "CLEANUP_DELAY": 60})
    client = app.test_client()
    client.post("/hooks/gitlab", data=json.dumps(load_payload("merge_request_merge.json")),
                headers={"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": SECRET,
                         "Content-Type": "application/json"})
    depth = 'tagsweeper_queue_depth{queue="tagsweeper",state="%s"}'
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = metrics.parse(response.get_data(as_text=True))
    assert (samples[depth % "queued"], samples[depth % "scheduled"]) == (0, 1)  # a job as soon as it is accepted
    assert samples['tagsweeper_cleanups_enqueued_total{trigger="merge"}'] == 1
    # Every line is a comment or `name{labels} number`, and every family says its type.
    text = response.get_data(as_text=True)
    for family in metrics.STORED + (metrics.QUEUE_DEPTH, metrics.UP):
        assert f"# TYPE tagsweeper_{family.name} {family.kind}" in text


# --- jobs ---------------------------------------------------------------------------------------


def test_job_attempts_are_counted_and_timed(redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    jobs.record_pipeline(project_id=1, ref="main", sha="a" * 40)
    with pytest.raises(ValueError):
        jobs.record_pipeline(project_id=1, ref="main", sha="not-a-sha")
    samples = metrics.parse(metrics.render(redis.Redis.from_url(redis_url), "tagsweeper"))
    assert samples['tagsweeper_jobs_total{job="record_pipeline",outcome="ok"}'] == 1
    assert samples['tagsweeper_jobs_total{job="record_pipeline",outcome="failed"}'] == 1
    assert samples['tagsweeper_job_duration_seconds_count{job="record_pipeline"}'] == 2
    buckets = [(k, v) for k, v in samples.items() if k.startswith("tagsweeper_job_duration_seconds_bucket")]
    values = [v for _, v in buckets]
    assert values == sorted(values) and values[-1] == 2 and buckets[-1][0].endswith('le="+Inf"}')


def test_every_kept_reason_of_the_rules_has_a_kind():
    main, other, tagged, built = "a" * 40, "b" * 40, "c" * 40, "d" * 40
    facts = rules.Facts(
        branch="feature/x", shas=frozenset({main, other, tagged, built, "e" * 40}), default_branch="main",
        live_branches={"main": main, "feature-x": other, "feature/y": other},
        live_tags={"v1.0.0": tagged, "feature-x-release": "f" * 40},
        pinned_shas={main: rules.Reason(rules.Code.TARGET_BRANCH_HEAD,
                                        "commit is the head of the target branch 'main'")},
        other_refs={built: frozenset({"branch:release"})})
    policy = rules.Policy(branch_templates=("{ref_slug}", "latest"))
    kinds = {metrics.reason_kind("kept", d.code) for d in rules.plan(facts, policy) if not d.delete}
    assert "other" not in kinds
    assert {"protected", "live_branch", "live_head", "git_tag", "other_ref"} <= kinds
    assert metrics.reason_kind("kept", deletion.FORBIDDEN.code) == "gitlab_403"
    assert metrics.reason_kind("kept", deletion.CHANGED.code) == "changed"
    assert metrics.reason_kind("deleted", rules.Code.OWNED) == "owned"
    failed = deletion.failure(errors.TransientError("DELETE /x: still failing after 4 attempts (HTTP 500)"))
    assert metrics.reason_kind("failed", failed.code) == "transient"


# The reason_kind labels as they were when they were chosen by a reason's text: codes keep them.
REASON_KIND_LABELS = {"owned", "absent", "transient", "error", "protected", "invalid_tag", "default_branch",
                      "live_branch", "live_head", "git_tag", "fast_forward", "open_mr", "sha_like", "other_ref",
                      "gitlab_403", "changed", "other", "skipped",
                      "deployed",  # added with deployment protection: a live environment runs it or may roll back to it
                      "superseded", "retention"}  # added with retention: retired, or kept by KEEP_COMMITS' own rules


@pytest.mark.parametrize("code", sorted(rules.REASON_CODES))
def test_every_reason_code_maps_to_a_label(code):
    assert metrics.REASON_KINDS[code] in REASON_KIND_LABELS
    for decision in ("deleted", "would_delete", "absent", "kept", "failed", "skipped"):
        assert metrics.reason_kind(decision, code) in REASON_KIND_LABELS
    # The label follows the code, whatever the words: rewording a reason changes no metric.
    assert metrics.reason_kind("kept", rules.Reason(code, "any words at all").code) == metrics.REASON_KINDS[code]


def test_the_label_table_covers_exactly_the_codes():
    assert set(metrics.REASON_KINDS) == rules.REASON_CODES
    assert metrics.REASON_KIND_LABELS <= REASON_KIND_LABELS
    with pytest.raises(ValueError):
        rules.Reason("no-such-code", "a code the table does not know")


# --- the audit trail ------------------------------------------------------------------------------


def entry(project_id: int, path: str, tag: str, when: float, decision: str = "deleted") -> dict:
    return {"time": when, "project_id": project_id, "project": path, "branch": "feature/x", "trigger": "merge",
            "delivery": "d-1", "dry_run": False, "repository": path, "tag": tag, "decision": decision,
            "reason": "owned by branch 'feature/x'", "digest": "sha256:" + "0" * 64}


def test_audit_read_filters_by_project_and_time_newest_first(redis_url):
    conn = redis.Redis.from_url(redis_url)
    for i in range(30):
        audit.record(conn, entry(10 + i % 3, f"acme/p{i % 3}", f"t{i}", time.time()))
    newest = audit.read(conn, limit=5)
    assert [e["tag"] for e in newest] == ["t29", "t28", "t27", "t26", "t25"]
    assert set(audit.FIELDS) <= set(newest[0]) and newest[0]["job_id"] is None
    assert newest[0]["project_id"] == 12 and newest[0]["dry_run"] is False and newest[0]["reason_kind"] == "owned"
    by_id = audit.read(conn, project=11, limit=100)
    assert [e["tag"] for e in by_id] == [f"t{i}" for i in range(28, 0, -3)]
    assert audit.read(conn, project="11", limit=3) == by_id[:3]
    assert audit.read(conn, project="acme/p1", limit=100) == by_id
    assert audit.read(conn, project="/ACME/P1/", limit=100) == by_id
    assert audit.read(conn, project="acme/nothing") == []
    assert audit.read(conn, since=time.time() + 60) == []
    assert len(audit.read(conn, since=time.time() - 60, limit=1000)) == 30
    assert audit.read(conn, limit=0) == []


def test_audit_stream_stays_bounded(redis_url, monkeypatch):
    monkeypatch.setenv("AUDIT_MAX_ENTRIES", "50")
    conn = redis.Redis.from_url(redis_url)
    for i in range(1000):
        audit.record(conn, entry(1, "acme/p", f"t{i}", time.time()))
    # "MAXLEN ~" trims whole stream nodes: at most one node (100 entries) beyond the bound.
    assert 50 <= conn.xlen(audit.STREAM) <= 150
    assert audit.read(conn, limit=1)[0]["tag"] == "t999"
    monkeypatch.setenv("AUDIT_MAX_ENTRIES", "none")
    with pytest.raises(ConfigError, match="AUDIT_MAX_ENTRIES"):
        audit.record(conn, entry(1, "acme/p", "x", time.time()))


def test_audit_never_stores_a_secret(redis_url):
    conn = redis.Redis.from_url(redis_url)
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0YWdzd2VlcGVyIn0.c2lnbmF0dXJl"
    token = "glpat-abcdefghij0123456789"
    e = entry(1, "acme/p", "t1", time.time(), decision="failed")
    e["reason"] = f"registry said: bad token {jwt} for {token}; Bearer {jwt}; my-own-secret-value"
    audit.record(conn, e, secrets=("my-own-secret-value",))
    stored = repr(conn.xrange(audit.STREAM))
    for secret in (jwt, token, "my-own-secret-value"):
        assert secret not in stored
    assert audit.read(conn)[0]["reason"].startswith("registry said: bad token ***")


def test_audit_command_filters_and_prints(redis_url):
    conn = redis.Redis.from_url(redis_url)
    old = time.time() - 3 * 86400
    # Entries an older writer left three days ago (stream ids are the time Redis stored them).
    for i, project in enumerate((1, 2)):
        fields = {"time": repr(old), "project_id": str(project), "project": f"acme/p{project}",
                  "branch": "feature/old", "trigger": "merge", "tag": f"old-{i}", "repository": "r",
                  "decision": "deleted", "reason": "owned by branch 'feature/old'"}
        conn.xadd(audit.STREAM, fields, id=f"{int(old * 1000) + i}-0")
    audit.record(conn, entry(1, "acme/p1", "new-1", time.time()))
    audit.record(conn, entry(2, "acme/p2", "new-2", time.time(), decision="kept"))

    def tags(*args: str) -> list[str]:
        result = cli(redis_url, "--json", *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["tag"] for line in result.stdout.splitlines()]

    assert tags() == ["new-2", "new-1", "old-1", "old-0"]
    assert tags("--project", "acme/p1") == ["new-1", "old-0"]
    assert tags("--project", "2") == ["new-2", "old-1"]
    assert tags("--since", "2h") == ["new-2", "new-1"]
    assert tags("--since", "30m", "--project", "1") == ["new-1"]
    assert tags("--since", "4d", "--limit", "3") == ["new-2", "new-1", "old-1"]
    yesterday = datetime.fromtimestamp(time.time() - 86400, timezone.utc)  # --since reads naive times as UTC
    assert tags("--since", yesterday.strftime("%Y-%m-%d")) == ["new-2", "new-1"]
    assert tags("--since", yesterday.strftime("%Y-%m-%dT%H:%M")) == ["new-2", "new-1"]

    table = cli(redis_url, "--project", "acme/p2")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "PROJECT", "BRANCH", "DECISION", "IMAGE", "REASON"]
    assert "kept" in lines[1] and "acme/p2:new-2" in lines[1] and "old-1" in lines[2]

    bad = cli(redis_url, "--since", "yesterday-ish")
    assert bad.returncode == 2 and "30m, 2h, 3d" in bad.stderr
    down = subprocess.run([sys.executable, "-m", "workers.cli", "audit"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                               "PYTHONPATH": str(ROOT)}, timeout=60)
    assert down.returncode == 1 and "unreachable" in down.stderr


def test_parse_when():
    from workers.cli import audit  # --since is the command's argument: parsed in workers/cli/audit.py
    now = 1_800_000_000.0
    assert audit.parse_when("2h", now) == now - 7200
    assert audit.parse_when("30m", now) == now - 1800
    assert audit.parse_when("3d", now) == now - 3 * 86400
    assert audit.parse_when("2026-11-20") == datetime(2026, 11, 20).timestamp()
    assert audit.parse_when("2026-11-20T10:00") == datetime(2026, 11, 20, 10, 0).timestamp()
    assert audit.parse_when("2026-11-20 10:00") == datetime(2026, 11, 20, 10, 0).timestamp()
    assert audit.parse_when("2026-11-20T10:00:00+00:00") == 1795168800.0
