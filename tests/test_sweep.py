"""Reconciliation ("sweep") on real parts: the GitLab emulator, a real docker-registry, a real redis-server.

Branches vanish without a delivery (a failed one is never re-sent, a push changing more
than three branches sends none, nothing arrives while the service is down). Each test
seeds a project, pushes tiny images, lets the sweep run (in-process, through the CLI, or
as the scheduled job on a real RQ worker) and reads the registry itself afterwards.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq import Queue
from rq.job import Job
from rq.registry import FinishedJobRegistry

from tests.support.service import ROOT, Service
from tests.support.modes import MODES, mode_env
from tests.support.shop import EARLIER, FEATURE, LAST, MERGE, assert_registry, make_shop
from workers import cleanup, deletion, history, jobs, rules, sweep
from workers.gitlab import GitLab
from workers.report import Report
from workers.common.settings import Settings

pytestmark = pytest.mark.e2e

LOST_A = "a1a1a1a1b2b2b2b2c3c3c3c3d4d4d4d4e5e5e5e5"  # commits of feature/lost, deleted silently
LOST_B = "b1b1b1b1c2c2c2c2d3d3d3d3e4e4e4e4f5f5f5f5"
SHARED = "c1c1c1c1d2d2d2d2e3e3e3e3f4f4f4f4a5a5a5a5"  # built on feature/lost and on main
SPIKE = "d1d1d1d1e2e2e2e2f3f3f3f3a4a4a4a4b5b5b5b5"   # the only commit of closed MR !40
WIP = "e1e1e1e1f2f2f2f2a3a3a3a3b4b4b4b4c5c5c5c5"     # commit of open MR !41, its branch deleted
MAIN_OLD = "f1f1f1f1a2a2a2a2b3b3b3b3c4c4c4c4d5d5d5d5"  # in main's history, no pipeline remembered
UNKNOWN = "9" * 40                                  # a commit neither GitLab nor memory knows

GONE = {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8],
        "feature-lost", LOST_A, LOST_A[:8], LOST_B, LOST_B[:8],
        "spike-idea", SPIKE, SPIKE[:8]}
UNCLEAR = {"experiment-7", UNKNOWN, "deadbee1"}


def remember(conn, project, ref, *shas):
    for sha in shas:
        history.record(conn, project_id=project.id, ref=ref, sha=sha, tag=False, ttl_days=1, cap=50)


def make_lost_shop(gitlab, conn, **kw):
    """make_shop, plus branches that disappeared without a delivery, and tags nobody can place."""
    project, repos, digests = make_shop(gitlab, **kw)
    # MR !38 was merged and its branch removed, but the merge delivery never arrived; its
    # pipelines were remembered.
    remember(conn, project, FEATURE, EARLIER, LAST)
    remember(conn, project, "main", MERGE)
    # feature/lost went in a push that deleted four branches: GitLab sent no Push Hook at all.
    project.add_commit(LOST_A, on=["feature/lost"])
    project.add_commit(LOST_B, on=["feature/lost"])
    project.add_commit(SHARED, on=["feature/lost", "main"])
    remember(conn, project, "feature/lost", LOST_A, LOST_B, SHARED)
    remember(conn, project, "main", SHARED)
    # spike/idea: a closed MR, no pipeline remembered (the hooks were lost), branch deleted.
    project.add_merge_request(40, "spike/idea", "main", state="closed", commits=[SPIKE])
    # wip/draft: branch deleted, but its MR !41 is still open.
    project.add_merge_request(41, "wip/draft", "main", state="opened", commits=[WIP])
    project.add_commit(MAIN_OLD, on=["main"])
    reg = gitlab.registry_client
    for repo in repos:
        for tags, content in ((["feature-lost", LOST_B, LOST_B[:8]], "lost-b"), ([LOST_A, LOST_A[:8]], "lost-a"),
                              ([SHARED, SHARED[:8]], "shared"), (["spike-idea", SPIKE, SPIKE[:8]], "spike"),
                              (["wip-draft", WIP, WIP[:8]], "wip"), ([MAIN_OLD, MAIN_OLD[:8]], "main-old"),
                              (["experiment-7", UNKNOWN, "deadbee1"], "unclear")):
            d = reg.push_image(repo, tags, content=f"{repo}-{content}")
            digests.update({(repo, t): d for t in tags})
    return project, repos, digests


def settings_for(gitlab_stack, redis_url, mode="api", **extra) -> Settings:
    emu = gitlab_stack.emulator
    env = {"GITLAB_URL": emu.url, "GITLAB_TOKEN": emu.token, "REDIS_URL": redis_url, "HTTP_TIMEOUT": "10",
           **mode_env(mode, gitlab_stack), **extra}
    return Settings.from_env(env)


def run_sweep(project, settings, group=False, **kw) -> dict:
    gl = GitLab(settings.gitlab_url, settings.gitlab_token, timeout=10, pool_size=8)
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        run = sweep.run_group if group else sweep.run_project
        return run(project, gitlab=gl, conn=conn, settings=settings, **kw)
    finally:
        gl.close()
        conn.close()


def decided(report, outcome):
    return {(d["repository"], d["tag"]) for d in report["decisions"] if d["decision"] == outcome}


@pytest.mark.parametrize("mode", MODES)
def test_sweep_cleans_branches_deleted_without_a_delivery(gitlab, gitlab_stack, redis_url, mode):
    conn = redis.Redis.from_url(redis_url)
    project, repos, digests = make_lost_shop(gitlab, conn)
    report = run_sweep(project.id, settings_for(gitlab_stack, redis_url, mode))

    # Gone: the tags of feature/checkout-flow, feature/lost and spike/idea, in every repository.
    # Kept at their digests: latest, main's tags, the release, live feature/other's, the open
    # MR's, commits built on main too or in main's history, and everything unclear.
    assert_registry(gitlab, repos, digests, GONE)
    assert decided(report, "deleted") == {(r, t) for r in repos for t in GONE}
    assert report["summary"]["failed"] == 0 and report["dry_run"] is False
    unclear = {(d["repository"], d["tag"]): d["reason"] for d in report["decisions"]
               if d["reason"].startswith("unclear:")}
    assert set(unclear) == {(r, t) for r in repos for t in UNCLEAR}
    assert "no branch known to have existed" in unclear[(repos[0], "experiment-7")]
    assert "unknown to GitLab" in unclear[(repos[0], UNKNOWN)]
    assert report["unclear"] == len(UNCLEAR) * len(repos)
    assert report["scanned"] == sum(1 for (r, _) in digests if r in repos)
    assert report["kept_by_rule"] == report["scanned"] - len(GONE) * len(repos) - report["unclear"]
    reasons = {d["tag"]: d["reason"] for d in report["decisions"] if d["decision"] == "deleted"}
    assert "dead branch 'Feature/Checkout-Flow' (known from merge request !38 (merged))" in \
        reasons["feature-checkout-flow"]
    assert "dead branch 'feature/lost' (known from pipeline memory)" in reasons["feature-lost"]
    assert "built only on dead branch(es) 'feature/lost'" in reasons[LOST_A[:8]]
    assert "on no branch or tag" in reasons[SPIKE]
    if mode == "registry":
        assert gitlab.count("DELETE", r"/registry/repositories/\d+/tags/") == 0
    # Swept again: nothing left to do.
    again = run_sweep(project.id, settings_for(gitlab_stack, redis_url, mode))
    assert again["summary"]["deleted"] == 0 and again["unclear"] == report["unclear"]


@pytest.mark.parametrize("mode", MODES)
def test_dry_run_deletes_nothing(gitlab, gitlab_stack, redis_url, mode):
    conn = redis.Redis.from_url(redis_url)
    project, repos, digests = make_lost_shop(gitlab, conn)
    report = run_sweep(project.path, settings_for(gitlab_stack, redis_url, mode), dry_run=True)
    assert report["dry_run"] is True
    assert decided(report, "would_delete") == {(r, t) for r in repos for t in GONE}
    assert all(d["digest"] == digests[(d["repository"], d["tag"])] for d in report["decisions"]
               if d["decision"] == "would_delete")
    assert_registry(gitlab, repos, digests, set())
    assert gitlab.count("DELETE") == 0
    # DRY_RUN=1 is obeyed the same way.
    report = run_sweep(project.id, settings_for(gitlab_stack, redis_url, mode, DRY_RUN="1"))
    assert report["summary"]["would_delete"] == len(GONE) * len(repos)
    assert_registry(gitlab, repos, digests, set())


@pytest.mark.parametrize("mode", MODES)
def test_group_sweep_covers_the_groups_projects(gitlab, gitlab_stack, redis_url, mode):
    gitlab.add_group(77, "team")
    gitlab.add_group(78, "team/sub")
    inside = [make_shop(gitlab, 5001, "team/shop"), make_shop(gitlab, 5002, "team/sub/shop")]
    outside = make_shop(gitlab, 5003, "other/shop")
    result = run_sweep("team", settings_for(gitlab_stack, redis_url, mode), group=True)
    assert result["failed"] == 0 and result["group"] == "team"
    assert [r["project_id"] for r in result["projects"]] == [5001, 5002]
    for project, repos, digests in inside:
        # No pipeline memory: the merged MR's commits are in main's history, so only the
        # branch tag is provably the dead branch's.
        assert_registry(gitlab, repos, digests, {"feature-checkout-flow"})
    _, repos, digests = outside
    assert_registry(gitlab, repos, digests, set())


@pytest.mark.parametrize("mode", MODES)
def test_pages_are_decided_one_at_a_time_and_none_is_skipped(gitlab, gitlab_stack, redis_url, mode):
    """Offset pages shift when tags are deleted: every doomed tag still goes, every other stays."""
    conn = redis.Redis.from_url(redis_url)
    project = gitlab.add_project(6001, "acme/big")
    project.add_registry_repository("")
    doomed = [f"{i:02x}" * 20 for i in range(0x10, 0x10 + 30)]
    kept = [f"{i:02x}" * 20 for i in range(0x80, 0x80 + 15)]
    for sha in doomed:
        project.add_commit(sha, on=["gone"])
    for sha in kept:
        project.add_commit(sha, on=["main"])
    remember(conn, project, "gone", *doomed)
    names = sorted([*doomed, *(s[:8] for s in doomed), *kept, "latest", "main"])
    digest = gitlab.registry_client.push_image(project.path, names, content="one image for all")
    digests = {(project.path, t): digest for t in names}
    gitlab.reset_requests()
    report = run_sweep(project.id, settings_for(gitlab_stack, redis_url, mode), page_size=7)
    gone = set(doomed) | {s[:8] for s in doomed}
    assert_registry(gitlab, [project.path], digests, gone)
    assert report["summary"]["deleted"] == len(gone) and report["scanned"] >= len(names)
    if mode == "api":
        assert gitlab.count("GET", r"/registry/repositories/\d+/tags$") > len(names) // 7


def test_a_branch_pushed_again_during_the_sweep_is_kept(gitlab, gitlab_stack, redis_url):
    conn = redis.Redis.from_url(redis_url)
    project, repos, digests = make_lost_shop(gitlab, conn)
    settings = settings_for(gitlab_stack, redis_url)
    gl = GitLab(settings.gitlab_url, settings.gitlab_token, timeout=10)
    try:
        ctx = cleanup.Context(gl, conn, settings, False, gl.project(project.id))
        report = Report(project.id, None, "sweep", False)
        job = sweep.ProjectSweep(ctx, report)
        assert job.prepare() is None                                             # the plan is made ...
        project.add_branch("feature/lost", LOST_B)                               # ... then it is pushed
        job.store = deletion.open_store(ctx.settings, ctx.gitlab, ctx.pid)
        with ThreadPoolExecutor(2) as job.pool:
            job.decide_page(gl.get(f"/projects/{project.id}/registry/repositories")[0],
                            ["feature-lost", LOST_A, "spike-idea"])
    finally:
        gl.close()
    kept = {d["tag"]: d["reason"] for d in report.decisions if d["decision"] == "kept"}
    assert kept == {"feature-lost": "branch 'feature/lost' exists again",
                    LOST_A: "branch 'feature/lost' exists again"}
    assert {d["tag"] for d in report.decisions if d["decision"] == "deleted"} == {"spike-idea"}


def test_implausible_answers_stop_the_sweep(gitlab, gitlab_stack, redis_url):
    conn = redis.Redis.from_url(redis_url)
    project, repos, digests = make_lost_shop(gitlab, conn)
    project.delete_branch("main")  # the default branch missing from GitLab's list
    report = run_sweep(project.id, settings_for(gitlab_stack, redis_url))
    assert "default branch 'main'" in report["skipped"]
    assert_registry(gitlab, repos, digests, set())


def test_unknown_project_is_an_error(gitlab, gitlab_stack, redis_url):
    with pytest.raises(sweep.SweepError, match="not found"):
        run_sweep(999999, settings_for(gitlab_stack, redis_url))
    with pytest.raises(sweep.SweepError, match="group 'nope' not found"):
        run_sweep("nope", settings_for(gitlab_stack, redis_url), group=True)


# --- which projects the schedule sweeps ------------------------------------------------------

def test_jobs_remember_every_project_that_sent_a_delivery(gitlab, redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GITLAB_URL", gitlab.url)
    monkeypatch.setenv("GITLAB_TOKEN", gitlab.token)
    project, _, _ = make_shop(gitlab, 7001)
    jobs.record_pipeline(project_id=7002, ref="main", sha=MERGE)
    jobs.cleanup_branch(project_id=7001, branch="gone", trigger="branch_deleted")
    conn = redis.Redis.from_url(redis_url)
    assert conn.smembers(sweep.PROJECTS_KEY) == {b"7001", b"7002"}
    settings = Settings.from_env({"SWEEP_PROJECTS": "acme/extra,7001"})
    assert sweep.scheduled_projects(conn, settings) == [7001, 7002, "acme/extra"]


def test_enqueue_scheduled_is_once_per_slot(redis_url):
    conn = redis.Redis.from_url(redis_url)
    sweep.remember_project(conn, 4711)
    settings = Settings.from_env({"SWEEP_PROJECTS": "acme/shop", "SWEEP_CRON": "17 3 * * *",
                                  "REDIS_URL": redis_url})
    now = datetime(2025, 3, 4, 9, 30, tzinfo=timezone.utc)
    first = sweep.enqueue_scheduled(conn, settings, now)
    assert first[0] == "sweep-4711-20250304T0317Z" and first[1].startswith("sweep-acme_shop-")
    assert sweep.enqueue_scheduled(conn, settings, now) == []                       # a second worker
    assert sweep.enqueue_scheduled(conn, settings, now + timedelta(hours=12)) == []  # a restart, same slot
    tomorrow = sweep.enqueue_scheduled(conn, settings, now + timedelta(days=1))
    assert tomorrow[0] == "sweep-4711-20250305T0317Z"
    job = Job.fetch(first[0], connection=conn)
    assert job.func_name == "workers.jobs.sweep_project" and job.kwargs == {"project": 4711}
    assert job.timeout == settings.sweep_timeout
    assert 86400 < job.result_ttl <= 86400 + 3600  # the id blocks repeats for the slot's length
    off = Settings.from_env({"SWEEP_CRON": "off"})
    assert sweep.enqueue_scheduled(conn, off, now) == []


def test_scheduler_thread_ticks_once_per_slot(redis_url):
    conn = redis.Redis.from_url(redis_url)
    sweep.remember_project(conn, 1)
    schedule = sweep.Scheduler(Settings.from_env({"REDIS_URL": redis_url, "SWEEP_CRON": "0 * * * *"}))
    t = datetime(2025, 3, 4, 9, 59, tzinfo=timezone.utc)
    assert schedule.tick(conn, t) == ["sweep-1-20250304T0900Z"]  # the slot missed while down
    assert schedule.tick(conn, t + timedelta(seconds=30)) == []
    assert schedule.tick(conn, t + timedelta(minutes=1)) == ["sweep-1-20250304T1000Z"]


def worker_env(gitlab_stack, redis_url, mode, **extra):
    emu = gitlab_stack.emulator
    return {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "GITLAB_URL": emu.url,
            "GITLAB_TOKEN": emu.token, "LOG_FORMAT": "text", **mode_env(mode, gitlab_stack), **extra}


@pytest.mark.parametrize("mode", MODES)
def test_scheduled_sweep_job_runs_on_a_real_worker(gitlab, gitlab_stack, redis_url, mode):
    conn = redis.Redis.from_url(redis_url)
    project, repos, digests = make_lost_shop(gitlab, conn)
    sweep.remember_project(conn, project.id)
    settings = settings_for(gitlab_stack, redis_url, mode)
    [job_id] = sweep.enqueue_scheduled(conn, settings)
    out = subprocess.run([sys.executable, "-m", "workers.cli", "worker", "--burst"], cwd=ROOT,
                         env=worker_env(gitlab_stack, redis_url, mode), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    job = Job.fetch(job_id, connection=conn)
    assert job.get_status() == "finished", out.stderr[-3000:]
    report = job.return_value()
    assert report["trigger"] == "sweep" and report["project_id"] == project.id
    assert decided(report, "deleted") == {(r, t) for r in repos for t in GONE}
    assert_registry(gitlab, repos, digests, GONE)


def test_the_worker_runs_the_schedule_itself(tmp_path, gitlab, gitlab_stack, redis_url):
    """`tagsweeper worker` enqueues the current slot's sweep at start (a slot it missed), then runs it."""
    conn = redis.Redis.from_url(redis_url)
    project, repos, digests = make_lost_shop(gitlab, conn)
    sweep.remember_project(conn, project.id)
    emu = gitlab_stack.emulator
    svc = Service(tmp_path / "svc", redis_url, emu.url, emu.token, SWEEP_CRON="* * * * *")
    svc.start_worker()
    try:
        finished = FinishedJobRegistry(queue=Queue("tagsweeper", connection=conn))
        deadline = time.monotonic() + 60
        done = []
        while time.monotonic() < deadline and not done:
            done = [j for j in finished.get_job_ids() if j.startswith(f"sweep-{project.id}-")]
            time.sleep(0.2)
        assert done, svc.logs()[-3000:]
    finally:
        svc.stop()
    assert_registry(gitlab, repos, digests, GONE)


