"""How a project (or a group) is named: by its numeric id or by its path. Pure code.

`parse_project` is the one parser of that name, for the commands' --project and --group,
SWEEP_PROJECTS, ALLOWED_PROJECTS, the projects the schedule sweeps, and the audit trail's
filter (`tagsweeper audit --project`, `GET /audit?project=`). `is_project_path` says whether
a path is one GitLab could have.
"""

from __future__ import annotations

import re
from typing import Any

PROJECT_HINT = "a numeric project id or a path like group/project"

# GitLab paths are ASCII: letters, digits, '_', '-', '.', not starting with '-' (and, below,
# no segment of dots only).
_SEGMENT = r"[A-Za-z0-9_.][A-Za-z0-9_.-]*"
_PATH_RE = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT})*")


def parse_project(value: Any) -> int | str:
    """A project (or group) as a person or a setting names it: its numeric id or its path.

    Whitespace and leading or trailing '/' are dropped; ASCII digits are an id (str.isdigit()
    would also take '١٢', and int() accept it), anything else a path, as written (GitLab says
    whether it exists). ValueError when nothing is left.
    """
    text = str(value).strip().strip("/")
    if not text:
        raise ValueError(f"give {PROJECT_HINT}")
    return int(text) if text.isascii() and text.isdigit() else text


def is_project_path(value: object) -> bool:
    """A namespace path GitLab could have: ASCII segments, none of them '.' or '..'."""
    if not isinstance(value, str) or not _PATH_RE.fullmatch(value):
        return False
    return not any(set(segment) == {"."} for segment in value.split("/"))
