"""Table-driven tests of what live environments keep (rules.in_use) and how the cleanup's and the
sweep's rules apply it: pure, no I/O."""

from __future__ import annotations

import pytest

from workers import rules
from workers.rules import Code, Deployment, Environment, Facts, MergeRequest, Policy, SweepFacts

MAIN = "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"
S = {n: f"{n:x}" * 40 for n in range(1, 10)}  # S[1] = "1111...", a commit per deployment
HOOKED = "e" * 40
POLICY = Policy()


def dep(n: int, ref: str | None = "main", *, status: str = "success", finished: float | None = None,
        hinted: bool = False, sha: str | None = None) -> Deployment:
    """Deployment #n of commit S[n] (finished at n, unless said otherwise)."""
    return Deployment(id=n, sha=sha or S[n], ref=ref, status=status,
                      finished=float(n) if finished is None else finished, hinted=hinted)


def kept(result: rules.InUse) -> dict[str, str]:
    return {sha: str(why) for sha, why in result.shas.items()}


# Each row: environments, KEEP_DEPLOYMENTS, {commit: words of its reason}, {branch: words}, commits that must go.
IN_USE_CASES = [
    pytest.param(
        [Environment("production", "available", tuple(dep(n, "release/1") for n in (1, 2, 3, 4, 5)))], 3,
        {S[5]: "in use by environment production (deployment #5)",
         S[4]: "rollback target of production (2nd newest deployment)",
         S[3]: "rollback target of production (3rd newest deployment)"},
        {"release/1": "in use by environment production (deployment #5)"}, {S[1], S[2]},
        id="the-three-newest-successful-deployments"),
    pytest.param(
        [Environment("production", "available",
                     (*(dep(n, "release/1") for n in (1, 2, 3, 4, 5)), dep(6, "release/1", status="failed")))], 3,
        {S[5]: "deployment #5", S[4]: "2nd newest", S[3]: "3rd newest"}, {"release/1": "#5"}, {S[6], S[2], S[1]},
        id="a-newer-failed-deployment-counts-for-nothing"),
    pytest.param(
        [Environment("production", "available",
                     (dep(1), dep(2, status="canceled"), dep(3, status="running"), dep(4, status="created"),
                      dep(5, status="blocked")))], 3,
        {S[1]: "in use by environment production (deployment #1)"}, {"main": "#1"}, {S[2], S[3], S[4], S[5]},
        id="only-success-counts"),
    pytest.param(
        [Environment("review/feature-x", "stopped", (dep(7, "feature/x"),))], 3,
        {}, {}, {S[7]},
        id="a-stopped-environment-keeps-nothing"),
    pytest.param(
        [Environment("review/feature-x", "stopping", (dep(7, "feature/x"),))], 3,
        {S[7]: "in use by environment review/feature-x (deployment #7)"},
        {"feature/x": "in use by environment review/feature-x"}, set(),
        id="a-stopping-environment-still-runs-it"),
    pytest.param(
        [Environment("production", "available", tuple(dep(n) for n in (1, 2, 3)))], 1,
        {S[3]: "deployment #3"}, {"main": "#3"}, {S[1], S[2]},
        id="keep-1-keeps-the-current-one-only"),
    pytest.param(
        [Environment("production", "available", (dep(1, "release/1"), dep(2, "release/2", finished=1.0),
                                                 dep(3, "release/3", finished=9.0)))], 1,
        {S[3]: "in use by environment production (deployment #3)"}, {"release/3": "#3"}, {S[1], S[2]},
        id="newest-by-id-and-last-finished-agree"),
    pytest.param(
        [Environment("production", "available", (dep(1, "release/1", finished=9.0), dep(2, "release/2"),
                                                 dep(3, "release/3")))], 1,
        {S[3]: "in use by environment production (deployment #3)",
         S[1]: "in use by environment production (deployment #1)"},
        {"release/3": "#3", "release/1": "#1"}, {S[2]},
        id="an-older-deployment-that-finished-last-is-what-runs"),
    pytest.param(
        [Environment("production", "available", (dep(1), dep(2), dep(3),
                                                 dep(9, None, hinted=True, sha=HOOKED)))], 3,
        {HOOKED: "in use by environment production (deployment #9)",
         S[3]: "in use by environment production (deployment #3)",
         S[2]: "rollback target of production (3rd newest deployment)",
         S[1]: "rollback target of production (4th newest deployment)"},
        {"main": "#3"}, set(),
        id="a-hinted-newer-deployment-adds-and-pushes-nothing-out"),
    pytest.param(
        [Environment("production", "available", (dep(3), dep(2, hinted=True, ref=None)))], 3,
        {S[3]: "#3", S[2]: "rollback target of production (2nd newest deployment)"}, {"main": "#3"}, set(),
        id="a-hinted-older-deployment-is-a-rollback-target"),
    pytest.param(
        [Environment("production", "available", (dep(4), dep(3))),  # the copy: #4 was deleted since
         Environment("production", "available", (dep(3), dep(1), dep(2, status="failed")))], 2,  # GitLab's answer
        {S[4]: "#4", S[3]: "in use by environment production (deployment #3)",
         S[1]: "rollback target of production (2nd newest deployment)"}, {"main": "#4"}, {S[2]},
        id="an-environment-asked-again-keeps-what-either-keeps"),
    pytest.param(
        [Environment("staging", "available", (dep(7, "main", sha=S[5]),)),
         Environment("production", "available", (dep(5, "main"), dep(6, "main")))], 3,
        {S[5]: "in use by environment staging (deployment #7)", S[6]: "production (deployment #6)"},
        {"main": "in use by environment production (deployment #6)"}, set(),
        id="in-use-beats-rollback-target-whichever-environment-comes-first"),
    pytest.param(
        [Environment("review/feature-x", "available", (dep(8, "refs/merge-requests/12/head"),))], 3,
        {S[8]: "#8"}, {"feature/x": "in use by environment review/feature-x (deployment #8)"}, set(),
        id="a-merge-request-pipeline-deploys-its-source-branch"),
    pytest.param(
        [Environment("review/x", "available", (Deployment(id=1, sha="not-a-sha", ref="x"),))], 3,
        {}, {}, set(),
        id="a-deployment-without-a-commit-keeps-nothing"),
]


