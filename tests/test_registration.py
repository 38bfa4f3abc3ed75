"""`tagsweeper register` / `unregister` against the GitLab emulator over real HTTP.

Most tests run the real command in a subprocess and then inspect the emulator's state:
its hooks keep the token, which GitLab's API never returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.service import ROOT
from workers import registration as reg
from workers.gitlab import GitLab

SECRET = "s3cr3t-hook-token-7f1c"
NEXT_SECRET = "next-secret-42"  # a second value (rotation): never the one registered
URL = "https://tagsweeper.example.com/hooks/gitlab"
EVENTS = {"merge_requests_events": True, "push_events": True, "pipeline_events": True, "deployment_events": True}
DEFAULT_OFF = ("issues_events", "tag_push_events", "note_events", "job_events", "wiki_page_events",
               "releases_events", "confidential_issues_events")


def run_cli(gitlab, *args, token=None, secret=f"{SECRET}, {NEXT_SECRET}"):
    env = {k: v for k, v in os.environ.items() if k not in ("WEBHOOK_SECRET", "GITLAB_URL", "GITLAB_TOKEN")}
    env.update(PYTHONPATH=str(ROOT), GITLAB_URL=gitlab.url, GITLAB_TOKEN=token or gitlab.token,
               LOG_FORMAT="json")
    if secret is not None:
        env["WEBHOOK_SECRET"] = secret
    out = subprocess.run([sys.executable, "-m", "workers.cli", *args], capture_output=True, text=True,
                         env=env, timeout=60, cwd=ROOT)
    for secret_value in (SECRET, NEXT_SECRET):
        assert secret_value not in out.stdout and secret_value not in out.stderr, "the secret leaked"
    return out


def writes(gitlab) -> int:
    return sum(gitlab.count(m) for m in ("POST", "PUT", "DELETE"))


@pytest.fixture
def shop(gitlab):
    return gitlab.add_project(601, "acme/shop")


@pytest.fixture
def client(gitlab):
    c = GitLab(gitlab.url, gitlab.token, timeout=5, backoff=0.01, sleep=lambda s: None)
    yield c
    c.close()


def assert_tagsweeper_hook(hook, url=URL, ssl=True):
    assert hook["url"] == url
    assert hook["token"] == SECRET  # the FIRST value of WEBHOOK_SECRET
    assert all(hook[k] is True for k in EVENTS)
    assert all(hook[k] is False for k in DEFAULT_OFF)  # everything else at GitLab's defaults
    assert hook["enable_ssl_verification"] is ssl
    assert hook["push_events_branch_filter"] == ""


# --- register -------------------------------------------------------------------------------

def test_register_twice_leaves_one_hook(gitlab, shop):
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL)
    assert out.returncode == 0, out.stderr
    assert len(shop.hooks) == 1
    hook = shop.hooks[0]
    assert_tagsweeper_hook(hook)
    assert hook["project_id"] == 601
    assert out.stdout.startswith(f"created hook {hook['id']} on project acme/shop")

    out = run_cli(gitlab, "register", "--project", "601", "--url", URL + "  ")
    assert out.returncode == 0, out.stderr
    assert len(shop.hooks) == 1 and shop.hooks[0]["id"] == hook["id"]
    assert_tagsweeper_hook(shop.hooks[0])
    # The token cannot be read back, so it is re-sent and the output says so, never "up to date".
    assert f"updated hook {hook['id']} on project acme/shop" in out.stdout
    assert "already matched; token re-sent" in out.stdout
    assert gitlab.count("POST", r"/hooks$") == 1 and gitlab.count("PUT", r"/hooks/\d+$") == 1


def test_dry_run_changes_nothing(gitlab, shop):
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("would create a hook on project acme/shop")
    assert shop.hooks == [] and writes(gitlab) == 0

    run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL)
    shop.hooks[0]["pipeline_events"] = False
    shop.hooks[0]["token"] = None
    gitlab.reset_requests()
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL, "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "would update hook" in out.stdout and "pipeline_events false -> true" in out.stdout
    assert "token would be re-sent" in out.stdout
    assert writes(gitlab) == 0
    assert shop.hooks[0]["pipeline_events"] is False and shop.hooks[0]["token"] is None

    out = run_cli(gitlab, "unregister", "--project", "acme/shop", "--url", URL, "--dry-run")
    assert out.returncode == 0 and "would delete hook" in out.stdout
    assert len(shop.hooks) == 1 and writes(gitlab) == 0


def test_update_restores_token_events_and_url(gitlab, shop, client):
    # A hook someone made by hand: trailing slash, no secret, pipeline events off, a branch filter.
    made = client.add_hook("project", 601, {"url": URL + "/", "push_events": True,
                                            "push_events_branch_filter": "main", "issues_events": True})
    assert shop.hooks[0]["token"] is None
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL)
    assert out.returncode == 0, out.stderr
    assert len(shop.hooks) == 1
    hook = shop.hooks[0]
    assert hook["id"] == made["id"]
    assert hook["url"] == URL and hook["token"] == SECRET
    assert all(hook[k] is True for k in EVENTS) and hook["push_events_branch_filter"] == ""
    assert hook["issues_events"] is True  # settings tagsweeper does not own are left alone
    line = out.stdout.splitlines()[0]
    assert line.startswith(f"updated hook {made['id']} on project acme/shop: url ")
    for change in ("merge_requests_events false -> true", "pipeline_events false -> true",
                   "deployment_events false -> true", "push_events_branch_filter 'main' -> ''", "token re-sent"):
        assert change in line


def test_token_is_sent_with_every_update(gitlab, shop):
    """GitLab drops a hook's token when its URL changes; register must always send it."""
    run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL)
    shop.hooks[0]["token"] = None  # e.g. someone edited the URL in the UI
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL)
    assert out.returncode == 0, out.stderr
    assert shop.hooks[0]["token"] == SECRET


