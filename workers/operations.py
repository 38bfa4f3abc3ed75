"""Operating the queue by hand: `tagsweeper replay` and `tagsweeper status`.

`replay JOB_ID` puts a failed, stopped or canceled job back on its queue under the same
id (what rq-dashboard's "requeue" does); a finished job is left alone unless `--force`,
which enqueues the same function with the same keyword arguments under a new id.
`replay --failed` requeues every job in the queue's failed registry. A cleanup is safe to
run again: it looks at GitLab afresh, and a tag that is already gone counts as done.

`status` reads and never writes: the queues' counts, the workers, the failed jobs with
the last line of their exception, and the last decisions of the audit trail.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import uuid
from datetime import datetime
from typing import Any, Callable

import redis
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import (CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry, ScheduledJobRegistry,
                         StartedJobRegistry)

from workers.common.settings import Settings, say_redis_unreachable

# How long the CLI waits on Redis: an operator at a terminal wants an answer, not a hang.
SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
FAILED_SHOWN = 20
DECISIONS_SHOWN = 10

_REPLAY_SUFFIX = re.compile(r"-replay-[0-9a-f]{8}$")


class OperationError(Exception):
    """The operation cannot be done as asked; the message says why (exit status 1)."""


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay", help="requeue a failed job (or, with --failed, every failed job)",
        description="Requeue a failed, stopped or canceled job under its own id. A finished job is "
                    "left alone unless --force, which enqueues a copy under a new id.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("job_id", nargs="?", metavar="JOB_ID", help="the job's id, as the dashboard shows it")
    target.add_argument("--failed", action="store_true", help="requeue every job in the queue's failed registry")
    p.add_argument("--force", action="store_true",
                   help="run a finished job again: same function and arguments, new job id")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(handler=run_replay)

    p = subparsers.add_parser("status", help="queues, workers, failed jobs and the last decisions")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(handler=run_status)


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_timeout=SOCKET_TIMEOUT,
                                socket_connect_timeout=CONNECT_TIMEOUT)


_redis_down = say_redis_unreachable


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))


def _show(args: argparse.Namespace, value: Any, as_text: Callable[[Any], str]) -> None:
    """A command's answer: JSON with --json, else the text people read."""
    if args.json:
        _print_json(value)
    else:
        print(as_text(value))


# --- replay ---------------------------------------------------------------------------


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    if args.failed and args.force:
        print("tagsweeper: --force applies to one finished JOB_ID, not to --failed", file=sys.stderr)
        return 2
    conn = connect(settings)
    try:
        if args.failed:
            outcome = replay_failed(conn, settings.queue)
            status = 1 if outcome["skipped"] else 0
        else:
            outcome = replay(conn, args.job_id, force=args.force)
            status = 0
    except OperationError as exc:
        if args.json:
            _print_json({"error": str(exc)})
        print(f"tagsweeper: {exc}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        return _redis_down(exc)
    finally:
        conn.close()
    _show(args, outcome, format_replay)
    return status


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


def format_replay(outcome: dict[str, Any]) -> str:
    if "requeued" in outcome:  # --failed
        queue = outcome["queue"]
        if not outcome["requeued"] and not outcome["skipped"]:
            return f"no failed jobs on queue {queue!r}: nothing to requeue"
        lines = [f"requeued {len(outcome['requeued'])} failed job(s) on queue {queue!r}"]
        lines += [f"  {j['job_id']}  {j['description'] or ''}".rstrip() for j in outcome["requeued"]]
        if outcome["skipped"]:
            lines.append(f"could not requeue {len(outcome['skipped'])}:")
            lines += [f"  {j['job_id']}  ({j['reason']})" for j in outcome["skipped"]]
        return "\n".join(lines)
    what = f"job {outcome['job_id']}" + (f" ({outcome['description']})" if outcome["description"] else "")
    if outcome["action"] == "requeued":
        return f"requeued {what}: it was {outcome['was']}, it is queued again on {outcome['queue']!r}"
    if outcome["action"] == "copied":
        return (f"enqueued a copy of {what} as {outcome['new_job_id']} on {outcome['queue']!r}: "
                f"same function and arguments (it was {outcome['was']})")
    return f"{what}: {outcome['message']}"


# --- status ---------------------------------------------------------------------------


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    conn = connect(settings)
    try:
        report = status(conn, settings.queue)
    except redis.RedisError as exc:
        return _redis_down(exc)
    finally:
        conn.close()
    _show(args, report, format_status)
    return 0


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


def format_status(report: dict[str, Any]) -> str:
    lines = ["queues:"]
    for q in report["queues"]:
        lines.append(f"  {q['name']}: {q['queued']} queued, {q['scheduled']} scheduled, {q['started']} started, "
                     f"{q['failed']} failed, {q['finished']} finished")
    lines.append(f"workers ({len(report['workers'])}):" if report["workers"] else
                 "workers: none running (start one with `tagsweeper worker`)")
    for w in report["workers"]:
        job = w["current_job"]
        doing = f"  running {job['id']} ({job['description']})" if job else ""
        lines.append(f"  {w['name']}  {w['state']}  queues: {', '.join(w['queues'])}{doing}")
    total, shown = report["failed_total"], report["failed_jobs"]
    if not total:
        lines.append(f"failed jobs on {report['queue']!r}: none")
    else:
        more = f", newest {len(shown)} shown" if total > len(shown) else ""
        lines.append(f"failed jobs on {report['queue']!r} ({total}{more}; `tagsweeper replay --failed` requeues all):")
        for f in shown:
            lines.append(f"  {f['id']}  {f['description'] or ''}".rstrip())
            lines.append(f"      {f['error'] or '(no exception recorded)'}")
    decisions = report["decisions"]
    if decisions is None:
        lines.append("last decisions: (no audit trail in this version)")
    elif not decisions:
        lines.append("last decisions: none yet")
    else:
        from workers.common.audit import format_table

        lines.append("last decisions:")
        lines += ["  " + line for line in format_table(decisions).splitlines()]
    return "\n".join(lines)
