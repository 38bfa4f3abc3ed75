"""The safety property end to end: generated projects, the real cleanup, the real registry.

tests/test_safety_property.py checks thousands of generated projects against the pure
planner. This file takes a smaller number of the same generated projects all the way:
it seeds the GitLab emulator (branches, git tags, the merge request), pushes every
pipeline's images to the real docker-registry in push order (later pushes of a tag win),
records the pipelines tagsweeper saw in its Redis memory, runs the cleanup exactly as
the worker does (`cleanup.run`, gathering its facts over HTTP) in both deletion modes,
and then reads the registry:

- every tag still there resolves to the digest it had;
- no tag a live ref's pipeline pushed is gone (the full invariant, as in the pure test);
- what is gone is exactly what the pure planner decided for the same project, so the
  facts the worker gathers over HTTP are the facts the pure property was checked on.
"""

from __future__ import annotations

import itertools

import pytest
import redis
from hypothesis import HealthCheck, given, settings

from tests.test_e2e import MODES, mode_env
from tests.test_safety_property import Pipeline, Project, note, projects, run_plan, violations
from workers import cleanup, history
from workers.gitlab import GitLab
from workers.settings import Settings

pytestmark = pytest.mark.e2e

# 15 generated projects per mode: each pushes up to ~20 images and runs a full cleanup over
# HTTP (~0.3 s), so the file stays near 10-15 s; the thousands of examples run in the pure test.
EXAMPLES = 15
_ids = itertools.count(9000)


def seed(gitlab, conn, pr: Project) -> tuple[int, str, dict[str, str]]:
    """The generated project in the emulator, the registry and pipeline memory."""
    pid = next(_ids)
    path = f"prop/p{pid}"
    project = gitlab.add_project(pid, path, default_branch=pr.default)
    project.branches.clear()
    project.branches.update({name: h[-1] for name, h in pr.branches.items()})
    project.tags.update(pr.tags)
    # Branch histories, so the emulator's commits/:sha/refs knows which live branch contains what.
    on: dict[str, list[str]] = {}
    for name, commits in pr.branches.items():
        for sha in commits:
            on.setdefault(sha, []).append(name)
    for sha, names in on.items():
        project.add_commit(sha, on=names)
    if pr.mr_commits or pr.trigger == "merge":
        project.add_merge_request(1, pr.cleaned, pr.target or pr.default, state="merged",
                                  commits=list(pr.mr_commits))
    project.add_registry_repository("")
    reg = gitlab.registry_client
    expected: dict[str, str] = {}
    for p in pr.pipelines:  # push order: a later push of a tag moves it
        if p.pushed:
            digest = reg.push_image(path, list(p.pushed), content=f"{path}-{p.number}")
            expected.update({t: digest for t in p.pushed})
        if p.seen:
            history.record(conn, project_id=pid, ref=p.ref, sha=p.sha, tag=p.kind == "tag", ttl_days=1, cap=500)
    return pid, path, expected


def check_project(gitlab, conn, config: Settings, pr: Project) -> None:
    """Seed `pr`, clean it as the worker does, and hold the registry against the rules and the planner."""
    pid, path, expected = seed(gitlab, conn, pr)
    request = cleanup.Request(
        project_id=pid, branch=pr.cleaned, trigger=pr.trigger, shas=(pr.last_commit,),
        mr_iid=1 if pr.trigger == "merge" else None,
        target_project_id=pid if pr.trigger == "merge" else None,
        target_branch=pr.target if pr.trigger == "merge" else None)
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
    found = violations(pr, facts, deleted)
    assert not found, "\n".join(found)
    assert deleted == planned & set(expected), f"worker deleted {sorted(deleted)}, planner {sorted(planned)}"
    assert report["summary"]["failed"] == 0


def settings_for(gitlab, gitlab_stack, redis_url: str, mode: str) -> Settings:
    return Settings.from_env({"GITLAB_URL": gitlab.url, "GITLAB_TOKEN": gitlab.token, "REDIS_URL": redis_url,
                              **mode_env(mode, gitlab_stack)})


@pytest.mark.parametrize("mode", MODES)
def test_real_cleanups_of_generated_projects_keep_every_live_refs_tag(gitlab, gitlab_stack, redis_url, mode):
    conn = redis.Redis.from_url(redis_url)
    config = settings_for(gitlab, gitlab_stack, redis_url, mode)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(pr=projects(unseen_anywhere=False))
    def check(pr: Project) -> None:
        check_project(gitlab, conn, config, pr)

    check()


# --- examples the property found, kept by name --------------------------------------------------

OLD = "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"
CAFE = "cafebabe" + "1" * 32


@pytest.mark.parametrize("mode", MODES)
def test_an_mr_without_commits_keeps_the_sha_tags_of_the_commit_its_branch_started_from(
        gitlab, gitlab_stack, redis_url, mode):
    """feature/a starts at main's commit cafebabe and gets no commit of its own; its pipeline (hook
    lost) pushed :cafebabe…, which is main's commit. The merged MR lists no commits, so cafebabe is
    not the MR's work: GitLab's refs say main contains it, and its SHA tags stay. (The emulator used
    to give a commit-less MR its source branch's head as a commit, which made it look like the MR's.)"""
    pr = Project(default="main", cleaned="feature/a", tag_images="name",
                 branches={"main": [OLD, CAFE, OLD], "feature/a": [OLD, CAFE]},
                 pipelines=[Pipeline(0, "branch", "feature/a", CAFE, False, ("feature-a", CAFE, "cafebabe"))],
                 trigger="merge", target="main", mr_commits=(), last_commit=CAFE)
    facts, planned = run_plan(pr)
    assert planned == {"feature-a"}  # the ground truth: only the branch tag goes
    check_project(gitlab, redis.Redis.from_url(redis_url), settings_for(gitlab, gitlab_stack, redis_url, mode), pr)
