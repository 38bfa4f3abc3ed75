"""The safety property end to end: generated projects, the real cleanup, the real registry.

tests/test_safety_property.py checks thousands of generated projects against the pure
planner. This file takes a smaller number of the same generated projects all the way. It
seeds the GitLab emulator with the project as it is when the worker runs (after the late
events): branches with their histories, git tags, every merge request with its state, commits
and merge or squash commit, and EVERY pipeline as a GitLab pipeline (`GET /projects/:id/pipelines`
lists them whether or not their hook arrived; merge-request pipelines on
`refs/merge-requests/<iid>/head|merge`). Only the pipelines whose hook arrived ("seen") go into
tagsweeper's pipeline memory. It pushes every pipeline's images to the real docker-registry in
push order (later pushes of a tag win), runs the cleanup exactly as the worker does
(`cleanup.run`: look again, sync GitLab's pipelines record, gather over HTTP, plan, delete) in
both deletion modes, and then reads the registry:

- every tag still there resolves to the digest it had (so every live ref's tag is at its digest);
- no tag a live ref's pipeline pushed is gone (the full invariant, as in the pure test);
- the cleanup was skipped exactly when the pure model's look_again says so;
- what is gone is exactly what the pure planner decided for the same project, so the facts the
  worker gathers over HTTP are the facts the pure property was checked on.

The emulator's merge requests are seeded with the model's commits, and told that the branches'
histories hold the truth (`commits_from`, `merged_in_graph`): its shortcut of putting a seeded
merge request's commits on its source and target branches would otherwise disagree with the model
when a branch was deleted and created again with another history.
"""

from __future__ import annotations

import itertools
import os

import pytest
import redis
from hypothesis import HealthCheck, given, settings

from tests.support.modes import MODES, settings_for
from tests.support.safety_checks import KNOWN_GAPS, run_plan, violations
from tests.support.safety_generator import projects
from tests.support.safety_model import MergeRequest, Pipeline, Project, note
from workers import cleanup, history
from workers.gitlab import GitLab
from workers.common.settings import Settings

pytestmark = pytest.mark.e2e

# 15 generated projects per mode: each pushes up to ~30 images and runs a full cleanup over HTTP
# (~0.3 s), so the file stays near 15 s; the thousands of examples run in the pure test.
# SAFETY_E2E_EXAMPLES=500 for a longer hunt.
EXAMPLES = int(os.environ.get("SAFETY_E2E_EXAMPLES", "15"))
_ids = itertools.count(9000)


def seed(gitlab, conn, pr: Project) -> tuple[int, str, dict[str, str]]:
    """The generated project, as it is when the worker runs, in the emulator, the registry and
    pipeline memory."""
    pid = next(_ids)
    path = f"prop/p{pid}"
    project = gitlab.add_project(pid, path, default_branch=pr.default)
    project.branches.clear()
    for name, commits in pr.branches.items():
        project.branches[name] = commits[-1]
        project.history[name] = list(commits)       # what commits/:sha/refs answers from
    project.tags.update(pr.tags)
    for mr in pr.mrs.values():
        seeded = project.add_merge_request(
            mr.iid, mr.source, mr.target, state=mr.state, commits=list(mr.commits),
            merge_commit_sha=mr.merge_commit_sha, squash=mr.squash, squash_commit_sha=mr.squash_commit_sha)
        assert hasattr(seeded, "commits_from") and hasattr(seeded, "merged_in_graph"), "emulator changed"
        seeded.commits_from, seeded.merged_in_graph = "branch", True   # the histories hold the truth
    project.add_registry_repository("")
    reg = gitlab.registry_client
    expected: dict[str, str] = {}
    for p in pr.pipelines:  # GitLab's record, in push order: a later push of a tag moves it
        project.add_pipeline(p.sha, p.ref, source="merge_request_event" if p.kind == "mr" else "push",
                             tag=p.kind == "tag")
        if p.pushed:
            digest = reg.push_image(path, list(p.pushed), content=f"{path}-{p.number}")
            expected.update({t: digest for t in p.pushed})
        if p.seen:  # the Pipeline Hook's ref: the source branch for a merge request pipeline
            history.record(conn, project_id=pid, ref=p.branch if p.kind != "tag" else p.ref, sha=p.sha,
                           tag=p.kind == "tag", ttl_days=1, cap=500)
    return pid, path, expected


