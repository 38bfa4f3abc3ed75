"""End to end on real parts: GitLab deliveries into gunicorn, RQ worker, emulator, real docker-registry.

Each test seeds a project in the GitLab emulator, pushes tiny images to the real
registry, posts a delivery over HTTP, lets the worker run, and then reads the registry
itself: the branch's tags are gone in every repository, and every other tag still
resolves to the digest it had.
"""

from __future__ import annotations

import copy

import pytest
import redis
from rq.job import Job

from tests.support.modes import MODES, mode_env
from tests.support.service import Service, load_payload
from tests.support.shop import EARLIER, FEATURE, LAST, MERGE, assert_registry, make_shop, merge_payload

pytestmark = pytest.mark.e2e

@pytest.fixture(params=MODES)
def mode(request):
    return request.param


@pytest.fixture
def service(tmp_path, redis_url, gitlab_stack, mode):
    emu = gitlab_stack.emulator
    svc = Service(tmp_path / "service", redis_url, emu.url, emu.token, **mode_env(mode, gitlab_stack)).start()
    yield svc
    svc.stop()


def test_merge_deletes_exactly_the_branch_tags(gitlab, service, mode):
    project, repos, digests = make_shop(gitlab)
    # GitLab removed the source branch on merge (force_remove_source_branch).
    response = service.post(merge_payload(project), "Merge Request Hook", key="merge-1")
    assert response.status_code == 202, response.text
    job = service.wait_for_job(response.json()["job_id"])
    assert job.get_status() == "finished", service.logs()[-3000:]
    gone = {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8]}
    assert_registry(gitlab, repos, digests, gone)
    report = job.return_value()
    assert report["summary"]["deleted"] == len(gone) * len(repos)
    assert report["summary"]["failed"] == 0
    # The report and the log say what happened to each tag.
    deleted = {(d["repository"], d["tag"]) for d in report["decisions"] if d["decision"] == "deleted"}
    assert deleted == {(r, t) for r in repos for t in gone}
    assert '"decision": "deleted"' in service.logs()
    api_deletes = gitlab.count("DELETE", r"/registry/repositories/\d+/tags/")
    if mode == "registry":
        assert api_deletes == 0  # every tag went through the registry's own API
        assert gitlab.count("GET", r"/jwt/auth") >= len(repos)
        for d in report["decisions"]:
            if d["decision"] == "deleted":  # the digest the tag had, as the plan saw it
                assert d["digest"] == digests[(d["repository"], d["tag"])]
    else:
        assert api_deletes == len(gone) * len(repos)  # one request per tag: nothing listed or probed


def test_the_example_payload_as_delivered(gitlab, service):
    """The unmodified example delivery (project 4711) cleans project 4711."""
    project, repos, digests = make_shop(gitlab, 4711)
    response = service.post(load_payload("merge_request_merge.json"), "Merge Request Hook", key="ex-1")
    assert response.status_code == 202, response.text
    assert service.wait_for_job(response.json()["job_id"]).get_status() == "finished"
    assert_registry(gitlab, repos, digests, {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8]})


def test_branch_deletion_push_deletes_its_tags(gitlab, service):
    project, repos, digests = make_shop(gitlab)
    body = load_payload("push_branch_deleted.json")
    body["project_id"] = body["project"]["id"] = project.id
    body["project"]["path_with_namespace"] = project.path
    response = service.post(body, "Push Hook", key="push-1")
    assert response.status_code == 202, response.text
    assert service.wait_for_job(response.json()["job_id"]).get_status() == "finished"
    # No merge request id in a push: the worker found MR !38 by its source branch.
    assert_registry(gitlab, repos, digests, {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8]})


def test_recreated_branch_is_not_cleaned(gitlab, service):
    project, repos, digests = make_shop(gitlab)
    project.branches[FEATURE] = LAST  # pushed again before the worker ran
    body = load_payload("push_branch_deleted.json")
    body["project_id"] = body["project"]["id"] = project.id
    response = service.post(body, "Push Hook", key="push-2")
    job = service.wait_for_job(response.json()["job_id"])
    assert job.get_status() == "finished"
    assert "exists again" in job.return_value()["skipped"]
    assert_registry(gitlab, repos, digests, set())


def test_merge_skipped_while_another_open_mr_uses_the_branch(gitlab, service):
    project, repos, digests = make_shop(gitlab)
    project.add_merge_request(39, FEATURE, "release", state="opened", commits=[LAST])
    response = service.post(merge_payload(project), "Merge Request Hook", key="merge-2")
    job = service.wait_for_job(response.json()["job_id"])
    assert "!39" in job.return_value()["skipped"]
    assert_registry(gitlab, repos, digests, set())


