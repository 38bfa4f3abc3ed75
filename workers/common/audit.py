"""The audit trail: every tag decision and every skipped cleanup, in a bounded Redis stream.

Entries are appended to the stream `tagsweeper:audit` with `XADD MAXLEN ~ AUDIT_MAX_ENTRIES`
(default 100000), so the trail never outgrows Redis: "~" lets Redis trim whole stream nodes,
which keeps at most one node (100 entries by default) beyond the bound. A stream entry's id
is the time Redis stored it, in milliseconds, so "since" is a range read, not a scan.

`record()` and `read()` are the API (the dashboard and `tagsweeper status` read through it);
`attach()` makes a cleanup's Report write every decision here, together with the
`tags_total` counter of workers/common/metrics.py, in one round trip per decision.
`tagsweeper audit` (added to the CLI by `add_commands`) prints the trail.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import redis

from workers.common import metrics
from workers.common.settings import say_redis_unreachable, whole_number

log = logging.getLogger("tagsweeper.audit")

STREAM = "tagsweeper:audit"
DEFAULT_MAX_ENTRIES = 100_000
MAX_VALUE_CHARS = 1000  # a reason is a sentence or an error message; bound what one entry can cost

# The fields of an entry, in the order people read them; read() returns every one (None when unset).
FIELDS = ("time", "project_id", "project", "branch", "trigger", "delivery", "job_id", "dry_run",
          "repository", "tag", "digest", "decision", "reason", "reason_kind")

# Credentials that could ride along in an error message: registry JWTs, GitLab tokens, bearer headers.
_CREDENTIALS = re.compile(
    r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|\bgl(?:pat|dt|rt|ptt|oas|cbt|soat|ffct|imt|agent)-[A-Za-z0-9_-]{8,}"
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"
)


def parse_max_entries(env: Mapping[str, str] | None = None) -> int:
    """AUDIT_MAX_ENTRIES, read when a job or command starts."""
    return whole_number(os.environ if env is None else env, "AUDIT_MAX_ENTRIES", DEFAULT_MAX_ENTRIES, minimum=1)


# Names, not prose: only known secrets are blanked in them (a tag may look like anything).
_IDENTIFIERS = frozenset({"project", "branch", "repository", "tag", "digest", "delivery", "job_id"})


def scrub(text: str, secrets: Iterable[str] = (), *, patterns: bool = True) -> str:
    """The text with known secrets, and (with `patterns`) anything shaped like a credential, as ***."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return _CREDENTIALS.sub("***", text) if patterns else text


