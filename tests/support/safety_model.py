"""The ground truth of the safety property: a GitLab project's history as a plain model.

Written from ../shared/reference/gitlab.md, never from workers/rules.py, so that the property
(tests/test_safety_property.py) checks the planner against an independent account of GitLab:
`Project` holds live branches with their histories, git tags, merge requests (`MergeRequest`,
merged the four ways GitLab merges) and every pipeline (`Pipeline`: which ref, which commit,
seen by pipeline memory or not, which image tags it pushed, as `.gitlab-ci.yml`'s defaults push
them). What is live at worker time (`branch_in_use`, `is_live`, `live_container`, ...), what the
worker skips (`skipped`, as cleanup.look_again) and the `Facts` cleanup.gather() builds
(`facts`) are read off the model. `ci_slug` is CI_COMMIT_REF_SLUG as GitLab states it.

The Hypothesis generator of such projects is tests/support/safety_generator.py; the checks of a
plan against the model are tests/support/safety_checks.py.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import hypothesis

from workers import rules
from workers.rules import Facts


# Hypothesis' coverage events and notes inside a property; nothing in a named example's test.
def event(text: str) -> None:
    if hypothesis.control.currently_in_test_context():
        hypothesis.event(text)


def note(text: str) -> None:
    if hypothesis.control.currently_in_test_context():
        hypothesis.note(text)


# --- ground truth, written from ../shared/reference/gitlab.md, not from rules.py ------------

DOCKER_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")   # gitlab.md "Tag names CI gives images"
PROTECTED = re.compile(rules.DEFAULT_PROTECTED_TAGS)              # the setting's default: config, not logic
MR_REF = re.compile(r"refs/merge-requests/(\d+)/(head|merge|train)")  # gitlab.md "Who built what"


def ci_slug(ref: str) -> str:
    """CI_COMMIT_REF_SLUG as gitlab.md states it: lower-case, non a-z0-9 to '-', cut to 63, trim '-'."""
    chars = ["-" if not ("a" <= ch <= "z" or "0" <= ch <= "9") else ch for ch in ref.lower()]
    slug = "".join(chars)[:63]
    while slug.startswith("-"):
        slug = slug[1:]
    while slug.endswith("-"):
        slug = slug[:-1]
    return slug


def pushable(name: str) -> bool:
    """`docker push` fails for anything else, so such a tag never reaches the registry."""
    return DOCKER_TAG.fullmatch(name) is not None


def sha_tags(sha: str) -> tuple[str, str]:
    return sha, sha[:8]  # CI_COMMIT_SHA, CI_COMMIT_SHORT_SHA


# --- the pools the generator draws from: small, so collisions are the rule, not the exception ----

SHA_POOL = (
    "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e",
    "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1",
    "deadbeef" + "0" * 31 + "1",
    "deadbeef" + "f" * 32,        # same CI_COMMIT_SHORT_SHA as the one above
    "cafebabe" + "1" * 32,        # short SHA equal to the branch name "cafebabe"
    "12345678" + "9" * 32,        # all-digit short SHA: not a release, not protected
    "0123abcd" * 5,
    "c" * 40,
)
# Merged-results pipelines run on a temporary merge commit (gitlab.md): no branch ever holds it.
TEMP_POOL = (
    "e0e0e0e0" + "5" * 32,
    "cccccccc" + "d" * 32,        # same short SHA as "c" * 40
)
BRANCH_NAMES = (
    "feature/a", "feature-a", "Feature_A", "FEATURE/A", "feature--a",   # four share the slug feature-a
    "x" * 62 + "/one", "x" * 62 + "-two", "x" * 70,                     # cut at 63: x*62, x*62, x*63
    "---",                                                               # slug "" is no tag
    "latest", "stable", "v1.2.0", "release/1.2", "release-1.2",         # protected or release-like
    "main", "Main", "develop", "fix/b",
    "cafebabe", "12345678",                                              # look like short SHAs
)
DEFAULT_NAMES = ("main", "develop", "Main")
GIT_TAG_NAMES = ("v1.2.0", "1.2.3", "v2.0.0-rc1", "nightly", "release-1-2", "feature-a")
MERGE_METHODS = ("merge", "ff", "squash", "squash_ff")   # the emulator's names for GitLab's four


# --- the model ------------------------------------------------------------------------------------

def built_elsewhere(built, pipelines, tags, known, *, own: str, alive: set[str],
                    heard=()) -> dict[str, frozenset[str]]:
    """What cleanup.built_elsewhere answers, told from the ground truth (for this model and
    retention_model): per commit of `built` (pipelines with .sha, .ref, .kind), the labels of the
    live refs other than `own` whose pipelines built it. `pipelines`: every pipeline, oldest first;
    `tags`: live git tags; `known`: the merge requests the worker looks up, by iid; `alive`: live
    branches and open merge requests' sources; `heard`: (label, sha) pipeline memory adds."""
    def label(ref: str) -> str:
        m = MR_REF.fullmatch(ref)
        if m is None:
            return f"tag:{ref}" if ref in tags else f"branch:{ref}"
        mr = known[int(m.group(1))]
        return f"mr:!{mr.iid}" if mr.state == "opened" else f"branch:{mr.source}"

    labels: dict[str, set[str]] = defaultdict(set)
    for p in built:
        labels[p.sha].add(label(p.ref))
    for hook_label, sha in heard:
        labels[sha].add(hook_label)
    maybe_tags = {lb.split(":", 1)[1] for found in labels.values() for lb in found
                  if lb.startswith("branch:") and lb != own} - alive
    maybe_tags -= {mr.source for mr in known.values()}
    # A ref whose first pipeline was a git tag's is a (deleted) git tag: a release, kept.
    first: dict = {}
    for p in pipelines:
        first.setdefault(p.ref, p)
    tag_refs = {r for r in maybe_tags if r in first and first[r].kind == "tag"}

    def is_live(lb: str) -> bool:
        kind, _, name = lb.partition(":")
        return kind in ("tag", "mr") or (kind == "branch" and (name in alive or name in tag_refs))

    out = {}
    for sha, found in labels.items():
        live = frozenset(lb for lb in found if lb != own and is_live(lb))
        if live:
            out[sha] = live
    return out