def check_project(gitlab, conn, config: Settings, pr: Project) -> dict:
    """Seed `pr`, clean it as the worker does, and hold the registry against the rules and the planner."""
    pid, path, expected = seed(gitlab, conn, pr)
    merge = pr.trigger == "merge"
    request = cleanup.Request(
        project_id=pid, branch=pr.cleaned, trigger=pr.trigger, shas=(pr.last_commit,),
        mr_iid=pr.mr_iid if merge else None, target_project_id=pid if merge else None,
        target_branch=pr.target if merge else None)
    client = GitLab(config.gitlab_url, config.gitlab_token, timeout=10)
    try:
        report = cleanup.run(request, gitlab=client, conn=conn, settings=config)
    finally:
        client.close()
    note(f"report: {report}")
    reg = gitlab.registry_client
    present = set(reg.tags(path))
    for tag in present:
        assert reg.resolve(path, tag) == expected[tag], f"{tag} moved"
    deleted = set(expected) - present
    facts, planned = run_plan(pr)
    assert bool(report["skipped"]) == (facts is None), f"worker skipped: {report['skipped']!r}"
    found = [v for v in violations(pr, facts, deleted) if not any(f"[gap: {g}]" in v for g in KNOWN_GAPS)]
    assert not found, "\n".join(found)
    assert deleted == planned & set(expected), f"worker deleted {sorted(deleted)}, planner {sorted(planned)}"
    assert report["summary"]["failed"] == 0
    return report


@pytest.mark.parametrize("mode", MODES)
def test_real_cleanups_of_generated_projects_keep_every_live_refs_tag(gitlab, gitlab_stack, redis_url, mode):
    conn = redis.Redis.from_url(redis_url)
    config = settings_for(gitlab, gitlab_stack, redis_url, mode)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(pr=projects())
    def check(pr: Project) -> None:
        check_project(gitlab, conn, config, pr)

    check()


# --- examples the property found, kept by name --------------------------------------------------

OLD = "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"
MAIN = "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"
CAFE = "cafebabe" + "1" * 32


@pytest.mark.parametrize("mode", MODES)
def test_an_mr_without_commits_keeps_the_sha_tags_of_the_commit_its_branch_started_from(
        gitlab, gitlab_stack, redis_url, mode):
    """feature/a starts at main's commit cafebabe and gets no commit of its own; its pipeline (hook
    lost) pushed :cafebabe…, which is main's commit. The merged MR lists no commits, so cafebabe is
    not the MR's work: GitLab's refs say main contains it, and its SHA tags stay. (The emulator used
    to give a commit-less MR its source branch's head as a commit, which made it look like the MR's.)"""
    pr = Project(default="main", cleaned="feature/a", tag_images="name",
                 branches={"main": [OLD, CAFE, MAIN]},  # feature/a was removed with the merge
                 mrs={1: MergeRequest(1, "feature/a", "main", "merged", (), merge_commit_sha=MAIN, method="merge")},
                 pipelines=[Pipeline(0, "branch", "feature/a", CAFE, False, ("feature-a", CAFE, "cafebabe"),
                                     "feature/a")],
                 trigger="merge", target="main", mr_iid=1, last_commit=CAFE)
    facts, planned = run_plan(pr)
    assert planned == {"feature-a"}  # the ground truth: only the branch tag goes
    check_project(gitlab, redis.Redis.from_url(redis_url), settings_for(gitlab, gitlab_stack, redis_url, mode), pr)
