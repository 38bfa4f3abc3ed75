"""Fuzzing POST /hooks/gitlab: 10,000 generated requests per run, on create_app() and a real Redis.

Four Hypothesis tests send one request per example through Flask's test client to the
app that gunicorn serves, with the real redis-server of the suite behind it:

- HEADER_EXAMPLES (2,500): X-Gitlab-Event missing, empty, duplicated, odd or unknown;
  X-Gitlab-Token valid, invalid, empty, huge, unicode, duplicated; content types; noise;
- PAYLOAD_EXAMPLES (3,500): the real GitLab payloads with fields of the wrong type, missing,
  null, numbers as strings, bools for ints, huge, deeply nested, and branch names with
  `../`, `%2e`, NUL, CR/LF, unicode, lone surrogates, 300 characters...;
- RAW_EXAMPLES (1,500): bodies that are not JSON objects: bytes, invalid UTF-8, BOMs,
  NaN, huge numbers, nesting from 60 to 100,000 deep, oversize;
- UNAUTHENTICATED_EXAMPLES (2,500): anything above with a token that is not the secret.

Each test counts the requests it sent and asserts the count at its end, so the 10,000 are
real. For every request: never a 5xx (TESTING propagates any exception, so a crash fails
loudly), every refusal a 400/401/413 with exactly {"error": "<non-empty text>"}, every
success a 200/202 with a status, an enqueued job present in Redis, no secret in any answer;
and without a valid token a 401 (or 413: size is checked first) that left Redis exactly
as it was (key count, queue, scheduled registry). The body limit is 64 KiB here so that
oversize bodies stay cheap; the 1 MiB default is proven in tests/test_security.py.
"""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hooks import create_app
from tests.support.payloads import PAYLOADS

HEADER_EXAMPLES = 2_500
PAYLOAD_EXAMPLES = 3_500
RAW_EXAMPLES = 1_500
UNAUTHENTICATED_EXAMPLES = 2_500
TOTAL = HEADER_EXAMPLES + PAYLOAD_EXAMPLES + RAW_EXAMPLES + UNAUTHENTICATED_EXAMPLES
assert TOTAL == 10_000

SECRET = "fuzz-webhook-secret-5b7d"
SECOND_SECRET = "fuzz-second-secret-91c3"
LIMIT = 64 * 1024
QUEUE = "tagsweeper"
SAME_EVENT = object()  # the headers test: send the body's own X-Gitlab-Event
FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck))

sent: Counter = Counter()
outcomes: Counter = Counter()  # (test, HTTP status, answer's status or "error") -> requests


def payload(name: str) -> dict:
    return json.loads((PAYLOADS / name).read_text())


# (event, payload) pairs GitLab really sends.
REAL = [
    ("Merge Request Hook", payload("merge_request_merge.json")),
    ("Merge Request Hook", payload("merge_request_close.json")),
    ("Push Hook", payload("push_branch_deleted.json")),
    ("Pipeline Hook", payload("pipeline_merge_request.json")),
    ("Pipeline Hook", payload("pipeline_main.json")),
    ("Deployment Hook", payload("deployment_success.json")),
]
EVENTS = ["Merge Request Hook", "Push Hook", "Pipeline Hook", "Tag Push Hook", "Issue Hook", "Note Hook",
          "Job Hook", "System Hook", "Confidential Issue Hook", "Deployment Hook", "Release Hook"]

# Fields the handlers read: mutated more often than the rest.
HOT_PATHS = [("object_kind",), ("object_attributes", "action"), ("object_attributes", "iid"),
             ("object_attributes", "source_branch"), ("object_attributes", "target_branch"),
             ("object_attributes", "source_project_id"), ("object_attributes", "target_project_id"),
             ("object_attributes", "last_commit"), ("object_attributes", "source"),
             ("object_attributes", "ref"), ("object_attributes", "sha"), ("object_attributes", "tag"),
             ("object_attributes", "id"), ("ref",), ("after",), ("before",), ("project_id",), ("project",),
             ("project", "id"), ("project", "path_with_namespace"), ("project", "default_branch"),
             ("status",), ("deployment_id",), ("environment",), ("commit_url",), ("short_sha",)]

NASTY_NAMES = [
    "../../../api/v4/projects/1", "..", ".", "a/../../b", "%2e%2e%2f", "..%2f..%2f", "refs/heads/../x",
    "nul\x00byte", "cr\rlf\n", "\x7f", "\ud800", "a\udfffb", "emoji-🙂", "ünïcødé/ブランチ", "rtl-\u202e",
    "what?x=1#frag", "sp ace", "back\\slash", "x" * 255, "y" * 256, "z" * 5000, "", " ", "refs/heads/",
    "refs/heads/main", "refs/tags/v1", "0" * 40, "f" * 40, "G" * 40, "merge", "38", "-1", "true", "null",
]


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)