@pytest.mark.parametrize("environments, keep, shas, refs, gone", IN_USE_CASES)
def test_in_use(environments, keep, shas, refs, gone):
    mrs = {12: MergeRequest(iid=12, state="opened", source_branch="feature/x", target_branch="main")}
    result = rules.in_use(environments, keep, mrs)
    for sha, words in shas.items():
        assert sha in result.shas, f"{sha[:8]} must keep its tags"
        assert words in result.shas[sha]
    for ref, words in refs.items():
        assert ref in result.refs, f"{ref} must keep its tags"
        assert words in result.refs[ref]
    assert not gone & set(result.shas)
    assert set(result.shas) <= set(shas) and set(result.refs) <= set(refs)


def test_in_use_codes_and_the_exact_texts():
    result = rules.in_use([Environment("review/feature-x", "available", (dep(812, "feature/x", sha=S[1]),)),
                           Environment("production", "available", tuple(dep(n) for n in (2, 3, 4)))], 3)
    assert str(result.shas[S[1]]) == "in use by environment review/feature-x (deployment #812)"
    assert result.shas[S[1]].code == Code.DEPLOYED
    assert str(result.shas[S[2]]) == "rollback target of production (3rd newest deployment)"
    assert result.shas[S[2]].code == Code.ROLLBACK_TARGET
    assert result.refs["feature/x"].code == Code.DEPLOYED_REF
    assert {Code.DEPLOYED, Code.DEPLOYED_REF, Code.ROLLBACK_TARGET} == rules.DEPLOYMENT_CODES


def test_keep_must_be_at_least_one():
    with pytest.raises(ValueError):
        rules.in_use([], 0)


@pytest.mark.parametrize("n, text", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"),
                                     (13, "13th"), (21, "21st"), (22, "22nd"), (101, "101st"), (111, "111th")])
def test_ordinal(n, text):
    assert rules.ordinal(n) == text


# --- the cleanup's plan --------------------------------------------------------------------------

REVIEW = rules.in_use([Environment("review/feature-x", "available", (dep(812, "feature/x", sha=S[7]),))], 3)
PRODUCTION = rules.in_use([Environment("production", "available",
                                       tuple(dep(n, "release/1") for n in (1, 2, 3, 4, 5)))], 3)


def decided(facts: Facts) -> tuple[set[str], dict[str, rules.Decision]]:
    decisions = rules.plan(facts, POLICY)
    return {d.tag for d in decisions if d.delete}, {d.tag: d for d in decisions if not d.delete}


