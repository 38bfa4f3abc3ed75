"""GitLab's record decides: named cases end to end, through the real service.

Each test builds a project's story with the GitLab emulator's own operations (branches, pushes,
merge requests merged the way GitLab merges them, pipelines as GitLab records them), pushes
each pipeline's images to the real docker-registry, posts to gunicorn the Pipeline Hooks that
"arrived" (the others were lost: GitLab never re-sends them), and only after the whole story,
late events included, posts the merge delivery (the worker runs after CLEANUP_DELAY; here the
delay is spent before the delivery, which is the same to a worker that reads GitLab when it runs).
Then it reads the registry: exactly the expected tags are gone, every other tag is at its digest.

A lost Pipeline Hook used to cost a live ref its SHA tags when the commit was one of the merge
request's own (case d, the documented limitation): the worker now reads GitLab's pipelines API.

Two product bugs found on the way are kept here by name, with what they cost: the slug tag of an
open merge request's deleted source branch (found by tests/test_safety_property.py), and a pipeline
skipped for good when GitLab deleted an older pipeline while the record paged through the list by
offset (the record now pages by time).
"""

from __future__ import annotations

import pytest
import redis

from tests.support.service import Service
from tests.support.modes import MODES, mode_env
from tests.support.story import Story, kept_because, next_project_id

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module", params=MODES)
def service(request, redis_server, gitlab_stack, tmp_path_factory):
    """gunicorn and a worker, one pair per deletion mode for the whole module (stopping them takes
    seconds). Each test has its own project, so they share the Redis without clashing."""
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushall()
    conn.close()
    emu = gitlab_stack.emulator
    svc = Service(tmp_path_factory.mktemp("record-service"), redis_server.url, emu.url, emu.token,
                  **mode_env(request.param, gitlab_stack)).start()
    yield svc
    svc.stop()


def feature_branch(story: Story, commits: int = 2) -> list[str]:
    """feature/x from main with `commits` new commits, each built (hooks arrived)."""
    story.project.add_branch("feature/x", from_branch="main")
    shas = []
    for _ in range(commits):
        sha = story.project.push("feature/x")
        story.pipeline(sha, "feature/x", ["feature-x"], hook=True)
        shas.append(sha)
    story.project.add_merge_request(1, "feature/x", "main")   # its commits: what main lacks
    return shas


@pytest.mark.parametrize("targets_pipeline", ["hook lost", "never created"])
def test_fast_forward_head_keeps_its_sha_tags_after_the_target_moved_on(gitlab, service, targets_pipeline):
    """(a) Fast-forward merge: main's head becomes feature/x's head H, main's pipeline builds H, its
    Pipeline Hook never reaches tagsweeper, and main moves on before the worker runs. GitLab's
    pipelines say main built H, and the merge request says H was fast-forwarded into main: :H stays.
    (b) The same when main's pipeline on H was never created (skipped CI, [ci skip], a push of
    several commits): the fast-forward pin alone keeps :H, main's commit now."""
    story = Story(gitlab, service)
    first, head = feature_branch(story)
    mr = story.project.merge(1, "ff", remove_source_branch=True)
    assert mr.merge_commit_sha is None and mr.squash_commit_sha is None
    assert story.project.branches["main"] == head
    if targets_pipeline == "hook lost":
        story.pipeline(head, "main", ["main", "latest"], hook=False)
    moved = story.project.push("main")                       # main moves on before the worker runs
    story.pipeline(moved, "main", ["main", "latest"], hook=True)
    report = story.merged(1)
    story.assert_gone_exactly({"feature-x", first, first[:8]})
    assert "fast-forward merged into 'main'" in kept_because(report, head)


