"""RQ job functions: importable, keyword-only, JSON-able arguments, so any job can be replayed.

Settings are read when a job starts. A job's report is its return value; a job that
fails keeps its partial report in `job.meta["report"]` so the dashboard can show it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import redis
from rq import Queue, get_current_job

from workers import cleanup, deployments, history, retention, rules, sweep
from workers.common import errors, metrics, queue
from workers.common.settings import ConfigError, Settings
from workers.gitlab import GitLab

log = logging.getLogger("tagsweeper.jobs")


@metrics.observed("cleanup_branch", {cleanup.CleanupIncomplete: "incomplete"})
def cleanup_branch(*, project_id: int | str, branch: str, trigger: str, shas: list[str] | None = None,
                   project_path: str | None = None, mr_iid: int | None = None,
                   target_project_id: int | None = None, target_branch: str | None = None,
                   default_branch: str | None = None, delivery: str | None = None,
                   dry_run: bool | None = None, force: bool = False) -> dict:
    """Delete the tags `branch` owns in every registry repository of the project."""
    arguments = dict(locals())  # this job's keyword arguments, as a re-check repeats them
    settings = Settings.from_env()
    request = cleanup.Request(
        project_id=project_id, branch=branch, trigger=trigger, shas=tuple(shas or ()),
        project_path=project_path, mr_iid=mr_iid, target_project_id=target_project_id,
        target_branch=target_branch, default_branch=default_branch, delivery=delivery, force=force)
    with _failing_well("cleanup", cleanup.CleanupError, project_id=project_id, branch=branch, trigger=trigger):
        with _clients(settings) as (gitlab, conn):
            sweep.remember_project(conn, project_id)  # the scheduled sweep covers it from now on
            report = cleanup.run(request, gitlab=gitlab, conn=conn, settings=settings, dry_run=dry_run)
            _keep_report(None)  # a replay that succeeds replaces an earlier run's partial report
            if settings.in_use_recheck and cleanup.held_by_environments(report):
                _recheck(conn, settings, report, arguments)
            return report


def _recheck(conn: redis.Redis, settings: Settings, report: dict, kwargs: dict) -> None:
    """Run this cleanup again IN_USE_RECHECK seconds from now: live environments kept some of its
    tags, and once they are stopped those go (each re-check that still finds them in use does the
    same). Repeated cleanups of the branch share one re-check. A failure to schedule it is logged:
    the scheduled sweep releases the tags at the latest."""
    fields = {"project_id": report["project_id"], "branch": kwargs["branch"], "in": settings.in_use_recheck}
    try:
        status, job_id = queue.schedule_recheck(
            Queue(settings.queue, connection=conn), kwargs, project_id=report["project_id"],
            interval=settings.in_use_recheck, retries=settings.cleanup_retries,
            intervals=settings.cleanup_retry_intervals,
            description=f"re-check of the cleanup of {report.get('project') or report['project_id']} branch "
                        f"{kwargs['branch']}: tags in use by environments")
    except redis.RedisError as exc:
        log.warning("re-check not scheduled", extra={**fields, "error": type(exc).__name__})
        return
    log.info("re-check scheduled" if status == queue.ENQUEUED else "re-check already scheduled",
             extra={**fields, "job_id": job_id})


@metrics.observed("record_pipeline")
def record_pipeline(*, project_id: int, ref: str, sha: str, tag: bool = False,
                    pipeline_id: int | None = None, delivery: str | None = None, status: str | None = None) -> dict:
    """Remember that a pipeline built `sha` on `ref`, so SHA tags can be attributed later. A
    successful branch pipeline schedules the branch's retention pass when KEEP_COMMITS is set."""
    settings = Settings.from_env()
    if not rules.is_sha(sha):
        raise ValueError(f"sha must be 40 lower-case hex characters, got {sha!r}")
    rules.check_branch_name(ref)
    result = {"project_id": project_id, "ref": ref, "sha": sha, "tag": bool(tag), "pipeline_id": pipeline_id,
              "status": status}
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        sweep.remember_project(conn, int(project_id))
        history.record(conn, project_id=int(project_id), ref=ref, sha=sha, tag=bool(tag),
                       ttl_days=settings.pipeline_memory_days, cap=settings.pipeline_memory_cap)
        if status == "success" and not tag and settings.retires(ref):
            result["retention"], result["retention_job"] = queue.schedule_retention(
                Queue(settings.queue, connection=conn), project_id=int(project_id), branch=ref,
                delay=settings.retire_delay, retries=settings.cleanup_retries,
                intervals=settings.cleanup_retry_intervals, delivery=delivery,
                description=f"retention pass of project {project_id} branch {ref} (KEEP_COMMITS)")
    finally:
        conn.close()
    return result


