"""Property: cleaning a branch never deletes an image tag that a live ref's pipeline pushed.

Hypothesis generates random GitLab projects as a ground-truth model, independent of
rules.py: branches whose names slug-collide (`feature/a`, `feature-a`, `Feature_A`, long
names cut at 63, names that slug to ""), commits drawn from a small SHA pool so they are
shared across branches, fast-forward and merge-commit merges, git tags with tag
pipelines, and CI pipelines that push images. Each pipeline pushes what a
`.gitlab-ci.yml` with the default settings pushes: `$CI_COMMIT_REF_SLUG` (branch
pipelines), the git tag's name or its slug (tag pipelines; both CI styles are drawn),
`$CI_COMMIT_SHA`, `$CI_COMMIT_SHORT_SHA`, and `latest` on the default branch. Some
pipelines are "unseen": their hook was lost (GitLab never re-sends) or their memory expired.

One branch B is then cleaned (merged, or deleted). The test builds `Facts` exactly the
way `cleanup.gather()` does from that model, calls `rules.plan()`, and checks against
the model's own record of who pushed what:

  (a) every deleted tag that exists was pushed by B, or only by dead refs and named like
      B's own tags (B's slug, or a SHA of B): a dead namesake's leftovers, harmless;
  (b) no pipeline of a live ref (a live branch, the default branch, a git tag) pushed it;
  (c) it does not match the default PROTECTED_TAGS;
  and applying the plan to a simulated registry (single-tag deletes) leaves every other
  tag on the digest it had. Liveness too: B's slug and the tags of commits only B built
  are deleted when nothing else claims them, so a plan that deletes nothing fails.

What the rules can know is limited by what they are told. GitLab tells the worker the
heads of live branches and the targets of git tags; everything else about other refs'
commits comes from pipeline memory, and the worker asks memory only about B's own SHAs.
So there are two properties:

* test_plan_never_deletes_a_live_refs_tag: the full invariant. "Unseen" pipelines are
  restricted to the case that needs no memory: pipelines of dead refs (B included), and
  pipelines of live refs on a commit that is, at cleanup time, a live branch head or a
  git tag target. (The product documents no promise for lost hooks; the README says
  pipeline events are how it learns which commits another ref built.)
* test_plan_keeps_every_tag_it_can_know_about: any pipeline may be unseen, and the
  guarantee is what IS promised: a live ref's tag survives when it is the live branch's
  slug, or its commit is a live head or git tag target, or the pipeline that pushed it
  is in memory. A live ref's pipeline missing from memory (lost hook, or older than
  PIPELINE_MEMORY_DAYS) on a commit it shares with B, that is no live head, lets that
  commit's SHA tags be deleted: a product limitation, see
  test_limitation_unseen_pipeline_of_a_live_branch.

Counter-examples this test found, now fixed and kept as named regression tests below:
GIT_TAG_IMAGE (a git tag named like B's slug lost its image: rules.py bug), SHORT_SHA_CLASH
(another commit's 8-character short SHA equals one of B's: gather() now asks memory about
commits sharing the prefix) and SHA_NAMED_BRANCH (a branch named like a short SHA: plan()
now keeps SHA-shaped branch tags that are not B's own commit tags).

Not modelled: fork merge requests (another project's registry), non-default BRANCH_TAGS /
COMMIT_TAGS templates, memory caps (only expiry matters to `other_refs`, and expiry is
"unseen"). Within one project the pinned SHAs are also live heads, so they add nothing here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers import rules
from workers.rules import Facts, Policy, plan


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


# --- the model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pipeline:
    number: int         # push order: later pipelines overwrite earlier pushes of the same tag
    kind: str           # "branch" or "tag"
    ref: str
    sha: str
    seen: bool          # did its hook reach pipeline memory (and is it still remembered)?
    pushed: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.ref}"

    @property
    def digest(self) -> str:
        return f"sha256:{self.number:064x}"

    def __str__(self) -> str:
        return (f"#{self.number} {self.label}@{self.sha[:8]} {'seen' if self.seen else 'UNSEEN'} "
                f"pushed {list(self.pushed)}")


@dataclass(repr=False)
class Project:
    """A project's history as ground truth: what exists now, and what every pipeline pushed."""

    default: str
    cleaned: str
    tag_images: str                                   # "name" ($CI_COMMIT_TAG) or "slug" (REF_SLUG)
    branches: dict[str, list[str]] = field(default_factory=dict)    # live: name -> history, head last
    tags: dict[str, str] = field(default_factory=dict)              # live git tags: name -> SHA
    ever_on: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))  # every SHA a branch had
    pipelines: list[Pipeline] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    trigger: str = ""
    target: str | None = None
    mr_commits: tuple[str, ...] = ()
    last_commit: str = ""

    # -- events -------------------------------------------------------------------------------
    def set_branch(self, name: str, history: list[str]) -> None:
        self.branches[name] = history
        self.ever_on[name].update(history)

    def run_pipeline(self, kind: str, ref: str, sha: str, seen: bool) -> None:
        if kind == "branch":
            pushed = [ci_slug(ref), *sha_tags(sha)] + (["latest"] if ref == self.default else [])
        else:
            pushed = [ref if self.tag_images == "name" else ci_slug(ref), *sha_tags(sha)]
        pushed = tuple(dict.fromkeys(t for t in pushed if pushable(t)))
        self.pipelines.append(Pipeline(len(self.pipelines), kind, ref, sha, seen, pushed))

    # -- what is true at cleanup time -----------------------------------------------------------
    def live_heads(self) -> dict[str, str]:
        return {n: h[-1] for n, h in self.branches.items() if n != self.cleaned}

    def is_live(self, p: Pipeline) -> bool:
        if p.kind == "tag":
            return p.ref in self.tags
        return p.ref in self.branches and p.ref != self.cleaned

    def live_container(self, sha: str) -> str | None:
        """A live ref that contains the commit (GitLab's commits/:sha/refs), or None."""
        for name, history in sorted(self.live_heads_histories().items()):
            if sha in history:
                return f"branch {name!r}"
        for name, target in sorted(self.tags.items()):
            if target == sha:
                return f"tag {name!r}"
        return None

    def live_heads_histories(self) -> dict[str, list[str]]:
        return {n: h for n, h in self.branches.items() if n != self.cleaned}

    def known_shas(self) -> set[str]:
        """Commits GitLab itself names at cleanup time: live heads, git tag targets."""
        return set(self.live_heads().values()) | set(self.tags.values())

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
        return {(p.label, p.sha) for p in self.pipelines if p.seen}

    def facts(self) -> Facts:
        """What cleanup.gather() builds from GitLab and pipeline memory."""
        live = self.live_heads()
        pinned: dict[str, str] = {}
        if self.default in live:
            pinned[live[self.default]] = f"commit is the head of the default branch {self.default!r}"
        if self.target and self.target in live:
            pinned.setdefault(live[self.target], f"commit is the head of the target branch {self.target!r}")
        memory = self.memory()
        shas = set(self.mr_commits) | {self.last_commit}
        shas |= {sha for label, sha in memory if label == f"branch:{self.cleaned}"}
        # gather() asks GitLab which live refs contain the SHAs that are not the MR's own commits.
        for sha in sorted(shas - set(self.mr_commits)):
            holder = self.live_container(sha)
            if holder:
                pinned.setdefault(sha, f"commit is on live {holder}")
        other_refs = {}
        # gather() also asks memory about other built commits sharing a short SHA with B's.
        clashes = {s for _, s in memory if s[:8] in {x[:8] for x in shas}} - shas
        for sha in sorted(shas | clashes):
            refs = frozenset(label for label, s in memory if s == sha)
            if refs:
                other_refs[sha] = refs
        return Facts(branch=self.cleaned, shas=frozenset(shas), default_branch=self.default,
                     live_branches=live, live_tags=dict(self.tags), pinned_shas=pinned,
                     other_refs=other_refs)

    def __repr__(self) -> str:  # what Hypothesis prints for a counter-example
        return "Project(\n" + self.describe() + "\n)"

    def _repr_pretty_(self, printer, cycle) -> None:  # Hypothesis' printer looks for this first
        printer.text(repr(self))

    def describe(self) -> str:
        lines = [f"default={self.default!r} cleaned={self.cleaned!r} trigger={self.trigger} "
                 f"target={self.target!r} tag images by {self.tag_images}",
                 "events:", *(f"  {e}" for e in self.log),
                 "pipelines (push order):", *(f"  {p}" for p in self.pipelines),
                 f"live branches: { {n: h[-1][:8] for n, h in self.branches.items()} }",
                 f"git tags: { {n: s[:8] for n, s in self.tags.items()} }",
                 f"MR commits: {[s[:8] for s in self.mr_commits]} last commit: {self.last_commit[:8]}"]
        return "\n".join(lines)


