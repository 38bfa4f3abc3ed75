"""RQ job functions: importable, keyword-only, JSON-able arguments, so any job can be replayed.

Settings are read when a job starts. A job's report is its return value; a job that
fails keeps its partial report in `job.meta["report"]` so the dashboard can show it.
"""

from __future__ import annotations

import logging

import redis
from rq import get_current_job

from workers import cleanup, history, rules
from workers.gitlab import AuthError, GitLab
from workers.registry import AuthError as RegistryAuthError
from workers.settings import ConfigError, Settings

log = logging.getLogger("tagsweeper.jobs")


def cleanup_branch(*, project_id: int | str, branch: str, trigger: str, shas: list[str] | None = None,
                   project_path: str | None = None, mr_iid: int | None = None,
                   target_project_id: int | None = None, target_branch: str | None = None,
                   default_branch: str | None = None, delivery: str | None = None,
                   dry_run: bool | None = None, force: bool = False) -> dict:
    """Delete the tags `branch` owns in every registry repository of the project."""
    settings = Settings.from_env()
    request = cleanup.Request(
        project_id=project_id, branch=branch, trigger=trigger, shas=tuple(shas or ()),
        project_path=project_path, mr_iid=mr_iid, target_project_id=target_project_id,
        target_branch=target_branch, default_branch=default_branch, delivery=delivery, force=force)
    try:
        settings.require_gitlab()
        gitlab = GitLab(settings.gitlab_url, settings.gitlab_token, timeout=settings.http_timeout,
                        pool_size=settings.delete_concurrency + 2)
        conn = redis.Redis.from_url(settings.redis_url)
        try:
            return cleanup.run(request, gitlab=gitlab, conn=conn, settings=settings, dry_run=dry_run)
        finally:
            gitlab.close()
            conn.close()
    except cleanup.CleanupIncomplete as exc:
        _keep_report(exc.report)
        raise
    except (ConfigError, cleanup.CleanupError, AuthError, RegistryAuthError) as exc:
        # Retrying cannot fix a bad setting, bad arguments or a refused token: fail now, say what to fix.
        _no_retry()
        log.error("cleanup failed permanently", extra={"project_id": project_id, "branch": branch,
                                                        "trigger": trigger, "error": str(exc)})
        raise


def record_pipeline(*, project_id: int, ref: str, sha: str, tag: bool = False,
                    pipeline_id: int | None = None, delivery: str | None = None) -> dict:
    """Remember that a pipeline built `sha` on `ref`, so SHA tags can be attributed later."""
    settings = Settings.from_env()
    if not rules.is_sha(sha):
        raise ValueError(f"sha must be 40 lower-case hex characters, got {sha!r}")
    rules.check_branch_name(ref)
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        history.record(conn, project_id=int(project_id), ref=ref, sha=sha, tag=bool(tag),
                       ttl_days=settings.pipeline_memory_days, cap=settings.pipeline_memory_cap)
    finally:
        conn.close()
    return {"project_id": project_id, "ref": ref, "sha": sha, "tag": bool(tag), "pipeline_id": pipeline_id}


def _keep_report(report: dict) -> None:
    job = get_current_job()
    if job is not None:
        job.meta["report"] = report
        job.save_meta()


def _no_retry() -> None:
    job = get_current_job()
    if job is not None:
        job.retries_left = 0
