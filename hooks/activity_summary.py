"""Pure: what the activity page shows, computed from audit entries and hourly counts. No I/O.

- `project_windows`: per project, tags deleted / kept (by reason class) / failed over the last
  day, week and month, and deletions per UTC day for the chart (from workers.common.activity's counts);
- `group_runs`: audit entries grouped into runs (a cleanup, a sweep, a retention pass, a re-check),
  `run_id`/`parse_run_id` name one so its page can find its decisions again;
- `in_use`: the tags whose latest decision is "kept, an environment runs it";
- `bars`: the chart's geometry; `search_terms`: a search box's text, checked.

A run is the decisions sharing (job id, or else delivery; project; branch; trigger): a job keeps its
id across RQ's retries, so a retried cleanup is one run, and a re-check or a replay with --force is
a new one. Entries with neither (a cleanup run by hand without RQ), and a retention pass (whose job
id each pass of the branch reuses), are one run while they come less than RUN_GAP apart.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

HOUR = 3600
DAY = 86400
WINDOWS = (("day", 24), ("week", 7 * 24), ("month", 30 * 24))  # name, hours back from the hour in progress
CHART_DAYS = 30
RUN_GAP = 300  # seconds between two entries of one anonymous run (or retention pass) at most
# Triggers whose job id is the same for every run: each retention pass of a branch is job
# retire-<project>-<branch digest> again. Their runs, like anonymous ones, end at a quiet spell.
REUSED_IDS = frozenset({"superseded"})
# A run may have entries older than what was read: its page reads this far below the oldest one seen
# (RQ's retries of a cleanup come within CLEANUP_RETRY_INTERVALS, 1.4 hours by default).
PARTIAL_MARGIN = 6 * HOUR
MAX_SEARCH = 200

# Why a tag was kept, in words an operator reads; every kept reason_kind of workers.common.metrics maps
# here (one added there and not here shows as "other", and tests/test_activity.py says so).
REASON_CLASSES = {
    "deployed": "in use",
    "protected": "protected", "default_branch": "protected", "git_tag": "protected",
    "live_branch": "live", "live_head": "live", "open_mr": "live", "fast_forward": "live", "other_ref": "live",
    "retention": "newest",  # a retention pass keeps a live branch's newest commits (and young ones)
    "sha_like": "unclear", "invalid_tag": "unclear", "gitlab_403": "unclear", "changed": "unclear",
    "other": "unclear",
}
CLASSES = ("in use", "protected", "live", "newest", "unclear", "other")
CLASS_HELP = {
    "in use": "a live environment runs it, or may roll back to it",
    "protected": "PROTECTED_TAGS, the default branch or a git tag",
    "live": "a live branch, an open merge request or another ref still builds on it",
    "newest": "one of a live branch's newest commits, which a retention pass keeps",
    "unclear": "not provably the branch's own (a SHA-like name, GitLab refused, it changed)",
    "other": "another reason",
}
RUN_KINDS = {"sweep": "sweep", "superseded": "retention pass"}


def reason_class(reason_kind: str | None) -> str:
    return REASON_CLASSES.get(reason_kind or "", "other")


# --- counts ------------------------------------------------------------------------------------

@dataclass
class Tally:
    deleted: int = 0
    would_delete: int = 0
    absent: int = 0
    failed: int = 0
    skipped: int = 0
    kept: dict[str, int] = field(default_factory=dict)

    @property
    def kept_total(self) -> int:
        return sum(self.kept.values())

    def add(self, decision: str, reason_kind: str, n: int) -> None:
        if decision == "kept":
            cls = reason_class(reason_kind)
            self.kept[cls] = self.kept.get(cls, 0) + n
        elif decision in ("deleted", "would_delete", "absent", "failed", "skipped"):
            setattr(self, decision, getattr(self, decision) + n)


@dataclass
class ProjectActivity:
    project_id: str
    path: str | None
    windows: dict[str, Tally]
    per_day: list[tuple[str, int]]  # (YYYY-MM-DD, tags deleted), oldest first, CHART_DAYS of them

    @property
    def name(self) -> str:
        return self.path or f"project {self.project_id}"


def project_windows(counts: Iterable[Any], paths: Mapping[str, str], now: float) -> list[ProjectActivity]:
    """Per project (most deletions this month first): its windows' tallies and deletions per day.

    `counts` are workers.common.activity.Count-likes (hour, project_id, decision, reason_kind, n)."""
    now_hour = int(now) // HOUR
    today = int(now) // DAY
    first_day = today - CHART_DAYS + 1
    # Summed first by (project, decision, kind, the narrowest window the hour is in): a month of
    # hourly counts is tens of thousands of rows, the sums a few hundred.
    sums: dict[tuple[str, str, str, int], int] = {}
    per_day: dict[tuple[str, int], int] = {}
    (_, day_hours), (_, week_hours), (_, month_hours) = WINDOWS
    for hour, pid, decision, kind, n in counts:
        back = now_hour - hour
        if back < 0:
            continue  # a clock ahead of ours: not "the last day" yet
        if back < day_hours:
            narrowest = 0
        elif back < week_hours:
            narrowest = 1
        elif back < month_hours:
            narrowest = 2
        else:
            continue
        key = (pid, decision, kind, narrowest)
        sums[key] = sums.get(key, 0) + n
        if decision == "deleted":
            day = hour * HOUR // DAY - first_day
            if 0 <= day < CHART_DAYS:
                per_day[(pid, day)] = per_day.get((pid, day), 0) + n
    projects: dict[str, ProjectActivity] = {}
    for (pid, decision, kind, narrowest), n in sums.items():
        p = projects.get(pid)
        if p is None:
            p = projects[pid] = ProjectActivity(pid, paths.get(pid), {name: Tally() for name, _ in WINDOWS},
                                                [(_date((first_day + d) * DAY), 0) for d in range(CHART_DAYS)])
        for name, _ in WINDOWS[narrowest:]:  # an hour of the last day is in the week and the month too
            p.windows[name].add(decision, kind, n)
    for (pid, day), n in per_day.items():
        p = projects[pid]
        p.per_day[day] = (p.per_day[day][0], n)
    return sorted(projects.values(), key=lambda p: (-p.windows["month"].deleted, p.name))


def _date(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%d")


def total(projects: Sequence[ProjectActivity], window: str) -> Tally:
    out = Tally()
    for p in projects:
        t = p.windows[window]
        for name in ("deleted", "would_delete", "absent", "failed", "skipped"):
            setattr(out, name, getattr(out, name) + getattr(t, name))
        for cls, n in t.kept.items():
            out.kept[cls] = out.kept.get(cls, 0) + n
    return out


# --- runs --------------------------------------------------------------------------------------

def run_key(entry: Mapping[str, Any]) -> tuple[str, str, str, str]:
    ident = entry.get("job_id") or entry.get("delivery") or ""
    return (str(ident), str(entry.get("project_id") or ""), entry.get("branch") or "", entry.get("trigger") or "")


def key_hash(key: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join(key).encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class Run:
    key: tuple[str, str, str, str]
    entries: list[dict] = field(default_factory=list)  # newest first
    partial: bool = False  # its oldest entries may be older than what was read

    @property
    def newest(self) -> dict:
        return self.entries[0]

    @property
    def oldest(self) -> dict:
        return self.entries[-1]

    @property
    def anonymous(self) -> bool:
        return not self.key[0]

    @property
    def id(self) -> str:
        oldest = floor_id(self.oldest["id"]) if self.partial else self.oldest["id"]
        return f"{self.newest['id']}.{oldest}.{key_hash(self.key)}"

    @property
    def kind(self) -> str:
        if self.key[3] in RUN_KINDS:
            return RUN_KINDS[self.key[3]]
        return "re-check" if self.key[0].startswith("recheck-") else "cleanup"

    @property
    def project(self) -> str:
        return self.newest.get("project") or f"project {self.key[1]}"

    @property
    def tally(self) -> Tally:
        t = Tally()
        for e in self.entries:
            t.add(e.get("decision") or "", e.get("reason_kind") or "", 1)
        return t

    @property
    def skipped(self) -> str | None:
        return next((e.get("reason") for e in self.entries if e.get("decision") == "skipped"), None)

    @property
    def dry_run(self) -> bool:
        return any(e.get("dry_run") for e in self.entries)


def group_runs(entries: Sequence[dict], *, window_full: bool = False, gap: float = RUN_GAP) -> list[Run]:
    """Entries (newest first, as read) grouped into runs, newest run first.

    `window_full`: more entries exist below the oldest one given; a run that reaches down to
    within `gap` of it may have older decisions and is marked partial."""
    runs: list[Run] = []
    open_runs: dict[tuple, Run] = {}
    for e in entries:
        key = run_key(e)
        run = open_runs.get(key)
        if run is not None and (run.anonymous or key[3] in REUSED_IDS) and _time(run.oldest) - _time(e) > gap:
            run = None  # a quiet spell: an earlier run by hand, or an earlier retention pass
        if run is None:
            run = open_runs[key] = Run(key)
            runs.append(run)
        run.entries.append(e)
    if window_full and entries:
        floor = _time(entries[-1]) + gap
        for run in runs:
            run.partial = _time(run.oldest) <= floor
    return runs


def floor_id(stream_id: str, margin: float = PARTIAL_MARGIN) -> str:
    """The stream id `margin` seconds below `stream_id`: where a possibly partial run's page starts reading."""
    ms = int(stream_id.split("-")[0])
    return f"{max(0, ms - int(margin * 1000))}-0"


