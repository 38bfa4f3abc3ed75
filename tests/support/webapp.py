"""The hooks app in-process, as the tests of the web side drive it: `make_app`, `post`, `headers`.

`make_app(redis_url, **overrides)` is `hooks.create_app` with the test secrets (`SECRET` and the
rotated `SECOND_SECRET`), the given Redis and a 60 s CLEANUP_DELAY; `post(client, name, event)`
sends the example delivery tests/payloads/<name> with GitLab's headers (`headers`, `body_of`).
`keyspace(conn)` snapshots Redis, so a test can show that an answer wrote nothing.
`dashboard_app(redis_url, **overrides)` is the app with the dashboard on (`DASHBOARD_USER`,
`DASHBOARD_PASSWORD`), and `basic()` the Authorization header that opens it.
"""

from __future__ import annotations

import base64
import json

import redis

from hooks import create_app
from tests.support.payloads import PAYLOADS

SECRET = "s3cret-token-for-tests"
SECOND_SECRET = "second-s3cret"
DASHBOARD_USER = "operator"
DASHBOARD_PASSWORD = "dash-Pa55word-never-shown"
DASHBOARD_SECRET = "webhook-secret-for-dashboard-tests"


def body_of(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def headers(event: str = "Merge Request Hook", **extra: str) -> dict:
    h = json.loads((PAYLOADS / "headers.json").read_text())
    h["X-Gitlab-Event"] = event
    h["X-Gitlab-Token"] = SECRET
    h.update(extra)
    return h


def make_app(redis_url: str, **overrides):
    config = {
        "TESTING": True,
        "WEBHOOK_SECRET": f"{SECRET}, {SECOND_SECRET}",
        "REDIS_URL": redis_url,
        "CLEANUP_DELAY": 60,
    }
    config.update(overrides)
    return create_app(config)


def dashboard_app(redis_url: str, **overrides):
    """The app with the dashboard (and activity page) on; an override of None leaves a setting out."""
    config = {"TESTING": True, "WEBHOOK_SECRET": DASHBOARD_SECRET, "REDIS_URL": redis_url,
              "DASHBOARD_USER": DASHBOARD_USER, "DASHBOARD_PASSWORD": DASHBOARD_PASSWORD}
    config.update(overrides)
    return create_app({k: v for k, v in config.items() if v is not None})


def basic(user: str = DASHBOARD_USER, password: str = DASHBOARD_PASSWORD) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def keyspace(conn: redis.Redis) -> dict:
    """Every key with its serialized value: equal snapshots mean nothing was written.

    The /metrics counters (tagsweeper:metrics:*) are left out: every answer counts itself.
    """
    return {key: conn.dump(key) for key in conn.keys("*") if not key.startswith(b"tagsweeper:metrics:")}


def post(client, name: str, event: str = "Merge Request Hook", **hdrs):
    return client.post("/hooks/gitlab", data=body_of(name), headers=headers(event, **hdrs))
