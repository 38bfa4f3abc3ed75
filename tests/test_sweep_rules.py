"""Table-driven tests of the sweep's pure rules: which tags of a registry a dead branch provably owns."""

from __future__ import annotations

import pytest

from workers import rules
from workers.rules import CommitFacts, CommitRef, Policy, SweepFacts, SweepVerdict

MAIN_HEAD = "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"
LIVE_HEAD = "2222222222222222222222222222222222222222"
A_HEAD = "3333333333333333333333333333333333333333"
RELEASE = "4444444444444444444444444444444444444444"
OPEN_MR = "5555555555555555555555555555555555555555"
GONE_1 = "6666666666666666666666666666666666666666"
GONE_2 = "6666666677777777777777777777777777777777"  # same short SHA as GONE_1
OLD = "8888888888888888888888888888888888888888"

POLICY = Policy()
FACTS = SweepFacts(
    default_branch="main",
    live_branches={"main": MAIN_HEAD, "feature/live": LIVE_HEAD, "feature-a": A_HEAD},
    live_tags={"v1.2.0": RELEASE, "release/2.0": RELEASE},
    known_branches={
        "feature/gone": "pipeline memory",
        "feature/a": "merge request !3 (merged)",     # shares the slug of live feature-a
        "cafebabe": "pipeline memory",                 # a branch named like a short SHA
        "wip/open": "merge request !9 (closed)",       # deleted, but an open MR !10 still uses it
        "feature/live": "pipeline memory",             # known and live: not dead
        "bad\nname": "pipeline memory",                # not a branch GitLab could have
    },
    open_sources={"wip/open": "source branch of open merge request !10"},
    pinned_shas={OPEN_MR: "commit of open merge request !10"},
)
INDEX = rules.sweep_index(FACTS, POLICY)


@pytest.mark.parametrize("tag, action, why", [
    ("latest", "keep", "PROTECTED_TAGS"),
    ("v1.2.0", "keep", "PROTECTED_TAGS"),
    ("1.4.2-rc1", "keep", "PROTECTED_TAGS"),
    ("main", "keep", "default branch"),
    ("feature-live", "keep", "live branch 'feature/live'"),
    ("feature-a", "keep", "live branch 'feature-a'"),         # a dead namesake does not make it dead
    ("wip-open", "keep", "open merge request !10"),
    ("release-2-0", "keep", "git tag 'release/2.0'"),          # a tag pipeline's slug image
    (MAIN_HEAD, "keep", "head of live branch 'main'"),
    (MAIN_HEAD[:8], "keep", "head of live branch 'main'"),
    (LIVE_HEAD[:8], "keep", "head of live branch 'feature/live'"),
    (RELEASE, "keep", "tagged"),
    (OPEN_MR, "keep", "open merge request !10"),
    ("feature-gone", "delete", "dead branch 'feature/gone' (known from pipeline memory)"),
    ("experiment-7", "unclear", "no branch known to have existed"),
    ("Feature-Gone", "unclear", "no branch known"),            # not what BRANCH_TAGS renders
    ("0" * 40, "unclear", "no branch known"),                   # the zero SHA is no commit
    ("a:b", "keep", "not a valid Docker tag"),
])
def test_sweep_tag_decides_by_name(tag, action, why):
    verdict = rules.sweep_tag(tag, INDEX, POLICY)
    assert isinstance(verdict, SweepVerdict), verdict
    assert verdict.action == action and why in verdict.reason, verdict
    if action == "delete":
        assert verdict.branches == ("feature/gone",) and verdict.decision().delete


@pytest.mark.parametrize("tag, value, short", [
    (GONE_1, GONE_1, False),
    (GONE_1[:8], GONE_1[:8], True),
    ("cafebabe", "cafebabe", True),  # the dead branch `cafebabe`'s slug: a short SHA first, never its slug
])
def test_sweep_tag_hands_commit_tags_on(tag, value, short):
    assert rules.sweep_tag(tag, INDEX, POLICY) == CommitRef(tag, value, short)


def test_sweep_index_dead_branches():
    assert set(INDEX.dead_tags) == {"feature-gone", "cafebabe"}
    assert INDEX.dead_tags["feature-gone"] == ("feature/gone", "pipeline memory")
    assert INDEX.is_live_ref("branch:main") and INDEX.is_live_ref("branch:wip/open")
    assert INDEX.is_live_ref("tag:v0.9") and not INDEX.is_live_ref("branch:feature/gone")