def test_no_ssl_verification_and_json(gitlab, shop):
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL, "--no-ssl-verification", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["action"] == "created" and result["hook_id"] == shop.hooks[0]["id"]
    assert result["owner"] == {"kind": "project", "id": 601, "path": "acme/shop"}
    assert result["enable_ssl_verification"] is False and result["token_sent"] is True
    assert_tagsweeper_hook(shop.hooks[0], ssl=False)

    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL, "--json")
    result = json.loads(out.stdout)
    assert result["action"] == "updated"
    assert result["changes"] == {"enable_ssl_verification": [False, True]}
    assert shop.hooks[0]["enable_ssl_verification"] is True


def test_duplicates_are_reported_then_pruned_on_request(gitlab, shop, client):
    first = client.add_hook("project", 601, {"url": URL})
    second = client.add_hook("project", 601, {"url": URL + "/"})
    other = client.add_hook("project", 601, {"url": "https://ci.example.com/hook"})
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL)
    assert out.returncode == 0, out.stderr
    assert f"updated hook {first['id']}" in out.stdout
    assert f"warning: hook {second['id']} on project acme/shop also has this URL" in out.stdout
    assert "--prune-duplicates" in out.stdout
    assert [h["id"] for h in shop.hooks] == [first["id"], second["id"], other["id"]]  # nothing deleted
    assert shop.hooks[0]["token"] == SECRET

    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL, "--prune-duplicates", "--dry-run")
    assert f"would delete duplicate hook {second['id']}" in out.stdout and len(shop.hooks) == 3

    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL, "--prune-duplicates")
    assert out.returncode == 0, out.stderr
    assert f"deleted duplicate hook {second['id']}" in out.stdout
    assert [h["id"] for h in shop.hooks] == [first["id"], other["id"]]  # another URL is not ours


def test_group_hooks(gitlab):
    group = gitlab.add_group(70, "acme")
    out = run_cli(gitlab, "register", "--group", "acme", "--url", URL)
    assert out.returncode == 0, out.stderr
    assert len(group.hooks) == 1
    assert_tagsweeper_hook(group.hooks[0])
    assert group.hooks[0]["group_id"] == 70
    assert out.stdout.startswith(f"created hook {group.hooks[0]['id']} on group acme")

    out = run_cli(gitlab, "register", "--group", "70", "--url", URL)
    assert out.returncode == 0 and len(group.hooks) == 1 and "updated hook" in out.stdout

    out = run_cli(gitlab, "unregister", "--group", "acme", "--url", URL)
    assert out.returncode == 0, out.stderr
    assert group.hooks == [] and "deleted hook" in out.stdout


def test_notes_for_plain_http_and_odd_paths(gitlab, shop):
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", "http://10.0.0.5:8000/webhook")
    assert out.returncode == 0, out.stderr
    assert "note: tagsweeper receives webhooks at /hooks/gitlab; this URL's path is '/webhook'" in out.stdout
    assert "unencrypted" in out.stdout


# --- unregister -------------------------------------------------------------------------------

def test_unregister_removes_every_matching_hook_and_is_idempotent(gitlab, shop, client):
    run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL)
    client.add_hook("project", 601, {"url": URL + "/"})
    keep = client.add_hook("project", 601, {"url": "https://ci.example.com/hook"})
    out = run_cli(gitlab, "unregister", "--project", "acme/shop", "--url", URL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("deleted hook") == 2
    assert [h["id"] for h in shop.hooks] == [keep["id"]]

    out = run_cli(gitlab, "unregister", "--project", "acme/shop", "--url", URL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"no hook for {URL} on project acme/shop: nothing to do"
    assert len(shop.hooks) == 1


def test_unregister_does_not_need_the_secret(gitlab, shop):
    run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL)
    out = run_cli(gitlab, "unregister", "--project", "acme/shop", "--url", URL, secret=None)
    assert out.returncode == 0, out.stderr
    assert shop.hooks == []


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, why", [
    ("ftp://tagsweeper.example.com/hooks/gitlab", "must start with http:// or https://"),
    ("tagsweeper.example.com/hooks/gitlab", "must start with http:// or https://"),
    ("https:///hooks/gitlab", "has no host"),
    ("https://tag sweeper.example.com/hooks/gitlab", "whitespace"),
    ("https://tagsweeper.example.com:http/", "Port"),
    ("", "must start with http"),
])
def test_bad_url_is_a_usage_error(gitlab, shop, url, why):
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", url)
    assert out.returncode == 2
    assert "argument --url" in out.stderr and "is not a webhook URL" in out.stderr and why in out.stderr
    assert gitlab.requests == []
    with pytest.raises(reg.RegistrationError, match=why) as info:
        reg.check_url(url)
    assert info.value.status == 2


