"""Security guarantees of the intake and the worker, each proven on real parts.

- body size: MAX_BODY_BYTES (1 MiB by default) holds for Content-Length and for chunked
  bodies, through the test client and through gunicorn;
- JSON depth: nesting deeper than 64 is a 400 before json.loads runs, never a 500;
- signed deliveries (WEBHOOK_SIGNING_KEY, Standard Webhooks): required, checked against the
  raw body before it is parsed, 5-minute tolerance both ways, a replayed webhook-id is 409;
- ALLOWED_PROJECTS: other projects are acknowledged and ignored by the web process, and the
  worker refuses them again with what GitLab says about the project;
- URL encoding: whatever a payload names a branch, every request the worker makes stays
  under /api/v4/projects/<that project>/ with the branch as one percent-encoded segment
  (GitLab emulator's request log), and under /v2/<the project's repositories>/ in registry
  mode (a recording proxy in front of the real docker-registry);
- secrets: a whole flow through gunicorn and a worker leaves no secret, in any encoding, in
  logs, answers, RQ jobs or anything else in Redis.

Encoding hole found and fixed here (workers/gitlab.py `encode`): a branch named ".." (or a
target branch, which the worker also looks up) was sent as `.../repository/branches/..`.
quote() leaves dots alone and requests even turns "%2E" back into ".", so GitLab, or any
proxy before it, resolves that to `/api/v4/projects/<id>/repository/`. encode() now
refuses "", "." and ".." (and lone surrogates) as NotFound without making a request.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import io
import json
import pickle
import re
import threading
import time
import zlib
from urllib.parse import quote, quote_plus, unquote

import pytest
import redis
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from rq.job import Job
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from hooks import events, signing
from hooks.views import REPLAY_WINDOW
from tests.support.queue import job_ids
from tests.support.service import SECRET as E2E_SECRET
from tests.support.service import Service
from tests.support.shop import make_shop, merge_payload
from tests.support.webapp import body_of, headers, keyspace, make_app
from workers import cleanup, rules
from workers.common import allowlist
from workers.gitlab import GitLab, encode
from workers.common.settings import ConfigError, Settings

MIB = 1024 * 1024
MERGE = json.loads(body_of("merge_request_merge.json"))
PUSH = json.loads(body_of("push_branch_deleted.json"))
PIPELINE = json.loads(body_of("pipeline_merge_request.json"))

KEY_BYTES = b"tagsweeper-tests-signing-key-32b"
SIGNING_KEY = "whsec_" + base64.b64encode(KEY_BYTES).decode()
OTHER_KEY_BYTES = b"another-signing-key-for-rotation"
OTHER_SIGNING_KEY = "whsec_" + base64.b64encode(OTHER_KEY_BYTES).decode()


def post_json(client, payload, event="Merge Request Hook", **hdrs):
    return client.post("/hooks/gitlab", data=json.dumps(payload).encode(), headers=headers(event, **hdrs))


def assert_json_error(resp, status, fragment):
    assert resp.status_code == status, resp.get_data(as_text=True)[:300]
    assert resp.is_json and set(resp.json) == {"error"}, resp.get_data(as_text=True)[:300]
    assert fragment in resp.json["error"]


def nested(depth: int) -> object:
    """`depth` levels of arrays and objects, alternating, built without recursion."""
    value: object = "leaf"
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


# --- 2. body size --------------------------------------------------------------------------------


def padded(payload: dict, size: int) -> bytes:
    """The payload as JSON, padded with trailing whitespace to exactly `size` bytes."""
    data = json.dumps(payload).encode()
    assert len(data) <= size
    return data + b" " * (size - len(data))


def test_default_limit_is_one_mib_for_content_length_and_chunked_bodies(redis_url, conn):
    client = make_app(redis_url).test_client()
    assert client.application.config["MAX_BODY_BYTES"] == MIB
    exact = padded(MERGE, MIB)
    resp = client.post("/hooks/gitlab", data=exact, headers=headers())
    assert resp.status_code == 202, resp.json
    # A server-terminated stream (gunicorn's, chunked or not) exactly at the limit: accepted too.
    # (It was a 413: Werkzeug's capped stream refuses the read at the limit even when the body ends.)
    exact_push = padded(PUSH, MIB)
    resp = client.post("/hooks/gitlab", input_stream=io.BytesIO(exact_push), headers=headers("Push Hook"),
                       environ_overrides={"wsgi.input_terminated": True})
    assert resp.status_code == 202, resp.json
    snapshot = keyspace(conn)
    over = exact + b" "
    assert_json_error(client.post("/hooks/gitlab", data=over, headers=headers()), 413, "limit of 1048576 bytes")
    chunked = client.post("/hooks/gitlab", input_stream=io.BytesIO(over), headers=headers(),
                          environ_overrides={"wsgi.input_terminated": True})
    assert_json_error(chunked, 413, "limit of 1048576 bytes")
    # Size is checked before the token: an unauthenticated giant is refused unread, as 413.
    assert_json_error(client.post("/hooks/gitlab", data=over, headers=headers(**{"X-Gitlab-Token": "no"})),
                      413, "MAX_BODY_BYTES")
    assert keyspace(conn) == snapshot


@pytest.fixture
def web(tmp_path, redis_url):
    """gunicorn serving create_app(), as in production (no worker: jobs stay queued)."""
    svc = Service(tmp_path / "web", redis_url, "http://127.0.0.1:9", "unused-token").start_web()
    yield svc
    svc.stop()


def chunks(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start:start + size]


@pytest.mark.e2e
def test_gunicorn_enforces_the_limit_on_chunked_bodies(web, conn):
    hdrs = {"Content-Type": "application/json", "X-Gitlab-Event": "Merge Request Hook",
            "X-Gitlab-Token": E2E_SECRET}
    exact = padded(MERGE, MIB)
    ok = requests.post(web.url + "/hooks/gitlab", data=chunks(exact), headers=hdrs, timeout=30)
    assert ok.request.headers.get("Transfer-Encoding") == "chunked"
    assert ok.status_code == 202, ok.text
    jobs = job_ids(conn)
    assert jobs == [ok.json()["job_id"]]
    over = requests.post(web.url + "/hooks/gitlab", data=chunks(exact + b"  "), headers=hdrs, timeout=30)
    assert over.request.headers.get("Transfer-Encoding") == "chunked"
    assert over.status_code == 413 and over.json() == {
        "error": "body is larger than the limit of 1048576 bytes (MAX_BODY_BYTES)"}
    # With a Content-Length, exactly the limit passes and one byte more does not.
    exact_push = padded(PUSH, MIB)
    push_hdrs = dict(hdrs, **{"X-Gitlab-Event": "Push Hook"})
    ok = requests.post(web.url + "/hooks/gitlab", data=exact_push, headers=push_hdrs, timeout=30)
    assert ok.request.headers.get("Content-Length") == str(MIB)
    assert ok.status_code == 202, ok.text
    jobs = job_ids(conn)
    assert jobs[-1] == ok.json()["job_id"]
    declared = requests.post(web.url + "/hooks/gitlab", data=exact + b" ", headers=hdrs, timeout=30)
    assert declared.status_code == 413 and "MAX_BODY_BYTES" in declared.json()["error"]
    # Deep nesting through the real server: a clear 400, and the server still answers.
    deep = requests.post(web.url + "/hooks/gitlab", data=b"[" * 500_000 + b"]" * 500_000, headers=hdrs,
                         timeout=30)
    assert deep.status_code == 400 and "nested deeper than 64" in deep.json()["error"]
    assert requests.get(web.url + "/healthz", timeout=5).status_code == 200
    assert job_ids(conn) == jobs


# --- 2. JSON depth ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    b"[" * 65 + b"]" * 65,
    b"{\"a\":" * 65 + b"1" + b"}" * 65,
    b"[" * 1_000_000,                       # unbalanced, at the size limit
    json.dumps({"object_kind": "merge_request", "x": nested(70)}).encode(),
], ids=["arrays-65", "objects-65", "million-unclosed", "inside-a-payload"])
def test_nesting_deeper_than_64_is_a_400_before_parsing(redis_url, conn, body):
    client = make_app(redis_url, MAX_BODY_BYTES=2 * MIB).test_client()
    snapshot = keyspace(conn)
    assert_json_error(client.post("/hooks/gitlab", data=body, headers=headers()), 400, "nested deeper than 64")
    assert keyspace(conn) == snapshot


def test_nesting_of_64_is_parsed(redis_url):
    payload = copy.deepcopy(MERGE)
    payload["extra"] = nested(63)  # the payload object is level 1
    assert not events.json_too_deep(json.dumps(payload).encode(), 64)
    resp = post_json(make_app(redis_url).test_client(), payload)
    assert resp.status_code == 202, resp.json


def test_brackets_inside_strings_do_not_count():
    text = json.dumps({"a": "[" * 1000 + "\"{" * 100 + "\\"}).encode()
    assert not events.json_too_deep(text, 64)
    assert events.json_too_deep(b'{"k": "\\"", "v": ' + b"[" * 64 + b"]" * 64 + b"}", 64)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                max_size=3),
                    max_leaves=30))
def test_depth_scan_agrees_with_the_parsed_value(value):
    def depth(v, level=0):
        if isinstance(v, list):
            return max([depth(x, level + 1) for x in v], default=level + 1)
        if isinstance(v, dict):
            return max([depth(x, level + 1) for x in v.values()], default=level + 1)
        return level

    data = json.dumps(value).encode()
    for limit in (0, 1, 2, 3, 5):
        assert events.json_too_deep(data, limit) == (depth(value) > limit)


# --- 3. signed deliveries ---------------------------------------------------------------------------


def test_standard_webhooks_reference_vector():
    """The example of the Standard Webhooks spec (and the svix libraries' tests)."""
    key = signing.parse_keys("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")[0]
    assert signing.sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}') == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert signing.verify({"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
                           "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="},
                          b'{"test": 2432232314}', [key], now=1614265330 + 299) == "msg_p5jXN8AQM9LWM0D4loKWxJek"


