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
