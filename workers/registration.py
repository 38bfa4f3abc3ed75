"""Managing tagsweeper's webhook on a project or group: what `tagsweeper register` and
`tagsweeper unregister` do (their arguments and output: workers/cli/webhook.py).

register   creates the hook (secret = the first value of WEBHOOK_SECRET; merge request,
           push, pipeline and deployment events on; everything else left at GitLab's defaults), or
           updates the hook that already has this URL. Running it twice leaves one hook.
unregister deletes every hook with this URL.

Which hooks "have this URL": exactly the same string once trailing whitespace is
stripped, or one that differs from it only by a trailing slash (an update then sets
the URL to the one given).

GitLab never returns a hook's token, so an existing hook cannot be known to hold the
right secret: register always updates it and always sends the token (GitLab would also
drop the token if the URL changed). It therefore says "updated ... token re-sent" even
when every visible setting already matched, never "already up to date".

When several hooks have the URL, the one with the lowest id is updated and the others
are reported; `--prune-duplicates` deletes them (without it nothing is deleted, since
someone may have added them on purpose). Other settings of an existing hook (other
events, name, description) are left as they are, except a push-events branch filter,
which is cleared: tagsweeper needs push events of every branch.

The secret never appears in a result or in an error message (`redact` blanks it should
GitLab echo it back).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping
from urllib.parse import urlsplit

from workers.gitlab import AuthError, GitLab, GitLabError, NotFound
from workers.common.settings import ConfigError, Settings

EVENTS = ("merge_requests_events", "push_events", "pipeline_events", "deployment_events")
RECEIVER_PATH = "/hooks/gitlab"
REDACTED = "[WEBHOOK_SECRET]"


class RegistrationError(Exception):
    """A failure with a message fit for the user; `status` is the exit status."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Owner:
    """The project or group a hook belongs to, as GitLab knows it."""
    kind: str  # "project" or "group"
    id: int
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"

    def as_dict(self) -> dict:
        return {"kind": self.kind, "id": self.id, "path": self.path}


# --- inputs -------------------------------------------------------------------------------

def check_url(value: str) -> str:
    """The hook URL, trailing whitespace stripped; RegistrationError (status 2) unless http(s) with a host."""
    url = str(value).strip()
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        problem = str(exc)
    else:
        if parts.scheme.lower() not in ("http", "https"):
            problem = "it must start with http:// or https://"
        elif not parts.hostname:
            problem = "it has no host"
        elif any(c.isspace() or ord(c) < 32 for c in url):
            problem = "it contains whitespace or control characters"
    if problem:
        raise RegistrationError(f"{url!r} is not a webhook URL: {problem} "
                                f"(e.g. https://tagsweeper.example.com{RECEIVER_PATH})", 2)
    return url


def webhook_secret(settings: Settings | Mapping[str, str]) -> str:
    """The first of WEBHOOK_SECRET's comma-separated values (the one the web process checks first),
    from the settings (or from environment variables, read as settings)."""
    if not isinstance(settings, Settings):
        settings = Settings.from_env(settings)
    if not settings.webhook_secrets:
        raise ConfigError("WEBHOOK_SECRET is not set: register sends its first value as the hook's "
                          "secret token; set it to the same value the web process uses")
    return settings.webhook_secrets[0]


def same_url(existing: str | None, url: str) -> bool:
    """Does a hook's URL count as `url`? Equal after stripping trailing whitespace, or
    differing only by one trailing slash."""
    if not existing:
        return False
    a, b = existing.rstrip(), url.rstrip()
    return a == b or a == b + "/" or b == a + "/"


# --- GitLab -------------------------------------------------------------------------------

def _role(kind: str) -> str:
    return "Maintainer (or Owner) of the project" if kind == "project" else "Owner of the group"


def _access_hint(kind: str) -> str:
    return (f"managing {kind} hooks needs a GITLAB_TOKEN with the api scope whose user is "
            f"{_role(kind)}")


@contextmanager
def _explain(kind: str, what: str) -> Iterator[None]:
    """Turn GitLab's errors into messages that say what to do."""
    try:
        yield
    except AuthError as exc:
        raise RegistrationError(f"{what}: {exc}; {_access_hint(kind)}") from None
    except NotFound as exc:
        extra = (" (group webhooks need GitLab Premium or Ultimate)" if kind == "group" else "")
        raise RegistrationError(f"{what}: GitLab answered 404{extra}; {_access_hint(kind)} ({exc})") from None
    except GitLabError as exc:
        raise RegistrationError(f"{what}: GitLab: {exc}") from None


def resolve(gitlab: GitLab, kind: str, ref: int | str) -> Owner:
    """Look the project or group up: its id and full path. Unknown -> RegistrationError (status 1)."""
    try:
        if kind == "project":
            data = gitlab.project(ref)
            return Owner("project", int(data["id"]), data.get("path_with_namespace") or str(ref))
        data = gitlab.group(ref)
        return Owner("group", int(data["id"]), data.get("full_path") or str(ref))
    except NotFound:
        raise RegistrationError(f"{kind} {ref!s} not found: check the id or path, and that GITLAB_TOKEN's "
                                f"user can see it", 1) from None
    except AuthError as exc:
        raise RegistrationError(f"looking up {kind} {ref!s}: {exc}; {_access_hint(kind)}") from None
    except GitLabError as exc:
        raise RegistrationError(f"looking up {kind} {ref!s}: GitLab: {exc}") from None
    except (KeyError, TypeError, ValueError):
        raise RegistrationError(f"looking up {kind} {ref!s}: GitLab's answer has no id") from None


