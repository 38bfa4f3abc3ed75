"""The ground truth of the retention property: a project's live branches and what claims their commits.

`History` holds what GitLab would list for one project: live branches (name -> head), git tags,
merge requests, every pipeline (id, ref, commit, created time, status, kind), environments with
their deployments. One live branch, `branch`, is retired with KEEP_COMMITS=`keep`,
KEEP_COMMITS_MIN_AGE=`min_age` and KEEP_DEPLOYMENTS=`keep_deployments` at time `now`.

Two sides, kept apart on purpose:

* `claims()`: which commits and names must keep their tags, written from the issue's text and
  GitLab's behaviour (../shared/reference/gitlab.md), never from workers/rules.py;
* `retention_facts()`: the `rules.RetentionFacts` workers/retention.py builds from GitLab's
  record (`_run_locked`, `other_refs`, `deployed`), mirrored over this model; `rules.in_use` is
  called for what live environments keep, as deployments.Protection.in_use calls it.

The property is tests/test_retention_property.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tests.support.safety_model import PROTECTED, built_elsewhere, ci_slug, sha_tags
from workers import rules

# Small pools: short-SHA clashes and branch names shaped like short SHAs are the rule.
SHA_POOL = (
    "deadbeef" + "0" * 31 + "1",
    "deadbeef" + "f" * 32,          # same short SHA as the one above
    "cafebabe" + "1" * 32,
    "cafebabe" + "2" * 32,          # same short SHA, and the name of a branch
    "12345678" + "9" * 32,          # all digits: not protected, and a branch's name
    "0123abcd" * 5,
    "c" * 40,
    "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e",
    "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1",
    "e0e0e0e0" + "5" * 32,
    "77777777" + "a" * 32,
    "77777777" + "b" * 32,
)
RETIRED_NAMES = ("main", "develop", "release/1.2", "cafebabe")    # the branch a pass retires
OTHER_NAMES = ("feature/a", "feature-a", "cafebabe", "deadbeef", "12345678", "fix/b", "main", "develop")
GIT_TAG_NAMES = ("v1.0.0", "nightly", "77777777", "rc-cafebabe")   # disjoint from the branch names
ENVIRONMENTS = (("production", "production"), ("staging", "staging"), ("review/a", "development"))
MR_REF = re.compile(r"refs/merge-requests/(\d+)/(head|merge|train)")
LIVE_ENV_STATES = ("available", "stopping")


@dataclass(frozen=True)
class Pipeline:
    id: int
    kind: str              # "branch", "tag" or "mr"
    ref: str               # as GitLab's pipelines API lists it
    sha: str
    created: float
    status: str            # "success" or "failed"
    branch: str = ""       # whose work: its ref, or the merge request's source branch

    def __str__(self) -> str:
        return f"#{self.id} {self.kind}:{self.ref}@{short(self.sha)} {self.status} t={self.created:.0f}"


@dataclass
class MergeRequest:
    iid: int
    source: str
    target: str
    head: str | None
    state: str = "opened"  # opened, merged, closed


@dataclass(frozen=True)
class Deployment:
    id: int
    sha: str
    ref: str
    status: str
    finished: float


@dataclass
class Environment:
    name: str
    tier: str
    state: str = "available"
    deployments: list[Deployment] = field(default_factory=list)

    @property
    def live(self) -> bool:
        # gitlab.md: GitLab stops a branch's environments when the branch goes; production still runs.
        return self.state in LIVE_ENV_STATES or self.tier == "production"


@dataclass(repr=False)
class History:
    branch: str
    default: str
    keep: int
    min_age: float
    keep_deployments: int
    now: float = 0.0
    branches: dict[str, str] = field(default_factory=dict)          # live: name -> head
    tags: dict[str, str] = field(default_factory=dict)              # live git tags: name -> SHA
    mrs: dict[int, MergeRequest] = field(default_factory=dict)
    pipelines: list[Pipeline] = field(default_factory=list)
    environments: dict[str, Environment] = field(default_factory=dict)
    retired: set[str] = field(default_factory=set)                  # keys.retired: what earlier passes retired
    log: list[str] = field(default_factory=list)

    # -- events -------------------------------------------------------------------------------
    def move(self, name: str, head: str) -> None:
        self.branches[name] = head
        for mr in self.mrs.values():       # GitLab refreshes an open merge request's head
            if mr.state == "opened" and mr.source == name:
                mr.head = head

    def run_pipeline(self, kind: str, ref: str, sha: str, status: str, when: float, branch: str = "") -> Pipeline:
        branch = branch or (ref if kind == "branch" else "")
        p = Pipeline(len(self.pipelines) + 1, kind, ref, sha, when, status, branch)
        self.pipelines.append(p)
        self.log.append(f"pipeline {p}")
        return p

    # -- the ground truth: what claims what, from the issue and gitlab.md ---------------------------
    def own_pipelines(self) -> list[Pipeline]:
        return [p for p in self.pipelines if p.kind == "branch" and p.ref == self.branch]

    def newest_commits(self) -> list[str]:
        """The newest `keep` distinct commits the branch's pipelines built, newest pipeline first."""
        out: list[str] = []
        for p in sorted(self.own_pipelines(), key=lambda p: -p.id):
            if p.sha not in out:
                out.append(p.sha)
        return out[:self.keep]

    def first_built(self, sha: str) -> float:
        return min(p.created for p in self.pipelines if p.sha == sha)

    def live_pipeline(self, p: Pipeline) -> bool:
        """Whether a pipeline is a live ref's other than the retired branch: a live branch's, a live
        git tag's, an open merge request's, or a closed/merged merge request's whose source lives."""
        if p.kind == "tag":
            return p.ref in self.tags
        if p.kind == "mr":
            mr = self.mrs[int(MR_REF.fullmatch(p.ref).group(1))]
            if mr.state == "opened":
                return True
        return p.branch != self.branch and p.branch in self.branches

    def deployed(self) -> tuple[dict[str, str], set[str]]:
        """What live environments keep: commits (the newest KEEP_DEPLOYMENTS successful deployments
        and the one that finished last) and the branches their current deployments run."""
        shas: dict[str, str] = {}
        refs: set[str] = set()
        for env in self.environments.values():
            if not env.live:
                continue
            done = sorted((d for d in env.deployments if d.status == "success"), key=lambda d: -d.id)
            if not done:
                continue
            last = max(done, key=lambda d: (d.finished, d.id))
            for d in done[:self.keep_deployments] + [last]:
                shas.setdefault(d.sha, f"deployment #{d.id} of {env.name}")
            for d in (done[0], last):
                m = MR_REF.fullmatch(d.ref)
                refs.add(self.mrs[int(m.group(1))].source if m else d.ref)
        return shas, refs

    def claims(self) -> tuple[dict[str, str], dict[str, str]]:
        """(commits that keep their commit tags -> why, tag names that stay whatever -> why)."""
        commits: dict[str, str] = {}

        def claim(sha: str | None, why: str) -> None:
            if sha:
                commits.setdefault(sha, why)

        for n, sha in enumerate(self.newest_commits(), 1):
            claim(sha, f"newest #{n} of {self.branch!r}")
        success = [p for p in self.own_pipelines() if p.status == "success"]
        if success:
            claim(max(success, key=lambda p: p.id).sha, "newest successful commit")
        for p in self.own_pipelines():
            if self.now - self.first_built(p.sha) < self.min_age:
                claim(p.sha, "younger than KEEP_COMMITS_MIN_AGE")
        for p in self.pipelines:
            if self.live_pipeline(p):
                claim(p.sha, f"built by live {p.kind}:{p.ref}")
        for name, head in self.branches.items():
            claim(head, f"head of live branch {name!r}")
        for name, sha in self.tags.items():
            claim(sha, f"git tag {name!r}")
        for mr in self.mrs.values():
            if mr.state == "opened":
                claim(mr.head, f"head of open merge request !{mr.iid}")
        deployed_shas, deployed_refs = self.deployed()
        for sha, why in deployed_shas.items():
            claim(sha, why)

        names: dict[str, str] = {}
        for sha, why in commits.items():
            for name in sha_tags(sha):
                names.setdefault(name, f"a SHA tag of {short(sha)}: {why}")
        for name in self.branches:
            names.setdefault(ci_slug(name), f"the tag of live branch {name!r}")
        for mr in self.mrs.values():
            if mr.state == "opened":
                names.setdefault(ci_slug(mr.source), f"the tag of open merge request !{mr.iid}'s source")
        for ref in deployed_refs:
            names.setdefault(ci_slug(ref), f"the tag of branch {ref!r}, which a live environment runs")
        for name in self.tags:
            names.setdefault(name, f"the image of git tag {name!r}")
            names.setdefault(ci_slug(name), f"the image of git tag {name!r}")
        return commits, names

    # -- what workers/retention.py builds from GitLab's record ---------------------------------------
    def retention_facts(self) -> rules.RetentionFacts | None:
        """`_run_locked`'s facts, or None when it stops early (no candidates left)."""
        built: dict[str, float] = {}
        for p in self.own_pipelines():                       # record.shas_of([branch])
            built[p.sha] = max(built.get(p.sha, 0.0), float(p.id))
        retired = set(self.retired) if len(built) > self.keep else set()
        newest = {b.sha for b in rules.newest_built((rules.Built(s, o) for s, o in built.items()), self.keep)}
        candidates = set(built) - retired - newest
        if not candidates:
            return None
        asked = candidates | newest
        success = [p for p in self.own_pipelines() if p.status == "success"]
        newest_success = max(success, key=lambda p: p.id).sha if success else None
        firsts: dict[str, float] = {}                        # record.first_built: any ref
        for p in self.pipelines:
            firsts[p.sha] = min(firsts.get(p.sha, p.created), p.created)
        known = {mr.iid: mr for mr in self.mrs.values() if mr.state == "opened"}
        pinned = {mr.head: rules.Reason(rules.Code.OPEN_MR_COMMIT,
                                        f"commit is the head of open merge request !{mr.iid}")
                  for mr in known.values() if mr.head}
        other_refs = self.other_refs(asked, known)
        in_use = self.in_use()
        open_sources = {mr.source: rules.Reason(rules.Code.OPEN_MR_SOURCE, f"tag of the source branch {mr.source!r} "
                                                                           "of an open merge request")
                        for mr in self.mrs.values() if mr.state == "opened" and mr.source not in self.branches}
        return rules.RetentionFacts(
            branch=self.branch, keep=self.keep, min_age=self.min_age, now=self.now,
            built=tuple(rules.Built(s, built[s], firsts.get(s)) for s in sorted(asked)),
            newest_success=newest_success, candidates=frozenset(candidates), default_branch=self.default,
            live_branches=dict(self.branches), live_tags=dict(self.tags), pinned_shas=pinned,
            other_refs=other_refs, deployed_shas=dict(in_use.shas), deployed_refs=dict(in_use.refs),
            open_sources=open_sources)

    def other_refs(self, shas: set[str], known: dict[int, MergeRequest]) -> dict[str, frozenset[str]]:
        """Retention.other_refs: per commit (and per built commit sharing its short SHA), the
        labels of the live refs other than the branch whose pipelines built it."""
        prefixes = {s[:8] for s in shas}
        asked = shas | {p.sha for p in self.pipelines if p.sha[:8] in prefixes}
        built = [p for p in self.pipelines if p.sha in asked]
        for p in built:                                      # merge_requests_by_iid for the unknown ones
            m = MR_REF.fullmatch(p.ref)
            if m:
                known.setdefault(int(m.group(1)), self.mrs[int(m.group(1))])
        alive = set(self.branches) | {mr.source for mr in self.mrs.values() if mr.state == "opened"}
        return built_elsewhere(built, self.pipelines, self.tags, known, own=f"branch:{self.branch}", alive=alive)

    def in_use(self) -> rules.InUse:
        """deployments.Protection.in_use: rules.in_use over GitLab's environments and deployments."""
        envs = [rules.Environment(e.name, e.state, tuple(rules.Deployment(d.id, d.sha, d.ref, d.status, d.finished)
                                                         for d in e.deployments), e.tier)
                for e in self.environments.values()]
        mrs = {mr.iid: rules.MergeRequest(mr.iid, mr.state, mr.source, mr.target, sha=mr.head)
               for mr in self.mrs.values()}
        return rules.in_use(envs, self.keep_deployments, mrs)

    # -- printing -----------------------------------------------------------------------------------
    def __repr__(self) -> str:  # what Hypothesis prints for a counter-example
        envs = [(e.name, e.state, [(d.id, short(d.sha), d.status) for d in e.deployments])
                for e in self.environments.values()]
        lines = [f"History(branch={self.branch!r} default={self.default!r} keep={self.keep} "
                 f"min_age={self.min_age:.0f} keep_deployments={self.keep_deployments} now={self.now:.0f}",
                 *(f"  {e}" for e in self.log),
                 f"  live branches: { {n: short(h) for n, h in self.branches.items()} }",
                 f"  git tags: { {n: short(s) for n, s in self.tags.items()} }",
                 f"  merge requests: {[(m.iid, m.source, m.state, short(m.head or '')) for m in self.mrs.values()]}",
                 f"  environments: {envs}",
                 f"  retired before: {sorted(short(s) for s in self.retired)})"]
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


def short(sha: str) -> str:
    """A SHA as printed: its short SHA and its end, which tell the pool's clashing commits apart."""
    return f"{sha[:8]}..{sha[-2:]}"


def is_protected(name: str) -> bool:
    return PROTECTED.fullmatch(name) is not None
