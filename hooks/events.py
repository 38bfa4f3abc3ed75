"""GitLab webhook deliveries turned into decisions: sans-I/O, no Flask, no Redis.

`parse_delivery(headers, body, secrets)` checks one delivery (size, token, signature
when signing keys are given, JSON depth and syntax, event, allowed project) and returns
what it asks for: a `Cleanup`, a `RecordPipeline`, a `RecordDeployment` or an `Ignore`. Anything
wrong raises a `DeliveryError` whose `status` and `message` are safe to send back: no
message ever quotes the token or a value from the body beyond short, harmless labels.
Only plain values leave this module; the worker looks again at GitLab before acting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping, Union

from hooks import signing
from workers.common.allowlist import AllowList
from workers.common.queue import CLEANUP_BRANCH, RECORD_DEPLOYMENT, RECORD_PIPELINE

ZERO_SHA = "0" * 40
BRANCH_PREFIX = "refs/heads/"
MAX_NAME_LENGTH = 255
MAX_JSON_DEPTH = 64  # GitLab's payloads nest about 5 deep; the bound keeps parsing flat and cheap

_SHA_RE = re.compile(r"[0-9a-fA-F]{40}")

# X-Gitlab-Event -> the object_kind its body must carry (for the cross-check).
OBJECT_KINDS = {
    "Push Hook": "push",
    "Tag Push Hook": "tag_push",
    "Merge Request Hook": "merge_request",
    "Pipeline Hook": "pipeline",
    "Issue Hook": "issue",
    "Confidential Issue Hook": "issue",
    "Note Hook": "note",
    "Confidential Note Hook": "note",
    "Job Hook": "build",
    "Wiki Page Hook": "wiki_page",
    "Deployment Hook": "deployment",
    "Release Hook": "release",
    "Feature Flag Hook": "feature_flag",
}


# --- errors -------------------------------------------------------------------------


class DeliveryError(Exception):
    """A delivery that is refused; `status` is the HTTP answer, `message` says what to fix."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(DeliveryError):
    status = 400


class Unauthorized(DeliveryError):
    status = 401


class TooLarge(DeliveryError):
    status = 413


# --- decisions ----------------------------------------------------------------------


def _digest(*parts: Any) -> str:
    """First 20 hex of sha256 over a canonical JSON list: stable across processes and versions."""
    canonical = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]


def _job_kwargs(decision: Any) -> dict[str, Any]:
    """A hint's job arguments: its fields, every one of them plain and JSON-able."""
    return {f.name: getattr(decision, f.name) for f in fields(decision)}


@dataclass(frozen=True)
class Cleanup:
    """Delete a branch's image tags (job `workers.jobs.cleanup_branch`)."""

    project_id: int
    branch: str
    trigger: str  # "merge" or "branch_deleted"
    project_path: str | None = None
    target_project_id: int | None = None
    target_branch: str | None = None
    mr_iid: int | None = None
    default_branch: str | None = None
    shas: tuple[str, ...] = ()
    delivery: str | None = None

    name = "cleanup_branch"
    func = CLEANUP_BRANCH

    def job_kwargs(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "branch": self.branch,
            "trigger": self.trigger,
            "project_path": self.project_path,
            "target_project_id": self.target_project_id,
            "target_branch": self.target_branch,
            "mr_iid": self.mr_iid,
            "default_branch": self.default_branch,
            "shas": list(self.shas),
            "delivery": self.delivery,
        }

    def job_id(self) -> str:
        # Not the delivery key: a project hook and a group hook send the same event with
        # different keys. The MR iid (merge) or the deleted tip (branch_deleted) tells a
        # branch re-created and cleaned again apart from a re-sent delivery.
        if self.trigger == "merge":
            discriminator: Any = self.mr_iid
        else:
            discriminator = self.shas[0] if self.shas else ""
        h = _digest(self.project_id, self.branch, self.trigger, discriminator)
        return f"cleanup-{self.project_id}-{self.trigger}-{h}"

    def describe(self) -> str:
        where = self.project_path or f"project {self.project_id}"
        if self.trigger == "merge":
            why = f"after merge !{self.mr_iid}"
        else:
            why = "after branch deletion"
        return f"cleanup {where} branch {self.branch} {why}"

    def log_fields(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "branch": self.branch, "trigger": self.trigger}


