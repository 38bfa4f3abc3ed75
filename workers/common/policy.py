"""The tag policy as settings give it: which templates name a branch's and a commit's tags, and
which tags are protected. Pure code, no I/O.

Parsed here so that reading the settings needs nothing from the rules; `workers.rules`
applies the policy (and re-exports these names: `rules.Policy` is this `Policy`).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

# latest, stable, and release-like tags: v1, v1.2.0, 1.2, 1.2.3-rc1, v2.0.0+build.5.
# A plain number without a dot (12345678) is not covered: it may be a short SHA.
DEFAULT_PROTECTED_TAGS = (
    r"latest|stable|v\d+(\.\d+)*([-+][0-9A-Za-z.-]+)?|\d+(\.\d+)+([-+][0-9A-Za-z.-]+)?"
)
DEFAULT_BRANCH_TAGS = ("{ref_slug}",)
DEFAULT_COMMIT_TAGS = ("{sha}", "{short_sha}")

BRANCH_FIELDS = frozenset({"ref_slug", "ref"})
COMMIT_FIELDS = frozenset({"sha", "short_sha"})


class RuleError(ValueError):
    """A template, pattern or name that the rules cannot work with."""


def parse_templates(text: str, allowed: frozenset[str], setting: str) -> tuple[str, ...]:
    """Split a comma-separated template list and check that it only uses known fields."""
    templates = tuple(t.strip() for t in text.split(",") if t.strip())
    if not templates:
        raise RuleError(f"{setting} is empty: give at least one template")
    for template in templates:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
        except ValueError as exc:
            raise RuleError(f"{setting}: template {template!r} is malformed: {exc}") from None
        unknown = fields - allowed
        if unknown or "" in fields:
            names = ", ".join("{%s}" % f for f in sorted(allowed))
            raise RuleError(f"{setting}: template {template!r} uses unknown fields; allowed: {names}")
    return templates


def compile_protected(pattern: str) -> re.Pattern[str]:
    """PROTECTED_TAGS is matched against the whole tag name, like GitLab's cleanup policies."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise RuleError(f"PROTECTED_TAGS is not a valid regular expression: {exc}") from None


@dataclass(frozen=True)
class Policy:
    """The settings that shape ownership and protection."""

    branch_templates: tuple[str, ...] = DEFAULT_BRANCH_TAGS
    commit_templates: tuple[str, ...] = DEFAULT_COMMIT_TAGS
    protected: re.Pattern[str] = field(default_factory=lambda: re.compile(DEFAULT_PROTECTED_TAGS))
