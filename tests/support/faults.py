"""Fault injection shared by the GitLab emulator and the registry proxy: which fault a request gets."""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar


class Matchable(Protocol):
    method: str
    path_regex: object
    times: int


F = TypeVar("F", bound=Matchable)


def take(faults: Sequence[F], method: str, path: str) -> F | None:
    """The first fault matching the request, counting one use of it (times=-1: no limit).
    The caller holds the lock guarding `faults`."""
    for fault in faults:
        if fault.times != 0 and fault.method in ("*", method) and fault.path_regex.search(path):
            if fault.times > 0:
                fault.times -= 1
            return fault
    return None