# --- the generator --------------------------------------------------------------------------------

OPS = ("commit", "branch", "pipeline", "tag", "untag", "merge", "delete")


@st.composite
def projects(draw, unseen_anywhere: bool) -> Project:
    default = draw(st.sampled_from(DEFAULT_NAMES))
    cleaned = draw(st.sampled_from([n for n in BRANCH_NAMES if n != default]))
    pr = Project(default=default, cleaned=cleaned, tag_images=draw(st.sampled_from(("name", "slug"))))
    pr.set_branch(default, [draw(st.sampled_from(SHA_POOL))])
    seen = st.booleans()

    # Half the time a new branch is one of B's namesakes (same slug), so slug clashes are common.
    namesakes = [n for n in BRANCH_NAMES if ci_slug(n) == ci_slug(cleaned) and n not in (default, cleaned)]

    def step(after_event: bool) -> None:
        op = draw(st.sampled_from(OPS))
        names = [n for n in BRANCH_NAMES if n != default and not (after_event and n == cleaned)]
        if namesakes and draw(st.booleans()):
            names = namesakes
        movable = sorted(n for n in pr.branches if not (after_event and n == cleaned))
        if op == "commit":                     # push one commit, usually with its pipeline
            name = draw(st.sampled_from(movable))
            sha = draw(st.sampled_from(SHA_POOL))
            pr.set_branch(name, pr.branches[name] + [sha])
            pr.log.append(f"commit {sha[:8]} on {name!r}")
            if draw(st.booleans()):
                pr.run_pipeline("branch", name, sha, draw(seen))
        elif op == "branch":                   # create from another branch's head, or from any commit
            name = draw(st.sampled_from(names))
            if name in pr.branches:
                return
            if draw(st.booleans()):
                source = draw(st.sampled_from(sorted(pr.branches)))
                history = list(pr.branches[source])
                pr.log.append(f"branch {name!r} from {source!r} at {history[-1][:8]}")
            else:
                sha = draw(st.sampled_from(sorted({s for h in pr.ever_on.values() for s in h})))
                history = [sha]
                pr.log.append(f"branch {name!r} from commit {sha[:8]}")
            pr.set_branch(name, history)
            if draw(st.booleans()):
                pr.run_pipeline("branch", name, history[-1], draw(seen))
        elif op == "pipeline":                 # a pipeline on a branch head (retry, schedule, MR pipeline)
            name = draw(st.sampled_from(movable))
            pr.run_pipeline("branch", name, pr.branches[name][-1], draw(seen))
            pr.log.append(f"pipeline on {name!r}")
        elif op == "tag":                      # git tag on some commit, with a tag pipeline
            name = draw(st.sampled_from(GIT_TAG_NAMES))
            if name in pr.tags:
                return
            sha = draw(st.sampled_from(sorted({s for h in pr.ever_on.values() for s in h})))
            pr.tags[name] = sha
            pr.log.append(f"git tag {name!r} on {sha[:8]}")
            if draw(st.booleans()):
                pr.run_pipeline("tag", name, sha, draw(seen))
        elif op == "untag":
            if pr.tags:
                name = draw(st.sampled_from(sorted(pr.tags)))
                del pr.tags[name]
                pr.log.append(f"delete git tag {name!r}")
        elif op == "merge":                    # merge one branch into another (not B: B's merge is the event)
            candidates = [n for n in movable if n != cleaned]
            if len(candidates) < 2:
                return
            src = draw(st.sampled_from(candidates))
            dst = draw(st.sampled_from([n for n in candidates if n != src]))
            merge(pr, src, dst, draw, seen)
            if src != default and draw(st.booleans()):
                del pr.branches[src]
                pr.log.append(f"delete branch {src!r}")
        elif op == "delete":
            victims = [n for n in movable if n != default]
            if victims:
                name = draw(st.sampled_from(victims))
                del pr.branches[name]
                pr.log.append(f"delete branch {name!r}")

    for _ in range(draw(st.integers(0, 12))):
        step(after_event=False)

    # B must exist when its merge or deletion happens; maybe with work of its own.
    if cleaned not in pr.branches:
        source = draw(st.sampled_from(sorted(pr.branches)))
        pr.set_branch(cleaned, list(pr.branches[source]))
        pr.log.append(f"branch {cleaned!r} from {source!r}")
    for _ in range(draw(st.integers(0, 2))):
        sha = draw(st.sampled_from(SHA_POOL))
        pr.set_branch(cleaned, pr.branches[cleaned] + [sha])
        pr.log.append(f"commit {sha[:8]} on {cleaned!r}")
        if draw(st.booleans()):
            pr.run_pipeline("branch", cleaned, sha, draw(seen))

    # The event.
    history = pr.branches[cleaned]
    pr.last_commit = history[-1]
    if draw(st.booleans()):
        pr.trigger = "merge"
        pr.target = draw(st.sampled_from(sorted(n for n in pr.branches if n != cleaned)))
        pr.mr_commits = tuple(s for s in history if s not in pr.branches[pr.target])
        merge(pr, cleaned, pr.target, draw, seen)
        if draw(st.booleans()):
            del pr.branches[cleaned]             # force_remove_source_branch
            pr.log.append(f"delete branch {cleaned!r}")
    else:
        pr.trigger = "branch_deleted"
        if draw(st.booleans()):                  # it had merge requests: their commits are known
            pr.mr_commits = tuple(s for s in history if s not in pr.branches[default])
        del pr.branches[cleaned]
        pr.log.append(f"delete branch {cleaned!r} (push with after=000…)")
    pr.log.append("-- cleanup event; CLEANUP_DELAY passes --")

    for _ in range(draw(st.integers(0, 5))):   # the project goes on before the worker looks
        step(after_event=True)

    if not unseen_anywhere:
        # Memory is only needed for live refs' commits that GitLab does not name itself.
        known = pr.known_shas()
        pr.pipelines = [
            p if p.seen or not pr.is_live(p) or p.sha in known else
            Pipeline(p.number, p.kind, p.ref, p.sha, True, p.pushed)
            for p in pr.pipelines
        ]
    return pr


