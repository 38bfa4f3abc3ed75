"""Registry.delete_tags: many tags of one repository in about two requests each, on the real
docker-registry 2.8 (no OCI delete by tag: the shared-tombstone fallback).

The safety property is the same as delete_tag's: exactly the given tags go, never a digest
another tag points at (`latest` on the same image stays).
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.faultproxy import FaultProxy
from workers import registry as reg

TOMBSTONE = r"/manifests/sha256:"


def test_deletes_exactly_the_given_tags_with_one_tombstone(gitlab, make_client, shop):
    rc = gitlab.registry_client
    doomed = [f"feature-{i}" for i in range(12)]
    shared = rc.push_image(shop, doomed[:6] + ["latest", "v1.0"], content="shared")
    own = {t: rc.push_image(shop, [t], content=f"own-{t}") for t in doomed[6:]}
    rc.push_image(shop, ["warm-up"])
    client = make_client()
    client.delete_tag(shop, "warm-up")  # finds out, once, that this registry refuses DELETE by tag
    client.recorder.clear()

    results = client.delete_tags(shop, doomed + ["no-such-tag"])

    assert results[:6] == [("deleted", shared)] * 6
    assert results[6:12] == [("deleted", own[t]) for t in doomed[6:]]
    assert results[12] == ("absent", None)
    assert sorted(rc.tags(shop)) == ["latest", "v1.0"]
    assert rc.resolve(shop, "latest") == shared and rc.manifest(shop, shared) is not None
    # Each tag: one HEAD, one PUT of the same tombstone; then one DELETE of that tombstone's digest.
    puts = [p for m, p, s in client.recorder.seen if m == "PUT" and "/manifests/" in p]
    assert len(puts) == 12
    deletes = [p for m, p, s in client.recorder.seen if m == "DELETE" and "/manifests/sha256:" in p
               and reg.NO_SUCH_DIGEST not in p]
    assert len(deletes) == 1 and shared not in deletes[0]
    heads = client.recorder.count("HEAD", "/manifests/")
    assert heads == 13  # one per tag (the repository's dummy config is in place since the warm-up)


def test_a_tag_pushed_again_after_its_overwrite_keeps_the_new_push(gitlab, gitlab_stack, shop):
    rc = gitlab.registry_client
    rc.push_image(shop, ["feature-a", "feature-b", "warm-up"], content="old")
    proxy = FaultProxy(gitlab_stack.registry.url)  # the client talks to the registry through it
    client = reg.Registry(proxy.url, username="anyone", password=gitlab.token, timeout=10, backoff=0.01)
    fresh = {}
    try:
        client.delete_tag(shop, "warm-up")
        # The tombstone's DELETE is held at the proxy; meanwhile CI pushes feature-a again, after its
        # overwrite (both tags are on the tombstone once feature-b's PUT is answered).
        hold = 5.0  # room for the push on a loaded machine
        proxy.inject_fault("DELETE", TOMBSTONE, delay=hold)
        deleting = threading.Thread(target=client.delete_tags, args=(shop, ["feature-a", "feature-b"]))
        deleting.start()
        overwritten = ("PUT", f"/v2/{shop}/manifests/feature-b", 201)
        deadline = time.monotonic() + 30
        while overwritten not in proxy.requests and deleting.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)
        fresh["digest"] = rc.push_image(shop, ["feature-a"], content="new")
        pushed = time.monotonic()
        deleting.join(timeout=60)
        held = [e for e in proxy.entries if e.method == "DELETE" and e.fault]
        assert len(held) == 1 and pushed < held[0].arrived + hold  # the push landed while the DELETE waited
    finally:
        client.close()
        proxy.stop()
    assert rc.resolve(shop, "feature-a") == fresh["digest"]
    assert rc.resolve(shop, "feature-b") is None


def test_batches_and_nothing_written_where_nothing_exists(gitlab, make_client, shop):
    rc = gitlab.registry_client
    doomed = [f"f-{i}" for i in range(10)]
    rc.push_image(shop, doomed + ["keep"], content="ten")
    client = make_client(tombstone_batch=4)
    assert [r[0] for r in client.delete_tags(shop, doomed)] == ["deleted"] * 10
    assert sorted(rc.tags(shop)) == ["keep"]
    tombstone_deletes = [p for m, p, s in client.recorder.seen if m == "DELETE" and "/manifests/sha256:" in p
                         and reg.NO_SUCH_DIGEST not in p]
    assert len(tombstone_deletes) == 3  # batches of 4, 4 and 2 (the first tag, whose DELETE by tag was refused, too)
    assert client.recorder.count("DELETE", "/manifests/f-", 400) == 1  # probed once
    client.recorder.clear()
    assert client.delete_tags("acme/shop/never-pushed", ["a", "b"]) == [("absent", None)] * 2
    assert client.recorder.count("PUT") == 0 and client.recorder.count("POST") == 0


def test_a_refused_token_raises(gitlab, make_client, shop):
    gitlab.registry_client.push_image(shop, ["x"])
    client = make_client(password="wrong")
    with pytest.raises(reg.AuthError):
        client.delete_tags(shop, ["x"])