@pytest.mark.parametrize("facts, gone, survive", [
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({S[6], S[7]}), default_branch="main", live_branches={"main": MAIN},
              deployed_shas=REVIEW.shas, deployed_refs=REVIEW.refs),
        {S[6], S[6][:8]},
        {"feature-x": "in use by environment review/feature-x (deployment #812)",
         S[7]: "in use by environment review/feature-x (deployment #812)",
         S[7][:8]: "in use by environment review/feature-x (deployment #812)"},
        id="review-app-keeps-its-slug-and-its-commit"),
    pytest.param(
        Facts(branch="release/1", shas=frozenset(S[n] for n in (1, 2, 3, 4, 5)), default_branch="main",
              live_branches={"main": MAIN}, deployed_shas=PRODUCTION.shas, deployed_refs=PRODUCTION.refs),
        {S[1], S[1][:8], S[2], S[2][:8]},
        {S[5]: "in use by environment production (deployment #5)",
         S[4]: "rollback target of production (2nd newest deployment)",
         S[3][:8]: "rollback target of production (3rd newest deployment)",
         "release-1": "in use by environment production (deployment #5)"},
        id="deleted-release-branch-keeps-what-production-may-roll-back-to"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({S[7]}), default_branch="main",
              live_branches={"main": MAIN, "feature/y": S[7]},
              deployed_shas=REVIEW.shas, deployed_refs=REVIEW.refs),
        set(),
        {S[7]: "head of live branch 'feature/y'",
         "feature-x": "in use by environment review/feature-x"},
        id="another-rule-names-the-tag-first"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({S[7][:8] + "0" * 32}), default_branch="main",
              live_branches={"main": MAIN}, deployed_shas=REVIEW.shas),
        {S[7][:8] + "0" * 32, "feature-x"},
        {S[7][:8]: "in use by environment review/feature-x"},
        id="a-short-sha-shared-with-a-deployed-commit-survives"),
    pytest.param(
        Facts(branch="feature/x", shas=frozenset({S[7]}), default_branch="main", live_branches={"main": MAIN}),
        {"feature-x", S[7], S[7][:8]}, {},
        id="nothing-deployed-everything-owned-goes"),
])
def test_plan_keeps_what_environments_use(facts, gone, survive):
    deleted, kept_tags = decided(facts)
    assert deleted == gone
    for tag, words in survive.items():
        assert tag in kept_tags, f"{tag} must survive"
        assert words in kept_tags[tag].reason


def test_a_deployment_keep_is_coded_for_metrics_and_the_recheck():
    _, kept_tags = decided(Facts(branch="feature/x", shas=frozenset({S[7]}), default_branch="main",
                                 live_branches={"main": MAIN}, deployed_shas=REVIEW.shas, deployed_refs=REVIEW.refs))
    assert {d.code for d in kept_tags.values()} == {Code.DEPLOYED, Code.DEPLOYED_REF}


# --- the sweep ----------------------------------------------------------------------------------

SWEEP = SweepFacts(default_branch="main", live_branches={"main": MAIN},
                   known_branches={"feature/x": "merge request !12 (merged)", "release/1": "GitLab's pipelines"},
                   deployed_shas={**REVIEW.shas, **PRODUCTION.shas}, deployed_refs={**REVIEW.refs, **PRODUCTION.refs})
INDEX = rules.sweep_index(SWEEP, POLICY)
BUILT_DEAD = rules.CommitFacts(built_on={S[n]: frozenset({"branch:release/1"}) for n in (1, 2, 3, 4, 5)}
                               | {S[7]: frozenset({"branch:feature/x"})})


@pytest.mark.parametrize("tag, action, words", [
    ("feature-x", "keep", "in use by environment review/feature-x (deployment #812)"),
    ("release-1", "keep", "in use by environment production (deployment #5)"),
    (S[7], "keep", "in use by environment review/feature-x (deployment #812)"),
    (S[7][:8], "keep", "in use by environment review/feature-x"),
    (S[3], "keep", "rollback target of production (3rd newest deployment)"),
    (S[2], "delete", "built only on dead branch(es) 'release/1'"),
    (S[1][:8], "delete", "built only on dead"),
    (MAIN, "keep", "head of live branch 'main'"),
])
def test_sweep_keeps_what_environments_use(tag, action, words):
    verdict = rules.sweep_tag(tag, INDEX, POLICY)
    if isinstance(verdict, rules.CommitRef):
        facts = BUILT_DEAD
        if verdict.short:
            facts = rules.CommitFacts(candidates={verdict.value: frozenset(s for s in S.values()
                                                                           if s.startswith(verdict.value))},
                                      built_on=BUILT_DEAD.built_on)
        verdict = rules.sweep_commit(verdict, facts, INDEX, POLICY)
    assert (verdict.action, words in verdict.reason) == (action, True), verdict


def test_sweep_prefers_a_live_ref_and_adds_deployments_found_later():
    index = rules.sweep_index(SweepFacts(default_branch="main", live_branches={"main": MAIN},
                                         deployed_shas=PRODUCTION.shas), POLICY)
    built_on_main = rules.CommitFacts(built_on={S[5]: frozenset({"branch:main"}), S[1]: frozenset({"branch:x"})})
    verdict = rules.sweep_commit(rules.CommitRef(S[5], S[5], False), built_on_main, index, POLICY)
    assert verdict.code == Code.OTHER_REF  # the deployment keeps it too, but a live ref says more
    assert rules.sweep_commit(rules.CommitRef(S[1], S[1], False), built_on_main, index, POLICY).delete
    later = rules.with_deployed(index, {S[1]: rules.Reason(Code.ROLLBACK_TARGET, "rollback target of production "
                                                                                 "(3rd newest deployment)")}, POLICY)
    verdict = rules.sweep_commit(rules.CommitRef(S[1], S[1], False), built_on_main, later, POLICY)
    assert verdict.action == "keep" and verdict.code == Code.ROLLBACK_TARGET
    assert rules.with_deployed(later, {}, POLICY) is later