def merge(pr: Project, src: str, dst: str, draw, seen) -> None:
    """Fast-forward (dst's head becomes src's) or merge commit (a new SHA on dst)."""
    added = [s for s in pr.branches[src] if s not in pr.branches[dst]]
    if draw(st.booleans()):
        pr.set_branch(dst, pr.branches[dst] + added + [pr.branches[src][-1]])
        pr.log.append(f"fast-forward {dst!r} to {src!r} at {pr.branches[src][-1][:8]}")
    else:
        sha = draw(st.sampled_from(SHA_POOL))
        pr.set_branch(dst, pr.branches[dst] + added + [sha])
        pr.log.append(f"merge {src!r} into {dst!r} with merge commit {sha[:8]}")
    if draw(st.booleans()):
        pr.run_pipeline("branch", dst, pr.branches[dst][-1], draw(seen))


# --- checking -------------------------------------------------------------------------------------

# Ways a live ref's push can escape the rules. Each has a regression test at the end of this file.
UNSEEN = "unseen"                          # the pipeline is not in memory and its commit is no live head
GIT_TAG_IMAGE = "git-tag-image-name"       # a tag pipeline's image named after the git tag (rules.py bug)
SHORT_SHA_CLASH = "short-sha-clash"        # another commit with B's commit's 8-char prefix
SHA_NAMED_BRANCH = "sha-named-branch"      # B's slug equals another commit's short SHA
# Excused in both properties until fixed; remove a gap here when its regression test starts passing.
# GIT_TAG_IMAGE, SHORT_SHA_CLASH and SHA_NAMED_BRANCH were found by this test and fixed; their
# regression tests below must keep passing. UNSEEN is the one documented limitation.
KNOWN_GAPS: frozenset[str] = frozenset()


