"""Table-driven tests of the pure rules: slugs, templates, protection and SHA ownership."""

from __future__ import annotations

import re

import pytest

from workers import rules
from workers.rules import Facts, Policy, plan

SHA_A = "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"
SHA_B = "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"
SHA_C = "c" * 40
SHA_D = "1234567890abcdef1234567890abcdef12345678"


@pytest.mark.parametrize("ref, slug", [
    ("main", "main"),
    ("Feature/Checkout-Flow", "feature-checkout-flow"),
    ("feature/a", "feature-a"),
    ("feature-a", "feature-a"),
    ("FEATURE_A", "feature-a"),
    ("fix//double", "fix--double"),          # runs of '-' are kept
    ("-leading-and-trailing-", "leading-and-trailing"),
    ("release/1.2", "release-1-2"),
    ("ünïcode/branch", "n-code-branch"),
    ("---", ""),
    ("a" * 70, "a" * 63),                    # cut to 63
    ("a" * 62 + "/b", "a" * 62),             # cut, then '-' stripped
    ("../../etc/passwd", "etc-passwd"),
])
def test_ref_slug_matches_gitlab(ref, slug):
    assert rules.ref_slug(ref) == slug


@pytest.mark.parametrize("name, valid", [
    ("latest", True), ("feature-a", True), ("_x", True), ("v1.2.0", True), ("a" * 128, True),
    ("a" * 129, False), ("", False), ("-x", False), (".x", False), ("a/b", False), ("a:b", False),
    ("tag with space", False), ("é", False),
])
def test_docker_tag_grammar(name, valid):
    assert rules.is_docker_tag(name) is valid


@pytest.mark.parametrize("tag, protected", [
    ("latest", True), ("stable", True), ("v1", True), ("v1.2.0", True), ("1.2", True), ("1.2.3", True),
    ("1.2.3-rc1", True), ("v2.0.0+build.5", True),
    ("12345678", False),            # could be a short SHA: not a release
    ("feature-a", False), ("latest-feature", False), ("my-latest", False), ("stable2", False),
    ("v1-feature", True),           # v1 + suffix reads as a release: kept (safe side)
    ("1", False), ("version-2", False),
])
def test_default_protected_tags(tag, protected):
    assert bool(re.compile(rules.DEFAULT_PROTECTED_TAGS).fullmatch(tag)) is protected


@pytest.mark.parametrize("text, allowed, expected", [
    ("{ref_slug}", rules.BRANCH_FIELDS, ("{ref_slug}",)),
    (" {ref_slug} , {ref_slug}-build ,", rules.BRANCH_FIELDS, ("{ref_slug}", "{ref_slug}-build")),
    ("{sha},{short_sha}", rules.COMMIT_FIELDS, ("{sha}", "{short_sha}")),
    ("sha-{short_sha}", rules.COMMIT_FIELDS, ("sha-{short_sha}",)),
])
def test_parse_templates(text, allowed, expected):
    assert rules.parse_templates(text, allowed, "X") == expected


@pytest.mark.parametrize("text, allowed", [
    ("", rules.BRANCH_FIELDS), (" , ", rules.BRANCH_FIELDS), ("{sha}", rules.BRANCH_FIELDS),
    ("{ref_slug", rules.BRANCH_FIELDS), ("{}", rules.COMMIT_FIELDS), ("{0}", rules.COMMIT_FIELDS),
    ("{ref_slug.__class__}", rules.BRANCH_FIELDS),
])
def test_parse_templates_rejects(text, allowed):
    with pytest.raises(rules.RuleError):
        rules.parse_templates(text, allowed, "X")


@pytest.mark.parametrize("branch, templates, tags", [
    ("Feature/X", ("{ref_slug}",), {"feature-x"}),
    ("Feature/X", ("{ref}",), set()),              # raw name with '/' can't be a tag
    ("feature-x", ("{ref}", "{ref_slug}"), {"feature-x"}),
    ("Fix_1", ("{ref}", "{ref_slug}-img"), {"Fix_1", "fix-1-img"}),
    ("---", ("{ref_slug}",), set()),               # empty slug is no tag
])
def test_branch_tags(branch, templates, tags):
    assert rules.branch_tags(branch, templates) == tags