def signed(body: bytes, key: bytes = KEY_BYTES, msg_id: str | None = None, ts: int | None = None,
           event: str = "Merge Request Hook", **extra) -> dict:
    msg_id = msg_id or f"msg_{hashlib.sha256(body + str(time.time_ns()).encode()).hexdigest()[:24]}"
    ts = int(time.time()) if ts is None else ts
    h = headers(event, **extra)
    h.update({"webhook-id": msg_id, "webhook-timestamp": str(ts),
              "webhook-signature": signing.sign(key, msg_id, ts, body)})
    return h


@pytest.fixture
def signed_client(redis_url):
    return make_app(redis_url, WEBHOOK_SIGNING_KEY=SIGNING_KEY).test_client()


def test_a_signed_delivery_is_accepted_and_its_replay_is_409(signed_client, conn):
    body = body_of("merge_request_merge.json")
    h = signed(body, msg_id="msg_replay_me")
    first = signed_client.post("/hooks/gitlab", data=body, headers=h)
    assert first.status_code == 202, first.json
    snapshot = keyspace(conn)
    again = signed_client.post("/hooks/gitlab", data=body, headers=h)
    assert_json_error(again, 409, "webhook-id was already received")
    assert keyspace(conn) == snapshot  # no job, no new claim
    # The id is remembered under a digest, for as long as the timestamp window lasts.
    key = "tagsweeper:webhook-id:" + hashlib.sha256(b"msg_replay_me").hexdigest()
    assert 0 < conn.ttl(key) <= REPLAY_WINDOW == 600
    # A replay with a fresh timestamp needs a fresh signature, which only the key makes.
    stale_sig = dict(h, **{"webhook-timestamp": str(int(time.time()) + 5)})
    assert_json_error(signed_client.post("/hooks/gitlab", data=body, headers=stale_sig), 401,
                      "webhook-signature does not match")


def test_an_ignored_signed_delivery_also_claims_its_id(signed_client):
    body = body_of("merge_request_close.json")
    h = signed(body)
    assert signed_client.post("/hooks/gitlab", data=body, headers=h).json["status"] == "ignored"
    assert signed_client.post("/hooks/gitlab", data=body, headers=h).status_code == 409


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_each_signature_header_is_required(signed_client, conn, drop):
    body = body_of("merge_request_merge.json")
    h = signed(body)
    del h[drop]
    snapshot = keyspace(conn)
    assert_json_error(signed_client.post("/hooks/gitlab", data=body, headers=h), 401, f"{drop} is missing")
    assert keyspace(conn) == snapshot