@dataclass(frozen=True)
class Pipeline:
    number: int         # push order: later pipelines overwrite earlier pushes of the same tag
    kind: str           # "branch", "tag" or "mr" (a merge request pipeline)
    ref: str            # as GitLab's pipelines API lists it: branch, git tag, refs/merge-requests/<iid>/...
    sha: str
    seen: bool          # did its hook reach pipeline memory (and is it still remembered)?
    pushed: tuple[str, ...]
    branch: str = ""    # the branch whose work it is: its ref, or the merge request's source branch

    @property
    def hook_label(self) -> str:
        """What its Pipeline Hook told memory: `object_attributes.ref` is the source branch for
        merge request pipelines (gitlab.md), and `tag` says whether it is a git tag's."""
        return f"tag:{self.ref}" if self.kind == "tag" else f"branch:{self.branch}"

    @property
    def iid(self) -> int | None:
        m = MR_REF.fullmatch(self.ref)
        return int(m.group(1)) if m else None

    @property
    def digest(self) -> str:
        return f"sha256:{self.number:064x}"

    def __str__(self) -> str:
        return (f"#{self.number} {self.kind}:{self.ref}@{self.sha[:8]} {'seen' if self.seen else 'UNSEEN'} "
                f"pushed {list(self.pushed)}")


@dataclass
class MergeRequest:
    """A merge request as GitLab's API shows it (gitlab.md "how a merge lands")."""

    iid: int
    source: str
    target: str
    state: str = "opened"                 # opened, merged, closed
    commits: tuple[str, ...] = ()         # the source's commits the target lacks, oldest first
    merge_commit_sha: str | None = None
    squash_commit_sha: str | None = None
    squash: bool = False
    method: str = ""

    @property
    def sha(self) -> str | None:          # the diff's head
        return self.commits[-1] if self.commits else None

    def __str__(self) -> str:
        how = f" by {self.method}" if self.method else ""
        extra = "".join(f" {k}={v[:8]}" for k, v in (("merge_commit", self.merge_commit_sha),
                                                       ("squash_commit", self.squash_commit_sha)) if v)
        return (f"!{self.iid} {self.source!r} -> {self.target!r} {self.state}{how} "
                f"commits {[c[:8] for c in self.commits]}{extra}")


