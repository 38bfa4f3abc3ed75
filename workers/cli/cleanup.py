"""`tagsweeper cleanup`: clean one branch's image tags now, printing every decision.

It runs what a merge or a branch deletion would run (workers.cleanup), as the operator's
own choice: ALLOWED_PROJECTS does not apply. Exit status: 0 done, 1 some deletions failed
or GitLab could not be asked (run it again), 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse

import redis

from workers import cleanup
from workers.cli import render
from workers.cli.command import CommandError, answer, project, quiet_logs
from workers.common import errors
from workers.common.settings import Settings
from workers.gitlab import GitLab, GitLabError


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "cleanup", help="clean a branch's image tags now, printing every decision",
        description="Delete the image tags a branch owns in every registry repository of the project, "
                    "as a merge or a branch deletion would, and print every decision with its reason. "
                    "A branch that still exists in GitLab is left alone unless --force.")
    p.add_argument("--project", required=True, type=project, help="project id or path (group/project)")
    p.add_argument("--branch", required=True, help="branch name, as in git (not the slug)")
    p.add_argument("--dry-run", action="store_true", help="decide and report, delete nothing")
    p.add_argument("--force", action="store_true", help="clean even if the branch still exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_gitlab()
    if not args.json:
        quiet_logs(settings)
    request = cleanup.Request(project_id=args.project, branch=args.branch, trigger="manual", force=args.force)
    gitlab = GitLab.from_settings(settings)
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        report = cleanup.run(request, gitlab=gitlab, conn=conn, settings=settings,
                             dry_run=True if args.dry_run else None)
        status = 0
    except cleanup.CleanupIncomplete as exc:
        report, status = exc.report, 1
    except cleanup.CleanupError as exc:
        raise CommandError(str(exc), 2) from None
    except GitLabError as exc:
        raise CommandError(f"GitLab: {exc}", 1) from None
    except errors.ServiceError as exc:  # the registry refused or kept failing
        raise CommandError(f"registry: {exc}", 1) from None
    finally:
        gitlab.close()
        conn.close()
    print(answer(args, report, render.cleanup))
    return status
