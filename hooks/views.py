"""HTTP endpoints: POST /hooks/gitlab, GET /healthz, GET /readyz; every answer is JSON.

The view only moves bytes: it reads the body within the size limit, hands headers and
body to `events.parse_delivery`, and gives the decision to the intake. It answers in
milliseconds (one Redis write at most) and never calls GitLab.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from hooks import events
from hooks.intake import QueueUnavailable, get_intake
from hooks.logs import log_delivery

bp = Blueprint("hooks", __name__)

READ_CHUNK = 64 * 1024


def error(status: int, message: str):
    return jsonify({"error": message}), status


@bp.post("/hooks/gitlab")
def receive_gitlab():
    started = time.monotonic()
    event = (request.headers.get("X-Gitlab-Event") or "").strip() or None
    delivery = (request.headers.get("Idempotency-Key") or "").strip() or None
    context: dict[str, Any] = {"event": event, "delivery": delivery}

    def answer(status: int, body: dict[str, Any], outcome: str, **fields: Any):
        duration_ms = round((time.monotonic() - started) * 1000, 1)
        log_delivery(**{"outcome": outcome, "status": status, **context, **fields, "duration_ms": duration_ms})
        return jsonify(body), status

    limit = current_app.config["MAX_BODY_BYTES"]
    try:
        body = read_body(limit)
        decision = events.parse_delivery(
            request.headers, body, current_app.config["WEBHOOK_SECRETS"], max_body_bytes=limit
        )
    except events.DeliveryError as exc:
        outcome = {401: "unauthorized", 413: "too_large"}.get(exc.status, "bad_request")
        return answer(exc.status, {"error": exc.message}, outcome, error=exc.message)

    if isinstance(decision, events.Ignore):
        return answer(200, {"status": "ignored", "reason": decision.reason}, "ignored",
                      reason=decision.reason, **decision.log_fields())

    context.update(decision.log_fields())
    context["action"] = decision.name
    try:
        receipt = get_intake().submit(decision)
    except QueueUnavailable as exc:
        return answer(503, {"error": str(exc)}, "unavailable", job_id=decision.job_id(), error=str(exc))
    if receipt.status == "duplicate":
        return answer(200, {"status": "duplicate", "job_id": receipt.job_id}, "duplicate",
                      job_id=receipt.job_id)
    return answer(202, {"status": "enqueued", "job_id": receipt.job_id, "action": decision.name},
                  "enqueued", job_id=receipt.job_id)


def read_body(limit: int) -> bytes:
    """At most `limit` bytes of body, else TooLarge; bounds chunked bodies without Content-Length too."""
    too_large = events.TooLarge(events.too_large_message(limit))
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        stream = request.stream  # Werkzeug also caps it at MAX_CONTENT_LENGTH
        while size <= limit:
            chunk = stream.read(min(READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except RequestEntityTooLarge:
        raise too_large from None
    if size > limit:
        raise too_large
    return b"".join(chunks)


@bp.get("/healthz")
def healthz():
    """The process is up (no Redis: a Redis outage must not get the web process restarted)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    try:
        get_intake().ping()
    except QueueUnavailable as exc:
        return error(503, str(exc))
    return jsonify({"status": "ready"})


def json_http_error(exc: HTTPException):
    """404, 405, 413 from Werkzeug, and 500 for unhandled errors, as {"error": ...}."""
    if isinstance(exc, RequestEntityTooLarge):
        message = events.too_large_message(current_app.config["MAX_BODY_BYTES"])
    else:
        message = f"{exc.name}: {exc.description}" if exc.description else exc.name
    return error(exc.code or 500, message)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, json_http_error)