def gap_of(pr: Project, facts: Facts, p: Pipeline, tag: str) -> str | None:
    """Why the rules may miss that live pipeline `p` pushed `tag`; None when they must not miss it."""
    if tag in sha_tags(p.sha):
        if p.sha in pr.known_shas():
            return None                    # GitLab names this commit: a live head or a git tag target
        if tag == ci_slug(pr.cleaned) and p.sha not in facts.shas:
            return None                    # fixed: a SHA-shaped branch tag is never deleted
        if p.seen:
            return None                    # memory heard it (B's commits and short-SHA clashes)
        if p.sha in facts.shas and p.sha not in pr.mr_commits and pr.live_container(p.sha):
            return None                    # gather() asked GitLab, which names a live ref containing it
        return UNSEEN                      # hook lost: an MR commit another live ref built, or a clash
    if p.kind == "tag":
        return None                        # fixed: a live git tag's own image name is claimed
    return None                            # a live branch's slug, or latest: known by name


def violations(pr: Project, facts: Facts, deleted: set[str]) -> list[str]:
    pushers = pr.pushers()
    b_commits = pr.ever_on[pr.cleaned] | facts.shas
    owned_by_name = {ci_slug(pr.cleaned)} | {t for s in b_commits for t in sha_tags(s)}
    found = []
    for tag in sorted(deleted):
        if PROTECTED.fullmatch(tag):
            found.append(f"(c) {tag!r} matches PROTECTED_TAGS")
        pushes = pushers.get(tag, [])
        if not pushes:
            continue                      # not in the registry: the delete is a 404, "absent"
        if not any(p.label == f"branch:{pr.cleaned}" for p in pushes):
            # Only dead refs' leftovers may go without B having pushed them, and only by B's names;
            # a live pusher is (b)'s business below.
            if tag not in owned_by_name:
                found.append(f"(a) {tag!r} is not one of {pr.cleaned!r}'s names")
            elif not any(pr.is_live(p) for p in pushes):
                event("deleted a dead namesake's leftover tag")
        for p in pushes:
            if pr.is_live(p):
                gap = gap_of(pr, facts, p, tag)
                found.append(f"(b) {tag!r} was pushed by live {p}" + (f" [gap: {gap}]" if gap else ""))
    return found