def tamper(h: dict, body: bytes, what: str) -> tuple[dict, bytes]:
    h = dict(h)
    if what == "body":
        return h, body.replace(b"Feature/Checkout-Flow", b"Feature/Checkout-Flox")
    if what == "id":
        h["webhook-id"] += "x"
    elif what == "timestamp":
        h["webhook-timestamp"] = str(int(h["webhook-timestamp"]) - 1)
    elif what == "signature":
        raw = bytearray(base64.b64decode(h["webhook-signature"][3:]))
        raw[0] ^= 1
        h["webhook-signature"] = "v1," + base64.b64encode(bytes(raw)).decode()
    elif what == "other-key":
        h["webhook-signature"] = signing.sign(OTHER_KEY_BYTES, h["webhook-id"], h["webhook-timestamp"], body)
    elif what == "not-base64":
        h["webhook-signature"] = "v1,!!!not-base64!!!"
    elif what == "no-comma":
        h["webhook-signature"] = "v1" + h["webhook-signature"][3:]
    elif what == "wrong-version":
        h["webhook-signature"] = "v2" + h["webhook-signature"][2:]
    elif what == "asymmetric-only":
        h["webhook-signature"] = "v1a," + h["webhook-signature"][3:]
    elif what == "too-many":
        h["webhook-signature"] = " ".join(["v1,AAAA"] * 17 + [h["webhook-signature"]])
    return h, body


@pytest.mark.parametrize("what", ["body", "id", "timestamp", "signature", "other-key", "not-base64", "no-comma",
                                  "wrong-version", "asymmetric-only", "too-many"])
def test_a_tampered_delivery_is_401(signed_client, conn, what):
    body = body_of("merge_request_merge.json")
    h, data = tamper(signed(body), body, what)
    snapshot = keyspace(conn)
    resp = signed_client.post("/hooks/gitlab", data=data, headers=h)
    assert_json_error(resp, 401, "webhook-signature")
    assert keyspace(conn) == snapshot


@pytest.mark.parametrize("offset, ok", [(-290, True), (290, True), (-310, False), (310, False),
                                        (-86400, False), (10**12, False)])
def test_timestamp_tolerance_is_five_minutes_both_ways(signed_client, offset, ok):
    body = body_of("merge_request_merge.json")
    resp = signed_client.post("/hooks/gitlab", data=body, headers=signed(body, ts=int(time.time()) + offset))
    if ok:
        assert resp.status_code == 202, resp.json
    else:
        assert_json_error(resp, 401, "webhook-timestamp")


@pytest.mark.parametrize("value", ["", "-1", "1e9", "12.5", "١٢٣٤٥٦٧٨٩٠", "9" * 40, "now"])
def test_a_malformed_timestamp_is_401(signed_client, value):
    body = body_of("merge_request_merge.json")
    h = signed(body)
    h["webhook-timestamp"] = value
    resp = signed_client.post("/hooks/gitlab", data=body, headers=h)
    assert_json_error(resp, 401, "webhook-timestamp")


def test_one_good_signature_among_several_is_enough(signed_client):
    body = body_of("merge_request_merge.json")
    h = signed(body)
    good = h["webhook-signature"]
    h["webhook-signature"] = f"v1a,c29tZXRoaW5n v1,{base64.b64encode(b'x' * 32).decode()} {good}"
    assert signed_client.post("/hooks/gitlab", data=body, headers=h).status_code == 202


def test_two_keys_during_a_rotation(redis_url):
    client = make_app(redis_url, WEBHOOK_SIGNING_KEY=f"{SIGNING_KEY}, {OTHER_SIGNING_KEY}").test_client()
    body = body_of("merge_request_merge.json")
    assert client.post("/hooks/gitlab", data=body, headers=signed(body, key=OTHER_KEY_BYTES)).status_code == 202
    pipe = body_of("pipeline_merge_request.json")
    assert client.post("/hooks/gitlab", data=pipe, headers=signed(pipe, event="Pipeline Hook")).status_code == 202


def test_the_token_is_still_required_when_signing_is_on(signed_client, conn):
    body = body_of("merge_request_merge.json")
    snapshot = keyspace(conn)
    for token in (None, "wrong"):
        h = signed(body)
        if token is None:
            del h["X-Gitlab-Token"]
        else:
            h["X-Gitlab-Token"] = token
        assert_json_error(signed_client.post("/hooks/gitlab", data=body, headers=h), 401, "X-Gitlab-Token")
    assert keyspace(conn) == snapshot


def test_the_signature_is_checked_before_the_body_is_parsed(signed_client):
    garbage = b"\xff{not json"
    unsigned = headers()
    assert_json_error(signed_client.post("/hooks/gitlab", data=garbage, headers=unsigned), 401, "missing")
    h = signed(garbage)
    h["webhook-signature"] = signing.sign(OTHER_KEY_BYTES, h["webhook-id"], h["webhook-timestamp"], garbage)
    assert_json_error(signed_client.post("/hooks/gitlab", data=garbage, headers=h), 401, "does not match")
    # Correctly signed garbage gets as far as the parser.
    assert_json_error(signed_client.post("/hooks/gitlab", data=garbage, headers=signed(garbage)), 400, "UTF-8")


def test_without_a_signing_key_signature_headers_are_not_needed(redis_url):
    client = make_app(redis_url).test_client()
    assert client.application.config["WEBHOOK_SIGNING_KEYS"] == ()
    assert client.post("/hooks/gitlab", data=body_of("merge_request_merge.json"), headers=headers()).status_code == 202


@pytest.mark.parametrize("value, fragment", [
    ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "expected whsec_ followed by base64"),
    ("whsec_", "expected whsec_"),
    ("whsec_***not*base64***", "expected whsec_"),
    ("whsec_c2hvcnQ=", "decodes to 5 bytes"),
    (f"{SIGNING_KEY},whsec_%%%", "key 2 is not"),
])
def test_a_malformed_signing_key_refuses_to_start(redis_url, value, fragment):
    with pytest.raises(RuntimeError) as err:
        make_app(redis_url, WEBHOOK_SIGNING_KEY=value)
    message = str(err.value)
    assert message.startswith("WEBHOOK_SIGNING_KEY") and fragment in message
    for part in value.split(","):
        if len(part.strip()) > 8:
            assert part.strip() not in message  # the key itself is never repeated


def test_an_unpadded_key_is_accepted():
    assert signing.parse_keys(SIGNING_KEY.rstrip("=")) == (KEY_BYTES,)
    assert signing.parse_keys("  ") == () and signing.parse_keys(None) == ()


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300), msg_id=st.from_regex(r"[\x21-\x7e]{1,40}", fullmatch=True),
       ts=st.integers(0, 10**10), skew=st.integers(-300, 300), flip=st.integers(0, 10**6))
