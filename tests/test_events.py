"""Pure tests of hooks.events: real GitLab example deliveries and invented variants, no I/O."""

from __future__ import annotations

import copy
import json
import re

import pytest

from hooks import events
from hooks.events import BadRequest, Cleanup, Ignore, RecordDeployment, RecordPipeline, TooLarge, Unauthorized
from tests.support.payloads import PAYLOADS, load_payload as load


SECRET = "the-secret-configured-on-the-hook"
OTHER_SECRET = "rotated-secret-2"
SECRETS = (OTHER_SECRET, SECRET)
KEY = "e1a2b3c4-d5e6-47f8-9a0b-c1d2e3f4a5b6"
TIP = "5f1c0e6a9b3d4c2e8f7a6b5c4d3e2f1a0b9c8d7e"
MERGE_SHA = "a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1"
JOB_ID_RE = re.compile(r"[A-Za-z0-9_-]+")

EVENT_OF = {
    "merge_request_merge.json": "Merge Request Hook",
    "merge_request_close.json": "Merge Request Hook",
    "push_branch_deleted.json": "Push Hook",
    "pipeline_main.json": "Pipeline Hook",
    "pipeline_merge_request.json": "Pipeline Hook",
    "deployment_success.json": "Deployment Hook",
}


def headers(event: str, **extra: str) -> dict:
    h = json.loads((PAYLOADS / "headers.json").read_text())
    h["X-Gitlab-Event"] = event
    h.update(extra)
    return h


def deliver(name_or_payload, event: str | None = None, hdrs: dict | None = None, secrets=SECRETS):
    if isinstance(name_or_payload, str):
        event = event or EVENT_OF[name_or_payload]
        payload = load(name_or_payload)
    else:
        payload = name_or_payload
    body = json.dumps(payload).encode()
    return events.parse_delivery(hdrs if hdrs is not None else headers(event), body, secrets)


def changed(name: str, *edits: tuple[str, object]) -> dict:
    """The example payload with dotted paths set (or deleted, for the value DELETE)."""
    payload = copy.deepcopy(load(name))
    for path, value in edits:
        *parents, last = path.split(".")
        target = payload
        for part in parents:
            target = target[part]
        if value is DELETE:
            target.pop(last, None)
        else:
            target[last] = value
    return payload


DELETE = object()


# --- the example deliveries ------------------------------------------------------------

EXAMPLES = [
    (
        "merge_request_merge.json",
        Cleanup,
        "workers.jobs.cleanup_branch",
        {
            "project_id": 4711,
            "branch": "Feature/Checkout-Flow",
            "trigger": "merge",
            "project_path": "acme/shop",
            "target_project_id": 4711,
            "target_branch": "main",
            "mr_iid": 38,
            "default_branch": "main",
            "shas": [TIP],
            "delivery": KEY,
        },
    ),
    (
        "push_branch_deleted.json",
        Cleanup,
        "workers.jobs.cleanup_branch",
        {
            "project_id": 4711,
            "branch": "Feature/Checkout-Flow",
            "trigger": "branch_deleted",
            "project_path": "acme/shop",
            "target_project_id": None,
            "target_branch": None,
            "mr_iid": None,
            "default_branch": "main",
            "shas": [TIP],
            "delivery": KEY,
        },
    ),
    (
        "pipeline_main.json",
        RecordPipeline,
        "workers.jobs.record_pipeline",
        {"project_id": 4711, "ref": "main", "sha": MERGE_SHA, "tag": False, "pipeline_id": 90211, "delivery": KEY,
         "status": "success"},
    ),
    (
        "pipeline_merge_request.json",
        RecordPipeline,
        "workers.jobs.record_pipeline",
        {
            "project_id": 4711,
            "ref": "Feature/Checkout-Flow",
            "sha": TIP,
            "tag": False,
            "pipeline_id": 90211,
            "delivery": KEY,
            "status": "success",
        },
    ),
    (
        "deployment_success.json",
        RecordDeployment,
        "workers.jobs.record_deployment",
        {"project_id": 4711, "deployment_id": 812, "environment": "review/feature-checkout-flow", "sha": TIP,
         "status": "success", "delivery": KEY},
    ),
]


