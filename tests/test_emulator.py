"""The test infrastructure itself: GitLab emulator + real docker-registry, no mocks.

Everything goes over real HTTP: the emulator's REST API, its /jwt/auth token service
and the registry's API v2 with the tokens it signs.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from urllib.parse import quote

import pytest
import requests

from tests.support.gitlab_emulator import random_sha

TIMEOUT = 10


class Api:
    """Tiny authenticated client for the emulator's /api/v4 (what a GitLab client sends)."""

    def __init__(self, emu, token: str | None = None):
        self.base = emu.api_url
        self.s = requests.Session()
        self.s.headers["PRIVATE-TOKEN"] = emu.token if token is None else token

    def __call__(self, method: str, path: str, **kw) -> requests.Response:
        kw.setdefault("timeout", TIMEOUT)
        return self.s.request(method, self.base + path, **kw)

    def get(self, path, **kw):
        return self("GET", path, **kw)


@pytest.fixture
def api(gitlab):
    client = Api(gitlab)
    yield client
    client.s.close()


@pytest.fixture
def shop(gitlab):
    """Project 1 'acme/shop' with one registry repository at the project path."""
    project = gitlab.add_project(1, "acme/shop")
    rid = project.add_registry_repository()
    return project, rid


def _tags_path(project, rid):
    return f"/projects/{project.id}/registry/repositories/{rid}/tags"


# --- registry wiring ------------------------------------------------------------------

def test_registry_challenges_with_emulator_realm(gitlab_stack, gitlab):
    resp = requests.get(gitlab_stack.registry.url + "/v2/", timeout=TIMEOUT)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == (
        f'Bearer realm="{gitlab.url}/jwt/auth",service="container_registry"')


def test_kid_is_libtrust_key_id(gitlab_stack):
    kid = gitlab_stack.registry.issuer.kid
    assert re.fullmatch(r"([A-Z2-7]{4}:){11}[A-Z2-7]{4}", kid)


def test_push_same_content_same_digest_and_unique_by_default(gitlab):
    client = gitlab.registry_client
    d1 = client.push_image("acme/shop", ["a", "b"], content="same")
    d2 = client.push_image("acme/shop", ["c"], content="same")
    d3 = client.push_image("acme/shop", ["d"])
    d4 = client.push_image("acme/shop", ["e"])
    assert d1 == d2 and d1.startswith("sha256:")
    assert len({d1, d3, d4}) == 3
    assert sorted(client.tags("acme/shop")) == ["a", "b", "c", "d", "e"]
    assert client.resolve("acme/shop", "b") == d1
    assert client.resolve("acme/shop", "nope") is None
    assert client.tags("never/pushed") == []
    assert "acme/shop" in client.catalog()


def test_wipe_between_tests_left_nothing(gitlab):
    # The previous test pushed acme/shop; the `gitlab` fixture wiped the registry.
    assert gitlab.registry_client.tags("acme/shop") == []


# --- registry REST API ---------------------------------------------------------------

def test_registry_tags_paginate_like_gitlab(gitlab, api, shop):
    project, rid = shop
    names = [f"t{i:02d}" for i in range(25)]
    gitlab.registry_client.push_image(project.path, names, content="one")

    first = api.get(_tags_path(project, rid))
    assert first.status_code == 200
    h = first.headers
    assert (h["X-Page"], h["X-Per-Page"], h["X-Total"], h["X-Total-Pages"]) == ("1", "20", "25", "2")
    assert (h["X-Next-Page"], h["X-Prev-Page"]) == ("2", "")
    assert [t["name"] for t in first.json()] == names[:20]  # sorted by name
    assert first.json()[0] == {"name": "t00", "path": "acme/shop:t00",
                               "location": f"{gitlab.registry.host}/acme/shop:t00"}
    assert set(first.links) == {"next", "first", "last"}

    # Follow Link rel=next exactly as a client would (same per_page kept).
    second = api.s.get(first.links["next"]["url"], timeout=TIMEOUT)
    assert [t["name"] for t in second.json()] == names[20:]
    assert second.headers["X-Next-Page"] == "" and second.headers["X-Prev-Page"] == "1"
    assert "next" not in second.links and "prev" in second.links

    # The project may be named by its URL-encoded path; per_page is honoured and capped.
    by_path = api.get(f"/projects/{quote(project.path, safe='')}/registry/repositories/{rid}/tags",
                      params={"per_page": 7, "page": 4})
    assert [t["name"] for t in by_path.json()] == names[21:]
    assert by_path.headers["X-Total-Pages"] == "4"
    capped = api.get(_tags_path(project, rid), params={"per_page": 1000})
    assert capped.headers["X-Per-Page"] == "100" and len(capped.json()) == 25


def test_registry_repository_listings(gitlab, api, shop):
    project, rid = shop
    rid2 = project.add_registry_repository("worker")
    gitlab.registry_client.push_image("acme/shop/worker", ["latest", "feature-x"])

    repos = api.get("/projects/1/registry/repositories", params={"tags": "true"}).json()
    assert [r["id"] for r in repos] == [rid, rid2]
    assert repos[1]["path"] == "acme/shop/worker" and repos[1]["name"] == "worker"
    assert repos[1]["location"] == f"{gitlab.registry.host}/acme/shop/worker"
    assert repos[1]["cleanup_policy_started_at"] is None
    assert [t["name"] for t in repos[1]["tags"]] == ["feature-x", "latest"]
    assert repos[0]["tags"] == []

    one = api.get(f"/registry/repositories/{rid2}").json()
    assert one["project_id"] == 1 and one["tags_count"] == 2
    assert api.get("/registry/repositories/999999").status_code == 404


