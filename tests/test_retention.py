"""Retention on live branches (KEEP_COMMITS), end to end on the real registry in both deletion modes.

The scenario of the issue: `main` with 30 built commits and KEEP_COMMITS=5. The 25 older commits'
tags go, except one deployed to `production`, one a git tag points at, one a live feature branch
forked from and rebuilt, and one younger than KEEP_COMMITS_MIN_AGE; `main`, `latest` and the five
newest stay. A branch outside KEEP_COMMITS_BRANCHES is untouched, and with KEEP_COMMITS unset
nothing changes anywhere. Every fact comes from the GitLab emulator over HTTP (pipelines in order,
deployments, git tags, open merge requests); no Pipeline Hook is needed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

import pytest
import redis

from tests.support.modes import MODES, settings_for
from tests.support.built import BuiltProject, tags_of
from tests.support.story import kept_because
from workers import retention, rules
from workers.common import keys
from workers.common.settings import Settings
from workers.gitlab import GitLab

pytestmark = pytest.mark.e2e

NOW = dt.datetime.now(dt.timezone.utc)
DAY = dt.timedelta(days=1)


@pytest.fixture
def client(gitlab):
    gl = GitLab(gitlab.url, gitlab.token, timeout=5, attempts=2, backoff=0.01)
    yield gl
    gl.close()


class Main(BuiltProject):
    """A project whose `main` built `count` commits, one a day (the last ones recently), each
    pipeline pushing `main`, `latest` (main only), `:sha` and `:short_sha` to the real registry."""

    def __init__(self, gitlab, count: int = 30, *, young: int = 0, branch: str = "main"):
        super().__init__(gitlab, "keep")
        self.commits: list[str] = []
        self.build(branch, count, young=young)

    def build(self, branch: str, count: int, *, young: int = 0, extra: tuple[str, ...] = ()) -> list[str]:
        """`count` commits pushed to `branch` and built, oldest first; the last `young` of them
        first built within the day, the others 30+ days ago."""
        if branch not in self.project.branches:
            self.project.add_branch(branch, from_branch="main")
        made = []
        for i in range(count):
            sha = self.project.push(branch)
            when = NOW - dt.timedelta(hours=2) if i >= count - young else NOW - (60 - i) * DAY
            self.pipeline(sha, branch, when, [rules.ref_slug(branch), *(["latest"] if branch == "main" else []),
                                              *extra])
            made.append(sha)
        if branch == "main":
            self.commits.extend(made)
        return made

    def pipeline(self, sha: str, ref: str, when, tags) -> None:
        self.project.add_pipeline(sha, ref, created_at=when)
        self.push(ref, sha, [*tags, sha, sha[:8]])


def with_retention(settings: Settings, **changes) -> Settings:
    values = {"keep_commits": 5, "keep_commits_min_age": 7 * 86400, **changes}
    return dataclasses.replace(settings, **values)


@pytest.mark.parametrize("mode", MODES)
def test_main_keeps_its_five_newest_and_every_commit_something_else_claims(gitlab, gitlab_stack, redis_url,
                                                                           client, mode):
    main = Main(gitlab, 24)
    c = list(main.commits)
    # One more, built within the day: too young to retire whatever its rank would say.
    # (It is not among the five newest: five more commits come after it.)
    young = main.build("main", 1, young=1)[0]
    newer = main.build("main", 5)  # days ago, but the newest pipelines of main: the five it keeps
    deployed, released, forked = c[3], c[7], c[11]
    main.project.add_environment("production", tier="production")
    main.project.deploy("production", ref="main", sha=deployed, at=NOW - 20 * DAY)
    main.project.add_tag("v1.0.0", released)
    # A live feature branch created at `forked` and rebuilt there: its pipeline pushed that commit's tags.
    main.project.add_branch("feature/x", sha=forked)
    main.pipeline(forked, "feature/x", NOW - 10 * DAY, ["feature-x"])
    settings = with_retention(settings_for(gitlab, gitlab_stack, redis_url, mode))
    conn = redis.Redis.from_url(redis_url)

    before = main.present()
    dry = retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main", dry_run=True)
    assert main.present() == before  # a dry run deletes nothing
    assert not conn.exists(keys.retired(main.project.id, "main"))

    report = retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main")
    all_main = [*c, young, *newer]
    assert len(all_main) == 30
    survivors = {deployed, released, forked, young, *newer}
    gone = tags_of(*(s for s in all_main if s not in survivors))
    main.assert_gone_exactly(gone)
    assert {d["tag"] for d in dry["decisions"] if d["decision"] == "would_delete"} == gone
    assert report["trigger"] == "superseded" and report["summary"]["deleted"] == len(gone)
    assert "production" in kept_because(report, deployed)
    assert "v1.0.0" in kept_because(report, released)
    assert "feature/x" in kept_because(report, forked)
    assert "KEEP_COMMITS_MIN_AGE" in kept_because(report, young)
    assert "newest" in kept_because(report, newer[0][:8])

    # A second pass finds nothing left to do, and asks GitLab little.
    gitlab.reset_requests()
    again = retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main")
    main.assert_gone_exactly(gone)
    assert again["summary"]["deleted"] == 0
    assert len(gitlab.requests) <= 12, gitlab.requests
    conn.close()


def test_unset_keep_commits_changes_nothing_and_a_branch_outside_the_pattern_is_untouched(
        gitlab, gitlab_stack, redis_url, client):
    main = Main(gitlab, 12)
    develop = main.build("develop", 12)
    settings = settings_for(gitlab, gitlab_stack, redis_url, "api")
    conn = redis.Redis.from_url(redis_url)
    assert settings.keep_commits is None
    with pytest.raises(retention.RetentionError, match="KEEP_COMMITS is not set"):
        retention.run(main.project.id, gitlab=client, conn=conn, settings=settings)
    off = retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main")
    assert "KEEP_COMMITS is not set" in off["skipped"]
    main.assert_gone_exactly(set())

    only_main = with_retention(settings, keep_commits_branches=re.compile("main"))
    result = retention.run(main.project.id, gitlab=client, conn=conn, settings=only_main)
    assert [r["branch"] for r in result["branches"]] == ["main"]
    main.assert_gone_exactly(tags_of(*main.commits[:-5]))
    outside = retention.run(main.project.id, gitlab=client, conn=conn, settings=only_main, branch="develop")
    assert "KEEP_COMMITS_BRANCHES" in outside["skipped"]
    assert tags_of(*develop) <= main.present()
    conn.close()


def test_a_retired_commit_the_branch_builds_again_is_decided_again(gitlab, gitlab_stack, redis_url, client):
    """A branch reset to an old commit and built there: the pipeline pushed its tags again, it is
    the branch's newest now, and once it is superseded again a pass retires it again."""
    main = Main(gitlab, 8)
    settings = with_retention(settings_for(gitlab, gitlab_stack, redis_url, "api"), keep_commits=3)
    conn = redis.Redis.from_url(redis_url)
    retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main")
    old = main.commits[0]
    main.assert_gone_exactly(tags_of(*main.commits[:5]))

    # Reset to `old` and built: its tags are back, and it heads the branch (kept, the newest); the
    # third newest before it is superseded now.
    main.project.branches["main"] = old
    main.pipeline(old, "main", NOW - 9 * DAY, ["main", "latest"])
    report = retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main")
    assert tags_of(old) <= main.present()
    main.assert_gone_exactly(tags_of(*main.commits[1:6]))
    assert "1st newest" in kept_because(report, old[:8])

    # Three newer commits later it is superseded again: it goes, as it would had it never been retired.
    newer = main.build("main", 3)
    main.project.branches["main"] = newer[-1]
    retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main")
    main.assert_gone_exactly(tags_of(*main.commits[:8]))  # `old` among them, and the two it pushed out
    assert {"main", "latest"} <= main.present()
    conn.close()


