"""In use means deployed: GitLab's environments and deployments keep images, end to end.

First GitLab's record of deployments (workers/deployments.py) on the real Redis and the emulator
over HTTP, as tests/test_pipelines.py does for pipelines: every deployment read once a sync
finished, none lost to paging, a re-read that asks only for what changed, a failed read that
leaves the cursor, a deployment GitLab deleted that cannot hold a real one's place, Deployment
Hook hints that only add, and a cost per cleanup that does not grow with the environments.

Then the scenarios of the issue, each on the real registry in both deletion modes, through
gunicorn and a worker (IN_USE_RECHECK of 2 seconds): a merged branch whose review app still
runs, a deleted release branch production may roll back to, a fast-forward merge deployed from
`main`, and all of it with no Deployment Hook ever arriving (GitLab's API decides).

These tests never empty Redis (the module's service shares it): each has its own project.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
import redis
from rq import Queue
from rq.registry import FinishedJobRegistry, ScheduledJobRegistry

from tests.support.modes import MODES, mode_env, settings_for
from tests.support.payloads import deployment_hook_body
from tests.support.service import Service
from tests.support.story import Story, kept_because, next_project_id
from workers import cleanup, deployments, sweep
from workers.common import queue
from workers.gitlab import GitLab, TransientError

pytestmark = pytest.mark.e2e

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
RECHECK = 2  # seconds: the service's IN_USE_RECHECK


@pytest.fixture
def client(gitlab):
    gl = GitLab(gitlab.url, gitlab.token, timeout=5, attempts=2, backoff=0.01)
    yield gl
    gl.close()


def at(hours: float) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def seed(project, count: int, environments=("production", "staging", "review/a")) -> list:
    """`count` deployments an hour apart, long ago, round the environments; every 7th failed."""
    made = []
    for i in range(count):
        made.append(project.deploy(environments[i % len(environments)], ref="main", sha=project.push("main"),
                                   status="failed" if i % 7 == 6 else "success", at=at(i)))
    return made


def successful(project, environment: str) -> list[int]:
    """GitLab's successful deployments of an environment, newest first (ids)."""
    env = project.get_environment(environment)
    return sorted((d.id for d in env.deployments if d.status == "success"), reverse=True)


# --- the record ------------------------------------------------------------------------------

def test_the_first_sync_reads_every_deployment_and_a_second_only_what_changed(gitlab, store, client):
    project = gitlab.add_project(next_project_id(), "dep/first")
    seed(project, 250)
    record = deployments.Record(store, project.id)
    gitlab.reset_requests()
    assert record.sync(client) == 250
    assert gitlab.count("GET", rf"/projects/{project.id}/deployments") == 3  # 100 per page
    held = record.newest(["production", "staging", "review/a", "nowhere"], 3)
    for name in ("production", "staging", "review/a"):
        ids = successful(project, name)
        assert [d.id for d in held[name][0]] == ids[:3] and held[name][1] == len(ids)
    assert held["nowhere"] == ([], 0)

    # Nothing changed: one request, reading only the ten minutes before the newest deployment read.
    gitlab.reset_requests()
    assert record.sync(client) == 1
    assert gitlab.count("GET", rf"/projects/{project.id}/deployments") == 1

    # A new deployment and a running one: exactly those are read (and the newest of the history again).
    new = project.deploy("production", ref="main", sha=project.push("main"))
    running = project.deploy("staging", ref="main", sha=project.push("main"), status="running")
    assert record.sync(client) == 3
    assert record.newest(["production"], 1)["production"][0][0].id == new.id
    assert running.id not in {d.id for d in record.newest(["staging"], 3)["staging"][0]}  # not successful (yet)
    project.update_deployment(running.id, "success")
    assert record.sync(client) == 2  # it, and `new` again (the overlap)
    assert record.newest(["staging"], 1)["staging"][0][0].id == running.id


def test_a_sync_that_fails_half_way_leaves_the_cursor_and_is_repeated_whole(gitlab, store, client):
    project = gitlab.add_project(next_project_id(), "dep/fails")
    seed(project, 150)
    record = deployments.Record(store, project.id)
    gitlab.inject_fault("GET", rf"/projects/{project.id}/deployments$", 503, times=2, query_regex=r"updated_after=")
    with pytest.raises(TransientError):
        record.sync(client)
    assert store.hget(record.state_key, "cursor") is None and store.hget(record.state_key, "complete") is None
    assert record.sync(client) == 150  # from the start again: nothing skipped
    assert record.newest(["production"], 100)["production"][1] == len(successful(project, "production"))