def check_registry(pr: Project, deleted: set[str]) -> None:
    """Apply the plan as GitLab deletes one tag on a third-party registry; nothing else may move."""
    registry = pr.registry()
    before = dict(registry)
    for tag in sorted(deleted):
        if tag in registry:
            dummy = f"sha256:dummy-{tag}"          # push a unique manifest onto the tag ...
            registry[tag] = dummy
            for name in [n for n, d in registry.items() if d == dummy]:
                del registry[name]                 # ... and delete that digest: only this tag had it
    assert set(registry) == set(before) - deleted
    for tag, digest in registry.items():
        assert digest == before[tag], f"{tag} moved from {before[tag]} to {digest}"


KEPT_BECAUSE = ("PROTECTED_TAGS", "not a valid Docker tag", "default branch", "target branch",
                "also the tag of live branch", "head of live branch", "tagged", "built on")


def run_plan(pr: Project) -> tuple[Facts, set[str]]:
    facts = pr.facts()
    decisions = plan(facts, Policy())
    names = [d.tag for d in decisions]
    assert len(names) == len(set(names)), "a tag decided twice"
    for d in decisions:                       # coverage only: which protections the examples exercise
        if not d.delete:
            event("kept: " + next((k for k in KEPT_BECAUSE if k in d.reason), d.reason))
    return facts, {d.tag for d in decisions if d.delete}


def check_liveness(pr: Project, facts: Facts, deleted: set[str]) -> None:
    """What nothing else claims is deleted: the property can fail by deleting too little too."""
    pushers = pr.pushers()
    live_slugs = {ci_slug(n) for n in pr.live_heads()}
    slug = ci_slug(pr.cleaned)
    git_tag_images = {n for t in pr.tags for n in (t, ci_slug(t))}  # claimed whether pushed or not
    if (pushable(slug) and not PROTECTED.fullmatch(slug) and slug not in live_slugs
            and slug not in git_tag_images
            and not re.fullmatch(r"[0-9a-f]{8}|[0-9a-f]{40}", slug)
            and not any(pr.is_live(p) for p in pushers.get(slug, []))):
        assert slug in deleted, f"B's own slug {slug!r} was kept"
        event("liveness: slug deleted")
    taken_names = set(BRANCH_NAMES) | set(GIT_TAG_NAMES)
    for sha in facts.shas:
        alone = (sha not in pr.known_shas()
                 and (sha in pr.mr_commits or not pr.live_container(sha))
                 and all(p.label == f"branch:{pr.cleaned}" for p in pr.pipelines if p.sha == sha)
                 and sum(s[:8] == sha[:8] for s in SHA_POOL) == 1
                 and not {sha, sha[:8]} & taken_names)
        if alone:
            assert {sha, sha[:8]} <= deleted, f"B's own commit {sha[:8]} kept its tags"
            event("liveness: commit tags deleted")


