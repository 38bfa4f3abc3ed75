"""GET /metrics: the service's Prometheus metrics, read from Redis at scrape time.

Every process (each gunicorn worker, the RQ workers) writes its counts to Redis
(workers/common/metrics.py), so whichever gunicorn worker answers a scrape shows the same totals.
Besides those, `tagsweeper_workers` counts the RQ workers alive on the queue, for the alert
rules' "no worker alive" (contrib/prometheus/tagsweeper-rules.yml).
"""

from __future__ import annotations

import redis
from flask import Blueprint, Flask, Response, jsonify
from rq.worker_registration import WORKERS_BY_QUEUE_KEY

from hooks.intake import get_intake
from workers.common import metrics

bp = Blueprint("metrics", __name__)

WORKERS = metrics.Family("workers", "gauge", "RQ workers alive on the queue (their heartbeat key exists), "
                                             "read at scrape time.", ("queue",))


@bp.get("/metrics")
def scrape():
    intake = get_intake()
    try:
        text = metrics.render(intake.connection, intake.queue_name)
        alive = workers_alive(intake.connection, intake.queue_name)
    except redis.RedisError as exc:
        return jsonify({"error": intake.describe_error(exc)}), 503
    text += (f"# HELP {metrics.PREFIX}{WORKERS.name} {WORKERS.help}\n# TYPE {metrics.PREFIX}{WORKERS.name} gauge\n"
             f'{metrics.PREFIX}{WORKERS.name}{{queue="{metrics.escape(intake.queue_name)}"}} {alive}\n')
    return Response(text, content_type=metrics.CONTENT_TYPE)


def workers_alive(conn: redis.Redis, queue: str) -> int:
    """Workers registered on the queue whose key still exists. A worker that exits cleanly leaves the
    set; one killed leaves its name there, but its key expires with its last heartbeat."""
    names = conn.smembers(WORKERS_BY_QUEUE_KEY % queue)
    if not names:
        return 0
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.exists(name)
    return sum(1 for alive in pipe.execute() if alive)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
