"""Which image tags a branch owns, and which must never be deleted: pure rules, no I/O.

Everything here takes plain values (names, SHAs, templates) and returns plain values,
so every rule has a table-driven test. The worker gathers the facts (live branches,
git tags, remembered pipelines) and asks `plan()` what to do.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

# The policy's parts are parsed where the settings are read (workers/common/policy.py); re-exported.
from workers.common.policy import (BRANCH_FIELDS, COMMIT_FIELDS, DEFAULT_BRANCH_TAGS, DEFAULT_COMMIT_TAGS,
                                   DEFAULT_PROTECTED_TAGS, Policy, RuleError, compile_protected,
                                   parse_templates)

ZERO_SHA = "0" * 40
SHA_RE = re.compile(r"[0-9a-f]{40}")
SHA_LIKE_RE = re.compile(r"[0-9a-f]{8}|[0-9a-f]{40}")  # CI_COMMIT_SHORT_SHA / CI_COMMIT_SHA shapes
# Docker's tag grammar (distribution/reference): a word character first, then up to 127 more.
DOCKER_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

MAX_BRANCH_LENGTH = 255


# --- reasons: the text people read, and a code that stays when the text is reworded -------------

class Code:
    """Reason codes: stable names for why a tag is kept, deleted or left unclear. Metrics count
    decisions by code (workers/common/metrics.py REASON_KINDS), never by a reason's wording."""

    # Kept by a rule.
    INVALID_TAG = "invalid_tag"                  # not a valid Docker tag
    PROTECTED = "protected"                      # PROTECTED_TAGS
    DEFAULT_BRANCH_TAG = "default_branch_tag"    # the default branch's own tag
    DEFAULT_BRANCH_HEAD = "default_branch_head"  # the default branch's head commit
    TARGET_BRANCH_HEAD = "target_branch_head"    # the merge request's target branch's head commit
    LIVE_BRANCH_TAG = "live_branch_tag"          # another live branch renders the same tag
    LIVE_BRANCH_HEAD = "live_branch_head"        # a live branch's head commit
    GIT_TAG_IMAGE = "git_tag_image"              # a git tag's pipelines push this name
    GIT_TAG_COMMIT = "git_tag_commit"            # the commit is tagged
    GIT_TAG_BUILD = "git_tag_build"              # the sweep: built by a git tag's pipelines (a release)
    FAST_FORWARD = "fast_forward"                # fast-forward merged: the target's commit now
    OPEN_MR_COMMIT = "open_mr_commit"            # a commit of an open merge request
    OPEN_MR_SOURCE = "open_mr_source"            # the source branch of an open merge request
    SHA_LIKE = "sha_like"                        # a branch tag shaped like a commit's SHA tag
    OTHER_REF = "other_ref"                      # the commit was also built on a live ref
    ON_LIVE_REF = "on_live_ref"                  # a live branch or tag contains the commit
    NOT_CHECKED = "not_checked"                  # past MAX_REF_LOOKUPS: kept unasked
    EXISTS_AGAIN = "exists_again"                # the sweep: the dead branch was pushed again
    DEPLOYED = "deployed"                        # the commit a live environment runs
    DEPLOYED_REF = "deployed_ref"                # the branch a live environment runs (its BRANCH_TAGS)
    ROLLBACK_TARGET = "rollback_target"          # one of a live environment's KEEP_DEPLOYMENTS newest
    NEWEST_COMMITS = "newest_commits"            # retention: among the live branch's newest KEEP_COMMITS
    NEWEST_SUCCESS = "newest_success"            # retention: the branch's newest commit whose pipeline succeeded
    TOO_YOUNG = "too_young"                      # retention: first built less than KEEP_COMMITS_MIN_AGE ago
    # Unclear (the sweep keeps and reports them).
    NO_KNOWN_OWNER = "no_known_owner"
    SHORT_SHA_UNRESOLVED = "short_sha_unresolved"
    SHORT_SHA_AMBIGUOUS = "short_sha_ambiguous"
    UNKNOWN_COMMIT = "unknown_commit"
    # Deleted (owned).
    OWNED = "owned"                              # an event cleanup: the branch's own tag
    DEAD_BRANCH_TAG = "dead_branch_tag"          # the sweep: a dead branch's tag
    DEAD_SHORT_SHA = "dead_short_sha"            # every commit of a short SHA was dead refs' only
    BUILT_ON_DEAD = "built_on_dead"              # the commit was built only on dead branches
    ON_NO_REF = "on_no_ref"                      # the commit is on no branch or tag
    SUPERSEDED = "superseded"                    # retention: older than the live branch's newest KEEP_COMMITS
    # What a deletion found (workers/deletion.py).
    ABSENT = "absent"                            # no such tag in that repository
    CHANGED = "changed"                          # pushed again since the plan saw it
    FORBIDDEN = "forbidden"                      # GitLab refused the delete (403)
    TRANSIENT = "transient"                      # failed: the service kept failing (retried later)
    ERROR = "error"                              # failed otherwise
    # A reason given as a plain string (none of the above).
    OTHER = "other"


