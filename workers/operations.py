"""Operating the queue by hand: what `tagsweeper replay` and `tagsweeper status` do (workers/cli/operations.py).

`replay JOB_ID` puts a failed, stopped or canceled job back on its queue under the same
id (what rq-dashboard's "requeue" does); a finished job is left alone unless `--force`,
which enqueues the same function with the same keyword arguments under a new id.
`replay --failed` requeues every job in the queue's failed registry. A cleanup is safe to
run again: it looks at GitLab afresh, and a tag that is already gone counts as done.

`status` reads and never writes: the queues' counts, the workers, the failed jobs with
the last line of their exception, and the last decisions of the audit trail.
"""

from __future__ import annotations

import importlib
import re
import uuid
from datetime import datetime
from typing import Any

import redis
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import (CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry,
                         StartedJobRegistry)

from workers.common.settings import Settings

# How long the CLI waits on Redis: an operator at a terminal wants an answer, not a hang.
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
FAILED_SHOWN = 20
DECISIONS_SHOWN = 10

_REPLAY_SUFFIX = re.compile(r"-replay-[0-9a-f]{8}$")


class OperationError(Exception):
    """The operation cannot be done as asked; the message says why (the command's exit status is 1)."""


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=SOCKET_TIMEOUT,
                                socket_connect_timeout=CONNECT_TIMEOUT)


# --- replay ---------------------------------------------------------------------------


def replay(conn: redis.Redis, job_id: str, *, force: bool = False) -> dict[str, Any]:
    """Requeue one job if its status allows; say what was done. Raises OperationError."""
    job = fetch(conn, job_id)
    status = _status(job)
    done: dict[str, Any] = {"job_id": job.id, "description": job.description, "queue": job.origin,
                            "was": status, "action": "none", "new_job_id": None}
    if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        registry_class = CanceledJobRegistry if status == JobStatus.CANCELED else FailedJobRegistry
        registry = registry_class(job.origin, connection=conn, serializer=job.serializer)
        try:
            registry.requeue(job)
        except InvalidJobOperation:
            # Someone requeued it meanwhile, or its registry entry expired before the job did.
            if not force:
                raise OperationError(f"job {job.id} is {status} but no longer in the {status} jobs of queue "
                                     f"{job.origin!r}; use --force to enqueue a copy under a new id") from None
            return {**done, "action": "copied", "new_job_id": copy(conn, job).id}
        return {**done, "action": "requeued"}
    if status == JobStatus.FINISHED:
        if not force:
            return {**done, "message": "it finished; nothing done (use --force to run it again under a new id)"}
        return {**done, "action": "copied", "new_job_id": copy(conn, job).id}
    return {**done, "message": f"it is {status}: it has yet to run or is running; nothing done"}


def fetch(conn: redis.Redis, job_id: str) -> Job:
    try:
        return Job.fetch(job_id, connection=conn)
    except NoSuchJobError:
        raise OperationError(f"no job {job_id!r} in Redis: the id is wrong, or the job has expired "
                             "(see `tagsweeper status` for the failed ones)") from None
    except ValueError:  # RQ refuses ids with characters it never gives out
        raise OperationError(f"{job_id!r} is not a job id: ids have letters, digits, - and _ only") from None


def copy(conn: redis.Redis, job: Job) -> Job:
    """The same function and arguments, enqueued on the job's queue under a new id."""
    new_id = f"{_REPLAY_SUFFIX.sub('', job.id)}-replay-{uuid.uuid4().hex[:8]}"
    meta = {k: v for k, v in job.meta.items() if k != "report"}  # a report belongs to its own run
    meta["replay_of"] = job.id
    queue = Queue(job.origin, connection=conn, serializer=job.serializer)
    return queue.enqueue_call(job.func_name, args=job.args, kwargs=job.kwargs, job_id=new_id,
                              timeout=job.timeout, result_ttl=job.result_ttl, failure_ttl=job.failure_ttl,
                              description=job.description, meta=meta)