def _time(entry: Mapping[str, Any]) -> float:
    return float(entry.get("time") or 0)


_STREAM_ID = r"\d{1,20}-\d{1,20}"
_RUN_ID = re.compile(rf"({_STREAM_ID})\.({_STREAM_ID})\.([0-9a-f]{{16}})")


def parse_run_id(text: str) -> tuple[str, str, str]:
    """(newest stream id, oldest stream id, key hash); ValueError when malformed."""
    m = _RUN_ID.fullmatch(text or "")
    if not m:
        raise ValueError("a run id looks like 1733350000000-0.1733349990000-0.0123456789abcdef")
    newest, oldest, digest = m.groups()
    if _id_tuple(oldest) > _id_tuple(newest):
        raise ValueError("a run id's second stream id is not after its first")
    return newest, oldest, digest


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, seq = stream_id.split("-")
    return int(ms), int(seq)


def pick_run(entries: Sequence[dict], anchor_id: str, digest: str) -> Run | None:
    """The run of `digest` that holds the entry `anchor_id`, among entries read newest first."""
    mine = [e for e in entries if key_hash(run_key(e)) == digest]
    return next((r for r in group_runs(mine) if any(e["id"] == anchor_id for e in r.entries)), None)


def check_stream_id(text: str) -> str:
    """`text` if it is a stream entry id (`<ms>-<seq>`), else ValueError."""
    if not re.fullmatch(_STREAM_ID, text or ""):
        raise ValueError("at must be an audit entry id like 1733350000000-0")
    return text


