"""Which image tags a branch owns, and which must never be deleted: pure rules, no I/O.

Everything here takes plain values (names, SHAs, templates) and returns plain values,
so every rule has a table-driven test. The worker gathers the facts (live branches,
git tags, remembered pipelines) and asks `plan()` what to do.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from typing import Iterable, Mapping

ZERO_SHA = "0" * 40
SHA_RE = re.compile(r"[0-9a-f]{40}")
# Docker's tag grammar (distribution/reference): a word character first, then up to 127 more.
DOCKER_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

# latest, stable, and release-like tags: v1, v1.2.0, 1.2, 1.2.3-rc1, v2.0.0+build.5.
# A plain number without a dot (12345678) is not covered: it may be a short SHA.
DEFAULT_PROTECTED_TAGS = (
    r"latest|stable|v\d+(\.\d+)*([-+][0-9A-Za-z.-]+)?|\d+(\.\d+)+([-+][0-9A-Za-z.-]+)?"
)
DEFAULT_BRANCH_TAGS = ("{ref_slug}",)
DEFAULT_COMMIT_TAGS = ("{sha}", "{short_sha}")

BRANCH_FIELDS = frozenset({"ref_slug", "ref"})
COMMIT_FIELDS = frozenset({"sha", "short_sha"})
MAX_BRANCH_LENGTH = 255


class RuleError(ValueError):
    """A template, pattern or name that the rules cannot work with."""


def ref_slug(ref: str) -> str:
    """GitLab's CI_COMMIT_REF_SLUG: lower-case, non-alphanumerics to '-', 63 chars, trim '-'."""
    slug = re.sub(r"[^a-z0-9]", "-", ref.lower())[:63]
    return slug.strip("-")


def is_docker_tag(name: str) -> bool:
    return bool(DOCKER_TAG_RE.fullmatch(name))


def is_sha(value: object) -> bool:
    return isinstance(value, str) and bool(SHA_RE.fullmatch(value)) and value != ZERO_SHA


def check_branch_name(branch: object) -> str:
    """Return the branch name if it is one GitLab could have sent, else raise RuleError."""
    if not isinstance(branch, str) or not branch:
        raise RuleError("branch must be a non-empty string")
    if len(branch) > MAX_BRANCH_LENGTH:
        raise RuleError(f"branch name is longer than {MAX_BRANCH_LENGTH} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in branch):
        raise RuleError("branch name contains control characters")
    return branch


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


def render_branch_tags(branch: str, templates: Iterable[str]) -> set[str]:
    """Every name the branch templates give for a branch, valid Docker tags or not."""
    values = {"ref_slug": ref_slug(branch), "ref": branch}
    return {template.format_map(values) for template in templates}


def branch_tags(branch: str, templates: Iterable[str]) -> set[str]:
    """The tag names a branch's pipelines can have given their images."""
    return {name for name in render_branch_tags(branch, templates) if is_docker_tag(name)}


def commit_tags(sha: str, templates: Iterable[str]) -> set[str]:
    values = {"sha": sha, "short_sha": sha[:8]}
    return {name for name in (t.format_map(values) for t in templates) if is_docker_tag(name)}


@dataclass(frozen=True)
class Decision:
    """What to do with one tag name, and why."""

    tag: str
    delete: bool
    reason: str
    kind: str  # "branch" (rendered from the branch name) or "commit" (from a SHA)


@dataclass(frozen=True)
class Facts:
    """Everything the worker learned about the project, as plain values.

    live_branches: every branch that exists now (name -> head SHA), the cleaned one excluded.
    live_tags: git tags (name -> SHA).
    pinned_shas: SHAs that must keep their tags, with the reason (head of the target branch, ...).
    other_refs: for SHAs of the branch, the other refs a pipeline built them on.
    """

    branch: str
    shas: frozenset[str]
    default_branch: str | None = None
    live_branches: Mapping[str, str] = field(default_factory=dict)
    live_tags: Mapping[str, str] = field(default_factory=dict)
    pinned_shas: Mapping[str, str] = field(default_factory=dict)
    other_refs: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """The settings that shape ownership and protection."""

    branch_templates: tuple[str, ...] = DEFAULT_BRANCH_TAGS
    commit_templates: tuple[str, ...] = DEFAULT_COMMIT_TAGS
    protected: re.Pattern[str] = field(default_factory=lambda: re.compile(DEFAULT_PROTECTED_TAGS))


def owned_candidates(facts: Facts, policy: Policy) -> dict[str, str]:
    """Tag names the cleaned branch's pipelines may have pushed: name -> kind."""
    candidates: dict[str, str] = {}
    for sha in sorted(s for s in facts.shas if is_sha(s)):
        for name in commit_tags(sha, policy.commit_templates):
            candidates.setdefault(name, "commit")
    # Branch tags win over commit tags for the kind: they are what people recognise.
    for name in render_branch_tags(facts.branch, policy.branch_templates):
        candidates[name] = "branch"
    return candidates


def live_owners(facts: Facts, policy: Policy) -> dict[str, str]:
    """Tag names that some live ref may own: name -> why it is kept."""
    owners: dict[str, str] = {}

    def claim(names: Iterable[str], why: str) -> None:
        for name in names:
            owners.setdefault(name, why)

    if facts.default_branch:
        claim(branch_tags(facts.default_branch, policy.branch_templates),
              f"tag of the default branch {facts.default_branch!r}")
    for sha, why in facts.pinned_shas.items():
        claim(commit_tags(sha, policy.commit_templates), why)
    for name, sha in facts.live_branches.items():
        if name == facts.branch:
            continue
        claim(branch_tags(name, policy.branch_templates), f"also the tag of live branch {name!r}")
        if is_sha(sha):
            claim(commit_tags(sha, policy.commit_templates), f"commit is the head of live branch {name!r}")
    for name, sha in facts.live_tags.items():
        if is_sha(sha):
            claim(commit_tags(sha, policy.commit_templates), f"commit is tagged {name!r}")
    for sha, refs in facts.other_refs.items():
        others = sorted(r for r in refs if r != f"branch:{facts.branch}")
        if others and is_sha(sha):
            claim(commit_tags(sha, policy.commit_templates),
                  f"commit was also built on {', '.join(others[:3])}")
    return owners


def plan(facts: Facts, policy: Policy) -> list[Decision]:
    """Decide every tag the branch may own: delete only what no live ref and no rule claims."""
    check_branch_name(facts.branch)
    owners = live_owners(facts, policy)
    decisions = []
    for name, kind in sorted(owned_candidates(facts, policy).items()):
        if not is_docker_tag(name):
            decisions.append(Decision(name, False, "not a valid Docker tag", kind))
        elif policy.protected.fullmatch(name):
            decisions.append(Decision(name, False, "protected by PROTECTED_TAGS", kind))
        elif name in owners:
            decisions.append(Decision(name, False, owners[name], kind))
        else:
            decisions.append(Decision(name, True, f"owned by branch {facts.branch!r}", kind))
    return decisions