def test_the_scheduled_job_forgets_a_project_gitlab_no_longer_has(gitlab, redis_url, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("GITLAB_URL", gitlab.url)
    monkeypatch.setenv("GITLAB_TOKEN", gitlab.token)
    conn = redis.Redis.from_url(redis_url)
    sweep.remember_project(conn, 424242)
    with pytest.raises(sweep.SweepError):
        jobs.sweep_project(project=424242)
    assert conn.smembers(sweep.PROJECTS_KEY) == set()


# --- the command ---------------------------------------------------------------------------

def run_cli(args, env):
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("mode", MODES)
def test_cli_sweep(gitlab, gitlab_stack, redis_url, mode):
    conn = redis.Redis.from_url(redis_url)
    project, repos, digests = make_lost_shop(gitlab, conn)
    env = worker_env(gitlab_stack, redis_url, mode)
    out = run_cli(["sweep", "--project", project.path, "--dry-run"], env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"DRY RUN: sweep of {project.path}")
    assert f"{repos[1]}:feature-lost  (owned by dead branch 'feature/lost'" in out.stdout
    assert f"{repos[0]}:experiment-7  (unclear: " in out.stdout
    assert "\x1b[K" not in out.stderr  # no progress line when stderr is not a terminal
    assert_registry(gitlab, repos, digests, set())

    out = run_cli(["sweep", "--project", str(project.id), "--json"], env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert decided(report, "deleted") == {(r, t) for r in repos for t in GONE}
    assert_registry(gitlab, repos, digests, GONE)
    assert gitlab.token not in out.stdout + out.stderr


def test_cli_group_and_errors(gitlab, gitlab_stack, redis_url):
    gitlab.add_group(80, "squad")
    project, repos, digests = make_shop(gitlab, 8001, "squad/app")
    env = worker_env(gitlab_stack, redis_url, "api")
    out = run_cli(["sweep", "--group", "squad", "--json"], env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert [r["project"] for r in result["projects"]] == ["squad/app"]
    assert_registry(gitlab, repos, digests, {"feature-checkout-flow"})
    out = run_cli(["sweep", "--group", "80"], env)
    assert out.returncode == 0 and "sweep of group squad: 1 project(s), 0 failed" in out.stdout
    out = run_cli(["sweep", "--project", "no/such"], env)
    assert out.returncode == 2 and "project 'no/such' not found" in out.stderr
    out = run_cli(["sweep", "--project", "1", "--group", "2"], env)
    assert out.returncode == 2 and "not allowed with" in out.stderr
    out = run_cli(["sweep"], env)
    assert out.returncode == 2 and "one of the arguments --project --group is required" in out.stderr


def test_cli_shows_progress_on_a_terminal(gitlab, gitlab_stack, redis_url):
    conn = redis.Redis.from_url(redis_url)
    project, repos, digests = make_lost_shop(gitlab, conn)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "sweep", "--project", project.path, "--dry-run"],
                            cwd=ROOT, env=worker_env(gitlab_stack, redis_url, "api"), stdout=subprocess.PIPE,
                            stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert f"{project.path}: {repos[0]} (1/2):".encode() in seen and b"tags scanned" in seen
    assert b"tags scanned" not in stdout


# --- the emulator's commit endpoints the sweep relies on ----------------------------------------

def test_emulator_commit_and_refs(gitlab):
    project, _, _ = make_shop(gitlab, 9001)
    project.add_merge_request(40, "spike/idea", "main", state="closed", commits=[SPIKE])
    project.add_commit(MAIN_OLD, on=["main", "gone"])
    project.add_commit("abcd0000" + "1" * 32)
    project.add_commit("abcd0000" + "2" * 32)
    gl = GitLab(gitlab.url, gitlab.token, timeout=10)
    try:
        base = f"/projects/{project.id}/repository/commits"

        def refs(sha, kind="all"):
            return [(r["type"], r["name"]) for r in gl.paginate(f"{base}/{sha}/refs", {"type": kind})]

        assert gl.get(f"{base}/{LAST[:8]}")["id"] == LAST           # a unique short SHA resolves
        assert gl.get(f"{base}/main")["id"] == MERGE                  # so does a branch name
        for ref in ("abcd0000", "0" * 40, "zz"):                      # ambiguous, unknown, not hex
            with pytest.raises(Exception, match="404"):
                gl.get(f"{base}/{ref}")
        assert refs(MERGE) == [("branch", "main")]
        assert refs(LAST) == [("branch", "main")]                     # merged MR !38: on its target
        assert refs(SPIKE) == []                                      # closed, source branch gone
        assert refs(MAIN_OLD) == [("branch", "main")]                 # "gone" does not exist
        assert refs("3" * 40) == [("tag", "v1.2.0")]
        assert refs("3" * 40, "branch") == []
        project.add_branch("spike/idea", SPIKE)
        assert refs(SPIKE) == [("branch", "spike/idea")]
    finally:
        gl.close()