def replay_failed(conn: redis.Redis, queue_name: str) -> dict[str, Any]:
    """Requeue every job in the queue's failed registry; list what was requeued and what could not be."""
    registry = FailedJobRegistry(queue_name, connection=conn)
    requeued, skipped = [], []
    for job_id in registry.get_job_ids(cleanup=False):
        try:
            job = registry.requeue(job_id)
        except NoSuchJobError:
            skipped.append({"job_id": job_id, "reason": "the job itself has expired"})
            continue
        except InvalidJobOperation:
            skipped.append({"job_id": job_id, "reason": "no longer failed (requeued by someone else)"})
            continue
        requeued.append({"job_id": job.id, "description": job.description})
    return {"queue": queue_name, "requeued": requeued, "skipped": skipped}


# --- status ---------------------------------------------------------------------------


def status(conn: redis.Redis, queue_name: str, *, failed_shown: int = FAILED_SHOWN,
           decisions_shown: int = DECISIONS_SHOWN) -> dict[str, Any]:
    """Everything `tagsweeper status` shows, as JSON-able values, read without writing."""
    names = {q.name for q in Queue.all(connection=conn)} | {queue_name}
    # Ours first, then any other queue sharing this Redis.
    queues = [queue_counts(conn, name) for name in sorted(names, key=lambda n: (n != queue_name, n))]
    failed_ids = FailedJobRegistry(queue_name, connection=conn).get_job_ids(cleanup=False)
    newest = list(reversed(failed_ids))[:failed_shown]  # the registry is ordered by failure time
    failed = [failed_job(job_id, job) for job_id, job in zip(newest, Job.fetch_many(newest, connection=conn))]
    return {"queue": queue_name, "queues": queues, "workers": workers(conn),
            "failed_jobs": failed, "failed_total": len(failed_ids),
            "decisions": last_decisions(conn, decisions_shown)}


def queue_counts(conn: redis.Redis, name: str) -> dict[str, Any]:
    queue = Queue(name, connection=conn)
    # cleanup=False: counting must not move expired jobs around (RQ's count property would).
    return {"name": name, "queued": queue.count,
            **{label: registry(name, connection=conn).get_job_count(cleanup=False)
               for label, registry in (("scheduled", ScheduledJobRegistry), ("started", StartedJobRegistry),
                                       ("failed", FailedJobRegistry), ("finished", FinishedJobRegistry))}}


def workers(conn: redis.Redis) -> list[dict[str, Any]]:
    found = []
    for worker in sorted(Worker.all(connection=conn), key=lambda w: w.name):
        job = worker.get_current_job()
        found.append({
            "name": worker.name, "state": str(getattr(worker.get_state(), "value", worker.get_state())),
            "queues": [q.name for q in worker.queues],
            "current_job": {"id": job.id, "description": job.description} if job is not None else None,
            "last_heartbeat": _iso(worker.last_heartbeat),
        })
    return found


def failed_job(job_id: str, job: Job | None) -> dict[str, Any]:
    if job is None:
        return {"id": job_id, "description": None, "status": None, "ended_at": None,
                "error": "(the job has expired)"}
    result = job.latest_result()
    return {"id": job.id, "description": job.description, "status": _status(job),
            "ended_at": _iso(job.ended_at), "error": last_line(result.exc_string if result else None)}


def last_line(text: str | None) -> str | None:
    """The last non-empty line of a traceback: the exception and its message."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def last_decisions(conn: redis.Redis, limit: int) -> list[dict] | None:
    """The audit trail's newest entries, or None when this version has no audit trail."""
    try:
        audit = importlib.import_module("workers.common.audit")
    except ModuleNotFoundError as exc:
        if exc.name != "workers.common.audit":
            raise
        return None
    return audit.read(conn, limit=limit)


def _status(job: Job) -> str:
    status = job.get_status(refresh=True)
    return status.value if isinstance(status, JobStatus) else str(status)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