weird = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**70),
    st.integers(max_value=0), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(NASTY_NAMES), st.text(max_size=30),
    st.builds(lambda ch, n: ch * n, st.characters(exclude_categories=("Cs",)), st.integers(100, 20_000)),
    st.builds(nested, st.integers(1, 90)), json_values,
)


# Branch names, refs and paths: what ends up in the worker's URLs.
names = st.one_of(
    st.sampled_from(NASTY_NAMES),
    st.lists(st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                       st.sampled_from(["..", "/", "../", "%2e", "%2F", "\x00", "\r\n", "?", "#", "~", "@{"])),
             max_size=40).map("".join),
    st.integers(250, 300).map(lambda n: "b/" * (n // 2)),
)
NAME_FIELDS = {
    "Merge Request Hook": [("object_attributes", "source_branch"), ("object_attributes", "target_branch"),
                           ("object_attributes", "source", "path_with_namespace"),
                           ("project", "path_with_namespace"), ("project", "default_branch")],
    "Push Hook": [("ref",), ("project", "path_with_namespace"), ("project", "default_branch")],
    "Pipeline Hook": [("object_attributes", "ref"), ("project", "path_with_namespace")],
    "Deployment Hook": [("environment",), ("ref",), ("project", "path_with_namespace")],
}


def key_paths(obj: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in obj.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out.extend(key_paths(value, prefix + (key,)))
    return out


def set_path(body: dict, path: tuple, value: object) -> None:
    parent = body
    for key in path[:-1]:
        parent = parent.get(key) if isinstance(parent, dict) else None
    if isinstance(parent, dict):
        parent[path[-1]] = value


@st.composite
def mutated_payload(draw) -> tuple[str, dict]:
    """A real payload with one to four fields changed or removed; usually a merge, so the deep checks run.

    A third of them attack a name (branch, ref, path) of an otherwise valid merge, branch
    deletion or pipeline: those are the values that reach the worker's URLs.
    """
    event, base = draw(st.sampled_from(REAL))
    body = copy.deepcopy(base)
    if event == "Merge Request Hook" and draw(st.integers(0, 3)):
        body["object_attributes"]["action"] = "merge"
    if draw(st.integers(0, 2)) == 0:
        path = draw(st.sampled_from(NAME_FIELDS[event]))
        name = draw(names)
        set_path(body, path, "refs/heads/" + name if path == ("ref",) and draw(st.booleans()) else name)
        fresh_event(draw, body)
        return event, body
    paths = HOT_PATHS + key_paths(base)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(HOT_PATHS if draw(st.integers(0, 9)) < 6 else paths))
        parent = body
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        if draw(st.integers(0, 5)) == 0:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(weird)
    fresh_event(draw, body)
    if draw(st.integers(0, 9)) == 0:  # sometimes the wrong event header for the body
        event = draw(st.sampled_from(EVENTS))
    return event, body


def fresh_event(draw, body: dict) -> None:
    """Mostly a new event (another MR iid, deleted tip, pipeline SHA, deployment), so many deliveries enqueue a
    new job instead of being answered "duplicate"."""
    if draw(st.integers(0, 3)) == 0:
        return
    sha = draw(st.from_regex(r"[0-9a-f]{40}", fullmatch=True))
    attrs = body.get("object_attributes")
    if isinstance(attrs, dict):
        if "iid" in attrs and isinstance(attrs["iid"], int):
            attrs["iid"] = draw(st.integers(1, 10**9))
        if isinstance(attrs.get("sha"), str) and len(attrs["sha"]) == 40:
            attrs["sha"] = sha
    if isinstance(body.get("before"), str) and len(body["before"]) == 40:
        body["before"] = sha
    if isinstance(body.get("deployment_id"), int) and isinstance(body.get("commit_url"), str):
        body["deployment_id"] = draw(st.integers(1, 10**9))
        body["commit_url"] = body["commit_url"].rsplit("/", 1)[0] + "/" + sha
        body["short_sha"] = sha[:8]


def encode_json(value: object, ascii_only: bool) -> bytes:
    # A lone surrogate is a valid JSON escape but not UTF-8: surrogatepass makes it invalid UTF-8.
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8")),
    st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b"\"text\"", b"42", b"true", b"{\"a\": NaN}",
                     b"{\"a\": Infinity}", b"{\"a\": -Infinity}", b"{\"a\": 1e999}", b"{'a': 1}", b"{\"a\":}",
                     b"\xef\xbb\xbf{}", b"{\"object_kind\": \"push\"", b"\xff\xfe{\x00}\x00",
                     b"{\"a\": \"\\ud800\"}", b"{\"a\": 1, \"a\": 2}", b"\x00" * 10, b"{\"a\": \"\xe9\"}",
                     b"{\"n\": " + b"1" * 5000 + b"}", b"{\"n\": 1" + b"0" * 400 + b"}"]),
    st.integers(55, 200).map(lambda n: b"[" * n + b"]" * n),
    st.integers(55, 200).map(lambda n: b"{\"a\":" * n + b"0" + b"}" * n),
    st.integers(1_000, 60_000).map(lambda n: b"[" * n),
    st.tuples(json_values, st.booleans()).map(lambda v: encode_json(v[0], v[1])),
    st.sampled_from(REAL).map(lambda r: json.dumps(r[1]).encode("utf-16")),
    st.sampled_from(REAL).map(lambda r: json.dumps(r[1]).encode()[:-1]),  # truncated
    st.integers(LIMIT - 10, LIMIT + 10).map(lambda n: b"{}" + b" " * (n - 2)),  # around the limit
)

