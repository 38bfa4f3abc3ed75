"""The record of one cleanup: every decision, logged as it is made and returned as the job's result.

`tagsweeper cleanup` and `tagsweeper sweep` print it with workers/cli/render.py.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from workers.rules import code_of

log = logging.getLogger("tagsweeper.decisions")

# deleted: gone now; would_delete: dry run; absent: nothing by that name in that repository;
# kept: a rule or GitLab protected it; failed: could not be deleted (the job retries).
OUTCOMES = ("deleted", "would_delete", "absent", "kept", "failed")


@dataclass
class Report:
    project_id: int | str
    branch: str
    trigger: str
    dry_run: bool
    delivery: str | None = None
    project_path: str | None = None
    skipped: str | None = None
    repositories: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    # Called with every decision (context included) as it is made: the audit trail, metrics.
    sinks: list[Callable[[dict[str, Any]], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def context(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "project": self.project_path, "branch": self.branch,
                "trigger": self.trigger, "delivery": self.delivery, "dry_run": self.dry_run}

    def add(self, outcome: str, tag: str, reason: str, repository: str | None = None,
            digest: str | None = None) -> None:
        """Record one decision. `reason` is a rules.Reason: the entry keeps its text and its code."""
        assert outcome in OUTCOMES, outcome
        entry = {"repository": repository, "tag": tag, "decision": outcome, "reason": str(reason),
                 "code": code_of(reason)}
        if digest:
            entry["digest"] = digest
        with self._lock:
            self.decisions.append(entry)
        level = logging.WARNING if outcome == "failed" else logging.INFO
        log.log(level, "tag %s", outcome, extra={**self.context(), **entry})
        event = {"time": time.time(), **self.context(), **entry}
        for sink in self.sinks:
            sink(event)

    def skip(self, reason: str) -> None:
        self.skipped = reason
        log.info("cleanup skipped", extra={**self.context(), "reason": reason})

    def count(self, outcome: str) -> int:
        return sum(1 for d in self.decisions if d["decision"] == outcome)

    def failures(self) -> list[dict[str, Any]]:
        return [d for d in self.decisions if d["decision"] == "failed"]

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.context(),
            "skipped": self.skipped,
            "repositories": list(self.repositories),
            "summary": {outcome: self.count(outcome) for outcome in OUTCOMES},
            "decisions": sorted(self.decisions, key=lambda d: (d["repository"] or "", d["tag"])),
        }
