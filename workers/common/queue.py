"""Job names and how a job is enqueued: what the web process and the workers agree on.

Jobs are named by dotted path (`CLEANUP_BRANCH`, `RECORD_PIPELINE`, `SWEEP_PROJECT`), so
whoever enqueues one never imports `workers.jobs`. `Options` say how a kind of job is run
and how long it is kept; `cleanup_options()` and `PIPELINE` are the two a delivery makes.
`schedule_recheck()` runs a cleanup again later, while live environments still use its tags;
`schedule_retention()` schedules a live branch's retention pass, one pending per branch.

`enqueue()` builds the RQ job and writes it with RQ 3.0's unique-enqueue script
(`rq.scripts`): one Redis round trip that refuses an id that is a job already, else saves
the job and queues it, or schedules it `delay` seconds from now. The job itself is the
dedupe record: a finished cleanup keeps its id for CLEANUP_RESULT_TTL (30 days), a failed
one for FAILURE_TTL, a queued or scheduled one until it has run. Anything else the caller
wants written (its counters) goes in one pipelined round trip after that, and may fail
without failing the enqueue.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, Sequence

import redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from rq.job import JobStatus
from rq.scripts import save_unique_job

from workers.common import metrics

log = logging.getLogger("tagsweeper.queue")

CLEANUP_BRANCH = "workers.jobs.cleanup_branch"
RECORD_PIPELINE = "workers.jobs.record_pipeline"
RECORD_DEPLOYMENT = "workers.jobs.record_deployment"
SWEEP_PROJECT = "workers.jobs.sweep_project"
RETIRE_BRANCH = "workers.jobs.retire_branch"

DAY = 86400
JOB_TIMEOUT = 900
CLEANUP_RESULT_TTL = 30 * DAY  # a finished cleanup's id blocks repeats this long: the dedupe window
FAILURE_TTL = 30 * DAY
PIPELINE_RESULT_TTL = 3600  # the status changes of one pipeline come within the hour
PIPELINE_RETRY = (3, (10,))
RECHECK_RESULT_TTL = DAY  # a re-check's report, for the dashboard; its id is never asked for again
RETIRE_RESULT_TTL = DAY  # a retention pass's report, for the dashboard, until the next pass replaces it
RETIRE_FAILURE_TTL = 7 * DAY
# A retention job in these states is the branch's pending pass; running, it may have read too early.
WAITING = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED})

ENQUEUED = "enqueued"
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Options:
    """How one kind of job runs and how long RQ keeps it."""

    result_ttl: int
    timeout: int = JOB_TIMEOUT
    failure_ttl: int = FAILURE_TTL
    retry: tuple[int, tuple[int, ...]] | None = None  # (retries, seconds between them); None: failed at once
    delay: int = 0  # seconds from enqueueing until it may run


PIPELINE = Options(result_ttl=PIPELINE_RESULT_TTL, retry=PIPELINE_RETRY)
DEPLOYMENT = PIPELINE  # a hint, as a pipeline's: kept an hour against re-sends, retried briefly


def cleanup_options(delay: int, retries: int, intervals: Sequence[int]) -> Options:
    """A branch cleanup's options: CLEANUP_DELAY, CLEANUP_RETRIES, CLEANUP_RETRY_INTERVALS."""
    # RQ's Retry needs at least one retry: with CLEANUP_RETRIES=0 a failed cleanup goes straight to "failed".
    return Options(result_ttl=CLEANUP_RESULT_TTL, delay=delay,
                   retry=(retries, tuple(intervals)) if retries else None)