REASON_CODES = frozenset(value for name, value in vars(Code).items() if name.isupper())
# A tag kept for these is kept only while an environment uses it: a cleanup looks again later.
DEPLOYMENT_CODES = frozenset({Code.DEPLOYED, Code.DEPLOYED_REF, Code.ROLLBACK_TARGET})


class Reason(str):
    """A reason: the text people read (the string itself) and `code`, one of Code's.

    Anywhere a reason is a plain string (a test's facts, say) its code is Code.OTHER."""

    code: str

    def __new__(cls, code: str, text: str) -> "Reason":
        if code not in REASON_CODES:
            raise ValueError(f"unknown reason code {code!r}")
        self = super().__new__(cls, text)
        self.code = code
        return self

    def __reduce__(self):
        return Reason, (self.code, str(self))


def code_of(reason: str) -> str:
    """The code of a reason; Code.OTHER for a plain string."""
    return getattr(reason, "code", Code.OTHER)


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
    if any(0xD800 <= ord(c) <= 0xDFFF for c in branch):  # a lone surrogate: no URL or log can encode it
        raise RuleError("branch name is not valid Unicode")
    return branch


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


# --- GitLab's record: pipeline refs and merge methods ---------------------------------------------

MR_REF_RE = re.compile(r"refs/merge-requests/(\d+)/(head|merge|train)")


def merge_request_of_ref(ref: str) -> int | None:
    """The merge request iid of a merge-request pipeline's ref (`refs/merge-requests/12/head`)."""
    m = MR_REF_RE.fullmatch(ref)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class MergeRequest:
    """What GitLab's merge request API says about one merge request, as plain values.

    own: its source branch is in this project (not a fork's)."""

    iid: int
    state: str
    source_branch: str
    target_branch: str
    own: bool = True
    sha: str | None = None
    merge_commit_sha: str | None = None
    squash_commit_sha: str | None = None
    squash: bool = False

    @property
    def open(self) -> bool:
        return self.state in ("opened", "locked")

    @classmethod
    def from_api(cls, mr: Mapping, project_id: int) -> "MergeRequest":
        def sha(value: object) -> str | None:
            return value if is_sha(value) else None

        return cls(iid=int(mr.get("iid") or 0), state=str(mr.get("state") or ""),
                   source_branch=str(mr.get("source_branch") or ""),
                   target_branch=str(mr.get("target_branch") or ""),
                   own=mr.get("source_project_id", project_id) == project_id, sha=sha(mr.get("sha")),
                   merge_commit_sha=sha(mr.get("merge_commit_sha")),
                   squash_commit_sha=sha(mr.get("squash_commit_sha")), squash=mr.get("squash") is True)


def fast_forward_head(mr: MergeRequest) -> str | None:
    """The commit a merged merge request made its target's own: its head, when GitLab recorded
    neither a merge commit nor a squash commit (a fast-forward merge). Merge commits and squash
    commits are new commits of the target; the merge request's own commits then stay its branch's.
    A squash with neither SHA recorded cannot be told from a fast-forward, and is taken as one:
    keeping the head's tags is the safe side."""
    if mr.state != "merged" or mr.merge_commit_sha or mr.squash_commit_sha:
        return None
    return mr.sha


def fast_forward_pins(mrs: Iterable[MergeRequest], live_branches: Iterable[str]) -> dict[str, Reason]:
    """The heads of this project's fast-forward merges into branches that live: their target's
    commits now (fast_forward_head), kept whatever pipelines did or did not run on them yet."""
    live = set(live_branches)
    pins: dict[str, str] = {}
    for mr in mrs:
        head = fast_forward_head(mr)
        if head and mr.own and mr.target_branch in live:
            pins.setdefault(head, Reason(Code.FAST_FORWARD,
                                         f"commit was fast-forward merged into {mr.target_branch!r} "
                                         f"(merge request !{mr.iid}): it is that branch's commit now"))
    return pins


def pipeline_label(ref: str, live_tags: Mapping[str, str], merge_requests: Mapping[int, MergeRequest]) -> str:
    """What a pipeline's ref stands for, as a label the rules compare:

    - `branch:NAME` for a branch's pipelines, and for the pipelines of a closed or merged
      merge request of this project, which were its source branch's work;
    - `tag:NAME` for a git tag that exists;
    - `mr:!IID` for an open merge request's pipelines, or one GitLab did not describe: in use;
    - `gone:!IID` for a fork's merge request that is closed or merged: its branch is not here.
    """
    iid = merge_request_of_ref(ref)
    if iid is None:
        return f"tag:{ref}" if ref in live_tags else f"branch:{ref}"
    mr = merge_requests.get(iid)
    if mr is None or mr.open:
        return f"mr:!{iid}"
    if mr.own and mr.source_branch:
        return f"branch:{mr.source_branch}"
    return f"gone:!{iid}"


