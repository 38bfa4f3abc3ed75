"""Retention on live branches (KEEP_COMMITS) through the real service, as a new user turns it on.

tests/test_retention.py runs retention passes in-process; here the same feature goes through
gunicorn and a `tagsweeper worker` (its scheduler runs the delayed passes), the real Redis, the
real docker-registry and the GitLab emulator:

- Pipeline Hooks: a burst of successful pipelines on `main` (and re-sent deliveries) schedules
  exactly one pass (`queue.retire_id`), RETIRE_DELAY later; it retires the superseded commits'
  tags, writes the audit trail (trigger `superseded`) and counts in /metrics; a later success
  schedules the next pass once the first is done. Running, failed and tag pipelines, a branch
  outside KEEP_COMMITS_BRANCHES, and KEEP_COMMITS unset schedule nothing. A pass whose branch was
  deleted meanwhile is skipped (the branch's cleanup is the job for its tags). A finished pass
  replayed from the command line (`tagsweeper replay --force`) runs again.
- The scheduled sweep job (`workers.jobs.sweep_project`) runs a pass for every live branch.
- `tagsweeper retire` as a subprocess: --dry-run first, then for real, --branch, --json, and its
  refusals (KEEP_COMMITS unset, an unknown project, a malformed --project).

The module's service shares the suite's Redis and is never flushed by these tests: each test
has its own project.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import redis
import requests
from rq import Queue
from rq.registry import ScheduledJobRegistry

from tests.support.service import ROOT, Service, job_or_none, load_payload
from tests.support.built import BuiltProject, tags_of
from workers.common import audit, queue

pytestmark = pytest.mark.e2e

DELAY = 4  # RETIRE_DELAY, seconds: long enough for a burst of hooks to land before the pass runs
KEEP = 2
BRANCHES = "main|develop|release/.*"  # KEEP_COMMITS_BRANCHES: feature branches are left alone
RETENTION_ENV = {"KEEP_COMMITS": str(KEEP), "KEEP_COMMITS_MIN_AGE": "0", "RETIRE_DELAY": str(DELAY),
                 "KEEP_COMMITS_BRANCHES": BRANCHES}


@pytest.fixture(scope="module")
def service(redis_server, gitlab_stack, tmp_path_factory):
    """gunicorn and a worker with retention on (no scheduled sweep: only hooks and tests start passes)."""
    emu = gitlab_stack.emulator
    redis.Redis.from_url(redis_server.url).flushdb()  # earlier modules' jobs are not this service's
    svc = Service(tmp_path_factory.mktemp("retention-service"), redis_server.url, emu.url, emu.token,
                  SWEEP_CRON="off", REGISTRY_MODE="api", **RETENTION_ENV).start()
    yield svc
    svc.stop()


class Branches(BuiltProject):
    """A project whose branches' pipelines push `slug`, `sha` and `short_sha` (main also `latest`) to
    the real registry; what each tag should point at is remembered."""

    def __init__(self, gitlab, service: Service | None):
        super().__init__(gitlab, "retain")
        self.service = service
        self.deliveries = 0

    def build(self, branch: str, count: int, *, status: str = "success") -> list[tuple[str, object]]:
        """`count` commits pushed to `branch`, each built by a pipeline; [(sha, pipeline)], oldest first."""
        if branch not in self.project.branches:
            self.project.add_branch(branch, from_branch="main")
        made = []
        for _ in range(count):
            sha = self.project.push(branch)
            made.append((sha, self.pipeline(sha, branch, status=status)))
        return made

    def pipeline(self, sha: str, ref: str, *, status: str = "success", tag: bool = False):
        pl = self.project.add_pipeline(sha, ref, status=status, tag=tag)
        extra = ["latest"] if ref == "main" else [ref] if tag else []
        pushed = [re.sub(r"[^a-z0-9]", "-", ref.lower()).strip("-"), *extra, sha, sha[:8]]
        self.push(ref, sha, pushed)
        return pl

    def hook(self, pl, *, key: str | None = None) -> requests.Response:
        """Deliver the Pipeline Hook of `pl` as it is now; a `key` used before is a re-sent delivery."""
        body = load_payload("pipeline_main.json")
        body["project"].update(id=self.project.id, path_with_namespace=self.path)
        body["object_attributes"].update(id=pl.id, ref=pl.ref, sha=pl.sha, tag=pl.tag, status=pl.status)
        if key is None:
            self.deliveries += 1
            key = f"pipeline-{self.project.id}-{self.deliveries}"
        response = self.service.post(body, "Pipeline Hook", key=key)
        assert response.status_code in (200, 202), response.text
        return response

    def recorded(self, pl, **kw) -> dict:
        """Deliver `pl`'s hook and return what its record_pipeline job did."""
        job = self.service.wait_for_job(self.hook(pl, **kw).json()["job_id"])
        assert job.get_status() == "finished", self.service.logs()[-3000:]
        return job.return_value()