def test_verify_accepts_exactly_what_was_signed(body, msg_id, ts, skew, flip):
    sig = signing.sign(KEY_BYTES, msg_id, ts, body)
    h = {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sig}
    assert signing.verify(h, body, [KEY_BYTES], now=ts + skew) == msg_id
    if body:  # any one flipped bit of the body is refused
        changed = bytearray(body)
        changed[flip % len(body)] ^= 1 << (flip % 8)
        with pytest.raises(signing.SignatureError):
            signing.verify(h, bytes(changed), [KEY_BYTES], now=ts)
    with pytest.raises(signing.SignatureError):
        signing.verify(h, body, [KEY_BYTES], now=ts + 301)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(["webhook-id", "webhook-timestamp", "webhook-signature"]),
                       st.text(max_size=80), max_size=3), st.binary(max_size=50))
def test_verify_never_raises_anything_but_signature_error(hdrs, body):
    try:
        signing.verify(hdrs, body, [KEY_BYTES], now=time.time())
    except signing.SignatureError as exc:
        assert exc.message and SIGNING_KEY not in exc.message


# --- 4. ALLOWED_PROJECTS ------------------------------------------------------------------------------


def fork_merge(source_id: int = 4801, source_path: str = "dana/shop") -> dict:
    payload = copy.deepcopy(MERGE)  # target: acme/shop (4711), the project whose hook fires
    payload["object_attributes"]["source_project_id"] = source_id
    payload["object_attributes"]["source"]["path_with_namespace"] = source_path
    return payload


def push_of(project_id: int, path: str) -> dict:
    payload = copy.deepcopy(PUSH)
    payload["project_id"] = payload["project"]["id"] = project_id
    payload["project"]["path_with_namespace"] = path
    return payload


def pipeline_of(project_id: int, path: str) -> dict:
    payload = copy.deepcopy(PIPELINE)
    payload["project"]["id"] = project_id
    payload["project"]["path_with_namespace"] = path
    return payload


ALLOWED_CASES = [
    # (ALLOWED_PROJECTS, event, payload, allowed?)
    ("acme/", "Merge Request Hook", MERGE, True),
    ("acme", "Merge Request Hook", MERGE, True),
    ("ACME/Shop", "Merge Request Hook", MERGE, True),            # GitLab paths are case-insensitive
    ("4711", "Merge Request Hook", MERGE, True),
    (" 12, 4711 ,", "Push Hook", PUSH, True),
    ("acme/shop", "Pipeline Hook", PIPELINE, True),
    ("other/", "Merge Request Hook", MERGE, False),
    ("acm", "Merge Request Hook", MERGE, False),                  # a prefix is whole segments
    ("acme/shop-2", "Merge Request Hook", MERGE, False),
    ("acme/shop/sub", "Merge Request Hook", MERGE, False),
    ("12", "Push Hook", PUSH, False),
    ("other", "Pipeline Hook", PIPELINE, False),
    ("acme", "Push Hook", push_of(666, "acme-evil/shop"), False),
    ("acme", "Push Hook", push_of(666, "acme/../evil/x"), False),  # a path GitLab can't have
    ("acme", "Push Hook", push_of(666, "ACME/x"), True),
    ("acme", "Pipeline Hook", pipeline_of(666, "evil/x"), False),
    # A fork's merge cleans the fork (source): the source must be allowed, and the target too.
    ("acme", "Merge Request Hook", fork_merge(), False),
    ("dana/shop", "Merge Request Hook", fork_merge(), False),
    ("acme, dana/shop", "Merge Request Hook", fork_merge(), True),
    ("4711,4801", "Merge Request Hook", fork_merge(), True),
    ("4711", "Merge Request Hook", fork_merge(4801, "acme/shop"), False),  # the source id is not 4711
]


@pytest.mark.parametrize("allowed, event, payload, ok", ALLOWED_CASES)
def test_allowed_projects_at_the_door(redis_url, conn, allowed, event, payload, ok):
    client = make_app(redis_url, ALLOWED_PROJECTS=allowed).test_client()
    snapshot = keyspace(conn)
    resp = post_json(client, payload, event)
    if ok:
        assert resp.status_code == 202, resp.json
        return
    assert resp.status_code == 200, resp.json
    assert resp.json["status"] == "ignored"
    assert "not allowed by ALLOWED_PROJECTS" in resp.json["reason"]
    assert keyspace(conn) == snapshot


def test_a_fork_merge_names_the_project_that_is_not_allowed(redis_url):
    client = make_app(redis_url, ALLOWED_PROJECTS="acme").test_client()
    assert post_json(client, fork_merge()).json["reason"].startswith("source project 4801 is not allowed")
    client = make_app(redis_url, ALLOWED_PROJECTS="dana").test_client()
    assert post_json(client, fork_merge()).json["reason"].startswith("target project 4711 is not allowed")


def test_without_allowed_projects_every_project_is_served(redis_url):
    client = make_app(redis_url).test_client()
    assert not client.application.config["ALLOWED_PROJECTS"].restricts
    assert post_json(client, push_of(666, "anyone/anything"), "Push Hook").status_code == 202


@pytest.mark.parametrize("value", ["acme shop", "acme/../x", "../x", "0", "acme/*", "group/ü", "a//b,", "-1"])
def test_bad_allowed_projects_refuse_to_start(redis_url, value):
    with pytest.raises(RuntimeError) as err:
        make_app(redis_url, ALLOWED_PROJECTS=value)
    assert "ALLOWED_PROJECTS" in str(err.value)
    with pytest.raises(ConfigError):
        Settings.from_env({"ALLOWED_PROJECTS": value})


def test_allowlist_parsing():
    parsed = allowlist.parse(" 4711, acme/ , Other/Group/,acme,")
    assert parsed.ids == frozenset({4711}) and parsed.paths == ("acme", "other/group")
    assert parsed.allows(4711) and parsed.allows(1, "other/group/sub/project")
    assert not parsed.allows(True, None) and not parsed.allows("4711", None)  # a JSON true is not 1
    assert not parsed.allows(2, "other/groups") and not parsed.allows(2, "other")
    assert Settings.from_env({"ALLOWED_PROJECTS": "acme/"}).allowed_projects.paths == ("acme",)
    assert not Settings.from_env({}).allowed_projects.restricts


def worker_settings(gitlab, redis_url, **env) -> Settings:
    return Settings.from_env({"GITLAB_URL": gitlab.url, "GITLAB_TOKEN": gitlab.token, "REDIS_URL": redis_url,
                              **env})