def decided(facts: Facts, policy: Policy = Policy()) -> tuple[set[str], dict[str, str]]:
    decisions = plan(facts, policy)
    deleted = {d.tag for d in decisions if d.delete}
    kept = {d.tag: d.reason for d in decisions if not d.delete}
    assert not deleted & set(kept)
    return deleted, kept


# Each row: a situation, the tags that go, and tags that must survive with a word of the reason.
PLAN_CASES = [
    pytest.param(
        Facts(branch="Feature/Checkout-Flow", shas=frozenset({SHA_A}), default_branch="main",
              live_branches={"main": SHA_B}),
        {"feature-checkout-flow", SHA_A, SHA_A[:8]}, {},
        id="plain-branch-owns-slug-and-sha-tags"),
    pytest.param(
        Facts(branch="feature/a", shas=frozenset({SHA_A}), default_branch="main",
              live_branches={"main": SHA_B, "feature-a": SHA_C}),
        {SHA_A, SHA_A[:8]}, {"feature-a": "live branch 'feature-a'"},
        id="slug-shared-with-live-branch-survives"),
    pytest.param(
        Facts(branch="Main", shas=frozenset(), default_branch="main", live_branches={"main": SHA_B}),
        set(), {"main": "default branch"},
        id="default-branch-slug-survives"),
    pytest.param(
        Facts(branch="feature/ff", shas=frozenset({SHA_A, SHA_C}), default_branch="main",
              live_branches={"main": SHA_A}),
        {"feature-ff", SHA_C, SHA_C[:8]},
        {SHA_A: "head of live branch 'main'", SHA_A[:8]: "head of live branch 'main'"},
        id="fast-forward-sha-now-main-head-survives"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({SHA_A}), default_branch="main",
              live_branches={"main": SHA_B}, pinned_shas={SHA_A: "head of the target branch 'develop'"}),
        {"feature-x"}, {SHA_A: "target branch", SHA_A[:8]: "target branch"},
        id="target-branch-head-survives"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({SHA_A, SHA_C}), default_branch="main",
              live_branches={"main": SHA_B}, other_refs={SHA_A: frozenset({"branch:main"}),
                                                         SHA_C: frozenset({"branch:feature/x"})}),
        {"feature-x", SHA_C, SHA_C[:8]}, {SHA_A: "built on branch:main", SHA_A[:8]: "built on branch:main"},
        id="sha-built-on-other-ref-survives"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({SHA_A}), default_branch="main",
              live_branches={"main": SHA_B}, other_refs={SHA_A: frozenset({"tag:v1.2.0"})}),
        {"feature-x"}, {SHA_A: "tag:v1.2.0"},
        id="sha-built-by-tag-pipeline-survives"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({SHA_A}), default_branch="main",
              live_branches={"main": SHA_B}, live_tags={"v1.2.0": SHA_A}),
        {"feature-x"}, {SHA_A: "tagged 'v1.2.0'"},
        id="sha-of-git-tag-survives"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({SHA_A}), default_branch="main",
              live_branches={"main": SHA_B, "feature/y": SHA_A}),
        {"feature-x"}, {SHA_A: "head of live branch 'feature/y'"},
        id="sha-head-of-another-live-branch-survives"),
    pytest.param(
        Facts(branch="latest", shas=frozenset(), default_branch="main", live_branches={"main": SHA_B}),
        set(), {"latest": "PROTECTED_TAGS"},
        id="branch-named-latest-keeps-latest"),
    pytest.param(
        Facts(branch="v1.2.0", shas=frozenset(), default_branch="main", live_branches={"main": SHA_B}),
        set(), {"v1-2-0": "PROTECTED_TAGS"},
        id="release-branch-slug-v1-2-0-is-protected"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({"not-a-sha", "0" * 40, SHA_A.upper()}),
              default_branch="main", live_branches={"main": SHA_B}),
        {"feature-x"}, {},
        id="malformed-shas-own-nothing"),
    pytest.param(
        Facts(branch="---", shas=frozenset(), default_branch="main", live_branches={"main": SHA_B}),
        set(), {"": "not a valid Docker tag"},
        id="empty-slug-is-no-tag"),
    pytest.param(
        Facts(branch="release/1.2", shas=frozenset({SHA_A}), default_branch="main",
              live_branches={"main": SHA_B}, live_tags={"release-1-2": SHA_C}),
        {SHA_A, SHA_A[:8]}, {"release-1-2": "image of git tag 'release-1-2'"},
        id="git-tag-image-named-like-the-slug-survives"),
    pytest.param(
        Facts(branch="cafebabe", shas=frozenset({SHA_A}), default_branch="main",
              live_branches={"main": SHA_B}),
        {SHA_A, SHA_A[:8]}, {"cafebabe": "looks like a commit SHA"},
        id="sha-shaped-branch-tag-survives"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({SHA_A}), default_branch="main",
              live_branches={"main": SHA_B},
              other_refs={SHA_A[:8] + "0" * 32: frozenset({"branch:main"})}),
        {"feature-x", SHA_A}, {SHA_A[:8]: "built on branch:main"},
        id="short-sha-shared-with-another-built-commit-survives"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({SHA_D}), default_branch="main",
              live_branches={"main": SHA_B}),
        {"feature-x", SHA_D, SHA_D[:8]}, {},
        id="numeric-short-sha-is-not-a-release"),
]