@pytest.mark.parametrize("project, branch, message", [
    (True, "main", "project must be a numeric id"), ("  ", "main", "project must be a numeric id"),
    (7, "x\x00y", "control characters"), (7, "", "non-empty"), (7, "b" * 256, "longer than"),
])
def test_bad_arguments_are_refused_before_anything_is_asked(project, branch, message):
    # No GitLab, no Redis: the arguments alone are refused (a replayed job with bad kwargs fails at once).
    with pytest.raises(retention.RetentionError, match=message):
        retention.run(project, gitlab=None, conn=None, settings=Settings(keep_commits=3), branch=branch)


# Found by the retention property (tests/test_retention_property.py): main's old commit cafebabe…'s
# short SHA tag is the same name as branch `cafebabe`'s image, which production still runs after the
# branch was deleted (or which an open merge request of the deleted branch still uses). That name
# is in use: only the old commit's full SHA tag goes.
CAFE = "cafebabe" + "1" * 32


@pytest.mark.parametrize("in_use_by", ["production", "open merge request"])
def test_a_short_sha_named_like_a_deleted_branch_in_use_stays(gitlab, gitlab_stack, redis_url, client, in_use_by):
    main = Main(gitlab, 2)
    main.project.push("main", sha=CAFE)
    main.pipeline(CAFE, "main", NOW - 50 * DAY, ["main", "latest"])
    main.commits.append(CAFE)
    newer = main.build("main", 5)
    main.project.add_branch("cafebabe", from_branch="main")
    head = main.project.push("cafebabe")
    main.pipeline(head, "cafebabe", NOW - 3 * DAY, ["cafebabe"])     # :cafebabe is that branch's image now
    if in_use_by == "production":
        main.project.deploy("production", ref="cafebabe", sha=head, at=NOW - 2 * DAY)
    else:
        main.project.add_merge_request(1, "cafebabe", "main", commits=[head])
    main.project.delete_branch("cafebabe")
    conn = redis.Redis.from_url(redis_url)
    settings = with_retention(settings_for(gitlab, gitlab_stack, redis_url, "api"))

    report = retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main")
    old = main.commits[:2]
    main.assert_gone_exactly(tags_of(*old) | {CAFE})
    assert in_use_by.split()[0] in kept_because(report, "cafebabe")
    assert tags_of(*newer) <= main.present()
    conn.close()