@dataclass(repr=False)
class Project:
    """A project's history as ground truth: what exists now, and what every pipeline pushed."""

    default: str
    cleaned: str
    tag_images: str                                   # "name" ($CI_COMMIT_TAG) or "slug" (REF_SLUG)
    branches: dict[str, list[str]] = field(default_factory=dict)    # live: name -> history, head last
    tags: dict[str, str] = field(default_factory=dict)              # live git tags: name -> SHA
    ever_on: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # every SHA a branch had
    ever_tags: set[str] = field(default_factory=set)                # every git tag name ever created
    mrs: dict[int, MergeRequest] = field(default_factory=dict)
    pipelines: list[Pipeline] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    trigger: str = ""
    target: str | None = None        # the merged MR's target branch (the delivery's target_branch)
    mr_iid: int | None = None        # the merged MR (the delivery's iid)
    last_commit: str = ""            # the delivery's SHA: the MR's last_commit, or the push's `before`
    b_history: list[str] = field(default_factory=list)   # B's history at the event

    # -- events -------------------------------------------------------------------------------
    def set_branch(self, name: str, history: list[str]) -> None:
        # A commit listed twice (the pool reuses SHAs) is one commit: keep its last place, so the
        # head stays last.
        self.branches[name] = list(reversed(dict.fromkeys(reversed(history))))
        self.ever_on[name].update(history)
        self.refresh()

    def delete_branch(self, name: str) -> None:
        del self.branches[name]
        self.refresh()

    def refresh(self) -> None:
        """GitLab refreshes an open merge request's commits when its source or target moves."""
        for mr in self.mrs.values():
            if mr.state == "opened" and mr.source in self.branches and mr.target in self.branches:
                target = set(self.branches[mr.target])
                mr.commits = tuple(c for c in self.branches[mr.source] if c not in target)

    def open_mr(self, source: str, target: str) -> MergeRequest:
        mr = MergeRequest(len(self.mrs) + 1, source, target)
        self.mrs[mr.iid] = mr
        self.refresh()
        self.log.append(f"open {mr}")
        return mr

    def run_pipeline(self, kind: str, ref: str, sha: str, seen: bool, branch: str = "") -> Pipeline:
        branch = branch or (ref if kind == "branch" else "")
        if kind == "tag":
            pushed = [ref if self.tag_images == "name" else ci_slug(ref), *sha_tags(sha)]
        else:
            pushed = [ci_slug(branch), *sha_tags(sha)] + (["latest"] if kind == "branch" and ref == self.default
                                                          else [])
        pushed = tuple(dict.fromkeys(t for t in pushed if pushable(t)))
        p = Pipeline(len(self.pipelines), kind, ref, sha, seen, pushed, branch)
        self.pipelines.append(p)
        self.log.append(f"pipeline {p}")
        return p

    # -- what is true at worker time (the ground truth) -------------------------------------------
    def open_mrs(self) -> list[MergeRequest]:
        return [mr for mr in self.mrs.values() if mr.state == "opened"]

    def branch_in_use(self, name: str) -> bool:
        """A live branch other than B, or the source branch of an open merge request (its images
        are in use even after the branch was deleted)."""
        if name == self.cleaned:
            return False                   # the one cleaned, whatever happened to it since
        return name in self.branches or any(mr.source == name for mr in self.open_mrs())

    def is_live(self, p: Pipeline) -> bool:
        if p.kind == "tag":
            return p.ref in self.tags
        if p.kind == "mr" and self.mrs[p.iid].state == "opened":
            return True
        return self.branch_in_use(p.branch)

    def live_heads(self) -> dict[str, str]:
        return {n: h[-1] for n, h in self.branches.items() if n != self.cleaned}

    def live_container(self, sha: str) -> str | None:
        """A live ref that contains the commit (GitLab's commits/:sha/refs), or None."""
        for name, history in sorted(self.branches.items()):
            if name != self.cleaned and sha in history:
                return f"branch {name!r}"
        for name, target in sorted(self.tags.items()):
            if target == sha:
                return f"tag {name!r}"
        return None

    def known_shas(self) -> set[str]:
        """Commits GitLab itself names at worker time: live heads, git tag targets."""
        return set(self.live_heads().values()) | set(self.tags.values())

    def own_mrs(self) -> list[MergeRequest]:
        return [mr for mr in self.mrs.values() if mr.source == self.cleaned]

    def fast_forward_heads(self) -> dict[str, MergeRequest]:
        """Heads of B's merge requests fast-forwarded into a branch that is still live: the
        target's own commits now (gitlab.md: the MR's head `sha` becomes the target's commit)."""
        return {mr.sha: mr for mr in self.own_mrs()
                if mr.state == "merged" and mr.method == "ff" and mr.target in self.branches
                and mr.target != self.cleaned and mr.sha}

    def mr_shas(self) -> set[str]:
        """The commits GitLab lists for the merged merge request (or every one of B's)."""
        mrs = [self.mrs[self.mr_iid]] if self.mr_iid is not None else self.own_mrs()
        return {c for mr in mrs for c in mr.commits}

    def registry(self) -> dict[str, str]:
        tags: dict[str, str] = {}
        for p in self.pipelines:
            for t in p.pushed:
                tags[t] = p.digest
        return tags

    def pushers(self) -> dict[str, list[Pipeline]]:
        out: dict[str, list[Pipeline]] = defaultdict(list)
        for p in self.pipelines:
            for t in p.pushed:
                out[t].append(p)
        return out

    def memory(self) -> set[tuple[str, str]]:
        """Pipeline memory: a set, so duplicate and out-of-order hooks change nothing."""
        return {(p.hook_label, p.sha) for p in self.pipelines if p.seen}

    # -- what the worker does at worker time -------------------------------------------------------
    def skipped(self) -> str | None:
        """cleanup.look_again(): why the whole cleanup is skipped, or None."""
        if self.trigger == "branch_deleted" and self.cleaned in self.branches:
            return f"branch {self.cleaned!r} exists again"
        if self.trigger == "merge" and self.cleaned in self.branches:
            return f"branch {self.cleaned!r} still exists after the merge"
        for mr in self.open_mrs():
            if mr.source == self.cleaned and mr.iid != self.mr_iid:
                return f"open merge request !{mr.iid} still uses branch {self.cleaned!r}"
        return None

    def facts(self) -> Facts:
        """What cleanup.gather() builds at worker time from GitLab (its pipelines record holds
        every pipeline, seen or not) and pipeline memory (the seen ones)."""
        b = self.cleaned
        live = self.live_heads()
        pinned: dict[str, str] = {}

        def pin(sha: str | None, why: str) -> None:
            if sha:
                pinned.setdefault(sha, why)

        if self.default in live:
            pin(live[self.default], f"commit is the head of the default branch {self.default!r}")
        if self.target and self.target in live:
            pin(live[self.target], f"commit is the head of the target branch {self.target!r}")
        # The merge requests the worker asks GitLab about: B's (every state) and the open ones.
        known = {mr.iid: mr for mr in self.own_mrs() + self.open_mrs()}
        open_sources = {mr.source for mr in self.open_mrs() if mr.source != b}
        for mr in self.open_mrs():
            pin(mr.sha, f"commit is the head of open merge request !{mr.iid}")
        for mr in self.own_mrs():
            # gitlab.md: fast-forward is the merged MR with neither merge_commit_sha nor squash_commit_sha.
            if mr.state == "merged" and not mr.merge_commit_sha and not mr.squash_commit_sha \
                    and mr.target in live:
                pin(mr.sha, f"commit was fast-forward merged into {mr.target!r}")
        # B's commits: every pipeline GitLab ran on B and on B's merge requests' refs, the delivery's
        # SHA, what memory heard for B, and the merge requests' commits.
        own_refs = {b} | {f"refs/merge-requests/{mr.iid}/{k}" for mr in self.own_mrs()
                          for k in ("head", "merge", "train")}
        memory = self.memory()
        shas = {p.sha for p in self.pipelines if p.ref in own_refs}
        shas.add(self.last_commit)
        shas |= {sha for label, sha in memory if label == f"branch:{b}"}
        mr_shas = self.mr_shas()
        shas |= mr_shas
        for sha in sorted(shas - mr_shas - set(pinned)):
            holder = self.live_container(sha)
            if holder:
                pin(sha, f"commit is on live {holder}")
        # Other built commits sharing a short SHA with B's (GitLab's record, and memory).
        prefixes = {s[:8] for s in shas}
        clashes = {p.sha for p in self.pipelines if p.sha[:8] in prefixes} - shas
        asked = shas | clashes
        built = [p for p in self.pipelines if p.sha in asked]
        for p in built:                  # merge requests named by pipelines are looked up too
            if p.iid is not None:
                known.setdefault(p.iid, self.mrs[p.iid])

        heard = [(hook_label, sha) for hook_label, sha in memory if sha in asked]
        other_refs = built_elsewhere(built, self.pipelines, self.tags, known, own=f"branch:{b}",
                                     alive=set(live) | open_sources, heard=heard)
        return Facts(branch=b, shas=frozenset(shas), default_branch=self.default, live_branches=live,
                     live_tags=dict(self.tags), pinned_shas=pinned, other_refs=other_refs,
                     open_sources={name: f"tag of the source branch {name!r} of an open merge request"
                                   for name in sorted(open_sources - set(live))})

    # -- printing -----------------------------------------------------------------------------------
    def __repr__(self) -> str:  # what Hypothesis prints for a counter-example
        return "Project(\n" + self.describe() + "\n)"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis' printer looks for this first
        printer.text(repr(self))

    def describe(self) -> str:
        lines = [f"default={self.default!r} cleaned={self.cleaned!r} trigger={self.trigger} "
                 f"target={self.target!r} mr=!{self.mr_iid} tag images by {self.tag_images}",
                 "events:", *(f"  {e}" for e in self.log),
                 "pipelines (push order):", *(f"  {p}" for p in self.pipelines),
                 "merge requests:", *(f"  {mr}" for mr in self.mrs.values()),
                 f"live branches: { {n: [s[:8] for s in h] for n, h in self.branches.items()} }",
                 f"git tags: { {n: s[:8] for n, s in self.tags.items()} }",
                 f"last commit: {self.last_commit[:8]}"]
        return "\n".join(lines)