def test_exactly_one_of_project_or_group(gitlab, shop):
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--group", "acme", "--url", URL)
    assert out.returncode == 2 and "not allowed with argument" in out.stderr
    out = run_cli(gitlab, "register", "--url", URL)
    assert out.returncode == 2 and "one of the arguments --project --group is required" in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--project", "acme/nope"], "tagsweeper: project acme/nope not found"),
    (["--project", "999"], "tagsweeper: project 999 not found"),
    (["--group", "nobody"], "tagsweeper: group nobody not found"),
])
def test_unknown_project_or_group(gitlab, shop, args, message):
    for command in ("register", "unregister"):
        out = run_cli(gitlab, command, *args, "--url", URL)
        assert out.returncode == 1
        assert out.stderr.strip().startswith(message) and "can see it" in out.stderr
    assert writes(gitlab) == 0


def test_refused_token_says_which_scope_and_role(gitlab, shop):
    gitlab.add_group(70, "acme")
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL, token="glpat-wrong")
    assert out.returncode == 1
    assert "401" in out.stderr and "api scope" in out.stderr and "Maintainer" in out.stderr
    out = run_cli(gitlab, "register", "--group", "acme", "--url", URL, token="glpat-wrong")
    assert out.returncode == 1 and "Owner of the group" in out.stderr

    # A valid token whose user may read the project but not manage its hooks.
    gitlab.inject_fault("GET", r"/projects/601/hooks$", 403, times=-1, body={"message": "403 Forbidden"})
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL)
    assert out.returncode == 1
    assert "403" in out.stderr and "api scope" in out.stderr and "Maintainer" in out.stderr
    assert shop.hooks == []


def test_missing_secret_is_a_configuration_error(gitlab, shop):
    for secret in (None, " , "):
        out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL, secret=secret)
        assert out.returncode == 2 and "WEBHOOK_SECRET is not set" in out.stderr
    assert gitlab.requests == []


def test_missing_gitlab_settings(gitlab):
    env = {k: v for k, v in os.environ.items() if k not in ("GITLAB_URL", "GITLAB_TOKEN")}
    out = subprocess.run([sys.executable, "-m", "workers.cli", "unregister", "--project", "1", "--url", URL],
                         capture_output=True, text=True, env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 2 and "GITLAB_URL is not set" in out.stderr


def test_secret_never_printed_even_when_gitlab_echoes_it(gitlab, shop):
    # A GitLab error that quotes the request back: the secret is masked in what we print.
    gitlab.inject_fault("POST", r"/projects/601/hooks$", 422, body={"message": f"token {SECRET} is weird"})
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL)  # run_cli checks no leak
    assert out.returncode == 1
    assert "422" in out.stderr and reg.REDACTED in out.stderr
    # Retries are logged (JSON lines on stderr): still no secret.
    gitlab.inject_fault("POST", r"/projects/601/hooks$", 502, times=1)
    out = run_cli(gitlab, "register", "--project", "acme/shop", "--url", URL, "--json")
    assert out.returncode == 0, out.stderr
    assert "gitlab call failed" in out.stderr
    assert len(shop.hooks) == 1 and shop.hooks[0]["token"] == SECRET


# --- the module's functions ---------------------------------------------------------------------

def test_functions_in_process(gitlab, shop, client):
    owner = reg.resolve(client, "project", "ACME/shop")
    assert owner == reg.Owner("project", 601, "acme/shop")
    created = reg.register(client, owner, URL, SECRET)
    assert created["action"] == "created" and SECRET not in json.dumps(created)
    again = reg.register(client, owner, URL, SECRET)
    assert again["action"] == "updated" and again["changes"] == {} and again["hook_id"] == created["hook_id"]
    assert len(shop.hooks) == 1
    gone = reg.unregister(client, owner, URL)
    assert gone["deleted"] == [created["hook_id"]] and shop.hooks == []
    assert reg.unregister(client, owner, URL)["action"] == "none"
    with pytest.raises(reg.RegistrationError, match="group nobody not found"):
        reg.resolve(client, "group", "nobody")


@pytest.mark.parametrize("existing, same", [
    (URL, True), (URL + "/", True), (URL + "  ", True), (URL + "\n", True),
    (URL + "//", False), (URL + "x", False), (URL.upper(), False), (None, False), ("", False),
])
def test_same_url(existing, same):
    assert reg.same_url(existing, URL) is same


def test_webhook_secret_is_the_first_value():
    assert reg.webhook_secret({"WEBHOOK_SECRET": f" {SECRET} , {NEXT_SECRET}"}) == SECRET
    with pytest.raises(reg.ConfigError, match="WEBHOOK_SECRET is not set"):
        reg.webhook_secret({"WEBHOOK_SECRET": ","})