def label_is_live(label: str, live_branches: Iterable[str], tag_refs: Iterable[str] = ()) -> bool:
    """Whether a pipeline label names something alive: a live branch (or the source branch of an
    open merge request), a git tag (a deleted git tag's pipelines too, `tag_refs`: releases are
    kept), or an open merge request."""
    kind, _, name = label.partition(":")
    if kind in ("tag", "mr"):
        return True
    if kind == "branch":
        return name in live_branches or name in tag_refs
    return False


# --- Deployments: what live environments run, or may roll back to --------------------------------

LIVE_ENVIRONMENT_STATES = ("available", "stopping")  # a stopped environment keeps nothing...
# ...unless it is a production one. GitLab stops every environment whose last deployment came
# from a branch when that branch is deleted (auto_stop_setting "always", its default), stop job
# or not: "stopped" then says nothing of what production still runs. Deleting it releases it.
ALWAYS_LIVE_TIERS = ("production",)
DEPLOYED_STATUS = "success"  # failed, canceled, running, created, blocked deployments run nothing


@dataclass(frozen=True)
class Deployment:
    """One deployment of an environment as GitLab's deployments API lists it, or as a Deployment
    Hook named it (`hinted`: not listed by GitLab yet, its ref unknown).

    finished: when it finished (unix seconds; `finished_at`, else `updated_at`), or None."""

    id: int
    sha: str
    ref: str | None = None
    status: str = DEPLOYED_STATUS
    finished: float | None = None
    hinted: bool = False


@dataclass(frozen=True)
class Environment:
    """An environment (`state` as GitLab's environments API says) and the deployments known of it:
    at least its newest KEEP_DEPLOYMENTS successful ones GitLab lists, and the one that finished last."""

    name: str
    state: str
    deployments: tuple[Deployment, ...] = ()
    tier: str | None = None

    @property
    def live(self) -> bool:
        """Whether what it ran counts: available or stopping, or a production environment in any state."""
        return self.state in LIVE_ENVIRONMENT_STATES or self.tier in ALWAYS_LIVE_TIERS


@dataclass(frozen=True)
class InUse:
    """What live environments keep: commit SHA -> why (its COMMIT_TAGS stay), and branch -> why
    (its BRANCH_TAGS stay)."""

    shas: Mapping[str, str] = field(default_factory=dict)
    refs: Mapping[str, str] = field(default_factory=dict)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def deployed_branch(ref: str, merge_requests: Mapping[int, MergeRequest]) -> str:
    """The branch whose images a deployment's ref ran: a merge-request pipeline's deployment
    (`refs/merge-requests/<iid>/head`) ran its source branch's (`$CI_COMMIT_REF_SLUG` is the
    source branch's there)."""
    iid = merge_request_of_ref(ref)
    mr = merge_requests.get(iid) if iid is not None else None
    # A fork's merge request pipeline run here pushed here too, under its source branch's slug.
    return mr.source_branch if mr is not None and mr.source_branch else ref


def in_use(environments: Iterable[Environment], keep: int,
           merge_requests: Mapping[int, MergeRequest] | None = None) -> InUse:
    """What live environments keep (`keep`: KEEP_DEPLOYMENTS, at least 1).

    For every environment that is `available` or `stopping`, of its successful deployments:
    - the newest (highest id) and the one that finished last are **in use**: their commits keep
      their COMMIT_TAGS, and their refs their BRANCH_TAGS (a review app pulls `:$CI_COMMIT_REF_SLUG`);
    - the `keep` newest are rollback targets: their commits keep their COMMIT_TAGS;
    - a deployment only a Deployment Hook named (not listed by GitLab yet) adds protection and
      never takes any away: it keeps its commit, in use when newer than every listed one, and
      does not push a listed one out of the `keep` newest.
    An environment named twice (what the record holds, and what GitLab answered when asked
    again) keeps what either keeps."""
    if keep < 1:
        raise ValueError("keep must be at least 1: the current deployment always counts")
    merge_requests = merge_requests or {}
    shas: dict[str, str] = {}
    refs: dict[str, str] = {}

    def claim(found: dict[str, str], key: str, why: Reason) -> None:
        # "In use" says more than "rollback target": it wins whichever environment came first.
        if key not in found or (why.code != Code.ROLLBACK_TARGET and found[key].code == Code.ROLLBACK_TARGET):
            found[key] = why

    for env in sorted(environments, key=lambda e: e.name):
        if not env.live:
            continue
        done = {d.id: d for d in env.deployments if d.status == DEPLOYED_STATUS and is_sha(d.sha) and not d.hinted}
        listed = sorted(done.values(), key=lambda d: d.id, reverse=True)
        hinted = {d.id: d for d in env.deployments if d.hinted and d.status == DEPLOYED_STATUS
                  and is_sha(d.sha) and d.id not in done}
        if not listed and not hinted:
            continue
        current: set[int] = set()
        kept = list(listed[:keep])
        if listed:
            last = max(listed, key=lambda d: (d.finished or 0.0, d.id))
            current |= {listed[0].id, last.id}
            kept.append(last)
        newest = listed[0].id if listed else 0
        current |= {i for i in hinted if i > newest}
        kept.extend(hinted.values())
        order = sorted([*listed, *hinted.values()], key=lambda d: d.id, reverse=True)
        rank = {d.id: n for n, d in enumerate(order, 1)}
        for d in sorted(set(kept), key=lambda d: rank[d.id]):
            if d.id in current:
                why = Reason(Code.DEPLOYED, f"in use by environment {env.name} (deployment #{d.id})")
                if d.ref:
                    claim(refs, deployed_branch(d.ref, merge_requests),
                          Reason(Code.DEPLOYED_REF, f"in use by environment {env.name} (deployment #{d.id})"))
            else:
                why = Reason(Code.ROLLBACK_TARGET,
                             f"rollback target of {env.name} ({ordinal(rank[d.id])} newest deployment)")
            claim(shas, d.sha, why)
    return InUse(shas=shas, refs=refs)