# --- in use ------------------------------------------------------------------------------------

def in_use(entries: Iterable[dict]) -> list[dict]:
    """Tags whose newest decision (entries newest first) is "kept" because an environment uses them."""
    seen: set[tuple] = set()
    found = []
    for e in entries:
        if not e.get("tag") or e.get("decision") == "skipped":
            continue
        where = (e.get("project_id"), e.get("repository"), e.get("tag"))
        if where in seen:
            continue
        seen.add(where)
        if e.get("decision") == "kept" and reason_class(e.get("reason_kind")) == "in use":
            found.append(e)
    return found


# --- the chart ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: int
    label: str


def bars(values: Sequence[tuple[str, int]], *, width: float = 300, height: float = 60,
         gap: float = 1) -> tuple[list[Bar], int]:
    """A bar per (label, value), scaled so the largest fills `height`; and that largest value."""
    top = max((v for _, v in values), default=0)
    if not values:
        return [], 0
    step = width / len(values)
    out = []
    for i, (label, value) in enumerate(values):
        h = round(height * value / top, 2) if top else 0
        if value and h < 1:
            h = 1  # one deletion still shows
        out.append(Bar(round(i * step, 2), round(height - h, 2), round(max(step - gap, 1), 2), h, value, label))
    return out, top


# --- search ------------------------------------------------------------------------------------

def search_terms(raw: str | None) -> str | None:
    """The search text, trimmed; None when absent or blank; ValueError when it cannot be a name."""
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if len(text) > MAX_SEARCH:
        raise ValueError(f"search text is longer than {MAX_SEARCH} characters")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise ValueError("search text contains control characters")
    return text


def matches(entry: Mapping[str, Any], text: str) -> bool:
    """Whether the search text is part of the entry's project (path or id), branch or tag, case-insensitive."""
    needle = text.casefold()
    if str(entry.get("project_id") or "") == text:
        return True
    return any(needle in (entry.get(name) or "").casefold() for name in ("project", "branch", "tag"))
