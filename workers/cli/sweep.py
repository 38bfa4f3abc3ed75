"""`tagsweeper sweep`: find the tags of branches that no longer exist and clean them, now
(what a sweep does: workers.sweep).

A sweep run by hand is the operator's own choice: ALLOWED_PROJECTS does not apply, as for
`tagsweeper cleanup`. Exit status: 0 done, 1 some deletions (or some of a group's projects)
failed or GitLab refused, 2 an unknown project or group, bad arguments or configuration.
"""

from __future__ import annotations

import argparse
from functools import partial

from workers import sweep
from workers.cli import render
from workers.cli.command import answer, group, project, run_by_hand
from workers.common.settings import Settings


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
    if args.group is not None:
        result, status = run_by_hand(args, settings, partial(sweep.run_group, args.group), sweep.SweepError)
        status = 1 if result.get("failed") else status
    else:
        result, status = run_by_hand(args, settings, partial(sweep.run_project, args.project), sweep.SweepError)
    print(answer(args, result, render.group_sweep if "projects" in result else render.sweep))
    return status
