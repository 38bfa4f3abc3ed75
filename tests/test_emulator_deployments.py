"""The GitLab emulator's environments and deployments: the seeding API (Project.add_environment,
deploy, update_deployment, stop/start/delete_environment, delete_deployment), GitLab's rules for
them, the routes that serve them and the Deployment Hook deliveries built from them.

The GitLab facts checked (source and docs, GitLab 17-18) are listed in tests/support/emulator_state.py
("seeding: environments and deployments") and tests/support/emulator_deployments.py.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.support.gitlab_emulator import environment_slug, guess_tier

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)


def _at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


# --- GitLab's slug and tier rules -------------------------------------------------------------

# Gitlab::Slug::Environment's spec, with the suffix left out (the spec stubs the digest).
SLUGS = [
    ("staging-12345678901234567", "staging-123456789-"),
    ("9-staging-123456789012345", "env-9-staging-123-"),
    ("staging-1234567890123456", "staging-1234567890123456"),
    ("staging-1234567890123456-", "staging-123456789-"),
    ("production", "production"),
    ("PRODUCTION", "production-"),
    ("review/1-foo", "review-1-foo-"),
    ("1-foo", "env-1-foo-"),
    ("1/foo", "env-1-foo-"),
    ("foo-", "foo"),
    ("foo--bar", "foo-bar-"),
    ("foo**bar", "foo-bar-"),
    ("*-foo", "env-foo-"),
    ("staging-12345678-", "staging-12345678"),
    ("staging-12345678-01234567", "staging-12345678-"),
]


@pytest.mark.parametrize("name,prefix", SLUGS)
def test_environment_slug_follows_gitlab(name, prefix):
    slug = environment_slug(name)
    if prefix.endswith("-"):  # shortened or changed: 6 characters of the name's SHA-256 in base 36
        assert slug.startswith(prefix) and len(slug) == len(prefix) + 6
        assert slug[len(prefix):].isalnum() and slug == slug.lower()
    else:
        assert slug == prefix
    assert len(slug) <= 24 and environment_slug(name) == slug  # stable: derived from the name only


def test_slug_suffix_is_gitlabs_base36_of_sha256():
    # GitLab's spec: ('a' * 64).to_i(16).to_s(36).last(6) gives 'q517sa'; the same conversion here.
    import tests.support.emulator_state as state

    class FakeDigest:
        def hexdigest(self):
            return "a" * 64

    real = state.hashlib.sha256
    state.hashlib.sha256 = lambda data: FakeDigest()
    try:
        assert environment_slug("review/1-foo") == "review-1-foo-q517sa"
        assert environment_slug("PRODUCTION") == "production-q517sa"
    finally:
        state.hashlib.sha256 = real


@pytest.mark.parametrize("name,tier", [("production", "production"), ("prd", "production"),
                                       ("review/feature-x", "development"), ("dev", "development"),
                                       ("staging", "staging"), ("qa", "testing"), ("canary", "other"),
                                       ("live", "production"), ("preprod", "staging")])
def test_tier_guess_follows_gitlab(name, tier):
    assert guess_tier(name) == tier


# --- the seeding API ------------------------------------------------------------------------

@pytest.fixture
def shop(gitlab):
    """Project 60 "acme/shop": main, and branch feature/x two commits ahead."""
    project = gitlab.add_project(60, "acme/shop")
    project.add_branch("feature/x", from_branch="main")
    project.push("feature/x", count=2)
    return project


def test_add_environment(gitlab, shop):
    prod = shop.add_environment("production", external_url="https://shop.example.invalid")
    review = shop.add_environment("review/feature-x", state="stopped")
    assert (prod.slug, prod.tier, prod.state, prod.external_url) == \
        ("production", "production", "available", "https://shop.example.invalid")
    assert review.slug.startswith("review-feature-x-") and review.tier == "development" and review.state == "stopped"
    assert shop.add_environment("edge", tier="staging").tier == "staging"
    assert review.id > prod.id and shop.get_environment("production") is prod
    for bad in ({"name": "production"}, {"name": "/lead"}, {"name": "trail/"}, {"name": "bad:char"},
                {"name": "x", "state": "gone"}, {"name": "y", "tier": "prod"}, {"name": "z" * 256}):
        with pytest.raises(ValueError):
            shop.add_environment(**bad)
    with pytest.raises(KeyError):
        shop.get_environment("nope")


def test_deploy_creates_the_environment_and_numbers_deployments(gitlab, shop):
    head = shop.branches["feature/x"]
    main = shop.branches["main"]
    d1 = shop.deploy("review/feature-x", ref="feature/x", sha=head, at=_at(0))
    d2 = shop.deploy("production", ref="main", sha=main, status="running", at=_at(1))
    other = gitlab.add_project(61, "acme/other")
    d3 = other.deploy("production", ref="main", sha=other.branches["main"], at=_at(2))
    assert (d1.iid, d2.iid, d3.iid) == (1, 2, 1) and d1.id < d2.id < d3.id  # ids global, iids per project
    env = shop.get_environment("review/feature-x")
    assert d1.environment is env and env.state == "available" and env.tier == "development"
    assert env.created_at == d1.created_at == "2024-03-01T00:00:00.000Z"
    assert d1.finished_at == d1.updated_at and d2.finished_at is None  # finished ones only
    assert d1.deployable["id"] != d2.deployable["id"] and d1.deployable["status"] == "success"
    assert d2.deployable["status"] == "running" and d2.deployable["finished_at"] is None
    assert d1.tag is False and d1.user["username"] == "emulator"


def test_deploy_validates_like_gitlab(gitlab, shop):
    head = shop.branches["feature/x"]
    with pytest.raises(ValueError, match="commit does not exist"):
        shop.deploy("production", ref="main", sha="1" * 40)
    with pytest.raises(ValueError, match="full SHA"):
        shop.deploy("production", ref="main", sha=head[:8])
    with pytest.raises(ValueError, match="branch or tag does not exist"):
        shop.deploy("production", ref="no-such-branch", sha=head)
    with pytest.raises(ValueError):
        shop.deploy("production", ref="main", sha=head, status="passed")
    shop.add_tag("v1.0.0", head)
    tagged = shop.deploy("production", ref="v1.0.0", sha=head)
    assert tagged.tag is True and tagged.deployable["tag"] is True
    shop.add_merge_request(1, "feature/x")
    assert shop.deploy("review/mr-1", ref="refs/merge-requests/1/head", sha=head).ref == "refs/merge-requests/1/head"
    assert shop.deploy("production", ref=head, sha=head).ref == head  # a commit is a valid ref too


def test_update_deployment_follows_the_state_machine(gitlab, shop):
    head = shop.branches["feature/x"]
    d = shop.deploy("production", ref="feature/x", sha=head, status="created", at=_at(0))
    assert d.updated_at == "2024-03-01T00:00:00.000Z" and d.finished_at is None
    shop.update_deployment(d.id, "running", at=_at(1))
    assert (d.status, d.updated_at, d.finished_at) == ("running", "2024-03-01T00:01:00.000Z", None)
    with pytest.raises(ValueError):
        shop.update_deployment(d.id, "running")  # no loop
    with pytest.raises(ValueError):
        shop.update_deployment(d.id, "blocked")  # only from created
    shop.update_deployment(d.id, "success", at=_at(0.5))  # a time behind the clock: still moves on
    assert d.status == "success" and d.updated_at == "2024-03-01T00:01:00.001Z" == d.finished_at
    with pytest.raises(ValueError):
        shop.update_deployment(d.id, "running")  # success -> running: not a move GitLab has
    shop.update_deployment(d.id, "failed", at=_at(5))  # any -> failed
    assert d.finished_at == "2024-03-01T00:05:00.000Z"
    assert [s for s, _ in d.transitions] == ["created", "running", "success", "failed"]
    assert d.status_changed_at("running") == "2024-03-01T00:01:00.000Z"
    blocked = shop.deploy("production", ref="main", sha=shop.branches["main"], status="blocked")
    shop.update_deployment(blocked.id, "running")
    with pytest.raises(ValueError):
        shop.update_deployment(blocked.id, "nope")
    with pytest.raises(KeyError):
        shop.update_deployment(999999, "success")


def test_environment_states(gitlab, shop):
    head = shop.branches["feature/x"]
    shop.deploy("review/feature-x", ref="feature/x", sha=head)
    env = shop.get_environment("review/feature-x")
    shop.stop_environment("review/feature-x", state="stopping", at=_at(10))
    assert env.state == "stopping" and env.updated_at == "2024-03-01T00:10:00.000Z"
    with pytest.raises(ValueError):
        shop.stop_environment("review/feature-x", state="stopping")
    shop.stop_environment("review/feature-x")  # stopping -> stopped
    assert env.state == "stopped"
    with pytest.raises(ValueError):
        shop.stop_environment("review/feature-x")
    with pytest.raises(ValueError):
        shop.stop_environment("review/feature-x", state="available")
    shop.start_environment("review/feature-x")
    assert env.state == "available"
    with pytest.raises(ValueError):
        shop.start_environment("review/feature-x")
    shop.stop_environment("review/feature-x")
    shop.deploy("review/feature-x", ref="feature/x", sha=head, status="running")
    assert env.state == "stopped"  # running does not start it: the success does
    d = shop.deploy("review/feature-x", ref="feature/x", sha=head)
    assert env.state == "available" and d.environment is env
    shop.stop_environment("review/feature-x")
    running = [x for x in env.deployments if x.status == "running"][0]
    shop.update_deployment(running.id, "success")
    assert env.state == "available"  # a re-deploy that succeeds makes it available again


def test_delete_environment_only_when_stopped(gitlab, shop):
    head = shop.branches["feature/x"]
    d = shop.deploy("review/feature-x", ref="feature/x", sha=head)
    with pytest.raises(ValueError, match="only deletes stopped"):
        shop.delete_environment("review/feature-x")
    shop.stop_environment("review/feature-x")
    shop.delete_environment("review/feature-x")
    assert d.id not in shop.deployments and not shop.environments  # its deployments go with it
    with pytest.raises(KeyError):
        shop.delete_environment("review/feature-x")


def test_delete_deployment_refusals(gitlab, shop):
    main = shop.branches["main"]
    old = shop.deploy("production", ref="main", sha=main, at=_at(0))
    last = shop.deploy("production", ref="main", sha=main, at=_at(1))
    running = shop.deploy("production", ref="main", sha=main, status="running", at=_at(2))
    with pytest.raises(ValueError, match="Cannot destroy running deployment"):
        shop.delete_deployment(running.id)
    with pytest.raises(ValueError, match="Deployment currently deployed to environment"):
        shop.delete_deployment(last.id)
    shop.delete_deployment(old.id)
    assert list(shop.deployments) == [last.id, running.id]
    with pytest.raises(KeyError):
        shop.delete_deployment(old.id)


def test_last_deployment_is_the_newest_success(gitlab, shop):
    main, head = shop.branches["main"], shop.branches["feature/x"]
    assert shop.add_environment("production").last_deployment is None
    first = shop.deploy("production", ref="main", sha=main, at=_at(0))
    shop.deploy("production", ref="feature/x", sha=head, status="failed", at=_at(1))
    shop.deploy("production", ref="feature/x", sha=head, status="running", at=_at(2))
    assert shop.get_environment("production").last_deployment is first
    late = shop.deploy("production", ref="main", sha=main, status="running", at=_at(3))
    shop.update_deployment(late.id, "success", at=_at(4))
    assert shop.get_environment("production").last_deployment is late


def test_deleting_a_branch_stops_its_environments_like_gitlab(gitlab, shop):
    """Environments::StopService#execute_for_branch: available environments whose last successful
    deployment came from the deleted branch stop (auto_stop_setting "always", GitLab's default)."""
    head, main = shop.branches["feature/x"], shop.branches["main"]
    shop.deploy("review/feature-x", ref="feature/x", sha=head)
    shop.add_environment("review/kept", auto_stop_setting="with_action")
    shop.deploy("review/kept", ref="feature/x", sha=head)
    shop.deploy("staging", ref="feature/x", sha=head)
    shop.deploy("staging", ref="main", sha=main)  # its last deployment is from main now
    shop.deploy("production", ref="feature/x", sha=head)
    shop.deploy("production", ref="feature/x", sha=head, status="failed")  # failed ones do not count
    shop.delete_branch("feature/x")
    states = {e.name: e.state for e in shop.environments.values()}
    assert states == {"review/feature-x": "stopped", "review/kept": "available", "staging": "available",
                      "production": "stopped"}
    assert len(shop.deployments) == 6  # deployments outlive their branch


def test_reset_forgets_environments_and_deployments(gitlab, shop):
    shop.deploy("production", ref="main", sha=shop.branches["main"])
    gitlab.reset()
    project = gitlab.add_project(60, "acme/shop")
    assert project.environments == {} and project.deployments == {}
    d = project.deploy("production", ref="main", sha=project.branches["main"])
    assert d.iid == 1


# --- the routes -------------------------------------------------------------------------------

TIMEOUT = 10


class Api:
    """Tiny authenticated client for the emulator's /api/v4."""

    def __init__(self, emu, token: str | None = None):
        import requests

        self.base = emu.api_url
        self.s = requests.Session()
        if token is not False:
            self.s.headers["PRIVATE-TOKEN"] = emu.token if token is None else token

    def get(self, path, **kw):
        kw.setdefault("timeout", TIMEOUT)
        return self.s.get(self.base + path, **kw)


@pytest.fixture
def api(gitlab):
    client = Api(gitlab)
    yield client
    client.s.close()


@pytest.fixture
def deployed(gitlab):
    """Project 70 "acme/deployed": deployments a minute apart from T0 to three environments, and one
    moved on later (so updated_at order differs from id order)."""
    project = gitlab.add_project(70, "acme/deployed")
    main0 = project.branches["main"]
    project.add_branch("release/1", from_branch="main")
    rel = project.push("release/1")
    project.add_branch("feature/x", from_branch="main")
    feat = project.push("feature/x")
    main1 = project.push("main")
    d = {
        "p1": project.deploy("production", ref="main", sha=main0, at=_at(0)),
        "p2": project.deploy("production", ref="release/1", sha=rel, status="running", at=_at(1)),
        "p3": project.deploy("production", ref="main", sha=main1, status="failed", at=_at(2)),
        "r1": project.deploy("review/feature-x", ref="feature/x", sha=feat, at=_at(3)),
        "r2": project.deploy("review/feature-x", ref="feature/x", sha=feat, status="running", at=_at(4)),
        "s1": project.deploy("staging", ref="main", sha=main1, status="canceled", at=_at(5)),
        "s2": project.deploy("staging", ref="main", sha=main1, status="skipped", at=_at(6)),
        "s3": project.deploy("staging", ref="main", sha=main1, status="created", at=_at(7)),
    }
    project.update_deployment(d["p2"].id, "success", at=_at(8))  # p2 succeeds last: updated/finished at 8
    return project, d


def _ids(resp):
    assert resp.status_code == 200, resp.text
    return [x["id"] for x in resp.json()]


DEPLOYMENT_FILTERS = [
    # (params, expected labels in answer order)
    ({}, ["p1", "p2", "p3", "r1", "r2", "s1", "s2", "s3"]),  # id asc by default
    ({"sort": "desc"}, ["s3", "s2", "s1", "r2", "r1", "p3", "p2", "p1"]),
    ({"order_by": "iid", "sort": "desc"}, ["s3", "s2", "s1", "r2", "r1", "p3", "p2", "p1"]),
    ({"order_by": "created_at"}, ["p1", "p2", "p3", "r1", "r2", "s1", "s2", "s3"]),
    ({"order_by": "updated_at"}, ["p1", "p3", "r1", "r2", "s1", "s2", "s3", "p2"]),
    ({"order_by": "updated_at", "sort": "desc"}, ["p2", "s3", "s2", "s1", "r2", "r1", "p3", "p1"]),
    ({"environment": "production"}, ["p1", "p2", "p3"]),
    ({"environment": "review/feature-x", "status": "success"}, ["r1"]),
    ({"environment": "nope"}, []),
    ({"environment": "Production"}, []),  # exact name
    ({"status": "success"}, ["p1", "p2", "r1"]),
    ({"status": "running"}, ["r2"]),
    ({"status": "skipped"}, ["s2"]),
    ({"status": "blocked"}, []),
    ({"status": "success", "order_by": "finished_at"}, ["p1", "r1", "p2"]),
    ({"status": "failed", "order_by": "finished_at", "sort": "desc"}, ["p3"]),
    ({"order_by": "updated_at", "updated_after": "AT5"}, ["s1", "s2", "s3", "p2"]),  # inclusive
    ({"updated_after": "", "finished_before": ""}, ["p1", "p2", "p3", "r1", "r2", "s1", "s2", "s3"]),  # no filter
    ({"order_by": "updated_at", "updated_before": "AT1"}, ["p1"]),  # inclusive: p2 moved on to 8
    ({"order_by": "updated_at", "updated_before": "AT3", "updated_after": "AT2"}, ["p3", "r1"]),
    ({"order_by": "updated_at", "updated_before": "AT2", "updated_after": "AT3"}, []),  # before < after
    ({"order_by": "updated_at", "updated_after": "2024-03-01T00:04:30+00:00", "environment": "staging"},
     ["s1", "s2", "s3"]),
    ({"order_by": "finished_at", "status": "success", "finished_after": "AT3"}, ["r1", "p2"]),  # inclusive
    ({"order_by": "finished_at", "status": "success", "finished_before": "AT3"}, ["p1"]),  # strict
    ({"order_by": "finished_at", "status": "success", "finished_after": "AT0", "finished_before": "AT8",
      "sort": "desc"}, ["r1", "p1"]),
]


@pytest.mark.parametrize("params,expected", DEPLOYMENT_FILTERS, ids=[repr(p) for p, _ in DEPLOYMENT_FILTERS])
def test_deployment_list_filters_and_orders(api, deployed, params, expected):
    project, d = deployed
    subst = {f"AT{m}": f"2024-03-01T00:0{m}:00Z" for m in range(10)}
    params = {k: subst.get(v, v) for k, v in params.items()}
    resp = api.get("/projects/70/deployments", params=params)
    assert _ids(resp) == [d[label].id for label in expected]
    for item in resp.json():
        assert set(item) == {"id", "iid", "ref", "sha", "created_at", "updated_at", "user", "environment",
                             "deployable", "status"}
        assert set(item["environment"]) == {"id", "name", "slug", "external_url", "created_at", "updated_at"}


DEPLOYMENT_REFUSALS = [
    # GitLab's DeploymentsFinder#validate!: 400 {"message": "400 Bad request - ..."}
    ({"updated_after": "2024-03-01T00:00:00Z"}, "`updated_at` filter requires `updated_at` sort"),
    ({"updated_before": "2024-03-01T00:00:00Z", "order_by": "id"}, "`updated_at` filter requires `updated_at` sort"),
    ({"updated_after": "2024-03-01T00:00:00Z", "order_by": "updated_at", "finished_after": "2024-03-01T00:00:00Z",
      "status": "success"}, "Both `updated_at` filter and `finished_at` filter can not be specified"),
    ({"finished_after": "2024-03-01T00:00:00Z", "status": "success"},
     "`finished_at` filter requires `finished_at` sort."),
    ({"finished_before": "2024-03-01T00:00:00Z", "order_by": "finished_at"},
     "`finished_at` filter must be combined with `success` status filter."),
    ({"finished_before": "2024-03-01T00:00:00Z", "order_by": "finished_at", "status": "failed"},
     "`finished_at` filter must be combined with `success` status filter."),
    ({"order_by": "finished_at"},
     "`finished_at` sort requires `finished_at` filter or a filter with at least one of the finished statuses."),
    ({"order_by": "finished_at", "status": "running"},
     "`finished_at` sort requires `finished_at` filter or a filter with at least one of the finished statuses."),
]


@pytest.mark.parametrize("params,reason", DEPLOYMENT_REFUSALS, ids=[repr(p) for p, _ in DEPLOYMENT_REFUSALS])
def test_deployment_list_refuses_what_gitlab_refuses(api, deployed, params, reason):
    resp = api.get("/projects/70/deployments", params=params)
    assert resp.status_code == 400 and resp.json() == {"message": f"400 Bad request - {reason}"}


DEPLOYMENT_BAD_VALUES = [
    # Grape: 400 {"error": "..."}
    ({"order_by": "ref"}, "order_by does not have a valid value"),  # removed in GitLab 16.3
    ({"order_by": "name"}, "order_by does not have a valid value"),
    ({"sort": "ASC"}, "sort does not have a valid value"),
    ({"status": "passed"}, "status does not have a valid value"),
    ({"updated_after": "yesterday", "order_by": "updated_at"}, "updated_after is invalid"),
    ({"finished_before": "2024-13-01"}, "finished_before is invalid"),
    ({"status[]": ["success", "created"]}, "status is invalid"),
    ({"status": ""}, "status does not have a valid value"),
    ({"order_by": "x", "sort": "x", "updated_after": "x"},
     "order_by does not have a valid value, sort does not have a valid value, updated_after is invalid"),
]


@pytest.mark.parametrize("params,error", DEPLOYMENT_BAD_VALUES, ids=[repr(p) for p, _ in DEPLOYMENT_BAD_VALUES])
def test_deployment_list_rejects_bad_values(api, deployed, params, error):
    resp = api.get("/projects/70/deployments", params=params)
    assert resp.status_code == 400 and resp.json() == {"error": error}


def test_deployment_list_paginates(gitlab, api):
    project = gitlab.add_project(71, "acme/many-deploys")
    sha = project.branches["main"]
    made = [project.deploy("production", ref="main", sha=sha, at=_at(i)).id for i in range(45)]
    first = api.get("/projects/71/deployments")
    h = first.headers
    assert (h["X-Page"], h["X-Per-Page"], h["X-Total"], h["X-Total-Pages"], h["X-Next-Page"], h["X-Prev-Page"]) == \
        ("1", "20", "45", "3", "2", "")
    seen, resp = _ids(first), first
    while "next" in resp.links:
        resp = api.s.get(resp.links["next"]["url"], timeout=TIMEOUT)
        seen += _ids(resp)
    assert seen == made and resp.headers["X-Page"] == "3" and resp.headers["X-Next-Page"] == ""
    newest = api.get("/projects/71/deployments", params={"sort": "desc", "per_page": 3, "status": "success"})
    assert _ids(newest) == made[::-1][:3] and newest.headers["X-Total"] == "45"
    assert api.get("/projects/71/deployments", params={"per_page": 1000}).headers["X-Per-Page"] == "100"


def test_single_deployment(gitlab, api, deployed):
    project, d = deployed
    one = api.get(f"/projects/70/deployments/{d['p3'].id}")
    assert one.status_code == 200 and one.json() == d["p3"].as_json()
    body = one.json()
    assert (body["iid"], body["ref"], body["sha"], body["status"]) == (3, "main", d["p3"].sha, "failed")
    assert body["environment"]["name"] == "production" and body["deployable"]["status"] == "failed"
    assert body["deployable"]["web_url"] == f"{gitlab.url}/acme/deployed/-/jobs/{d['p3'].deployable_id}"
    assert body["deployable"]["finished_at"] == d["p3"].finished_at
    by_path = api.get(f"/projects/acme%2Fdeployed/deployments/{d['p3'].id}")
    assert by_path.json() == body
    missing = api.get("/projects/70/deployments/999999")
    assert missing.status_code == 404 and missing.json() == {"message": "404 Not found"}
    assert api.get("/projects/70/deployments/abc").json() == {"error": "deployment_id is invalid"}
    other = gitlab.add_project(72, "acme/other")
    assert api.get(f"/projects/72/deployments/{d['p3'].id}").status_code == 404
    assert other.deploy("production", ref="main", sha=other.branches["main"]).id > d["s3"].id  # global ids
    assert api.get("/projects/404/deployments").json() == {"message": "404 Project Not Found"}


def test_deployment_of_a_pipeline_names_it(gitlab, api):
    project = gitlab.add_project(73, "acme/piped-deploy")
    sha = project.branches["main"]
    pl = project.add_pipeline(sha, "main", created_at=_at(0))
    dep = project.deploy("production", ref="main", sha=sha, at=_at(1))
    job = api.get(f"/projects/73/deployments/{dep.id}").json()["deployable"]
    assert job["pipeline"]["id"] == pl.id and job["pipeline"]["web_url"] == pl.web_url
    assert job["commit"]["id"] == sha and job["ref"] == "main" and job["stage"] == "deploy"


def test_environment_list(gitlab, api, deployed):
    project, d = deployed
    project.stop_environment("staging")
    project.add_environment("review/other", state="stopping")
    project.add_environment("feature-flags")
    resp = api.get("/projects/70/environments")
    assert [e["name"] for e in resp.json()] == ["production", "review/feature-x", "staging", "review/other",
                                                "feature-flags"]
    first = resp.json()[0]
    assert set(first) == {"id", "name", "slug", "external_url", "created_at", "updated_at", "tier", "project",
                          "state", "auto_stop_at", "description", "auto_stop_setting"}  # no last_deployment
    assert first["project"]["path_with_namespace"] == "acme/deployed" and first["project"]["id"] == 70
    assert (first["slug"], first["tier"], first["state"]) == ("production", "production", "available")

    def names(params):
        r = api.get("/projects/70/environments", params=params)
        assert r.status_code == 200, r.text
        return [e["name"] for e in r.json()]

    assert names({"states": "available"}) == ["production", "review/feature-x", "feature-flags"]
    assert names({"states": "stopped"}) == ["staging"]
    assert names({"states": "stopping"}) == ["review/other"]
    assert names({"name": "review/feature-x"}) == ["review/feature-x"]
    assert names({"name": "review"}) == []  # exact
    assert names({"search": "rev"}) == ["review/feature-x", "review/other"]  # prefix of the name
    assert names({"search": "FEAT"}) == ["review/feature-x", "feature-flags"]  # or of the name in its folder
    assert names({"search": "oth"}) == ["review/other"]
    assert names({"search": "duction"}) == []  # a prefix, not a substring
    assert names({"search": "review", "states": "available"}) == ["review/feature-x"]
    page = api.get("/projects/70/environments", params={"per_page": 2, "page": 2})
    assert [e["name"] for e in page.json()] == ["staging", "review/other"] and page.headers["X-Total"] == "5"
    assert page.headers["X-Next-Page"] == "3"


@pytest.mark.parametrize("params,status,body", [
    ({"states": "running"}, 400, {"error": "states does not have a valid value"}),
    ({"states": ""}, 400, {"error": "states does not have a valid value"}),
    ({"name": "production", "search": "prod"}, 400, {"error": "name, search cannot be used together"}),
    ({"states": "x", "name": "a", "search": "abc"}, 400,
     {"error": "states does not have a valid value, name, search cannot be used together"}),
    ({"search": "pr"}, 400, {"message": "400 Bad request - Search query is less than 3 characters"}),
])
def test_environment_list_refusals(api, deployed, params, status, body):
    resp = api.get("/projects/70/environments", params=params)
    assert resp.status_code == status and resp.json() == body


def test_environment_search_flag_off(gitlab, api, deployed):
    gitlab.environment_search_api_min_chars = False
    try:
        assert [e["name"] for e in api.get("/projects/70/environments", params={"search": "pr"}).json()] == \
            ["production"]
    finally:
        gitlab.environment_search_api_min_chars = True


def test_single_environment_has_last_deployment(gitlab, api, deployed):
    project, d = deployed
    prod = project.get_environment("production")
    body = api.get(f"/projects/70/environments/{prod.id}").json()
    assert "project" not in body and body["state"] == "available" and body["tier"] == "production"
    last = body["last_deployment"]
    assert last["id"] == d["p2"].id  # the newest success (by finished_at), not the newest deployment (p3 failed)
    assert "environment" not in last and last["deployable"]["id"] == d["p2"].deployable_id
    assert {k: v for k, v in last.items()} == {k: v for k, v in d["p2"].as_json().items() if k != "environment"}
    staging = project.get_environment("staging")
    assert api.get(f"/projects/70/environments/{staging.id}").json()["last_deployment"] is None
    review = project.get_environment("review/feature-x")
    assert api.get(f"/projects/70/environments/{review.id}").json()["last_deployment"]["id"] == d["r1"].id
    missing = api.get("/projects/70/environments/999999")
    assert missing.status_code == 404 and missing.json() == {"message": "404 Not found"}
    assert api.get("/projects/70/environments/prod").json() == {"error": "environment_id is invalid"}
    other = gitlab.add_project(74, "acme/elsewhere")
    assert api.get(f"/projects/74/environments/{prod.id}").status_code == 404
    assert other.add_environment("production").id > prod.id  # ids are global


def test_deployments_survive_their_branch(gitlab, api, deployed):
    project, d = deployed
    rel_sha = d["p2"].sha
    project.delete_branch("release/1")
    project.delete_branch("feature/x")
    assert "release/1" not in project.branches
    listed = api.get("/projects/70/deployments", params={"environment": "production", "status": "success",
                                                         "order_by": "finished_at", "sort": "desc"})
    assert _ids(listed) == [d["p2"].id, d["p1"].id] and listed.json()[0]["ref"] == "release/1"
    commit = api.get(f"/projects/70/repository/commits/{rel_sha}")
    assert commit.status_code == 200 and commit.json()["id"] == rel_sha  # kept around by the deployment
    states = {e["name"]: e["state"] for e in api.get("/projects/70/environments").json()}
    # GitLab stops the environments whose last successful deployment came from a deleted branch:
    # production's (p2, release/1) and the review app's (r1, feature/x).
    assert states == {"production": "stopped", "review/feature-x": "stopped", "staging": "available"}
    review = project.get_environment("review/feature-x")
    assert api.get(f"/projects/70/environments/{review.id}").json()["last_deployment"]["ref"] == "feature/x"


def test_environment_routes_need_auth_take_faults_and_are_counted(gitlab, api, deployed):
    project, d = deployed
    anonymous = Api(gitlab, token=False)
    for path in ("/projects/70/environments", "/projects/70/deployments", f"/projects/70/deployments/{d['p1'].id}",
                 f"/projects/70/environments/{d['p1'].environment_id}"):
        assert anonymous.get(path).status_code == 401
    assert Api(gitlab, token="wrong").get("/projects/70/deployments").status_code == 401
    gitlab.reset_requests()
    gitlab.inject_fault("GET", r"/projects/70/deployments$", 429, times=1, headers={"Retry-After": "1"})
    gitlab.inject_fault("GET", r"/projects/70/environments$", 503, times=1)
    limited = api.get("/projects/70/deployments")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert api.get("/projects/70/deployments").status_code == 200
    assert api.get("/projects/70/environments").status_code == 503
    assert api.get("/projects/70/environments").status_code == 200
    assert gitlab.count("GET", r"/projects/70/deployments$") == 2
    assert gitlab.count("GET", r"/projects/70/environments$") == 2
    assert api.s.post(api.base + "/projects/70/deployments", timeout=TIMEOUT).status_code == 405
    assert api.s.head(api.base + "/projects/70/environments", timeout=TIMEOUT).status_code == 200


# --- Deployment Hook deliveries ---------------------------------------------------------------

def test_deployment_hook_delivery(gitlab, deployed):
    import json

    from tests.support.payloads import DEPLOYMENT_HOOK, deployment_hook, load_payload

    project, d = deployed
    headers, raw = deployment_hook(project, d["r1"], token="s3cret")
    body = json.loads(raw)
    assert headers["X-Gitlab-Event"] == DEPLOYMENT_HOOK == "Deployment Hook"
    assert headers["X-Gitlab-Token"] == "s3cret" and headers["Content-Type"] == "application/json"
    assert headers["X-Gitlab-Instance"] == gitlab.url and headers["User-Agent"].startswith("GitLab/")
    assert headers["X-Gitlab-Event-UUID"] != headers["Idempotency-Key"]
    env = project.get_environment("review/feature-x")
    assert body["object_kind"] == "deployment" and body["status"] == "success"
    assert (body["deployment_id"], body["deployable_id"]) == (d["r1"].id, d["r1"].deployable_id)
    assert (body["environment"], body["environment_slug"], body["environment_tier"]) == \
        ("review/feature-x", env.slug, "development")
    assert body["environment_external_url"] is None and body["project"]["id"] == 70
    assert body["project"]["path_with_namespace"] == "acme/deployed"
    assert body["short_sha"] == d["r1"].sha[:8] and body["commit_url"].endswith("/-/commit/" + d["r1"].sha)
    assert body["deployable_url"] == f"{gitlab.url}/acme/deployed/-/jobs/{d['r1'].deployable_id}"
    assert body["status_changed_at"] == "2024-03-01 00:03:00 UTC" and body["ref"] == "feature/x"
    assert body["user"]["username"] == "emulator" and body["user"]["email"] == "[REDACTED]"
    # The documented shape is the example payload's, key for key.
    _, documented = deployment_hook(project, d["r1"], with_ref=False)
    assert list(json.loads(documented)) == list(load_payload("deployment_success.json"))
    # A retry of one delivery keeps its ids; no secret, no token header.
    again, _ = deployment_hook(project, d["r1"], event_uuid="e-1", idempotency_key="k-1")
    assert (again["X-Gitlab-Event-UUID"], again["Idempotency-Key"]) == ("e-1", "k-1")
    assert "X-Gitlab-Token" not in again


def test_deployment_hook_statuses(gitlab, deployed):
    import json

    from tests.support.payloads import deployment_hook

    project, d = deployed
    p2 = d["p2"]  # running from 1, success at 8
    _, running = deployment_hook(project, p2, status="running")
    assert json.loads(running)["status"] == "running"
    assert json.loads(running)["status_changed_at"] == "2024-03-01 00:01:00 UTC"
    assert json.loads(deployment_hook(project, p2)[1])["status_changed_at"] == "2024-03-01 00:08:00 UTC"
    for label, status in (("p3", "failed"), ("s1", "canceled"), ("r2", "running")):
        assert json.loads(deployment_hook(project, d[label])[1])["status"] == status
    for label in ("s2", "s3"):  # skipped, created: GitLab sends no hook for them
        with pytest.raises(ValueError):
            deployment_hook(project, d[label])
    with pytest.raises(ValueError):
        deployment_hook(project, p2, status="blocked")
    live = project.deploy("production", ref="main", sha=project.branches["main"], status="running", at=_at(20))
    project.update_deployment(live.id, "success", at=_at(21))
    body = json.loads(deployment_hook(project, live, status="running")[1])
    assert body["status_changed_at"] == "2024-03-01 00:20:00 UTC"
    assert json.loads(deployment_hook(project, live)[1])["status_changed_at"] == "2024-03-01 00:21:00 UTC"
    seeded = project.deploy("production", ref="main", sha=project.branches["main"], at=_at(30))  # straight to success
    body = json.loads(deployment_hook(project, seeded, status="running")[1])
    assert body["status_changed_at"] == "2024-03-01 00:30:00 UTC"  # never seen running: its created_at


def test_example_deployment_payloads():
    from tests.support.payloads import EVENTS, PAYLOADS, headers_for, load_payload

    success = load_payload("deployment_success.json")
    for name in ("deployment_running.json", "deployment_failed.json"):
        other = load_payload(name)
        assert list(other) == list(success) and other["object_kind"] == "deployment"
        assert other["commit_url"].endswith("/" + other["commit_url"].rsplit("/", 1)[-1])
        assert other["commit_url"].rsplit("/", 1)[-1].startswith(other["short_sha"])
        assert "ref" not in other  # the documented shape
    running = load_payload("deployment_running.json")
    assert running["status"] == "running" and running["deployment_id"] == success["deployment_id"]
    assert running["status_changed_at"] < success["status_changed_at"]
    failed = load_payload("deployment_failed.json")
    assert failed["status"] == "failed" and failed["environment_slug"] == environment_slug(failed["environment"])
    for name in ("deployment_running.json", "deployment_success.json", "deployment_failed.json"):
        assert EVENTS[name] == "Deployment Hook" and headers_for(name)["X-Gitlab-Event"] == "Deployment Hook"
    assert set(EVENTS) == {p.name for p in PAYLOADS.glob("*.json")} - {"headers.json"}
