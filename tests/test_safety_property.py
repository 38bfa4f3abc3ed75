"""Property: cleaning a branch never deletes an image tag that a live ref's pipeline pushed,
whichever deliveries were lost and whatever happened before the worker ran.

Hypothesis generates random GitLab projects as a ground-truth model, independent of
rules.py (written from ../shared/reference/gitlab.md): branches whose names slug-collide
(`feature/a`, `feature-a`, `Feature_A`, long names cut at 63, names that slug to ""),
commits drawn from a small SHA pool so they are shared across branches, merge requests
merged the four ways GitLab merges (merge commit, fast-forward, squash with a merge commit,
squash fast-forwarded; a source that is behind is rebased first, as GitLab demands for
fast-forwards), merge requests closed or left open (some whose source branch was deleted),
git tags with tag pipelines, and CI pipelines that push images: branch pipelines, tag
pipelines and merge-request pipelines (`refs/merge-requests/<iid>/head` on the MR's head,
`/merge` on a temporary merged-results commit). Each pipeline pushes what a `.gitlab-ci.yml`
with the default settings pushes: `$CI_COMMIT_REF_SLUG` (the source branch's for merge-request
pipelines), the git tag's name or its slug (tag pipelines; both CI styles are drawn),
`$CI_COMMIT_SHA`, `$CI_COMMIT_SHORT_SHA`, and `latest` on the default branch.

Lost and late deliveries:

* every Pipeline Hook may be lost (or expired from pipeline memory): each pipeline is "seen"
  or not, and some projects lose all of them or none. GitLab's pipelines API still lists every
  pipeline, seen or not; memory only holds the seen ones;
* the worker runs some time after the merge or the branch deletion: in between the project
  goes on (the target branch moves on, a branch is created from B's head, a live branch runs a
  pipeline on one of B's commits, a git tag is pushed, B is created again, maybe with a new merge
  request, merge requests are opened, merged, closed). The facts are gathered at worker time,
  and the invariant is checked against what is live at worker time.

One branch B is cleaned (its merge request merged, or the branch deleted). The test builds
`Facts` the way `cleanup.gather()` does at worker time (`Project.facts`: GitLab's pipelines
record of ALL pipelines plus memory of the seen ones for B's commits and the other refs that
built them, labels filtered to live refs, fast-forward pins, open merge requests' heads,
commits/:sha/refs for the commits that are not the merge request's own) and skips when
`look_again()` would (B exists again after a deletion; an open merge request still uses B).
It calls `rules.plan()`, and checks against the model's own record of who pushed what:

  (a) every deleted tag that exists was pushed by B, or only by dead refs and named like
      B's own tags (B's slug, or a SHA of B): a dead namesake's leftovers, harmless;
  (b) no pipeline of a ref live at worker time pushed it: a live branch (B excluded: it is the
      one cleaned, even when a merge left it or it was created again), the source branch of an
      open merge request (even deleted), an open merge request's own pipelines, a live git tag;
  (c) it does not match the default PROTECTED_TAGS;
  (d) it is not the SHA tag of a built commit that a live ref holds, whose images its pipelines
      push or will push (a pipeline is created after its push, and may not exist yet when the
      worker runs): the head of a live branch or of an open merge request, a git tag's commit,
      B's head fast-forwarded into a live branch (gitlab.md: the target's commit now), and (full
      SHA only) a commit a live branch contains that is not the merge request's own (the commit
      B started from). With every pipeline in GitLab's record, (b) alone no longer needs these
      keep rules; (d) is what still holds them to the README's promise;
  and applying the plan to a simulated registry (single-tag deletes) leaves every other
  tag on the digest it had. Liveness too: B's slug, and the tags of commits only B and dead
  branches built (and no live ref holds), are deleted when nothing else claims them, so a plan
  that deletes nothing fails.

This is one property with ANY subset of pipelines unseen. Before GitLab's pipelines API was
read, a lost Pipeline Hook of a live ref on one of the merge request's own commits let that
commit's SHA tags go (then a documented limitation; now
test_regression_unseen_pipeline_of_an_mr_commit_built_elsewhere).

Counter-examples this test found, fixed and kept as named regression tests below:
GIT_TAG_IMAGE (a git tag named like B's slug lost its image: rules.py bug), SHORT_SHA_CLASH
(another commit's 8-character short SHA equals one of B's), SHA_NAMED_BRANCH (a branch named like
a short SHA), UNSEEN (a lost Pipeline Hook of a live ref) and OPEN_MR_SOURCE_SLUG (the slug tag of
an open merge request's deleted source branch named like B: gather() now claims those slugs).

Not modelled: fork merge requests (another project's registry), non-default BRANCH_TAGS /
COMMIT_TAGS templates, pipelines deleted from GitLab (then neither GitLab's record nor a lost
hook can tell), protected branches, changes during the cleanup itself (after the facts were
gathered), merge trains, how the pipelines record is read (paging, its cursor: see
tests/test_gitlab_record.py).

The model is tests/support/safety_model.py, its generator tests/support/safety_generator.py and
the checks (a) to (d), registry and liveness tests/support/safety_checks.py; this file holds the
property and the counter-examples it found.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.safety_checks import check, run_plan, violations
from tests.support.safety_generator import projects
from tests.support.safety_model import Project, ci_slug
from workers import rules
from workers.rules import Facts, Policy, plan


# 3000 examples: each is a history of up to ~25 events, a handful of pipelines and merge requests,
# at ~3-4 ms each (plus ~20% Hypothesis discards as too long), so ~12-18 s on one core. The pools are
# small on purpose, so at this count every protection path is hit many times per run (see
# --hypothesis-show-statistics). Checked by hand-made mutants of Project.facts (gather's model) and
# of the Facts given to plan(): each of these fails within a run: GitLab's record of unseen
# pipelines ignored, B's commits from the record dropped, short-SHA clashes dropped, open merge
# requests' sources not alive, dead labels not filtered out of other_refs, no fast-forward pin, no
# open-MR-head pin, no branch-point pin (commits/:sha/refs), no pins at all, no other_refs, no live
# branches (slugs, heads), live heads blanked, no git tags. Two mutants are equivalent within one
# project and survive: dropping the target branch's head pin (it is a live head too) and labelling
# open merge requests' pipelines by their source branch (always alive as an open MR's source).
EXAMPLES = 3000
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@SETTINGS
@given(projects())
def test_plan_never_deletes_a_live_refs_tag(pr):
    """(a), (b), (c), registry digests and liveness, with any Pipeline Hook lost and late events."""
    check(pr)


# The model's slug is written from gitlab.md; if rules.ref_slug drifts from it, the property above
# would be checking the wrong names. Arbitrary text, unicode included.
@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), min_size=1, max_size=80))
def test_rules_slug_is_gitlabs_slug(name):
    assert rules.ref_slug(name) == ci_slug(name)


# --- counter-examples found by the property, as plain tests ---------------------------------------

SHA_MAIN = "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"
SHA_OLD = "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"
SHA_X = "c" * 40
SHA_Y = "0123abcd" * 5


def deleted_by(facts: Facts) -> set[str]:
    return {d.tag for d in plan(facts, Policy()) if d.delete}


def merged_project(method: str, *, cleaned: str = "feature/x", remove_source: bool = True) -> Project:
    """main at SHA_OLD; feature/x from it with SHA_X (its pipeline, seen, pushed :feature-x and
    :SHA_X), merged into main by `method`. Returns the project right after the merge."""
    pr = Project(default="main", cleaned=cleaned, tag_images="name")
    pr.set_branch("main", [SHA_OLD])
    pr.set_branch(cleaned, [SHA_OLD, SHA_X])
    pr.run_pipeline("branch", cleaned, SHA_X, True)
    mr = pr.open_mr(cleaned, "main")
    mr.state, mr.method = "merged", method
    sha = {"merge": SHA_MAIN, "squash": SHA_Y, "squash_ff": SHA_Y}.get(method)
    if method == "merge":
        mr.merge_commit_sha = sha
    elif method.startswith("squash"):
        mr.squash, mr.squash_commit_sha = True, sha
    pr.set_branch("main", [SHA_OLD] + ([SHA_X] if not method.startswith("squash") else []) + ([sha] if sha else []))
    pr.trigger, pr.target, pr.mr_iid, pr.last_commit = "merge", "main", mr.iid, SHA_X
    pr.b_history = [SHA_OLD, SHA_X]
    if remove_source:
        pr.delete_branch(cleaned)
    return pr


# GIT_TAG_IMAGE, found by the property (first case, shrunk): a tag pipeline pushes its image as
# `:$CI_COMMIT_TAG` (or `:$CI_COMMIT_REF_SLUG`), and a git tag can be named like the cleaned branch's
# slug: git tag `release-1-2` next to branch `release/1.2`, not covered by the default PROTECTED_TAGS.
# live_owners() claimed the SHA a git tag points at but never the tag's own name. A bug in rules.py.
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


# UNSEEN on the branch point, found by the property when lost hooks were first allowed (shrunk: a
# branch made from main at an old commit): feature/x is created from main at SHA_OLD, its first
# pipeline builds SHA_OLD, main has moved on, and main's own pipeline hook for SHA_OLD was lost.
# Fixed in gather(): SHAs that are not the merge request's own commits are checked with GitLab's
# commits/:sha/refs, which names main (and now GitLab's pipelines say main built it, too).
def test_regression_unseen_pipeline_of_a_live_branch_on_the_branch_point():
    facts = Facts(branch="feature/x", shas=frozenset({SHA_OLD, SHA_X}), default_branch="main",
                  live_branches={"main": SHA_MAIN},
                  pinned_shas={SHA_MAIN: "commit is the head of the default branch 'main'",
                               SHA_OLD: "commit is on live branch 'main'"},
                  other_refs={SHA_OLD: frozenset({"branch:feature/x"})})
    assert deleted_by(facts) == {"feature-x", SHA_X, SHA_X[:8]}


# UNSEEN on a merge request's own commit: what was the documented limitation. A merge request's own
# commit that ANOTHER live ref also built, whose Pipeline Hook was lost. After a merge the target
# contains every MR commit, so commits/:sha/refs can't tell "also built elsewhere" from "merged",
# and pipeline memory never heard. GitLab's pipelines API lists feature/y's pipeline: kept.
def test_regression_unseen_pipeline_of_an_mr_commit_built_elsewhere():
    pr = merged_project("merge")
    pr.set_branch("feature/y", [SHA_OLD, SHA_X])
    pr.run_pipeline("branch", "feature/y", SHA_X, seen=False)     # its hook never arrived
    pr.set_branch("feature/y", [SHA_OLD, SHA_X, SHA_MAIN])        # and feature/y moved on
    facts, deleted = run_plan(pr)
    assert "branch:feature/y" in facts.other_refs[SHA_X]
    assert deleted == {"feature-x"}
    assert not violations(pr, facts, deleted)


def test_remembered_pipeline_of_a_live_branch_keeps_its_sha_tags():
    # The branch point again, with main's pipeline remembered: the tags stay.
    facts = Facts(branch="feature/x", shas=frozenset({SHA_OLD, SHA_X}), default_branch="main",
                  live_branches={"main": SHA_MAIN},
                  pinned_shas={SHA_MAIN: "commit is the head of the default branch 'main'"},
                  other_refs={SHA_OLD: frozenset({"branch:feature/x", "branch:main"})})
    assert deleted_by(facts) == {"feature-x", SHA_X, SHA_X[:8]}


# SHORT_SHA_CLASH, found by the property (second case, shrunk): main built deadbeef…0001 (seen) and
# moved on; feature/a's last commit is deadbeef…ffff. Both pipelines push :deadbeef. Fixed in gather:
# GitLab's record (and memory) is asked about commits sharing the prefix (mains here).
def test_regression_short_sha_shared_with_a_live_branchs_commit():
    mine, mains = "deadbeef" + "f" * 32, "deadbeef" + "0" * 31 + "1"
    facts = Facts(branch="feature/a", shas=frozenset({mine}), default_branch="main",
                  live_branches={"main": SHA_OLD},
                  pinned_shas={SHA_OLD: "commit is the head of the default branch 'main'"},
                  other_refs={mains: frozenset({"branch:main"})})
    assert "deadbeef" not in deleted_by(facts)
    assert mine in deleted_by(facts)                      # the full-SHA tag is B's alone


# SHA_NAMED_BRANCH, hit by the property: a branch named like a short SHA (`cafebabe`, or a date such
# as `20240115`) owns the slug tag :cafebabe, which is also main's tag for commit cafebabe1111…
# Fixed in rules.plan: a SHA-shaped branch tag that is not one of B's own commit tags is kept.
def test_regression_branch_named_like_a_short_sha():
    facts = Facts(branch="cafebabe", shas=frozenset({SHA_X}), default_branch="main",
                  live_branches={"main": SHA_OLD},
                  pinned_shas={SHA_OLD: "commit is the head of the default branch 'main'"})
    assert "cafebabe" not in deleted_by(facts)


# Dead refs do not protect: feature/a is cleaned, the dead branch feature-a (a namesake) built SHA_X
# too. Only dead refs pushed :feature-a and :SHA_X, so they go: nobody loses an image in use.
def test_dead_namesakes_leftover_tags_are_deleted():
    pr = Project(default="main", cleaned="feature/a", tag_images="name")
    pr.set_branch("main", [SHA_MAIN])
    pr.set_branch("feature-a", [SHA_MAIN, SHA_X])
    pr.run_pipeline("branch", "feature-a", SHA_X, seen=True)
    pr.delete_branch("feature-a")
    pr.set_branch("feature/a", [SHA_MAIN, SHA_X])
    pr.trigger, pr.last_commit, pr.b_history = "branch_deleted", SHA_X, [SHA_MAIN, SHA_X]
    pr.delete_branch("feature/a")
    facts, deleted = run_plan(pr)
    assert SHA_X not in facts.other_refs                  # feature-a is dead: no protection
    assert deleted == {"feature-a", SHA_X, SHA_X[:8]}
    assert not violations(pr, facts, deleted)


# The merge methods, as the end-to-end tests in test_gitlab_record.py run them on the real registry.
def test_fast_forward_head_stays_when_the_target_moved_on_and_its_hook_was_lost():
    pr = merged_project("ff")
    pr.run_pipeline("branch", "main", SHA_X, seen=False)          # main's pipeline on the head: lost
    pr.set_branch("main", pr.branches["main"] + [SHA_MAIN])       # main moves on before the worker runs
    facts, deleted = run_plan(pr)
    assert "fast-forward" in facts.pinned_shas[SHA_X] and "branch:main" in facts.other_refs[SHA_X]
    assert deleted == {"feature-x"}


def test_fast_forward_head_stays_without_the_targets_pipeline():
    pr = merged_project("ff")
    pr.set_branch("main", pr.branches["main"] + [SHA_MAIN])
    facts, deleted = run_plan(pr)
    assert SHA_X not in facts.other_refs and "fast-forward" in facts.pinned_shas[SHA_X]
    assert deleted == {"feature-x"}


@pytest.mark.parametrize("method", ["squash", "squash_ff"])
def test_squash_merge_cleans_the_mr_commits_and_keeps_the_squash_commit(method):
    pr = merged_project(method)
    pr.run_pipeline("branch", "main", SHA_Y, seen=False)          # main built the squash commit
    pr.set_branch("main", pr.branches["main"] + [SHA_MAIN])
    facts, deleted = run_plan(pr)
    assert deleted == {"feature-x", SHA_X, SHA_X[:8]}
    assert not violations(pr, facts, deleted)


# OPEN_MR_SOURCE_SLUG, found by the property (shrunk): branch feature-a has an open merge request
# !1 and is then deleted (GitLab keeps the merge request open); its pipelines pushed :feature-a.
# feature/a (same slug) is merged and cleaned: :feature-a went, although an open merge request's
# source branch is in use "even after the branch was deleted" (look_again skips B for it, the sweep
# keeps that branch's tags) and GitLab re-runs the MR's pipelines as :feature-a. Fixed: gather()
# passes the open merge requests' deleted sources (Facts.open_sources) and live_owners() claims them.
def test_regression_open_merge_requests_deleted_source_keeps_its_slug():
    pr = Project(default="main", cleaned="feature/a", tag_images="name")
    pr.set_branch("main", [SHA_OLD])
    pr.set_branch("feature-a", [SHA_OLD, SHA_Y])
    pr.run_pipeline("branch", "feature-a", SHA_Y, seen=True)     # pushed :feature-a and :SHA_Y
    pr.open_mr("feature-a", "main")
    pr.delete_branch("feature-a")                                 # the merge request stays open
    pr.set_branch("feature/a", [SHA_OLD, SHA_X])
    pr.run_pipeline("branch", "feature/a", SHA_X, seen=True)
    mr = pr.open_mr("feature/a", "main")
    mr.state, mr.method, mr.merge_commit_sha = "merged", "merge", SHA_MAIN
    pr.set_branch("main", [SHA_OLD, SHA_X, SHA_MAIN])
    pr.trigger, pr.target, pr.mr_iid, pr.last_commit, pr.b_history = "merge", "main", mr.iid, SHA_X, [SHA_OLD, SHA_X]
    pr.delete_branch("feature/a")
    facts, deleted = run_plan(pr)
    assert SHA_Y not in deleted                                    # its commit is the open MR's head: kept
    assert not violations(pr, facts, deleted), violations(pr, facts, deleted)   # and so is :feature-a
