"""Where the example GitLab deliveries the tests (and the intake benchmark) post live, which event
each one is (`EVENTS`, `headers_for`), and Deployment Hook deliveries built from the emulator's
deployments (`deployment_hook`).

tests/payloads/headers.json holds the headers GitLab sends, for every event alike: a test sets
`X-Gitlab-Event` (and its token) itself; `EVENTS` says which event each example file is.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"

DEPLOYMENT_HOOK = "Deployment Hook"

# Example file -> the X-Gitlab-Event GitLab sends it with.
EVENTS = {
    "merge_request_merge.json": "Merge Request Hook",
    "merge_request_close.json": "Merge Request Hook",
    "push_branch_deleted.json": "Push Hook",
    "pipeline_main.json": "Pipeline Hook",
    "pipeline_merge_request.json": "Pipeline Hook",
    "deployment_running.json": DEPLOYMENT_HOOK,
    "deployment_success.json": DEPLOYMENT_HOOK,
    "deployment_failed.json": DEPLOYMENT_HOOK,
}


def load_payload(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text())


def headers_for(name: str, **overrides: str) -> dict:
    """GitLab's headers (tests/payloads/headers.json) with the X-Gitlab-Event of example `name`."""
    headers = json.loads((PAYLOADS / "headers.json").read_text())
    headers["X-Gitlab-Event"] = EVENTS[name]
    headers.update(overrides)
    return headers


# --- Deployment Hook deliveries from the emulator's deployments ------------------------------
# Gitlab::DataBuilder::Deployment.build(deployment, status, status_changed_at) (GitLab 17-18), sent
# by Deployments::HooksWorker after a deployment moves to running, success, failed or canceled
# (never for created, blocked or skipped). The documented payload ("Webhook events", Deployment
# events) has no `ref`; GitLab's code has sent `ref` (the deployment's ref) since 2022 all the same:
# `with_ref=False` builds the documented shape. No field carries the full SHA but `commit_url`.

def _status_changed_at(value: str) -> str:
    """`status_changed_at` as GitLab serializes it for the worker: "2026-11-20 10:15:42 UTC"."""
    t = dt.datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def _project_hook_attrs(project: Any, base: str) -> dict:
    """Project#hook_attrs."""
    host = base.split("://", 1)[-1]
    ns = project.namespace_path.rsplit("/", 1)[-1]
    ssh = f"git@{host}:{project.path}.git"
    return {
        "id": project.id, "name": project.name, "description": "", "web_url": f"{base}/{project.path}",
        "avatar_url": None, "git_ssh_url": ssh, "git_http_url": f"{base}/{project.path}.git", "namespace": ns,
        "visibility_level": 0, "path_with_namespace": project.path, "default_branch": project.default_branch,
        "ci_config_path": "", "homepage": f"{base}/{project.path}", "url": ssh, "ssh_url": ssh,
        "http_url": f"{base}/{project.path}.git",
    }


def deployment_hook_body(project: Any, deployment: Any, *, status: str | None = None, with_ref: bool = True) -> dict:
    """The body GitLab sends for `deployment` of `project` (emulator_state objects) when it moved to
    `status` (default: its current status); `status_changed_at` is when it did."""
    from tests.support.emulator_state import DEPLOYMENT_HOOK_STATUSES, _base_url

    status = status or deployment.status
    if status not in DEPLOYMENT_HOOK_STATUSES:
        raise ValueError(f"GitLab sends no Deployment Hook for status {status!r} (only {DEPLOYMENT_HOOK_STATUSES})")
    base = _base_url(project._emu)
    env = deployment.environment
    user = deployment.user
    body = {
        "object_kind": "deployment",
        "status": status,
        "status_changed_at": _status_changed_at(deployment.status_changed_at(status)),
        "deployment_id": deployment.id,
        "deployable_id": deployment.deployable_id,
        "deployable_url": (f"{base}/{project.path}/-/jobs/{deployment.deployable_id}"
                           if deployment.deployable_id is not None else None),
        "environment": env.name,
        "environment_tier": env.tier,
        "environment_slug": env.slug,
        "environment_external_url": env.external_url,
        "project": _project_hook_attrs(project, base),
        "short_sha": deployment.short_sha,
        "user": {"id": user["id"], "name": user["name"], "username": user["username"],
                 "avatar_url": user.get("avatar_url"), "email": "[REDACTED]"},
        "user_url": f"{base}/{user['username']}",
        "commit_url": f"{base}/{project.path}/-/commit/{deployment.sha}",
        "commit_title": f"Commit {deployment.short_sha}",  # what the emulator's commits API calls it
    }
    if with_ref:
        body["ref"] = deployment.ref
    return body


def deployment_hook(project: Any, deployment: Any, *, status: str | None = None, token: str | None = None,
                    with_ref: bool = True, event_uuid: str | None = None,
                    idempotency_key: str | None = None) -> tuple[dict, bytes]:
    """A Deployment Hook delivery as GitLab sends it: (headers, body bytes). Headers are
    tests/payloads/headers.json with X-Gitlab-Event "Deployment Hook", `X-Gitlab-Token` `token`
    (left out when None: a hook without a secret), X-Gitlab-Instance the emulator, and a fresh
    X-Gitlab-Event-UUID and Idempotency-Key unless given (a retry of one delivery keeps both)."""
    from tests.support.emulator_state import _base_url

    body = deployment_hook_body(project, deployment, status=status, with_ref=with_ref)
    headers = json.loads((PAYLOADS / "headers.json").read_text())
    headers["X-Gitlab-Event"] = DEPLOYMENT_HOOK
    headers["X-Gitlab-Instance"] = _base_url(project._emu)
    headers["X-Gitlab-Event-UUID"] = event_uuid or str(uuid.uuid4())
    headers["Idempotency-Key"] = idempotency_key or str(uuid.uuid4())
    if token is None:
        headers.pop("X-Gitlab-Token", None)
    else:
        headers["X-Gitlab-Token"] = token
    return headers, json.dumps(body).encode()