def deployed_owners(shas: Mapping[str, str], refs: Mapping[str, str], policy: Policy) -> dict[str, str]:
    """The tag names live environments keep (in_use): COMMIT_TAGS of their commits, BRANCH_TAGS of
    their branches -> why. What is in use comes before rollback targets."""
    owners: dict[str, str] = {}

    def order(item: tuple[str, str]) -> tuple[bool, str]:
        return code_of(item[1]) == Code.ROLLBACK_TARGET, item[0]

    for sha, why in sorted(shas.items(), key=order):
        for name in commit_tags(sha, policy.commit_templates):
            owners.setdefault(name, why)
    for ref, why in sorted(refs.items(), key=order):
        for name in branch_tags(ref, policy.branch_templates):
            owners.setdefault(name, why)
    return owners


@dataclass(frozen=True)
class Decision:
    """What to do with one tag name, and why (a Reason: its text and its code)."""

    tag: str
    delete: bool
    reason: str
    kind: str  # "branch" (rendered from the branch name) or "commit" (from a SHA)

    @property
    def code(self) -> str:
        return code_of(self.reason)


@dataclass(frozen=True)
class Facts:
    """Everything the worker learned about the project, as plain values.

    live_branches: every branch that exists now (name -> head SHA), the cleaned one excluded.
    live_tags: git tags (name -> SHA).
    pinned_shas: SHAs that must keep their tags, with the reason (head of the target branch, ...).
        Here and in open_sources, a reason is a Reason (its code counted by metrics) or a plain string.
    other_refs: for SHAs of the branch, the other live refs a pipeline built them on.
    open_sources: deleted source branches of open merge requests -> why: their images are in use.
    deployed_shas / deployed_refs: what live environments keep (InUse): commits and branches -> why.
        They claim a tag only when nothing else does, so a report names them where they alone keep it.
    """

    branch: str
    shas: frozenset[str]
    default_branch: str | None = None
    live_branches: Mapping[str, str] = field(default_factory=dict)
    live_tags: Mapping[str, str] = field(default_factory=dict)
    pinned_shas: Mapping[str, str] = field(default_factory=dict)
    other_refs: Mapping[str, frozenset[str]] = field(default_factory=dict)
    open_sources: Mapping[str, str] = field(default_factory=dict)
    deployed_shas: Mapping[str, str] = field(default_factory=dict)
    deployed_refs: Mapping[str, str] = field(default_factory=dict)


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
    """Tag names that some live ref may own: name -> why it is kept (a Reason)."""
    owners: dict[str, str] = {}

    def claim(names: Iterable[str], why: str) -> None:
        for name in names:
            owners.setdefault(name, why)

    if facts.default_branch:
        claim(branch_tags(facts.default_branch, policy.branch_templates),
              Reason(Code.DEFAULT_BRANCH_TAG, f"tag of the default branch {facts.default_branch!r}"))
    for sha, why in facts.pinned_shas.items():
        claim(commit_tags(sha, policy.commit_templates), why)
    for name, why in facts.open_sources.items():
        if name != facts.branch:
            claim(branch_tags(name, policy.branch_templates), why)
    for name, sha in facts.live_branches.items():
        if name == facts.branch:
            continue
        claim(branch_tags(name, policy.branch_templates), Reason(Code.LIVE_BRANCH_TAG,
                                                                  f"also the tag of live branch {name!r}"))
        if is_sha(sha):
            claim(commit_tags(sha, policy.commit_templates),
                  Reason(Code.LIVE_BRANCH_HEAD, f"commit is the head of live branch {name!r}"))
    for name, sha in facts.live_tags.items():
        # A tag pipeline pushes the git tag's name (or its slug): `release-1-2` next to `release/1.2`.
        claim(({name} if is_docker_tag(name) else set()) | branch_tags(name, policy.branch_templates),
              Reason(Code.GIT_TAG_IMAGE, f"image of git tag {name!r}"))
        if is_sha(sha):
            claim(commit_tags(sha, policy.commit_templates), Reason(Code.GIT_TAG_COMMIT, f"commit is tagged {name!r}"))
    for sha, refs in facts.other_refs.items():
        others = sorted(r for r in refs if r != f"branch:{facts.branch}")
        if others and is_sha(sha):
            claim(commit_tags(sha, policy.commit_templates),
                  Reason(Code.OTHER_REF, f"commit was also built on {', '.join(others[:3])}"))
    for name, why in deployed_owners(facts.deployed_shas, facts.deployed_refs, policy).items():
        owners.setdefault(name, why)
    return owners