def test_a_deployment_deleted_while_the_record_pages_costs_no_other(gitlab, store, client):
    """GitLab pages the list by offset. A deployment it deletes after the first page was served
    would shift the 101st onto page 1, never to be read, if the record paged by offset: it pages
    by time (each page asks for what was updated after the last one read)."""
    project = gitlab.add_project(next_project_id(), "dep/paging")
    made = seed(project, 150)
    asked = []

    class DeletingGitLab(GitLab):
        def deployments_page(self, pid, params):
            items = super().deployments_page(pid, params)
            asked.append(dict(params))
            if len(asked) == 1:
                project.delete_deployment(made[0].id)  # production's oldest
            return items

    gl = DeletingGitLab(gitlab.url, gitlab.token, timeout=5)
    try:
        assert deployments.Record(store, project.id).sync(gl) == 150
    finally:
        gl.close()
    assert len(asked) == 2 and "updated_after" in asked[1] and asked[1]["page"] == 1
    held = deployments.Record(store, project.id).newest(["production", "staging", "review/a"], 100)
    for name in ("production", "staging", "review/a"):
        assert {d.id for d in held[name][0]} >= set(successful(project, name))


def test_a_deployment_gitlab_deleted_cannot_hold_the_place_of_a_real_one(gitlab, store, client):
    """GitLab deletes a deployment (never an environment's last) after the copy read it. The copy
    still counts it among production's three newest, so the real 3rd newest would lose its tags:
    for a commit about to lose them, production's newest are asked of GitLab (once), and both count."""
    project = gitlab.add_project(next_project_id(), "dep/deleted")
    made = [project.deploy("production", ref="main", sha=project.push("main"), at=at(n)) for n in range(5)]
    first = deployments.Protection(client, store, project.id, 3).load()
    assert set(first.in_use().shas) == {made[4].sha, made[3].sha, made[2].sha}
    project.delete_deployment(made[3].id)

    protection = deployments.Protection(client, store, project.id, 3).load()
    assert made[1].sha not in protection.in_use().shas  # the copy alone: #5, #4 (deleted), #3
    gitlab.reset_requests()
    assert protection.confirm([made[1].sha, made[0].sha, made[4].sha])
    assert gitlab.count("GET", rf"/projects/{project.id}/deployments") == 1  # production, once
    shas = protection.in_use().shas
    assert str(shas[made[1].sha]) == "rollback target of production (3rd newest deployment)"
    assert made[0].sha not in shas and made[3].sha in shas  # the deleted one keeps its tags: the safe side
    assert not protection.confirm([made[1].sha, made[0].sha])  # asked already
    # A commit the copy holds among the newest asks nothing.
    again = deployments.Protection(client, store, project.id, 3).load()
    assert not again.confirm([made[4].sha, made[2].sha])