def scrape(service: Service) -> dict[str, float]:
    """/metrics as {'name{labels}': value}."""
    text = requests.get(service.url + "/metrics", timeout=10).text
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


ENQUEUED = 'tagsweeper_cleanups_enqueued_total{trigger="superseded"}'
RETIRED = 'tagsweeper_tags_total{decision="deleted",reason_kind="superseded"}'


def scheduled_passes(store, pid: int) -> list[str]:
    q = Queue("tagsweeper", connection=store)
    return [j for j in ScheduledJobRegistry(queue=q).get_job_ids() if j.startswith(f"retire-{pid}-")]


# --- Pipeline Hooks schedule passes ------------------------------------------------------------

def test_a_burst_of_successful_pipelines_schedules_one_pass_which_retires_the_superseded(gitlab, service, store):
    b = Branches(gitlab, service)
    pid = b.project.id
    before = scrape(service)
    main = b.build("main", 6)
    shas = [s for s, _ in main]
    job_id = queue.retire_id(pid, "main")
    started = time.monotonic()
    # Every success, each re-sent once (the same key: the same delivery), and re-sent under a new
    # key (a project hook and a group hook): one pass is pending for the branch, however many.
    responses = []
    for sha, pl in main:
        responses.append(b.hook(pl))
        responses.append(b.hook(pl, key=f"pipeline-{pid}-{b.deliveries}"))
        responses.append(b.hook(pl))
    # A re-sent delivery is the same record job (one per pipeline success): six jobs.
    jobs = list(dict.fromkeys(r.json()["job_id"] for r in responses))
    assert len(jobs) == len(main)
    results = [service.wait_for_job(j).return_value() for j in jobs]
    assert time.monotonic() - started < DELAY, "too slow for the test's RETIRE_DELAY: the pass ran meanwhile"
    outcomes = [(r.get("retention"), r.get("retention_job")) for r in results]
    assert outcomes == [(queue.ENQUEUED, job_id)] + [(queue.DUPLICATE, job_id)] * (len(main) - 1)
    assert scheduled_passes(store, pid) == [job_id]
    assert b.present() >= tags_of(*shas)  # nothing before RETIRE_DELAY

    job = service.wait_for_job(job_id, timeout=DELAY + 30)
    assert job.get_status() == "finished", service.logs()[-3000:]
    report = job.return_value()
    superseded = tags_of(*shas[:-KEEP])
    b.assert_gone_exactly(superseded)
    assert report["trigger"] == "superseded" and report["branch"] == "main"
    assert report["summary"]["deleted"] == len(superseded) and report["skipped"] is None
    assert {"main", "latest"} <= b.present()  # the branch's own tags: the branch is alive

    trail = [e for e in audit.read(store, project=pid, limit=100) if e["decision"] == "deleted"]
    assert {e["tag"] for e in trail} == superseded
    assert {(e["trigger"], e["branch"], e["job_id"], e["reason_kind"]) for e in trail} == \
        {("superseded", "main", job_id, "superseded")}
    after = scrape(service)
    assert after.get(ENQUEUED, 0) - before.get(ENQUEUED, 0) == 1
    assert after.get(RETIRED, 0) - before.get(RETIRED, 0) == len(superseded)

    # The next success, the pass done: a new pass under the same id retires one more commit.
    (sha, pl), = b.build("main", 1)
    assert b.recorded(pl)["retention"] == queue.ENQUEUED
    job = service.wait_for_job(job_id, timeout=DELAY + 30)
    assert job.get_status() == "finished"
    b.assert_gone_exactly(tags_of(*shas[:-KEEP + 1]))
    assert job.return_value()["summary"]["deleted"] == 2
    assert scrape(service).get(ENQUEUED, 0) - before.get(ENQUEUED, 0) == 2