@pytest.mark.parametrize("facts, deleted, kept", PLAN_CASES)
def test_plan(facts, deleted, kept):
    got_deleted, got_kept = decided(facts)
    assert got_deleted == deleted
    for tag, why in kept.items():
        assert tag in got_kept, f"{tag} must survive"
        assert why in got_kept[tag]


def test_plan_with_custom_templates_and_protection():
    policy = Policy(branch_templates=("{ref_slug}", "{ref_slug}-cache"),
                    commit_templates=("sha-{short_sha}",),
                    protected=re.compile(r"keep-.*|latest"))
    facts = Facts(branch="keep/me", shas=frozenset({SHA_A}), default_branch="main",
                  live_branches={"main": SHA_B, "Keep_Me-Too": SHA_C})
    deleted, kept = decided(facts, policy)
    # keep-me is protected by the pattern; keep-me-cache too; only the SHA tag goes.
    assert deleted == {f"sha-{SHA_A[:8]}"}
    assert "PROTECTED_TAGS" in kept["keep-me"]
    assert "PROTECTED_TAGS" in kept["keep-me-cache"]


def test_plan_refuses_bad_branch_names():
    for branch in ("", "a\nb", "x" * 256, None):
        with pytest.raises(rules.RuleError):
            plan(Facts(branch=branch, shas=frozenset()), Policy())


# --- GitLab's record: pipeline refs and merge methods --------------------------------------------

@pytest.mark.parametrize("ref, iid", [
    ("refs/merge-requests/12/head", 12),
    ("refs/merge-requests/7/merge", 7),     # merged-results pipeline
    ("refs/merge-requests/3/train", 3),     # merge train
    ("refs/merge-requests/12/heads", None),
    ("refs/merge-requests/x/head", None),
    ("feature/refs/merge-requests/1/head", None),
    ("main", None),
    ("refs/heads/main", None),
])
def test_merge_request_of_ref(ref, iid):
    assert rules.merge_request_of_ref(ref) == iid


def _mr(**kw) -> rules.MergeRequest:
    base = dict(iid=5, state="merged", source_branch="feature/x", target_branch="main", sha=SHA_A)
    return rules.MergeRequest(**{**base, **kw})