def test_tag_details(gitlab, api, shop):
    project, rid = shop
    digest = gitlab.registry_client.push_image(project.path, ["latest"], content="hello")
    tag = api.get(_tags_path(project, rid) + "/latest").json()
    assert tag["digest"] == digest
    assert len(tag["revision"]) == 64 and tag["short_revision"] == tag["revision"][:9]
    assert tag["total_size"] == len(b"hello") and tag["created_at"]
    missing = api.get(_tags_path(project, rid) + "/nope")
    assert missing.status_code == 404 and missing.json() == {"message": "404 Tag Not Found"}


def test_delete_one_tag_keeps_others_on_same_digest(gitlab, api, shop):
    project, rid = shop
    client = gitlab.registry_client
    digest = client.push_image(project.path, ["latest", "feature-x", "feature-y"], content="shared")

    resp = api("DELETE", _tags_path(project, rid) + "/feature-x")
    assert resp.status_code == 200

    # Checked on the registry itself, not through the emulator.
    assert client.resolve(project.path, "feature-x") is None
    assert client.resolve(project.path, "latest") == digest
    assert client.resolve(project.path, "feature-y") == digest
    assert sorted(client.tags(project.path)) == ["feature-y", "latest"]
    assert [t["name"] for t in api.get(_tags_path(project, rid)).json()] == ["feature-y", "latest"]

    again = api("DELETE", _tags_path(project, rid) + "/feature-x")
    assert again.status_code == 404 and again.json() == {"message": "404 Tag Not Found"}


def test_delete_errors(gitlab, api, shop):
    project, rid = shop
    project.protected_tag_patterns.append(r"^v\d+")
    client = gitlab.registry_client
    client.push_image(project.path, ["v1.2.3", "latest"])

    protected = api("DELETE", _tags_path(project, rid) + "/v1.2.3")
    assert protected.status_code == 403 and protected.json() == {"message": "403 Forbidden"}
    assert client.resolve(project.path, "v1.2.3") is not None

    assert api("DELETE", _tags_path(project, rid) + "/unknown").status_code == 404
    assert api("DELETE", f"/projects/1/registry/repositories/{rid + 1000}/tags/latest").status_code == 404
    gone = api("DELETE", f"/projects/77/registry/repositories/{rid}/tags/latest")
    assert gone.status_code == 404 and gone.json() == {"message": "404 Project Not Found"}


def test_registry_delete_by_tag_is_rejected_by_distribution_2_8(gitlab, shop):
    """Why delete_tag retags first: 2.8 has no delete-by-tag, and delete-by-digest
    takes every tag on that digest."""
    project, _ = shop
    client = gitlab.registry_client
    digest = client.push_image(project.path, ["latest", "feature-x"], content="x")
    by_tag = client._repo("DELETE", project.path, "/manifests/feature-x")
    assert by_tag.status_code == 400 and "DIGEST_INVALID" in by_tag.text
    by_digest = client._repo("DELETE", project.path, f"/manifests/{digest}")
    assert by_digest.status_code == 202
    assert client.tags(project.path) == []  # latest went too


# --- auth -----------------------------------------------------------------------------

def test_api_requires_token(gitlab, shop):
    url = gitlab.api_url + "/projects/1"
    for headers in ({}, {"PRIVATE-TOKEN": "wrong"}, {"Authorization": "Bearer wrong"}):
        resp = requests.get(url, headers=headers, timeout=TIMEOUT)
        assert resp.status_code == 401 and resp.json() == {"message": "401 Unauthorized"}
    ok = requests.get(url, headers={"Authorization": f"Bearer {gitlab.token}"}, timeout=TIMEOUT)
    assert ok.status_code == 200
    body = ok.json()
    assert body["path_with_namespace"] == "acme/shop" and body["default_branch"] == "main"
    assert body["name"] == "shop" and body["namespace"]["full_path"] == "acme"


def test_jwt_auth_token_works_against_registry(gitlab_stack, gitlab, shop):
    project, _ = shop
    registry = gitlab_stack.registry
    gitlab.registry_client.push_image(project.path, ["latest"])
    gitlab.registry_client.push_image("acme/shopping", ["latest"])  # not a project

    # Follow the registry's own challenge, as docker or a registry client would.
    challenge = requests.get(f"{registry.url}/v2/{project.path}/tags/list", timeout=TIMEOUT)
    assert challenge.status_code == 401
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge.headers["WWW-Authenticate"]))
    assert params["realm"] == gitlab.url + "/jwt/auth" and params["scope"] == f"repository:{project.path}:pull"

    denied = requests.get(params["realm"], params={"service": params["service"], "scope": params["scope"]},
                          timeout=TIMEOUT)
    assert denied.status_code == 401
    wrong = requests.get(params["realm"], params={"service": params["service"], "scope": params["scope"]},
                         auth=("someone", "wrong"), timeout=TIMEOUT)
    assert wrong.status_code == 401

    resp = requests.get(params["realm"], auth=("someone", gitlab.token), timeout=TIMEOUT, params={
        "service": "container_registry",
        "scope": [f"repository:{project.path}:pull,push,delete", "repository:acme/shopping:pull"]})
    assert resp.status_code == 200
    body = resp.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    bearer = {"Authorization": f"Bearer {body['token']}"}

    tags = requests.get(f"{registry.url}/v2/{project.path}/tags/list", headers=bearer, timeout=TIMEOUT)
    assert tags.status_code == 200 and tags.json()["tags"] == ["latest"]
    # "acme/shopping" only shares a prefix with the project path: no access granted.
    other = requests.get(f"{registry.url}/v2/acme/shopping/tags/list", headers=bearer, timeout=TIMEOUT)
    assert other.status_code == 401

    import jwt
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["aud"] == "container_registry" and claims["sub"] == "someone"
    assert claims["access"] == [
        {"type": "repository", "name": project.path, "actions": ["pull", "push", "delete"]},
        {"type": "repository", "name": "acme/shopping", "actions": []},
    ]
    assert jwt.get_unverified_header(body["token"])["kid"] == registry.issuer.kid