def test_the_newest_success_is_the_branchs_own_pipeline_also_under_gitlab_18s_ref_filter(
        gitlab, gitlab_stack, redis_url, client):
    """With GitLab 18's include_reserved_refs_in_ref_filter, `?ref=develop` also lists the
    pipelines of develop's merge requests: a successful merged-results pipeline (on a temporary
    merge commit) must not stand for develop's newest commit whose pipeline succeeded."""
    gitlab.include_reserved_refs_in_ref_filter = True
    main = Main(gitlab, 3)
    made = main.build("develop", 4)
    ok, failed = made[1], made[2:]
    for pipeline in main.project.pipelines.values():
        if pipeline.ref == "develop" and pipeline.sha in failed:
            main.project.update_pipeline(pipeline.id, "failed")
    main.project.add_merge_request(1, "develop", "main")
    main.project.add_pipeline("ab" * 20, "refs/merge-requests/1/merge", source="merge_request_event")
    settings = with_retention(settings_for(gitlab, gitlab_stack, redis_url, "api"), keep_commits=1)
    conn = redis.Redis.from_url(redis_url)
    report = retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="develop")
    conn.close()
    # made[3] is the newest and the open merge request's head; made[1] the newest that passed.
    main.assert_gone_exactly(tags_of(made[0], made[2]))
    assert "succeeded" in kept_because(report, ok)


def test_a_newest_success_buried_under_300_merge_request_pipelines_is_unclear_and_nothing_goes(
        gitlab, gitlab_stack, redis_url, client):
    """Under the same flag, when the branch's own newest success is not among the 300 newest
    successful pipelines `?ref=` lists, the pass cannot know which commit that is: it retires nothing."""
    gitlab.include_reserved_refs_in_ref_filter = True
    main = Main(gitlab, 3)
    made = main.build("develop", 4)
    for pipeline in main.project.pipelines.values():
        if pipeline.ref == "develop" and pipeline.sha in made[2:]:
            main.project.update_pipeline(pipeline.id, "failed")
    main.project.add_merge_request(1, "develop", "main")
    for i in range(301):
        main.project.add_pipeline(made[3], "refs/merge-requests/1/head", source="merge_request_event")
    settings = with_retention(settings_for(gitlab, gitlab_stack, redis_url, "api"), keep_commits=1)
    conn = redis.Redis.from_url(redis_url)
    report = retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="develop")
    conn.close()
    assert "not among the 300 newest successful pipelines" in report["skipped"]
    main.assert_gone_exactly(set())