VALID_TOKENS = st.sampled_from([SECRET, SECOND_SECRET])
INVALID_TOKENS = st.one_of(
    st.sampled_from([None, "", " ", SECRET + " ", " " + SECRET, SECRET.upper(), SECRET[:-1], SECRET + "x",
                     f"{SECRET},{SECOND_SECRET}", "a" * 10_000, "ßecret€🙂", "é" * 20, "\u00a0" + SECRET,
                     ("dup", SECRET, "wrong"), ("dup", SECRET, SECRET), ("dup", "", SECRET)]),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=60).filter(
        lambda t: t not in (SECRET, SECOND_SECRET)),
)
EVENT_HEADERS = st.one_of(
    st.sampled_from(EVENTS),
    st.sampled_from([None, "", "   ", "merge request hook", "MERGE REQUEST HOOK", " Push Hook ", "Push Hook\t",
                     "Merge Request Hook, Push Hook", "X" * 5000, "Ḿerge Request Hook", ("dup", "Push Hook",
                                                                                      "Merge Request Hook")]),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=40),
)
CONTENT_TYPES = st.sampled_from([
    "application/json", None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/json; charset=latin-1", "application/octet-stream", "garbage/;;;", "application/json" * 50,
])
NOISE = st.dictionaries(
    st.sampled_from(["Idempotency-Key", "Content-Encoding", "X-Gitlab-Event-UUID", "X-Gitlab-Instance",
                     "webhook-id", "webhook-timestamp", "webhook-signature", "Transfer-Encoding", "Expect"]),
    st.one_of(st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=40), st.just("gzip"),
              st.just("x" * 3000)),
    max_size=3,
)


def header_list(event, token, content_type, noise) -> list[tuple[str, str]]:
    """Headers as a list, so a ("dup", a, b) value sends the header twice."""
    out = []
    for name, value in (("X-Gitlab-Event", event), ("X-Gitlab-Token", token), ("Content-Type", content_type)):
        if isinstance(value, tuple):
            out += [(name, v) for v in value[1:]]
        elif value is not None:
            out.append((name, value))
    # Transfer-Encoding/Expect would make the test client's WSGI environ lie about the body.
    out += [(k, v) for k, v in noise.items() if k not in ("Transfer-Encoding", "Expect")]
    return out


# --- the app and the checks ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz(redis_server):
    conn = redis.Redis.from_url(redis_server.url)
    conn.flushall()
    app = create_app({"TESTING": True, "WEBHOOK_SECRET": f"{SECRET}, {SECOND_SECRET}",
                      "REDIS_URL": redis_server.url, "MAX_BODY_BYTES": LIMIT, "CLEANUP_DELAY": 60})
    yield Fuzzer(app.test_client(), conn)
    conn.close()


class Fuzzer:
    def __init__(self, client, conn: redis.Redis):
        self.client = client
        self.conn = conn

    def state(self) -> tuple[int, ...]:
        """What accepting a delivery would change: the key count, the queue, the scheduled registry."""
        pipe = self.conn.pipeline(transaction=False)
        pipe.dbsize().llen(f"rq:queue:{QUEUE}").zcard(f"rq:scheduled:{QUEUE}")
        return tuple(pipe.execute())

    def send(self, test: str, hdrs: list, body: bytes, token_valid: bool):
        # Every delivery is counted in a metrics hash: make sure it exists, so an unauthenticated
        # request may not change the key count at all.
        before = self.state() if not token_valid else None
        resp = self.client.post("/hooks/gitlab", data=body, headers=hdrs)
        sent[test] += 1
        self.check(resp, token_valid, before)
        answer = resp.json.get("status") if resp.status_code < 400 else "error"
        outcomes[(test, resp.status_code, answer)] += 1
        return resp

    def check(self, resp, token_valid: bool, before) -> None:
        status = resp.status_code
        text = resp.get_data(as_text=True)
        assert status < 500, text[:500]
        data = resp.get_json(silent=True)
        assert isinstance(data, dict), f"not a JSON object: {text[:200]!r}"
        if status >= 400:
            assert status in (400, 401, 413), status
            assert set(data) == {"error"} and isinstance(data["error"], str) and data["error"].strip(), data
        else:
            assert status in (200, 202), status
            assert data.get("status") in ("enqueued", "duplicate", "ignored"), data
            if status == 202:
                assert self.conn.exists(f"rq:job:{data['job_id']}"), data  # accepted: an RQ job
        for secret in (SECRET, SECOND_SECRET):
            assert secret not in text
        if not token_valid:
            assert status in (401, 413), (status, data)
            assert self.state() == before, "a request without a valid token changed Redis"

    def warm_up(self) -> None:
        self.client.post("/hooks/gitlab", data=b"{}", headers={"X-Gitlab-Token": "nope"})  # creates the counter