# --- repository: branches, tags, merge requests ---------------------------------------

def test_branches(gitlab, api):
    project = gitlab.add_project(5, "acme/web")
    sha = project.add_branch("feature/Login-Form")
    project.add_branch("bugfix-login")
    project.add_branch("release")

    listed = api.get("/projects/5/repository/branches").json()
    assert [b["name"] for b in listed] == ["bugfix-login", "feature/Login-Form", "main", "release"]
    main = next(b for b in listed if b["name"] == "main")
    assert main["default"] and main["protected"] and main["merged"] is False

    def search(term):
        return [b["name"] for b in api.get("/projects/5/repository/branches", params={"search": term}).json()]

    assert search("LOGIN") == ["bugfix-login", "feature/Login-Form"]
    assert search("^feature") == ["feature/Login-Form"]
    assert search("form$") == ["feature/Login-Form"]
    assert search("^release$") == ["release"]

    one = api.get("/projects/5/repository/branches/" + quote("feature/Login-Form", safe=""))
    assert one.status_code == 200
    assert one.json()["commit"] == {"id": sha, "short_id": sha[:8], "title": "Head of feature/Login-Form"}
    project.delete_branch("feature/Login-Form")
    gone = api.get("/projects/5/repository/branches/" + quote("feature/Login-Form", safe=""))
    assert gone.status_code == 404 and gone.json() == {"message": "404 Branch Not Found"}


def test_git_tags(gitlab, api):
    project = gitlab.add_project(6, "acme/lib")
    sha = project.add_tag("v1.0.0")
    tags = api.get("/projects/6/repository/tags").json()
    assert tags == [{"name": "v1.0.0", "target": sha, "message": "", "protected": False,
                     "commit": {"id": sha, "short_id": sha[:8], "title": "Tagged v1.0.0"}}]


def test_merge_requests_and_commits(gitlab, api):
    upstream = gitlab.add_project(10, "acme/app")
    fork = gitlab.add_project(11, "dev/app")
    head = upstream.add_branch("feature-a")
    upstream.add_merge_request(1, "feature-a", state="merged")
    upstream.add_merge_request(2, "feature-b", commits=["a" * 40, "b" * 40], state="opened")
    upstream.add_merge_request(3, "feature-a", state="closed", source_project_id=fork.id)

    all_mrs = api.get("/projects/10/merge_requests", params={"state": "all"}).json()
    assert [m["iid"] for m in all_mrs] == [3, 2, 1]
    merged = api.get("/projects/10/merge_requests", params={"state": "merged"}).json()
    assert [(m["iid"], m["sha"], m["target_project_id"]) for m in merged] == [(1, head, 10)]
    by_branch = api.get("/projects/10/merge_requests", params={"source_branch": "feature-a"}).json()
    assert [(m["iid"], m["source_project_id"]) for m in by_branch] == [(3, 11), (1, 10)]
    assert api.get("/projects/11/merge_requests").json() == []  # MRs live in the target project

    commits = api.get("/projects/10/merge_requests/2/commits")
    assert [c["id"] for c in commits.json()] == ["b" * 40, "a" * 40]  # newest first
    assert commits.json()[0]["short_id"] == "b" * 8 and commits.headers["X-Total"] == "2"
    assert api.get("/projects/10/merge_requests/2").json()["sha"] == "b" * 40
    assert api.get("/projects/10/merge_requests/99/commits").status_code == 404
    # commits=[]: nothing to merge, so GitLab lists no commits (not the source branch's head).
    upstream.add_merge_request(4, "feature-a", commits=[], state="opened")
    assert api.get("/projects/10/merge_requests/4/commits").json() == []
    assert api.get("/projects/10/merge_requests/4").json()["sha"] is None


# --- hooks --------------------------------------------------------------------------

def test_project_and_group_hooks(gitlab, api):
    project = gitlab.add_project(20, "acme/hooked")
    gitlab.add_group(3, "acme")

    created = api("POST", "/projects/20/hooks", json={
        "url": "http://127.0.0.1:9/hook", "token": "s3cret", "merge_requests_events": True,
        "push_events": True, "pipeline_events": False, "enable_ssl_verification": False})
    assert created.status_code == 201
    hook = created.json()
    assert "token" not in hook and hook["merge_requests_events"] is True and hook["project_id"] == 20
    assert project.hooks[0]["token"] == "s3cret"  # stored, never returned

    # Same URL, no token: the secret stays.
    api("PUT", f"/projects/20/hooks/{hook['id']}", json={"url": "http://127.0.0.1:9/hook", "pipeline_events": True})
    assert project.hooks[0]["token"] == "s3cret" and project.hooks[0]["pipeline_events"] is True
    # New URL without the token: GitLab clears the secret.
    api("PUT", f"/projects/20/hooks/{hook['id']}", json={"url": "http://127.0.0.1:9/other"})
    assert project.hooks[0]["token"] is None
    api("PUT", f"/projects/20/hooks/{hook['id']}", json={"url": "http://127.0.0.1:9/x", "token": "again"})
    assert project.hooks[0]["token"] == "again"
    assert [h["url"] for h in api.get("/projects/20/hooks").json()] == ["http://127.0.0.1:9/x"]
    assert api("POST", "/projects/20/hooks", json={"token": "x"}).status_code == 400

    assert api("DELETE", f"/projects/20/hooks/{hook['id']}").status_code == 204
    assert project.hooks == [] and api.get(f"/projects/20/hooks/{hook['id']}").status_code == 404

    group_hook = api("POST", "/groups/acme/hooks", data={"url": "http://127.0.0.1:9/g", "token": "t",
                                                          "merge_requests_events": "true"})
    assert group_hook.status_code == 201 and group_hook.json()["group_id"] == 3
    assert api.get("/groups/3/hooks").json()[0]["merge_requests_events"] is True
    assert [p["id"] for p in api.get("/groups/3/projects").json()] == [20]
    assert api.get("/groups/404/hooks").json() == {"message": "404 Group Not Found"}


