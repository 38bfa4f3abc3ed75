"""The checks of the safety property: does a plan delete a tag a live ref's pipeline pushed?

`run_plan(pr)` is the worker's decision at worker time (skip, or `rules.plan` on the model's
`Facts`); `violations(pr, facts, deleted)` lists every broken rule: (a) a deleted tag that is not
B's by name, (b) one a live ref's pipeline pushed, (c) one matching PROTECTED_TAGS, (d) the SHA
tag of a commit a live ref holds. `check(pr)` runs the plan and holds it to all of these, to a
simulated registry (`check_registry`: nothing else moves) and to liveness (`check_liveness`:
what nothing claims is deleted). `KNOWN_GAPS` names the gaps the property excuses (none today).
Over the model of tests/support/safety_model.py; the property is tests/test_safety_property.py.
"""

from __future__ import annotations

import re

from tests.support.safety_model import (
    BRANCH_NAMES, GIT_TAG_NAMES, PROTECTED, SHA_POOL, TEMP_POOL, Pipeline, Project, ci_slug, event, note, pushable,
    sha_tags,
)
from workers.rules import Facts, Policy, plan

# Ways a live ref's push escapes the product: none today. A gap found and not yet fixed would be
# named here (the property excuses it) and kept as a strict-xfail test, so the excuse goes with the fix.
OPEN_MR_SOURCE_SLUG = "open-mr-source-slug"   # a deleted source branch of an open MR, named like B
KNOWN_GAPS: frozenset[str] = frozenset()


def gap_of(pr: Project, p: Pipeline, tag: str) -> str | None:
    """Which known gap lets live pipeline `p`'s `tag` be deleted; None: none may."""
    if (p.kind != "tag" and tag == ci_slug(p.branch) and p.branch not in pr.branches
            and any(mr.source == p.branch for mr in pr.open_mrs())):
        return OPEN_MR_SOURCE_SLUG
    return None


def held(pr: Project) -> dict[str, str]:
    """Commits a live ref holds, whose SHA tags its pipelines push or will push (a pipeline is created
    after its push, and may not exist yet when the worker runs), with why: the head of a live
    branch, of an open merge request, a git tag's commit, B's head fast-forwarded into a live branch
    (gitlab.md: it is the target's commit now), and any commit a live branch or git tag contains
    that is not one of the cleaned merge requests' own commits (the commit B was created from)."""
    out: dict[str, str] = {}
    for name, head in pr.live_heads().items():
        out.setdefault(head, f"the head of live branch {name!r}")
    for name, sha in pr.tags.items():
        out.setdefault(sha, f"the commit of git tag {name!r}")
    for mr in pr.open_mrs():
        if mr.sha:
            out.setdefault(mr.sha, f"the head of open merge request !{mr.iid}")
    for sha, mr in pr.fast_forward_heads().items():
        out.setdefault(sha, f"fast-forwarded into live {mr.target!r} by !{mr.iid}")
    mine = pr.mr_shas()
    for name, history in pr.branches.items():
        if name != pr.cleaned:
            for sha in history:
                if sha not in mine:
                    out.setdefault(sha, f"on live branch {name!r}, not the merge request's own")
    return out


def tips(pr: Project) -> set[str]:
    """The held commits a pipeline of a live ref builds (or will): heads, git tags, fast-forwards."""
    return (set(pr.live_heads().values()) | set(pr.tags.values()) | {mr.sha for mr in pr.open_mrs()}
            | set(pr.fast_forward_heads()))


def violations(pr: Project, facts: Facts | None, deleted: set[str]) -> list[str]:
    pushers = pr.pushers()
    holders, tip = held(pr), tips(pr)
    b_commits = pr.ever_on[pr.cleaned] | set(pr.b_history) | (set(facts.shas) if facts else set())
    owned_by_name = {ci_slug(pr.cleaned)} | {t for s in b_commits for t in sha_tags(s)}
    found = []
    for tag in sorted(deleted):
        if PROTECTED.fullmatch(tag):
            found.append(f"(c) {tag!r} matches PROTECTED_TAGS")
        for sha, why in sorted(holders.items()):
            # Only a built commit has images. A short tag may also be another commit's: it counts
            # for the commits a live ref's pipeline builds (or will), the full tag for all.
            if (tag == sha or (tag == sha[:8] and sha in tip)) and any(p.sha == sha for p in pr.pipelines):
                found.append(f"(d) {tag!r} is a SHA tag of {sha[:8]}, {why}")
        pushes = pushers.get(tag, [])
        if not pushes:
            continue                      # not in the registry: the delete is a 404, "absent"
        if not any(p.branch == pr.cleaned for p in pushes):
            # Only dead refs' leftovers may go without B having pushed them, and only by B's names;
            # a live pusher is (b)'s business below.
            if tag not in owned_by_name:
                found.append(f"(a) {tag!r} is not one of {pr.cleaned!r}'s names")
            elif not any(pr.is_live(p) for p in pushes):
                event("deleted a dead namesake's leftover tag")
        for p in pushes:
            if pr.is_live(p):
                gap = gap_of(pr, p, tag)
                found.append(f"(b) {tag!r} was pushed by live {p}" + (" (its hook was lost)" if not p.seen else "")
                             + (f" [gap: {gap}]" if gap else ""))
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
                "fast-forward merged", "open merge request", "also the tag of live branch",
                "head of live branch", "on live", "tagged", "image of git tag", "built on",
                "looks like a commit SHA")


