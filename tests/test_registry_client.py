"""The registry client against a real docker-registry 2.8 and the emulator's /jwt/auth.

No mocks: tokens come from the GitLab emulator, the registry is the real CNCF
distribution 2.8 (which refuses DELETE by tag, so deletes take the tombstone
fallback). Requests are counted through a requests response hook on the client's
session, because the registry's own access log is off.
"""

from __future__ import annotations

import hashlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from workers import registry as reg


def tokens_issued(gitlab) -> int:
    return gitlab.count("GET", r"^/jwt/auth$")


# -- pure helpers ---------------------------------------------------------------------

def test_parses_bearer_challenge_with_quoted_commas_scope_and_error():
    header = ('Bearer realm="https://gitlab.example.com/jwt/auth",service="container_registry",'
              'scope="repository:acme/shop:pull,push",error="insufficient_scope"')
    challenge = reg.bearer_challenge(header)
    assert challenge.realm == "https://gitlab.example.com/jwt/auth"
    assert challenge.service == "container_registry"
    assert challenge.params["scope"] == "repository:acme/shop:pull,push"
    assert challenge.params["error"] == "insufficient_scope"


def test_parses_several_challenges_escapes_and_bare_values():
    header = 'Basic realm="Registry, \\"quoted\\"", Bearer Realm=https://h/jwt/auth , service=svc'
    basic, bearer = reg.parse_challenges(header)
    assert basic.scheme == "Basic" and basic.params == {"realm": 'Registry, "quoted"'}
    assert reg.bearer_challenge(header).params == {"realm": "https://h/jwt/auth", "service": "svc"}
    assert reg.bearer_challenge('Basic realm="x"') is None
    assert reg.parse_challenges("") == [] and reg.parse_challenges(None) == []


def test_registry_base_splits_locations():
    assert reg.registry_base("registry.example.com/group/project/worker") == (
        "https://registry.example.com", "group/project/worker")
    assert reg.registry_base("127.0.0.1:5000/acme/shop", scheme="http") == ("http://127.0.0.1:5000", "acme/shop")
    assert reg.registry_base("http://127.0.0.1:5000/acme/shop") == ("http://127.0.0.1:5000", "acme/shop")
    with pytest.raises(ValueError):
        reg.registry_base("registry.example.com")


def test_next_link_resolves_relative_and_absolute_urls():
    response = requests.Response()
    response.url = "https://r.example.com/v2/acme/shop/tags/list?n=2"
    response.headers["Link"] = '</v2/acme/shop/tags/list?last=b&n=2>; rel="next"'
    assert reg.next_link(response) == "https://r.example.com/v2/acme/shop/tags/list?last=b&n=2"
    response.headers["Link"] = '<https://r.example.com/v2/acme/shop/tags/list?last=d&n=2>; rel="next"'
    assert reg.next_link(response) == "https://r.example.com/v2/acme/shop/tags/list?last=d&n=2"
    del response.headers["Link"]
    assert reg.next_link(response) is None


def test_refuses_references_that_are_not_tags(make_client):
    client = make_client()
    with pytest.raises(ValueError):
        client.delete_tag("acme/shop", "sha256:" + "a" * 64)  # a digest reference would hit every tag
    with pytest.raises(ValueError):
        client.resolve("acme/../shop", "v1")
    assert client.recorder.seen == []


# -- tokens -----------------------------------------------------------------------------

def test_one_token_per_repository_is_cached(gitlab, make_client, shop):
    other = gitlab.add_project(102, "acme/other")
    other.add_registry_repository("")
    gitlab.registry_client.push_image(shop, ["v1", "v2"])
    gitlab.registry_client.push_image("acme/other", ["v1"])
    client = make_client()
    gitlab.reset_requests()

    for _ in range(5):
        assert client.resolve(shop, "v1")
    assert sorted(client.tags(shop)) == ["v1", "v2"]
    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(lambda _: client.resolve(shop, "v2"), range(16)))
    assert tokens_issued(gitlab) == 1
    assert client.recorder.count("GET", "/v2/", 401) == 1  # the realm is learnt once

    assert client.resolve("acme/other", "v1")
    assert tokens_issued(gitlab) == 2
    assert client.recorder.count("GET", "/v2/", 401) == 1


def test_token_is_renewed_before_it_expires(gitlab, make_client, shop):
    # The emulator always issues 300 s tokens; a movable clock stands in for waiting.
    skew = [0.0]
    client = make_client(clock=lambda: time.monotonic() + skew[0])
    gitlab.registry_client.push_image(shop, ["v1"])
    gitlab.reset_requests()

    assert client.resolve(shop, "v1")
    skew[0] = 250.0  # still before the renewal point: 300 s minus a 30 s margin
    assert client.resolve(shop, "v1")
    assert tokens_issued(gitlab) == 1
    skew[0] = 275.0
    assert client.resolve(shop, "v1")
    assert tokens_issued(gitlab) == 2
    assert client.recorder.count("HEAD", "/manifests/", 401) == 0  # renewed before any refusal