def test_fast_forward_merge_keeps_the_sha_tag_main_now_uses(gitlab, service):
    project, repos, digests = make_shop(gitlab)
    project.branches["main"] = LAST  # fast-forward: the branch's last commit is main's head
    response = service.post(merge_payload(project, merge_commit_sha=None), "Merge Request Hook", key="ff")
    assert service.wait_for_job(response.json()["job_id"]).get_status() == "finished"
    assert_registry(gitlab, repos, digests, {"feature-checkout-flow", EARLIER, EARLIER[:8]})


def test_pipeline_memory_attributes_shas_and_protects_other_refs(gitlab, service):
    project, repos, digests = make_shop(gitlab)
    built_only_here = "4" * 40
    also_on_main = "5" * 40
    reg = gitlab.registry_client
    for repo in repos:
        for sha in (built_only_here, also_on_main):
            d = reg.push_image(repo, [sha, sha[:8]], content=f"{repo}-{sha}")
            digests.update({(repo, sha): d, (repo, sha[:8]): d})
    pipe = load_payload("pipeline_merge_request.json")
    pipe["project"]["id"] = project.id
    for sha, ref in ((built_only_here, FEATURE), (also_on_main, FEATURE), (also_on_main, "main")):
        body = copy.deepcopy(pipe)
        body["object_attributes"].update(sha=sha, ref=ref)
        body["merge_request"]["source_project_id"] = body["merge_request"]["target_project_id"] = project.id
        r = service.post(body, "Pipeline Hook", key=f"pipe-{sha[:4]}-{ref}")
        assert r.status_code == 202, r.text
        assert service.wait_for_job(r.json()["job_id"]).get_status() == "finished"
    response = service.post(merge_payload(project), "Merge Request Hook", key="merge-3")
    job = service.wait_for_job(response.json()["job_id"])
    assert job.get_status() == "finished"
    assert_registry(gitlab, repos, digests, {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8],
                                             built_only_here, built_only_here[:8]})
    kept = {d["tag"]: d["reason"] for d in job.return_value()["decisions"] if d["decision"] == "kept"}
    assert "branch:main" in kept[also_on_main]