def test_one_pass_waits_per_branch_and_a_running_one_gets_one_successor(conn):
    """schedule_retention on the real Redis and RQ: however many pipelines succeed, one pass waits
    per branch; while one runs (it may have read GitLab before the newest success), one more waits
    beside it under the branch's second id; a finished pass makes way."""
    from rq import Queue
    from rq.job import JobStatus

    from workers.common import queue as jobqueue

    q = Queue("retention-test", connection=conn)

    def schedule(branch="main"):
        return jobqueue.schedule_retention(q, project_id=7, branch=branch, delay=60, retries=0, intervals=())

    first = jobqueue.retire_id(7, "main")
    assert schedule() == (jobqueue.ENQUEUED, first)
    assert [schedule() for _ in range(3)] == [(jobqueue.DUPLICATE, first)] * 3
    assert schedule("develop")[0] == jobqueue.ENQUEUED  # another branch, its own pass

    q.fetch_job(first).set_status(JobStatus.STARTED)  # the pass runs
    assert schedule() == (jobqueue.ENQUEUED, first + "-next")
    assert schedule() == (jobqueue.DUPLICATE, first + "-next")

    q.fetch_job(first).set_status(JobStatus.FINISHED)  # done; the successor still waits
    assert schedule() == (jobqueue.DUPLICATE, first + "-next")
    q.fetch_job(first + "-next").set_status(JobStatus.FAILED)  # history too
    assert schedule() == (jobqueue.ENQUEUED, first)
    job = q.fetch_job(first)
    assert job.func_name == "workers.jobs.retire_branch" and job.kwargs == {
        "project_id": 7, "branch": "main", "delivery": None}
    assert job.get_status() == JobStatus.SCHEDULED and job.meta["trigger"] == "superseded"


def test_a_sweep_that_finds_a_retired_commits_tag_again_lets_the_next_pass_decide_it(
        gitlab, gitlab_stack, redis_url, client):
    """What a pass remembers as retired is a cache of what it deleted. A tag pushed again some other
    way (here: the registry restored from a backup) is seen by the sweep, which lists every tag; the
    pass after the sweep (the sweep job runs one) deletes it again."""
    from workers import sweep

    main = Main(gitlab, 8)
    settings = with_retention(settings_for(gitlab, gitlab_stack, redis_url, "api"), keep_commits=3)
    conn = redis.Redis.from_url(redis_url)
    retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main")
    old = main.commits[0]
    main.assert_gone_exactly(tags_of(*main.commits[:5]))
    restored = gitlab.registry_client.push_image(main.path, [old, old[:8]], content="restored")

    again = retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main")
    assert again["summary"]["deleted"] == 0  # remembered as retired: not asked about

    swept = sweep.run_project(main.project.id, gitlab=client, conn=conn, settings=settings)
    assert swept["summary"]["deleted"] == 0  # built on live main: the sweep keeps it
    assert gitlab.registry_client.resolve(main.path, old) == restored
    after = retention.run(main.project.id, gitlab=client, conn=conn, settings=settings, branch="main")
    assert after["summary"]["deleted"] == 2
    main.assert_gone_exactly(tags_of(*main.commits[:5]))
    conn.close()


def test_a_branchs_retired_memory_expires_and_holds_only_what_gitlab_still_lists(
        gitlab, gitlab_stack, redis_url, client):
    """The retired set is a cache of what a pass deleted: it lives RETIRED_TTL after the branch's
    last pass (a deleted branch's goes by itself), and a pass drops the commits GitLab no longer
    lists a pipeline of the branch on (here: a pipeline deleted, and the copy read again)."""
    from workers import pipelines

    main = Main(gitlab, 2)
    feature = main.build("feature/y", 6)
    settings = with_retention(settings_for(gitlab, gitlab_stack, redis_url, "api"), keep_commits=3)
    conn = redis.Redis.from_url(redis_url)
    pid, key = main.project.id, keys.retired(main.project.id, "feature/y")
    retention.run(pid, gitlab=client, conn=conn, settings=settings, branch="feature/y")
    main.assert_gone_exactly(tags_of(*feature[:3]))
    assert {s.decode() for s in conn.zrange(key, 0, -1)} == set(feature[:3])
    assert 0 < conn.ttl(key) <= retention.RETIRED_TTL

    conn.expire(key, 60)  # weeks without a pass
    again = retention.run(pid, gitlab=client, conn=conn, settings=settings, branch="feature/y")
    assert again["retention"]["retired_before"] == 3 and again["summary"]["deleted"] == 0
    assert conn.ttl(key) > retention.RETIRED_TTL - 60  # a pass with nothing to do keeps the memory alive

    gone = next(p.id for p in main.project.pipelines.values() if p.sha == feature[0] and p.ref == "feature/y")
    main.project.delete_pipeline(gone)
    pipelines.Record(conn, pid).drop()  # the copy is read again from GitLab
    third = retention.run(pid, gitlab=client, conn=conn, settings=settings, branch="feature/y")
    assert third["retention"]["retired_before"] == 2 and third["summary"]["deleted"] == 0
    assert {s.decode() for s in conn.zrange(key, 0, -1)} == set(feature[1:3])
    main.assert_gone_exactly(tags_of(*feature[:3]))
    conn.close()