def run_cleanup(gitlab, conn, config: Settings, request: cleanup.Request) -> dict:
    client = GitLab(config.gitlab_url, config.gitlab_token, timeout=10)
    try:
        return cleanup.run(request, gitlab=client, conn=conn, settings=config)
    finally:
        client.close()


def test_the_worker_refuses_a_project_outside_allowed_projects(gitlab, conn, redis_url):
    """The delivery claimed acme/shop, but project 666 is evil/x: GitLab's word decides."""
    evil = gitlab.add_project(666, "evil/x")
    evil.add_registry_repository("")
    digest = gitlab.registry_client.push_image("evil/x", ["feature-checkout-flow", "latest"], content="evil")
    config = worker_settings(gitlab, redis_url, ALLOWED_PROJECTS="acme/")
    request = cleanup.Request(project_id=666, branch="Feature/Checkout-Flow", trigger="branch_deleted",
                              project_path="acme/shop")
    gitlab.reset_requests()
    report = run_cleanup(gitlab, conn, config, request)
    assert report["skipped"] == "project evil/x is not allowed by ALLOWED_PROJECTS"
    assert gitlab.requests == [("GET", "/api/v4/projects/666", 200)]  # looked it up, then nothing
    assert gitlab.registry_client.resolve("evil/x", "feature-checkout-flow") == digest
    entries = conn.xrange("tagsweeper:audit")
    assert any(b"not allowed by ALLOWED_PROJECTS" in b"".join(fields.values()) for _, fields in entries)

    # The same project once allowed (by id, or by its real path) is cleaned.
    for allowed in ("666", "evil"):
        gitlab.registry_client.push_image("evil/x", ["feature-checkout-flow"], content=f"evil-{allowed}")
        report = run_cleanup(gitlab, conn, worker_settings(gitlab, redis_url, ALLOWED_PROJECTS=allowed), request)
        assert report["skipped"] is None and report["summary"]["deleted"] == 1, report


def test_the_scheduled_sweep_refuses_a_project_outside_allowed_projects(gitlab, conn, redis_url):
    """A delivery's project id lands in the sweep schedule; the sweep job checks GitLab's word too."""
    from workers import sweep
    evil = gitlab.add_project(668, "evil/z")
    evil.add_registry_repository("")
    evil.add_merge_request(1, "gone", "main", state="merged", commits=[])
    digest = gitlab.registry_client.push_image("evil/z", ["gone"], content="z")
    conn.sadd(sweep.PROJECTS_KEY, "668")
    config = worker_settings(gitlab, redis_url, ALLOWED_PROJECTS="acme/")
    client = GitLab(gitlab.url, gitlab.token, timeout=10)
    try:
        report = sweep.run_project(668, gitlab=client, conn=conn, settings=config)
        assert "not allowed by ALLOWED_PROJECTS" in report["skipped"]
        assert not conn.sismember(sweep.PROJECTS_KEY, "668")  # dropped from the schedule
        assert gitlab.registry_client.resolve("evil/z", "gone") == digest
        # Run by an operator, the same sweep is their choice, as `tagsweeper cleanup` is.
        report = sweep.run_project(668, gitlab=client, conn=conn, settings=config, by_operator=True)
        assert report.get("skipped") is None
    finally:
        client.close()


def test_a_manual_cleanup_is_the_operators_choice(gitlab, conn, redis_url):
    """`tagsweeper cleanup` (trigger manual) is run by hand with the GitLab token: no allow-list."""
    project = gitlab.add_project(667, "elsewhere/y")
    project.add_registry_repository("")
    gitlab.registry_client.push_image("elsewhere/y", ["gone-branch"], content="y")
    config = worker_settings(gitlab, redis_url, ALLOWED_PROJECTS="acme/")
    report = run_cleanup(gitlab, conn, config, cleanup.Request(project_id=667, branch="gone-branch",
                                                                trigger="manual"))
    assert report["skipped"] is None and report["summary"]["deleted"] == 1


# --- 5. names from payloads in URLs ---------------------------------------------------------------------

NASTY_BRANCHES = [
    "../../../api/v4/projects/1", "..", ".", "./x", "a/../../b", "feature/./x", "...",
    "%2e%2e%2f", "%2E%2E/api", "..%2f..%2fprojects%2f1", "%00", "%0d%0aX-Injected: 1",
    "what?x=1&private_token=t", "frag#ment", "sp ace", "semi;colon", "back\\slash", "plus+&amp=;",
    "nul\x00byte", "cr\rlf\nline", "tab\tstop", "del\x7f",
    "x" * 255, "y" * 256,
    "ünïcødé/ブランチ", "emoji-🙂", "rtl-\u202eevil", "zero\u200bwidth", "full\uff0fwidth\uff0e\uff0e",
    "feature/a//b", "/leading", "trailing/", "@{-1}", "HEAD", "refs/heads/x", "-dash", "~tilde^caret:colon",
]
FORK, UPSTREAM, VICTIM = 4901, 4900, 1
BRANCH_TAG_TEMPLATES = "{ref_slug},{ref}"  # {ref}: the raw name too, wherever it is a valid tag


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


