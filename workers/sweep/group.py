"""A group's sweep: every project of the group and of its subgroups, one after the other."""

from __future__ import annotations

import logging

import redis

from workers import cleanup
from workers.common import errors
from workers.common.settings import Settings
from workers.gitlab import GitLab, GitLabError, NotFound
from workers.sweep.project import PAGE_SIZE, Progress, SweepError, run_project

log = logging.getLogger("tagsweeper.sweep")


def run_group(group: int | str, *, gitlab: GitLab, conn: redis.Redis, settings: Settings,
              dry_run: bool | None = None, page_size: int = PAGE_SIZE,
              progress: Progress | None = None, by_operator: bool = False) -> dict:
    """Sweep every project of a group and its subgroups; one project's trouble does not stop the rest."""
    dry = settings.dry_run if dry_run is None else dry_run
    try:
        found = gitlab.group(group)
    except NotFound:
        raise SweepError(f"group {group!r} not found (or GITLAB_TOKEN cannot see it)") from None
    projects = [(p["id"], p.get("path_with_namespace")) for p in gitlab.group_projects(group)]
    reports, failed = [], 0
    for pid, path in projects:
        try:
            reports.append(run_project(pid, gitlab=gitlab, conn=conn, settings=settings, dry_run=dry,
                                       page_size=page_size, progress=progress, by_operator=by_operator))
        except cleanup.CleanupIncomplete as exc:
            reports.append(exc.report)
            failed += 1
        except (SweepError, GitLabError, errors.AuthError) as exc:  # GitLab's trouble, or a token refused
            if isinstance(exc, GitLabError) and exc.status == 401:
                raise  # GitLab refused its token: that fails every project alike
            log.warning("sweep of a group's project failed", extra={"project_id": pid, "error": str(exc)})
            reports.append({"project_id": pid, "project": path, "trigger": "sweep", "dry_run": dry,
                            "error": str(exc)})
            failed += 1
    return {"group_id": found.get("id"), "group": found.get("full_path") or str(group), "trigger": "sweep",
            "dry_run": dry, "projects": reports, "failed": failed}