def test_default_branch_is_never_dead_even_when_missing():
    index = rules.sweep_index(SweepFacts(default_branch="main", live_branches={"dev": LIVE_HEAD},
                                         known_branches={"main": "pipeline memory"}), POLICY)
    assert "main" in index.owners and "main" not in index.dead_tags


def test_custom_templates():
    policy = Policy(branch_templates=("br-{ref_slug}", "{ref}"), commit_templates=("sha-{sha}",),
                    protected=POLICY.protected)
    index = rules.sweep_index(SweepFacts(default_branch="main", live_branches={"main": MAIN_HEAD},
                                         known_branches={"fix_1": "pipeline memory"}), policy)
    assert rules.sweep_tag("br-fix-1", index, policy).action == "delete"
    assert rules.sweep_tag("fix_1", index, policy).action == "delete"
    assert rules.sweep_tag(f"sha-{GONE_1}", index, policy) == CommitRef(f"sha-{GONE_1}", GONE_1, False)
    assert rules.sweep_tag(GONE_1, index, policy).action == "unclear"  # bare SHAs are not what CI pushes here
    assert rules.sweep_tag(f"sha-{MAIN_HEAD}", index, policy).action == "keep"


@pytest.mark.parametrize("templates, tag, expected", [
    (("{sha}", "{short_sha}"), GONE_1, (GONE_1, False)),
    (("{sha}", "{short_sha}"), GONE_1[:8], (GONE_1[:8], True)),
    (("{sha}", "{short_sha}"), GONE_1[:7], None),
    (("{sha}", "{short_sha}"), MAIN_HEAD.upper(), None),
    (("{sha}", "{short_sha}"), "0" * 40, None),
    (("{sha}",), GONE_1[:8], None),
    (("sha-{sha}", "s-{short_sha}"), "s-" + GONE_1[:8], (GONE_1[:8], True)),
    (("sha-{sha}",), "sha-" + GONE_1 + "x", None),
    (("{short_sha}-{sha}",), f"{GONE_1[:8]}-{GONE_1}", (GONE_1, False)),
    (("{short_sha}-{sha}",), f"{GONE_1[:8]}-{MAIN_HEAD}", None),  # parts of two commits
    (("{sha}.{sha}",), f"{GONE_1}.{GONE_1}", (GONE_1, False)),
    (("{sha}.{sha}",), f"{GONE_1}.{MAIN_HEAD}", None),
])
def test_parse_commit_tag(templates, tag, expected):
    ref = rules.parse_commit_tag(tag, templates)
    assert (None if ref is None else (ref.value, ref.short)) == expected


def full(sha: str) -> CommitRef:
    return CommitRef(sha, sha, False)


def short(sha: str) -> CommitRef:
    return CommitRef(sha[:8], sha[:8], True)