class RecordingProxy:
    """A reverse proxy in front of the real registry that records every raw request path.

    REGISTRY_URL points here, so registry mode's requests pass through it unchanged: the
    Host header is kept, so the registry's upload Locations point back through the proxy.
    """

    HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                     "proxy-authorization", "proxy-authenticate", "content-length", "content-encoding"})

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self._lock = threading.Lock()
        self._paths: list[tuple[str, str]] = []
        self._session = requests.Session()
        self._server = make_server("127.0.0.1", 0, self._wsgi, threaded=True, request_handler=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="registry-proxy", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def paths(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._paths)

    def reset(self) -> None:
        with self._lock:
            self._paths.clear()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._session.close()

    def _wsgi(self, environ, start_response):
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ["PATH_INFO"]
        req = Request(environ)
        with self._lock:
            self._paths.append((req.method, raw.split("?", 1)[0]))
        sent = {k: v for k, v in req.headers.items() if k.lower() not in self.HOP}
        up = self._session.request(req.method, self.upstream + raw, headers=sent, data=req.get_data(),
                                   allow_redirects=False, timeout=30)
        resp = Response(up.content, status=up.status_code,
                        headers=[(k, v) for k, v in up.raw.headers.items() if k.lower() not in self.HOP])
        if req.method == "HEAD" and "Content-Length" in up.headers:
            resp.headers["Content-Length"] = up.headers["Content-Length"]
        return resp(environ, start_response)


@pytest.fixture(scope="module")
def registry_proxy(gitlab_stack):
    proxy = RecordingProxy(gitlab_stack.registry.url)
    yield proxy
    proxy.stop()


def stray_gitlab_requests(log, projects: dict[int, set[int]], names: set[str]) -> list:
    """The requests that are not a worker call for one of `projects` ({id: its repository ids})
    with each branch name as exactly one percent-encoded path segment."""
    stray = []
    for method, raw, status in log:
        if raw == "/jwt/auth" and method == "GET":
            continue
        m = re.fullmatch(r"/api/v4/projects/([0-9]+)(/.*)?", raw)
        rest = (m[2] or "") if m else None
        ok = False
        # A "." or ".." segment is resolved by servers and proxies: it would leave the endpoint.
        if m and int(m[1]) in projects and not {".", ".."} & set(raw.split("/")):
            if rest in ("", "/repository/branches", "/repository/tags", "/merge_requests",
                        "/registry/repositories", "/pipelines", "/deployments", "/environments") \
                    or re.fullmatch(r"/merge_requests/[0-9]+(/commits)?|/pipelines/[0-9]+", rest):
                ok = method == "GET"
            elif b := re.fullmatch(r"/repository/branches/([^/]+)", rest):
                ok = method == "GET" and unquote(b[1]) in names and b[1] == quote(unquote(b[1]), safe="")
            elif t := re.fullmatch(r"/registry/repositories/([0-9]+)/tags/([^/]+)", rest):
                ok = (method in ("GET", "DELETE") and int(t[1]) in projects[int(m[1])]
                      and rules.is_docker_tag(unquote(t[2])) and t[2] == quote(unquote(t[2]), safe=""))
        if not ok:
            stray.append((method, raw, status))
    return stray


def stray_registry_requests(paths, repositories: list[str]) -> list:
    """Registry requests that are not the v2 ping or under /v2/<one of the project's repositories>/."""
    repo = "|".join(re.escape(r) for r in sorted(repositories, key=len, reverse=True))
    allowed = re.compile(rf"/v2/|/v2/(?:{repo})/(?:manifests/[A-Za-z0-9_.:-]+|blobs/uploads/[A-Za-z0-9-]*"
                         rf"|blobs/sha256:[0-9a-f]{{64}}|tags/list)")
    return [(method, path) for method, path in paths if not allowed.fullmatch(path)]


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["api", "registry"])
@pytest.mark.parametrize("name", NASTY_BRANCHES, ids=[ascii(n)[1:-1][:40] for n in NASTY_BRANCHES])
def test_a_branch_name_never_leads_outside_the_project(gitlab, gitlab_stack, registry_proxy, conn, redis_url,
                                                       mode, name):
    """A fork's merge: the branch is looked up in the fork and, as the target branch, upstream;
    its tags are deleted in the fork's two repositories. Nothing else is touched or asked."""
    reg = gitlab.registry_client
    victim = gitlab.add_project(VICTIM, "victim/app")
    victim.add_registry_repository("")
    gitlab.add_project(UPSTREAM, "enc/upstream")  # the merge request's target: it must exist
    fork = gitlab.add_project(FORK, "enc/fork")
    repo_ids = {fork.add_registry_repository(""), fork.add_registry_repository("worker")}
    repos = ["enc/fork", "enc/fork/worker"]
    try:
        rules.check_branch_name(name)
        refused = False
    except rules.RuleError:
        refused = True
    doomed = set() if refused else rules.branch_tags(name, BRANCH_TAG_TEMPLATES.split(","))
    everything = {}
    for repo in repos + ["victim/app"]:
        tags = sorted(doomed | {"latest"})  # deleting by digest would take latest along: never
        digest = reg.push_image(repo, tags, content=f"{repo}-branch")
        everything.update({(repo, t): digest for t in tags})
        if repo in repos:
            everything[(repo, "main")] = reg.push_image(repo, ["main"], content=f"{repo}-main")
    env = {"BRANCH_TAGS": BRANCH_TAG_TEMPLATES, "REGISTRY_MODE": mode}
    if mode == "registry":
        env["REGISTRY_URL"] = registry_proxy.url
    config = worker_settings(gitlab, redis_url, **env)
    request = cleanup.Request(project_id=FORK, branch=name, trigger="merge", mr_iid=7,
                              target_project_id=UPSTREAM, target_branch=name)
    gitlab.reset_requests()
    registry_proxy.reset()
    if refused:
        with pytest.raises(cleanup.CleanupError):
            run_cleanup(gitlab, conn, config, request)
        assert gitlab.requests == [] and registry_proxy.paths == []  # refused before any request
    else:
        report = run_cleanup(gitlab, conn, config, request)
        assert report["summary"]["failed"] == 0, report
        assert report["summary"]["deleted"] == len(doomed) * len(repos), report
        assert gitlab.requests, "the cleanup asked GitLab nothing"
    assert stray_gitlab_requests(gitlab.requests, {FORK: repo_ids, UPSTREAM: set()}, {name}) == []
    assert stray_registry_requests(registry_proxy.paths, repos) == []
    if mode == "registry" and doomed:
        assert registry_proxy.paths and gitlab.count("DELETE") == 0
    for (repo, tag), digest in everything.items():
        if repo in repos and tag in doomed:
            assert tag not in reg.tags(repo)
        else:
            assert reg.resolve(repo, tag) == digest, f"{repo}:{tag} was touched"


def test_the_confinement_check_itself():
    """What the old encode() sent for branch "..", and other escapes, are all caught."""
    projects = {FORK: {5}, UPSTREAM: set()}
    names = {"..", "a/b", "."}
    for raw in ("/api/v4/projects/4901/repository/branches/..", "/api/v4/projects/4901/repository/branches/.",
                "/api/v4/projects/4901/repository/", "/api/v4/projects/1/repository/branches/x",
                "/api/v4/projects/4901/repository/branches/a/b", "/api/v4/projects/4901/registry/repositories/6/tags/x",
                "/api/v4/projects/4901/registry/repositories/5/tags/..", "/api/v4/projects/4901/hooks",
                "/api/v4/projects/4901/../1/repository/branches/a%2Fb", "/api/v4/groups/1"):
        assert stray_gitlab_requests([("GET", raw, 404)], projects, names) != [], raw
    assert stray_gitlab_requests([("GET", "/api/v4/projects/4901/repository/branches/a%2Fb", 404),
                                  ("DELETE", "/api/v4/projects/4901/registry/repositories/5/tags/a-b", 200)],
                                 projects, names) == []
    assert stray_registry_requests([("HEAD", "/v2/enc/fork/../../victim/app/manifests/x")], ["enc/fork"]) != []
    assert stray_registry_requests([("HEAD", "/v2/enc/forks/manifests/x")], ["enc/fork"]) != []
    assert stray_registry_requests([("HEAD", "/v2/enc/fork/manifests/x")], ["enc/fork"]) == []