def run(test, strategy, examples: int, body_fn, expected: tuple) -> None:
    """Run `examples` Hypothesis examples of `strategy` through `body_fn`, then check the count
    and that every `expected` status was reached (a fuzzer stuck at the door proves little)."""
    start = sent[test]

    @settings(max_examples=examples, **FUZZ_SETTINGS)
    @given(strategy)
    def fuzz_one(case):
        body_fn(case)

    fuzz_one()
    assert sent[test] - start >= examples, f"{test} sent {sent[test] - start} requests, not {examples}"
    reached = {f"{status} {answer}": n for (t, status, answer), n in outcomes.items() if t == test}
    print(f"{test}: {sent[test] - start} requests, answers {dict(sorted(reached.items()))}")
    missing = {e for e in expected if not any(r.startswith(str(e)) for r in reached)}
    assert not missing, f"{test} never got {missing}: {reached}"


# --- the four tests -----------------------------------------------------------------------------


def test_fuzz_headers(fuzz):
    """HEADER_EXAMPLES requests: real bodies, every kind of header."""
    fuzz.warm_up()
    cases = st.tuples(st.sampled_from(REAL), st.one_of(st.just(SAME_EVENT), EVENT_HEADERS),
                      st.one_of(VALID_TOKENS, INVALID_TOKENS), CONTENT_TYPES, NOISE, st.booleans())

    def one(case):
        (real_event, body), event, token, content_type, noise, merge = case
        event = real_event if event is SAME_EVENT else event  # half the time the body's own event
        if merge and real_event == "Merge Request Hook":
            body = copy.deepcopy(body)
            body["object_attributes"]["action"] = "merge"
            body["object_attributes"]["iid"] = sent["headers"] + 1  # a new merge: enqueued if authentic
        fuzz.send("headers", header_list(event, token, content_type, noise), json.dumps(body).encode(),
                  token_valid=token in (SECRET, SECOND_SECRET))

    run("headers", cases, HEADER_EXAMPLES, one, expected=("200 ignored", "200 duplicate", 202, 400, 401))


def test_fuzz_payloads(fuzz):
    """PAYLOAD_EXAMPLES requests: a valid token, the matching event, a mutated real payload."""
    fuzz.warm_up()

    def one(case):
        (event, body), token, ascii_only, noise = case
        fuzz.send("payloads", header_list(event, token, "application/json", noise), encode_json(body, ascii_only),
                  token_valid=True)

    run("payloads", st.tuples(mutated_payload(), VALID_TOKENS, st.booleans(), NOISE), PAYLOAD_EXAMPLES, one,
        expected=("200 ignored", "200 duplicate", 202, 400, 413))


def test_fuzz_raw_bodies(fuzz):
    """RAW_EXAMPLES requests: a valid token, bodies that are not (or not quite) JSON objects."""
    fuzz.warm_up()

    def one(case):
        body, event, token, content_type = case
        fuzz.send("raw", header_list(event, token, content_type, {}), body, token_valid=True)

    run("raw", st.tuples(raw_bodies, EVENT_HEADERS, VALID_TOKENS, CONTENT_TYPES), RAW_EXAMPLES, one,
        expected=(400, 413))


def test_fuzz_without_a_valid_token_nothing_is_enqueued(fuzz):
    """UNAUTHENTICATED_EXAMPLES requests: anything, but never the secret; Redis must not change."""
    fuzz.warm_up()
    bodies = st.one_of(mutated_payload().map(lambda c: json.dumps(c[1]).encode()),
                       st.sampled_from(REAL).map(lambda r: json.dumps(r[1]).encode()), raw_bodies)

    def one(case):
        body, event, token, content_type, noise = case
        fuzz.send("unauthenticated", header_list(event, token, content_type, noise), body, token_valid=False)

    run("unauthenticated", st.tuples(bodies, EVENT_HEADERS, INVALID_TOKENS, CONTENT_TYPES, NOISE),
        UNAUTHENTICATED_EXAMPLES, one, expected=(401, 413))
