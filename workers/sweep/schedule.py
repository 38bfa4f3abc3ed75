"""The sweep's schedule: which projects it covers, and one job per project and SWEEP_CRON slot.

A project joins the schedule when it sends a delivery (`remember_project`, called by the
jobs) or is named in SWEEP_PROJECTS. `Scheduler`, a thread inside `tagsweeper worker`,
enqueues the current slot's sweeps with deterministic job ids, so several workers (and
restarts) enqueue each once.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from datetime import datetime, timedelta, timezone

import redis

from workers.common import queue as jobqueue
from workers.common import keys
from workers.common.projects import parse_project
from workers.common.settings import Settings

log = logging.getLogger("tagsweeper.sweep")

PROJECTS_KEY = keys.PROJECTS  # every project that reached a job (SADD by workers.jobs)

SWEEP_RETRY = (2, [300, 1800])  # a sweep with failed deletions is retried; the next one catches up anyway
FAILURE_TTL = 30 * 86400

# --- which projects the schedule sweeps --------------------------------------------------------

def remember_project(conn: redis.Redis, project_id: int | str) -> None:
    """Note that a project sent a delivery: the scheduled sweep covers it from now on."""
    conn.sadd(PROJECTS_KEY, str(project_id))

def forget_project(conn: redis.Redis, project_id: int | str) -> None:
    conn.srem(PROJECTS_KEY, str(project_id))

def scheduled_projects(conn: redis.Redis, settings: Settings) -> list[int | str]:
    """Every project that sent a delivery, and SWEEP_PROJECTS."""
    found: list[int | str] = []
    members = sorted(m.decode() if isinstance(m, bytes) else m for m in conn.smembers(PROJECTS_KEY))
    for value in [*members, *settings.sweep_projects]:
        try:
            project = parse_project(value)
        except ValueError:
            continue  # a blank member
        if project not in found:
            found.append(project)
    return found

# --- when ----------------------------------------------------------------------------------------

def slot_of(cron: str, now: datetime) -> tuple[datetime, datetime]:
    """The schedule's latest time at or before `now`, and the one after it (cron in UTC)."""
    from croniter import croniter  # an RQ dependency

    now = now.astimezone(timezone.utc).replace(second=0, microsecond=0) + timedelta(minutes=1)
    slot = croniter(cron, now).get_prev(datetime)
    return slot, croniter(cron, slot).get_next(datetime)

def job_id(project: int | str, slot: datetime) -> str:
    """One id per project and time slot: however many workers enqueue it, it runs once."""
    if isinstance(project, int):
        ident = str(project)
    else:
        digest = hashlib.sha1(project.encode()).hexdigest()[:8]
        ident = re.sub(r"[^A-Za-z0-9_-]", "_", project)[:80] + "-" + digest
    return f"sweep-{ident}-{slot.astimezone(timezone.utc):%Y%m%dT%H%MZ}"

def enqueue_scheduled(conn: redis.Redis, settings: Settings, now: datetime | None = None) -> list[str]:
    """Enqueue the sweep of every scheduled project for the current time slot; return the new job ids.

    Idempotent per slot: the job ids are deterministic and enqueued with `unique=True`, and
    each job's id is kept for the slot's length, so a second call (another worker, a restart)
    enqueues nothing. A worker that starts after a missed slot enqueues that slot at once.
    """
    from rq import Queue, Retry
    from rq.exceptions import DuplicateJobError

    if not settings.sweep_cron:
        return []
    slot, following = slot_of(settings.sweep_cron, now or datetime.now(timezone.utc))
    keep = int((following - slot).total_seconds()) + 3600
    queue = Queue(settings.queue, connection=conn)
    enqueued = []
    for project in scheduled_projects(conn, settings):
        jid = job_id(project, slot)
        try:
            queue.enqueue_call(jobqueue.SWEEP_PROJECT, kwargs={"project": project}, timeout=settings.sweep_timeout,
                               job_id=jid, unique=True, result_ttl=keep, failure_ttl=max(keep, FAILURE_TTL),
                               retry=Retry(max=SWEEP_RETRY[0], interval=SWEEP_RETRY[1]),
                               description=f"scheduled sweep of project {project}",
                               meta={"trigger": "sweep", "slot": slot.isoformat()})
        except DuplicateJobError:
            continue
        enqueued.append(jid)
    if enqueued:
        log.info("scheduled sweeps enqueued", extra={"slot": slot.isoformat(), "jobs": len(enqueued)})
    return enqueued

class Scheduler(threading.Thread):
    """Enqueues the scheduled sweeps from inside `tagsweeper worker`.

    RQ 3.0's cron (`rq cron`, rq.cron.CronScheduler) is a separate blocking process that
    installs signal handlers (main thread only), evaluates crons in local time and enqueues
    with fresh job ids, so every process running it would enqueue again. This thread checks
    once every `interval` seconds whether SWEEP_CRON reached a new slot and then calls
    `enqueue_scheduled`, whose deterministic job ids make several workers enqueue once.
    """

    def __init__(self, settings: Settings, *, interval: float = 30.0):
        super().__init__(name="tagsweeper-sweep-schedule", daemon=True)
        self.settings = settings
        self.interval = interval
        self.last_slot: datetime | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        conn = redis.Redis.from_url(self.settings.redis_url)
        try:
            while not self._halt.is_set():
                self.tick(conn)
                self._halt.wait(self.interval)
        finally:
            conn.close()

    def tick(self, conn: redis.Redis, now: datetime | None = None) -> list[str]:
        now = now or datetime.now(timezone.utc)
        try:
            slot, _ = slot_of(self.settings.sweep_cron, now)
            if slot == self.last_slot:
                return []
            enqueued = enqueue_scheduled(conn, self.settings, now)
            self.last_slot = slot
            return enqueued
        except Exception as exc:  # Redis away for a moment: the next tick tries again
            log.warning("scheduled sweep not enqueued", extra={"error": f"{type(exc).__name__}: {exc}"})
            return []

    def stop(self) -> None:
        self._halt.set()

