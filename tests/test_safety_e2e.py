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
from hypothesis import HealthCheck, given, note, settings

from tests.test_e2e import MODES, mode_env
from tests.test_safety_property import Project, projects, run_plan, violations
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


@pytest.mark.parametrize("mode", MODES)
def test_real_cleanups_of_generated_projects_keep_every_live_refs_tag(gitlab, gitlab_stack, redis_url, mode):
    conn = redis.Redis.from_url(redis_url)
    env = {"GITLAB_URL": gitlab.url, "GITLAB_TOKEN": gitlab.token, "REDIS_URL": redis_url,
           **mode_env(mode, gitlab_stack)}
    config = Settings.from_env(env)

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(pr=projects(unseen_anywhere=False))
    def check(pr: Project) -> None:
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

    check()
