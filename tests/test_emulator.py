"""The test infrastructure itself: GitLab emulator + real docker-registry, no mocks.

Everything goes over real HTTP: the emulator's REST API, its /jwt/auth token service
and the registry's API v2 with the tokens it signs.
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

import pytest
import requests

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
