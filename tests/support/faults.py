"""Fault injection shared by the GitLab emulator and the registry proxy: what a fault is, which one a request gets."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence


@dataclass
class Fault:
    method: str  # or "*" for any
    path_regex: re.Pattern
    status: int | None  # None: only the delay, then the real answer
    times: int  # -1: no limit
    headers: dict
    delay: float
    drop: bool | str = False  # True: close without answering; "after": do it (forward it), then close
    body: dict | None = None  # the emulator's JSON answer with `status`

    def describe(self) -> str:
        if self.drop == "after":
            return "drop after"
        if self.drop:
            return "drop"
        if self.status is None:
            return f"hang {self.delay:g}s"
        return str(self.status) + (f" after {self.delay:g}s" if self.delay else "")


def take(faults: Sequence[Fault], method: str, path: str) -> Fault | None:
    """The first fault matching the request, counting one use of it (times=-1: no limit).
    The caller holds the lock guarding `faults`."""
    for fault in faults:
        if fault.times != 0 and fault.method in ("*", method) and fault.path_regex.search(path):
            if fault.times > 0:
                fault.times -= 1
            return fault
    return None
