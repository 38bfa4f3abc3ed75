"""Running tagsweeper itself for end-to-end tests: gunicorn serving the hooks app and RQ workers.

Both are real subprocesses started the way the Procfile starts them, pointed at the
suite's redis-server and GitLab emulator through the environment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import requests
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry

from tests.support.procs import free_port, stop, wait_for_port
from tests.support.payloads import PAYLOADS, load_payload  # noqa: F401 (load_payload: re-exported)

ROOT = Path(__file__).resolve().parents[2]
SECRET = "e2e-webhook-secret"


def job_or_none(conn: redis.Redis, job_id: str) -> Job | None:
    """The RQ job, or None when there is none (never accepted, or expired)."""
    try:
        return Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        return None


def gitlab_headers(event: str, key: str | None = None, token: str = SECRET) -> dict:
    headers = json.loads((PAYLOADS / "headers.json").read_text())
    headers["X-Gitlab-Event"] = event
    headers["X-Gitlab-Token"] = token
    if key is None:
        headers.pop("Idempotency-Key", None)
    else:
        headers["Idempotency-Key"] = key
    return headers


def _descendants(pid: int) -> list[int]:
    """Every living process below `pid`, children first (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo.extend(children.get(child, []))
    return out


class Service:
    """gunicorn + RQ worker(s) as subprocesses, with logs kept in workdir for inspection."""

    def __init__(self, workdir: Path, redis_url: str, gitlab_url: str, gitlab_token: str, **env: str):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.redis_url = redis_url
        self.port = free_port()
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url, "GITLAB_URL": gitlab_url, "GITLAB_TOKEN": gitlab_token,
            "WEBHOOK_SECRET": SECRET, "CLEANUP_DELAY": "0", "LOG_FORMAT": "json",
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(ROOT),
        }
        self.env.update({k: str(v) for k, v in env.items()})
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen:
        log = open(self.workdir / log_name, "ab")
        return subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_web(self) -> "Service":
        bin_dir = Path(sys.executable).parent
        self.web = self._spawn([str(bin_dir / "gunicorn"), "--bind", f"127.0.0.1:{self.port}",
                                "--workers", "2", "hooks:create_app()"], "web.log")
        wait_for_port(self.port, proc=self.web, timeout=30)
        return self

    def start_worker(self) -> subprocess.Popen:
        n = len(self.workers)
        # The port in the name: two services of one test session may run side by side on one Redis.
        name = f"e2e-{os.getpid()}-{self.port}-{n}"
        proc = self._spawn([sys.executable, "-m", "workers.cli", "worker", "--name", name], f"worker{n}.log")
        self.workers.append(proc)
        return proc

    def kill_worker(self, proc: subprocess.Popen) -> list[int]:
        """SIGKILL a worker and every process it started (its work horse, RQ's scheduler), as when
        its machine dies: nothing gets to clean up. Returns the pids killed."""
        os.kill(proc.pid, signal.SIGSTOP)  # frozen first: it cannot notice its horse dying
        pids = [proc.pid, *_descendants(proc.pid)]
        for pid in reversed(pids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        return pids

    def start(self) -> "Service":
        self.start_web()
        self.start_worker()
        return self

    def stop(self) -> None:
        for proc in [self.web, *self.workers]:
            if proc is not None:
                stop(proc)

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))

    def post(self, body: dict | bytes, event: str, key: str | None = "k-1", token: str = SECRET,
             headers: dict | None = None) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = gitlab_headers(event, key, token)
        h.update(headers or {})
        return requests.post(self.url + "/hooks/gitlab", data=data, headers=h, timeout=10)

    def wait_for_job(self, job_id: str, timeout: float = 60.0) -> Job:
        """Wait until the job finished or failed for good (not merely awaiting a retry)."""
        conn = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        status = "not found"
        while time.monotonic() < deadline:
            job = job_or_none(conn, job_id)
            if job is None:
                time.sleep(0.05)
                continue
            status = job.get_status(refresh=True)
            if status in ("finished", "failed", "stopped", "canceled"):
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} still {status} after {timeout}s\n{self.logs()[-4000:]}")

    def wait_idle(self, timeout: float = 60.0, queue: str = "tagsweeper") -> None:
        """Wait until no job is queued, scheduled or running."""
        conn = redis.Redis.from_url(self.redis_url)
        q = Queue(queue, connection=conn)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            busy = q.count + ScheduledJobRegistry(queue=q).count + StartedJobRegistry(queue=q).count
            if not busy:
                return
            time.sleep(0.1)
        raise TimeoutError(f"queue {queue} still busy after {timeout}s\n{self.logs()[-4000:]}")

    def failed_jobs(self, queue: str = "tagsweeper") -> list[str]:
        conn = redis.Redis.from_url(self.redis_url)
        return FailedJobRegistry(queue=Queue(queue, connection=conn)).get_job_ids()