@pytest.mark.parametrize("method", ["squash", "squash_ff"])
def test_squash_merge_cleans_the_mr_commits_and_keeps_what_main_built(gitlab, service, method):
    """(c) Squash merge: main gets a new squash commit S (and a merge commit M with "squash"); the
    merge request's own commits are on no live ref and only feature/x built them, so their SHA tags
    go, head included. main's pipeline on its new head (S, or M), hook lost, keeps its tags, and so
    does main's own moved-on head."""
    story = Story(gitlab, service)
    first, head = feature_branch(story)
    mr = story.project.merge(1, method, remove_source_branch=True)
    assert mr.squash_commit_sha and (mr.merge_commit_sha is None) == (method == "squash_ff")
    merged_head = story.project.branches["main"]
    assert merged_head == (mr.merge_commit_sha or mr.squash_commit_sha)
    story.pipeline(merged_head, "main", ["main", "latest"], hook=False)
    story.pipeline(story.project.push("main"), "main", ["main", "latest"], hook=False)
    story.merged(1)
    story.assert_gone_exactly({"feature-x", first, first[:8], head, head[:8]})


def test_mr_commit_also_built_on_a_live_branch_whose_hook_was_lost(gitlab, service):
    """(d) What was the documented limitation: feature/y was created from feature/x's head X and
    built X (pushing :X over feature/x's image), but that Pipeline Hook was lost; feature/y moved on.
    X is one of the merge request's own commits, so commits/:sha/refs can't tell "built elsewhere"
    from "merged into main", and pipeline memory never heard of feature/y's pipeline. GitLab's
    pipelines API lists it: :X stays (at feature/y's digest), only :feature-x and the rest go."""
    story = Story(gitlab, service)
    first, head = feature_branch(story)
    story.project.add_branch("feature/y", from_branch="feature/x")
    story.pipeline(head, "feature/y", ["feature-y"], hook=False)
    story.pipeline(story.project.push("feature/y"), "feature/y", ["feature-y"], hook=True)
    story.project.merge(1, "merge", remove_source_branch=True)
    report = story.merged(1)
    story.assert_gone_exactly({"feature-x", first, first[:8]})
    assert "branch:feature/y" in kept_because(report, head)


def test_a_record_read_before_is_brought_up_to_date_before_deciding(gitlab, service):
    """(d) again, with GitLab's pipelines already read into the record (an earlier cleanup or sweep
    of the project): feature/y's pipeline on X, hook lost, comes after that read. The cleanup reads
    only what changed since (updated_after), finds it, and :X stays."""
    from workers import pipelines
    from workers.gitlab import GitLab

    story = Story(gitlab, service)
    first, head = feature_branch(story)
    conn = redis.Redis.from_url(service.redis_url)
    client = GitLab(gitlab.url, gitlab.token, timeout=10)
    try:
        assert pipelines.Record(conn, story.project.id).sync(client) == 2   # feature/x's two pipelines
    finally:
        client.close()
    assert conn.hget(f"tagsweeper:pipelines:{story.project.id}:state", "cursor") is not None
    story.project.add_branch("feature/y", from_branch="feature/x")
    story.pipeline(head, "feature/y", ["feature-y"], hook=False)
    story.project.push("feature/y")
    story.project.merge(1, "merge", remove_source_branch=True)
    report = story.merged(1)
    story.assert_gone_exactly({"feature-x", first, first[:8]})
    assert "branch:feature/y" in kept_because(report, head)


def test_mr_pipeline_of_an_open_merge_request_keeps_the_commit(gitlab, service):
    """An open merge request's own pipeline (refs/merge-requests/2/head) built one of feature/x's
    commits (feature/z was made from it), its hook lost, and feature/z deleted since: the merge
    request is open, so its pipelines are in use and :C stays."""
    story = Story(gitlab, service)
    first, head = feature_branch(story)
    story.project.add_branch("feature/z", from_branch="feature/x")
    story.project.add_merge_request(2, "feature/z", "main", commits=[first, head])
    story.pipeline(head, "refs/merge-requests/2/head", ["feature-z"], hook=False, mr_source="feature/z")
    story.project.delete_branch("feature/z")
    story.project.merge(1, "merge", remove_source_branch=True)
    report = story.merged(1)
    story.assert_gone_exactly({"feature-x", first, first[:8]})
    assert "open merge request !2" in kept_because(report, head)


