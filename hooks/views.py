"""HTTP endpoints: POST /hooks/gitlab, GET /healthz, GET /readyz; every answer is JSON.

The view only moves bytes: it reads the body within the size limit, hands headers and
body to `events.parse_delivery`, and gives the decision to the intake. It answers in
milliseconds (two Redis round trips: RQ's unique enqueue of the job, then the delivery's
counter for /metrics; an ignored or refused delivery is one round trip for that counter)
and never calls GitLab.

With WEBHOOK_SIGNING_KEY set, a delivery whose signature checked out also claims its
`webhook-id` in Redis (SET NX EX, for as long as its timestamp is acceptable): the same
id again is a replay and answers 409, whatever else it carries.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from hooks import events, signing
from hooks.intake import QueueUnavailable, get_intake
from hooks.logs import log_delivery
from workers.common import keys
from workers.common.metrics import count_delivery

bp = Blueprint("hooks", __name__)

READ_CHUNK = 64 * 1024

# A signed delivery is accepted while its timestamp is within TOLERANCE either side of now,
# so the same signed bytes stay acceptable for at most twice that: remember ids that long.
REPLAY_WINDOW = 2 * signing.TOLERANCE
REPLAYED = ("webhook-id was already received: a replayed delivery is refused "
            f"(ids are remembered for {REPLAY_WINDOW} seconds)")


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
        # The intake counted an accepted or duplicate delivery right after its enqueue;
        # after "unavailable", Redis just failed this request: don't wait on it a second time.
        if outcome not in ("enqueued", "duplicate", "unavailable"):
            count_delivery(get_intake().connection, event=event, outcome=outcome)
        return jsonify(body), status

    limit = current_app.config["MAX_BODY_BYTES"]
    try:
        body = read_body(limit)
        decision = events.parse_delivery(
            request.headers, body, current_app.config["WEBHOOK_SECRETS"], max_body_bytes=limit,
            signing_keys=current_app.config["WEBHOOK_SIGNING_KEYS"], now=time.time(),
            allowed=current_app.config["ALLOWED_PROJECTS"],
        )
    except events.DeliveryError as exc:
        outcome = {401: "unauthorized", 413: "too_large"}.get(exc.status, "bad_request")
        return answer(exc.status, {"error": exc.message}, outcome, error=exc.message)

    replay_key = None
    if current_app.config["WEBHOOK_SIGNING_KEYS"]:
        # parse_delivery verified the signature, which covers webhook-id: only real ids get here.
        replay_key = keys.webhook_id(request.headers.get("webhook-id", ""))
        try:
            first_time = claim_once(replay_key, REPLAY_WINDOW)
        except QueueUnavailable as exc:
            return answer(503, {"error": str(exc)}, "unavailable", error=str(exc))
        if not first_time:
            return answer(409, {"error": REPLAYED}, "replayed", error=REPLAYED)

    if isinstance(decision, events.Ignore):
        return answer(200, {"status": "ignored", "reason": decision.reason}, "ignored",
                      reason=decision.reason, **decision.log_fields())

    context.update(decision.log_fields())
    context["action"] = decision.name
    try:
        receipt = get_intake().submit(decision, event)
    except QueueUnavailable as exc:
        if replay_key:  # not processed: let GitLab's re-send of this id through
            release(replay_key)
        return answer(503, {"error": str(exc)}, "unavailable", job_id=decision.job_id(), error=str(exc))
    if receipt.status == "duplicate":
        return answer(200, {"status": "duplicate", "job_id": receipt.job_id}, "duplicate",
                      job_id=receipt.job_id)
    return answer(202, {"status": "enqueued", "job_id": receipt.job_id, "action": decision.name},
                  "enqueued", job_id=receipt.job_id)


def claim_once(key: str, ttl: int) -> bool:
    """True the first time `key` is claimed within `ttl` seconds (atomic SET NX EX)."""
    intake = get_intake()
    try:
        return bool(intake.connection.set(key, b"1", nx=True, ex=ttl))
    except redis.RedisError as exc:
        raise QueueUnavailable(intake.describe_error(exc)) from None


def release(key: str) -> None:
    try:
        get_intake().connection.delete(key)
    except redis.RedisError:
        pass  # Redis is down already: the claim expires by itself


def read_body(limit: int) -> bytes:
    """At most `limit` bytes of body, else TooLarge; bounds chunked bodies without Content-Length too."""
    too_large = events.TooLarge(events.too_large_message(limit))
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        stream = request.stream  # Werkzeug also caps it at MAX_CONTENT_LENGTH
        if request.environ.get("wsgi.input_terminated"):
            # The server ends the stream (gunicorn always does). Werkzeug's capped stream refuses
            # the read *at* the limit even when the body ends there: a body of exactly
            # MAX_BODY_BYTES got 413. This loop bounds the read itself.
            stream = request.environ["wsgi.input"]
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