def test_expired_token_refused_by_the_registry_is_renewed_once(gitlab, gitlab_stack, make_client, shop):
    client = make_client()
    digest = gitlab.registry_client.push_image(shop, ["v1"])
    assert client.resolve(shop, "v1") == digest
    # Swap the cached token for a genuinely expired one, signed by the registry's own
    # issuer: only the registry's verdict (401 invalid_token) can make the client renew.
    expired = gitlab_stack.registry.issuer.issue(
        "anyone", [{"type": "repository", "name": shop, "actions": ["pull", "push", "delete"]}], ttl=-120)
    client._tokens[shop].value = expired
    gitlab.reset_requests()
    client.recorder.clear()

    assert client.resolve(shop, "v1") == digest
    assert tokens_issued(gitlab) == 1
    assert client.recorder.count("HEAD", "/manifests/v1", 401) == 1
    assert client.recorder.count("HEAD", "/manifests/v1", 200) == 1


def test_wrong_password_is_an_auth_error_without_the_secret(gitlab, make_client, shop):
    secret = "glpat-wrong-secret-value"
    client = make_client(password=secret)
    with pytest.raises(reg.AuthError) as caught:
        client.resolve(shop, "v1")
    message = str(caught.value)
    assert caught.value.status == 401
    assert "refused the credentials" in message and "anyone" in message
    assert secret not in message and gitlab.token not in message
    assert tokens_issued(gitlab) == 1  # refused credentials are not retried


def test_repository_of_another_project_is_refused(gitlab, make_client, shop):
    # "other/secret" exists in the registry, but no project of this user owns it: the
    # token service grants no actions and the registry answers 401 insufficient_scope.
    gitlab.registry_client.push_image("other/secret", ["v1"])
    client = make_client()
    with pytest.raises(reg.AuthError) as caught:
        client.resolve("other/secret", "v1")
    message = str(caught.value)
    assert "insufficient_scope" in message and "Maintainer" in message and "api-scoped" in message
    assert tokens_issued(gitlab) == 2  # the first token, then exactly one renewal
    assert client.recorder.count("HEAD", "/manifests/v1", 401) == 2
    with pytest.raises(reg.AuthError):
        client.delete_tag("other/secret", "v1")
    assert gitlab.registry_client.resolve("other/secret", "v1")  # untouched


@pytest.mark.parametrize("status, headers, sleeps", [
    (500, {}, 2),
    (429, {"Retry-After": "1"}, 2),
])
def test_token_service_faults_are_retried(gitlab, make_client, shop, status, headers, sleeps):
    waited: list[float] = []
    client = make_client(sleep=waited.append)
    gitlab.registry_client.push_image(shop, ["v1"])
    gitlab.inject_fault("GET", r"^/jwt/auth$", status, times=2, headers=headers)
    assert client.resolve(shop, "v1")
    assert client.calls[status] == 2 and len(waited) == sleeps
    if headers:
        assert waited == [1.0, 1.0]


def test_token_service_long_retry_after_fails_at_once(gitlab, make_client, shop):
    waited: list[float] = []
    client = make_client(sleep=waited.append)
    gitlab.inject_fault("GET", r"^/jwt/auth$", 429, times=1, headers={"Retry-After": "3600"})
    with pytest.raises(reg.TransientError, match="retry after 3600"):
        client.resolve(shop, "v1")
    assert waited == []


def test_token_service_down_is_transient(gitlab, make_client, shop):
    client = make_client(sleep=lambda s: None, attempts=3)
    gitlab.inject_fault("GET", r"^/jwt/auth$", 503, times=-1)
    with pytest.raises(reg.TransientError, match="3 attempts"):
        client.resolve(shop, "v1")


# -- reading ----------------------------------------------------------------------------

def test_lists_many_tags_and_nothing_for_an_unknown_repository(gitlab, make_client, shop):
    names = [f"t-{i:03d}" for i in range(150)]
    gitlab.registry_client.push_image(shop, names + ["latest"], content="many")
    client = make_client()
    assert sorted(client.tags(shop, page_size=50)) == sorted(names + ["latest"])
    assert list(client.tags("acme/shop/never-pushed")) == []


def test_resolves_tags_to_their_digest(gitlab, make_client, shop):
    digest = gitlab.registry_client.push_image(shop, ["v1", "latest"], content="same")
    client = make_client()
    assert client.resolve(shop, "v1") == digest == client.resolve(shop, "latest")
    assert client.resolve(shop, "nope") is None
    assert client.resolve("acme/shop/never-pushed", "v1") is None


# -- deleting ---------------------------------------------------------------------------