def _encode(entry: Mapping[str, Any], secrets: Iterable[str]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in entry.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = scrub(str(value), secrets, patterns=name not in _IDENTIFIERS)[:MAX_VALUE_CHARS]
        fields[str(name)] = text
    return fields


def _decode(entry_id: bytes | str, raw: Mapping[bytes | str, bytes | str]) -> dict[str, Any]:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    entry: dict[str, Any] = {"id": _text(entry_id)}
    for name in FIELDS:
        entry[name] = fields.pop(name, None)
    entry.update(fields)  # fields a newer writer added
    if entry["time"] is not None:
        entry["time"] = float(entry["time"])
    if entry["project_id"] is not None and entry["project_id"].isdigit():
        entry["project_id"] = int(entry["project_id"])
    if entry["dry_run"] is not None:
        entry["dry_run"] = entry["dry_run"] == "true"
    return entry


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _add(pipe: Any, entry: Mapping[str, Any], secrets: Iterable[str], limit: int) -> None:
    entry = dict(entry)
    entry.setdefault("time", time.time())
    entry.setdefault("reason_kind", metrics.reason_kind(entry.get("decision") or "", entry.get("code")))
    pipe.xadd(STREAM, _encode(entry, secrets), maxlen=limit, approximate=True)


def record(conn: redis.Redis, entry: dict, *, secrets: Iterable[str] = (), max_entries: int | None = None) -> None:
    """Append one entry (the FIELDS; None values are left out) to the trail.

    `time` defaults to now and `reason_kind` to the one metrics derives from the decision and its `code`.
    Known `secrets`, and anything shaped like a token, are replaced by *** first.
    """
    limit = max_entries if max_entries is not None else parse_max_entries()
    _add(conn, entry, secrets, limit)


def read(conn: redis.Redis, *, project: int | str | None = None, since: float | None = None,
         limit: int = 100) -> list[dict]:
    """Entries newest first, at most `limit`: of `project` (its id or its path) and since unix time `since`.

    Each entry has every name of FIELDS (None when unset) and `id`, the stream entry's id.
    """
    if limit <= 0:
        return []
    lowest = f"{max(0, int(since * 1000))}-0" if since is not None else "-"
    wanted = _matcher(project)
    chunk = limit if wanted is None else max(limit, 500)  # filtering: read ahead in bigger steps
    highest = "+"
    found: list[dict] = []
    while True:
        batch = conn.xrevrange(STREAM, max=highest, min=lowest, count=chunk)
        for entry_id, raw in batch:
            entry = _decode(entry_id, raw)
            if wanted is None or wanted(entry):
                found.append(entry)
                if len(found) >= limit:
                    return found
        if len(batch) < chunk:
            return found
        highest = "(" + _text(batch[-1][0])  # exclusive: continue below the last one read


def _matcher(project: int | str | None):
    if project is None or (isinstance(project, str) and not project.strip()):
        return None
    if isinstance(project, int) or str(project).strip().isdigit():
        wanted_id = int(project)
        return lambda e: e["project_id"] == wanted_id
    wanted_path = str(project).strip().strip("/").casefold()
    return lambda e: (e["project"] or "").casefold() == wanted_path


# --- the cleanup's sink ----------------------------------------------------------------------

class Sink:
    """Called by a Report with each decision: the audit entry and the tags_total count, one round trip."""

    def __init__(self, conn: redis.Redis, *, job_id: str | None = None, secrets: Iterable[str] = (),
                 max_entries: int = DEFAULT_MAX_ENTRIES):
        self.conn = conn
        self.job_id = job_id
        self.secrets = tuple(s for s in secrets if s)
        self.max_entries = max_entries

    def __call__(self, event: dict[str, Any]) -> None:
        entry = {**event, "job_id": self.job_id,
                 "reason_kind": metrics.reason_kind(event["decision"], event.get("code"))}
        pipe = self.conn.pipeline(transaction=False)
        _add(pipe, entry, self.secrets, self.max_entries)
        metrics.incr(pipe, metrics.TAGS, decision=entry["decision"], reason_kind=entry["reason_kind"])
        self._send(pipe, entry)

    def skipped(self, report: Any) -> None:
        """Audit a cleanup that looked again and decided to touch nothing."""
        entry = {"time": time.time(), **report.context(), "job_id": self.job_id, "decision": "skipped",
                 "tag": None, "repository": None, "reason": report.skipped, "reason_kind": "skipped"}
        pipe = self.conn.pipeline(transaction=False)
        _add(pipe, entry, self.secrets, self.max_entries)
        self._send(pipe, entry)

    def _send(self, pipe: Any, entry: dict[str, Any]) -> None:
        try:
            pipe.execute()
        except redis.RedisError as exc:
            # The deletion happened either way: the decision log line and the report still tell it.
            log.warning("audit entry not written", extra={"decision": entry.get("decision"),
                                                          "error": type(exc).__name__})


def attach(report: Any, conn: redis.Redis, settings: Any) -> Sink:
    """Make `report` audit and count every decision; return the sink (for `skipped`)."""
    from rq import get_current_job

    job = get_current_job()
    sink = Sink(conn, job_id=job.id if job is not None else None, secrets=(settings.gitlab_token,),
                max_entries=parse_max_entries())
    report.sinks.append(sink)
    return sink


# --- `tagsweeper audit` ----------------------------------------------------------------------

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


def _project(value: str) -> int | str:
    value = value.strip().strip("/")
    if not value:
        raise argparse.ArgumentTypeError("give a numeric project id or a path like group/project")
    return int(value) if value.isdigit() else value


def _limit(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give a whole number of entries, at least 1")
    return n


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("audit", help="show the audit trail: every tag decision, newest first")
    p.add_argument("--project", type=_project, help="project id or path (group/project)")
    p.add_argument("--since", type=parse_when, metavar="WHEN",
                   help="only entries since WHEN: 2026-11-20, 2026-11-20T10:00, or an age: 30m, 2h, 3d")
    p.add_argument("--limit", type=_limit, default=100, help="at most this many entries (default 100)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(handler=show)


def show(args: argparse.Namespace, settings: Any) -> int:
    """`tagsweeper audit`: print the trail as a table or JSON lines."""
    conn = redis.Redis.from_url(settings.redis_url)
    try:
        entries = read(conn, project=args.project, since=args.since, limit=args.limit)
    except redis.RedisError as exc:
        return say_redis_unreachable(exc)
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
