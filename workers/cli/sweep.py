"""`tagsweeper sweep`: find the tags of branches that no longer exist and clean them, now
(what a sweep does: workers.sweep).

A sweep run by hand is the operator's own choice: ALLOWED_PROJECTS does not apply, as for
`tagsweeper cleanup`. Exit status: 0 done, 1 some deletions (or some of a group's projects)
failed or GitLab refused, 2 an unknown project or group, bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import sys

import redis

from workers import cleanup, sweep
from workers.cli import render
from workers.cli.command import CommandError, Terminal, answer, group, project, quiet_logs
from workers.common.settings import Settings
from workers.common import errors
from workers.gitlab import GitLab


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="find tags of branches that no longer exist and clean them (reconciliation)",
        description="Go over every tag of the registry repositories of a project (or of every project "
                    "in a group) and delete those provably owned by a branch that no longer exists, by the "
                    "rules of the cleanups webhooks trigger. Tags it cannot attribute are kept and reported.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--project", type=project, help="project id or path (group/project)")
    target.add_argument("--group", type=group, help="group id or path: its projects and its subgroups'")
    p.add_argument("--dry-run", action="store_true", help="decide and report, delete nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_gitlab()
    if not args.json:
        quiet_logs(settings)
    terminal = Terminal(sys.stderr) if sys.stderr.isatty() else None
    gitlab = GitLab.from_settings(settings)
    conn = redis.Redis.from_url(settings.redis_url)
    options = dict(gitlab=gitlab, conn=conn, settings=settings, dry_run=True if args.dry_run else None,
                   progress=terminal, by_operator=True)  # the operator's choice, like a manual cleanup
    status = 0
    try:
        if args.group is not None:
            result = sweep.run_group(args.group, **options)
            status = 1 if result["failed"] else 0
        else:
            result = sweep.run_project(args.project, **options)
    except cleanup.CleanupIncomplete as exc:
        result, status = exc.report, 1
    except sweep.SweepError as exc:
        raise CommandError(str(exc), 2) from None
    except errors.ServiceError as exc:  # GitLab's or the registry's
        raise CommandError(str(exc), 1) from None
    finally:
        if terminal:
            terminal.clear()
        gitlab.close()
        conn.close()
    print(answer(args, result, render.group_sweep if "projects" in result else render.sweep))
    return status