@dataclass(frozen=True)
class RecordPipeline:
    """Remember which sha a pipeline built on which ref (job `workers.jobs.record_pipeline`)."""

    project_id: int
    ref: str
    sha: str
    tag: bool = False
    pipeline_id: int | None = None
    delivery: str | None = None
    status: str | None = None  # object_attributes.status; a success may schedule a retention pass

    name = "record_pipeline"
    func = RECORD_PIPELINE
    trigger = "pipeline"

    def job_kwargs(self) -> dict[str, Any]:
        return _job_kwargs(self)

    def job_id(self) -> str:
        # One pipeline fires a hook per status change: all of them map to one job, but for its
        # success, which has a job of its own (it may schedule the branch's retention pass).
        h = _digest(self.project_id, self.ref, self.sha, self.tag)
        return f"pipeline-{self.project_id}-{h}" + ("-success" if self.status == "success" else "")

    def describe(self) -> str:
        kind = "tag" if self.tag else "ref"
        number = f" {self.pipeline_id}" if self.pipeline_id is not None else ""
        return f"record pipeline{number} of project {self.project_id} {kind} {self.ref} at {self.sha[:8]}"

    def log_fields(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "branch": None if self.tag else self.ref}


@dataclass(frozen=True)
class RecordDeployment:
    """Remember that a deployment to `environment` succeeded with `sha` (job `workers.jobs.record_deployment`).

    A hint: GitLab's deployments API decides at cleanup time; this can only add protection
    for the moments before the API lists the deployment."""

    project_id: int
    deployment_id: int
    environment: str
    sha: str
    status: str
    delivery: str | None = None

    name = "record_deployment"
    func = RECORD_DEPLOYMENT
    trigger = "deployment"

    def job_kwargs(self) -> dict[str, Any]:
        return _job_kwargs(self)

    def job_id(self) -> str:
        # A re-sent delivery, or a project and a group hook for the same change: one job.
        return f"deployment-{self.project_id}-{self.deployment_id}-{self.status}"

    def describe(self) -> str:
        return (f"record deployment {self.deployment_id} of project {self.project_id} to "
                f"{self.environment} at {self.sha[:8]} ({self.status})")

    def log_fields(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "environment": self.environment}


@dataclass(frozen=True)
class Ignore:
    """An authentic, well-formed delivery that needs nothing."""

    reason: str
    fields: Mapping[str, Any] = field(default_factory=dict, compare=False)

    name = "ignore"

    def log_fields(self) -> dict[str, Any]:
        return dict(self.fields)


Decision = Union[Cleanup, RecordPipeline, RecordDeployment, Ignore]


# --- the delivery -------------------------------------------------------------------


def parse_delivery(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Iterable[str],
    max_body_bytes: int | None = None,
    *,
    signing_keys: Iterable[bytes] = (),
    now: float | None = None,
    allowed: AllowList | None = None,
) -> Decision:
    """Check one delivery in the order size, token, signature, JSON, event, project; return its decision.

    With `signing_keys`, the Standard Webhooks signature is required as well as the token,
    checked against the raw body at time `now` (Unix seconds) before the body is parsed.
    With `allowed`, a delivery for a project outside it is an Ignore, never an error.
    """
    lowered = lower_headers(headers)
    if max_body_bytes is not None and len(body) > max_body_bytes:
        raise TooLarge(too_large_message(max_body_bytes))
    verify_token(lowered.get("x-gitlab-token"), secrets)
    signing_keys = tuple(signing_keys)
    if signing_keys:
        if now is None:
            raise ValueError("now is required to check a signature's timestamp")
        try:
            signing.verify(lowered, body, signing_keys, now)
        except signing.SignatureError as exc:
            raise Unauthorized(exc.message) from None
    payload = decode_body(body)
    event = (lowered.get("x-gitlab-event") or "").strip()
    if not event:
        raise BadRequest("X-Gitlab-Event header is missing: this endpoint takes GitLab webhook deliveries")
    delivery = (lowered.get("idempotency-key") or "").strip() or None
    decision = interpret(event, payload, delivery)
    if allowed is not None and allowed.restricts:
        decision = check_allowed(decision, payload, allowed)
    return decision


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Header names lower-cased, so a plain dict works like Werkzeug's case-insensitive Headers."""
    return {str(k).lower(): v for k, v in headers.items()}


def too_large_message(limit: int) -> str:
    return f"body is larger than the limit of {limit} bytes (MAX_BODY_BYTES)"


