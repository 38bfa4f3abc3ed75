"""ALLOWED_PROJECTS: which projects tagsweeper may clean. Pure code, shared by web and worker.

An entry is a numeric project id or a path. A path allows the project of that path and
everything below it: `acme/shop` allows project acme/shop, `acme` (or `acme/`) every
project of group acme and of its subgroups. Paths compare case-insensitively, as GitLab
routes them. An empty list allows every project (the behaviour before the setting).

The web process matches what a delivery *claims* (its project id and path). A path in a
payload is only a claim: whoever holds the webhook secret can write any path next to any
id. So the worker matches again, with the path GitLab itself gives for the project id it
is about to clean, and that is the check that counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.common.projects import is_project_path, parse_project


@dataclass(frozen=True)
class AllowList:
    ids: frozenset[int] = frozenset()
    paths: tuple[str, ...] = ()  # lower-case, without leading or trailing '/'

    @property
    def restricts(self) -> bool:
        return bool(self.ids or self.paths)

    def allows(self, project_id: Any, path: Any = None) -> bool:
        """True when the id is listed or the path is (or is below) a listed path."""
        if not self.restricts:
            return True
        if isinstance(project_id, int) and not isinstance(project_id, bool) and project_id in self.ids:
            return True
        if not is_project_path(path):
            return False  # nothing to match on (or a path GitLab can't have): not allowed
        lowered = path.lower()
        return any(lowered == entry or lowered.startswith(entry + "/") for entry in self.paths)

    def describe(self) -> str:
        return ", ".join([str(i) for i in sorted(self.ids)] + [p + "/" for p in self.paths]) or "(all)"


def parse(value: Any, setting: str = "ALLOWED_PROJECTS") -> AllowList:
    """Comma-separated ids and paths (or a list of them); ValueError names the bad entry."""
    if value is None:
        items: list[Any] = []
    elif isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        raise ValueError(f"{setting} must be comma-separated project ids or paths")
    ids: set[int] = set()
    paths: list[str] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            item = str(item)
        if not isinstance(item, str):
            raise ValueError(f"{setting} must be comma-separated project ids or paths")
        try:
            entry = parse_project(item)
        except ValueError:
            continue  # an empty entry
        if isinstance(entry, int):
            if entry <= 0:
                raise ValueError(f"{setting}: {str(entry)!r} is not a project id (ids start at 1)")
            ids.add(entry)
        elif is_project_path(entry):
            if entry.lower() not in paths:
                paths.append(entry.lower())
        else:
            raise ValueError(f"{setting}: {entry[:80]!r} is neither a project id nor a path like "
                             "group/project or group/ (letters, digits, '_', '-', '.')")
    return AllowList(frozenset(ids), tuple(paths))