@metrics.observed("retire_branch", {cleanup.CleanupIncomplete: "incomplete"})
def retire_branch(*, project_id: int | str, branch: str, dry_run: bool | None = None,
                  delivery: str | None = None) -> dict:
    """Retire the commit tags of a live branch that its newest KEEP_COMMITS commits superseded."""
    settings = Settings.from_env()
    with _failing_well("retention pass", retention.RetentionError, project_id=project_id, branch=branch):
        with _clients(settings) as (gitlab, conn):
            report = retention.run(project_id, gitlab=gitlab, conn=conn, settings=settings, branch=branch,
                                   dry_run=dry_run, delivery=delivery)
            _keep_report(None)
            return report


@metrics.observed("record_deployment")
def record_deployment(*, project_id: int, deployment_id: int, environment: str, sha: str,
                      status: str = "success", delivery: str | None = None) -> dict:
    """Remember a Deployment Hook's successful deployment: a hint that only adds protection."""
    settings = Settings.from_env()
    if not rules.is_sha(sha):
        raise ValueError(f"sha must be 40 lower-case hex characters, got {sha!r}")
    rules.check_branch_name(environment)  # an environment name is bounded like a ref name
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        sweep.remember_project(conn, int(project_id))
        deployments.remember(conn, project_id=int(project_id), environment=environment,
                             deployment_id=int(deployment_id), sha=sha, status=status)
    finally:
        conn.close()
    return {"project_id": project_id, "deployment_id": deployment_id, "environment": environment,
            "sha": sha, "status": status}


@metrics.observed("sweep_project", {cleanup.CleanupIncomplete: "incomplete"})
def sweep_project(*, project: int | str, dry_run: bool | None = None) -> dict:
    """Find the tags of branches that no longer exist in the project's registry and clean them."""
    settings = Settings.from_env()
    with _failing_well("sweep", sweep.SweepError, project_id=project):
        with _clients(settings) as (gitlab, conn):
            try:
                report = sweep.run_project(project, gitlab=gitlab, conn=conn, settings=settings, dry_run=dry_run)
            except sweep.SweepError:
                sweep.forget_project(conn, project)  # gone from GitLab: stop scheduling it
                raise
            if settings.retention and not report.get("skipped"):
                report["retention"] = _retire_all(report["project_id"], gitlab, conn, settings, dry_run)
            return report


def _retire_all(project_id: int, gitlab: GitLab, conn: redis.Redis, settings: Settings,
                dry_run: bool | None) -> list[dict]:
    """After a sweep: a retention pass of every live branch KEEP_COMMITS applies to; per branch
    what it did (each pass's decisions are in the audit trail, trigger superseded)."""
    try:
        result = retention.run(project_id, gitlab=gitlab, conn=conn, settings=settings, dry_run=dry_run)
    except cleanup.CleanupIncomplete as exc:
        result = exc.report  # the next sweep, or the branch's next pipeline, finishes it
    except errors.ServiceError as exc:  # the sweep itself is done: its report stands
        log.warning("retention after the sweep failed", extra={"project_id": project_id, "error": str(exc)})
        return [{"error": str(exc)}]
    return [{"branch": r["branch"], "skipped": r["skipped"], "summary": r["summary"]} for r in result["branches"]]


@contextmanager
def _clients(settings: Settings) -> Iterator[tuple[GitLab, redis.Redis]]:
    """The GitLab client and Redis connection of one job, closed (and their calls counted) after."""
    gitlab = GitLab.from_settings(settings)
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        yield gitlab, conn
    finally:
        metrics.tally().add_requests("gitlab", gitlab.calls)
        gitlab.close()
        conn.close()


@contextmanager
def _failing_well(what: str, invalid: type[Exception], **fields: object) -> Iterator[None]:
    """Keep a partial report for the dashboard; fail at once where a retry cannot help."""
    try:
        yield
    except cleanup.CleanupIncomplete as exc:
        _keep_report(exc.report)
        raise
    except (ConfigError, invalid, errors.AuthError) as exc:
        # A bad setting, bad arguments or a refused token: fail now, and say what to fix.
        _no_retry()
        log.error(f"{what} failed permanently", extra={**fields, "error": str(exc)})
        raise


def _keep_report(report: dict | None) -> None:
    job = get_current_job()
    if job is None or (report is None and "report" not in job.meta):
        return
    if report is None:
        job.meta.pop("report")
    else:
        job.meta["report"] = report
    job.save_meta()


def _no_retry() -> None:
    job = get_current_job()
    if job is not None:
        job.retries_left = 0