def test_delete_keeps_latest_and_every_other_tag_on_the_same_digest(gitlab, make_client, shop):
    """THE safety test: deleting a tag must never delete its digest."""
    rc = gitlab.registry_client
    original = rc.push_image(shop, ["feature-x", "latest", "v1.0"], content="shared")
    client = make_client()

    assert client.delete_tag(shop, "feature-x", expected_digest=original) == ("deleted", original)

    assert rc.resolve(shop, "feature-x") is None
    assert rc.resolve(shop, "latest") == original
    assert rc.resolve(shop, "v1.0") == original
    assert rc.manifest(shop, original) is not None
    assert sorted(rc.tags(shop)) == ["latest", "v1.0"]
    # The tombstone was deleted by its own digest: it is gone, and it was never the original.
    puts = [p for m, p, s in client.recorder.seen if m == "PUT" and "/manifests/" in p]
    deletes = [p.rsplit("/", 1)[-1] for m, p, s in client.recorder.seen
               if m == "DELETE" and "/manifests/sha256:" in p and s == 202]
    assert puts == [f"/v2/{shop}/manifests/feature-x"]
    assert len(deletes) == 1 and deletes[0] != original
    assert rc.manifest(shop, deletes[0]) is None


def test_first_delete_tries_oci_then_remembers_it_is_unsupported(gitlab, make_client, shop):
    rc = gitlab.registry_client
    rc.push_image(shop, ["a", "b", "c", "latest"], content="abc")
    client = make_client()

    assert client.delete_tag(shop, "a")[0] == "deleted"
    assert client.recorder.count("DELETE", "/manifests/a", 400) == 1  # 2.8: DIGEST_INVALID
    assert client.delete_tag(shop, "b")[0] == "deleted"
    assert client.delete_tag(shop, "c")[0] == "deleted"
    for tag in "abc":
        assert client.recorder.count("DELETE", f"/manifests/{tag}") == (1 if tag == "a" else 0)
    assert sorted(rc.tags(shop)) == ["latest"]


def test_changed_tag_is_left_alone(gitlab, make_client, shop):
    rc = gitlab.registry_client
    old = rc.push_image(shop, ["feature-y"], content="old")
    new = rc.push_image(shop, ["feature-y"], content="new")  # CI pushed again
    client = make_client()
    assert client.delete_tag(shop, "feature-y", expected_digest=old) == ("changed", new)
    assert rc.resolve(shop, "feature-y") == new
    assert client.recorder.count("PUT") == 0 and client.recorder.count("POST") == 0


def test_unknown_tag_is_absent_and_nothing_is_written(gitlab, make_client, shop):
    gitlab.registry_client.push_image(shop, ["latest"])
    client = make_client()
    assert client.delete_tag(shop, "no-such-tag") == ("absent", None)
    assert client.delete_tag("acme/shop/never-pushed", "v1") == ("absent", None)
    assert client.recorder.count("PUT") == 0 and client.recorder.count("POST") == 0
    assert list(client.tags("acme/shop/never-pushed")) == []  # no repository was created


def test_concurrent_deletes_in_one_repository(gitlab, make_client, shop):
    rc = gitlab.registry_client
    doomed = [f"feature-{i}" for i in range(8)]
    shared = rc.push_image(shop, doomed[:4] + ["latest"], content="shared")
    for tag in doomed[4:]:
        rc.push_image(shop, [tag])
    rc.push_image(shop, ["main", "keep-me"])
    client = make_client()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda t: client.delete_tag(shop, t), doomed))

    assert [r[0] for r in results] == ["deleted"] * 8
    assert sorted(rc.tags(shop)) == ["keep-me", "latest", "main"]
    assert rc.resolve(shop, "latest") == shared
    assert tokens_issued(gitlab) == 1
    assert client.recorder.count("DELETE", "/manifests/feature-", 400) == 1  # probed once, not 8 times


def test_dummy_config_blob_is_uploaded_once_per_repository(gitlab, make_client, shop):
    rc = gitlab.registry_client
    rc.push_image(shop, [f"f-{i}" for i in range(6)], content="six")
    gitlab.add_project(103, "acme/two").add_registry_repository("")
    rc.push_image("acme/two", ["f-0", "f-1"])
    client = make_client()

    for i in range(6):
        assert client.delete_tag(shop, f"f-{i}")[0] == "deleted"
    assert client.recorder.count("POST", f"/v2/{shop}/blobs/uploads/") == 1
    assert client.recorder.count("HEAD", f"/v2/{shop}/blobs/") == 1
    for tag in ("f-0", "f-1"):
        assert client.delete_tag("acme/two", tag)[0] == "deleted"
    assert client.recorder.count("POST", "/v2/acme/two/blobs/uploads/") == 1
    config = hashlib.sha256(reg.DUMMY_CONFIG).hexdigest()
    assert rc.blob(shop, f"sha256:{config}") == reg.DUMMY_CONFIG


def test_leftover_tombstone_of_an_interrupted_run_is_finished(gitlab, make_client, shop):
    rc = gitlab.registry_client
    original = rc.push_image(shop, ["feature-z", "latest"], content="z")
    client = make_client()
    # Reproduce a run that stopped between the tombstone PUT and its DELETE.
    tombstone = client._put_tombstone(shop, "feature-z", client._dummy_config(shop))
    assert rc.resolve(shop, "feature-z") == tombstone

    assert client.delete_tag(shop, "feature-z", expected_digest=original) == ("deleted", None)
    assert rc.resolve(shop, "feature-z") is None
    assert rc.resolve(shop, "latest") == original
    assert rc.manifest(shop, tombstone) is None
