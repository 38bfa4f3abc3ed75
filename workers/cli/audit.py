"""`tagsweeper audit`: the audit trail (workers.common.audit), newest first, as a table or JSON lines."""

from __future__ import annotations

import argparse
import json
import re
import time
from datetime import datetime, timezone

import redis

from workers.cli.command import at_least_one, project
from workers.common import audit
from workers.common.settings import Settings

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float | None = None) -> float:
    """Unix time from "30m", "2h", "3d", "1w" (ago), an ISO date or time (UTC unless it says), or a number."""
    value = text.strip()
    relative = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", value, re.I)
    if relative:
        return (time.time() if now is None else now) - float(relative[1]) * _UNITS[relative[2].lower()]
    if re.fullmatch(r"\d{9,}(?:\.\d+)?", value):
        return float(value)
    try:
        when = datetime.fromisoformat(value.replace(" ", "T", 1) if len(value) > 10 else value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a time like 2026-11-20, 2026-11-20T10:00, or an age like 30m, 2h, 3d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # UTC, as the table prints and /audit reads it
    return when.timestamp()


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "audit", help="show the audit trail: every tag decision, newest first",
        description="Show the audit trail: every decision tagsweeper made about a tag (deleted, would "
                    "delete, kept, absent, failed) and every cleanup it skipped, each with its reason, "
                    "newest first. It reads Redis and changes nothing.")
    p.add_argument("--project", type=project, help="project id or path (group/project)")
    p.add_argument("--since", type=parse_when, metavar="WHEN",
                   help="only entries since WHEN: 2026-11-20, 2026-11-20T10:00, or an age: 30m, 2h, 3d")
    p.add_argument("--limit", type=at_least_one("entries"), default=100, help="at most this many entries (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        entries = audit.read(conn, project=args.project, since=args.since, limit=args.limit)
    finally:
        conn.close()
    if args.json:
        for entry in entries:
            print(json.dumps(entry, ensure_ascii=False))
    else:
        print(format_table(entries))
    return 0


def format_table(entries: list[dict]) -> str:
    """The trail as people read it at a terminal."""
    if not entries:
        return "no audit entries"
    header = ("TIME (UTC)", "PROJECT", "BRANCH", "DECISION", "IMAGE", "REASON")
    rows = [header]
    for e in entries:
        when = datetime.fromtimestamp(e["time"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if e["time"] else "?"
        decision = ("dry run: " if e["dry_run"] and e["decision"] != "would_delete" else "") + str(e["decision"])
        image = f"{e['repository'] or '*'}:{e['tag']}" if e["tag"] else "-"
        branch = e["branch"] or ("(sweep)" if e.get("trigger") == "sweep" else "-")
        rows.append((when, str(e["project"] or e["project_id"] or "?"), str(branch), decision,
                     image, str(e["reason"] or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows)
