"""The reference endpoints the intake benchmark compares tagsweeper's POST /hooks/gitlab with.

Each is served by gunicorn with the same settings as tagsweeper (`bench.intake_apps:create_app('bare')`):

- bare:      read the body, parse the JSON, answer 202. No Redis.
- pipelined: bare, plus one pipelined Redis write (SET NX of a job key + RPUSH onto a list): the
             least any queue-backed intake can do (one round trip).
- naive:     bare, plus RQ's plain `Queue.enqueue` of the cleanup job per delivery (random job id,
             no dedupe).
"""

from __future__ import annotations

import json
import os
import uuid

import redis
from flask import Flask, jsonify, request
from rq import Queue


def create_app(kind: str = "bare") -> Flask:
    app = Flask(__name__)
    url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    conn = redis.Redis.from_url(url) if kind != "bare" else None
    queue = Queue(os.environ.get("RQ_QUEUE", "tagsweeper"), connection=conn) if kind == "naive" else None

    @app.post("/hooks/gitlab")
    def receive():
        body = json.loads(request.get_data())
        attrs = body.get("object_attributes") or {}
        project = (body.get("project") or {}).get("id")
        job_id = f"cleanup-{project}-merge-{attrs.get('iid')}"
        if kind == "pipelined":
            pipe = conn.pipeline(transaction=False)
            pipe.set(f"bench:job:{job_id}", request.headers.get("Idempotency-Key", ""), nx=True, ex=3600)
            pipe.rpush("bench:queue", job_id)
            pipe.execute()
        elif kind == "naive":
            job = queue.enqueue("workers.jobs.cleanup_branch", kwargs={
                "project_id": project, "branch": attrs.get("source_branch"), "trigger": "merge",
                "mr_iid": attrs.get("iid"), "delivery": request.headers.get("Idempotency-Key")})
            job_id = job.id
        return jsonify({"status": "enqueued", "job_id": job_id or str(uuid.uuid4())}), 202

    return app