# --- test controls ------------------------------------------------------------------

def test_fault_injection_429_then_recovers(gitlab, api, shop):
    project, rid = shop
    gitlab.inject_fault("GET", r"/registry/repositories/\d+/tags$", 429, times=2, headers={"Retry-After": "3"})
    for _ in range(2):
        resp = api.get(_tags_path(project, rid))
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
    assert api.get(_tags_path(project, rid)).status_code == 200
    assert gitlab.count("GET", r"/tags$") == 3
    assert [status for method, _, status in gitlab.requests if method == "GET"] == [429, 429, 200]


def test_fault_injection_delay_and_until_cleared(gitlab, api, shop):
    gitlab.inject_fault("*", r"^/api/v4/projects/1$", 500, times=-1)
    assert [api.get("/projects/1").status_code for _ in range(3)] == [500, 500, 500]
    gitlab.clear_faults()
    assert api.get("/projects/1").status_code == 200

    # A hang: the client's timeout fires first.
    gitlab.inject_fault("GET", r"/repository/branches", 200, delay=2.0, body={"late": True})
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        api.get("/projects/1/repository/branches", timeout=0.3)
    assert time.monotonic() - started < 1.5
    gitlab.reset_requests()
    assert gitlab.count() == 0


def test_concurrent_single_tag_deletes_on_one_digest(gitlab, api, shop):
    """Workers delete in parallel: each delete must take only its own tag."""
    from concurrent.futures import ThreadPoolExecutor

    project, rid = shop
    client = gitlab.registry_client
    doomed = [f"mr-{i}" for i in range(8)]
    digest = client.push_image(project.path, ["latest", *doomed], content="shared")
    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(lambda t: api("DELETE", _tags_path(project, rid) + "/" + t).status_code, doomed))
    assert codes == [200] * 8
    assert client.tags(project.path) == ["latest"]
    assert client.resolve(project.path, "latest") == digest


def test_unknown_route_and_wrong_method(gitlab, api, shop):
    assert api.get("/nothing/here").status_code == 404
    assert api("POST", "/projects/1").status_code == 405


# --- commit graph -----------------------------------------------------------------------

def _refs(api, pid, sha):
    resp = api.get(f"/projects/{pid}/repository/commits/{sha}/refs", params={"per_page": 100})
    assert resp.status_code == 200, resp.text
    return sorted((r["type"], r["name"]) for r in resp.json())


def test_branch_history_add_branch_push_and_update_ref(gitlab, api):
    project = gitlab.add_project(30, "acme/graph")
    root = project.branches["main"]
    assert project.history == {"main": [root]}

    feature_base = project.add_branch("feature", from_branch="main")
    assert feature_base == root and project.history["feature"] == [root]
    c1 = project.push("feature")
    c2 = project.push("feature", count=2)
    c3 = project.push("feature", sha="c3" * 20)
    assert c3 == "c3" * 20 and project.branches["feature"] == c3
    assert project.history["feature"][0] == root and project.history["feature"][-1] == c3
    assert len(project.history["feature"]) == 5 and c1 in project.history["feature"]
    with pytest.raises(KeyError):
        project.push("nope")
    with pytest.raises(ValueError):
        project.push("feature", sha="d" * 40, count=2)

    # A new commit on top of another branch; a branch made at a known commit gets its ancestry.
    topic = project.add_branch("topic", "e" * 40, from_branch="main")
    assert project.history["topic"] == [root, topic]
    project.add_branch("at-c1", c1)
    assert project.history["at-c1"] == [root, c1]
    # A bare `branches[name] = sha` is git update-ref: the commit and its known ancestry.
    project.branches["feature"] = c1
    assert project.history["feature"] == [root, c1]
    project.branches["fresh"] = "f" * 40
    assert project.history["fresh"] == ["f" * 40]

    assert _refs(api, 30, root) == [("branch", "at-c1"), ("branch", "feature"), ("branch", "main"),
                                    ("branch", "topic")]
    assert _refs(api, 30, c1) == [("branch", "at-c1"), ("branch", "feature")]
    assert _refs(api, 30, c2) == []  # feature was moved back: c2 is known but on no ref any more
    commit = api.get(f"/projects/30/repository/commits/{c1}").json()
    assert commit["parent_ids"] == [root]


def test_deleted_branch_commits_stay_resolvable(gitlab, api):
    project = gitlab.add_project(31, "acme/kept")
    project.add_branch("feature/gone", from_branch="main")
    first = project.push("feature/gone", sha="abcd0" + "1" * 35)
    second = project.push("feature/gone", sha="abcd1" + "2" * 35)
    project.add_pipeline(first, "feature/gone")
    project.add_pipeline(second, "feature/gone")
    project.delete_branch("feature/gone")
    assert "feature/gone" not in project.history

    for ref, full in ((first, first), (second, second), (first[:8], first), ("abcd1", second),
                      (second[:39], second)):
        resp = api.get(f"/projects/31/repository/commits/{ref}")
        assert resp.status_code == 200 and resp.json()["id"] == full, ref
        assert api.get(f"/projects/31/repository/commits/{ref}/refs").json() == []
    for ambiguous in ("abcd", "abc", "ABCD0"):  # ambiguous, too short, not lower-case hex
        resp = api.get(f"/projects/31/repository/commits/{ambiguous}")
        assert resp.status_code == 404 and resp.json() == {"message": "404 Commit Not Found"}
    # A deleted pipeline's commit stays kept around as well.
    sha = "9" * 40
    pipeline = project.add_pipeline(sha, "main")
    project.delete_pipeline(pipeline.id)
    assert api.get(f"/projects/31/repository/commits/{sha}").status_code == 200


