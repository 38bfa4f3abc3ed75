"""`tagsweeper status` and `tagsweeper replay`: look at the queue, and requeue failed jobs
(what they do: workers.operations)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from workers import operations
from workers.cli.audit import format_table
from workers.cli.command import CommandError, answer
from workers.common.settings import Settings

# As JSON: datetimes as text, names as they are.
_JSON = {"default": str, "ensure_ascii": False}


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "status", help="show the queues, the workers, the failed jobs and the last decisions",
        description="Show the queues' counts, the running workers, the failed jobs with the last line of "
                    "their error, and the audit trail's last decisions. It reads Redis and changes nothing.")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.set_defaults(handler=run_status)

    p = subparsers.add_parser(
        "replay", help="requeue a failed job (or, with --failed, every failed job)",
        description="Requeue a failed, stopped or canceled job under its own id. A finished job is "
                    "left alone unless --force, which enqueues a copy under a new id. A cleanup is safe to "
                    "run again: it looks at GitLab afresh, and a tag already gone counts as done.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("job_id", nargs="?", metavar="JOB_ID",
                        help="the job's id, as `tagsweeper status` or the dashboard shows it")
    target.add_argument("--failed", action="store_true", help="requeue every job in the queue's failed registry")
    p.add_argument("--force", action="store_true",
                   help="run a finished job again: same function and arguments, new job id")
    p.add_argument("--json", action="store_true", help="print what was done as JSON")
    p.set_defaults(handler=run_replay)


# --- replay ---------------------------------------------------------------------------


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    if args.failed and args.force:
        raise CommandError("--force applies to one finished JOB_ID, not to --failed", 2)
    conn = operations.connect(settings)
    try:
        if args.failed:
            outcome = operations.replay_failed(conn, settings.queue)
            status = 1 if outcome["skipped"] else 0
        else:
            outcome = operations.replay(conn, args.job_id, force=args.force)
            status = 0
    except operations.OperationError as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}, indent=2, **_JSON))
        raise CommandError(str(exc), 1) from None
    finally:
        conn.close()
    print(answer(args, outcome, format_replay, **_JSON))
    return status


def format_replay(outcome: dict[str, Any]) -> str:
    if "requeued" in outcome:  # --failed
        queue = outcome["queue"]
        if not outcome["requeued"] and not outcome["skipped"]:
            return f"no failed jobs on queue {queue!r}: nothing to requeue"
        lines = [f"requeued {len(outcome['requeued'])} failed job(s) on queue {queue!r}"]
        lines += [f"  {j['job_id']}  {j['description'] or ''}".rstrip() for j in outcome["requeued"]]
        if outcome["skipped"]:
            lines.append(f"could not requeue {len(outcome['skipped'])}:")
            lines += [f"  {j['job_id']}  ({j['reason']})" for j in outcome["skipped"]]
        return "\n".join(lines)
    what = f"job {outcome['job_id']}" + (f" ({outcome['description']})" if outcome["description"] else "")
    if outcome["action"] == "requeued":
        return f"requeued {what}: it was {outcome['was']}, it is queued again on {outcome['queue']!r}"
    if outcome["action"] == "copied":
        return (f"enqueued a copy of {what} as {outcome['new_job_id']} on {outcome['queue']!r}: "
                f"same function and arguments (it was {outcome['was']})")
    return f"{what}: {outcome['message']}"


# --- status ---------------------------------------------------------------------------


def run_status(args: argparse.Namespace, settings: Settings) -> int:
    conn = operations.connect(settings)
    try:
        report = operations.status(conn, settings.queue)
    finally:
        conn.close()
    print(answer(args, report, format_status, **_JSON))
    return 0


def format_status(report: dict[str, Any]) -> str:
    lines = ["queues:"]
    for q in report["queues"]:
        lines.append(f"  {q['name']}: {q['queued']} queued, {q['scheduled']} scheduled, {q['started']} started, "
                     f"{q['failed']} failed, {q['finished']} finished")
    lines.append(f"workers ({len(report['workers'])}):" if report["workers"] else
                 "workers: none running (start one with `tagsweeper worker`)")
    for w in report["workers"]:
        job = w["current_job"]
        doing = f"  running {job['id']} ({job['description']})" if job else ""
        lines.append(f"  {w['name']}  {w['state']}  queues: {', '.join(w['queues'])}{doing}")
    total, shown = report["failed_total"], report["failed_jobs"]
    if not total:
        lines.append(f"failed jobs on {report['queue']!r}: none")
    else:
        more = f", newest {len(shown)} shown" if total > len(shown) else ""
        lines.append(f"failed jobs on {report['queue']!r} ({total}{more}; `tagsweeper replay --failed` requeues all):")
        for f in shown:
            lines.append(f"  {f['id']}  {f['description'] or ''}".rstrip())
            lines.append(f"      {f['error'] or '(no exception recorded)'}")
    decisions = report["decisions"]
    if decisions is None:
        lines.append("last decisions: (no audit trail in this version)")
    elif not decisions:
        lines.append("last decisions: none yet")
    else:
        lines.append("last decisions:")
        lines += ["  " + line for line in format_table(decisions).splitlines()]
    return "\n".join(lines)