def test_deployment_hooks_only_add(gitlab, store, client):
    """A Deployment Hook says a deployment succeeded before GitLab's list shows it (the hint keeps
    its commit while the environment is live); another status, or a stopped environment, adds
    nothing; once the list shows it successful, GitLab's record carries it and the hint goes."""
    project = gitlab.add_project(next_project_id(), "dep/hints")
    project.add_environment("review/gone", state="stopped")
    old = project.deploy("production", ref="main", sha=project.push("main"), at=at(0))
    running = project.deploy("production", ref="main", sha=project.push("main"), status="running", at=at(1))
    ghost = project.push("main")  # a deployment GitLab never lists (deleted meanwhile, say)
    hint = dict(project_id=project.id, environment="production")
    deployments.remember(store, **hint, deployment_id=running.id, sha=running.sha, status="success")
    deployments.remember(store, **hint, deployment_id=10**9, sha=ghost, status="success")
    deployments.remember(store, **hint, deployment_id=10**9 + 1, sha=project.push("main"), status="failed")
    deployments.remember(store, project_id=project.id, environment="review/gone", deployment_id=10**9 + 2,
                         sha=project.push("main"), status="success")
    for bad in (dict(sha="nope"), dict(deployment_id=0), dict(environment=""), dict(environment="a\tb")):
        with pytest.raises(ValueError):
            deployments.remember(store, **{**hint, "deployment_id": 7, "sha": ghost, "status": "success", **bad})

    shas = deployments.Protection(client, store, project.id, 3).load().in_use().shas
    assert set(shas) == {old.sha, running.sha, ghost}  # newer than what GitLab lists: each may be what runs
    assert str(shas[ghost]) == f"in use by environment production (deployment #{10**9})"
    assert str(shas[running.sha]) == f"in use by environment production (deployment #{running.id})"

    project.update_deployment(running.id, "success")
    record = deployments.Record(store, project.id)
    shas = deployments.Protection(client, store, project.id, 3).load().in_use().shas
    assert str(shas[running.sha]) == f"in use by environment production (deployment #{running.id})"
    assert {int(k) for k in store.hkeys(record.part("hints"))} == {10**9, 10**9 + 2}  # GitLab's list carries it now
    # A hint for what the copy holds already writes nothing.
    deployments.remember(store, **hint, deployment_id=old.id, sha=old.sha, status="success")
    assert {int(k) for k in store.hkeys(record.part("hints"))} == {10**9, 10**9 + 2}
    # Hints fade: one older than HINT_TTL counts no more.
    assert set(record.hinted(["production"], now=time.time() + deployments.HINT_TTL + 1)) == set()
    record.drop()
    assert not store.keys(f"tagsweeper:deployments:{project.id}:*")


def test_odd_items_are_skipped_or_read_as_well_as_they_can_be(store):
    """An item without an environment or a full SHA is skipped (and logged); one without any time
    still counts; a status other than success keeps nothing."""
    sha = "ab" * 20

    class Listing:
        def deployments_page(self, pid, params):
            return [{"id": 1, "sha": sha, "ref": "main", "status": "success", "environment": {"name": "prod"}},
                    {"id": 2, "sha": sha[:8], "status": "success", "environment": {"name": "prod"}},
                    {"id": 3, "sha": sha, "status": "success"},
                    {"id": 4, "sha": "cd" * 20, "status": "failed", "environment": {"name": "prod"},
                     "updated_at": "2025-01-01T00:00:00Z"},
                    {"id": True, "sha": sha}, "not an item"]

    record = deployments.Record(store, next_project_id())
    assert record.sync(Listing()) == 4
    held, total = record.newest(["prod"], 3)["prod"]
    assert [(d.id, d.sha, d.ref, d.finished) for d in held] == [(1, sha, "main", None)] and total == 1


@pytest.mark.parametrize("environments", [0, 5, 50])
def test_a_cleanups_cost_does_not_grow_with_the_environments(gitlab, gitlab_stack, redis_server, environments):
    """Three listings of the environments (available, stopping, stopped) and one page of
    deployments changed since the last read, however many environments the project has; no
    listing at all in a project that never deployed."""
    project = gitlab.add_project(next_project_id(), "dep/cost")
    project.add_registry_repository("")
    for n in range(environments):
        project.deploy(f"review/app-{n}", ref="main", sha=project.branches["main"], at=at(n))
        if n % 5 == 4:
            project.stop_environment(f"review/app-{n}")
    project.add_branch("feature/x", from_branch="main")
    sha = project.push("feature/x")
    project.add_pipeline(sha, "feature/x")
    gitlab.registry_client.push_image(project.path, ["feature-x", sha, sha[:8]], content="x")
    project.add_merge_request(1, "feature/x", "main")
    project.merge(1, "merge", remove_source_branch=True)
    conn = redis.Redis.from_url(redis_server.url)
    gl = GitLab(gitlab.url, gitlab.token, timeout=10)
    try:
        report = cleanup.run(cleanup.Request(project_id=project.id, branch="feature/x", trigger="merge", mr_iid=1,
                                             target_project_id=project.id, target_branch="main"),
                             gitlab=gl, conn=conn, settings=settings_for(gitlab, gitlab_stack, redis_server.url, "api"))
    finally:
        gl.close()
        conn.close()
    assert report["summary"]["deleted"] == 3
    assert gitlab.count("GET", rf"/projects/{project.id}/environments") == (3 if environments else 0)
    assert gitlab.count("GET", rf"/projects/{project.id}/environments/") == 0  # never one by one
    assert gitlab.count("GET", rf"/projects/{project.id}/deployments") == 1


