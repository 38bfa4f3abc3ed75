"""`tagsweeper retire`: retire the commit tags of live branches that newer commits superseded
(retention, KEEP_COMMITS: workers.retention), now, printing every decision.

Run by hand it is the operator's own choice: ALLOWED_PROJECTS does not apply, as for
`tagsweeper cleanup`. KEEP_COMMITS must be set. Exit status: 0 done, 1 some deletions failed
or GitLab could not be asked (run it again), 2 an unknown project, retention off, bad
arguments or configuration.
"""

from __future__ import annotations

import argparse
from functools import partial

from workers import retention
from workers.cli import render
from workers.cli.command import CommandError, answer, project, run_by_hand
from workers.common.settings import Settings


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
    result, status = run_by_hand(args, settings, partial(retention.run, args.project, branch=args.branch),
                                 retention.RetentionError)
    print(answer(args, result, render.retention))
    return status
