"""GitLab's pipelines record (workers/pipelines.py) on a real Redis and the emulator over HTTP.

The record is what every deletion's "who built this commit" comes from, so it must be
exactly GitLab's: every pipeline read once a sync finished, none lost to paging, a re-read
that asks only for what changed, and a failed read that leaves the cursor where it was.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.support.gitlab_emulator import random_sha
from workers import pipelines, timeline
from workers.common import keys
from workers.gitlab import GitLab, TransientError

pytestmark = pytest.mark.e2e

LONG_AGO = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture
def client(gitlab):
    gl = GitLab(gitlab.url, gitlab.token, timeout=5, attempts=2, backoff=0.01)
    yield gl
    gl.close()


def seed_history(project, count: int, start: dt.datetime = LONG_AGO) -> list:
    """`count` pipelines an hour apart, long ago: branches, a tag and merge request refs."""
    made = []
    for i in range(count):
        at = start + dt.timedelta(hours=i)
        if i % 10 == 9:
            made.append(project.add_pipeline(random_sha(), f"refs/merge-requests/{i}/head",
                                             source="merge_request_event", created_at=at))
        else:
            made.append(project.add_pipeline(random_sha(), f"branch-{i % 7}", created_at=at))
    return made


def test_the_first_sync_reads_every_pipeline_and_a_second_only_what_changed(gitlab, conn, client):
    project = gitlab.add_project(7101, "rec/first")
    made = seed_history(project, 250)
    record = pipelines.Record(conn, project.id)
    gitlab.reset_requests()
    assert record.sync(client) == 250
    assert gitlab.count("GET", r"/projects/7101/pipelines") == 3  # 100 per page
    for p in made:
        assert record.refs_of([p.sha]) == {p.sha: frozenset({p.ref})}
    assert set(record.shas_of(["branch-3"])) == {p.sha for p in made if p.ref == "branch-3"}
    assert set(record.refs()) == {p.ref for p in made}
    first = made[0]
    assert record.with_prefix([first.sha[:8]])[first.sha[:8]] == frozenset({first.sha})
    assert record.first_built([first.sha])[first.sha] == pytest.approx(LONG_AGO.timestamp())

    # Nothing changed: one request, reading only the ten minutes before the newest pipeline read
    # (here the newest alone: the history is an hour apart), never the whole history again.
    gitlab.reset_requests()
    assert record.sync(client) == 1
    assert gitlab.count("GET", r"/projects/7101/pipelines") == 1

    # New pipelines, and an old one on a second ref of a known commit: exactly those are read.
    new = project.add_pipeline(random_sha(), "main")
    again = project.add_pipeline(made[5].sha, "release/1")
    assert record.sync(client) == 3  # the two, and the newest of the history again (the overlap)
    assert record.refs_of([made[5].sha])[made[5].sha] == frozenset({made[5].ref, "release/1"})
    assert record.refs_of([new.sha]) == {new.sha: frozenset({"main"})}
    assert again.sha in record.shas_of(["release/1"])


def test_a_pipeline_updated_later_is_read_again_and_reading_twice_changes_nothing(gitlab, conn, client):
    project = gitlab.add_project(7102, "rec/updated")
    made = seed_history(project, 30)
    record = pipelines.Record(conn, project.id)
    record.sync(client)
    project.update_pipeline(made[3].id, "failed")  # its updated_at moves to now
    assert record.sync(client) == 2  # it, and the newest of the history (the overlap)
    assert record.refs_of([made[3].sha]) == {made[3].sha: frozenset({made[3].ref})}
    assert record.sync(client) == 1  # within the overlap it is read again: harmless
    assert record.refs_of([made[3].sha]) == {made[3].sha: frozenset({made[3].ref})}


def test_a_sync_that_fails_half_way_leaves_the_cursor_and_is_repeated_whole(gitlab, conn, client):
    project = gitlab.add_project(7103, "rec/fails")
    seed_history(project, 150)
    record = pipelines.Record(conn, project.id)
    # The first page is read; the next (asked from the last pipeline read on) keeps failing
    # past the client's attempts.
    gitlab.inject_fault("GET", r"/projects/7103/pipelines$", 503, times=2, query_regex=r"updated_after=")
    with pytest.raises(TransientError):
        record.sync(client)
    assert conn.hget(record.state_key, "cursor") is None
    assert conn.hget(record.state_key, "complete") is None
    assert record.sync(client) == 150  # from the start again: nothing skipped
    assert len(set(record.refs_of(p.sha for p in project.pipelines.values()))) == 150


def test_tag_refs_are_asked_once_per_ref_from_the_pipeline_itself(gitlab, conn, client):
    project = gitlab.add_project(7105, "rec/tags")
    sha = project.add_tag("v0.9", random_sha())
    project.add_pipeline(sha, "v0.9")                   # a tag pipeline
    project.add_pipeline(random_sha(), "feature/gone")  # a branch pipeline
    project.tags.pop("v0.9")                            # the git tag is deleted since
    record = pipelines.Record(conn, project.id)
    record.sync(client)
    gitlab.reset_requests()
    assert record.tag_refs(client, ["v0.9", "feature/gone", "never-built"]) == {"v0.9"}
    assert gitlab.count("GET", r"/projects/7105/pipelines/[0-9]+") == 2
    assert record.tag_refs(client, ["v0.9", "feature/gone"]) == {"v0.9"}
    assert gitlab.count("GET", r"/projects/7105/pipelines/[0-9]+") == 2  # remembered


def test_drop_forgets_the_project_and_the_next_sync_reads_it_all_again(gitlab, conn, client):
    project = gitlab.add_project(7106, "rec/drop")
    made = seed_history(project, 12)
    record = pipelines.Record(conn, project.id)
    record.sync(client)
    record.drop()
    assert record.refs_of([made[0].sha]) == {}
    assert not any(k.startswith(f"{keys.pipelines(7106)}:".encode()) for k in conn.keys("*"))
    assert record.sync(client) == 12


@pytest.mark.parametrize("text, seconds", [
    ("2024-01-01T00:00:00.000Z", 1704067200.0),
    ("2024-01-01T01:00:00.500+01:00", 1704067200.5),
    ("2024-01-01T00:00:00", 1704067200.0),
    ("yesterday", None),
    ("", None),
    (None, None),
])
def test_parse_time(text, seconds):
    assert timeline.parse_time(text) == seconds


def test_format_time_is_what_gitlab_parses():
    assert timeline.format_time(1704067200.25) == "2024-01-01T00:00:00.250Z"
    assert timeline.parse_time(timeline.format_time(1704067200.25)) == 1704067200.25


def test_a_ref_whose_first_pipeline_was_deleted_is_told_by_another(gitlab, conn, client):
    project = gitlab.add_project(7107, "rec/expired")
    sha = project.add_tag("v0.8", random_sha())
    first = project.add_pipeline(sha, "v0.8")
    project.add_pipeline(sha, "v0.8")
    gone = project.add_pipeline(random_sha(), "feature/expired")
    project.tags.pop("v0.8")
    record = pipelines.Record(conn, project.id)
    record.sync(client)
    project.delete_pipeline(first.id)   # GitLab expired the oldest pipelines
    project.delete_pipeline(gone.id)
    # v0.8 is told by its second pipeline; feature/expired has none left: kept as a possible tag.
    assert record.tag_refs(client, ["v0.8", "feature/expired"]) == {"v0.8", "feature/expired"}
    assert conn.hget(record.kind_key, "v0.8") == b"tag"
    assert conn.hget(record.kind_key, "feature/expired") == b"unknown"


def test_a_ref_told_by_another_pipeline_is_told_by_its_own_under_gitlab_18s_ref_filter(gitlab, conn, client):
    """With include_reserved_refs_in_ref_filter, `?ref=v0.7` also lists the pipelines of merge
    requests whose source branch is named v0.7: a branch pipeline there must not say what the deleted
    git tag v0.7 was. None of the ref's own left: unknown, kept as a possible tag (a release)."""
    gitlab.include_reserved_refs_in_ref_filter = True
    project = gitlab.add_project(7108, "rec/reserved")
    sha = project.add_tag("v0.7", random_sha())
    first = project.add_pipeline(sha, "v0.7")
    project.tags.pop("v0.7")
    project.add_branch("v0.7", random_sha())  # a branch of that name now, with a merge request
    project.add_merge_request(1, "v0.7", "main")
    project.add_pipeline(project.branches["v0.7"], "refs/merge-requests/1/head", source="merge_request_event")
    record = pipelines.Record(conn, project.id)
    record.sync(client)
    project.delete_pipeline(first.id)
    assert record.tag_refs(client, ["v0.7"]) == {"v0.7"}
    assert conn.hget(record.kind_key, "v0.7") == b"unknown"