def test_dry_run_reports_and_deletes_nothing(tmp_path, redis_url, gitlab_stack, gitlab, mode):
    emu = gitlab_stack.emulator
    svc = Service(tmp_path / "dry", redis_url, emu.url, emu.token, DRY_RUN="1",
                  **mode_env(mode, gitlab_stack)).start()
    try:
        project, repos, digests = make_shop(gitlab)
        response = svc.post(merge_payload(project), "Merge Request Hook", key="dry-1")
        job = svc.wait_for_job(response.json()["job_id"])
        report = job.return_value()
    finally:
        svc.stop()
    assert report["dry_run"] is True
    would = {(d["repository"], d["tag"]) for d in report["decisions"] if d["decision"] == "would_delete"}
    assert would == {(r, t) for r in repos for t in ("feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8])}
    assert all(d.get("digest", "").startswith("sha256:") for d in report["decisions"]
               if d["decision"] == "would_delete")
    assert_registry(gitlab, repos, digests, set())
    assert gitlab.count("DELETE") == 0


def test_duplicate_deliveries_make_one_cleanup(gitlab, service):
    project, repos, digests = make_shop(gitlab)
    body = merge_payload(project)
    first = service.post(body, "Merge Request Hook", key="same-key")
    again = service.post(body, "Merge Request Hook", key="same-key")          # GitLab's "Resend"
    group = service.post(body, "Merge Request Hook", key="group-hook-key")    # the group hook's copy
    assert first.status_code == 202
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    assert group.status_code == 200 and group.json()["status"] == "duplicate"
    assert again.json()["job_id"] == group.json()["job_id"] == first.json()["job_id"]
    service.wait_for_job(first.json()["job_id"])
    service.wait_idle()
    assert gitlab.count("GET", r"/merge_requests/38/commits") == 1


@pytest.mark.parametrize("mode", ["api"])  # a GitLab protection rule answers on GitLab's API
def test_protected_tag_403_is_kept_not_retried(gitlab, service):
    project, repos, digests = make_shop(gitlab)
    project.protected_tag_patterns.append(r"feature-.*")
    response = service.post(merge_payload(project), "Merge Request Hook", key="prot")
    job = service.wait_for_job(response.json()["job_id"])
    assert job.get_status() == "finished"
    kept = [d for d in job.return_value()["decisions"] if d["tag"] == "feature-checkout-flow"]
    assert {d["decision"] for d in kept} == {"kept"} and "403" in kept[0]["reason"]
    assert_registry(gitlab, repos, digests, {LAST, LAST[:8], EARLIER, EARLIER[:8]})


def test_gitlab_failing_leaves_a_failed_job_that_succeeds_when_replayed(tmp_path, redis_url, gitlab_stack,
                                                                        gitlab, mode):
    emu = gitlab_stack.emulator
    svc = Service(tmp_path / "fail", redis_url, emu.url, emu.token, CLEANUP_RETRIES="1",
                  CLEANUP_RETRY_INTERVALS="1", **mode_env(mode, gitlab_stack)).start()
    try:
        project, repos, digests = make_shop(gitlab)
        if mode == "api":  # GitLab's tag delete answers 500 ...
            emu.inject_fault("DELETE", r"/registry/repositories/\d+/tags/", 500, times=-1)
        else:  # ... or GitLab's token endpoint does, so the registry can't be reached
            emu.inject_fault("GET", r"/jwt/auth", 500, times=-1)
        response = svc.post(merge_payload(project), "Merge Request Hook", key="fail-1")
        job_id = response.json()["job_id"]
        job = svc.wait_for_job(job_id, timeout=120)
        assert job.get_status() == "failed"
        assert "still failing" in job.latest_result().exc_string
        assert job.meta["report"]["summary"]["failed"] > 0
        assert_registry(gitlab, repos, digests, set())
        # GitLab is fixed; replaying the failed job (as the dashboard's "requeue" does) finishes it.
        emu.clear_faults()
        conn = redis.Redis.from_url(redis_url)
        Job.fetch(job_id, connection=conn).requeue()
        job = svc.wait_for_job(job_id, timeout=60)
        assert job.get_status() == "finished"
        assert "report" not in job.meta  # the failed run's partial report is gone with it
    finally:
        svc.stop()
    assert_registry(gitlab, repos, digests, {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8]})


def test_fork_merge_cleans_the_fork(gitlab, service):
    upstream, up_repos, up_digests = make_shop(gitlab, 4800)
    fork = gitlab.add_project(4801, f"dana/{upstream.path.split('/')[1]}", default_branch="main")
    fork.branches["main"] = MERGE
    fork.add_registry_repository("")
    reg = gitlab.registry_client
    fork_digests = {}
    d = reg.push_image(fork.path, ["feature-checkout-flow", LAST, "latest"], content="fork-feat")
    fork_digests.update({(fork.path, t): d for t in ["feature-checkout-flow", LAST, "latest"]})
    body = merge_payload(upstream, source_project_id=fork.id)
    body["object_attributes"]["source"]["path_with_namespace"] = fork.path
    upstream.merge_requests.clear()
    upstream.add_merge_request(38, FEATURE, "main", state="merged", commits=[LAST], source_project_id=fork.id,
                               merge_commit_sha=MERGE)
    response = service.post(body, "Merge Request Hook", key="fork-1")
    assert service.wait_for_job(response.json()["job_id"]).get_status() == "finished"
    assert_registry(gitlab, [fork.path], fork_digests, {"feature-checkout-flow", LAST})
    assert_registry(gitlab, up_repos, up_digests, set())  # upstream's images are not the fork's


def test_branch_point_built_by_main_survives_a_lost_pipeline_hook(gitlab, service):
    """Feature/Checkout-Flow was created from an old main commit and its first pipeline built it.
    main's own pipeline for that commit pushed the same SHA tags, but its hook never arrived:
    GitLab's commits/:sha/refs still says main contains it, so those tags stay."""
    project, repos, digests = make_shop(gitlab)
    branch_point = "6" * 40
    project.add_commit(branch_point, on=["main"])
    reg = gitlab.registry_client
    for repo in repos:
        d = reg.push_image(repo, [branch_point, branch_point[:8]], content=f"{repo}-bp")
        digests.update({(repo, branch_point): d, (repo, branch_point[:8]): d})
    pipe = load_payload("pipeline_merge_request.json")
    pipe["project"]["id"] = project.id
    pipe["object_attributes"].update(sha=branch_point, ref=FEATURE)
    r = service.post(pipe, "Pipeline Hook", key="bp-pipe")
    assert service.wait_for_job(r.json()["job_id"]).get_status() == "finished"
    response = service.post(merge_payload(project), "Merge Request Hook", key="bp-merge")
    job = service.wait_for_job(response.json()["job_id"])
    assert job.get_status() == "finished"
    assert_registry(gitlab, repos, digests, {"feature-checkout-flow", LAST, LAST[:8], EARLIER, EARLIER[:8]})
    kept = {d["tag"]: d["reason"] for d in job.return_value()["decisions"] if d["decision"] == "kept"}
    assert "live branch 'main'" in kept[branch_point]