def test_open_merge_requests_deleted_source_branch_keeps_its_slug(gitlab, service):
    """Found by the property (OPEN_MR_SOURCE_SLUG): feature-a has an open merge request !2 and was
    deleted (GitLab keeps the merge request open, and tagsweeper calls its images in use: it skips a
    cleanup of feature-a for it). Its pipeline pushed :feature-a last. feature/a (same slug) is merged
    and cleaned: :feature-a, the open merge request's image, is deleted."""
    story = Story(gitlab, service)
    story.project.add_branch("feature/a", from_branch="main")
    mine = story.project.push("feature/a")
    story.pipeline(mine, "feature/a", ["feature-a"], hook=True)
    story.project.add_merge_request(1, "feature/a", "main")
    story.project.add_branch("feature-a", from_branch="main")
    theirs = story.project.push("feature-a")
    story.project.add_merge_request(2, "feature-a", "main")
    story.pipeline(theirs, "feature-a", ["feature-a"], hook=True)   # :feature-a is !2's image now
    story.project.delete_branch("feature-a")
    story.project.merge(1, "merge", remove_source_branch=True)
    story.merged(1)
    story.assert_gone_exactly({mine, mine[:8]})                     # :feature-a stays: !2's image


def test_a_pipeline_deleted_while_the_record_pages_costs_no_other_pipeline(gitlab, gitlab_stack, redis_server):
    """GitLab pages `GET /projects/:id/pipelines` by offset. While the worker's first sync reads page 1
    (pipelines 1-100, oldest first), GitLab deletes pipeline 1 (its automatic pipeline cleanup
    expires old pipelines; or a person deletes one). Paged by offset, page 2 would start at what was
    the 102nd, and the 101st would never be read, nor by later syncs (updated_after the cursor less
    10 minutes). Here the 101st is feature/y's pipeline on feature/x's commit X, whose Pipeline Hook
    was lost: paged by offset, the cleanup of feature/x deleted :X, feature/y's image. The record now
    asks each page by time (updated_after the last one read), which no deletion can shift."""
    from workers import cleanup
    from workers.gitlab import GitLab
    from tests.support.modes import settings_for

    project = gitlab.add_project(next_project_id(), "acme/paging", default_branch="main")
    project.add_registry_repository("")
    old = [project.add_pipeline(project.branches["main"], "main") for _ in range(100)]
    project.add_branch("feature/x", from_branch="main")
    x = project.push("feature/x")
    project.add_merge_request(1, "feature/x", "main")
    project.add_branch("feature/y", from_branch="feature/x")
    project.add_pipeline(x, "feature/y")                        # the 101st: its hook was lost
    project.push("feature/y")
    project.add_pipeline(x, "feature/x")
    digest = gitlab.registry_client.push_image(project.path, ["feature-y", x, x[:8]], content="y")
    project.merge(1, "merge", remove_source_branch=True)

    pages = []

    class ExpiringGitLab(GitLab):
        """GitLab expiring its oldest pipeline right after serving the first page of the list."""

        def pipelines_page(self, pid, params):
            items = super().pipelines_page(pid, params)
            pages.append(len(items))
            if len(pages) == 1 and old[0].id in project.pipelines:
                project.delete_pipeline(old[0].id)
            return items

    config = settings_for(gitlab, gitlab_stack, redis_server.url, "api")
    client = ExpiringGitLab(config.gitlab_url, config.gitlab_token, timeout=10)
    conn = redis.Redis.from_url(redis_server.url)
    try:
        cleanup.run(cleanup.Request(project_id=project.id, branch="feature/x", trigger="merge", shas=(x,),
                                    mr_iid=1, target_project_id=project.id, target_branch="main"),
                    gitlab=client, conn=conn, settings=config)
    finally:
        client.close()
    assert pages[0] == 100 and len(pages) > 1, pages   # the deletion did happen between two pages
    assert gitlab.registry_client.resolve(project.path, x) == digest, "feature/y's :X was deleted"