@pytest.mark.parametrize("name", ["", ".", "..", "\ud800", "a\udfffb"])
def test_encode_refuses_names_gitlab_cannot_have_without_a_request(gitlab, name):
    client = GitLab(gitlab.url, gitlab.token, timeout=5)
    gitlab.add_project(4902, "enc/direct")
    gitlab.reset_requests()
    try:
        assert client.branch(4902, name) is None  # "not found": such a branch cannot exist
        with pytest.raises(Exception) as err:
            client.project(name)
        assert "cannot name a GitLab object" in str(err.value)
    finally:
        client.close()
    assert gitlab.requests == []


def test_encode_keeps_every_other_name_one_segment():
    for name in NASTY_BRANCHES:
        if name not in (".", ".."):
            segment = encode(name)
            assert "/" not in segment and "?" not in segment and "#" not in segment
            assert unquote(segment) == name and segment not in (".", "..")
    assert encode(4711) == "4711" and encode("acme/shop") == "acme%2Fshop"


@pytest.mark.parametrize("branch", ["..", "a\ud800", "x\x00y", "z" * 256])
def test_the_web_side_refuses_what_no_url_can_carry(redis_url, conn, branch):
    payload = copy.deepcopy(MERGE)
    payload["object_attributes"]["source_branch"] = branch
    client = make_app(redis_url).test_client()
    resp = post_json(client, payload)
    if branch == "..":  # a valid JSON string: enqueued, and the worker treats it as not found
        assert resp.status_code == 202
        assert Job.fetch(resp.json["job_id"], connection=conn).kwargs["branch"] == ".."
    else:
        assert_json_error(resp, 400, "object_attributes.source_branch is not a valid name")


# --- 6. no secret anywhere ---------------------------------------------------------------------------------

CANARY_WEBHOOK_SECRET = "wh-secret-CANARY-7f3a9c1e5b"
CANARY_GITLAB_TOKEN = "glpat-CANARY-token-4d8e2b6a0c"
CANARY_KEY_BYTES = b"CANARY-signing-key-bytes-9e1d3f"
CANARY_SIGNING_KEY = "whsec_" + base64.b64encode(CANARY_KEY_BYTES).decode()
CANARY_DASHBOARD_PASSWORD = "dash-pass-CANARY-2c6e0a8f4d"
CANARY_DASHBOARD_USER = "ops-admin"


def secret_forms(secret: str | bytes) -> dict[bytes, str]:
    """The byte strings a leak of `secret` would show: raw, percent-encoded, hex, and base64
    (standard and URL-safe) at all three alignments, as inside a longer base64 text such as an
    HTTP Basic header; for base64 only the characters that depend on the secret alone."""
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = {raw: "raw", raw.hex().encode(): "hex"}
    text = raw.decode("latin-1")
    forms[quote(text, safe="").encode()] = "percent-encoded"
    forms[quote_plus(text).encode()] = "form-encoded"
    for pad in (b"", b"x", b"xx"):
        for name, enc in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            coded = enc(pad + raw).rstrip(b"=")
            core = coded[{0: 0, 1: 2, 2: 3}[len(pad)]:len(coded) - 2]
            forms[core] = f"{name} (offset {len(pad)})"
    assert all(len(f) >= 12 for f in forms)  # long enough never to match by chance
    return forms


def expand(value: bytes, depth: int = 0):
    """A stored value and what it unpacks to: RQ zlib-compresses and pickles job data, and
    results may be base64 text. Our own data in our own Redis, so unpickling is fine."""
    yield value
    if depth > 3 or len(value) < 4:
        return
    try:
        yield from expand(zlib.decompress(value), depth + 1)
    except zlib.error:
        pass
    try:
        yield repr(pickle.loads(value)).encode("utf-8", "backslashreplace")
    except Exception:  # noqa: BLE001 - anything that is not a pickle
        pass
    if re.fullmatch(rb"[A-Za-z0-9+/=\s]{8,}", value):
        try:
            yield from expand(base64.b64decode(value), depth + 1)
        except (binascii.Error, ValueError):
            pass