NOT_A_DOCKER_TAG = Reason(Code.INVALID_TAG, "not a valid Docker tag")
PROTECTED = Reason(Code.PROTECTED, "protected by PROTECTED_TAGS")


def plan(facts: Facts, policy: Policy) -> list[Decision]:
    """Decide every tag the branch may own: delete only what no live ref and no rule claims."""
    check_branch_name(facts.branch)
    owners = live_owners(facts, policy)
    own_commit_tags = {n for sha in facts.shas if is_sha(sha) for n in commit_tags(sha, policy.commit_templates)}
    decisions = []
    for name, kind in sorted(owned_candidates(facts, policy).items()):
        if not is_docker_tag(name):
            decisions.append(Decision(name, False, NOT_A_DOCKER_TAG, kind))
        elif policy.protected.fullmatch(name):
            decisions.append(Decision(name, False, PROTECTED, kind))
        elif name in owners:
            decisions.append(Decision(name, False, owners[name], kind))
        elif kind == "branch" and SHA_LIKE_RE.fullmatch(name) and name not in own_commit_tags:
            # A branch named `cafebabe` or `20240115`: another ref's commit may carry that short SHA.
            decisions.append(Decision(name, False, Reason(
                Code.SHA_LIKE, "looks like a commit SHA another ref may have pushed"), kind))
        else:
            decisions.append(Decision(name, True, Reason(Code.OWNED, f"owned by branch {facts.branch!r}"), kind))
    return decisions


# --- Reconciliation ("sweep"): which tags in a registry are provably a dead branch's -------------
#
# A sweep looks at every tag of a project's registry, not at one branch. The same rules
# protect (PROTECTED_TAGS, live_owners), and a tag is deleted only when it can be shown to
# belong to a branch that no longer exists; anything else that no live ref claims is
# "unclear": kept and reported.

SWEEP_ACTIONS = ("delete", "keep", "unclear")


@dataclass(frozen=True)
class SweepFacts:
    """What a sweep knows about one project, as plain values.

    live_branches / live_tags: every branch that exists now (name -> head SHA); git tags.
    known_branches: every branch the service knows existed -> how it knows (pipeline memory,
        a merged or closed merge request); the ones that are live are ignored.
    open_sources: source branches of open merge requests -> why: in use even when deleted.
    pinned_shas: commits whose tags stay whatever else is true (open merge requests') -> why.
    deployed_shas / deployed_refs: what live environments keep (InUse): commits and branches -> why.
    """

    default_branch: str | None = None
    live_branches: Mapping[str, str] = field(default_factory=dict)
    live_tags: Mapping[str, str] = field(default_factory=dict)
    known_branches: Mapping[str, str] = field(default_factory=dict)
    open_sources: Mapping[str, str] = field(default_factory=dict)
    pinned_shas: Mapping[str, str] = field(default_factory=dict)
    deployed_shas: Mapping[str, str] = field(default_factory=dict)
    deployed_refs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepIndex:
    """SweepFacts turned into lookups, computed once per project (size: refs, not tags)."""

    owners: Mapping[str, str]                  # tag -> why a live ref claims it
    dead_tags: Mapping[str, tuple[str, str]]   # tag -> (dead branch, how the service knows it)
    live_refs: frozenset[str]                  # labels of live branches ("branch:main")
    # tag -> why live environments keep it, asked only when no live ref claims it (deployed_owners)
    deployed: Mapping[str, str] = field(default_factory=dict)

    def is_live_ref(self, label: str) -> bool:
        # A tag pipeline's commit counts as live even if the git tag is gone: releases are kept;
        # an open merge request's pipelines are its source branch's, in use (pipeline_label).
        return label in self.live_refs or label_is_live(label, ())


@dataclass(frozen=True)
class CommitRef:
    """A tag that names a commit per COMMIT_TAGS: `value` is the full SHA, or the 8-hex short one."""

    tag: str
    value: str
    short: bool


