"""The web process's settings, read once when the app is created (never at import time).

Each value comes from `test_config` when that has the key, else from the environment,
else from its default. A bad value raises RuntimeError with a message that says which
setting and how to fix it, so gunicorn prints it and refuses to start.
"""

from __future__ import annotations

from typing import Any, Mapping

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_CLEANUP_DELAY = 60
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_QUEUE = "tagsweeper"
DEFAULT_RETRIES = 5
DEFAULT_RETRY_INTERVALS = (30, 60, 300, 900, 3600)

MISSING_SECRET = (
    "WEBHOOK_SECRET is not set: the web process refuses to start without a webhook secret; "
    "set it to the secret token configured on the GitLab webhook"
)


def read_settings(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Flask config keys for the hooks app, validated."""
    overrides = overrides or {}

    def raw(name: str) -> Any:
        return overrides[name] if name in overrides else environ.get(name)

    return {
        "WEBHOOK_SECRETS": parse_secrets(raw("WEBHOOK_SECRET")),
        "REDIS_URL": parse_text(raw("REDIS_URL"), "REDIS_URL", DEFAULT_REDIS_URL),
        "CLEANUP_DELAY": parse_whole(raw("CLEANUP_DELAY"), "CLEANUP_DELAY", DEFAULT_CLEANUP_DELAY, 0, "seconds"),
        "MAX_BODY_BYTES": parse_whole(raw("MAX_BODY_BYTES"), "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 1, "bytes"),
        "RQ_QUEUE": parse_text(raw("RQ_QUEUE"), "RQ_QUEUE", DEFAULT_QUEUE),
        "CLEANUP_RETRIES": parse_whole(raw("CLEANUP_RETRIES"), "CLEANUP_RETRIES", DEFAULT_RETRIES, 0, "retries"),
        "CLEANUP_RETRY_INTERVALS": parse_intervals(raw("CLEANUP_RETRY_INTERVALS")),
        "LOG_FORMAT": parse_choice(raw("LOG_FORMAT"), "LOG_FORMAT", ("json", "text")),
        # The dashboard (/rq/, /audit) is on only when both are set; see hooks/dashboard.py.
        "DASHBOARD_USER": parse_optional(raw("DASHBOARD_USER"), "DASHBOARD_USER"),
        "DASHBOARD_PASSWORD": parse_optional(raw("DASHBOARD_PASSWORD"), "DASHBOARD_PASSWORD"),
        # Signed deliveries (Standard Webhooks) are required when set; see hooks/signing.py.
        "WEBHOOK_SIGNING_KEYS": parse_signing_keys(raw("WEBHOOK_SIGNING_KEY")),
        "ALLOWED_PROJECTS": parse_allowed_projects(raw("ALLOWED_PROJECTS")),
    }


def parse_signing_keys(value: Any) -> tuple[bytes, ...]:
    """Comma-separated whsec_<base64> keys, () when unset; the message never shows a key."""
    from hooks.signing import BadSigningKey, parse_keys

    try:
        return parse_keys(value)
    except BadSigningKey as exc:
        raise RuntimeError(str(exc)) from None


def parse_allowed_projects(value: Any):
    """Comma-separated project ids, paths and group paths; empty allows every project."""
    from workers.common.allowlist import parse

    try:
        return parse(value)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None


def parse_intervals(value: Any) -> tuple[int, ...]:
    """Comma-separated seconds between a failed cleanup's retries (the last one repeats)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return DEFAULT_RETRY_INTERVALS
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        intervals = tuple(int(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        intervals = ()
    if not intervals or min(intervals) < 0:
        raise RuntimeError(f"CLEANUP_RETRY_INTERVALS must be comma-separated whole seconds, got {value!r}")
    return intervals


def parse_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return choices[0]
    if not isinstance(value, str) or value.strip().lower() not in choices:
        raise RuntimeError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value.strip().lower()


def parse_secrets(value: Any) -> tuple[str, ...]:
    """Comma-separated secrets (or a list), whitespace stripped, empties dropped; at least one."""
    if value is None:
        items: list[str] = []
    elif isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        items = list(value)
    else:
        raise RuntimeError("WEBHOOK_SECRET must be a string of comma-separated secrets")
    secrets = tuple(s.strip() for s in items if s.strip())
    if not secrets:
        raise RuntimeError(MISSING_SECRET)
    return secrets


def parse_whole(value: Any, name: str, default: int, minimum: int, unit: str) -> int:
    """A whole number >= minimum; empty means the default. The message shows the bad value."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    else:
        try:
            number = int(str(value).strip())
        except ValueError:
            number = None
    if number is None or number < minimum:
        raise RuntimeError(f"{name} must be a whole number of {unit} >= {minimum}, got {value!r}")
    return number


def parse_optional(value: Any, name: str) -> str | None:
    """A string with whitespace stripped, or None when unset or empty. The message never shows the value."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise RuntimeError(f"{name} must be a string")
    return value.strip() or None


def parse_text(value: Any, name: str, default: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if not isinstance(value, str):
        raise RuntimeError(f"{name} must be a string")
    return value.strip()
