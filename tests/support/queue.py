"""What a queue holds, for tests: the jobs waiting in RQ, as the web side left them."""

from __future__ import annotations

import redis
from rq import Queue
from rq.job import Job
from rq.registry import ScheduledJobRegistry


def job_ids(conn: redis.Redis, queue: str = "tagsweeper") -> list[str]:
    """The ids of the queue's waiting jobs, queued and scheduled, oldest first (by creation)."""
    q = Queue(queue, connection=conn)
    ids = q.get_job_ids() + ScheduledJobRegistry(queue=q).get_job_ids(cleanup=False)
    # Scheduled jobs of the same second are ordered by id in RQ's registry: order by creation instead.
    jobs = [job for job in Job.fetch_many(ids, connection=conn) if job is not None]
    return [job.id for job in sorted(jobs, key=lambda job: job.created_at)]