def matching_hooks(gitlab: GitLab, owner: Owner, url: str) -> list[dict]:
    """The owner's hooks with this URL, lowest id first."""
    with _explain(owner.kind, f"listing the hooks of {owner}"):
        hooks = list(gitlab.hooks(owner.kind, owner.id))
    return sorted((h for h in hooks if same_url(h.get("url"), url)), key=lambda h: int(h["id"]))


def _notes(url: str, ssl_verification: bool) -> list[str]:
    notes = []
    parts = urlsplit(url)
    if parts.path.rstrip("/") != RECEIVER_PATH:
        notes.append(f"tagsweeper receives webhooks at {RECEIVER_PATH}; this URL's path is {parts.path or '/'!r}")
    if parts.scheme.lower() == "http":
        notes.append("the URL is plain http: GitLab will send the secret token unencrypted")
    elif not ssl_verification:
        notes.append("SSL verification is off: GitLab will not check the receiver's certificate")
    return notes


def register(gitlab: GitLab, owner: Owner, url: str, secret: str, *, ssl_verification: bool = True,
             dry_run: bool = False, prune_duplicates: bool = False) -> dict:
    """Create tagsweeper's hook on `owner`, or update the one with this URL. Returns what was
    (or, with dry_run, would be) done; the secret is never part of it."""
    url = check_url(url)
    if not secret:
        raise RegistrationError("the webhook secret is empty", 2)
    wanted = {key: True for key in EVENTS}
    wanted["enable_ssl_verification"] = ssl_verification
    found = matching_hooks(gitlab, owner, url)
    result = {"command": "register", "action": "updated" if found else "created", "dry_run": dry_run,
              "owner": owner.as_dict(), "url": url, "hook_id": None, "changes": {}, "token_sent": not dry_run,
              "duplicates": [], "duplicates_deleted": [], "enable_ssl_verification": ssl_verification,
              "notes": _notes(url, ssl_verification)}

    if not found:
        if not dry_run:
            with _explain(owner.kind, f"creating a hook on {owner}"):
                hook = gitlab.add_hook(owner.kind, owner.id, {"url": url, "token": secret, **wanted})
            result["hook_id"] = int(hook["id"])
            # A POST retried after a lost answer, or a concurrent run, can leave a second hook.
            result["duplicates"] = [int(h["id"]) for h in matching_hooks(gitlab, owner, url)
                                    if int(h["id"]) != result["hook_id"]]
        return result

    hook, extra = found[0], found[1:]
    result.update(hook_id=int(hook["id"]), duplicates=[int(h["id"]) for h in extra])
    changes = {}
    if hook.get("url") != url:
        changes["url"] = [hook.get("url"), url]
    for key, value in wanted.items():
        if hook.get(key) is not value:
            changes[key] = [hook.get(key), value]
    if hook.get("push_events_branch_filter"):
        changes["push_events_branch_filter"] = [hook["push_events_branch_filter"], ""]
    result["changes"] = changes
    if not dry_run:
        # Always PUT, always with the token: it cannot be read back, so it cannot be checked.
        fields = {"url": url, "token": secret, **wanted}
        if "push_events_branch_filter" in changes:
            fields["push_events_branch_filter"] = ""
        with _explain(owner.kind, f"updating hook {hook['id']} on {owner}"):
            gitlab.edit_hook(owner.kind, owner.id, int(hook["id"]), fields)
    if prune_duplicates:
        for dup in result["duplicates"]:
            if not dry_run:
                with _explain(owner.kind, f"deleting duplicate hook {dup} on {owner}"):
                    gitlab.delete_hook(owner.kind, owner.id, dup)
            result["duplicates_deleted"].append(dup)
    return result


def unregister(gitlab: GitLab, owner: Owner, url: str, *, dry_run: bool = False) -> dict:
    """Delete every hook of `owner` with this URL."""
    url = check_url(url)
    found = matching_hooks(gitlab, owner, url)
    result = {"command": "unregister", "dry_run": dry_run, "owner": owner.as_dict(), "url": url,
              "action": "deleted" if found else "none", "deleted": [], "already_gone": []}
    for hook in found:
        hook_id = int(hook["id"])
        if dry_run:
            result["deleted"].append(hook_id)
            continue
        with _explain(owner.kind, f"deleting hook {hook_id} on {owner}"):
            gone = gitlab.delete_hook(owner.kind, owner.id, hook_id)
        result["deleted" if gone else "already_gone"].append(hook_id)
    return result


# --- keeping the secret out of what is shown -----------------------------------------------

def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, REDACTED) if secret else text