@pytest.mark.parametrize("mr, head", [
    (_mr(), SHA_A),                                                     # fast-forward: head is main's now
    (_mr(merge_commit_sha=SHA_B), None),                                # merge commit: a new commit
    (_mr(squash=True, squash_commit_sha=SHA_B), None),                  # squash, fast-forwarded
    (_mr(squash=True, squash_commit_sha=SHA_B, merge_commit_sha=SHA_C), None),  # squash + merge commit
    (_mr(squash=True, merge_commit_sha=SHA_B), None),                   # squash commit shown as merge commit
    (_mr(squash=True), SHA_A),                                          # squashed, nothing recorded: kept
    (_mr(state="opened"), None),
    (_mr(state="closed"), None),
    (_mr(sha=None), None),
])
def test_fast_forward_head(mr, head):
    assert rules.fast_forward_head(mr) == head


def test_merge_request_from_api_reads_gitlabs_fields():
    mr = rules.MergeRequest.from_api({
        "iid": 9, "state": "merged", "source_branch": "a", "target_branch": "main", "source_project_id": 2,
        "sha": SHA_A, "merge_commit_sha": None, "squash_commit_sha": SHA_B, "squash": True}, 1)
    assert (mr.iid, mr.own, mr.sha, mr.merge_commit_sha, mr.squash_commit_sha, mr.squash) == \
        (9, False, SHA_A, None, SHA_B, True)
    assert rules.MergeRequest.from_api({"iid": 1, "sha": "zz"}, 1).sha is None


MRS = {
    1: _mr(iid=1, state="opened", source_branch="open-one"),
    2: _mr(iid=2, state="merged", source_branch="merged-one"),
    3: _mr(iid=3, state="closed", source_branch="fork-branch", own=False),
    4: _mr(iid=4, state="locked", source_branch="locked-one"),
}


@pytest.mark.parametrize("ref, label", [
    ("main", "branch:main"),
    ("v1.0", "tag:v1.0"),                                   # a live git tag
    ("refs/merge-requests/1/head", "mr:!1"),                # an open merge request: in use
    ("refs/merge-requests/4/merge", "mr:!4"),
    ("refs/merge-requests/2/head", "branch:merged-one"),    # its source branch's work
    ("refs/merge-requests/2/merge", "branch:merged-one"),
    ("refs/merge-requests/3/head", "gone:!3"),              # a fork's closed merge request
    ("refs/merge-requests/99/head", "mr:!99"),              # not described by GitLab: kept
])
def test_pipeline_label(ref, label):
    assert rules.pipeline_label(ref, {"v1.0": SHA_A}, MRS) == label


@pytest.mark.parametrize("label, live", [
    ("branch:main", True),
    ("branch:gone", False),
    ("branch:v0.9", True),       # a deleted git tag's pipelines: a release
    ("tag:v1.0", True),
    ("mr:!1", True),
    ("gone:!3", False),
    ("other:x", False),
])
def test_label_is_live(label, live):
    assert rules.label_is_live(label, {"main"}, {"v0.9"}) is live


def test_a_fast_forward_head_pinned_by_gather_survives_the_plan():
    """The planner keeps what gather pins: a fast-forward merge's head is the target's commit."""
    facts = Facts(branch="feature/x", shas=frozenset({SHA_A, SHA_B}), default_branch="main",
                  live_branches={"main": SHA_C},
                  pinned_shas={SHA_A: "commit was fast-forward merged into 'main' (merge request !5)"})
    decided = {d.tag: d for d in plan(facts, Policy())}
    assert not decided[SHA_A].delete and not decided[SHA_A[:8]].delete
    assert decided[SHA_B].delete and decided["feature-x"].delete


def test_fast_forward_pins_only_own_merges_into_live_branches():
    mrs = [_mr(iid=1, sha=SHA_A),                                     # fast-forward into live main: kept
           _mr(iid=2, sha=SHA_B, merge_commit_sha=SHA_C),             # merge commit: the branch's own
           _mr(iid=3, sha=SHA_C, target_branch="gone"),               # target deleted: nothing to keep it for
           _mr(iid=4, sha=SHA_D, own=False)]                          # a fork's: upstream's commit
    pins = rules.fast_forward_pins(mrs, {"main"})
    assert set(pins) == {SHA_A} and "fast-forward merged into 'main' (merge request !1)" in pins[SHA_A]
