"""`tagsweeper replay` and `tagsweeper status`, run as an operator runs them: subprocesses on real Redis.

Jobs run on real RQ workers: `tagsweeper worker --burst`, and, to make jobs fail for a
reason that can be put right (a bad setting the worker command itself would refuse), an
in-process RQ worker. In the end-to-end test GitLab answering 500 is what fails them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.registry import FailedJobRegistry, FinishedJobRegistry

from tests.support.procs import free_port, stop
from tests.support.service import ROOT, Service
from tests.support.webapp import make_app, post
from workers.common import audit

QUEUE = "tagsweeper"
TOKEN = "glpat-operations-test-token"
SHA = "a" * 40
BAD_SETTING = {"PIPELINE_MEMORY_CAP": "0"}  # record_pipeline fails on it; leaving it out fixes it
CONFIG_ERROR = "workers.common.settings.ConfigError: PIPELINE_MEMORY_CAP must be at least 1, got 0"


def env_for(redis_url: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PIPELINE_MEMORY_CAP", "RQ_QUEUE")}
    # SWEEP_CRON=off: no scheduled sweep lands on the queues these tests count.
    env.update({"REDIS_URL": redis_url, "GITLAB_URL": "http://127.0.0.1:9", "GITLAB_TOKEN": TOKEN,
                "LOG_FORMAT": "text", "PYTHONPATH": str(ROOT), "SWEEP_CRON": "off"})
    env.update(extra)
    return env


def tagsweeper(redis_url: str, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=env_for(redis_url, **extra),
                          capture_output=True, text=True, timeout=120)


def work(redis_url: str, **extra: str) -> None:
    """Run a real worker until the queue is empty."""
    done = tagsweeper(redis_url, "worker", "--burst", **extra)
    assert done.returncode == 0, done.stderr


def enqueue(conn, n: int, job_id: str | None = None, queue: str = QUEUE) -> Job:
    return Queue(queue, connection=conn).enqueue_call(
        "workers.jobs.record_pipeline", kwargs={"project_id": 7, "ref": f"feature/{n}", "sha": SHA},
        job_id=job_id or f"pipeline-7-{n}", description=f"record pipeline of project 7 ref feature/{n}",
        meta={"delivery": f"d-{n}", "trigger": "pipeline"})


def failed_jobs(conn, monkeypatch, redis_url, count: int, queue: str = QUEUE) -> list[Job]:
    jobs = [enqueue(conn, n, queue=queue) for n in range(count)]
    with monkeypatch.context() as m:
        m.setenv("REDIS_URL", redis_url)
        for name, value in BAD_SETTING.items():
            m.setenv(name, value)
        SimpleWorker([Queue(queue, connection=conn)], connection=conn).work(burst=True)
    assert all(job.get_status(refresh=True) == "failed" for job in jobs)
    return jobs


# --- status -----------------------------------------------------------------------------


def test_status_of_an_idle_service(redis_url):
    done = tagsweeper(redis_url, "status", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["queues"] == [{"name": QUEUE, "queued": 0, "scheduled": 0, "started": 0,
                                 "failed": 0, "finished": 0}]
    assert report["workers"] == [] and report["failed_jobs"] == [] and report["failed_total"] == 0
    assert report["decisions"] == []
    text = tagsweeper(redis_url, "status").stdout
    assert "tagsweeper: 0 queued, 0 scheduled, 0 started, 0 failed, 0 finished" in text
    assert "workers: none running" in text and "failed jobs on 'tagsweeper': none" in text


def test_status_shows_queues_workers_failed_jobs_and_the_last_decisions(redis_url, conn, tmp_path, monkeypatch):
    jobs = failed_jobs(conn, monkeypatch, redis_url, 2)
    enqueue(conn, 9)
    work(redis_url)  # a finished one
    enqueue(conn, 10)  # and one waiting
    # A delivery accepted by the web side: a cleanup scheduled CLEANUP_DELAY ahead.
    assert post(make_app(redis_url).test_client(), "merge_request_merge.json").status_code == 202
    for i in range(12):
        audit.record(conn, {"time": time.time(), "project_id": 7, "project": "acme/shop", "branch": "feature/x",
                            "trigger": "merge", "repository": "acme/shop", "tag": f"tag-{i}",
                            "decision": "deleted", "reason": "a tag of the branch"})
    Queue("elsewhere", connection=conn).enqueue_call("workers.jobs.record_pipeline", job_id="pipeline-8-x",
                                                     kwargs={"project_id": 8, "ref": "main", "sha": SHA})
    # A worker on a queue of its own: idle, and leaving the waiting jobs where they are.
    worker = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "--name", "ops-test-worker"],
                              cwd=ROOT, env=env_for(redis_url, RQ_QUEUE="quiet"),
                              stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not Worker.all(connection=conn) and time.monotonic() < deadline:
            time.sleep(0.1)
        done = tagsweeper(redis_url, "status", "--json")
        text = tagsweeper(redis_url, "status").stdout
    finally:
        stop(worker)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    ours, other = report["queues"]
    assert ours == {"name": QUEUE, "queued": 1, "scheduled": 1, "started": 0, "failed": 2, "finished": 1}
    assert other == {"name": "elsewhere", "queued": 1, "scheduled": 0, "started": 0, "failed": 0,
                     "finished": 0}  # every queue on this Redis, ours first
    assert [(w["name"], w["state"], w["queues"], w["current_job"]) for w in report["workers"]] == \
        [("ops-test-worker", "idle", ["quiet"], None)]
    assert report["failed_total"] == 2
    assert [f["id"] for f in report["failed_jobs"]] == [jobs[1].id, jobs[0].id]  # newest first
    assert {f["error"] for f in report["failed_jobs"]} == {CONFIG_ERROR}
    assert report["failed_jobs"][0]["description"] == "record pipeline of project 7 ref feature/1"
    assert [d["tag"] for d in report["decisions"]] == [f"tag-{i}" for i in range(11, 1, -1)]  # the last 10

    assert f"{QUEUE}: 1 queued, 1 scheduled, 0 started, 2 failed, 1 finished" in text
    assert "ops-test-worker  idle  queues: quiet" in text
    assert f"  {jobs[0].id}  record pipeline of project 7 ref feature/0\n      {CONFIG_ERROR}" in text
    assert "last decisions:" in text and "acme/shop:tag-11" in text and "acme/shop:tag-1 " not in text
    assert TOKEN not in text + done.stdout


def test_status_when_redis_is_down_says_so_without_the_password():
    url = f"redis://:redis-Pa55-word@127.0.0.1:{free_port()}/0"
    done = tagsweeper(url, "status")
    assert done.returncode == 1
    assert "Redis at REDIS_URL is unreachable (ConnectionError)" in done.stderr
    assert "redis-Pa55-word" not in done.stdout + done.stderr


# --- replay -----------------------------------------------------------------------------


def test_replay_requeues_a_failed_job_under_its_id_and_it_finishes(redis_url, conn, monkeypatch):
    job = failed_jobs(conn, monkeypatch, redis_url, 1)[0]
    done = tagsweeper(redis_url, "replay", job.id)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"requeued job {job.id} (record pipeline of project 7 ref feature/0): "
                                   f"it was failed, it is queued again on '{QUEUE}'")
    assert Queue(QUEUE, connection=conn).job_ids == [job.id]
    assert FailedJobRegistry(QUEUE, connection=conn).get_job_ids() == []
    work(redis_url)  # the setting is fixed
    assert job.get_status(refresh=True) == "finished"
    assert job.return_value(refresh=True)["ref"] == "feature/0"


def test_replay_json(redis_url, conn, monkeypatch):
    job = failed_jobs(conn, monkeypatch, redis_url, 1)[0]
    done = tagsweeper(redis_url, "replay", job.id, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"job_id": job.id, "description": "record pipeline of project 7 ref feature/0",
                                       "queue": QUEUE, "was": "failed", "action": "requeued", "new_job_id": None}


def test_replay_requeues_a_canceled_job(redis_url, conn):
    job = enqueue(conn, 1)
    job.cancel()
    done = tagsweeper(redis_url, "replay", job.id)
    assert done.returncode == 0, done.stderr
    assert "it was canceled, it is queued again" in done.stdout
    work(redis_url)
    assert job.get_status(refresh=True) == "finished"


def test_a_finished_job_is_left_alone_unless_forced(redis_url, conn):
    job = enqueue(conn, 1)
    work(redis_url)
    assert job.get_status(refresh=True) == "finished"

    done = tagsweeper(redis_url, "replay", job.id)
    assert done.returncode == 0, done.stderr
    assert "it finished; nothing done (use --force" in done.stdout
    assert Queue(QUEUE, connection=conn).count == 0

    done = tagsweeper(redis_url, "replay", job.id, "--force", "--json")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["action"] == "copied" and outcome["was"] == "finished"
    new_id = outcome["new_job_id"]
    assert new_id != job.id and new_id.startswith(f"{job.id}-replay-")
    copy = Job.fetch(new_id, connection=conn)
    assert copy.func_name == job.func_name and copy.kwargs == job.kwargs and copy.args == job.args
    assert copy.description == job.description
    assert copy.meta == {"delivery": "d-1", "trigger": "pipeline", "replay_of": job.id}
    work(redis_url)
    assert copy.get_status(refresh=True) == "finished"
    assert sorted(FinishedJobRegistry(QUEUE, connection=conn).get_job_ids()) == sorted([job.id, new_id])

    # A replay of the replay gets a fresh suffix, not a second one.
    again = json.loads(tagsweeper(redis_url, "replay", new_id, "--force", "--json").stdout)
    assert again["new_job_id"].count("-replay-") == 1


def test_a_waiting_job_is_left_alone(redis_url, conn):
    job = enqueue(conn, 1)
    done = tagsweeper(redis_url, "replay", job.id)
    assert done.returncode == 0
    assert "it is queued: it has yet to run or is running; nothing done" in done.stdout
    assert Queue(QUEUE, connection=conn).job_ids == [job.id]


@pytest.mark.parametrize("job_id, message", [
    ("pipeline-7-nowhere", "no job 'pipeline-7-nowhere' in Redis"),
    ("not/an/id", "'not/an/id' is not a job id"),
])
def test_replay_of_an_unknown_id_is_a_clear_error(redis_url, job_id, message):
    done = tagsweeper(redis_url, "replay", job_id)
    assert done.returncode == 1
    assert done.stderr.startswith(f"tagsweeper: {message}")
    assert done.stdout == ""
    done = tagsweeper(redis_url, "replay", job_id, "--json")
    assert done.returncode == 1 and json.loads(done.stdout)["error"].startswith(message)


def test_replay_needs_a_job_id_or_failed(redis_url):
    assert tagsweeper(redis_url, "replay").returncode == 2
    assert tagsweeper(redis_url, "replay", "x", "--failed").returncode == 2
    done = tagsweeper(redis_url, "replay", "--failed", "--force")
    assert done.returncode == 2 and "--force applies to one finished JOB_ID" in done.stderr


def test_replay_failed_requeues_every_failed_job(redis_url, conn, monkeypatch):
    jobs = failed_jobs(conn, monkeypatch, redis_url, 3)
    done = tagsweeper(redis_url, "replay", "--failed")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"requeued 3 failed job(s) on queue '{QUEUE}'"
    assert sorted(lines[1:]) == sorted(f"  {j.id}  {j.description}" for j in jobs)
    assert FailedJobRegistry(QUEUE, connection=conn).get_job_ids() == []
    work(redis_url)
    assert all(j.get_status(refresh=True) == "finished" for j in jobs)

    done = tagsweeper(redis_url, "replay", "--failed", "--json")
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"queue": QUEUE, "requeued": [], "skipped": []}
    assert "no failed jobs on queue 'tagsweeper'" in tagsweeper(redis_url, "replay", "--failed").stdout


def test_replay_failed_uses_rq_queue(redis_url, conn, monkeypatch):
    (other,) = failed_jobs(conn, monkeypatch, redis_url, 1, queue="elsewhere")
    assert tagsweeper(redis_url, "replay", "--failed").stdout.startswith("no failed jobs on queue 'tagsweeper'")
    done = tagsweeper(redis_url, "replay", "--failed", "--json", RQ_QUEUE="elsewhere")
    assert [j["job_id"] for j in json.loads(done.stdout)["requeued"]] == [other.id]


# --- end to end: a cleanup GitLab failed, seen in status, replayed with --failed ------------


@pytest.mark.e2e
def test_a_cleanup_gitlab_failed_is_replayed_from_the_command_line(tmp_path, redis_url, gitlab_stack, gitlab):
    from tests.support.shop import EARLIER, LAST, assert_registry, make_shop, merge_payload

    emu = gitlab_stack.emulator
    svc = Service(tmp_path / "svc", redis_url, emu.url, emu.token, CLEANUP_RETRIES="1",
                  CLEANUP_RETRY_INTERVALS="1", REGISTRY_MODE="api", SWEEP_CRON="off").start()
    cli_env = {"GITLAB_URL": emu.url, "GITLAB_TOKEN": emu.token}
    gone = {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8]}
    try:
        project, repos, digests = make_shop(gitlab)
        emu.inject_fault("DELETE", r"/registry/repositories/\d+/tags/", 500, times=-1)
        job_id = svc.post(merge_payload(project), "Merge Request Hook", key="ops-1").json()["job_id"]
        assert svc.wait_for_job(job_id, timeout=120).get_status() == "failed"

        status = json.loads(tagsweeper(redis_url, "status", "--json", **cli_env).stdout)
        assert status["queues"][0]["failed"] == 1
        (failed,) = status["failed_jobs"]
        assert failed["id"] == job_id and failed["description"].startswith(f"cleanup {project.path} branch ")
        assert failed["error"].startswith("workers.cleanup.CleanupIncomplete: ")
        assert "still failing" in failed["error"]
        assert [w["state"] for w in status["workers"]] == ["idle"]
        assert {d["decision"] for d in status["decisions"]} == {"failed"}

        emu.clear_faults()
        done = tagsweeper(redis_url, "replay", "--failed", **cli_env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[0] == f"requeued 1 failed job(s) on queue '{QUEUE}'"
        job = svc.wait_for_job(job_id, timeout=60)
        assert job.get_status() == "finished", svc.logs()[-3000:]
        assert job.return_value()["summary"]["failed"] == 0

        status = json.loads(tagsweeper(redis_url, "status", "--json", **cli_env).stdout)
        assert status["failed_total"] == 0 and status["queues"][0]["finished"] == 1
        assert {d["decision"] for d in status["decisions"]} == {"deleted"}
    finally:
        svc.stop()
    assert_registry(gitlab, repos, digests, gone)
    assert emu.token not in svc.logs()
