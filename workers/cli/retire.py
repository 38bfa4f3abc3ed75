"""`tagsweeper retire`: retire the commit tags of live branches that newer commits superseded
(retention, KEEP_COMMITS: workers.retention), now, printing every decision.

Run by hand it is the operator's own choice: ALLOWED_PROJECTS does not apply, as for
`tagsweeper cleanup`. KEEP_COMMITS must be set. Exit status: 0 done, 1 some deletions failed
or GitLab could not be asked (run it again), 2 an unknown project, retention off, bad
arguments or configuration.
"""

from __future__ import annotations

import argparse
import sys

import redis

from workers import cleanup, retention
from workers.cli import render
from workers.cli.command import CommandError, Terminal, answer, project, quiet_logs
from workers.common import errors
from workers.common.settings import Settings
from workers.gitlab import GitLab


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "retire", help="retire superseded commit tags of live branches (KEEP_COMMITS)",
        description="On a live branch, keep the commit tags of its newest KEEP_COMMITS built commits and of its "
                    "newest commit whose pipeline succeeded, and delete the older ones that nothing else uses "
                    "(another live ref, an environment, a git tag, an open merge request, PROTECTED_TAGS, or "
                    "younger than KEEP_COMMITS_MIN_AGE). Branch tags are never touched. Without --branch, every "
                    "live branch KEEP_COMMITS_BRANCHES matches.")
    p.add_argument("--project", required=True, type=project, help="project id or path (group/project)")
    p.add_argument("--branch", help="only this branch (as in git, not the slug)")
    p.add_argument("--dry-run", action="store_true", help="decide and report, delete nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    settings.require_gitlab()
    if not settings.retention:
        raise CommandError("KEEP_COMMITS is not set: retention on live branches is off; set KEEP_COMMITS to the "
                           "number of newest commits each branch keeps (try --dry-run first)", 2)
    if not args.json:
        quiet_logs(settings)
    terminal = Terminal(sys.stderr) if sys.stderr.isatty() else None
    gitlab = GitLab.from_settings(settings)
    conn = redis.Redis.from_url(settings.redis_url)
    status = 0
    try:
        result = retention.run(args.project, gitlab=gitlab, conn=conn, settings=settings, branch=args.branch,
                               dry_run=True if args.dry_run else None, progress=terminal, by_operator=True)
    except cleanup.CleanupIncomplete as exc:
        result, status = exc.report, 1
    except retention.RetentionError as exc:
        raise CommandError(str(exc), 2) from None
    except errors.ServiceError as exc:  # GitLab's or the registry's
        raise CommandError(str(exc), 1) from None
    finally:
        if terminal:
            terminal.clear()
        gitlab.close()
        conn.close()
    print(answer(args, result, render.retention))
    return status