def check(pr: Project, allowed_gaps: frozenset[str]) -> None:
    facts, deleted = run_plan(pr)
    note(f"facts: {facts}")
    note(f"deleted: {sorted(deleted)}")
    found = violations(pr, facts, deleted)
    real = [v for v in found if not any(f"[gap: {g}]" in v for g in allowed_gaps)]
    for v in found:
        if v not in real:
            event(f"excused: {v.split('[gap: ')[1].rstrip(']')}")
    assert not real, "\n".join(real)
    check_registry(pr, deleted)
    check_liveness(pr, facts, deleted)


# 2000 examples per property: each is a history of up to ~20 events and a handful of pipelines, at
# ~3 ms each (plus ~20% examples Hypothesis discards as too long), so ~6-7 s per property and ~15 s
# for the file on one core. The pools are small on purpose, so at this count every protection path
# and every known gap is hit several times per run (see --hypothesis-show-statistics); the rarest,
# SHA_NAMED_BRANCH, about 2-3 times. Checked by hand-made mutants of live_owners/Facts: each dropped
# protection (other_refs, live heads, live slugs, git tag targets, default slug) fails within a run.
EXAMPLES = 2000
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(projects(unseen_anywhere=False))
def test_plan_never_deletes_a_live_refs_tag(pr):
    """(a), (b), (c), registry digests and liveness, with memory missing only what GitLab names."""
    check(pr, KNOWN_GAPS)


@SETTINGS
@given(projects(unseen_anywhere=True))
def test_plan_keeps_every_tag_it_can_know_about(pr):
    """Any hook may be lost: only a live SHA tag whose pipeline memory never heard of may go."""
    check(pr, KNOWN_GAPS | {UNSEEN})


# The model's slug is written from gitlab.md; if rules.ref_slug drifts from it, the properties above
# would be checking the wrong names. Arbitrary text, unicode included.
@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=80))
def test_rules_slug_is_gitlabs_slug(name):
    assert rules.ref_slug(name) == ci_slug(name)


# --- counter-examples found by the properties, as plain tests ------------------------------------

SHA_MAIN = "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"
SHA_OLD = "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"
SHA_X = "c" * 40


def deleted_by(facts: Facts) -> set[str]:
    return {d.tag for d in plan(facts, Policy()) if d.delete}


# GIT_TAG_IMAGE, found by test_plan_never_deletes_a_live_refs_tag (first case, shrunk): a tag pipeline
# pushes its image as `:$CI_COMMIT_TAG` (or `:$CI_COMMIT_REF_SLUG`), and a git tag can be named like
# the cleaned branch's slug: git tag `release-1-2` next to branch `release/1.2`, not covered by the
# default PROTECTED_TAGS. live_owners() claims the SHA a git tag points at but never the tag's own
# name, although Facts.live_tags carries it: the release image is deleted. A bug in rules.py.
@pytest.mark.parametrize("branch, git_tag", [
    ("feature/a", "feature-a"),          # as shrunk: git tag feature-a on main's head
    ("release/1.2", "release-1-2"),      # the realistic one: a release branch and its release tag
    ("release-1.2", "release/1.2"),      # CI pushing $CI_COMMIT_REF_SLUG for tag pipelines too
])
def test_regression_git_tag_image_named_like_the_branch_slug(branch, git_tag):
    facts = Facts(branch=branch, shas=frozenset({SHA_X}), default_branch="main",
                  live_branches={"main": SHA_MAIN}, live_tags={git_tag: SHA_OLD},
                  pinned_shas={SHA_MAIN: "commit is the head of the default branch 'main'"})
    assert ci_slug(git_tag) not in deleted_by(facts)


# UNSEEN, found by test_plan_keeps_every_tag_it_can_know_about when the gap was not excused (shrunk: a
# branch made from main at an old commit; here in its everyday form): feature/x is created from main
# at SHA_OLD, its first pipeline builds SHA_OLD, main has moved on, and main's own pipeline hook for
# SHA_OLD was lost (or is older than PIPELINE_MEMORY_DAYS). Fixed in gather(): SHAs that are not the
# merge request's own commits are checked with GitLab's commits/:sha/refs, which names main.
def test_regression_unseen_pipeline_of_a_live_branch_on_the_branch_point():
    facts = Facts(branch="feature/x", shas=frozenset({SHA_OLD, SHA_X}), default_branch="main",
                  live_branches={"main": SHA_MAIN},
                  pinned_shas={SHA_MAIN: "commit is the head of the default branch 'main'",
                               SHA_OLD: "commit is on live branch 'main'"},
                  other_refs={SHA_OLD: frozenset({"branch:feature/x"})})
    assert deleted_by(facts) == {"feature-x", SHA_X, SHA_X[:8]}