def test_legacy_seeding_rules_still_hold(gitlab, api):
    """add_commit(on=...), MRs with given commits and seeded merged MRs keep their meaning."""
    project = gitlab.add_project(32, "acme/legacy")
    project.branches["main"] = "1" * 40
    project.add_commit("2" * 40, on=["main", "gone"])
    project.add_merge_request(1, "feature", "main", state="merged", commits=["3" * 40], merge_commit_sha="4" * 40)
    project.add_merge_request(2, "open", "main", commits=["5" * 40])
    project.add_branch("open", "6" * 40)
    project.add_merge_request(3, "squashed", "main", state="merged", commits=["7" * 40], squash=True,
                              squash_commit_sha="8" * 40, merge_commit_sha="9" * 40)

    assert _refs(api, 32, "2" * 40) == [("branch", "main")]
    assert _refs(api, 32, "3" * 40) == [("branch", "main")]
    assert _refs(api, 32, "4" * 40) == [("branch", "main")]
    assert _refs(api, 32, "5" * 40) == [("branch", "open")]
    assert _refs(api, 32, "7" * 40) == []  # a squashed MR's own commits never reach the target
    assert _refs(api, 32, "8" * 40) == [("branch", "main")]
    assert _refs(api, 32, "9" * 40) == [("branch", "main")]
    mr = api.get("/projects/32/merge_requests/3").json()
    assert (mr["squash"], mr["squash_commit_sha"], mr["merge_commit_sha"]) == (True, "8" * 40, "9" * 40)


def test_merge_request_commits_follow_the_source_branch(gitlab, api):
    project = gitlab.add_project(33, "acme/mrs")
    project.add_branch("feature", from_branch="main")
    a, b = project.push("feature"), project.push("feature")
    mr = project.add_merge_request(1, "feature")
    assert [c["id"] for c in mr.commits] == [a, b] and mr.sha == b
    c = project.push("feature")
    listed = api.get("/projects/33/merge_requests/1/commits").json()
    assert [x["id"] for x in listed] == [c, b, a]  # newest first, refreshed by the push
    assert api.get("/projects/33/merge_requests/1").json()["sha"] == c

    # Nothing the target lacks: no commits, as GitLab lists none.
    project.add_branch("same", from_branch="main")
    empty = project.add_merge_request(2, "same")
    assert empty.commits == [] and api.get("/projects/33/merge_requests/2").json()["sha"] is None

    # Retargeting recomputes against the new target; closing freezes.
    project.add_branch("release", from_branch="feature")
    project.retarget(1, "release")
    assert api.get("/projects/33/merge_requests/1").json()["target_branch"] == "release"
    assert project.merge_requests[1].commits == []
    project.retarget(1, "main")
    assert [x["id"] for x in project.merge_requests[1].commits] == [a, b, c]
    project.close(1)
    project.push("feature")
    closed = api.get("/projects/33/merge_requests/1").json()
    assert closed["state"] == "closed" and closed["closed_at"] and closed["sha"] == c
    with pytest.raises(ValueError):
        project.merge(1)


# --- merge methods ------------------------------------------------------------------------

MERGE_CASES = {
    # method: (merge_commit_sha is new, squash, squash_commit_sha set, target head,
    #          MR commits on the target afterwards)
    "merge": (True, False, False, "merge", True),
    "ff": (False, False, False, "mr_head", True),
    "squash": (True, True, True, "merge", False),
    "squash_ff": (False, True, True, "squash", False),
}


@pytest.mark.parametrize("method", list(MERGE_CASES))
@pytest.mark.parametrize("remove_source_branch", [False, True])
def test_merge_methods(gitlab, api, method, remove_source_branch):
    has_merge_commit, squash, has_squash_commit, head_is, commits_on_target = MERGE_CASES[method]
    project = gitlab.add_project(40, "acme/merging")
    base = project.branches["main"]
    project.add_branch("feature", from_branch="main")
    a, b = project.push("feature", count=1), project.push("feature", count=1)
    project.add_merge_request(7, "feature", "main")
    before = api.get("/projects/40/merge_requests/7").json()
    assert (before["state"], before["merged_at"], before["merge_commit_sha"], before["squash_commit_sha"],
            before["squash"], before["sha"], before["detailed_merge_status"]) == \
        ("opened", None, None, None, False, b, "mergeable")

    project.merge(7, method, remove_source_branch=remove_source_branch)
    mr = api.get("/projects/40/merge_requests/7").json()
    assert mr == next(m for m in api.get("/projects/40/merge_requests").json() if m["iid"] == 7)
    assert mr["state"] == "merged" and mr["merged_at"] and mr["sha"] == b
    assert mr["squash"] is squash and mr["detailed_merge_status"] == "not_open"
    assert (mr["merge_commit_sha"] is not None) is has_merge_commit
    assert (mr["squash_commit_sha"] is not None) is has_squash_commit
    assert mr["merge_commit_sha"] not in (a, b, base)
    main = api.get("/projects/40/repository/branches/main").json()["commit"]["id"]
    assert main == {"merge": mr["merge_commit_sha"], "mr_head": b, "squash": mr["squash_commit_sha"]}[head_is]
    assert mr["force_remove_source_branch"] is remove_source_branch

    source_refs = [] if remove_source_branch else [("branch", "feature")]
    for sha in (a, b):
        expected = sorted(source_refs + ([("branch", "main")] if commits_on_target else []))
        assert _refs(api, 40, sha) == expected, sha
        assert api.get(f"/projects/40/repository/commits/{sha[:10]}").json()["id"] == sha
    for sha in (mr["merge_commit_sha"], mr["squash_commit_sha"]):
        if sha:
            assert _refs(api, 40, sha) == [("branch", "main")]
    assert _refs(api, 40, base) == sorted([("branch", "main")] + source_refs)
    status = api.get("/projects/40/repository/branches/feature").status_code
    assert status == (404 if remove_source_branch else 200)
    if has_merge_commit:
        merge = api.get(f"/projects/40/repository/commits/{mr['merge_commit_sha']}").json()
        assert merge["parent_ids"] == [base, mr["squash_commit_sha"] or b]


