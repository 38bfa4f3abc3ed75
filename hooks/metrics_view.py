"""GET /metrics: the service's Prometheus metrics, read from Redis at scrape time.

Every process (each gunicorn worker, the RQ workers) writes its counts to Redis
(workers/common/metrics.py), so whichever gunicorn worker answers a scrape shows the same totals.
"""

from __future__ import annotations

import redis
from flask import Blueprint, Flask, Response, jsonify

from hooks.intake import get_intake
from workers.common import metrics

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    intake = get_intake()
    try:
        text = metrics.render(intake.connection, intake.queue_name)
    except redis.RedisError as exc:
        return jsonify({"error": intake.describe_error(exc)}), 503
    return Response(text, content_type=metrics.CONTENT_TYPE)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
