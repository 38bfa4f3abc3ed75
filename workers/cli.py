"""The `tagsweeper` command: run the worker, clean a branch by hand, and operate the service.

`cleanup` and `worker` live here; every other command lives in its own module, listed in
COMMAND_MODULES, which exposes `add_commands(subparsers)` and sets `handler=` on each
parser: a function `handler(args, settings) -> exit status`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time

import redis
from rq import Worker as RQWorker
from rq.defaults import DEFAULT_WORKER_TTL

from workers import cleanup
from workers.common import logs
from workers.gitlab import GitLab, GitLabError
from workers.report import format_text
from workers.common.settings import ConfigError, Settings, say_redis_unreachable


def _project(value: str) -> int | str:
    value = value.strip()
    if not value:
        raise argparse.ArgumentTypeError("give a numeric project id or a path like group/project")
    return int(value) if value.isdigit() else value.strip("/")


# A worker killed mid-job (SIGKILL, lost machine) leaves its job in RQ's StartedJobRegistry.
# Another worker's maintenance retries it once the job missed its heartbeats for
# ABANDONED_AFTER seconds. RQ's own defaults (maintenance every 600 s, run only when an idle
# worker wakes from a 405 s wait) can leave such a job for over a quarter of an hour.
MAINTENANCE_INTERVAL = 60
ABANDONED_AFTER = 90  # RQ's default: a 30 s heartbeat plus 60 s of grace


def _seconds(value: str) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"give a whole number of seconds >= 1, got {value!r}")
    return number


def _env_seconds(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise ConfigError(f"{name}={raw!r}: give a whole number of seconds >= {minimum}")
    return int(raw)


_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


class _Worker(RQWorker):
    """RQ's forking worker, with the grace after a missed heartbeat configurable (see run_worker),
    that outlives a Redis outage.

    RQ retries Redis only while it waits for a job. A Redis error anywhere else in its loop
    (checking for suspension, maintenance, a heartbeat while a job runs, recording how the job
    ended) ends `work()`: the process would exit and need a restart. Here those steps wait for
    Redis instead. A job whose end could not be recorded stays STARTED in Redis and is retried
    as abandoned once Redis is back.
    """

    heartbeat_grace = ABANDONED_AFTER - 30

    def get_heartbeat_ttl(self, job, working_time: float = 0.0) -> int:
        # As RQ's own, whose grace is a fixed 60 s: how long the job's entry in the
        # StartedJobRegistry lives without another heartbeat before it counts as abandoned.
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(job.timeout - working_time, interval)
        return int(interval) + self.heartbeat_grace

    def heartbeat(self, timeout=None, pipeline=None):
        try:
            super().heartbeat(timeout, pipeline)
        except _REDIS_DOWN as exc:
            self.log.warning("Worker %s: heartbeat not sent, Redis unreachable: %s", self.name, exc)

    def maintain_heartbeats(self, job, execution):
        try:
            super().maintain_heartbeats(job, execution)
        except _REDIS_DOWN as exc:
            # Keep watching the horse: giving up here would start the next job beside it.
            self.log.warning("Worker %s: heartbeat not sent, Redis unreachable: %s", self.name, exc)

    def check_for_suspension(self, burst: bool):
        self._despite_outages(super().check_for_suspension, burst)

    def run_maintenance_tasks(self):
        if self._despite_outages(super().run_maintenance_tasks):
            # It may have died holding the queues' maintenance locks (RQ keeps them 899 s):
            # free them, or no worker would retry abandoned jobs for a quarter of an hour.
            for queue in self.queues:
                self._despite_outages(queue.release_maintenance_lock)

    def execute_job(self, job, queue):
        try:
            super().execute_job(job, queue)
        except _REDIS_DOWN as exc:
            # The horse has ended (or never started); the job's end is not recorded. It stays
            # STARTED and RQ's maintenance retries it as abandoned.
            self.log.error("Worker %s: job %s: Redis unreachable, the job will be retried as abandoned: %s",
                           self.name, job.id, exc)
            self._wait_for_redis()

    def _despite_outages(self, step, *args) -> bool:
        """Run `step`, again after each Redis outage; True when an outage interrupted it."""
        interrupted = False
        while True:
            try:
                step(*args)
                return interrupted
            except _REDIS_DOWN as exc:
                self.log.error("Worker %s: Redis unreachable, waiting for it: %s", self.name, exc)
                interrupted = True
                self._wait_for_redis()
                if self._stop_requested:
                    return interrupted

    def _wait_for_redis(self) -> None:
        delay = 0.5
        while not self._stop_requested:
            try:
                self.connection.ping()
                return
            except _REDIS_DOWN:
                time.sleep(delay)
                delay = min(delay * 2, 5.0)


# Modules adding their own subcommands (see the module docstring).
COMMAND_MODULES: list[str] = [
    "workers.registration",
    "workers.common.audit",
    "workers.operations",
    "workers.sweep",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagsweeper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("cleanup", help="clean a branch's image tags now, printing every decision")
    p.add_argument("--project", required=True, type=_project, help="project id or path (group/project)")
    p.add_argument("--branch", required=True, help="branch name, as in git (not the slug)")
    p.add_argument("--dry-run", action="store_true", help="decide and report, delete nothing")
    p.add_argument("--force", action="store_true", help="clean even if the branch still exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run_cleanup)

    p = sub.add_parser("worker", help="run an RQ worker (with its scheduler) for the cleanup queue, "
                                     "plus the sweep schedule; it waits out Redis restarts")
    p.add_argument("--burst", action="store_true", help="run what is due now, then quit when the queue is empty")
    p.add_argument("--name", help="worker name")
    p.add_argument("--maintenance-interval", type=_seconds, metavar="SECONDS",
                   help="how often this worker runs RQ's maintenance, which retries the jobs of dead "
                        f"workers (default: WORKER_MAINTENANCE_INTERVAL or {MAINTENANCE_INTERVAL})")
    p.add_argument("--abandoned-after", type=_seconds, metavar="SECONDS",
                   help="a running job whose worker sent no heartbeat for this long is abandoned and "
                        f"retried (default: WORKER_ABANDONED_AFTER or {ABANDONED_AFTER}; at least 2)")
    p.set_defaults(handler=run_worker)

    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_format)
        return args.handler(args, settings)
    except ConfigError as exc:
        print(f"tagsweeper: configuration error: {exc}", file=sys.stderr)
        return 2


def run_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_gitlab()
    if not args.json:
        logs.configure(settings.log_format, level=logging.WARNING)  # the printed report says it all
    request = cleanup.Request(project_id=args.project, branch=args.branch, trigger="manual", force=args.force)
    gitlab = GitLab(settings.gitlab_url, settings.gitlab_token, timeout=settings.http_timeout,
                    pool_size=settings.delete_concurrency + 2)
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        report = cleanup.run(request, gitlab=gitlab, conn=conn, settings=settings,
                             dry_run=True if args.dry_run else None)
        status = 0
    except cleanup.CleanupIncomplete as exc:
        report, status = exc.report, 1
    except cleanup.CleanupError as exc:
        print(f"tagsweeper: {exc}", file=sys.stderr)
        return 2
    except GitLabError as exc:
        print(f"tagsweeper: GitLab: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        return say_redis_unreachable(exc)
    finally:
        gitlab.close()
        conn.close()
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return status


def run_worker(args: argparse.Namespace, settings: Settings) -> int:
    from rq import Queue

    settings.require_gitlab()
    maintenance = args.maintenance_interval or _env_seconds("WORKER_MAINTENANCE_INTERVAL", MAINTENANCE_INTERVAL)
    abandoned = args.abandoned_after or _env_seconds("WORKER_ABANDONED_AFTER", ABANDONED_AFTER, minimum=2)
    if abandoned < 2:
        raise ConfigError(f"--abandoned-after must be at least 2 seconds, got {abandoned}")
    monitoring = max(1, min(30, abandoned // 3))  # heartbeats while a job runs
    conn = redis.Redis.from_url(settings.redis_url)
    worker = _Worker([Queue(settings.queue, connection=conn)], connection=conn, name=args.name,
                     maintenance_interval=maintenance, job_monitoring_interval=monitoring,
                     # An idle worker runs maintenance only between its blocking waits on the
                     # queue (worker_ttl - 15 s long): wake it at least once per interval.
                     worker_ttl=min(DEFAULT_WORKER_TTL, maintenance + 15))
    worker.heartbeat_grace = abandoned - monitoring
    schedule = None
    if settings.sweep_cron and not args.burst:
        from workers.sweep import Scheduler  # SWEEP_CRON: enqueues the scheduled sweeps, once per slot

        schedule = Scheduler(settings)
        schedule.start()
    try:
        worker.work(with_scheduler=True, burst=args.burst)
    finally:
        if schedule is not None:
            schedule.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
