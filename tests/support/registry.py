"""A real docker-registry (CNCF distribution 2.8) with token auth, plus test-side helpers.

`RegistryServer` runs `/usr/bin/docker-registry serve` on a free loopback port with
`auth.token` pointing at the GitLab emulator's `/jwt/auth`. The registry trusts a
self-signed certificate we generate; `TokenIssuer` signs JWTs with the matching
key and names it by its libtrust key id in the `kid` header, as GitLab does.

`RegistryClient` talks Registry API v2 with tokens from the issuer directly (no
round trip through the emulator) so tests can push tiny images, resolve tags and
delete one tag the way GitLab does on a third-party registry.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urljoin

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.procs import free_port, require_binary, stop, wait_for_port

DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

# What GitLab sends when it resolves a tag: every manifest type, so the registry
# never converts and the digest is the stored one.
MANIFEST_ACCEPT = ", ".join([DOCKER_MANIFEST_V2, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX])

TIMEOUT = (5, 30)  # (connect, read) seconds for every registry call


def libtrust_key_id(public_key) -> str:
    """docker/libtrust key id: sha256(DER SubjectPublicKeyInfo), first 240 bits,
    base32 without padding, in groups of 4 joined by ':' (12 groups)."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i:i + 4] for i in range(0, len(b32), 4))


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class TokenIssuer:
    """Signs registry bearer tokens the way GitLab's JWT endpoint does."""

    def __init__(self, private_key, issuer: str, service: str):
        self.private_key = private_key
        self.issuer = issuer
        self.service = service
        self.kid = libtrust_key_id(private_key.public_key())

    def issue(self, subject: str, access: list[dict], ttl: int = 300) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,  # distribution 2.8 only understands a string here
            "iat": now,
            "nbf": now - 5,  # small back-dating: clocks are shared, but be lenient
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.kid})


class RegistryServer:
    """A throw-away docker-registry process with token auth and deletes enabled."""

    def __init__(self, workdir: Path, realm: str, issuer: str = "gitlab-emulator",
                 service: str = "container_registry"):
        self.workdir = Path(workdir)
        self.realm = realm
        self.service = service
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._log = None
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.issuer = TokenIssuer(self._key, issuer, service)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_cert(self) -> Path:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gitlab-emulator registry signer")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(self._key, hashes.SHA256())
        )
        path = self.workdir / "token-signer.crt"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    def _write_config(self, bundle: Path) -> Path:
        storage = self.workdir / "data"
        storage.mkdir(parents=True, exist_ok=True)
        # No blobdescriptor cache: a cache could answer from memory after a delete.
        config = f"""\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {json.dumps(str(storage))}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{self.port}
  secret: {secrets.token_hex(16)}
auth:
  token:
    realm: {json.dumps(self.realm)}
    service: {json.dumps(self.service)}
    issuer: {json.dumps(self.issuer.issuer)}
    rootcertbundle: {json.dumps(str(bundle))}
"""
        path = self.workdir / "config.yml"
        path.write_text(config)
        return path

    def start(self) -> "RegistryServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config(self._write_cert())
        self._log = open(self.workdir / "registry.log", "ab")
        self.proc = subprocess.Popen(
            [require_binary("docker-registry"), "serve", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=self.workdir,
        )
        wait_for_port(self.port, proc=self.proc)
        # Listening is not the same as serving: wait for the token challenge.
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(self.url + "/v2/", timeout=2).status_code == 401:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"docker-registry did not come up; see {self.workdir / 'registry.log'}")
            time.sleep(0.05)

    def wipe(self) -> None:
        """Forget every repository (tags and manifests links) while the registry runs.

        Safe because the config has no blobdescriptor cache: the filesystem driver
        reads storage on each request. Blobs stay but are unreachable; clients must
        drop their per-repository caches (RegistryClient.clear_cache)."""
        repos = self.workdir / "data" / "docker" / "registry" / "v2" / "repositories"
        if repos.exists():
            shutil.rmtree(repos)

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)
            self.proc = None
        if self._log:
            self._log.close()
            self._log = None


class RegistryError(RuntimeError):
    """The registry answered something a test helper did not expect."""


