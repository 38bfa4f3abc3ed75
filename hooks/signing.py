"""Standard Webhooks signatures (GitLab's signed deliveries), verified as pure code.

With a signing token configured, GitLab sends three headers:

- `webhook-id`: the delivery's id;
- `webhook-timestamp`: Unix seconds when it was signed;
- `webhook-signature`: one or more space-separated `v1,<base64 HMAC-SHA256>` over
  the bytes `{id}.{timestamp}.{body}`, keyed with the base64-decoded part of the
  `whsec_<base64>` secret.

`verify()` checks them against the raw body bytes, before anything parses the body,
with the clock passed in (sans-I/O: no Redis, no time.time() inside). Remembering ids
against replays needs Redis and lives in the view.

Why not the `standardwebhooks` package: its `verify()` decodes the body as UTF-8 and
splits/decodes the header without guarding (a malformed header raises ValueError or
binascii.Error instead of its own error), and reads the clock itself. Here every
malformed input is a `SignatureError` with a message that is safe to send back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Any, Iterable, Mapping

PREFIX = "whsec_"
TOLERANCE = 300  # seconds, both ways, as the Standard Webhooks spec recommends
MIN_KEY_BYTES = 16  # GitLab and Svix generate 24-32 byte secrets; shorter is a mistake
MAX_SIGNATURES = 16  # more in one header is not a rotation but an attempt to make us work

_ID_RE = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII: what the signer and we both hash alike
_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")  # ASCII digits only ('١٢' is a str.isdigit())
_B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}")


class SignatureError(Exception):
    """The signature headers are missing, malformed, stale or do not match; `message` is safe to show."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadSigningKey(ValueError):
    """WEBHOOK_SIGNING_KEY is malformed; the message never contains the key."""


def parse_keys(value: Any, setting: str = "WEBHOOK_SIGNING_KEY") -> tuple[bytes, ...]:
    """The secrets of a comma-separated `whsec_<base64>` list (several: a key being rotated).

    Unset or empty: () (signing off). Raises BadSigningKey naming the setting, never the value.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise BadSigningKey(f"{setting} must be a string like whsec_<base64>")
    keys: list[bytes] = []
    for n, item in enumerate((i.strip() for i in items), start=1):
        if not item:
            continue
        encoded = item[len(PREFIX):]
        # Svix pads, GitLab may not: accept both.
        key = _b64decode(encoded + "=" * (-len(encoded) % 4)) if item.startswith(PREFIX) else None
        if key is None:
            raise BadSigningKey(f"{setting}: key {n} is not a Standard Webhooks secret: expected "
                                f"{PREFIX} followed by base64, as GitLab shows the webhook's signing token")
        if len(key) < MIN_KEY_BYTES:
            raise BadSigningKey(f"{setting}: key {n} decodes to {len(key)} bytes; a signing secret "
                                f"has at least {MIN_KEY_BYTES}")
        keys.append(key)
    return tuple(keys)


def sign(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The `v1,<base64>` signature of one delivery (for tests and for tooling that sends deliveries)."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode("ascii") + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode("ascii")


def verify(headers: Mapping[str, str], body: bytes, keys: Iterable[bytes], now: float,
           tolerance: int = TOLERANCE) -> str:
    """Check a delivery's signature; return its webhook-id. `headers` must have lower-case names."""
    keys = tuple(keys)
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signature = headers.get("webhook-signature")
    missing = [name for name, value in (("webhook-id", msg_id), ("webhook-timestamp", timestamp),
                                        ("webhook-signature", signature)) if not (value or "").strip()]
    if missing:
        raise SignatureError(f"signed deliveries are required (WEBHOOK_SIGNING_KEY is set) and "
                             f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing: "
                             "turn on the webhook's signing token in GitLab")
    msg_id, timestamp = msg_id.strip(), timestamp.strip()
    if not _ID_RE.fullmatch(msg_id):
        raise SignatureError("webhook-id must be 1 to 256 printable ASCII characters")
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise SignatureError("webhook-timestamp must be a Unix time in whole seconds")
    if abs(now - int(timestamp)) > tolerance:
        raise SignatureError(f"webhook-timestamp is more than {tolerance} seconds away from this server's "
                             "clock: a stale or replayed delivery (or a clock to fix)")
    candidates = _signatures(signature)
    if not keys or not candidates:
        raise SignatureError(_MISMATCH)
    signed = f"{msg_id}.{timestamp}.".encode("ascii") + body
    matched = False
    # Every key against every candidate, no early exit: timing says nothing about which matched.
    for key in keys:
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError(_MISMATCH)
    return msg_id


_MISMATCH = ("webhook-signature does not match: set the webhook's signing token in GitLab to "
             "the key configured in WEBHOOK_SIGNING_KEY")


def _signatures(header: str) -> list[bytes]:
    """The decoded v1 signatures of the header; other versions and malformed entries are skipped."""
    entries = header.split()
    if len(entries) > MAX_SIGNATURES:
        raise SignatureError(f"webhook-signature has more than {MAX_SIGNATURES} signatures")
    out = []
    for entry in entries:
        # A proxy joining two header lines adds ", ": tolerate the trailing comma.
        version, _, value = entry.rstrip(",").partition(",")
        if version != "v1":
            continue  # e.g. v1a (asymmetric): not ours to check
        decoded = _b64decode(value)
        if decoded is not None and len(decoded) == hashlib.sha256().digest_size:
            out.append(decoded)
    return out


def _b64decode(text: str) -> bytes | None:
    if not _B64_RE.fullmatch(text) or len(text) % 4:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