@pytest.mark.parametrize("method", ["ff", "squash_ff"])
def test_fast_forward_needs_an_up_to_date_source(gitlab, method):
    project = gitlab.add_project(41, "acme/ff")
    project.add_branch("feature", from_branch="main")
    project.push("feature")
    project.add_merge_request(1, "feature")
    project.push("main")  # the target moved on: GitLab asks for a rebase
    with pytest.raises(ValueError, match="fast-forward"):
        project.merge(1, method)
    project.merge(1, "merge")  # a merge commit is fine
    assert project.merge_requests[1].state == "merged"
    with pytest.raises(ValueError):
        project.merge(1, "merge")  # merged already


# --- pipelines ----------------------------------------------------------------------------

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@pytest.fixture
def piped(gitlab):
    """Project 50 with one pipeline of each kind, created a minute apart from T0."""
    project = gitlab.add_project(50, "acme/piped")
    main0 = project.branches["main"]
    project.add_tag("v1.0.0", main0)
    project.add_branch("feature", from_branch="main")
    feat = project.push("feature")
    project.add_merge_request(1, "feature")
    pls = {
        "main0": project.add_pipeline(main0, "main", created_at=_at(0)),
        "feat": project.add_pipeline(feat, "feature", status="failed", created_at=_at(1)),
        "mr_head": project.add_pipeline(feat, "refs/merge-requests/1/head", source="merge_request_event",
                                        status="running", created_at=_at(2)),
        "tag": project.add_pipeline(main0, "v1.0.0", created_at=_at(3)),
        "child": project.add_pipeline(feat, "feature", source="parent_pipeline", status="pending",
                                      created_at=_at(4)),
        "main1": project.add_pipeline(project.push("main"), "main", status="pending", source="schedule",
                                      created_at=_at(5)),
        "gone": project.add_pipeline("0123" * 10, "deleted", status="canceled", created_at=_at(6)),
    }
    return project, pls


def _ids(resp):
    assert resp.status_code == 200, resp.text
    return [p["id"] for p in resp.json()]


PIPELINE_FILTERS = [
    # (params, expected labels in answer order)
    ({}, ["gone", "main1", "tag", "mr_head", "feat", "main0"]),  # no child pipelines, newest first
    ({"source": "parent_pipeline"}, ["child"]),
    ({"sha": "FEAT"}, ["mr_head", "feat"]),
    ({"sha": "FEAT8"}, []),  # exact full SHA only
    ({"ref": "feature"}, ["feat"]),
    ({"ref": "refs/merge-requests/1/head"}, ["mr_head"]),
    ({"ref": "feat"}, []),
    ({"status": "success"}, ["tag", "main0"]),
    ({"source": "schedule"}, ["main1"]),
    ({"scope": "running"}, ["mr_head"]),
    ({"scope": "pending"}, ["main1"]),
    ({"scope": "finished"}, ["gone", "tag", "feat", "main0"]),
    ({"scope": "branches"}, ["main1", "feat"]),  # the newest per branch that exists now
    ({"scope": "tags"}, ["tag"]),
    ({"scope": "branches", "status": "success"}, []),  # scope first, then status: main1 is pending
    ({"updated_after": "AT3"}, ["gone", "main1", "tag"]),  # inclusive, as UpdatedAtFilterable
    ({"updated_before": "AT1"}, ["feat", "main0"]),
    ({"updated_after": "AT3", "updated_before": "AT1"}, []),
    ({"created_after": "AT3"}, ["gone", "main1"]),  # strict, as Ci::Pipeline.created_after
    ({"created_before": "AT1"}, ["main0"]),
    ({"updated_after": "2024-01-01T00:02:30+00:00"}, ["gone", "main1", "tag"]),
    ({"updated_after": "2024-01-01"}, ["gone", "main1", "tag", "mr_head", "feat", "main0"]),
    ({"order_by": "id", "sort": "asc"}, ["main0", "feat", "mr_head", "tag", "main1", "gone"]),
    ({"order_by": "status", "sort": "asc"}, ["gone", "feat", "main1", "mr_head", "main0", "tag"]),
    ({"order_by": "ref", "sort": "desc"}, ["tag", "mr_head", "main1", "main0", "feat", "gone"]),
    ({"order_by": "updated_at", "sort": "asc"}, ["main0", "feat", "mr_head", "tag", "main1", "gone"]),
    ({"order_by": "user_id"}, ["gone", "main1", "tag", "mr_head", "feat", "main0"]),
    ({"username": "emulator", "yaml_errors": "false"}, ["gone", "main1", "tag", "mr_head", "feat", "main0"]),
    ({"username": "someone-else"}, []),
]


@pytest.mark.parametrize("params,expected", PIPELINE_FILTERS, ids=[repr(p) for p, _ in PIPELINE_FILTERS])
def test_pipeline_list_filters(api, piped, params, expected):
    project, pls = piped
    feat = pls["feat"].sha
    subst = {"FEAT": feat, "FEAT8": feat[:8], "AT3": pls["tag"].updated_at, "AT1": pls["feat"].updated_at}
    params = {k: subst.get(v, v) for k, v in params.items()}
    resp = api.get("/projects/50/pipelines", params=params)
    assert _ids(resp) == [pls[label].id for label in expected]
    for item in resp.json():
        assert set(item) == {"id", "iid", "project_id", "sha", "ref", "status", "source", "created_at",
                             "updated_at", "web_url", "name"}  # no `tag` in the list