@pytest.mark.parametrize("name, kind, func, kwargs", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_example_deliveries_become_jobs(name, kind, func, kwargs):
    decision = deliver(name)
    assert type(decision) is kind
    assert decision.func == func
    assert decision.job_kwargs() == kwargs
    json.dumps(decision.job_kwargs())  # JSON-able, plain values only
    assert JOB_ID_RE.fullmatch(decision.job_id())


def test_closed_merge_request_is_ignored():
    decision = deliver("merge_request_close.json")
    assert isinstance(decision, Ignore)
    assert "close" in decision.reason


def test_job_ids_have_the_documented_shape():
    merge = deliver("merge_request_merge.json")
    deleted = deliver("push_branch_deleted.json")
    pipeline = deliver("pipeline_main.json")
    assert re.fullmatch(r"cleanup-4711-merge-[0-9a-f]{20}", merge.job_id())
    assert re.fullmatch(r"cleanup-4711-branch_deleted-[0-9a-f]{20}", deleted.job_id())
    assert re.fullmatch(r"pipeline-4711-[0-9a-f]{20}-success", pipeline.job_id())  # its success: a job of its own
    assert merge.job_id() != deleted.job_id()


def test_descriptions_are_readable():
    assert deliver("merge_request_merge.json").describe() == \
        "cleanup acme/shop branch Feature/Checkout-Flow after merge !38"
    assert deliver("push_branch_deleted.json").describe() == \
        "cleanup acme/shop branch Feature/Checkout-Flow after branch deletion"


# --- merge requests ---------------------------------------------------------------------


def test_fork_merge_request_cleans_the_fork():
    payload = changed(
        "merge_request_merge.json",
        ("object_attributes.source_project_id", 9001),
        ("object_attributes.source.id", 9001),
        ("object_attributes.source.path_with_namespace", "dana/shop"),
    )
    decision = deliver(payload, "Merge Request Hook")
    kwargs = decision.job_kwargs()
    assert kwargs["project_id"] == 9001
    assert kwargs["project_path"] == "dana/shop"
    assert kwargs["target_project_id"] == 4711
    assert kwargs["default_branch"] == "main"  # the target project's (project.default_branch)
    assert decision.job_id().startswith("cleanup-9001-merge-")


@pytest.mark.parametrize(
    "action", ["open", "close", "reopen", "update", "approved", "unapproved", "approval", "unapproval", "future"]
)
def test_merge_request_actions_other_than_merge_are_ignored(action):
    payload = changed("merge_request_merge.json", ("object_attributes.action", action))
    decision = deliver(payload, "Merge Request Hook")
    assert isinstance(decision, Ignore)
    assert action in decision.reason


def test_ignored_action_needs_no_other_fields():
    payload = changed(
        "merge_request_close.json",
        ("object_attributes.iid", "38"),
        ("object_attributes.source_branch", DELETE),
    )
    assert isinstance(deliver(payload, "Merge Request Hook"), Ignore)


def test_merge_without_source_path_or_last_commit():
    payload = changed(
        "merge_request_merge.json",
        ("object_attributes.source", DELETE),
        ("object_attributes.last_commit", {"id": "not-a-sha"}),
        ("project.default_branch", None),
    )
    kwargs = deliver(payload, "Merge Request Hook").job_kwargs()
    assert kwargs["project_path"] is None
    assert kwargs["shas"] == []
    assert kwargs["default_branch"] is None


def test_upper_case_sha_is_normalised():
    payload = changed("merge_request_merge.json", ("object_attributes.last_commit.id", TIP.upper()))
    assert deliver(payload, "Merge Request Hook").job_kwargs()["shas"] == [TIP]


BAD_MERGES = [
    (("object_attributes", ["not", "an", "object"]), "object_attributes is missing or not an object"),
    (("object_attributes", DELETE), "object_attributes is missing or not an object"),
    (("object_attributes.action", DELETE), "object_attributes.action is missing or not a string"),
    (("object_attributes.action", 3), "object_attributes.action is missing or not a string"),
    (("object_attributes.iid", "38"), "object_attributes.iid is missing or not an integer"),
    (("object_attributes.iid", True), "object_attributes.iid is missing or not an integer"),
    (("object_attributes.iid", 38.0), "object_attributes.iid is missing or not an integer"),
    (("object_attributes.iid", 0), "object_attributes.iid must be a positive integer"),
    (("object_attributes.source_branch", DELETE), "object_attributes.source_branch is missing or not a string"),
    (("object_attributes.source_branch", 5), "object_attributes.source_branch is missing or not a string"),
    (("object_attributes.source_branch", ""), "object_attributes.source_branch is not a valid name"),
    (("object_attributes.source_branch", "a\x00b"), "object_attributes.source_branch is not a valid name"),
    (("object_attributes.source_branch", "a\nb"), "object_attributes.source_branch is not a valid name"),
    (("object_attributes.source_branch", "x" * 256), "object_attributes.source_branch is not a valid name"),
    (("object_attributes.target_branch", None), "object_attributes.target_branch is missing or not a string"),
    (("object_attributes.source_project_id", True),
     "object_attributes.source_project_id is missing or not an integer"),
    (("object_attributes.source_project_id", "4711"),
     "object_attributes.source_project_id is missing or not an integer"),
    (("object_attributes.target_project_id", DELETE),
     "object_attributes.target_project_id is missing or not an integer"),
]


@pytest.mark.parametrize("edit, message", BAD_MERGES, ids=[f"{e[0]}={e[1]!r}"[:60] for e, _ in BAD_MERGES])
def test_merge_with_bad_fields_is_a_bad_request(edit, message):
    payload = changed("merge_request_merge.json", edit)
    with pytest.raises(BadRequest) as err:
        deliver(payload, "Merge Request Hook")
    assert err.value.status == 400
    assert message in err.value.message
    if isinstance(edit[1], str) and len(edit[1]) > 2:
        assert edit[1] not in err.value.message  # values are not echoed back


def test_branch_names_up_to_255_chars_with_unicode_and_slashes_pass():
    name = "feature/ünïcode/" + "x" * (255 - len("feature/ünïcode/"))
    payload = changed("merge_request_merge.json", ("object_attributes.source_branch", name))
    assert deliver(payload, "Merge Request Hook").job_kwargs()["branch"] == name


# --- pushes ----------------------------------------------------------------------------


def test_push_deleting_branch_with_slashes():
    payload = changed("push_branch_deleted.json", ("ref", "refs/heads/team/a/fix-1"))
    decision = deliver(payload, "Push Hook")
    assert isinstance(decision, Cleanup)
    assert decision.job_kwargs()["branch"] == "team/a/fix-1"


def test_ordinary_push_is_ignored():
    payload = changed("push_branch_deleted.json", ("after", TIP), ("before", MERGE_SHA))
    decision = deliver(payload, "Push Hook")
    assert isinstance(decision, Ignore)
    assert "not a branch deletion" in decision.reason


def test_new_branch_push_is_ignored():
    payload = changed("push_branch_deleted.json", ("after", TIP), ("before", events.ZERO_SHA))
    assert isinstance(deliver(payload, "Push Hook"), Ignore)


def test_push_deleting_something_not_a_branch_is_ignored():
    payload = changed("push_branch_deleted.json", ("ref", "refs/tags/v1.0"))
    assert isinstance(deliver(payload, "Push Hook"), Ignore)


def test_tag_push_hook_is_ignored():
    payload = changed("push_branch_deleted.json", ("object_kind", "tag_push"), ("event_name", "tag_push"),
                      ("ref", "refs/tags/v1.0"))
    decision = deliver(payload, "Tag Push Hook")
    assert isinstance(decision, Ignore)
    assert "Tag Push Hook" in decision.reason


def test_branch_deletion_without_usable_before_has_no_shas():
    for before in (events.ZERO_SHA, "nope", None):
        payload = changed("push_branch_deleted.json", ("before", before))
        decision = deliver(payload, "Push Hook")
        assert decision.job_kwargs()["shas"] == []


BAD_PUSHES = [
    (("ref", DELETE), "ref is missing or not a string"),
    (("ref", ["refs/heads/x"]), "ref is missing or not a string"),
    (("after", DELETE), "after is missing or not a string"),
    (("project_id", "4711"), "project_id is missing or not an integer"),
    (("project_id", False), "project_id is missing or not an integer"),
    (("ref", "refs/heads/"), "ref does not name a valid branch"),
    (("ref", "refs/heads/bad\tname"), "ref does not name a valid branch"),
]


@pytest.mark.parametrize("edit, message", BAD_PUSHES, ids=[f"{e[0]}={e[1]!r}"[:60] for e, _ in BAD_PUSHES])
def test_push_with_bad_fields_is_a_bad_request(edit, message):
    payload = changed("push_branch_deleted.json", edit)
    with pytest.raises(BadRequest) as err:
        deliver(payload, "Push Hook")
    assert message in err.value.message


# --- pipelines -------------------------------------------------------------------------


def test_pipeline_on_a_tag():
    payload = changed("pipeline_main.json", ("object_attributes.tag", True), ("object_attributes.ref", "v1.2.3"))
    decision = deliver(payload, "Pipeline Hook")
    assert decision.job_kwargs() == {
        "project_id": 4711, "ref": "v1.2.3", "sha": MERGE_SHA, "tag": True, "pipeline_id": 90211, "delivery": KEY,
        "status": "success",
    }
    assert decision.job_id() != deliver("pipeline_main.json").job_id()


def test_pipeline_status_changes_share_one_job_id_and_its_success_has_its_own():
    def job_id(status):
        return deliver(changed("pipeline_main.json", ("object_attributes.status", status)), "Pipeline Hook").job_id()

    ids = {job_id(status) for status in ("created", "pending", "running", "failed", "canceled")}
    assert len(ids) == 1
    # The success may schedule the branch's retention pass: its job is not the earlier statuses' duplicate.
    assert job_id("success") == ids.pop() + "-success"


@pytest.mark.parametrize("status, passed", [("success", "success"), ("running", "running"),
                                            ("some_new_status", None), (None, None)])
def test_a_pipeline_status_is_passed_on_when_gitlab_defines_it(status, passed):
    payload = changed("pipeline_main.json", ("object_attributes.status", status if status else DELETE))
    assert deliver(payload, "Pipeline Hook").job_kwargs()["status"] == passed


def test_a_pipeline_status_that_is_not_a_string_is_refused():
    with pytest.raises(BadRequest, match="object_attributes.status is not a string"):
        deliver(changed("pipeline_main.json", ("object_attributes.status", 7)), "Pipeline Hook")


def test_fork_merge_request_pipeline_is_recorded_for_the_project_it_ran_in():
    # A fork's MR pipeline run in the parent pushes to the parent's registry, not the fork's.
    payload = changed("pipeline_merge_request.json", ("merge_request.source_project_id", 9001))
    decision = deliver(payload, "Pipeline Hook")
    assert decision.job_kwargs()["project_id"] == 4711
    assert decision.job_id().startswith("pipeline-4711-")


def test_pipeline_without_id_or_tag_field():
    payload = changed("pipeline_main.json", ("object_attributes.id", DELETE), ("object_attributes.tag", DELETE))
    kwargs = deliver(payload, "Pipeline Hook").job_kwargs()
    assert kwargs["pipeline_id"] is None and kwargs["tag"] is False


BAD_PIPELINES = [
    (("object_attributes.sha", "a0e9d8c7"), "object_attributes.sha is missing or not a 40-character hex"),
    (("object_attributes.sha", DELETE), "object_attributes.sha is missing or not a 40-character hex"),
    (("object_attributes.sha", "g" * 40), "object_attributes.sha is missing or not a 40-character hex"),
    (("object_attributes.ref", DELETE), "object_attributes.ref is missing or not a string"),
    (("object_attributes.tag", "true"), "object_attributes.tag is not a boolean"),
    (("project", DELETE), "project is missing or not an object"),
    (("project.id", "4711"), "project.id is missing or not an integer"),
]


@pytest.mark.parametrize("edit, message", BAD_PIPELINES, ids=[f"{e[0]}={e[1]!r}"[:60] for e, _ in BAD_PIPELINES])
def test_pipeline_with_bad_fields_is_a_bad_request(edit, message):
    payload = changed("pipeline_main.json", edit)
    with pytest.raises(BadRequest) as err:
        deliver(payload, "Pipeline Hook")
    assert message in err.value.message


# --- deployments -----------------------------------------------------------------------


@pytest.mark.parametrize("status", ["created", "running", "failed", "canceled", "blocked"])
def test_a_deployment_that_did_not_succeed_keeps_nothing_and_needs_nothing(status):
    decision = deliver(changed("deployment_success.json", ("status", status)), "Deployment Hook")
    assert type(decision) is Ignore and status in decision.reason


def test_a_re_sent_deployment_hook_is_one_job_and_another_status_another():
    first = deliver("deployment_success.json")
    assert first.job_id() == deliver("deployment_success.json").job_id() == "deployment-4711-812-success"
    assert JOB_ID_RE.fullmatch(first.job_id())
    other = deliver(changed("deployment_success.json", ("deployment_id", 813)), "Deployment Hook")
    assert other.job_id() != first.job_id()


def test_the_sha_comes_from_the_end_of_commit_url():
    upper = changed("deployment_success.json", ("commit_url", "https://gitlab.example.com/acme/shop/-/commit/" + TIP.upper()))
    assert deliver(upper, "Deployment Hook").sha == TIP


BAD_DEPLOYMENTS = [
    (("status", DELETE), "status is missing or not a string"),
    (("status", "deployed"), "status is not a deployment status GitLab sends"),
    (("commit_url", DELETE), "commit_url is missing or not a string"),
    (("commit_url", "https://gitlab.example.com/acme/shop/-/commit/5f1c0e6a"), "commit_url does not end in a 40"),
    (("short_sha", "0000beef"), "short_sha is missing or does not match"),
    (("short_sha", DELETE), "short_sha is missing or does not match"),
    (("deployment_id", "812"), "deployment_id is missing or not an integer"),
    (("environment", DELETE), "environment is missing or not a string"),
    (("project.id", DELETE), "project.id is missing or not an integer"),
    (("object_kind", "pipeline"), "object_kind does not match X-Gitlab-Event"),
]


@pytest.mark.parametrize("edit, message", BAD_DEPLOYMENTS, ids=[f"{e[0]}={e[1]!r}"[:60] for e, _ in BAD_DEPLOYMENTS])
def test_deployment_with_bad_fields_is_a_bad_request(edit, message):
    payload = changed("deployment_success.json", edit)
    with pytest.raises(BadRequest) as err:
        deliver(payload, "Deployment Hook")
    assert message in err.value.message


def test_a_deployment_of_a_project_outside_allowed_projects_is_ignored():
    from workers.common.allowlist import parse

    payload = json.dumps(load("deployment_success.json")).encode()
    decision = events.parse_delivery(headers("Deployment Hook"), payload, SECRETS, allowed=parse("other/project"))
    assert type(decision) is Ignore and "ALLOWED_PROJECTS" in decision.reason


# --- other events ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "event, body",
    [
        ("Issue Hook", {"object_kind": "issue", "object_attributes": {"action": "open"}}),
        ("Note Hook", {"object_kind": "note"}),
        ("Job Hook", {"object_kind": "build"}),
        ("Future Thing Hook", {"object_kind": "future_thing"}),
        ("System Hook", {"object_kind": "merge_request"}),
    ],
)
def test_other_events_are_ignored_naming_the_event(event, body):
    decision = deliver(body, event)
    assert isinstance(decision, Ignore)
    assert event in decision.reason