def test_running_failed_and_tag_pipelines_and_other_branches_schedule_nothing(gitlab, service, store):
    b = Branches(gitlab, service)
    pid = b.project.id
    b.build("main", 4, status="running")
    # Each status of its own pipeline: one pipeline's later hooks would be its first one's job.
    for status in ("running", "failed", "canceled", "skipped", "manual"):
        (sha, pl), = b.build("main", 1, status=status)
        assert "retention" not in b.recorded(pl), status
    # A tag pipeline's success, and a feature branch's (outside KEEP_COMMITS_BRANCHES).
    head = b.project.branches["main"]
    b.project.add_tag("v1.0.0", head)
    assert "retention" not in b.recorded(b.pipeline(head, "v1.0.0", tag=True))
    for sha, pl in b.build("feature/x", 4):
        assert "retention" not in b.recorded(pl)
    assert job_or_none(store, queue.retire_id(pid, "main")) is None
    assert job_or_none(store, queue.retire_id(pid, "feature/x")) is None
    assert job_or_none(store, queue.retire_id(pid, "v1.0.0")) is None
    assert not scheduled_passes(store, pid)
    service.wait_idle()
    b.assert_gone_exactly(set())


def test_a_pass_whose_branch_was_deleted_meanwhile_is_skipped(gitlab, service, store):
    b = Branches(gitlab, service)
    develop = b.build("develop", 5)
    assert b.recorded(develop[-1][1])["retention"] == queue.ENQUEUED
    b.project.delete_branch("develop")  # before RETIRE_DELAY is over: no Push Hook needed here
    job = service.wait_for_job(queue.retire_id(b.project.id, "develop"), timeout=DELAY + 30)
    assert job.get_status() == "finished", service.logs()[-3000:]
    report = job.return_value()
    assert "does not exist" in report["skipped"] and report["decisions"] == []
    b.assert_gone_exactly(set())  # the branch's cleanup deletes its tags, by its own rules


def test_a_finished_pass_replayed_from_the_command_line_runs_again(gitlab, service, store):
    b = Branches(gitlab, service)
    main = b.build("main", 4)
    job_id = queue.retire_id(b.project.id, "main")
    assert b.recorded(main[-1][1])["retention"] == queue.ENQUEUED
    assert service.wait_for_job(job_id, timeout=DELAY + 30).get_status() == "finished"
    b.assert_gone_exactly(tags_of(*(s for s, _ in main[:-KEEP])))
    more = b.build("main", 3)  # their hooks were lost: no pass scheduled

    done = cli(service, "replay", job_id)
    assert done.returncode == 0 and "it finished; nothing done" in done.stdout
    done = cli(service, "replay", job_id, "--force", "--json")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["action"] == "copied" and outcome["new_job_id"].startswith(f"{job_id}-replay-")
    copy = service.wait_for_job(outcome["new_job_id"])
    assert copy.get_status() == "finished", service.logs()[-3000:]
    assert copy.return_value()["summary"]["deleted"] == 2 * KEEP + 2
    everything = [s for s, _ in main + more]
    b.assert_gone_exactly(tags_of(*everything[:-KEEP]))


def test_keep_commits_unset_schedules_nothing_and_deletes_nothing(gitlab, gitlab_stack, redis_server, store,
                                                                   tmp_path):
    emu = gitlab_stack.emulator
    # A queue of its own: the module's worker (retention on) must not take this service's jobs.
    svc = Service(tmp_path / "off", redis_server.url, emu.url, emu.token, SWEEP_CRON="off",
                  REGISTRY_MODE="api", RETIRE_DELAY="0", RQ_QUEUE="retention-off").start()
    try:
        b = Branches(gitlab, svc)
        before = scrape(svc)
        for sha, pl in b.build("main", 5):
            assert "retention" not in b.recorded(pl)
        assert job_or_none(store, queue.retire_id(b.project.id, "main")) is None
        svc.wait_idle(queue="retention-off")
        b.assert_gone_exactly(set())
        assert scrape(svc).get(ENQUEUED, 0) == before.get(ENQUEUED, 0)
    finally:
        svc.stop()


# --- the scheduled sweep -----------------------------------------------------------------------