PIPELINE_ERRORS = [
    ({"order_by": "created_at"}, "order_by does not have a valid value"),
    ({"sort": "ASC"}, "sort does not have a valid value"),
    ({"scope": "all"}, "scope does not have a valid value"),
    ({"status": "passed"}, "status does not have a valid value"),
    ({"source": "merge_request"}, "source does not have a valid value"),
    ({"updated_after": "yesterday"}, "updated_after is invalid"),
    ({"created_before": "2024-13-01"}, "created_before is invalid"),
    ({"scope": "x", "updated_after": "x", "sort": "x"},
     "scope does not have a valid value, updated_after is invalid, sort does not have a valid value"),
]


@pytest.mark.parametrize("params,error", PIPELINE_ERRORS, ids=[repr(p) for p, _ in PIPELINE_ERRORS])
def test_pipeline_list_rejects_bad_parameters(api, piped, params, error):
    resp = api.get("/projects/50/pipelines", params=params)
    assert resp.status_code == 400 and resp.json() == {"error": error}


def test_pipeline_list_paginates(gitlab, api):
    project = gitlab.add_project(51, "acme/many")
    made = [project.add_pipeline(random_sha(), "main", created_at=_at(i)).id for i in range(45)]
    first = api.get("/projects/51/pipelines", params={"order_by": "id", "sort": "asc"})
    h = first.headers
    assert (h["X-Page"], h["X-Per-Page"], h["X-Total"], h["X-Total-Pages"], h["X-Next-Page"]) == \
        ("1", "20", "45", "3", "2")
    seen, resp = _ids(first), first
    while "next" in resp.links:
        resp = api.s.get(resp.links["next"]["url"], timeout=TIMEOUT)
        seen += _ids(resp)
    assert seen == made and resp.headers["X-Page"] == "3" and resp.headers["X-Next-Page"] == ""
    page = api.get("/projects/51/pipelines", params={"per_page": 10, "page": 2, "sort": "desc"})
    assert _ids(page) == made[::-1][10:20]
    assert api.get("/projects/51/pipelines", params={"per_page": 1000}).headers["X-Per-Page"] == "100"
    assert [iid for iid in (p.iid for p in project.pipelines.values())] == list(range(1, 46))


def test_single_pipeline(api, piped):
    project, pls = piped
    tag = api.get(f"/projects/50/pipelines/{pls['tag'].id}").json()
    assert tag["tag"] is True and tag["ref"] == "v1.0.0" and tag["sha"] == pls["tag"].sha
    main = api.get(f"/projects/50/pipelines/{pls['main1'].id}").json()
    assert main["tag"] is False and main["before_sha"] == "0" * 40  # a scheduled pipeline: no push
    assert main["status"] == "pending" and main["started_at"] is None and main["finished_at"] is None
    mr = api.get(f"/projects/50/pipelines/{pls['mr_head'].id}").json()
    assert mr["tag"] is False and mr["before_sha"] == "0" * 40 and mr["started_at"]
    done = api.get(f"/projects/50/pipelines/{pls['feat'].id}").json()
    assert done["finished_at"] == done["updated_at"] and done["duration"] == 0
    assert done["before_sha"] == pls["main0"].sha  # a push pipeline: the branch's previous commit
    assert done["web_url"] == f"{api.base[:-len('/api/v4')]}/acme/piped/-/pipelines/{pls['feat'].id}"
    assert {"iid", "project_id", "created_at", "user", "detailed_status", "coverage", "yaml_errors",
            "queued_duration", "name"} <= set(done)
    missing = api.get("/projects/50/pipelines/999999")
    assert missing.status_code == 404 and missing.json() == {"message": "404 Not found"}
    assert api.get("/projects/50/pipelines/abc").json() == {"error": "pipeline_id is invalid"}
    other = project._emu.add_project(52, "acme/other")
    assert api.get(f"/projects/52/pipelines/{pls['tag'].id}").status_code == 404
    assert other.add_pipeline(random_sha(), "main").id > max(p.id for p in pls.values())  # ids are global


def test_merge_request_pipelines(gitlab, api):
    project = gitlab.add_project(53, "acme/mrpipes")
    main0 = project.branches["main"]
    project.add_branch("feature", from_branch="main")
    a = project.push("feature")
    project.add_merge_request(3, "feature")
    project.add_branch("other", from_branch="main")
    project.add_merge_request(4, "other", commits=[project.push("other")])
    pl = {
        "branch_a": project.add_pipeline(a, "feature"),
        "mr_head": project.add_pipeline(a, "refs/merge-requests/3/head", source="merge_request_event"),
        "merged_result": project.add_pipeline(random_sha(), "refs/merge-requests/3/merge",
                                              source="merge_request_event"),
        "base_on_feature": project.add_pipeline(main0, "feature"),  # not one of the MR's commits
        "main": project.add_pipeline(a, "main"),  # not the source branch
        "other_mr": project.add_pipeline(a, "refs/merge-requests/4/head", source="merge_request_event"),
        "child": project.add_pipeline(a, "feature", source="parent_pipeline"),  # not a branch source
    }
    b = project.push("feature")
    pl["branch_b"] = project.add_pipeline(b, "feature")
    # Force-push the branch away from a: the MR keeps a among all its commits (every diff version).
    project.branches["feature"] = main0
    project.push("feature")
    assert a not in [c["id"] for c in project.merge_requests[3].commits]

    resp = api.get("/projects/53/merge_requests/3/pipelines")
    assert _ids(resp) == [pl[k].id for k in ("merged_result", "mr_head", "branch_b", "branch_a")]
    assert set(resp.json()[0]) == {"id", "iid", "project_id", "sha", "ref", "status", "source",
                                   "created_at", "updated_at", "web_url"}
    assert resp.json()[0]["ref"] == "refs/merge-requests/3/merge"
    paged = api.get("/projects/53/merge_requests/3/pipelines", params={"per_page": 3, "page": 2})
    assert _ids(paged) == [pl["branch_a"].id] and paged.headers["X-Total"] == "4"
    assert _ids(api.get("/projects/53/merge_requests/4/pipelines")) == [pl["other_mr"].id]
    assert api.get("/projects/53/merge_requests/9/pipelines").status_code == 404