def test_a_recheck_is_one_per_branch_and_interval_and_never_in_its_own_way(store):
    """Cleanups of one branch asking within one IN_USE_RECHECK share a re-check; the re-check,
    running when it is due, schedules the next under the next slot's id (its own is taken while
    it runs)."""
    assert queue.recheck_id(7, "feature/x", 7200.0, 3600) == queue.recheck_id(7, "feature/x", 10799.0, 3600)
    assert queue.recheck_id(7, "feature/x", 7200.0, 3600) != queue.recheck_id(7, "feature/x", 10800.0, 3600)
    assert queue.recheck_id(7, "feature/x", 7200.0, 3600) != queue.recheck_id(7, "feature/y", 7200.0, 3600)
    assert queue.recheck_id(7, "feature/x", 7200.0, 3600).startswith("recheck-7-")
    q = Queue(f"recheck-test-{next_project_id()}", connection=store)
    kwargs = {"project_id": 7, "branch": "feature/x", "trigger": "merge", "mr_iid": 1}
    first = queue.schedule_recheck(q, kwargs, project_id=7, interval=3600, retries=2, intervals=(5,))
    again = queue.schedule_recheck(q, kwargs, project_id=7, interval=3600, retries=2, intervals=(5,))
    assert first[0] == queue.ENQUEUED and again == (queue.DUPLICATE, first[1])
    job = q.fetch_job(first[1])
    assert job.func_name == queue.CLEANUP_BRANCH and job.kwargs == kwargs and job.retries_left == 2
    assert ScheduledJobRegistry(queue=q).get_job_ids() == [first[1]]


# --- the scenarios, end to end ---------------------------------------------------------------

@pytest.fixture(scope="module", params=MODES)
def service(request, redis_server, gitlab_stack, tmp_path_factory):
    """gunicorn and a worker per deletion mode, re-checking kept tags every RECHECK seconds (and no
    scheduled sweep: only the re-checks release anything)."""
    emu = gitlab_stack.emulator
    redis.Redis.from_url(redis_server.url).flushdb()  # earlier modules' jobs are not this service's
    svc = Service(tmp_path_factory.mktemp("deploy-service"), redis_server.url, emu.url, emu.token,
                  IN_USE_RECHECK=str(RECHECK), SWEEP_CRON="off", **mode_env(request.param, gitlab_stack)).start()
    yield svc
    svc.stop()


def rechecks(story: Story, registry) -> list[str]:
    conn = redis.Redis.from_url(story.service.redis_url)
    return [j for j in registry(queue=Queue("tagsweeper", connection=conn)).get_job_ids()
            if j.startswith(f"recheck-{story.project.id}-")]


def wait_for(what, condition, timeout: float = 30.0, service: Service | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"still waiting for {what}\n{service.logs()[-3000:] if service else ''}")
        time.sleep(0.2)


def review_app_story(gitlab, service) -> tuple[Story, list[str], object]:
    """feature/x: three commits, each built; its review app ran the second (failed), then the head;
    merged (a merge commit) and deleted, the review app left running (a stop action would stop it;
    it has none)."""
    story = Story(gitlab, service)
    p = story.project
    p.add_environment("review/feature-x", auto_stop_setting="with_action")
    p.add_branch("feature/x", from_branch="main")
    shas = []
    for _ in range(3):
        sha = p.push("feature/x")
        story.pipeline(sha, "feature/x", ["feature-x"], hook=False)
        shas.append(sha)
    p.deploy("review/feature-x", ref="feature/x", sha=shas[1], status="failed")
    review = p.deploy("review/feature-x", ref="feature/x", sha=shas[2])
    p.add_merge_request(1, "feature/x", "main")
    p.merge(1, "merge", remove_source_branch=True)
    assert p.get_environment("review/feature-x").state == "available"
    return story, shas, review