def run_plan(pr: Project) -> tuple[Facts | None, set[str]]:
    """The worker's decision at worker time: None and nothing deleted when it skips."""
    why = pr.skipped()
    if why:
        event("skipped: " + why.split(" ")[0])
        return None, set()
    facts = pr.facts()
    decisions = plan(facts, Policy())
    names = [d.tag for d in decisions]
    assert len(names) == len(set(names)), "a tag decided twice"
    for d in decisions:                       # coverage only: which protections the examples exercise
        if not d.delete:
            event("kept: " + next((k for k in KEPT_BECAUSE if k in d.reason), d.reason))
        if d.delete and any(not p.seen and p.sha in d.tag for p in pr.pipelines):
            event("deleted a tag whose pipeline's hook was lost")
    for sha, refs in facts.other_refs.items():
        unseen_only = {f"{p.kind}:{p.ref}" for p in pr.pipelines if p.sha == sha and not p.seen}
        if unseen_only and refs and not any((lb, sha) in pr.memory() for lb in refs):
            event("protected only by GitLab's record (its hooks were lost)")
    return facts, {d.tag for d in decisions if d.delete}


def check_liveness(pr: Project, facts: Facts, deleted: set[str]) -> None:
    """What nothing else claims is deleted: the property can fail by deleting too little too."""
    pushers = pr.pushers()
    # A live branch's slug, and an open merge request's source branch's (deleted or not): in use.
    live_slugs = {ci_slug(n) for n in pr.live_heads()} | {ci_slug(mr.source) for mr in pr.open_mrs()}
    slug = ci_slug(pr.cleaned)
    git_tag_images = {n for t in pr.tags for n in (t, ci_slug(t))}  # claimed whether pushed or not
    if (pushable(slug) and not PROTECTED.fullmatch(slug) and slug not in live_slugs
            and slug not in git_tag_images
            and not re.fullmatch(r"[0-9a-f]{8}|[0-9a-f]{40}", slug)
            and not any(pr.is_live(p) for p in pushers.get(slug, []))):
        assert slug in deleted, f"B's own slug {slug!r} was kept"
        event("liveness: slug deleted")
    taken_names = set(BRANCH_NAMES) | set(GIT_TAG_NAMES)
    open_heads = {mr.sha for mr in pr.open_mrs()}
    mr_shas = pr.mr_shas()
    everything = SHA_POOL + TEMP_POOL

    def dead_branch_work(p: Pipeline) -> bool:
        """A pipeline of B, or of a dead branch that was never a git tag's name: it protects nothing.
        (GitLab's pipeline list does not say which pipelines were a git tag's: a branch pipeline whose
        ref is also a live git tag's name counts as the tag's, a release, and is kept.)"""
        if p.kind == "tag" or (p.kind == "branch" and p.ref in pr.tags):
            return False
        return p.branch == pr.cleaned or (not pr.is_live(p) and p.branch not in pr.ever_tags)

    # B's commits as the model knows them, not as the facts say: every pipeline B (and its merge
    # requests) ran, the merge requests' commits, and the delivery's SHA.
    mine = {p.sha for p in pr.pipelines if p.branch == pr.cleaned} | mr_shas | {pr.last_commit}
    for sha in sorted(mine):
        alone = (sha not in pr.known_shas() and sha not in open_heads
                 and sha not in pr.fast_forward_heads()
                 and (sha in mr_shas or not pr.live_container(sha))
                 and all(dead_branch_work(p) for p in pr.pipelines if p.sha == sha)
                 and sum(s[:8] == sha[:8] for s in everything) == 1
                 and not {sha, sha[:8]} & taken_names)
        if alone:
            assert {sha, sha[:8]} <= deleted, f"B's own commit {sha[:8]} kept its tags"
            event("liveness: commit tags deleted")
            if any(p.branch != pr.cleaned for p in pr.pipelines if p.sha == sha):
                event("liveness: commit also built by a dead branch deleted")


def check(pr: Project, allowed_gaps: frozenset[str] = KNOWN_GAPS) -> None:
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
    if facts is not None:
        check_liveness(pr, facts, deleted)