@dataclass(frozen=True)
class CommitFacts:
    """What was looked up about the commits of SHA tags (one page of tags at a time).

    candidates: short SHA -> every full SHA it may stand for: GitLab's resolution of it plus
        remembered commits with the same prefix (empty: GitLab could not resolve it).
    built_on: full SHA -> refs its pipelines ran on (pipeline memory).
    git_refs: full SHA -> refs GitLab says contain it ("branch:NAME", "tag:NAME"), or None when
        GitLab does not know the commit. Only asked for commits pipeline memory knows nothing of.
    """

    candidates: Mapping[str, frozenset[str]] = field(default_factory=dict)
    built_on: Mapping[str, frozenset[str]] = field(default_factory=dict)
    git_refs: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepVerdict:
    """What a sweep does with one tag. `branches`: the dead branches a deletion relies on
    (looked at again right before deleting)."""

    tag: str
    action: str  # one of SWEEP_ACTIONS
    reason: str  # a Reason: its text and its code
    kind: str  # "branch", "commit" or "other"
    branches: tuple[str, ...] = ()

    @property
    def delete(self) -> bool:
        return self.action == "delete"

    @property
    def code(self) -> str:
        return code_of(self.reason)

    def decision(self) -> Decision:
        return Decision(self.tag, self.delete, self.reason, self.kind)


def sweep_index(facts: SweepFacts, policy: Policy) -> SweepIndex:
    """Which tags live refs claim, and which tags are rendered only for known dead branches."""
    pinned = dict(facts.pinned_shas)
    owners = live_owners(Facts(branch="", shas=frozenset(), default_branch=facts.default_branch,
                               live_branches=facts.live_branches, live_tags=facts.live_tags,
                               pinned_shas=pinned), policy)
    for name, why in facts.open_sources.items():
        for tag in branch_tags(name, policy.branch_templates):
            owners.setdefault(tag, why)
    for name in facts.live_tags:  # a tag pipeline pushes its ref's slug: release-1-2 for release/1.2
        for tag in branch_tags(name, policy.branch_templates) | ({name} if is_docker_tag(name) else set()):
            owners.setdefault(tag, Reason(Code.GIT_TAG_IMAGE, f"image of git tag {name!r}"))
    live = set(facts.live_branches) | set(facts.open_sources)
    if facts.default_branch:
        live.add(facts.default_branch)
    dead: dict[str, tuple[str, str]] = {}
    for name, how in sorted(facts.known_branches.items()):
        if name in live:
            continue
        try:
            check_branch_name(name)
        except RuleError:
            continue
        for tag in branch_tags(name, policy.branch_templates):
            if tag not in owners:
                dead.setdefault(tag, (name, how))
    deployed = {name: why for name, why in deployed_owners(facts.deployed_shas, facts.deployed_refs, policy).items()
                if name not in owners}
    return SweepIndex(owners=owners, dead_tags=dead, deployed=deployed,
                      live_refs=frozenset(f"branch:{name}" for name in live))


def with_deployed(index: SweepIndex, shas: Mapping[str, str], policy: Policy) -> SweepIndex:
    """The index with more commits live environments keep (found after it was made) -> why."""
    more = {name: why for name, why in deployed_owners(shas, {}, policy).items()
            if name not in index.owners and name not in index.deployed}
    return replace(index, deployed={**index.deployed, **more}) if more else index


def _commit_pattern(template: str) -> re.Pattern[str]:
    parts = []
    seen: set[str] = set()
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name is None:
            continue
        if name in seen:
            parts.append(f"(?P={name})")
        else:
            seen.add(name)
            parts.append(f"(?P<{name}>[0-9a-f]{{40}})" if name == "sha" else f"(?P<{name}>[0-9a-f]{{8}})")
    return re.compile("".join(parts))


def parse_commit_tag(name: str, templates: Iterable[str]) -> CommitRef | None:
    """The commit a tag names per COMMIT_TAGS, or None. A full SHA wins over a short one."""
    found: CommitRef | None = None
    for template in templates:
        m = _commit_pattern(template).fullmatch(name)
        if not m:
            continue
        groups = m.groupdict()
        sha, short = groups.get("sha"), groups.get("short_sha")
        if sha and short and not sha.startswith(short):
            continue  # "{short_sha}-{sha}" with parts of two different commits
        if sha:
            if sha == ZERO_SHA:
                continue
            return CommitRef(name, sha, False)
        if short and found is None:
            found = CommitRef(name, short, True)
    return found


def sweep_tag(name: str, index: SweepIndex, policy: Policy) -> SweepVerdict | CommitRef:
    """Decide a tag from its name alone, or return the commit it names when that needs looking up."""
    if not is_docker_tag(name):
        return SweepVerdict(name, "keep", NOT_A_DOCKER_TAG, "other")
    if policy.protected.fullmatch(name):
        return SweepVerdict(name, "keep", PROTECTED, "other")
    if name in index.owners:
        return SweepVerdict(name, "keep", index.owners[name], "other")
    # Before the dead-branch tags: a branch named `cafebabe` must not take a commit's short SHA tag.
    ref = parse_commit_tag(name, policy.commit_templates)
    if ref is not None:
        return ref
    if name in index.deployed:
        return SweepVerdict(name, "keep", index.deployed[name], "branch")
    if name in index.dead_tags:
        branch, how = index.dead_tags[name]
        return SweepVerdict(name, "delete", Reason(Code.DEAD_BRANCH_TAG,
                                                   f"owned by dead branch {branch!r} (known from {how})"),
                            "branch", (branch,))
    return SweepVerdict(name, "unclear", Reason(Code.NO_KNOWN_OWNER,
                                                "matches no live branch and no branch known to have existed"),
                        "other")