def test_fork_merge_request_pipelines(gitlab, api):
    upstream = gitlab.add_project(54, "acme/up")
    fork = gitlab.add_project(55, "dev/up")
    fork.add_branch("feature", fork.branches["main"])
    head = fork.push("feature")
    upstream.add_merge_request(1, "feature", source_project_id=55)
    assert [c["id"] for c in upstream.merge_requests[1].commits] == [fork.branches["main"], head]
    in_fork = fork.add_pipeline(head, "feature")
    in_upstream = upstream.add_pipeline(head, "refs/merge-requests/1/head", source="merge_request_event")
    upstream.add_pipeline(head, "feature")  # upstream has no such branch pipeline for the MR
    assert _ids(api.get("/projects/54/merge_requests/1/pipelines")) == [in_upstream.id, in_fork.id]


def test_pipeline_clock_never_goes_backwards(gitlab, api):
    project = gitlab.add_project(56, "acme/clock")
    sha = project.branches["main"]
    old = [project.add_pipeline(sha, "main", created_at=_at(i)) for i in range(3)]
    assert [p.updated_at for p in old] == [p.created_at for p in old]  # seeded in order: as given
    assert old[0].created_at == "2024-01-01T00:00:00.000Z"
    late = project.add_pipeline(sha, "main", created_at="2023-06-01T12:00:00Z")  # older than the clock
    assert late.created_at == "2023-06-01T12:00:00.000Z" and late.updated_at == "2024-01-01T00:02:00.001Z"
    project.update_pipeline(old[0].id, "failed", at=_at(1))  # a time behind the clock still moves on
    assert old[0].updated_at == "2024-01-01T00:02:00.002Z" and old[0].status == "failed"
    fresh = project.add_pipeline(sha, "main")  # now: after all seeded history
    project.update_pipeline(old[1].id, "running")
    assert old[1].updated_at > fresh.updated_at > old[0].updated_at

    stamps = [p["updated_at"] for p in api.get("/projects/56/pipelines",
                                               params={"order_by": "updated_at", "sort": "asc"}).json()]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps) == 5
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s) for s in stamps)
    after = api.get("/projects/56/pipelines", params={"updated_after": old[0].updated_at, "sort": "asc"})
    assert _ids(after) == [old[0].id, old[1].id, fresh.id]


def test_pipeline_seeding_validation(gitlab):
    project = gitlab.add_project(57, "acme/strict")
    sha = project.branches["main"]
    for kwargs in ({"status": "passed"}, {"source": "merge_request"}, {"ref": "refs/merge-requests/1/head"},
                   {"source": "merge_request_event"}, {"ref": "refs/merge-requests/1/head",
                                                       "source": "merge_request_event", "tag": True}):
        kwargs = {"ref": "main", **kwargs}
        with pytest.raises(ValueError):
            project.add_pipeline(sha, **kwargs)
    with pytest.raises(ValueError):
        project.add_pipeline(sha[:8], "main")
    with pytest.raises(KeyError):
        project.update_pipeline(424242, "success")


def test_pipeline_endpoints_are_counted_and_take_faults(gitlab, api, piped):
    gitlab.reset_requests()
    gitlab.inject_fault("GET", r"/projects/50/pipelines$", 429, times=1, headers={"Retry-After": "1"})
    assert api.get("/projects/50/pipelines").status_code == 429
    assert api.get("/projects/50/pipelines").status_code == 200
    assert api.get("/projects/50/merge_requests/1/pipelines").status_code == 200
    assert gitlab.count("GET", r"/pipelines$") == 3
    assert gitlab.count("GET", r"/merge_requests/1/pipelines$") == 1
    assert api("POST", "/projects/50/pipelines").status_code == 405


def test_fault_injection_can_target_one_page(gitlab, api):
    project = gitlab.add_project(58, "acme/paged-faults")
    for i in range(30):
        project.add_pipeline(random_sha(), "main", created_at=_at(i))
    gitlab.inject_fault("GET", r"/projects/58/pipelines$", 503, times=-1, query_regex=r"(^|&)page=2(&|$)")
    assert api.get("/projects/58/pipelines").status_code == 200
    assert api.get("/projects/58/pipelines", params={"page": 1}).status_code == 200
    assert api.get("/projects/58/pipelines", params={"per_page": 20, "page": 2}).status_code == 503
    assert api.get("/projects/58/pipelines", params={"page": 22}).status_code == 200
    gitlab.clear_faults()
    assert api.get("/projects/58/pipelines", params={"page": 2}).status_code == 200


def test_merge_requests_filter_by_iids(gitlab):
    """`iids[]` as GitLab takes it: only the merge requests named, in the usual order."""
    import requests as _requests

    project = gitlab.add_project(7301, "emu/iids")
    for iid in (1, 2, 3):
        project.add_merge_request(iid, f"feature/{iid}", "main", commits=[])
    url = f"{gitlab.api_url}/projects/{project.id}/merge_requests"
    headers = {"PRIVATE-TOKEN": gitlab.token}
    got = _requests.get(url, params={"iids[]": [1, 3], "state": "all"}, headers=headers, timeout=5)
    assert [m["iid"] for m in got.json()] == [3, 1]
    bad = _requests.get(url, params={"iids[]": "x"}, headers=headers, timeout=5)
    assert bad.status_code == 400