def redis_contents(conn: redis.Redis) -> list[tuple[str, bytes]]:
    """Every key's value, read the way its type is read, plus its DUMP."""
    out = []
    for key in conn.scan_iter(count=1000):
        kind = conn.type(key).decode()
        label = key.decode(errors="replace")
        parts: list[bytes] = [key, conn.dump(key) or b""]
        if kind == "string":
            parts.append(conn.get(key) or b"")
        elif kind == "hash":
            for field, value in conn.hgetall(key).items():
                parts += [field, value]
        elif kind == "list":
            parts += conn.lrange(key, 0, -1)
        elif kind == "set":
            parts += list(conn.smembers(key))
        elif kind == "zset":
            parts += [member for member, _ in conn.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            for _, fields in conn.xrange(key):
                for field, value in fields.items():
                    parts += [field, value]
        for part in parts:
            for unpacked in expand(part):
                out.append((f"{label} ({kind})", unpacked))
    return out


def job_contents(conn: redis.Redis) -> list[tuple[str, bytes]]:
    """What RQ itself makes of every job: arguments, meta, result and exception text."""
    out = []
    for key in conn.scan_iter(match="rq:job:*"):
        if b":" in key[len(b"rq:job:"):]:
            continue  # rq:job:<id>:dependents and the like
        job = Job.fetch(key.decode()[len("rq:job:"):], connection=conn)
        result = job.latest_result()
        seen = [job.func_name, job.args, job.kwargs, job.meta, job.description,
                job.return_value() if result else None, result.exc_string if result else None]
        out.append((f"job {job.id}", repr(seen).encode("utf-8", "backslashreplace")))
    return out


@pytest.mark.e2e
def test_a_whole_flow_leaves_no_secret_anywhere(tmp_path, redis_url, gitlab_stack, gitlab, conn):
    secrets = {"WEBHOOK_SECRET": CANARY_WEBHOOK_SECRET, "GITLAB_TOKEN": CANARY_GITLAB_TOKEN,
               "WEBHOOK_SIGNING_KEY": CANARY_SIGNING_KEY,
               "WEBHOOK_SIGNING_KEY (key bytes)": CANARY_KEY_BYTES,
               "WEBHOOK_SIGNING_KEY (base64 part)": CANARY_SIGNING_KEY[len("whsec_"):],
               "DASHBOARD_PASSWORD": CANARY_DASHBOARD_PASSWORD}
    saved_token, gitlab.token = gitlab.token, CANARY_GITLAB_TOKEN  # the emulator accepts only this one now
    svc = Service(tmp_path / "svc", redis_url, gitlab.url, CANARY_GITLAB_TOKEN, WEBHOOK_SECRET=CANARY_WEBHOOK_SECRET,
                  WEBHOOK_SIGNING_KEY=CANARY_SIGNING_KEY, DASHBOARD_USER=CANARY_DASHBOARD_USER,
                  DASHBOARD_PASSWORD=CANARY_DASHBOARD_PASSWORD, ALLOWED_PROJECTS="acme/",
                  CLEANUP_RETRIES="0")
    answers: list[tuple[str, bytes]] = []

    def deliver(payload, event, key, *, token=CANARY_WEBHOOK_SECRET, key_bytes=CANARY_KEY_BYTES, h=None):
        body = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        if h is None:
            msg_id = f"msg_{key}"
            ts = int(time.time())
            h = {"webhook-id": msg_id, "webhook-timestamp": str(ts),
                 "webhook-signature": signing.sign(key_bytes, msg_id, ts, body)}
        resp = svc.post(body, event, key=key, token=token, headers=h)
        answers.append((f"POST {event} {key} -> {resp.status_code}",
                        resp.content + repr(sorted(resp.headers.items())).encode()))
        return resp, h

    def get(path, auth=None):
        resp = requests.get(svc.url + path, auth=auth, timeout=10)
        answers.append((f"GET {path} -> {resp.status_code}", resp.content + repr(sorted(resp.headers.items())).encode()))
        return resp

    try:
        svc.start()
        project, repos, digests = make_shop(gitlab)
        merged, signed_headers = deliver(merge_payload(project), "Merge Request Hook", "merge-1")
        assert merged.status_code == 202, merged.text
        assert svc.wait_for_job(merged.json()["job_id"]).get_status() == "finished", svc.logs()[-3000:]
        assert deliver(merge_payload(project), "Merge Request Hook", "merge-1", h=signed_headers)[0].status_code == 409
        pipe = load_pipeline(project)
        assert deliver(pipe, "Pipeline Hook", "pipe-1")[0].status_code == 202
        # A cleanup that fails: GitLab answers 500 to every tag deletion of a second project.
        other, _, _ = make_shop(gitlab, 4712)
        gitlab.inject_fault("DELETE", r"/projects/4712/registry/", 500, times=-1)
        failing, _ = deliver(merge_payload(other), "Merge Request Hook", "merge-2")
        assert svc.wait_for_job(failing.json()["job_id"], timeout=120).get_status() == "failed"
        gitlab.clear_faults()
        # Refusals of every kind.
        assert deliver(merge_payload(project), "Merge Request Hook", "bad-token",
                       token=CANARY_WEBHOOK_SECRET + "x")[0].status_code == 401
        assert deliver(merge_payload(project), "Merge Request Hook", "bad-sig",
                       key_bytes=OTHER_KEY_BYTES)[0].status_code == 401
        assert deliver(b"\xff not json", "Merge Request Hook", "garbage")[0].status_code == 400
        assert deliver(push_of(999, "elsewhere/x"), "Push Hook", "elsewhere")[0].json()["status"] == "ignored"
        # The operator's side, with the password and with a wrong one.
        login = (CANARY_DASHBOARD_USER, CANARY_DASHBOARD_PASSWORD)
        for path in ("/rq/", "/rq/0/data/queues.json", "/rq/0/view/workers",
                     f"/rq/0/data/job/{failing.json()['job_id']}.json",
                     "/rq/0/data/jobs/tagsweeper/failed/8/asc/1.json", "/audit", "/metrics", "/readyz"):
            assert get(path, auth=login).status_code == 200, path
        assert get("/rq/", auth=(CANARY_DASHBOARD_USER, CANARY_DASHBOARD_PASSWORD + "x")).status_code == 401
    finally:
        svc.stop()
        gitlab.token = saved_token
        gitlab.clear_faults()

    places = [("logs", svc.logs().encode())]
    places += [(f"file {p.name}", p.read_bytes()) for p in (tmp_path / "svc").rglob("*") if p.is_file()]
    places += [(f"answer {what}", body) for what, body in answers]
    places += redis_contents(conn) + job_contents(conn)
    # The scan reads what it should: job arguments (compressed pickles), the audit trail, the logs.
    everything = b"\n".join(data for _, data in places)
    assert b"Feature/Checkout-Flow" in b"".join(d for w, d in places if w.startswith("rq:job:"))
    assert conn.xlen("tagsweeper:audit") > 0 and b"feature-checkout-flow" in everything
    assert b"still failing" in everything  # the failed job's exception text was read
    leaks = []
    for name, secret in secrets.items():
        for form, how in secret_forms(secret).items():
            leaks += [f"{name} ({how}) in {where}" for where, data in places if form in data]
    assert leaks == [], "\n".join(leaks[:20])


def load_pipeline(project) -> dict:
    payload = copy.deepcopy(PIPELINE)
    payload["project"]["id"] = project.id
    payload["project"]["path_with_namespace"] = project.path
    return payload


def test_the_secret_scan_finds_planted_secrets(conn):
    """The scan of test_a_whole_flow_leaves_no_secret_anywhere would see a leak wherever RQ or we put it."""
    conn.hset("rq:job:planted", "data", zlib.compress(pickle.dumps({"kwargs": {"t": CANARY_GITLAB_TOKEN}})))
    conn.xadd("tagsweeper:audit", {"auth": b"Basic " + base64.b64encode(
        f"{CANARY_DASHBOARD_USER}:{CANARY_DASHBOARD_PASSWORD}".encode())})
    conn.set("plain", f"url?token={quote(CANARY_WEBHOOK_SECRET)}")
    conn.rpush("list", CANARY_KEY_BYTES.hex())
    contents = redis_contents(conn)
    for secret, where in ((CANARY_GITLAB_TOKEN, "rq:job:planted"), (CANARY_DASHBOARD_PASSWORD, "tagsweeper:audit"),
                          (CANARY_WEBHOOK_SECRET, "plain"), (CANARY_KEY_BYTES, "list")):
        forms = secret_forms(secret)
        assert any(form in data for label, data in contents if label.startswith(where) for form in forms), where