def test_a_merged_branchs_live_review_app_keeps_its_images_until_it_is_stopped(gitlab, service):
    story, (first, second, head), review = review_app_story(gitlab, service)
    report = story.merged(1)
    story.assert_gone_exactly({first, first[:8], second, second[:8]})
    in_use = f"in use by environment review/feature-x (deployment #{review.id})"
    assert kept_because(report, "feature-x") == in_use
    assert kept_because(report, head) == kept_because(report, head[:8]) == in_use
    assert cleanup.held_by_environments(report)

    # Re-checks come every RECHECK seconds and keep them while the review app runs.
    wait_for("a re-check", lambda: rechecks(story, FinishedJobRegistry), service=service)
    story.assert_gone_exactly({first, first[:8], second, second[:8]})
    assert len(rechecks(story, ScheduledJobRegistry)) <= 1  # one waiting at most, however many ran

    story.project.stop_environment("review/feature-x")
    reg = gitlab.registry_client
    wait_for("the review app's images to go", lambda: "feature-x" not in reg.tags(story.path), service=service)
    service.wait_idle()
    story.assert_gone_exactly({"feature-x", first, first[:8], second, second[:8], head, head[:8]})
    assert not rechecks(story, ScheduledJobRegistry) and not service.failed_jobs()


@pytest.mark.parametrize("mode", MODES)
def test_the_sweep_releases_what_a_stopped_review_app_ran(gitlab, gitlab_stack, redis_server, mode):
    """The same, with the cleanup run by hand (no re-check) and the review app stopped since: the
    sweep lists what live environments keep while they run, and cleans the rest once stopped."""
    story, (first, second, head), review = review_app_story(gitlab, None)
    settings = settings_for(gitlab, gitlab_stack, redis_server.url, mode)
    conn = redis.Redis.from_url(redis_server.url)
    gl = GitLab(gitlab.url, gitlab.token, timeout=10)
    try:
        cleanup.run(cleanup.Request(project_id=story.project.id, branch="feature/x", trigger="merge", mr_iid=1,
                                    target_project_id=story.project.id, target_branch="main"),
                    gitlab=gl, conn=conn, settings=settings)
        story.assert_gone_exactly({first, first[:8], second, second[:8]})
        report = sweep.run_project(story.project.id, gitlab=gl, conn=conn, settings=settings, dry_run=True)
        in_use = f"in use by environment review/feature-x (deployment #{review.id})"
        assert {d["tag"]: d["reason"] for d in report["decisions"]} == {"feature-x": in_use, head: in_use,
                                                                       head[:8]: in_use}
        assert report["live_environments"] == 1
        story.project.stop_environment("review/feature-x")
        report = sweep.run_project(story.project.id, gitlab=gl, conn=conn, settings=settings)
    finally:
        gl.close()
        conn.close()
    assert {d["tag"] for d in report["decisions"] if d["decision"] == "deleted"} == {"feature-x", head, head[:8]}
    story.assert_gone_exactly({"feature-x", first, first[:8], second, second[:8], head, head[:8]})


@pytest.mark.parametrize("copy, auto_stop", [("read before", "with_action"), ("never read", "always")])
def test_a_deleted_release_branch_keeps_what_production_may_roll_back_to(gitlab, service, redis_server, copy,
                                                                          auto_stop):
    """release/1 was deployed to production five times, then once more, failed; it is deleted.
    The three newest successful deployments' commits keep their tags, and the branch's slug, what
    production runs; the two older ones and the failed one's go. No Deployment Hook arrived; with
    the copy of GitLab's deployments read before any of them, the cleanup reads what changed.
    With GitLab's default auto_stop_setting ("always"), deleting the branch of production's last
    deployment stops production: its images stay all the same, until production is deleted."""
    story = Story(gitlab, service)
    p = story.project
    p.add_environment("production", tier="production", auto_stop_setting=auto_stop)
    p.deploy("production", ref="main", sha=p.branches["main"], at=T0)  # long ago
    if copy == "read before":
        gl = GitLab(gitlab.url, gitlab.token, timeout=10)
        try:
            deployments.Protection(gl, redis.Redis.from_url(redis_server.url), p.id, 3).load()
        finally:
            gl.close()
    p.add_branch("release/1", from_branch="main")
    made = []
    for n in range(6):
        sha = p.push("release/1")
        story.pipeline(sha, "release/1", ["release-1"], hook=n % 2 == 0)
        made.append(sha)
    done = [p.deploy("production", ref="release/1", sha=made[n]) for n in range(5)]
    p.deploy("production", ref="release/1", sha=made[5], status="failed")
    report = story.deleted("release/1")
    assert p.get_environment("production").state == ("available" if auto_stop == "with_action" else "stopped")
    story.assert_gone_exactly({made[0], made[0][:8], made[1], made[1][:8], made[5], made[5][:8]})
    in_use = f"in use by environment production (deployment #{done[4].id})"
    assert kept_because(report, made[4]) == kept_because(report, "release-1") == in_use
    assert kept_because(report, made[3]) == "rollback target of production (2nd newest deployment)"
    assert kept_because(report, made[2][:8]) == "rollback target of production (3rd newest deployment)"

    # Production deleted: the next re-check releases the rest.
    if auto_stop == "with_action":
        p.stop_environment("production")
    p.delete_environment("production")
    wait_for("production's images to go", lambda: "release-1" not in gitlab.registry_client.tags(story.path),
             service=service)
    service.wait_idle()
    story.assert_gone_exactly(set(story.digests))