@pytest.mark.parametrize("ref, facts, action, why", [
    # pipeline memory decides when it knows the commit
    (full(GONE_1), CommitFacts(built_on={GONE_1: frozenset({"branch:feature/gone"})}),
     "delete", "built only on dead branch(es) 'feature/gone'"),
    (full(GONE_1), CommitFacts(built_on={GONE_1: frozenset({"branch:feature/gone", "branch:main"})}),
     "keep", "also built on branch:main"),
    (full(GONE_1), CommitFacts(built_on={GONE_1: frozenset({"branch:feature/gone", "tag:v0.9"})}),
     "keep", "also built on tag:v0.9"),
    (full(GONE_1), CommitFacts(built_on={GONE_1: frozenset({"branch:wip/open"})}),
     "keep", "also built on branch:wip/open"),
    # ... and outweighs GitLab's refs: a merged branch's commits are in main's history, yet its own
    (full(GONE_1), CommitFacts(built_on={GONE_1: frozenset({"branch:feature/gone"})},
                               git_refs={GONE_1: ("branch:main",)}), "delete", "dead branch"),
    # otherwise GitLab's refs of the commit decide
    (full(OLD), CommitFacts(git_refs={OLD: ()}), "delete", "on no branch or tag"),
    (full(OLD), CommitFacts(git_refs={OLD: ("branch:main", "tag:v1.0.0")}), "keep", "branch:main"),
    (full(OLD), CommitFacts(git_refs={OLD: None}), "unclear", "unknown to GitLab"),
    (full(OLD), CommitFacts(), "unclear", "unknown to GitLab"),
    # short SHAs: only an unambiguous resolution counts
    (short(OLD), CommitFacts(candidates={OLD[:8]: frozenset({OLD})}, git_refs={OLD: ()}),
     "delete", "on no branch"),
    (short(OLD), CommitFacts(candidates={}), "unclear", "resolves to no single commit"),
    (short(GONE_1), CommitFacts(candidates={GONE_1[:8]: frozenset({GONE_1, GONE_2})},
                                built_on={GONE_1: frozenset({"branch:feature/gone"})}),
     "unclear", "ambiguous"),
    (short(GONE_1), CommitFacts(candidates={GONE_1[:8]: frozenset({GONE_1})},
                                built_on={GONE_1: frozenset({"branch:feature/gone"})}), "delete", "dead branch"),
    # a short SHA several built commits share: deleted only when every one of them is dead work
    (short(GONE_1), CommitFacts(candidates={GONE_1[:8]: frozenset({GONE_1, GONE_2})},
                                built_on={GONE_1: frozenset({"branch:feature/gone"}),
                                          GONE_2: frozenset({"branch:feature/old"})}),
     "delete", "short SHA of 2 commits"),
    (short(GONE_1), CommitFacts(candidates={GONE_1[:8]: frozenset({GONE_1, GONE_2})},
                                built_on={GONE_1: frozenset({"branch:feature/gone"}),
                                          GONE_2: frozenset({"branch:main"})}),
     "keep", "also built on branch:main"),
    (short(GONE_1), CommitFacts(candidates={GONE_1[:8]: frozenset({GONE_1, MAIN_HEAD})},
                                built_on={GONE_1: frozenset({"branch:feature/gone"})}),
     "keep", "live branch 'main'"),
    # a commit a live ref claims stays, whatever else is known
    (full(MAIN_HEAD), CommitFacts(git_refs={MAIN_HEAD: ()}), "keep", "live branch 'main'"),
    (full(OPEN_MR), CommitFacts(built_on={OPEN_MR: frozenset({"branch:feature/gone"})}), "keep", "open merge"),
    (CommitRef("cafebabe", "cafebabe", True), CommitFacts(candidates={"cafebabe": frozenset({LIVE_HEAD})}),
     "keep", "feature/live"),
])
def test_sweep_commit(ref, facts, action, why):
    verdict = rules.sweep_commit(ref, facts, INDEX, POLICY)
    assert verdict.action == action and why in verdict.reason, verdict
    assert verdict.kind == "commit"


def test_sweep_never_deletes_what_an_event_cleanup_would_keep():
    """For every tag a live ref claims in live_owners, the sweep keeps it too (same rules)."""
    facts = rules.Facts(branch="", shas=frozenset(), default_branch=FACTS.default_branch,
                        live_branches=FACTS.live_branches, live_tags=FACTS.live_tags,
                        pinned_shas=FACTS.pinned_shas)
    for tag in rules.live_owners(facts, POLICY):
        verdict = rules.sweep_tag(tag, INDEX, POLICY)
        assert isinstance(verdict, SweepVerdict) and verdict.action == "keep", (tag, verdict)


# --- the sweep's settings ------------------------------------------------------------------

@pytest.mark.parametrize("env, cron, projects", [
    ({}, "17 3 * * *", ()),
    ({"SWEEP_CRON": " 0  */6 * * 1-5 "}, "0 */6 * * 1-5", ()),
    ({"SWEEP_CRON": "off"}, "", ()),
    ({"SWEEP_PROJECTS": "4711, acme/shop/, 4711,,group/sub/app"}, "17 3 * * *", (4711, "acme/shop", "group/sub/app")),
])
def test_sweep_settings(env, cron, projects):
    from workers.common.settings import Settings
    s = Settings.from_env(env)
    assert (s.sweep_cron, s.sweep_projects) == (cron, projects)


@pytest.mark.parametrize("env, message", [
    ({"SWEEP_CRON": "every day"}, "SWEEP_CRON"),
    ({"SWEEP_CRON": "61 3 * * *"}, "SWEEP_CRON"),
    ({"SWEEP_CRON": "0 17 3 * * *"}, "SWEEP_CRON"),  # 6 fields (seconds) are not cron here
    ({"SWEEP_PROJECTS": "acme shop"}, "SWEEP_PROJECTS"),
    ({"SWEEP_TIMEOUT": "5"}, "SWEEP_TIMEOUT"),
])
def test_bad_sweep_settings(env, message):
    from workers.common.settings import ConfigError, Settings
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