def sweep_commit(ref: CommitRef, facts: CommitFacts, index: SweepIndex, policy: Policy) -> SweepVerdict:
    """Decide a SHA tag: delete it only if its commit is provably a dead branch's.

    A short SHA that several commits share is deleted only when every one of them would be:
    CI gives short SHA tags only to built commits, and the candidates are every commit GitLab's
    pipelines built with that prefix, so then no live ref's image can carry the name."""
    tag = ref.tag
    if not ref.short:
        return _sweep_sha(tag, ref.value, facts, index, policy)
    candidates = sorted(facts.candidates.get(ref.value, frozenset()))
    if not candidates:
        return SweepVerdict(tag, "unclear", Reason(Code.SHORT_SHA_UNRESOLVED,
                                                   "short SHA resolves to no single commit in the repository"),
                            "commit")
    if len(candidates) == 1:
        return _sweep_sha(tag, candidates[0], facts, index, policy)
    verdicts = [_sweep_sha(tag, sha, facts, index, policy) for sha in candidates]
    kept = [v for v in verdicts if v.action == "keep"]
    if kept:
        return kept[0]
    shown = ", ".join(c[:12] for c in candidates[:3])
    if all(v.action == "delete" for v in verdicts):
        branches = tuple(sorted({b for v in verdicts for b in v.branches}))
        return SweepVerdict(tag, "delete", Reason(Code.DEAD_SHORT_SHA, f"short SHA of {len(candidates)} commits "
                                                                       f"({shown}), each built only on dead refs"),
                            "commit", branches)
    return SweepVerdict(tag, "unclear", Reason(Code.SHORT_SHA_AMBIGUOUS, f"short SHA is ambiguous: {shown}"), "commit")


def _sweep_sha(tag: str, sha: str, facts: CommitFacts, index: SweepIndex, policy: Policy) -> SweepVerdict:
    """sweep_commit() for one full SHA."""
    for name in sorted(commit_tags(sha, policy.commit_templates)):
        if name in index.owners:
            return SweepVerdict(tag, "keep", index.owners[name], "commit")
    built = facts.built_on.get(sha, frozenset())
    if built:
        live = sorted(r for r in built if index.is_live_ref(r))
        if live:
            return SweepVerdict(tag, "keep", Reason(Code.OTHER_REF, f"commit was also built on {', '.join(live[:3])}"),
                                "commit")
    for name in [tag, *sorted(commit_tags(sha, policy.commit_templates))]:
        if name in index.deployed:
            return SweepVerdict(tag, "keep", index.deployed[name], "commit")
    if built:
        dead = tuple(sorted(r.split(":", 1)[1] for r in built if r.startswith("branch:")))
        names = ", ".join(repr(b) for b in dead[:3]) or "closed merge requests of forks"
        return SweepVerdict(tag, "delete", Reason(Code.BUILT_ON_DEAD, "commit was built only on dead "
                                                                      f"branch(es) {names}"), "commit", dead)
    if sha not in facts.git_refs or facts.git_refs[sha] is None:
        return SweepVerdict(tag, "unclear", Reason(Code.UNKNOWN_COMMIT, "commit unknown to GitLab and to pipeline "
                                                                        "memory"), "commit")
    refs = facts.git_refs[sha]
    if refs:
        return SweepVerdict(tag, "keep", Reason(Code.ON_LIVE_REF, f"commit is on {', '.join(sorted(refs)[:3])}"),
                            "commit")
    return SweepVerdict(tag, "delete", Reason(Code.ON_NO_REF, "commit is on no branch or tag (and no pipeline is "
                                                             "remembered for it)"), "commit")


# --- Retention ("retire"): the superseded commit tags of a live branch ----------------------------
#
# A live branch's images are in use, but only its newest ones: every pipeline pushes a commit's
# COMMIT_TAGS, and the older commits' stay for ever. Retention keeps the newest KEEP_COMMITS
# distinct commits the branch's pipelines built, and its newest commit whose pipeline succeeded;
# an older commit loses its COMMIT_TAGS unless something else claims it (live_owners: another live
# ref built it, a git tag points at it, it heads a live branch or an open merge request; what live
# environments keep; PROTECTED_TAGS) or it was first built less than KEEP_COMMITS_MIN_AGE ago.
# BRANCH_TAGS are never touched: the branch is alive.


@dataclass(frozen=True)
class Built:
    """One commit a branch's pipelines built: `order` is its newest pipeline's id there (higher is
    newer), `first` when its first pipeline (on any ref) was created, unix seconds (None: unknown)."""

    sha: str
    order: float
    first: float | None = None