def test_a_fast_forward_merge_deployed_from_main_keeps_its_images(gitlab, service):
    """feature/x is fast-forward merged: main's head is its head H, main's pipeline builds H (hook
    lost), production deploys H from main, then main moves on. H's tags stay (production runs them,
    and they are main's commit); feature/x's slug and its other commit go."""
    story = Story(gitlab, service)
    p = story.project
    p.add_environment("production", auto_stop_setting="with_action")
    p.add_branch("feature/x", from_branch="main")
    first = p.push("feature/x")
    story.pipeline(first, "feature/x", ["feature-x"], hook=False)
    head = p.push("feature/x")
    story.pipeline(head, "feature/x", ["feature-x"], hook=False)
    p.add_merge_request(1, "feature/x", "main")
    p.merge(1, "ff", remove_source_branch=True)
    assert p.branches["main"] == head
    story.pipeline(head, "main", ["main", "latest"], hook=False)
    p.deploy("production", ref="main", sha=head)
    story.pipeline(p.push("main"), "main", ["main", "latest"], hook=False)
    report = story.merged(1)
    story.assert_gone_exactly({"feature-x", first, first[:8]})
    assert "main" in kept_because(report, head)
    service.wait_idle()


def test_a_deployment_hook_keeps_what_gitlabs_list_does_not_show_yet(gitlab, service):
    """A Deployment Hook (through the web side, an RQ job) says the review app now runs the second
    commit, deployment #990001, which GitLab's deployments list does not show yet: the hint keeps
    that commit while the environment is live, next to what the API says; once the environment is
    stopped, the hint keeps nothing and everything of the branch goes."""
    story, (first, second, head), review = review_app_story(gitlab, service)
    body = deployment_hook_body(story.project, review)
    body.update(deployment_id=990001, short_sha=second[:8],
                commit_url=body["commit_url"].rsplit("/", 1)[0] + "/" + second)
    response = service.post(body, "Deployment Hook", key="deployment-hint")
    assert response.status_code == 202, response.text
    assert service.wait_for_job(response.json()["job_id"]).get_status() == "finished"
    report = story.merged(1)
    story.assert_gone_exactly({first, first[:8]})
    assert "review/feature-x" in kept_because(report, second)
    assert "review/feature-x" in kept_because(report, head)

    story.project.stop_environment("review/feature-x")
    reg = gitlab.registry_client
    wait_for("the review app's images to go", lambda: second not in reg.tags(story.path), service=service)
    service.wait_idle()
    story.assert_gone_exactly({"feature-x", first, first[:8], second, second[:8], head, head[:8]})


def test_a_review_app_of_another_branchs_merged_mr_keeps_its_slug(gitlab, service):
    """Found by the month simulation: review/feat-x runs feat-x's image from a merge-request
    pipeline (ref refs/merge-requests/1/head), and !1 is merged long since, the review app left
    running. Cleaning another branch with the same slug (feat/x -> feat-x) must read !1 to know
    whose slug that deployment runs, and keep `feat-x`."""
    story = Story(gitlab, service)
    p = story.project
    p.add_environment("review/feat-x", auto_stop_setting="with_action")
    p.add_branch("feat-x", from_branch="main")
    first = p.push("feat-x")
    p.add_merge_request(1, "feat-x", "main")
    story.pipeline(first, "refs/merge-requests/1/head", ["feat-x"], hook=False, mr_source="feat-x")
    p.deploy("review/feat-x", ref="refs/merge-requests/1/head", sha=first)
    p.merge(1, "merge", remove_source_branch=True)
    story.merged(1)
    story.assert_gone_exactly(set())
    p.add_branch("feat/x", from_branch="main")
    report = story.deleted("feat/x")
    story.assert_gone_exactly(set())
    assert "review/feat-x" in kept_because(report, "feat-x")
