"""Table-driven tests of retention's pure rules (rules.retire, rules.newest_built) and of its
settings (KEEP_COMMITS, KEEP_COMMITS_BRANCHES, KEEP_COMMITS_MIN_AGE, RETIRE_DELAY): no I/O.

The base case is `main` with ten old built commits and KEEP_COMMITS=3: the three newest stay,
the seven older ones go. Each keep rule's row adds one claim on an old commit and checks that it,
and only it, stays, with the reason code a report and the metrics show.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from workers import rules
from workers.common.settings import ConfigError, Settings
from workers.rules import Built, Code, Deployment, Environment, Policy, Reason, RetentionFacts

DAY = 86400
WEEK = 7 * DAY
NOW = 1_800_000_000.0
POLICY = Policy()


def sha(n: int) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


S = [sha(n) for n in range(10)]                    # S[0] oldest ... S[9] newest
assert len({s[:8] for s in S}) == len(S)            # no accidental short-SHA clash in the base case
HISTORY = tuple(Built(s, order=float(10 * (n + 1)), first=NOW - (60 - n) * DAY) for n, s in enumerate(S))
NEWEST = set(S[7:])
OLD = set(S[:7])


def facts(**changes) -> RetentionFacts:
    values = dict(branch="main", built=HISTORY, keep=3, min_age=WEEK, now=NOW, default_branch="main",
                  live_branches={"main": S[9]})
    values.update(changes)
    return RetentionFacts(**values)


def with_first(sha_: str, first: float | None) -> tuple[Built, ...]:
    return tuple(Built(b.sha, b.order, first) if b.sha == sha_ else b for b in HISTORY)


def decided(f: RetentionFacts, policy: Policy = POLICY) -> dict[str, rules.Decision]:
    decisions = rules.retire(f, policy)
    names = [d.tag for d in decisions]
    assert len(names) == len(set(names)), "a tag decided twice"
    return {d.tag: d for d in decisions}


def deleted(f: RetentionFacts, policy: Policy = POLICY) -> set[str]:
    return {name for name, d in decided(f, policy).items() if d.delete}


def tags(*shas: str) -> set[str]:
    return {t for s in shas for t in (s, s[:8])}


def test_base_case_keeps_the_newest_three_and_retires_the_rest():
    out = decided(facts())
    assert set(out) == tags(*S)                     # every built commit's names, nothing else
    assert {n for n, d in out.items() if d.delete} == tags(*OLD)
    for name in tags(*NEWEST):
        assert out[name].code == Code.NEWEST_COMMITS
    assert "the 1st newest" in out[S[9]].reason and "3 newest" in out[S[9]].reason and "3rd newest" in out[S[7]].reason
    for name in tags(*OLD):
        assert out[name].code == Code.SUPERSEDED and out[name].kind == "commit"


def in_use(*deployments: Deployment, keep: int = 3) -> dict[str, str]:
    return dict(rules.in_use([Environment("production", "available", deployments)], keep).shas)


# Each row: what claims old commit S[2] (facts changed, and a policy), and the code it is kept for.
KEEP_CASES = [
    pytest.param(dict(newest_success=S[2]), POLICY, Code.NEWEST_SUCCESS,
                 id="newest-success-outside-the-newest-n"),
    pytest.param(dict(built=with_first(S[2], NOW - DAY)), POLICY, Code.TOO_YOUNG,
                 id="first-built-a-day-ago"),
    pytest.param(dict(built=with_first(S[2], NOW - WEEK + 1)), POLICY, Code.TOO_YOUNG,
                 id="one-second-short-of-the-minimum-age"),
    pytest.param(dict(built=with_first(S[2], NOW + DAY)), POLICY, Code.TOO_YOUNG,
                 id="first-built-in-the-future-clock-skew"),
    pytest.param(dict(built=with_first(S[2], None)), POLICY, Code.TOO_YOUNG,
                 id="first-built-time-unknown"),
    pytest.param(dict(live_tags={"v1.0.0": S[2]}), POLICY, Code.GIT_TAG_COMMIT,
                 id="git-tag-on-the-commit"),
    pytest.param(dict(live_branches={"main": S[9], "feature/x": S[2]}), POLICY, Code.LIVE_BRANCH_HEAD,
                 id="head-of-another-live-branch"),
    pytest.param(dict(live_branches={"main": S[2]}), POLICY, Code.LIVE_BRANCH_HEAD,
                 id="the-branch-was-reset-to-it"),
    pytest.param(dict(other_refs={S[2]: frozenset({"branch:feature/x"})}), POLICY, Code.OTHER_REF,
                 id="built-by-another-live-branch"),
    pytest.param(dict(other_refs={S[2]: frozenset({"mr:!7"})}), POLICY, Code.OTHER_REF,
                 id="built-by-an-open-merge-requests-pipeline"),
    pytest.param(dict(other_refs={S[2]: frozenset({"tag:v1.0.0"})}), POLICY, Code.OTHER_REF,
                 id="built-by-a-git-tags-pipeline"),
    pytest.param(dict(pinned_shas={S[2]: Reason(Code.OPEN_MR_COMMIT, "commit is the head of open merge request !7")}),
                 POLICY, Code.OPEN_MR_COMMIT, id="head-of-an-open-merge-request"),
    pytest.param(dict(deployed_shas=in_use(Deployment(1, S[2], "main"))), POLICY, Code.DEPLOYED,
                 id="deployed-to-production"),
    pytest.param(dict(deployed_shas=in_use(Deployment(1, S[2], "main"), Deployment(2, S[8], "main"))),
                 POLICY, Code.ROLLBACK_TARGET, id="production-may-roll-back-to-it"),
]


@pytest.mark.parametrize("changes, policy, code", KEEP_CASES)
def test_a_claimed_old_commit_keeps_its_tags_and_the_others_still_go(changes, policy, code):
    out = decided(facts(**changes), policy)
    for name in tags(S[2]):
        assert not out[name].delete and out[name].code == code, out[name]
    # Only the claimed commit is spared: the rule is not "keep everything".
    assert {n for n, d in out.items() if d.delete} == tags(*(OLD - {S[2]}))


def test_a_rollback_target_beyond_keep_deployments_is_not_claimed():
    # Three newer deployments push S[2] out of KEEP_DEPLOYMENTS=3: nothing claims it any more.
    claims = in_use(*(Deployment(n, s, "main") for n, s in enumerate((S[2], S[7], S[8], S[9]), 1)))
    assert tags(S[2]) <= deleted(facts(deployed_shas=claims))


def test_the_minimum_age_reached_exactly_is_old_enough():
    assert tags(S[2]) <= deleted(facts(built=with_first(S[2], NOW - WEEK)))


def test_a_minimum_age_of_zero_retires_a_young_commit():
    assert tags(S[2]) <= deleted(facts(built=with_first(S[2], NOW - 1), min_age=0))


def test_newest_success_among_the_newest_n_reads_as_newest():
    out = decided(facts(newest_success=S[8]))
    assert out[S[8]].code == Code.NEWEST_COMMITS
    assert {n for n, d in out.items() if d.delete} == tags(*OLD)


def test_protected_tags_keep_a_name_not_the_commit():
    # PROTECTED_TAGS claims names: S[2]'s short SHA matches, its full SHA does not and goes.
    policy = Policy(protected=re.compile(rf"latest|{S[2][:8]}"))
    out = decided(facts(), policy)
    assert not out[S[2][:8]].delete and out[S[2][:8]].code == Code.PROTECTED
    assert out[S[2]].delete


def test_custom_commit_templates_are_the_names_decided():
    policy = Policy(commit_templates=("sha-{short_sha}",))
    out = decided(facts(), policy)
    assert set(out) == {f"sha-{s[:8]}" for s in S}
    assert {n for n, d in out.items() if d.delete} == {f"sha-{s[:8]}" for s in OLD}


# Two commits share a short SHA: the name stays when either keeps it; the full SHA of the retired one goes.
CLASH_OLD = "deadbeef" + "0" * 32
CLASH_NEW = "deadbeef" + "f" * 32


def test_short_sha_shared_with_one_of_the_newest_stays():
    built = (Built(CLASH_OLD, 1.0, NOW - 90 * DAY), *HISTORY[:-1], Built(CLASH_NEW, 200.0, NOW - 30 * DAY))
    out = decided(facts(built=built, live_branches={"main": CLASH_NEW}))
    assert out[CLASH_OLD].delete and out[CLASH_OLD].code == Code.SUPERSEDED
    assert not out["deadbeef"].delete and out["deadbeef"].code == Code.NEWEST_COMMITS


@pytest.mark.parametrize("changes, code", [
    pytest.param(dict(other_refs={CLASH_NEW: frozenset({"branch:feature/x"})}), Code.OTHER_REF,
                 id="built-by-another-live-branch"),
    pytest.param(dict(live_tags={"v2.0.0": CLASH_NEW}), Code.GIT_TAG_COMMIT, id="a-git-tags-commit"),
    pytest.param(dict(live_branches={"main": S[9], "feature/x": CLASH_NEW}), Code.LIVE_BRANCH_HEAD,
                 id="another-branchs-head"),
    pytest.param(dict(deployed_shas=in_use(Deployment(1, CLASH_NEW, "feature/x"))), Code.DEPLOYED, id="deployed"),
])
def test_short_sha_shared_with_a_commit_something_else_claims_stays(changes, code):
    # CLASH_NEW is not main's: only the name it shares with main's old CLASH_OLD ties them.
    built = (Built(CLASH_OLD, 1.0, NOW - 90 * DAY), *HISTORY)
    out = decided(facts(built=built, **changes))
    assert out[CLASH_OLD].delete
    assert not out["deadbeef"].delete and out["deadbeef"].code == code


def test_short_sha_shared_by_two_retired_commits_goes():
    built = (Built(CLASH_OLD, 1.0, NOW - 90 * DAY), Built(CLASH_NEW, 2.0, NOW - 90 * DAY), *HISTORY)
    assert tags(CLASH_OLD, CLASH_NEW) <= deleted(facts(built=built))


def test_short_sha_shared_with_a_young_commit_of_the_branch_stays():
    built = (Built(CLASH_OLD, 1.0, NOW - 90 * DAY), Built(CLASH_NEW, 2.0, NOW - DAY), *HISTORY)
    out = decided(facts(built=built))
    assert out[CLASH_OLD].delete and not out[CLASH_NEW].delete
    assert out["deadbeef"].code == Code.TOO_YOUNG


def test_branch_tags_are_never_decided():
    out = decided(facts(live_branches={"main": S[9], "develop": S[5]}))
    assert not {"main", "develop", "latest"} & set(out)
    assert {d.kind for d in out.values()} == {"commit"}


def test_a_branch_named_like_a_short_sha_keeps_its_tag():
    # Branch `cafebabe` pushes :cafebabe, which is also the short SHA of an old commit of its own.
    old = "cafebabe" + "1" * 32
    out = decided(facts(branch="cafebabe", built=(Built(old, 1.0, NOW - 90 * DAY), *HISTORY),
                        live_branches={"main": S[9], "cafebabe": S[9]}))
    assert out[old].delete
    assert not out["cafebabe"].delete and out["cafebabe"].code == Code.LIVE_BRANCH_TAG


def test_a_git_tag_named_like_a_short_sha_keeps_its_image():
    out = decided(facts(live_tags={S[2][:8]: S[9]}))
    assert out[S[2]].delete
    assert not out[S[2][:8]].delete and out[S[2][:8]].code == Code.GIT_TAG_IMAGE


# Found by the retention property: a live environment runs branch `cafebabe` (deleted since, or an
# open merge request's deleted source), its image is `:cafebabe`, the short SHA of an old commit
# of main. The cleanup and the sweep claim those branch tags (deployed_refs, open_sources); retire
# did not take them, and deleted the environment's image.
@pytest.mark.parametrize("changes, code", [
    pytest.param(dict(deployed_refs={"cafebabe": Reason(Code.DEPLOYED_REF, "in use by environment production")}),
                 Code.DEPLOYED_REF, id="the-branch-a-live-environment-runs"),
    pytest.param(dict(open_sources={"cafebabe": Reason(Code.OPEN_MR_SOURCE, "tag of the source branch 'cafebabe' "
                                                                            "of an open merge request")}),
                 Code.OPEN_MR_SOURCE, id="an-open-merge-requests-deleted-source"),
])
def test_regression_short_sha_named_like_a_branch_in_use_elsewhere(changes, code):
    old = "cafebabe" + "1" * 32
    out = decided(facts(built=(Built(old, 1.0, NOW - 90 * DAY), *HISTORY), **changes))
    assert out[old].delete
    assert not out["cafebabe"].delete and out["cafebabe"].code == code


def test_candidates_restrict_what_is_decided():
    # The older ones were retired by an earlier pass: only S[5] and the newest are asked about.
    out = decided(facts(candidates=frozenset({S[5]})))
    assert set(out) == tags(S[5], *NEWEST)
    assert {n for n, d in out.items() if d.delete} == tags(S[5])


def test_candidates_never_take_the_newest_out_of_the_decision():
    out = decided(facts(candidates=frozenset()))
    assert set(out) == tags(*NEWEST) and not any(d.delete for d in out.values())


def test_candidates_unknown_to_the_history_are_ignored():
    assert deleted(facts(candidates=frozenset({sha(99)}))) == set()


@pytest.mark.parametrize("keep", [10, 11, 1000])
def test_keep_commits_at_least_the_history_retires_nothing(keep):
    out = decided(facts(keep=keep))
    assert set(out) == tags(*S) and not any(d.delete for d in out.values())
    assert {d.code for d in out.values()} == {Code.NEWEST_COMMITS}


def test_keep_one_keeps_only_the_newest():
    assert deleted(facts(keep=1)) == tags(*S[:9])


@pytest.mark.parametrize("keep", [0, -1])
def test_keep_below_one_is_refused(keep):
    with pytest.raises(rules.RuleError, match="KEEP_COMMITS must be at least 1"):
        rules.retire(facts(keep=keep), POLICY)


def test_a_bad_branch_name_is_refused():
    with pytest.raises(rules.RuleError):
        rules.retire(facts(branch=""), POLICY)


def test_an_empty_history_decides_nothing():
    assert rules.retire(facts(built=()), POLICY) == []


def test_non_sha_entries_are_ignored():
    assert deleted(facts(built=(Built("not-a-sha", 1.0, 0.0), Built(rules.ZERO_SHA, 2.0, 0.0), *HISTORY))) \
        == tags(*OLD)


# --- newest_built --------------------------------------------------------------------------------

@pytest.mark.parametrize("built, keep, newest", [
    pytest.param(HISTORY, 3, [S[9], S[8], S[7]], id="highest-pipeline-id-first"),
    pytest.param(HISTORY, 20, list(reversed(S)), id="keep-beyond-the-history"),
    pytest.param((), 3, [], id="no-history"),
    # A pipeline re-run on an old commit makes it one of the newest: order is its newest pipeline.
    pytest.param((*HISTORY[1:], Built(S[0], 500.0)), 2, [S[0], S[9]], id="rebuilt-old-commit"),
    # Equal orders (two SHAs of one pipeline id cannot happen in GitLab) fall back to the SHA.
    pytest.param((Built("b" * 40, 1.0), Built("a" * 40, 1.0), Built("c" * 40, 0.5)), 2, ["a" * 40, "b" * 40],
                 id="ties-by-sha"),
])
def test_newest_built(built, keep, newest):
    assert [b.sha for b in rules.newest_built(built, keep)] == newest


# --- settings ------------------------------------------------------------------------------------

def test_retention_settings_defaults():
    s = Settings.from_env({})
    assert s.keep_commits is None and not s.retention
    assert s.keep_commits_branches is None
    assert (s.keep_commits_min_age, s.retire_delay) == (WEEK, 300)
    assert not s.retires("main")                    # off: no branch is retired


@pytest.mark.parametrize("raw, keep", [("", None), ("  ", None), ("5", 5), (" 5 ", 5), ("1", 1)])
def test_keep_commits(raw, keep):
    s = Settings.from_env({"KEEP_COMMITS": raw})
    assert s.keep_commits == keep and s.retention is (keep is not None)


@pytest.mark.parametrize("env, message", [
    ({"KEEP_COMMITS": "0"}, r"KEEP_COMMITS='0': give a whole number of commits, at least 1 \(leave it unset"),
    ({"KEEP_COMMITS": "abc"}, "KEEP_COMMITS='abc'"),
    ({"KEEP_COMMITS": "-3"}, "KEEP_COMMITS='-3'"),
    ({"KEEP_COMMITS": "2.5"}, "KEEP_COMMITS='2.5'"),
    ({"KEEP_COMMITS_BRANCHES": "release/(.*"}, r"KEEP_COMMITS_BRANCHES is not a valid regular expression \(.*\): "
                                               "give one like main|release/"),
    ({"KEEP_COMMITS_BRANCHES": "[main"}, "KEEP_COMMITS_BRANCHES is not a valid regular expression"),
    ({"KEEP_COMMITS_MIN_AGE": "1.5d"}, r"KEEP_COMMITS_MIN_AGE='1.5d': give whole seconds, or a number with a unit"),
    ({"KEEP_COMMITS_MIN_AGE": "-1"}, "KEEP_COMMITS_MIN_AGE='-1'"),
    ({"KEEP_COMMITS_MIN_AGE": "7 days"}, "KEEP_COMMITS_MIN_AGE='7 days'"),
    ({"KEEP_COMMITS_MIN_AGE": "1y"}, "KEEP_COMMITS_MIN_AGE='1y'"),
    ({"KEEP_COMMITS_MIN_AGE": "d"}, "KEEP_COMMITS_MIN_AGE='d'"),
    ({"RETIRE_DELAY": "-5"}, "RETIRE_DELAY must be at least 0"),
    ({"RETIRE_DELAY": "soon"}, "RETIRE_DELAY='soon' is not a whole number"),
])
def test_bad_retention_settings_are_clear_errors(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize("pattern, branch, retires", [
    ("", "anything/at-all", True),                  # unset: every branch
    ("main|release/.*", "main", True),
    ("main|release/.*", "release/1.2", True),
    ("main|release/.*", "mainline", False),         # the whole name must match, not a prefix ...
    ("main|release/.*", "feature/main", False),     # ... nor a part
    ("main|release/.*", "hotfix/release/1", False),
    ("release/.*", "Release/1", False),             # case matters, as in git
    (" main ", "main", True),                       # surrounding spaces are not part of the pattern
])
def test_keep_commits_branches_matches_whole_names(pattern, branch, retires):
    assert Settings.from_env({"KEEP_COMMITS": "5", "KEEP_COMMITS_BRANCHES": pattern}).retires(branch) is retires


def test_keep_commits_branches_alone_turns_nothing_on():
    assert not Settings.from_env({"KEEP_COMMITS_BRANCHES": "main"}).retires("main")


@pytest.mark.parametrize("raw, seconds", [
    ("", WEEK), ("0", 0), ("3600", 3600), ("45s", 45), ("30m", 1800), ("12h", 43200), ("7d", WEEK),
    ("2w", 2 * WEEK), ("7D", WEEK), (" 12 h ", 43200),
])
def test_keep_commits_min_age_forms(raw, seconds):
    assert Settings.from_env({"KEEP_COMMITS_MIN_AGE": raw}).keep_commits_min_age == seconds


@pytest.mark.parametrize("raw, delay", [("", 300), ("0", 0), ("60", 60), (" 900 ", 900)])
def test_retire_delay(raw, delay):
    assert Settings.from_env({"RETIRE_DELAY": raw}).retire_delay == delay