class RegistryClient:
    """Test-side Registry API v2 client; tokens come straight from the issuer.

    Thread-safe: one requests.Session per thread, a lock around the caches. The
    GitLab emulator uses it from its request threads to delete tags.

    Writes (push_image, delete_tag) are serialised per repository: distribution 2.8's
    filesystem driver writes link files by truncate-then-write, so concurrent tag
    writes and deletes in one repository make it answer 500 UNKNOWN (delete by digest
    while another tag is rewritten) or 400 MANIFEST_BLOB_UNKNOWN (a link file read
    while empty). Reads need no lock.
    """

    FULL = ["pull", "push", "delete"]

    def __init__(self, base_url: str, issuer: TokenIssuer, subject: str = "tagsweeper-tests"):
        self.base_url = base_url.rstrip("/")
        self.issuer = issuer
        self.subject = subject
        self._local = threading.local()
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}
        self._dummy_config: dict[str, dict] = {}  # repo -> descriptor of the uploaded dummy config
        self._repo_locks: dict[str, threading.RLock] = {}

    def repo_lock(self, repo: str) -> threading.RLock:
        """The lock serialising this client's writes to `repo` (see class docstring)."""
        with self._lock:
            return self._repo_locks.setdefault(repo, threading.RLock())

    # -- plumbing -----------------------------------------------------------------
    @property
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def _token(self, key: str, access: list[dict]) -> str:
        with self._lock:
            tok, until = self._tokens.get(key, ("", 0.0))
            if time.time() < until:
                return tok
            tok = self.issuer.issue(self.subject, access, ttl=300)
            self._tokens[key] = (tok, time.time() + 240)  # renew well before exp
            return tok

    def _repo_token(self, repo: str) -> str:
        return self._token("repository:" + repo, [{"type": "repository", "name": repo, "actions": self.FULL}])

    def _request(self, method: str, path_or_url: str, token: str, *, headers=None, **kw) -> requests.Response:
        url = path_or_url if path_or_url.startswith("http") else self.base_url + path_or_url
        h = {"Authorization": f"Bearer {token}"}
        h.update(headers or {})
        return self._session.request(method, url, headers=h, timeout=TIMEOUT, allow_redirects=False, **kw)

    def _repo(self, method: str, repo: str, path: str, **kw) -> requests.Response:
        return self._request(method, f"/v2/{repo}{path}", self._repo_token(repo), **kw)

    @staticmethod
    def _check(resp: requests.Response, *ok: int) -> requests.Response:
        if resp.status_code not in ok:
            raise RegistryError(f"{resp.request.method} {resp.url} -> {resp.status_code}: {resp.text[:300]}")
        return resp

    # -- blobs and manifests --------------------------------------------------------
    def upload_blob(self, repo: str, data: bytes) -> str:
        """Upload a blob unless it is already there; returns its digest."""
        digest = sha256_digest(data)
        if self._repo("HEAD", repo, f"/blobs/{digest}").status_code == 200:
            return digest
        start = self._check(self._repo("POST", repo, "/blobs/uploads/"), 202)
        location = urljoin(self.base_url + "/", start.headers["Location"])
        sep = "&" if "?" in location else "?"
        self._check(self._request(
            "PUT", f"{location}{sep}digest={digest}", self._repo_token(repo), data=data,
            headers={"Content-Type": "application/octet-stream"},
        ), 201)
        return digest

    def blob(self, repo: str, digest: str) -> bytes:
        # GET on a blob may redirect for other storage drivers; filesystem serves it.
        return self._check(self._repo("GET", repo, f"/blobs/{digest}"), 200).content

    def put_manifest(self, repo: str, reference: str, manifest: dict, media_type: str) -> str:
        body = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        resp = self._check(self._repo("PUT", repo, f"/manifests/{reference}", data=body,
                                      headers={"Content-Type": media_type}), 201)
        digest = resp.headers.get("Docker-Content-Digest") or sha256_digest(body)
        if digest != sha256_digest(body):
            raise RegistryError(f"registry stored {digest}, expected {sha256_digest(body)}")
        return digest

    def manifest(self, repo: str, reference: str) -> tuple[str, dict] | None:
        """(digest, parsed manifest) or None when absent."""
        resp = self._repo("GET", repo, f"/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT})
        if resp.status_code == 404:
            return None
        self._check(resp, 200)
        return resp.headers.get("Docker-Content-Digest") or sha256_digest(resp.content), resp.json()

    def push_image(self, repo: str, tags: list[str], content: str | bytes | None = None) -> str:
        """Push a tiny schema2 image under every tag; same `content` gives the same digest."""
        if content is None:
            content = secrets.token_bytes(16)
        with self.repo_lock(repo):
            return self._push_image(repo, tags, content)

    def _push_image(self, repo: str, tags: list[str], content: str | bytes) -> str:
        layer = content.encode() if isinstance(content, str) else bytes(content)
        layer_digest = self.upload_blob(repo, layer)
        # Deterministic config (no timestamp from the clock) so equal content => equal digest.
        config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {},
            "created": "2024-01-01T00:00:00Z",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }, separators=(",", ":"), sort_keys=True).encode()
        config_digest = self.upload_blob(repo, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_V2,
            "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": config_digest},
            "layers": [{"mediaType": DOCKER_LAYER, "size": len(layer), "digest": layer_digest}],
        }
        digest = ""
        for tag in tags:
            digest = self.put_manifest(repo, tag, manifest, DOCKER_MANIFEST_V2)
        return digest

    # -- queries ----------------------------------------------------------------------
    def resolve(self, repo: str, tag: str) -> str | None:
        resp = self._repo("HEAD", repo, f"/manifests/{tag}", headers={"Accept": MANIFEST_ACCEPT})
        if resp.status_code == 404:
            return None
        return self._check(resp, 200).headers["Docker-Content-Digest"]

    def _paged(self, first_path: str, token_for, key: str) -> list[str]:
        out: list[str] = []
        url = self.base_url + first_path
        while url:
            resp = self._request("GET", url, token_for())
            if resp.status_code == 404:  # NAME_UNKNOWN: never pushed (or wiped)
                return out
            self._check(resp, 200)
            out.extend(resp.json().get(key) or [])
            nxt = resp.links.get("next", {}).get("url")
            url = urljoin(self.base_url + "/", nxt) if nxt else None
        return out

    def tags(self, repo: str) -> list[str]:
        return self._paged(f"/v2/{repo}/tags/list", lambda: self._repo_token(repo), "tags")

    def catalog(self) -> list[str]:
        access = [{"type": "registry", "name": "catalog", "actions": ["*"]}]
        return self._paged("/v2/_catalog", lambda: self._token("catalog", access), "repositories")

    # -- deleting one tag (GitLab's way on a third-party registry) ----------------------
    def _dummy_config_descriptor(self, repo: str) -> dict:
        with self._lock:
            desc = self._dummy_config.get(repo)
        if desc is None:
            data = b'{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}'
            desc = {"mediaType": OCI_CONFIG, "size": len(data), "digest": self.upload_blob(repo, data)}
            with self._lock:
                self._dummy_config[repo] = desc
        return desc

    def delete_tag(self, repo: str, tag: str) -> bool:
        """Remove exactly `tag`: the registry has no delete-by-tag (2.8 answers 400),
        and deleting the tag's digest would take every tag sharing it. So retag onto
        a unique throw-away manifest and delete that digest instead."""
        with self.repo_lock(repo):
            return self._delete_tag(repo, tag)

    def _delete_tag(self, repo: str, tag: str) -> bool:
        if self.resolve(repo, tag) is None:
            return False
        dummy = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self._dummy_config_descriptor(repo),
            "layers": [],
            # Random annotation: the digest must be shared with no other tag.
            "annotations": {"org.tagsweeper.tombstone": secrets.token_hex(16)},
        }
        digest = self.put_manifest(repo, tag, dummy, OCI_MANIFEST)
        self._check(self._repo("DELETE", repo, f"/manifests/{digest}"), 202)
        return True

    def clear_cache(self) -> None:
        """Drop cached tokens and dummy-config descriptors (after RegistryServer.wipe)."""
        with self._lock:
            self._tokens.clear()
            self._dummy_config.clear()