@dataclass(frozen=True)
class RetentionFacts:
    """What a retention pass knows about one live branch, as plain values.

    built: the commits the branch's pipelines built (every one, newest or not).
    candidates: the SHAs among them to decide (the rest are known to be retired already); None: all.
    newest_success: the commit of the branch's newest successful pipeline, None when it has none.
    now: the time the pass decides at (unix seconds).
    The rest is Facts' (live_owners): live_branches include the branch itself; other_refs name,
    per SHA, only live refs other than the branch; deployed_refs and open_sources claim branch
    tags, which a commit's short SHA tag may equal (a branch named `cafebabe`).
    """

    branch: str
    built: tuple[Built, ...]
    keep: int
    min_age: float
    now: float
    newest_success: str | None = None
    candidates: frozenset[str] | None = None
    default_branch: str | None = None
    live_branches: Mapping[str, str] = field(default_factory=dict)
    live_tags: Mapping[str, str] = field(default_factory=dict)
    pinned_shas: Mapping[str, str] = field(default_factory=dict)
    other_refs: Mapping[str, frozenset[str]] = field(default_factory=dict)
    deployed_shas: Mapping[str, str] = field(default_factory=dict)
    deployed_refs: Mapping[str, str] = field(default_factory=dict)
    open_sources: Mapping[str, str] = field(default_factory=dict)


def newest_built(built: Iterable[Built], keep: int) -> list[Built]:
    """The `keep` newest of a branch's built commits (newest pipeline first; ties by SHA)."""
    return sorted(built, key=lambda b: (-b.order, b.sha))[:keep]


def retire(facts: RetentionFacts, policy: Policy) -> list[Decision]:
    """Decide the COMMIT_TAGS of a live branch's built commits: delete only the superseded ones
    that nothing claims. Returns one Decision per tag name of every candidate commit, and of the
    kept newest ones (so a report says why they stay)."""
    check_branch_name(facts.branch)
    if facts.keep < 1:
        raise RuleError("KEEP_COMMITS must be at least 1")
    built = {b.sha: b for b in facts.built if is_sha(b.sha)}
    newest = newest_built(built.values(), facts.keep)
    rank = {b.sha: n for n, b in enumerate(newest, 1)}
    candidates = set(built) if facts.candidates is None else set(facts.candidates) & set(built)
    candidates |= set(rank)

    # Why each commit of the branch stays on the branch's own account.
    own: dict[str, Reason] = {}
    for sha in candidates:
        b = built[sha]
        if sha in rank:
            own[sha] = Reason(Code.NEWEST_COMMITS, f"one of the {facts.keep} newest commits of branch "
                                                   f"{facts.branch!r} (KEEP_COMMITS): the {ordinal(rank[sha])} newest")
        elif sha == facts.newest_success:
            own[sha] = Reason(Code.NEWEST_SUCCESS, f"the newest commit of branch {facts.branch!r} whose "
                                                   "pipeline succeeded")
        elif b.first is None or facts.now - b.first < facts.min_age:
            own[sha] = Reason(Code.TOO_YOUNG, "first built less than KEEP_COMMITS_MIN_AGE ago"
                              if b.first is not None else "when it was first built is unknown")
    if facts.newest_success and facts.newest_success not in own and is_sha(facts.newest_success):
        own[facts.newest_success] = Reason(Code.NEWEST_SUCCESS, f"the newest commit of branch {facts.branch!r} "
                                                                "whose pipeline succeeded")

    owners = live_owners(Facts(branch="", shas=frozenset(), default_branch=facts.default_branch,
                               live_branches=facts.live_branches, live_tags=facts.live_tags,
                               pinned_shas=facts.pinned_shas, other_refs=facts.other_refs,
                               deployed_shas=facts.deployed_shas, deployed_refs=facts.deployed_refs,
                               open_sources=facts.open_sources), policy)
    # A name a kept commit renders stays too: two commits may share a short SHA.
    kept_names: dict[str, Reason] = {}
    for sha, why in own.items():
        for name in commit_tags(sha, policy.commit_templates):
            kept_names.setdefault(name, why)

    decisions: dict[str, Decision] = {}
    for sha in sorted(candidates, key=lambda s: (-built[s].order, s)):
        for name in sorted(commit_tags(sha, policy.commit_templates)):
            if name in decisions:
                continue
            if policy.protected.fullmatch(name):
                decisions[name] = Decision(name, False, PROTECTED, "commit")
            elif name in kept_names:
                decisions[name] = Decision(name, False, kept_names[name], "commit")
            elif name in owners:
                decisions[name] = Decision(name, False, owners[name], "commit")
            else:
                decisions[name] = Decision(name, True, Reason(
                    Code.SUPERSEDED, f"superseded: older than the {facts.keep} newest commits of branch "
                                     f"{facts.branch!r}"), "commit")
    return list(decisions.values())