def verify_token(token: str | None, secrets: Iterable[str]) -> None:
    """Accept the delivery only if X-Gitlab-Token equals one of the secrets (constant time)."""
    secrets = [s for s in secrets if s]
    if not token or not secrets:
        raise Unauthorized(_TOKEN_MESSAGE)
    forms = _token_forms(token)
    matched = False
    # Compare against every secret and form (no early exit): timing says nothing about which.
    for secret in secrets:
        expected = secret.encode("utf-8")
        for form in forms:
            matched |= hmac.compare_digest(form, expected)
    if not matched:
        raise Unauthorized(_TOKEN_MESSAGE)


_TOKEN_MESSAGE = (
    "missing or wrong X-Gitlab-Token header: set the webhook's secret token in GitLab "
    "to the value configured in WEBHOOK_SECRET"
)


def _token_forms(token: str) -> list[bytes]:
    """The token as bytes; WSGI hands header bytes over as latin-1 text (PEP 3333), so try both."""
    forms = [token.encode("utf-8", "surrogatepass")]
    try:
        raw = token.encode("latin-1")
    except UnicodeEncodeError:
        return forms
    if raw != forms[0]:
        forms.append(raw)
    return forms


def decode_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or BadRequest saying what is wrong with it."""
    if not body:
        raise BadRequest("body is empty: expected a JSON object")
    if json_too_deep(body, MAX_JSON_DEPTH):
        raise BadRequest(f"body is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8: expected a JSON object encoded as UTF-8") from None
    try:
        payload = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError's message names a position, never the content.
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else "invalid number or constant"
        raise BadRequest(f"body is not valid JSON: {detail}") from None
    if not isinstance(payload, dict):
        raise BadRequest(f"body must be a JSON object, got {_json_type(payload)}")
    return payload


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


# A JSON string, escapes included (unrolled, so a 1 MiB string is one linear scan).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_too_deep(body: bytes, limit: int) -> bool:
    """True when arrays/objects nest deeper than `limit`; a loop, never recursion.

    Checked before json.loads: its parser recurses once per level, so a body of
    `[[[[...` would otherwise cost a RecursionError deep in the C stack to refuse.
    Strings are cut out first, so brackets inside them do not count.
    """
    # Nesting is at most the number of openers, strings' included: most bodies end here,
    # before the (costlier) cut of the strings.
    brackets = body.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:
        return False
    depth = 0
    for byte in brackets:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def interpret(event: str, payload: Mapping[str, Any], delivery: str | None = None) -> Decision:
    """What an authentic delivery of `event` with this body asks for."""
    expected_kind = OBJECT_KINDS.get(event)
    if expected_kind is not None:
        kind = payload.get("object_kind")
        handled = event in _HANDLERS
        if kind is None and handled:
            raise BadRequest("object_kind is missing or not a string")
        if kind is not None and kind != expected_kind:
            raise BadRequest(
                f"object_kind does not match X-Gitlab-Event {event!r}: expected {expected_kind!r}"
            )
    handler = _HANDLERS.get(event)
    if handler is None:
        if expected_kind is None:
            return Ignore(f"unknown or unhandled event {_label(event)}: nothing to do")
        return Ignore(f"{event} needs no cleanup")
    return handler(payload, delivery)


def merge_request_decision(payload: Mapping[str, Any], delivery: str | None) -> Decision:
    """A merged MR cleans its source branch in its source project (forks keep their own images)."""
    attrs = _object(payload, "object_attributes")
    action = _str(attrs, "action", "object_attributes.action")
    if action != "merge":
        return Ignore(f"merge request action {_label(action)} is not a merge")
    iid = _positive_int(attrs, "iid", "object_attributes.iid")
    source_branch = _name(attrs, "source_branch", "object_attributes.source_branch")
    target_branch = _name(attrs, "target_branch", "object_attributes.target_branch")
    source_project_id = _positive_int(attrs, "source_project_id", "object_attributes.source_project_id")
    target_project_id = _positive_int(attrs, "target_project_id", "object_attributes.target_project_id")
    last_commit = attrs.get("last_commit")
    tip = _sha_or_none(last_commit.get("id")) if isinstance(last_commit, dict) else None
    return Cleanup(
        project_id=source_project_id,
        branch=source_branch,
        trigger="merge",
        project_path=_optional_name(_nested(attrs, "source", "path_with_namespace")),
        target_project_id=target_project_id,
        target_branch=target_branch,
        mr_iid=iid,
        default_branch=_optional_name(_nested(payload, "project", "default_branch")),
        shas=(tip,) if tip else (),
        delivery=delivery,
    )


def push_decision(payload: Mapping[str, Any], delivery: str | None) -> Decision:
    """A push whose `after` is forty zeros on refs/heads/ deleted that branch."""
    ref = _str(payload, "ref", "ref")
    after = _str(payload, "after", "after")
    if after != ZERO_SHA:
        return Ignore("push is not a branch deletion", {"branch": _branch_of(ref)})
    if not ref.startswith(BRANCH_PREFIX):
        return Ignore(f"deleted ref is not a branch (not under {BRANCH_PREFIX})")
    branch = ref[len(BRANCH_PREFIX):]
    if not is_valid_name(branch):
        raise BadRequest(f"ref does not name a valid branch after {BRANCH_PREFIX} {_NAME_RULE}")
    project_id = _positive_int(payload, "project_id", "project_id")
    before = _sha_or_none(payload.get("before"))
    return Cleanup(
        project_id=project_id,
        branch=branch,
        trigger="branch_deleted",
        project_path=_optional_name(_nested(payload, "project", "path_with_namespace")),
        default_branch=_optional_name(_nested(payload, "project", "default_branch")),
        shas=(before,) if before and before != ZERO_SHA else (),
        delivery=delivery,
    )


def pipeline_decision(payload: Mapping[str, Any], delivery: str | None) -> Decision:
    """Every pipeline status change records (project, ref, sha, tag); duplicates collapse by job id."""
    attrs = _object(payload, "object_attributes")
    ref = _name(attrs, "ref", "object_attributes.ref")
    raw_sha = attrs.get("sha")
    sha = _sha_or_none(raw_sha)
    if sha is None or sha == ZERO_SHA:
        raise BadRequest("object_attributes.sha is missing or not a 40-character hex commit SHA")
    tag = attrs.get("tag", False)
    if tag is None:
        tag = False
    if not isinstance(tag, bool):
        raise BadRequest("object_attributes.tag is not a boolean")
    pipeline_id = attrs.get("id")
    if not _is_int(pipeline_id):
        pipeline_id = None
    status = attrs.get("status")
    if status is not None and not isinstance(status, str):
        raise BadRequest("object_attributes.status is not a string")
    if status not in PIPELINE_STATUSES:
        status = None  # a status newer than this code: recorded all the same, it schedules nothing
    project = _object(payload, "project")
    project_id = _positive_int(project, "id", "project.id")
    # Recorded for the project the pipeline ran in: its CI_REGISTRY_IMAGE is that project's,
    # even for a fork's merge request run in the parent project.
    return RecordPipeline(
        project_id=project_id, ref=ref, sha=sha, tag=tag, pipeline_id=pipeline_id, delivery=delivery, status=status
    )


# Ci::Pipeline's statuses (HasStatus::AVAILABLE_STATUSES), what a Pipeline Hook's status can be.
PIPELINE_STATUSES = frozenset({"created", "waiting_for_resource", "preparing", "waiting_for_callback", "pending",
                               "running", "success", "failed", "canceled", "canceling", "skipped", "manual",
                               "scheduled"})


# Deployment statuses GitLab sends a hook for; only a success can keep an image.
DEPLOYMENT_STATUSES = frozenset({"created", "running", "success", "failed", "canceled", "blocked"})
_COMMIT_URL_SHA = re.compile(r"/commit/([0-9a-fA-F]{40})/?$")


def deployment_decision(payload: Mapping[str, Any], delivery: str | None) -> Decision:
    """A successful deployment is remembered; the other statuses need nothing.

    The hook carries no `ref` and no SHA field of its own: the full SHA is the end of
    `commit_url`, and it must agree with `short_sha`."""
    status = _str(payload, "status", "status")
    if status not in DEPLOYMENT_STATUSES:
        raise BadRequest(f"status is not a deployment status GitLab sends: {_label(status)}")
    project = _object(payload, "project")
    project_id = _positive_int(project, "id", "project.id")
    if status != "success":
        return Ignore(f"deployment {status}: only a successful deployment keeps an image",
                      {"project_id": project_id})
    deployment_id = _positive_int(payload, "deployment_id", "deployment_id")
    environment = _name(payload, "environment", "environment")
    found = _COMMIT_URL_SHA.search(_str(payload, "commit_url", "commit_url"))
    if found is None:
        raise BadRequest("commit_url does not end in a 40-character hex commit SHA")
    sha = found.group(1).lower()
    short = payload.get("short_sha")
    if not isinstance(short, str) or not short or not sha.startswith(short.lower()):
        raise BadRequest("short_sha is missing or does not match the SHA at the end of commit_url")
    return RecordDeployment(project_id=project_id, deployment_id=deployment_id, environment=environment,
                            sha=sha, status=status, delivery=delivery)


_HANDLERS = {
    "Merge Request Hook": merge_request_decision,
    "Push Hook": push_decision,
    "Pipeline Hook": pipeline_decision,
    "Deployment Hook": deployment_decision,
}


def check_allowed(decision: Decision, payload: Mapping[str, Any], allowed: AllowList) -> Decision:
    """The decision, or an Ignore when a project it involves is outside ALLOWED_PROJECTS.

    A merge involves two projects: the source, whose images are cleaned (a fork's own), and
    the target, whose hook sent the delivery; both must be allowed. A payload's paths are
    only claims (see workers/common/allowlist.py): the worker checks again with GitLab's answer.
    """
    if isinstance(decision, Cleanup):
        projects = [("project", decision.project_id, decision.project_path)]
        if decision.trigger == "merge":
            target_path = _nested(_object_or_empty(payload, "object_attributes"), "target", "path_with_namespace")
            if target_path is None:
                target_path = _nested(payload, "project", "path_with_namespace")
            projects = [("source project", decision.project_id, decision.project_path),
                        ("target project", decision.target_project_id, target_path)]
    elif isinstance(decision, (RecordPipeline, RecordDeployment)):
        projects = [("project", decision.project_id, _nested(payload, "project", "path_with_namespace"))]
    else:
        return decision
    for role, project_id, path in projects:
        if not allowed.allows(project_id, path):
            return Ignore(f"{role} {project_id} is not allowed by ALLOWED_PROJECTS: delivery acknowledged, "
                          "nothing done", {"project_id": project_id})
    return decision


def _object_or_empty(payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = payload.get(key)
    return value if isinstance(value, dict) else {}


# --- field checks -------------------------------------------------------------------

_NAME_RULE = f"(non-empty, at most {MAX_NAME_LENGTH} characters, no control characters)"


def is_valid_name(value: object) -> bool:
    """A branch/ref/path we pass on: non-empty, bounded, free of NUL and control characters,
    and valid Unicode (JSON's "\\ud800" makes a lone surrogate, which no UTF-8 encoder takes)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NAME_LENGTH
        and not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _object(payload: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = payload.get(key)
    if not isinstance(value, dict):
        raise BadRequest(f"{key} is missing or not an object")
    return value


def _str(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise BadRequest(f"{path} is missing or not a string")
    return value


def _name(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = _str(obj, key, path)
    if not is_valid_name(value):
        raise BadRequest(f"{path} is not a valid name {_NAME_RULE}")
    return value


def _positive_int(obj: Mapping[str, Any], key: str, path: str) -> int:
    value = obj.get(key)
    if not _is_int(value):
        raise BadRequest(f"{path} is missing or not an integer")
    if value <= 0:
        raise BadRequest(f"{path} must be a positive integer")
    return value


def _nested(obj: Mapping[str, Any], key: str, inner: str) -> Any:
    value = obj.get(key)
    return value.get(inner) if isinstance(value, dict) else None


def _optional_name(value: object) -> str | None:
    """Optional context (paths, default branch): passed on when sane, else None."""
    return value if is_valid_name(value) else None


def _sha_or_none(value: object) -> str | None:
    if isinstance(value, str) and _SHA_RE.fullmatch(value):
        return value.lower()
    return None


def _branch_of(ref: str) -> str | None:
    return ref[len(BRANCH_PREFIX):] if ref.startswith(BRANCH_PREFIX) and is_valid_name(ref[len(BRANCH_PREFIX):]) else None


def _label(value: str, limit: int = 60) -> str:
    """A short, quoted rendering of a header/body label for messages and logs."""
    shown = value if len(value) <= limit else value[:limit] + "…"
    return repr(shown)


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__