def test_the_sweep_job_runs_a_pass_for_every_live_branch(gitlab, service, store):
    b = Branches(gitlab, service)
    main = [s for s, _ in b.build("main", 6)]
    develop = [s for s, _ in b.build("develop", 5)]
    feature = [s for s, _ in b.build("feature/x", 4)]  # outside KEEP_COMMITS_BRANCHES
    # As the worker's schedule enqueues it (workers/sweep/schedule.py), no hook ever received.
    job = Queue("tagsweeper", connection=store).enqueue_call(
        queue.SWEEP_PROJECT, kwargs={"project": b.project.id}, job_id=f"sweep-test-{b.project.id}",
        description=f"scheduled sweep of project {b.project.id}")
    job = service.wait_for_job(job.id, timeout=120)
    assert job.get_status() == "finished", service.logs()[-3000:]
    report = job.return_value()
    passes = {r["branch"]: r for r in report["retention"]}
    assert set(passes) == {"main", "develop"}
    assert passes["main"]["summary"]["deleted"] == len(tags_of(*main[:-KEEP]))
    assert passes["develop"]["summary"]["deleted"] == len(tags_of(*develop[:-KEEP]))
    assert all(p["skipped"] is None for p in passes.values())
    b.assert_gone_exactly(tags_of(*main[:-KEEP], *develop[:-KEEP]))
    assert tags_of(*feature) <= b.present()
    trail = [e for e in audit.read(store, project=b.project.id, limit=200) if e["decision"] == "deleted"]
    assert {e["trigger"] for e in trail} == {"superseded"} and {e["job_id"] for e in trail} == {job.id}


# --- tagsweeper retire, as a new user runs it ---------------------------------------------------

def cli(service: Service, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`tagsweeper ARGS` with the service's environment (REDIS_URL, GITLAB_URL, ...) and `env` on top."""
    full = {**service.env, "LOG_FORMAT": "text", **env}
    for name, value in env.items():
        if value is None:
            full.pop(name)
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


def test_retire_by_hand_dry_run_first_then_for_real(gitlab, service, store):
    b = Branches(gitlab, service)
    main = [s for s, _ in b.build("main", 5)]
    develop = [s for s, _ in b.build("develop", 4)]
    release = [s for s, _ in b.build("release/1", 4)]
    superseded = {"main": tags_of(*main[:-KEEP]), "develop": tags_of(*develop[:-KEEP]),
                  "release/1": tags_of(*release[:-KEEP])}

    dry = cli(service, "retire", "--project", b.path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith(f"DRY RUN: retention on the live branches of {b.path}: 3 branch(es)")
    for branch in superseded:
        assert f"retention pass of branch {branch!r} in {b.path}" in dry.stdout
    for tag in set().union(*superseded.values()):
        assert tag in dry.stdout
    b.assert_gone_exactly(set())

    one = cli(service, "retire", "--project", b.path, "--branch", "release/1", "--json")
    assert one.returncode == 0, one.stderr
    report = json.loads(one.stdout)
    assert report["branch"] == "release/1" and report["trigger"] == "superseded" and not report["dry_run"]
    assert {d["tag"] for d in report["decisions"] if d["decision"] == "deleted"} == superseded["release/1"]
    b.assert_gone_exactly(superseded["release/1"])

    done = cli(service, "retire", "--project", str(b.project.id))
    assert done.returncode == 0, done.stderr
    assert "DRY RUN" not in done.stdout
    b.assert_gone_exactly(set().union(*superseded.values()))
    trail = [e for e in audit.read(store, project=b.project.id, limit=200) if e["decision"] == "deleted"]
    assert len(trail) == len(set().union(*superseded.values())) and {e["trigger"] for e in trail} == {"superseded"}

    again = json.loads(cli(service, "retire", "--project", b.path, "--json").stdout)
    assert [r["branch"] for r in again["branches"]] == ["develop", "main", "release/1"]
    assert all(r["summary"]["deleted"] == 0 for r in again["branches"])


def test_retire_refuses_clearly(gitlab, service):
    b = Branches(gitlab, service)
    b.build("main", 4)
    off = cli(service, "retire", "--project", b.path, KEEP_COMMITS=None)
    assert off.returncode == 2 and off.stdout == ""
    assert off.stderr.startswith("tagsweeper: KEEP_COMMITS is not set")
    unknown = cli(service, "retire", "--project", "acme/nowhere", "--dry-run")
    assert unknown.returncode == 2 and "project 'acme/nowhere' not found" in unknown.stderr
    bad = cli(service, "retire", "--project", " / ")
    assert bad.returncode == 2 and "argument --project" in bad.stderr and "usage:" in bad.stderr
    outside = cli(service, "retire", "--project", b.path, "--branch", "feature/x", "--json")
    assert outside.returncode == 0 and "KEEP_COMMITS_BRANCHES" in json.loads(outside.stdout)["skipped"]
    b.assert_gone_exactly(set())
