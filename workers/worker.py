"""The worker process: an RQ worker (with its scheduler) on the cleanup queue that waits out
Redis outages, retries the jobs of dead workers within WORKER_ABANDONED_AFTER, and runs
the sweep schedule (SWEEP_CRON). `tagsweeper worker` (workers/cli/worker.py) starts it.
"""

from __future__ import annotations

import time

import redis
from rq import Worker as RQWorker
from rq.defaults import DEFAULT_WORKER_TTL

from workers.common.settings import DEFAULT_ABANDONED_AFTER, ConfigError, Settings

_REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


class _Worker(RQWorker):
    """RQ's forking worker, with the grace after a missed heartbeat configurable (see run),
    that outlives a Redis outage.

    RQ retries Redis only while it waits for a job. A Redis error anywhere else in its loop
    (checking for suspension, maintenance, a heartbeat while a job runs, recording how the job
    ended) ends `work()`: the process would exit and need a restart. Here those steps wait for
    Redis instead. A job whose end could not be recorded stays STARTED in Redis and is retried
    as abandoned once Redis is back.
    """

    heartbeat_grace = DEFAULT_ABANDONED_AFTER - 30

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


def run(settings: Settings, *, name: str | None = None, burst: bool = False,
        maintenance_interval: int | None = None, abandoned_after: int | None = None) -> None:
    """Work the cleanup queue until stopped (or, with `burst`, until it is empty).

    `maintenance_interval` and `abandoned_after` (seconds) override WORKER_MAINTENANCE_INTERVAL
    and WORKER_ABANDONED_AFTER. Raises ConfigError for a bad setting, and redis.RedisError when
    Redis cannot be reached to start with.
    """
    from rq import Queue

    settings.require_gitlab()
    maintenance = maintenance_interval or settings.worker_maintenance_interval
    abandoned = abandoned_after or settings.worker_abandoned_after
    if abandoned < 2:
        raise ConfigError(f"--abandoned-after must be at least 2 seconds, got {abandoned}")
    monitoring = max(1, min(30, abandoned // 3))  # heartbeats while a job runs
    conn = redis.Redis.from_url(settings.redis_url)
    worker = _Worker([Queue(settings.queue, connection=conn)], connection=conn, name=name,
                     maintenance_interval=maintenance, job_monitoring_interval=monitoring,
                     # An idle worker runs maintenance only between its blocking waits on the
                     # queue (worker_ttl - 15 s long): wake it at least once per interval.
                     worker_ttl=min(DEFAULT_WORKER_TTL, maintenance + 15))
    worker.heartbeat_grace = abandoned - monitoring
    conn.ping()  # Redis unreachable to start with: the command says so, before RQ's own traceback
    schedule = None
    if settings.sweep_cron and not burst:
        from workers.sweep import Scheduler  # SWEEP_CRON: enqueues the scheduled sweeps, once per slot

        schedule = Scheduler(settings)
        schedule.start()
    try:
        worker.work(with_scheduler=True, burst=burst)
    finally:
        if schedule is not None:
            schedule.stop()
