"""The operator's view: rq-dashboard at /rq/, the audit trail at GET /audit and the activity page
(hooks/activity.py) at / and /activity, behind HTTP basic auth.

They exist only when DASHBOARD_USER and DASHBOARD_PASSWORD are set; otherwise /rq/, /audit and
the activity page answer 404 and a start-up line on the "tagsweeper.hooks" logger says how to turn
them on. rq-dashboard has no authentication of its own, so every request under /rq/ and
to /audit or the activity page passes `guard` first, before the dashboard opens a Redis connection. The
password is only ever compared (constant time, on digests): never logged, never sent.

rq-dashboard 0.9.0 with RQ 3.0 and Flask 3, and what is configured here instead of patched:

- its connection set-up no longer runs by itself (its before_app_first_request hook is
  commented out for Flask 3): `setup_rq_connection` is called here, else every page
  fails trying to connect to "r", the first letter of the URL;
- it connects again on every request, with no socket timeouts: the URL it gets carries
  `socket_timeout`/`socket_connect_timeout`, so a dead Redis cannot hang a gunicorn
  worker that also takes GitLab's deliveries;
- it prints the Redis URL masking only a `user:password@` part: it gets the URL without
  any password (a `?password=` one included) and the password as RQ_DASHBOARD_REDIS_PASSWORD;
- `GET /rq/requeue/<queue>` requeues every failed job on a plain GET, and basic auth is
  sent by the browser to any page asking: state changes must be POSTs from the dashboard
  itself (Sec-Fetch-Site), so a link or form on another site cannot requeue or delete;
- its "Jobs" tab opens RQ's "default" queue: it is sent to our queue's failed jobs;
- it shows a failed job's whole traceback, whatever the exception said: `scrub` blanks
  the known secrets (and, in JSON, anything shaped like a token) out of every answer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
from datetime import datetime, timezone
from typing import Any, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from flask import Flask, current_app, jsonify, redirect, request, url_for

from hooks import activity
from hooks.intake import get_intake
from hooks.logs import LOGGER_NAME
from workers.common.projects import parse_project

log = logging.getLogger(LOGGER_NAME)

PREFIX = "/rq"
AUDIT_PATH = "/audit"
REALM = "tagsweeper"
DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 1000
# Dashboard pages list jobs and registries: more than the intake's 2 s, still far below gunicorn's 30 s.
DASHBOARD_SOCKET_TIMEOUT = 5
DASHBOARD_CONNECT_TIMEOUT = 2
MAX_SINCE = 253402300799  # 9999-12-31T23:59:59Z; Redis stream ids cannot go much further
# Shorter secrets are not blanked out of pages: "***" for every "abc" would break them.
MIN_SCRUBBED_LENGTH = 8
SECRETS_KEY = "tagsweeper.dashboard.secrets"

_OFF_HINT = ("set DASHBOARD_USER and DASHBOARD_PASSWORD to serve rq-dashboard at /rq/, the audit trail at /audit "
             "and the activity page at /")
_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def init_app(app: Flask) -> None:
    """Mount rq-dashboard and /audit when both credentials are set; say so either way."""
    user, password = app.config.get("DASHBOARD_USER"), app.config.get("DASHBOARD_PASSWORD")
    if not (user and password):
        missing = [name for name, value in (("DASHBOARD_USER", user), ("DASHBOARD_PASSWORD", password))
                   if not value]
        # One of two set is a half-done configuration: worth a warning, not a refusal to take webhooks.
        level = logging.WARNING if len(missing) == 1 else logging.INFO
        log.log(level, f"dashboard off: {_OFF_HINT}", extra={"dashboard": "off", "missing": ",".join(missing)})
        return
    if ":" in user:
        raise RuntimeError("DASHBOARD_USER must not contain ':' (HTTP basic auth cannot carry it)")

    import rq_dashboard
    from rq_dashboard.web import setup_rq_connection

    url, redis_password = dashboard_redis_url(app.config["REDIS_URL"])
    app.config["RQ_DASHBOARD_REDIS_URL"] = url
    app.config["RQ_DASHBOARD_REDIS_PASSWORD"] = redis_password
    app.config["RQ_DASHBOARD_POLL_INTERVAL"] = 5000  # each poll is a new Redis connection (see above)
    app.register_blueprint(rq_dashboard.blueprint, url_prefix=PREFIX)
    setup_rq_connection(app)  # builds the client only: start-up needs no Redis
    app.add_url_rule(AUDIT_PATH, "audit", audit, methods=["GET"])
    activity.init_app(app)  # the activity page at / and /activity, for people
    secrets = [password, redis_password or "", *app.config["WEBHOOK_SECRETS"], app.config["GITLAB_TOKEN"]]
    app.extensions[SECRETS_KEY] = tuple(sorted({s.encode("utf-8") for s in secrets if len(s) >= MIN_SCRUBBED_LENGTH},
                                               key=len, reverse=True))
    app.before_request(guard)
    app.after_request(scrub)
    log.info("dashboard on at /rq/ and /audit, activity page at / (HTTP basic auth)", extra={"dashboard": "on"})


def dashboard_redis_url(url: str) -> tuple[str, str | None]:
    """REDIS_URL without its password (returned apart) and with socket timeouts, for rq-dashboard."""
    parts = urlsplit(url)
    netloc, password = parts.netloc, None
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, _, secret = userinfo.partition(":")
        password = unquote(secret) or None
        netloc = f"{user}@{host}" if user else host
    # The other query items stay byte for byte; a password there counts unless the userinfo has one (as in redis-py).
    kept = []
    for item in filter(None, parts.query.split("&")):
        pairs = parse_qsl(item, keep_blank_values=True)
        if pairs and pairs[0][0] == "password":
            password = password or pairs[0][1] or None
            continue
        kept.append(item)
    names = {pair[0] for item in kept for pair in parse_qsl(item, keep_blank_values=True)}
    for name, seconds in (("socket_timeout", DASHBOARD_SOCKET_TIMEOUT),
                          ("socket_connect_timeout", DASHBOARD_CONNECT_TIMEOUT)):
        if name not in names:
            kept.append(f"{name}={seconds}")
    clean = f"{parts.scheme}://{netloc}{parts.path}?{'&'.join(kept)}"
    return clean + (f"#{parts.fragment}" if parts.fragment else ""), password


# --- the gate -------------------------------------------------------------------------


def guarded(path: str) -> bool:
    return path == AUDIT_PATH or path == PREFIX or path.startswith(PREFIX + "/") or activity.guarded(path)


def guard():
    """Before any view: log in, then refuse cross-site or GET state changes, then steer "Jobs"."""
    if not guarded(request.path):
        return None
    if not logged_in():
        if request.authorization is not None:
            # Neither the name nor the password typed is logged: either may be the password.
            log.warning("dashboard login refused", extra={"path": request.path, "remote_addr": request.remote_addr})
        response = jsonify({"error": "dashboard login required: give DASHBOARD_USER and DASHBOARD_PASSWORD "
                                     "with HTTP basic auth"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
        return response
    if request.method in _STATE_CHANGING and request.headers.get("Sec-Fetch-Site", "same-origin") not in (
            "same-origin", "none"):
        return _error(403, "dashboard actions are accepted from the dashboard's own pages only")
    if request.endpoint == "rq_dashboard.requeue_all" and request.method != "POST":
        response = _error(405, "requeueing every failed job takes a POST")
        response.headers["Allow"] = "POST"
        return response
    if request.endpoint == "rq_dashboard.jobs_overview" and (request.view_args or {}).get("queue_name") is None:
        return redirect(url_for("rq_dashboard.jobs_overview", instance_number=request.view_args["instance_number"],
                                queue_name=current_app.config["RQ_QUEUE"], registry_name="failed",
                                per_page=8, order="asc", page=1))
    return None


def logged_in() -> bool:
    """The basic-auth credentials match, compared in constant time (digests: lengths leak nothing)."""
    auth = request.authorization
    given_user = given_password = ""
    if auth is not None and auth.type == "basic":
        given_user, given_password = auth.username or "", auth.password or ""
    user_ok = hmac.compare_digest(_digest(given_user), _digest(current_app.config["DASHBOARD_USER"]))
    password_ok = hmac.compare_digest(_digest(given_password), _digest(current_app.config["DASHBOARD_PASSWORD"]))
    return auth is not None and user_ok & password_ok


def scrub(response):
    """Blank known secrets out of every dashboard answer, and token-shaped text out of its JSON."""
    if not guarded(request.path) or response.direct_passthrough or response.is_streamed:
        return response  # static files: the package's own
    data = response.get_data()
    for secret in current_app.extensions[SECRETS_KEY]:
        data = data.replace(secret, b"***")
    if response.mimetype == "application/json":
        try:
            from workers.common.audit import scrub as scrub_text  # the same patterns as the audit trail's
        except ModuleNotFoundError as exc:
            if exc.name != "workers.common.audit":
                raise
        else:
            data = scrub_text(data.decode("utf-8")).encode("utf-8")
    response.set_data(data)
    return response


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _error(status: int, message: str):
    response = jsonify({"error": message})
    response.status_code = status
    return response


# --- GET /audit -----------------------------------------------------------------------


def audit():
    """The audit trail, newest first: ?project=<id or path>&since=<unix seconds or ISO 8601>&limit=1..1000."""
    try:
        query = audit_query(request.args)
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        from workers.common import audit as trail  # lazily: the web process only needs it here
    except ModuleNotFoundError as exc:
        if exc.name != "workers.common.audit":
            raise
        return _error(503, "the audit trail is not available in this version of tagsweeper")
    intake = get_intake()
    try:
        entries = trail.read(intake.connection, **query)
    except redis.RedisError as exc:
        return _error(503, intake.describe_error(exc))
    return jsonify({"entries": entries, "count": len(entries)})


def audit_query(args: Mapping[str, str]) -> dict[str, Any]:
    """`workers.common.audit.read`'s keyword arguments from the query string; ValueError says what is wrong."""
    return {"project": _project(args.get("project")), "since": _since(args.get("since")),
            "limit": _limit(args.get("limit"))}


def _project(raw: str | None) -> int | str | None:
    if raw is None:
        return None
    try:
        value = parse_project(raw)
    except ValueError:
        value = ""
    if isinstance(value, str) and (not re.fullmatch(r"[\w.-]+(/[\w.-]+)*", value) or len(value) > 255):
        raise ValueError("project must be a numeric project id or a path like group/project")
    return value


def _since(raw: str | None) -> float | None:
    if raw is None:
        return None
    value = raw.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("since must be unix seconds or an ISO 8601 time like 2024-05-01T12:00:00Z") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)  # a time without zone is UTC, like the logs
        seconds = moment.timestamp()
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_SINCE:
        raise ValueError("since must be unix seconds or an ISO 8601 time like 2024-05-01T12:00:00Z")
    return seconds


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_AUDIT_LIMIT
    value = raw.strip()
    if not (value.isdigit() and value.isascii()) or not 1 <= int(value) <= MAX_AUDIT_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_AUDIT_LIMIT}")
    return int(value)
