"""Counts of the audit trail by hour, kept beside it, so the activity page never reads the whole trail.

Every audit entry (workers.common.audit) also adds one to its UTC day's hash
`tagsweeper:activity:day:<YYYY-MM-DD>`, field `HH|<project id>|<decision>|<reason_kind>`, and
names its project in `tagsweeper:activity:projects` (id -> path). Both commands ride in the
pipeline that writes the entry, so a decision still costs one round trip.

Memory is bounded: a day's hash expires ACTIVITY_DAYS after it was last written, and its fields
are at most 24 hours x the projects active that day x the (decision, reason_kind) pairs, both
fixed sets. Reading the month is one pipelined round trip of ACTIVITY_DAYS + 1 HGETALLs, whatever
the size of the trail. Counts start when this writer first ran: older entries are in the trail only.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, NamedTuple

import redis

from workers.common import keys

ACTIVITY_DAYS = 32  # the month the page shows, the day in progress, and a day's slack for clocks
TTL = (ACTIVITY_DAYS + 2) * 86400


class Count(NamedTuple):
    """n audit entries of one project in one hour (`hour`: unix hours, time // 3600)."""

    hour: int
    project_id: str
    decision: str
    reason_kind: str
    n: int


def day_of(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d")


def field(seconds: float, project_id: Any, decision: str, reason_kind: str) -> str:
    hour = datetime.fromtimestamp(seconds, timezone.utc).hour
    pid = str(project_id) if project_id is not None and str(project_id).isdigit() else "?"
    return f"{hour:02d}|{pid}|{_word(decision)}|{_word(reason_kind)}"


def _word(value: Any) -> str:
    # Decisions and reason kinds are fixed words; anything else must not grow or break the field.
    text = str(value or "")
    return text if text.replace("_", "").isalnum() and len(text) <= 40 else "other"


def count(pipe: Any, entry: Mapping[str, Any]) -> None:
    """Queue the counting of one audit entry (its `time`, `project_id`, `decision`, `reason_kind`)."""
    seconds = float(entry.get("time") or time.time())
    key = keys.activity_day(day_of(seconds))
    pipe.hincrby(key, field(seconds, entry.get("project_id"), entry.get("decision") or "",
                            entry.get("reason_kind") or ""), 1)
    pipe.expire(key, TTL)
    pid, path = entry.get("project_id"), entry.get("project")
    if pid is not None and str(pid).isdigit() and path:
        pipe.hset(keys.ACTIVITY_PROJECTS, str(pid), str(path)[:255])


def read(conn: redis.Redis, now: float | None = None,
         days: int = ACTIVITY_DAYS) -> tuple[list[Count], dict[str, str]]:
    """The counts of the last `days` UTC days (today included) and the projects' paths, in one round trip."""
    now = time.time() if now is None else now
    today = datetime.fromtimestamp(now, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    starts = [today - timedelta(days=back) for back in range(days)]
    pipe = conn.pipeline(transaction=False)
    for start in starts:
        pipe.hgetall(keys.activity_day(start.strftime("%Y-%m-%d")))
    pipe.hgetall(keys.ACTIVITY_PROJECTS)
    *hashes, names = pipe.execute()
    counts: list[Count] = []
    for start, fields in zip(starts, hashes):
        base = int(start.timestamp()) // 3600
        for raw, value in fields.items():
            parts = _text(raw).split("|")
            if len(parts) != 4 or not parts[0].isdigit():
                continue  # not ours: skip rather than fail the page
            hour, pid, decision, kind = parts
            counts.append(Count(base + int(hour), pid, decision, kind, int(value)))
    return counts, {_text(k): _text(v) for k, v in names.items()}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
