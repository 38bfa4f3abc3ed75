"""Every Redis key tagsweeper writes, in one place (RQ's own keys are RQ's).

All live under `tagsweeper:`, so an operator can list, size or flush them apart from RQ's.
A key's comment says what it holds and who writes it.
"""

from __future__ import annotations

import hashlib

ROOT = "tagsweeper"

# Stream: the audit trail, one entry per decision and per skipped run (workers.common.audit).
AUDIT = f"{ROOT}:audit"

# Set: every project a job has seen; the scheduled sweep covers them (workers.sweep.schedule).
PROJECTS = f"{ROOT}:projects"

# Hash: project id -> its path, as the audit trail last named it (workers.common.activity).
ACTIVITY_PROJECTS = f"{ROOT}:activity:projects"


def activity_day(day: str) -> str:
    """Hash: one UTC day's audit entries counted by hour, project, decision and reason kind
    (`HH|<project id>|<decision>|<reason_kind>` -> count), expiring after ACTIVITY_DAYS (workers.common.activity)."""
    return f"{ROOT}:activity:day:{day}"


def metric(family: str) -> str:
    """Hash: one metric family's series, label string -> value (workers.common.metrics)."""
    return f"{ROOT}:metrics:{family}"


def webhook_id(webhook_id: str) -> str:
    """String: a signed delivery's webhook-id, seen once; a replay of it is refused (hooks.views)."""
    digest = hashlib.sha256(webhook_id.strip().encode("utf-8", "surrogatepass")).hexdigest()
    return f"{ROOT}:webhook-id:{digest}"


def cleanup_lock(project_id: int | str, branch: str) -> str:
    """String: the worker holding a branch's cleanup (workers.locks)."""
    return f"{ROOT}:lock:cleanup:{project_id}:{branch}"


def pipelines(project_id: int) -> str:
    """Prefix of one project's copy of GitLab's pipelines (workers.pipelines): `<prefix>:state`,
    `:sha`, `:short`, `:refs`, `:first`, `:kind` and `:ref:<ref>`."""
    return f"{ROOT}:pipelines:{int(project_id)}"


def deployments(project_id: int) -> str:
    """Prefix of one project's copy of GitLab's successful deployments (workers.deployments):
    `<prefix>:state`, `:envs`, `:last`, `:short`, `:hints` and `:env:<environment>`."""
    return f"{ROOT}:deployments:{int(project_id)}"


def retired(project_id: int, branch: str) -> str:
    """Sorted set: the commits of a live branch whose COMMIT_TAGS a retention pass deleted (or found
    gone) everywhere, scored by their newest pipeline id on the branch then; later passes do not
    ask about them again unless the branch built them since; expires RETIRED_TTL after the branch's
    last pass (workers.retention)."""
    digest = hashlib.sha256(branch.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{ROOT}:retired:{int(project_id)}:{digest}"


# What Pipeline Hooks named, a hint (workers.history).
def history_ref(project_id: int, kind: str, ref: str) -> str:
    """Sorted set: the SHAs a ref's pipelines built."""
    return f"{ROOT}:history:ref:{int(project_id)}:{kind}:{ref}"


def history_sha(project_id: int, sha: str) -> str:
    """Set: the refs whose pipelines built a SHA."""
    return f"{ROOT}:history:sha:{int(project_id)}:{sha}"


def history_short(project_id: int, sha: str) -> str:
    """Set: the full SHAs that start with a SHA's first 8 characters."""
    return f"{ROOT}:history:short:{int(project_id)}:{sha[:8]}"
