"""The worker side outside the webhook path: pipeline memory bounds, the CLI, start-up errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from tests.support.procs import free_port
from tests.support.service import ROOT, Service
from workers import history, jobs
from workers.common.settings import ConfigError, Settings

SHA = [f"{i:040x}" for i in range(1, 20)]


def test_history_is_capped_per_ref_and_expires(redis_url):
    conn = redis.Redis.from_url(redis_url)
    for i, sha in enumerate(SHA[:8]):
        history.record(conn, project_id=7, ref="feature/x", sha=sha, tag=False, ttl_days=3, cap=5, now=1000 + i)
    assert history.branch_shas(conn, project_id=7, branch="feature/x") == SHA[3:8]  # newest 5, oldest first
    history.record(conn, project_id=7, ref="v1.0.0", sha=SHA[3], tag=True, ttl_days=3, cap=5)
    history.record(conn, project_id=7, ref="main", sha=SHA[3], tag=False, ttl_days=3, cap=5)
    refs = history.refs_of(conn, project_id=7, shas=[SHA[3], SHA[4], SHA[15]])
    assert refs[SHA[3]] == {"branch:feature/x", "tag:v1.0.0", "branch:main"}
    assert refs[SHA[4]] == {"branch:feature/x"} and SHA[15] not in refs
    # Another project's memory is separate.
    assert history.branch_shas(conn, project_id=8, branch="feature/x") == []
    # Every key fades out: nothing is kept forever.
    for key in conn.scan_iter("tagsweeper:history:*"):
        assert 0 < conn.ttl(key) <= 3 * 86400


def test_history_finds_commits_sharing_a_short_sha(redis_url):
    conn = redis.Redis.from_url(redis_url)
    mine, other = "deadbeef" + "1" * 32, "deadbeef" + "2" * 32
    history.record(conn, project_id=7, ref="main", sha=other, tag=False, ttl_days=1, cap=5)
    history.record(conn, project_id=7, ref="feature/x", sha=mine, tag=False, ttl_days=1, cap=5)
    assert history.clashing_shas(conn, project_id=7, shas={mine}) == {other}
    assert history.clashing_shas(conn, project_id=7, shas={SHA[0]}) == set()


def test_record_pipeline_job_refuses_bad_values(redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    with pytest.raises(ValueError, match="40 lower-case hex"):
        jobs.record_pipeline(project_id=1, ref="main", sha="abc")
    jobs.record_pipeline(project_id=1, ref="main", sha=SHA[0])
    assert history.branch_shas(redis.Redis.from_url(redis_url), project_id=1, branch="main") == [SHA[0]]


@pytest.mark.parametrize("env, message", [
    ({"BRANCH_TAGS": "{branch}"}, "BRANCH_TAGS"),
    ({"COMMIT_TAGS": "{sha"}, "COMMIT_TAGS"),
    ({"PROTECTED_TAGS": "("}, "PROTECTED_TAGS is not a valid regular expression"),
    ({"DRY_RUN": "maybe"}, "DRY_RUN"),
    ({"DELETE_CONCURRENCY": "0"}, "DELETE_CONCURRENCY"),
    ({"GITLAB_URL": "gitlab.example.com"}, "GITLAB_URL"),
    ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
    ({"KEEP_DEPLOYMENTS": "0"}, r"KEEP_DEPLOYMENTS='0': give a whole number from 1 to 100 \(1 keeps only what"),
    ({"KEEP_DEPLOYMENTS": "101"}, "KEEP_DEPLOYMENTS='101'"),
    ({"KEEP_DEPLOYMENTS": "three"}, "KEEP_DEPLOYMENTS='three'"),
    ({"IN_USE_RECHECK": "-1"}, r"IN_USE_RECHECK='-1': give a whole number of seconds \(0 turns the re-check off\)"),
    ({"IN_USE_RECHECK": "1h"}, "IN_USE_RECHECK='1h'"),
    ({"CLEANUP_RETRIES": "many"}, "CLEANUP_RETRIES"),
    ({"CLEANUP_RETRY_INTERVALS": "30,soon"}, "CLEANUP_RETRY_INTERVALS"),
])
def test_bad_settings_are_clear_errors(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_settings_defaults_and_token_not_in_repr():
    s = Settings.from_env({"GITLAB_URL": "https://gitlab.example.com/api/v4/", "GITLAB_TOKEN": "glpat-secret"})
    assert s.gitlab_url == "https://gitlab.example.com" and s.dry_run is False
    assert (s.keep_deployments, s.in_use_recheck) == (3, 3600)
    assert (s.cleanup_retries, s.cleanup_retry_intervals) == (5, (30, 60, 300, 900, 3600))
    s = Settings.from_env({"KEEP_DEPLOYMENTS": " 1 ", "IN_USE_RECHECK": "0", "CLEANUP_RETRIES": "0"})
    assert (s.keep_deployments, s.in_use_recheck, s.cleanup_retries) == (1, 0, 0)
    assert "glpat-secret" not in repr(s)


def run_cli(args, **env):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                          env=full, timeout=60, cwd=ROOT)


def test_worker_refuses_to_start_with_bad_settings():
    out = run_cli(["worker", "--burst"], GITLAB_URL="http://127.0.0.1:1", GITLAB_TOKEN="t", BRANCH_TAGS="{x}")
    assert out.returncode == 2 and "BRANCH_TAGS" in out.stderr
    out = run_cli(["worker", "--burst"], GITLAB_URL="", GITLAB_TOKEN="t")
    assert out.returncode == 2 and "GITLAB_URL is not set" in out.stderr


def test_web_refuses_to_start_without_a_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_SECRET"}
    port = free_port()
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    out = subprocess.run([gunicorn, "--bind", f"127.0.0.1:{port}", "hooks:create_app()"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "WEBHOOK_SECRET is not set" in out.stderr


@pytest.mark.e2e
def test_cli_cleanup_dry_run_then_for_real(gitlab, redis_url):
    from tests.support.shop import EARLIER, LAST, assert_registry, make_shop
    project, repos, digests = make_shop(gitlab)
    env = {"GITLAB_URL": gitlab.url, "GITLAB_TOKEN": gitlab.token, "REDIS_URL": redis_url}
    out = run_cli(["cleanup", "--project", project.path, "--branch", "Feature/Checkout-Flow", "--dry-run"], **env)
    assert out.returncode == 0, out.stderr
    assert "DRY RUN" in out.stdout and f"{repos[1]}:feature-checkout-flow" in out.stdout
    assert_registry(gitlab, repos, digests, set())
    assert gitlab.count("DELETE") == 0

    out = run_cli(["cleanup", "--project", str(project.id), "--branch", "Feature/Checkout-Flow", "--json"], **env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    gone = {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8]}  # MR !38 found by source branch
    assert {d["tag"] for d in report["decisions"] if d["decision"] == "deleted"} == gone
    assert_registry(gitlab, repos, digests, gone)
    assert gitlab.token not in out.stdout + out.stderr


@pytest.mark.e2e
def test_cli_leaves_a_live_branch_alone(gitlab, redis_url):
    from tests.support.shop import assert_registry, make_shop
    project, repos, digests = make_shop(gitlab)
    env = {"GITLAB_URL": gitlab.url, "GITLAB_TOKEN": gitlab.token, "REDIS_URL": redis_url}
    out = run_cli(["cleanup", "--project", project.path, "--branch", "feature/other"], **env)
    assert out.returncode == 0 and "still exists" in out.stdout
    assert_registry(gitlab, repos, digests, set())


@pytest.mark.e2e
def test_refused_token_fails_at_once_without_retries(tmp_path, redis_url, gitlab_stack, gitlab):
    from tests.support.shop import make_shop, merge_payload
    project, repos, digests = make_shop(gitlab)
    svc = Service(tmp_path / "svc", redis_url, gitlab.url, "not-the-token", CLEANUP_RETRIES="3",
                  CLEANUP_RETRY_INTERVALS="60").start()
    try:
        response = svc.post(merge_payload(project), "Merge Request Hook", key="auth")
        job = svc.wait_for_job(response.json()["job_id"], timeout=30)
    finally:
        svc.stop()
    # Failed for good right away (a retry would be scheduled 60 s later instead), with what to fix.
    assert job.get_status() == "failed"
    assert "GITLAB_TOKEN" in job.latest_result().exc_string
    assert "not-the-token" not in svc.logs()