@pytest.mark.parametrize(
    "event, name",
    [
        ("Merge Request Hook", "push_branch_deleted.json"),
        ("Push Hook", "merge_request_merge.json"),
        ("Pipeline Hook", "merge_request_merge.json"),
        ("Issue Hook", "merge_request_merge.json"),
        ("Tag Push Hook", "push_branch_deleted.json"),
    ],
)
def test_event_header_and_object_kind_must_agree(event, name):
    with pytest.raises(BadRequest) as err:
        deliver(load(name), event)
    assert "object_kind does not match X-Gitlab-Event" in err.value.message


def test_handled_event_without_object_kind_is_a_bad_request():
    payload = changed("merge_request_merge.json", ("object_kind", DELETE))
    with pytest.raises(BadRequest, match="object_kind is missing"):
        deliver(payload, "Merge Request Hook")


def test_missing_event_header_is_a_bad_request():
    hdrs = headers("x")
    del hdrs["X-Gitlab-Event"]
    with pytest.raises(BadRequest, match="X-Gitlab-Event header is missing"):
        deliver(load("merge_request_merge.json"), hdrs=hdrs)


# --- body ------------------------------------------------------------------------------

BAD_BODIES = [
    (b"", "body is empty"),
    (b"[1, 2]", "body must be a JSON object, got an array"),
    (b'"text"', "body must be a JSON object, got a string"),
    (b"null", "body must be a JSON object, got null"),
    (b"{not json", "body is not valid JSON"),
    (b'{"a": NaN}', "body is not valid JSON"),
    (b"\xff\xfe{\x00}\x00", "body is not UTF-8"),
    ('{"x": "caf\u00e9"}'.encode("latin-1"), "body is not UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "body is not valid JSON"),
]


@pytest.mark.parametrize("body, message", BAD_BODIES, ids=[m + str(i) for i, (_, m) in enumerate(BAD_BODIES)])
def test_bodies_that_are_not_a_json_object(body, message):
    with pytest.raises(BadRequest) as err:
        events.parse_delivery(headers("Merge Request Hook"), body, SECRETS)
    assert err.value.status == 400
    assert message in err.value.message


# --- token and order -------------------------------------------------------------------

GOOD_BODY = (PAYLOADS / "merge_request_merge.json").read_bytes()


@pytest.mark.parametrize(
    "token",
    [None, "", "wrong", SECRET[:-1], SECRET + "x", SECRET.upper(), f"{SECRET},{OTHER_SECRET}", " " + SECRET],
)
def test_missing_or_wrong_token_is_unauthorized(token):
    hdrs = headers("Merge Request Hook")
    if token is None:
        del hdrs["X-Gitlab-Token"]
    else:
        hdrs["X-Gitlab-Token"] = token
    with pytest.raises(Unauthorized) as err:
        events.parse_delivery(hdrs, GOOD_BODY, SECRETS)
    assert err.value.status == 401
    assert "missing or wrong X-Gitlab-Token" in err.value.message
    for secret in SECRETS:
        assert secret not in err.value.message


@pytest.mark.parametrize("secret", SECRETS)
def test_each_configured_secret_is_accepted(secret):
    decision = events.parse_delivery(headers("Merge Request Hook", **{"X-Gitlab-Token": secret}), GOOD_BODY, SECRETS)
    assert isinstance(decision, Cleanup)


def test_no_secrets_accepts_nothing():
    with pytest.raises(Unauthorized):
        events.parse_delivery(headers("Merge Request Hook"), GOOD_BODY, ())


def test_header_names_are_case_insensitive():
    hdrs = {k.lower(): v for k, v in headers("Merge Request Hook").items()}
    assert isinstance(events.parse_delivery(hdrs, GOOD_BODY, SECRETS), Cleanup)
    hdrs = {k.upper(): v for k, v in headers("Merge Request Hook").items()}
    assert isinstance(events.parse_delivery(hdrs, GOOD_BODY, SECRETS), Cleanup)


def test_non_ascii_secret_as_wsgi_hands_it_over():
    secret = "pässwörd-€"
    wsgi_form = secret.encode("utf-8").decode("latin-1")  # PEP 3333 header text
    for token in (secret, wsgi_form):
        hdrs = headers("Merge Request Hook", **{"X-Gitlab-Token": token})
        assert isinstance(events.parse_delivery(hdrs, GOOD_BODY, (secret,)), Cleanup)


def test_token_is_checked_before_the_body_is_parsed():
    hdrs = headers("Merge Request Hook", **{"X-Gitlab-Token": "wrong"})
    with pytest.raises(Unauthorized):
        events.parse_delivery(hdrs, b"\xff not json", SECRETS)


def test_size_is_checked_before_the_token():
    hdrs = headers("Merge Request Hook", **{"X-Gitlab-Token": "wrong"})
    with pytest.raises(TooLarge) as err:
        events.parse_delivery(hdrs, b"x" * 101, SECRETS, max_body_bytes=100)
    assert err.value.status == 413
    assert isinstance(events.parse_delivery(headers("Merge Request Hook"), GOOD_BODY, SECRETS,
                                            max_body_bytes=len(GOOD_BODY)), Cleanup)


def test_missing_idempotency_key_gives_no_delivery():
    hdrs = headers("Merge Request Hook")
    del hdrs["Idempotency-Key"]
    decision = events.parse_delivery(hdrs, GOOD_BODY, SECRETS)
    assert decision.job_kwargs()["delivery"] is None


# --- job ids ---------------------------------------------------------------------------


def test_job_id_ignores_the_delivery_key_and_the_hook():
    """A re-sent delivery, or a project hook and a group hook, give the same job id."""
    first = events.parse_delivery(headers("Merge Request Hook"), GOOD_BODY, SECRETS)
    again = events.parse_delivery(headers("Merge Request Hook", **{"Idempotency-Key": "other-key"}),
                                  GOOD_BODY, SECRETS)
    assert first.job_id() == again.job_id()
    assert first.delivery != again.delivery
    # Unrelated fields (a group hook may render user/repository a little differently) do not matter.
    payload = changed("merge_request_merge.json", ("user.name", "Someone"), ("object_attributes.updated_at", "x"))
    assert deliver(payload, "Merge Request Hook").job_id() == first.job_id()


def test_recreated_branch_deleted_again_gets_a_new_job_id():
    first = deliver("push_branch_deleted.json")
    recreated = deliver(changed("push_branch_deleted.json", ("before", MERGE_SHA)), "Push Hook")
    assert first.job_id() != recreated.job_id()
    assert deliver("push_branch_deleted.json").job_id() == first.job_id()


def test_job_id_changes_with_each_identifying_field():
    base = deliver("merge_request_merge.json").job_id()
    for edit in (
        ("object_attributes.iid", 39),
        ("object_attributes.source_branch", "Feature/Checkout-Flow2"),
        ("object_attributes.source_project_id", 4712),
    ):
        assert deliver(changed("merge_request_merge.json", edit), "Merge Request Hook").job_id() != base


def test_job_id_is_the_same_across_processes():
    # Pinned: a change of the canonical form would break dedupe across a deploy.
    assert deliver("push_branch_deleted.json").job_id() == Cleanup(
        project_id=4711, branch="Feature/Checkout-Flow", trigger="branch_deleted", shas=(TIP,)
    ).job_id()
    assert events._digest(4711, "Feature/Checkout-Flow", "merge", 38) == \
        __import__("hashlib").sha256(b'[4711,"Feature/Checkout-Flow","merge",38]').hexdigest()[:20]


def test_decisions_are_frozen():
    decision = deliver("merge_request_merge.json")
    with pytest.raises(Exception):
        decision.branch = "other"  # type: ignore[misc]