# The limitation that remains (UNSEEN): a merge request's own commit that ANOTHER live ref also
# built, whose pipeline hook was lost. After a merge the target contains every MR commit, so GitLab's
# refs can't tell "also built elsewhere" from "merged": only pipeline memory can, and it never heard.
def test_limitation_unseen_pipeline_of_an_mr_commit_built_elsewhere():
    facts = Facts(branch="feature/x", shas=frozenset({SHA_X}), default_branch="main",
                  live_branches={"main": SHA_MAIN, "feature/y": SHA_MAIN},
                  pinned_shas={SHA_MAIN: "commit is the head of the default branch 'main'"})
    assert {SHA_X, SHA_X[:8]} <= deleted_by(facts)    # feature/y's :SHA_X image tag, if it pushed one, goes


def test_remembered_pipeline_of_a_live_branch_keeps_its_sha_tags():
    # The same project with main's pipeline remembered: the tags stay.
    facts = Facts(branch="feature/x", shas=frozenset({SHA_OLD, SHA_X}), default_branch="main",
                  live_branches={"main": SHA_MAIN},
                  pinned_shas={SHA_MAIN: "commit is the head of the default branch 'main'"},
                  other_refs={SHA_OLD: frozenset({"branch:feature/x", "branch:main"})})
    assert deleted_by(facts) == {"feature-x", SHA_X, SHA_X[:8]}


# SHORT_SHA_CLASH, found by test_plan_never_deletes_a_live_refs_tag (second case, shrunk): main built
# deadbeef…0001 (seen) and moved on; feature/a's last commit is deadbeef…ffff. Both pipelines push
# :deadbeef. gather() asks pipeline memory only about feature/a's own SHAs, so Facts never mention
# deadbeef…0001 and main's short-SHA tag is deleted. The rules cannot know; gather/history would have
# to look memory up by 8-character prefix. Rare (one 8-hex clash among built commits), but real.
def test_regression_short_sha_shared_with_a_live_branchs_commit():
    mine, mains = "deadbeef" + "f" * 32, "deadbeef" + "0" * 31 + "1"
    # Fixed in history/gather: memory is asked about commits sharing the prefix (mains here).
    facts = Facts(branch="feature/a", shas=frozenset({mine}), default_branch="main",
                  live_branches={"main": SHA_OLD},
                  pinned_shas={SHA_OLD: "commit is the head of the default branch 'main'"},
                  other_refs={mains: frozenset({"branch:main"})})
    assert "deadbeef" not in deleted_by(facts)
    assert mine in deleted_by(facts)                      # the full-SHA tag is B's alone


# SHA_NAMED_BRANCH, hit by test_plan_never_deletes_a_live_refs_tag: a branch named like a short SHA
# (`cafebabe`, or a date such as `20240115`) owns the slug tag :cafebabe, which is also main's tag
# for commit cafebabe1111… (not main's head any more). Same blind spot as above; here the rules could
# close it alone by never deleting a branch tag that looks like a (short) SHA.
def test_regression_branch_named_like_a_short_sha():
    # Fixed in rules.plan: a SHA-shaped branch tag that is not one of B's own commit tags is kept.
    facts = Facts(branch="cafebabe", shas=frozenset({SHA_X}), default_branch="main",
                  live_branches={"main": SHA_OLD},
                  pinned_shas={SHA_OLD: "commit is the head of the default branch 'main'"})
    assert "cafebabe" not in deleted_by(facts)


# Dead namesakes, seen by both properties (event "deleted a dead namesake's leftover tag"): feature/a
# never ran a pipeline, the dead branch feature-a did. Cleaning feature/a deletes :feature-a. By
# design: ownership is by name, and only dead refs pushed it, so nobody loses an image in use.
def test_dead_namesakes_leftover_slug_tag_is_deleted():
    facts = Facts(branch="feature/a", shas=frozenset({SHA_X}), default_branch="main",
                  live_branches={"main": SHA_MAIN},
                  pinned_shas={SHA_MAIN: "commit is the head of the default branch 'main'"},
                  other_refs={SHA_X: frozenset({"branch:feature-a"})})
    assert deleted_by(facts) == {"feature-a"}             # SHA_X stays: a (dead) ref built it
