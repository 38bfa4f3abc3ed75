"""The container registry client: Registry API v2 spoken directly, with GitLab's JWT.

`Registry` lists tags, resolves a tag to its digest and deletes exactly one tag. It
authenticates the way the registry asks: the `WWW-Authenticate: Bearer` challenge
names a token realm (GitLab's `/jwt/auth`), which trades HTTP Basic credentials for a
short-lived bearer token scoped to one repository. Tokens are cached per repository
and renewed shortly before they expire, or once when the registry refuses one.

Deleting one tag: the OCI `DELETE /v2/<name>/manifests/<tag>` where the registry has
it (GitLab's own registry since 16.4). CNCF distribution 2.8 refuses that (400), and
deleting the tag's digest would remove every tag on that digest, `latest` included.
So the fallback, as GitLab itself and regclient do it, overwrites the tag with a tiny
unique "tombstone" manifest and deletes the tombstone's digest, which no other tag
can share.

Built like workers/gitlab.py on workers/http.py: one requests.Session, a timeout on
every call, transient answers (429, 5xx, dropped connections, timeouts) retried with
exponential backoff that honours `Retry-After`; its errors are the shared kinds of
workers/common/errors.py. Credentials and tokens never appear in log lines or exception messages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import urljoin, urlsplit

import requests

from workers.common import errors
from workers.http import Client

log = logging.getLogger("tagsweeper.registry")


DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

# Every manifest type at once, so the registry never converts and the digest is the stored one.
MANIFEST_ACCEPT = ", ".join([DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX])

# The one blob every tombstone points at: a minimal, valid image config.
DUMMY_CONFIG = b'{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}'
TOMBSTONE_ANNOTATION = "org.tagsweeper.tombstone"

# Nothing has this digest: deleting it tells whether deletes are enabled at all (404) or not (405).
NO_SUCH_DIGEST = "sha256:" + "0" * 64

# delete_tags: tags of one repository overwritten with one shared tombstone, then deleted together by
# one DELETE (on distribution 2.8 that DELETE scans every tag of the repository, so fewer is better).
# Bounds how long doomed tags point at a tombstone before it goes: a few seconds at most.
# The default of Registry's `tombstone_batch`.
TOMBSTONE_BATCH = 500

# distribution's reference grammar. A tag can never look like a digest ("sha256:..."),
# which matters: DELETE on a digest reference removes every tag on it.
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPO_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[A-Za-z0-9=_-]{32,}")

DEFAULT_TOKEN_TTL = 60.0  # what the token spec says to assume when expires_in is absent


class RegistryError(errors.ServiceError):
    """Base of every error talking to a container registry or its token service."""


class AuthError(RegistryError, errors.AuthError):
    """The token service refused the credentials, or the registry refused the token twice."""


class TransientError(RegistryError, errors.TransientError):
    """The registry or token service kept answering 429/5xx or did not answer; retry later."""


class BadResponse(RegistryError, errors.BadResponse):
    """An answer the client cannot use (unexpected status, missing header, not JSON)."""


@dataclass(frozen=True)
class Challenge:
    """One `WWW-Authenticate` challenge: its scheme and auth-params (keys lower-cased)."""

    scheme: str
    params: dict[str, str]

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")


class _Bearer(requests.auth.AuthBase):
    """Bearer auth as a requests auth object: this way a ~/.netrc entry for the registry
    host cannot replace the token (requests consults netrc only when auth is unset)."""

    def __init__(self, token: str):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


@dataclass
class _Token:
    value: str
    renew_at: float  # on the client's clock


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})")
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*=\s*")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
_BARE_RE = re.compile(r"[^\s,\"]+")  # lenient: real servers send unquoted URLs


def parse_challenges(header: str | None) -> list[Challenge]:
    """Parse a WWW-Authenticate value (RFC 9110 §11.6.1): one or more challenges, each a
    scheme then comma-separated auth-params whose values may be quoted (with commas and
    backslash escapes inside). requests joins repeated headers with ", ", which this
    grammar also covers. Malformed input yields what could be read, never an exception."""
    out: list[Challenge] = []
    text = header or ""
    pos = 0
    while pos < len(text):
        # Skip separators between challenges.
        while pos < len(text) and text[pos] in " \t,":
            pos += 1
        m = _SCHEME_RE.match(text, pos)
        if not m:
            break
        scheme, pos = m.group(1), m.end()
        params: dict[str, str] = {}
        while True:
            save = pos
            while pos < len(text) and text[pos] in " \t,":
                pos += 1
            p = _PARAM_RE.match(text, pos)
            if not p:
                pos = save
                break  # not "key=": the next challenge's scheme (or the end)
            pos = p.end()
            q = _QUOTED_RE.match(text, pos)
            if q:
                value, pos = re.sub(r"\\(.)", r"\1", q.group(1)), q.end()
            else:
                b = _BARE_RE.match(text, pos)
                value, pos = (b.group(0), b.end()) if b else ("", pos)
            params[p.group(1).lower()] = value
        out.append(Challenge(scheme, params))
    return out


def bearer_challenge(header: str | None) -> Challenge | None:
    """The Bearer challenge of a WWW-Authenticate value, if it has one with a realm."""
    for challenge in parse_challenges(header):
        if challenge.scheme.lower() == "bearer" and challenge.realm:
            return challenge
    return None


def registry_base(location: str, scheme: str = "https") -> tuple[str, str]:
    """Split a GitLab repository `location` ("registry.example.com/group/project/worker",
    "127.0.0.1:5000/acme/shop") into (base URL, repository path). A location that already
    carries a scheme keeps it."""
    text = location.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
    host, _, path = text.strip("/").partition("/")
    path = path.strip("/")
    if not host or not path:
        raise ValueError(f"not a registry repository location: {location!r}")
    return f"{scheme}://{host}", path


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _check_repo(repo: str) -> str:
    if not isinstance(repo, str) or not REPO_RE.fullmatch(repo):
        raise ValueError(f"not a valid repository path: {repo!r}")
    return repo


def _check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not TAG_RE.fullmatch(tag):
        raise ValueError(f"not a valid tag: {tag!r}")
    return tag


def _error_codes(response: requests.Response) -> set[str]:
    """The `errors[].code` values of a registry error body (empty when there is none)."""
    try:
        body = response.json()
    except ValueError:
        return set()
    errors = body.get("errors") if isinstance(body, dict) else None
    return {str(e.get("code")) for e in errors or [] if isinstance(e, dict) and e.get("code")}


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return (response.text or "").strip()[:200] or response.reason or ""
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in body["errors"]
                         if isinstance(e, dict))[:200]
    return str(body)[:200]


class Registry(Client):
    """A client of one registry (one base URL) that deletes exactly the tags it is told to.

    Thread-safe: one Session with a connection pool, a lock around every cache. Token
    fetches are serialised per repository (so N threads get one token), and the
    tombstone fallback runs one tag at a time per repository (see `delete_tag`) while
    different repositories proceed in parallel.
    """

    transient_error = TransientError
    log = log
    log_message = "registry call failed"
    follow_redirects = False  # a Location could send the bearer token to another host

    def __init__(self, base_url: str, *, username: str, password: str, timeout: float = 30.0,
                 attempts: int = 4, backoff: float = 0.5, max_wait: float = 60.0, pool_size: int = 10,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 tombstone_batch: int = TOMBSTONE_BATCH):
        super().__init__(timeout=timeout, attempts=attempts, backoff=backoff, max_wait=max_wait,
                         pool_size=pool_size, sleep=sleep, headers={})
        self.base_url = base_url.rstrip("/")
        self.tombstone_batch = max(1, int(tombstone_batch))  # tags under one tombstone (delete_tags)
        self._origin = urlsplit(self.base_url)[:2]
        self._credentials = (username, password)
        self.username = username
        self._clock = clock
        # self._lock (Client's) guards every dict and flag below, as it does `calls`.
        self._challenge: Challenge | None = None
        self._open = False  # GET /v2/ answered 200: the registry wants no auth
        self._challenge_lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        self._token_locks: dict[str, threading.Lock] = {}
        self._repo_locks: dict[str, threading.RLock] = {}
        self._dummy_configs: dict[str, dict] = {}  # repo -> descriptor of the uploaded dummy config
        # None until the first DELETE by tag tells; False: use the tombstone fallback.
        self._tag_delete: bool | None = None
        self._probe_lock = threading.Lock()
        self._deletes_checked = False

    def repo_lock(self, repo: str) -> threading.RLock:
        """The lock serialising this client's tag rewrites in `repo`."""
        with self._lock:
            return self._repo_locks.setdefault(repo, threading.RLock())

    # -- tokens ---------------------------------------------------------------------------
    def _learn(self, challenge: Challenge) -> None:
        """Remember where tokens come from; a 401's `scope`/`error` belong to that request only."""
        kept = Challenge("Bearer", {k: v for k, v in challenge.params.items() if k in ("realm", "service")})
        with self._lock:
            self._challenge = kept
            self._open = False

    def _discover(self) -> Challenge | None:
        """The registry's Bearer challenge, asked once per client with GET /v2/ (None: no auth)."""
        with self._lock:
            if self._challenge is not None or self._open:
                return self._challenge
        with self._challenge_lock:
            with self._lock:
                if self._challenge is not None or self._open:
                    return self._challenge
            response = self._send("GET", self.base_url + "/v2/", "GET /v2/")
            if response.status_code == 200:
                with self._lock:
                    self._open = True
                return None
            if response.status_code == 401:
                challenge = bearer_challenge(response.headers.get("WWW-Authenticate"))
                if challenge is None:
                    schemes = [c.scheme for c in parse_challenges(response.headers.get("WWW-Authenticate"))]
                    raise AuthError(f"{self.base_url} asks for {', '.join(schemes) or 'unknown'} auth; "
                                    "only Bearer token auth (GitLab's /jwt/auth) is supported", 401)
                self._learn(challenge)
                return challenge
            raise BadResponse(f"GET {self.base_url}/v2/: HTTP {response.status_code}: "
                              "not a Registry API v2 endpoint?", response.status_code)

    def _token(self, repo: str, stale: str | None = None) -> str | None:
        """A bearer token for `repo` (None when the registry wants none). `stale` is a token
        the registry just refused: it is renewed unless another thread already did."""
        challenge = self._discover()
        if challenge is None:
            return None
        with self._lock:
            lock = self._token_locks.setdefault(repo, threading.Lock())
        with lock:
            with self._lock:
                cached = self._tokens.get(repo)
            if cached and cached.value != stale and self._clock() < cached.renew_at:
                return cached.value
            token = self._fetch_token(challenge, repo)
            with self._lock:
                self._tokens[repo] = token
            return token.value

    def _fetch_token(self, challenge: Challenge, repo: str) -> _Token:
        realm = challenge.realm or ""
        params = {"scope": f"repository:{repo}:pull,push,delete"}
        if challenge.service:
            params["service"] = challenge.service
        what = f"GET {realm} (token for {repo})"
        # Local clock before the request: conservative, and immune to skew in issued_at.
        started = self._clock()
        response = self._send("GET", realm, what, params=params, auth=self._credentials,
                              headers={"Accept": "application/json"})
        status = response.status_code
        if status in (401, 403):
            raise AuthError(
                f"{what}: the token service refused the credentials of user {self.username!r} "
                f"(HTTP {status}): check that the registry password/token is valid and not expired "
                "(a personal, group or project access token with the api scope, or CI_JOB_TOKEN)", status)
        if status != 200:
            raise BadResponse(f"{what}: unexpected HTTP {status}: {_message(response)}", status)
        try:
            body = response.json()
        except ValueError:
            raise BadResponse(f"{what}: the token service answered with no JSON") from None
        value = (body.get("token") or body.get("access_token")) if isinstance(body, dict) else None
        if not value or not isinstance(value, str):
            raise BadResponse(f"{what}: no token in the answer")
        try:
            ttl = float(body.get("expires_in") or DEFAULT_TOKEN_TTL)
        except (TypeError, ValueError):
            ttl = DEFAULT_TOKEN_TTL
        # Renew 10% early, at least 10 s, but never later than half-way.
        margin = min(max(0.1 * ttl, 10.0), 0.5 * ttl)
        return _Token(value, started + ttl - margin)

    # -- requests to one repository ---------------------------------------------------------
    def _call(self, method: str, repo: str, path_or_url: str, *, headers: dict | None = None,
              data: bytes | None = None, params: dict | None = None) -> requests.Response:
        """One request about `repo` with its bearer token; renew the token once on 401/403."""
        url = path_or_url if "://" in path_or_url else f"{self.base_url}/v2/{repo}{path_or_url}"
        if urlsplit(url)[:2] != self._origin:
            # Never hand a token to another host (a Link or Location could point anywhere).
            raise BadResponse(f"{method} for {repo}: refusing to follow {url!r} off {self.base_url}")
        what = f"{method} {urlsplit(url).path}"
        token = self._token(repo)
        refused: requests.Response | None = None
        for renewed in (False, True):
            response = self._send(method, url, what, headers=headers, data=data, params=params,
                                  auth=_Bearer(token) if token else None)
            if response.status_code not in (401, 403):
                return response
            refused = response
            challenge = bearer_challenge(response.headers.get("WWW-Authenticate"))
            if challenge is not None:
                self._learn(challenge)  # the first 401 of an open-looking registry, or a moved realm
            if renewed:
                break
            token = self._token(repo, stale=token or "")
        raise self._refused(refused, what, method, repo)

    @staticmethod
    def _refused(response: requests.Response, what: str, method: str, repo: str) -> AuthError:
        status = response.status_code
        challenge = bearer_challenge(response.headers.get("WWW-Authenticate"))
        error = challenge.params.get("error", "") if challenge else ""
        needs = "pull" if method in ("GET", "HEAD") else "push and delete"
        detail = f" ({error})" if error else ""
        return AuthError(
            f"{what}: the registry refused a freshly issued token (HTTP {status}{detail}): the user "
            f"lacks {needs} rights on {repo!r}. delete is granted only to a Maintainer using an "
            "api-scoped token (or CI_JOB_TOKEN for its own project), never to read_registry/"
            "write_registry tokens or deploy tokens", status)

    # -- reading --------------------------------------------------------------------------
    def tags(self, repo: str, page_size: int = 1000) -> Iterator[str]:
        """Yield every tag of `repo`, page by page, following `Link: <...>; rel="next"`.

        distribution 2.8 ignores `n` and returns everything at once (maybe `"tags": null`);
        GitLab's registry and others paginate. An unknown repository yields nothing."""
        _check_repo(repo)
        url: str | None = f"{self.base_url}/v2/{repo}/tags/list"
        params: dict | None = {"n": int(page_size)}
        seen: set[str] = set()
        while url:
            response = self._call("GET", repo, url, params=params, headers={"Accept": "application/json"})
            if response.status_code == 404:
                return  # NAME_UNKNOWN: never pushed, or gone
            if response.status_code != 200:
                raise BadResponse(f"GET tags of {repo}: unexpected HTTP {response.status_code}: "
                                  f"{_message(response)}", response.status_code)
            try:
                body = response.json()
            except ValueError:
                raise BadResponse(f"GET tags of {repo}: answer is not JSON") from None
            yield from (body.get("tags") or []) if isinstance(body, dict) else []
            seen.add(response.url)
            url = next_link(response)
            params = None  # the next link carries n= and last=
            if url in seen:
                raise BadResponse(f"GET tags of {repo}: pagination loops back to {url}")

    def resolve(self, repo: str, tag: str) -> str | None:
        """The digest `tag` points at, or None when it does not exist."""
        _check_repo(repo)
        _check_tag(tag)
        return self._resolve(repo, tag)

    def _resolve(self, repo: str, reference: str) -> str | None:
        response = self._call("HEAD", repo, f"/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise BadResponse(f"HEAD {repo}:{reference}: unexpected HTTP {response.status_code}",
                              response.status_code)
        digest = response.headers.get("Docker-Content-Digest", "")
        if not DIGEST_RE.fullmatch(digest):
            raise BadResponse(f"HEAD {repo}:{reference}: no usable Docker-Content-Digest header")
        return digest

    # -- deleting -------------------------------------------------------------------------
    def delete_tag(self, repo: str, tag: str, expected_digest: str | None = None) -> tuple[str, str | None]:
        """Delete exactly `tag` of `repo`, never any other tag.

        Returns (outcome, digest): outcome "deleted", "absent" (no such tag) or "changed"
        (the tag points at a digest other than `expected_digest`: nothing was written);
        digest is what the tag pointed at before, when known.

        The OCI way first: DELETE /v2/<name>/manifests/<tag>. Where the registry refuses
        that (400/405, as distribution 2.8 does), the client remembers it and from then on
        uses the fallback: resolve the tag, PUT a unique tombstone manifest onto it, then
        DELETE the tombstone's digest. The original digest is never deleted: that would
        remove every tag sharing it.

        Race window: a CI job pushing this same tag between the HEAD that resolves it and
        the PUT (or the OCI DELETE) would have its fresh push overwritten/deleted. Nothing
        is sent between the two, so the window is one round trip. In one repository this
        client rewrites one tag at a time (distribution 2.8 fails concurrent tag rewrites in
        a repository); different repositories proceed in parallel.
        """
        _check_repo(repo)
        _check_tag(tag)
        if expected_digest is not None and not DIGEST_RE.fullmatch(expected_digest):
            raise ValueError(f"not a digest: {expected_digest!r}")
        with self._lock:
            supported = self._tag_delete
        if supported is None:
            # The first caller finds out while the others wait, so a refused DELETE is sent once.
            with self._probe_lock:
                with self._lock:
                    supported = self._tag_delete
                if supported is None:
                    result = self._delete_by_tag(repo, tag, expected_digest)
                    if result is not None:
                        return result
                    supported = False
        if supported:
            result = self._delete_by_tag(repo, tag, expected_digest)
            if result is not None:
                return result
        return self._delete_by_tombstone(repo, tag, expected_digest)

    def delete_tags(self, repo: str, tags: list[str]) -> list[tuple[str, str | None] | RegistryError]:
        """Delete exactly these tags of `repo`, never any other tag: what `delete_tag` does for
        each, in fewer requests. One result per tag, in order: (outcome, digest) as `delete_tag`
        returns it ("deleted" or "absent"), or the RegistryError that tag failed with. A refused
        token (AuthError) raises.

        Each tag is resolved once, immediately before it is rewritten (the caller does not
        resolve it first): that HEAD is both the plan's look and the look before the overwrite.
        The OCI way costs HEAD + DELETE per tag. The tombstone fallback writes ONE tombstone
        (random, so no other tag can ever point at it) onto up to `tombstone_batch` tags, each
        with its own HEAD then PUT with nothing in between, then DELETEs that tombstone's digest
        once, which removes exactly the tags that still point at it: about two requests per tag
        instead of three. A tag pushed again between its PUT and the DELETE keeps the new push.
        """
        _check_repo(repo)
        for tag in tags:
            _check_tag(tag)
        results: list = [None] * len(tags)
        pending = list(range(len(tags)))
        while pending:  # the OCI way (or finding out whether the registry has it) goes tag by tag
            with self._lock:
                supported = self._tag_delete
            if supported is False:
                break
            i = pending[0]
            try:
                if supported:
                    results[i] = self.delete_tag(repo, tags[i])
                else:
                    with self._probe_lock:  # the first caller finds out while the others wait
                        with self._lock:
                            supported = self._tag_delete
                        if supported is False:
                            break
                        result = self._delete_by_tag(repo, tags[i], None)
                    if result is None:
                        break  # refused (remembered): this tag goes with the others under the tombstone
                    results[i] = result
            except AuthError:
                raise
            except TransientError as exc:
                # The client's own retries ran out: the registry is failing. Every other tag would
                # wait out the same retries in turn; they fail with it now, for the job's retry.
                for j in pending:
                    results[j] = exc
                return results
            except RegistryError as exc:
                results[i] = exc
            pending.pop(0)
        for start in range(0, len(pending), self.tombstone_batch):
            chunk = pending[start:start + self.tombstone_batch]
            for i, result in zip(chunk, self._delete_by_shared_tombstone(repo, [tags[i] for i in chunk])):
                results[i] = result
        return results

    def _delete_by_shared_tombstone(self, repo: str, tags: list[str],
                                    expected: list[str | None] | None = None) -> list:
        """Overwrite each tag with this batch's tombstone (resolved right before, and skipped as
        "changed" where it no longer points at its `expected` digest), then delete the tombstone."""
        results: list = [None] * len(tags)
        annotation = secrets.token_hex(16)  # one tombstone for this batch, shared with no other tag
        tombstone: str | None = None
        written: list[tuple[int, str]] = []  # (index, digest the tag pointed at) of tags now on the tombstone
        with self.repo_lock(repo):
            with self._lock:
                config = self._dummy_configs.get(repo)
            for i, tag in enumerate(tags):
                try:
                    if config is None:
                        # First tombstone in this repository: check cheaply that there is work to do
                        # before uploading anything (an upload would create a missing repository).
                        if self._resolve(repo, tag) is None:
                            results[i] = ("absent", None)
                            continue
                        self._check_deletes_enabled(repo)
                        config = self._dummy_config(repo)
                    for attempt in range(1, self.attempts + 1):
                        # From this HEAD to the PUT nothing else is sent: the race window stays one round trip.
                        digest = self._resolve(repo, tag)
                        if digest is None:
                            results[i] = ("absent", None)
                            break
                        if expected and expected[i] is not None and digest != expected[i]:
                            results[i] = self._changed(repo, tag, digest)
                            break
                        put = self._put_tombstone(repo, tag, config, annotation)
                        if put is None:  # the blob link was being rewritten (or is gone): re-check, retry
                            with self._lock:
                                self._dummy_configs.pop(repo, None)
                            if attempt < self.attempts:
                                self._sleep(self.backoff * (2 ** (attempt - 1)))
                                config = self._dummy_config(repo)
                            continue
                        tombstone = put
                        written.append((i, digest))
                        break
                    else:
                        results[i] = TransientError(
                            f"PUT tombstone on {repo}:{tag}: the registry kept answering MANIFEST_BLOB_UNKNOWN "
                            f"after {self.attempts} attempts; nothing was changed")
                except AuthError:
                    raise
                except TransientError as exc:  # as in delete_tags: the rest fail with it, unasked
                    results[i:] = [exc] * (len(tags) - i)
                    break
                except RegistryError as exc:
                    results[i] = exc
            if written and tombstone is not None:
                first = tags[written[0][0]]
                label = first if len(written) == 1 else f"{first} (and {len(written) - 1} more tags)"
                try:
                    self._delete_tombstone(repo, label, tombstone)
                except AuthError:
                    raise
                except RegistryError as exc:
                    for i, _ in written:
                        results[i] = exc
                else:
                    for i, digest in written:
                        results[i] = ("deleted", digest)
        return results

    def _delete_by_tag(self, repo: str, tag: str, expected: str | None) -> tuple[str, str | None] | None:
        """OCI delete by tag; None when the registry does not support it (remembered)."""
        digest = self._resolve(repo, tag)
        if digest is None:
            return "absent", None
        if expected is not None and digest != expected:
            return self._changed(repo, tag, digest)
        response = self._call("DELETE", repo, f"/manifests/{tag}")
        status = response.status_code
        if status in (200, 202):
            self._set_tag_delete(True)
            return "deleted", digest
        if status in (400, 405):
            self._set_tag_delete(False)
            log.info("registry refuses DELETE by tag; using the tombstone fallback",
                     extra={"registry": self.base_url, "status": status, "codes": sorted(_error_codes(response))})
            return None
        if status == 404:
            if getattr(response, "attempts", 1) > 1:
                return "deleted", digest  # an earlier, unanswered attempt did it
            if self._resolve(repo, tag) is None:
                return "absent", digest  # deleted by someone else in between
            # It is still there: this registry answers 404 for a reference it cannot delete.
            self._set_tag_delete(False)
            return None
        raise BadResponse(f"DELETE {repo}:{tag}: unexpected HTTP {status}: {_message(response)}", status)

    def _set_tag_delete(self, supported: bool) -> None:
        with self._lock:
            self._tag_delete = supported

    def _check_deletes_enabled(self, repo: str) -> None:
        """Once per client, before the first tombstone: would a delete by digest work at all?
        Without this, a registry with deletes disabled (405) would be left with tags
        pointing at tombstones."""
        with self._lock:
            if self._deletes_checked:
                return
        response = self._call("DELETE", repo, f"/manifests/{NO_SUCH_DIGEST}")
        if response.status_code == 405:
            raise RegistryError(f"{self.base_url} does not allow deletes (HTTP 405 {_message(response)}): "
                                "enable storage.delete in the registry's configuration", 405)
        with self._lock:
            self._deletes_checked = True

    def _delete_by_tombstone(self, repo: str, tag: str, expected: str | None) -> tuple[str, str | None]:
        """One tag the fallback way: a batch of one."""
        result = self._delete_by_shared_tombstone(repo, [tag], [expected])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def _dummy_config(self, repo: str) -> dict:
        """The descriptor of the dummy config blob in `repo`, uploaded once per repository."""
        with self._lock:
            desc = self._dummy_configs.get(repo)
        if desc is not None:
            return desc
        digest = sha256_digest(DUMMY_CONFIG)
        if self._call("HEAD", repo, f"/blobs/{digest}").status_code != 200:
            self._upload_blob(repo, DUMMY_CONFIG, digest)
        desc = {"mediaType": OCI_CONFIG, "size": len(DUMMY_CONFIG), "digest": digest}
        with self._lock:
            self._dummy_configs[repo] = desc
        return desc

    def _upload_blob(self, repo: str, data: bytes, digest: str) -> None:
        """Monolithic upload: POST for an upload URL, then PUT the bytes with ?digest=."""
        start = self._call("POST", repo, "/blobs/uploads/")
        if start.status_code != 202 or not start.headers.get("Location"):
            raise BadResponse(f"POST blob upload in {repo}: unexpected HTTP {start.status_code}: "
                              f"{_message(start)}", start.status_code)
        location = urljoin(self.base_url + "/", start.headers["Location"])  # may be relative
        sep = "&" if "?" in location else "?"
        done = self._call("PUT", repo, f"{location}{sep}digest={digest}", data=data,
                          headers={"Content-Type": "application/octet-stream"})
        if done.status_code != 201:
            raise BadResponse(f"PUT blob in {repo}: unexpected HTTP {done.status_code}: {_message(done)}",
                              done.status_code)

    def _put_tombstone(self, repo: str, tag: str, config: dict, annotation: str | None = None) -> str | None:
        """PUT a unique manifest onto `tag`; its digest, or None on MANIFEST_BLOB_UNKNOWN. Tags given
        the same (random) `annotation` share one tombstone: `delete_tags` deletes them together."""
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": [],
            # Random: this digest must be shared with no other tag, ever.
            "annotations": {TOMBSTONE_ANNOTATION: annotation or secrets.token_hex(16)},
        }
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        response = self._call("PUT", repo, f"/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST})
        status = response.status_code
        if status == 400 and "MANIFEST_BLOB_UNKNOWN" in _error_codes(response):
            log.warning("registry conflict on tombstone PUT", extra={"repo": repo, "tag": tag})
            return None
        if status not in (200, 201):
            raise BadResponse(f"PUT tombstone on {repo}:{tag}: unexpected HTTP {status}: {_message(response)}",
                              status)
        digest = sha256_digest(body)
        stored = response.headers.get("Docker-Content-Digest")
        if stored and stored != digest:
            # Never delete a digest we cannot vouch for.
            raise BadResponse(f"PUT tombstone on {repo}:{tag}: the registry stored {stored}, not {digest}; "
                              "the tag now points at that manifest and was left alone")
        return digest

    def _delete_tombstone(self, repo: str, tag: str, digest: str) -> None:
        """DELETE the tombstone by digest (which takes `tag` with it), retrying conflicts."""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self._call("DELETE", repo, f"/manifests/{digest}")
            except TransientError as exc:
                raise TransientError(f"DELETE tombstone of {repo}:{tag}: {exc}; the tag points at a "
                                     "tombstone that the next run deletes", exc.status) from None
            status = response.status_code
            if status in (200, 202, 404):  # 404: an unanswered earlier attempt already did it
                return
            if status == 400 and "MANIFEST_BLOB_UNKNOWN" in _error_codes(response) and attempt < self.attempts:
                self._sleep(self.backoff * (2 ** (attempt - 1)))
                continue
            raise BadResponse(f"DELETE tombstone of {repo}:{tag}: unexpected HTTP {status}: "
                              f"{_message(response)}; the tag points at a tombstone", status)

    def _changed(self, repo: str, tag: str, digest: str) -> tuple[str, str | None]:
        """The tag points elsewhere than expected: leave it, unless it is a tombstone of
        ours that an interrupted run (stopped between PUT and DELETE) left behind."""
        if not self._is_tombstone(repo, digest):
            return "changed", digest
        with self.repo_lock(repo):
            self._delete_tombstone(repo, tag, digest)  # unique to this tag: safe by digest
        return "deleted", None

    def _is_tombstone(self, repo: str, digest: str) -> bool:
        """Whether `digest` is a tombstone this service wrote (a run stopped after its PUT)."""
        response = self._call("GET", repo, f"/manifests/{digest}", headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code != 200 or len(response.content) > 4096:
            return False
        try:
            manifest: Any = response.json()
        except ValueError:
            return False
        annotations = manifest.get("annotations") if isinstance(manifest, dict) else None
        return (isinstance(annotations, dict) and TOMBSTONE_ANNOTATION in annotations
                and manifest.get("layers") == [] and sha256_digest(response.content) == digest)


def next_link(response: requests.Response) -> str | None:
    """The absolute URL of `Link: <...>; rel="next"` (it may be relative), or None."""
    target = response.links.get("next", {}).get("url")
    return urljoin(response.url, target) if target else None