def recheck_id(project_id: int, branch: str, due: float, interval: int) -> str:
    """The id of the re-check of a branch's cleanup due at `due` (unix seconds): the same for every
    cleanup asking within one `interval`, so repeated cleanups add no second re-check. The slot
    in it moves on with each re-check, so a re-check that schedules the next one (its branch still
    in use) never finds itself in the way."""
    digest = hashlib.sha256(f"{int(project_id)}\n{branch}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"recheck-{int(project_id)}-{digest}-{int(due // interval)}"


def schedule_recheck(queue: Queue, kwargs: Mapping[str, Any], *, project_id: int, interval: int, retries: int,
                     intervals: Sequence[int], description: str | None = None) -> tuple[str, str]:
    """Run a cleanup job again `interval` seconds from now (IN_USE_RECHECK): the same function,
    the same arguments. Returns (status, job id); DUPLICATE when one is due in the same slot."""
    job_id = recheck_id(project_id, str(kwargs["branch"]), time.time() + interval, interval)
    options = Options(result_ttl=RECHECK_RESULT_TTL, delay=interval,
                      retry=(retries, tuple(intervals)) if retries else None)
    status = enqueue(queue, CLEANUP_BRANCH, job_id, kwargs=kwargs, options=options, description=description,
                     meta={"trigger": "recheck", "delivery": kwargs.get("delivery")})
    return status, job_id


def retire_id(project_id: int, branch: str) -> str:
    """The id of a branch's retention pass: one per branch, so a burst of pipelines makes one."""
    digest = hashlib.sha256(f"{int(project_id)}\n{branch}".encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"retire-{int(project_id)}-{digest}"


def schedule_retention(queue: Queue, *, project_id: int, branch: str, delay: int, retries: int,
                       intervals: Sequence[int], delivery: str | None = None,
                       description: str | None = None) -> tuple[str, str]:
    """Run a retention pass of `branch` `delay` seconds from now (RETIRE_DELAY), unless one is
    waiting already (queued or scheduled): at most one pending per branch, however many pipelines
    succeed meanwhile. A pass that is running may have read GitLab's pipelines before this one
    succeeded, so the next pass waits beside it under the branch's second id (`-next`). A
    finished or failed pass is history: it makes way. Returns (status, job id); DUPLICATE (and
    the pending pass's id) when one is waiting."""
    first = retire_id(project_id, branch)
    ids = (first, first + "-next")
    options = Options(result_ttl=RETIRE_RESULT_TTL, failure_ttl=RETIRE_FAILURE_TTL, delay=delay,
                      retry=(retries, tuple(intervals)) if retries else None)
    kwargs = {"project_id": int(project_id), "branch": branch, "delivery": delivery}
    meta = {"trigger": "superseded", "delivery": delivery}

    def count(pipe: Any, status: str) -> None:
        if status == ENQUEUED:
            pipe.hincrby(metrics.CLEANUPS_ENQUEUED.key, metrics.cleanup_series("superseded"), 1)

    jobs = {job_id: queue.fetch_job(job_id) for job_id in ids}
    states = {job_id: job.get_status(refresh=False) if job is not None else None for job_id, job in jobs.items()}
    for job_id, state in states.items():
        if state in WAITING:
            return DUPLICATE, job_id
    for job_id in ids:
        if states[job_id] == JobStatus.STARTED:
            continue
        if jobs[job_id] is not None:
            jobs[job_id].delete()  # the last pass under this id, done (two racing here make one)
        return enqueue(queue, RETIRE_BRANCH, job_id, kwargs=kwargs, options=options, description=description,
                       meta=meta, then=count), job_id
    return DUPLICATE, ids[1]  # both running: the second started after this pipeline's success


def enqueue(queue: Queue, func: str, job_id: str, *, kwargs: Mapping[str, Any], options: Options,
            description: str | None = None, meta: Mapping[str, Any] | None = None,
            then: Callable[[Any, str], None] | None = None) -> str:
    """Enqueue `func` (dotted name) as the job `job_id` unless that id is a job already.

    Returns ENQUEUED (queued, or scheduled when `options.delay` > 0) or DUPLICATE (nothing
    written). Raises redis.RedisError when the job could not be written: then nothing was.
    `then(pipe, status)` may add commands to the pipeline sent after the job is written; a
    Redis error there is logged, never raised, since the job stands either way.
    """
    job = queue.create_job(
        func, kwargs=dict(kwargs), job_id=job_id, timeout=options.timeout, result_ttl=options.result_ttl,
        failure_ttl=options.failure_ttl, description=description, meta=dict(meta) if meta else None,
        retry=Retry(max=options.retry[0], interval=list(options.retry[1])) if options.retry else None,
        status=JobStatus.SCHEDULED if options.delay > 0 else JobStatus.QUEUED)
    register = False
    try:
        if options.delay > 0:
            # RQ's own unique schedule: check, save, add to the scheduled registry, register the queue.
            queue.schedule_job(job, datetime.now(timezone.utc) + timedelta(seconds=options.delay), unique=True)
        else:
            # What queue.enqueue_job(job, unique=True) does, without the round trip it spends
            # first on registering the queue (SADD rq:queues): that goes in the pipeline below.
            job.enqueued_at = datetime.now(timezone.utc)
            save_unique_job(queue.connection, queue.key, job)
            register = True
        status = ENQUEUED
    except DuplicateJobError:
        status = DUPLICATE
    if register or then is not None:
        pipe = queue.connection.pipeline(transaction=False)
        if register:
            pipe.sadd(queue.redis_queues_keys, queue.key)  # lists the queue for rq-dashboard and `status`
        if then is not None:
            then(pipe, status)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("job enqueued, the writes after it failed", extra={
                "job_id": job_id, "error": type(exc).__name__})
    return status
