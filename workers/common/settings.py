"""Every setting tagsweeper reads: its variable, its default and its parser, in one place.

The web process reads its settings with `web_config()` when the app is created; the worker
and the `tagsweeper` commands read `Settings.from_env()` when a job or command starts.
Nothing reads the environment at import time. A bad value raises an error whose message
says which setting and how to fix it: RuntimeError for the web process (gunicorn prints
it and refuses to start), ConfigError for the worker and the commands.

How a project is named (SWEEP_PROJECTS, ALLOWED_PROJECTS) is workers/common/projects.py's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from workers.common import allowlist
from workers.common.policy import (BRANCH_FIELDS, COMMIT_FIELDS, DEFAULT_BRANCH_TAGS, DEFAULT_COMMIT_TAGS,
                                   DEFAULT_PROTECTED_TAGS, Policy, RuleError, compile_protected,
                                   parse_templates)
from workers.common.projects import parse_project

# --- defaults ---------------------------------------------------------------------------------

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "tagsweeper"
DEFAULT_SWEEP_CRON = "17 3 * * *"  # once a day, in UTC
# The web process's.
DEFAULT_CLEANUP_DELAY = 60
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_RETRIES = 5
DEFAULT_RETRY_INTERVALS = (30, 60, 300, 900, 3600)
# The audit trail's bound (workers/common/audit.py).
DEFAULT_AUDIT_MAX_ENTRIES = 100_000
# How long a dead holder keeps a branch's cleanup lock (workers/locks.py).
DEFAULT_CLEANUP_LOCK_TTL = 60
# A worker killed mid-job (SIGKILL, lost machine) leaves its job in RQ's StartedJobRegistry.
# Another worker's maintenance retries it once the job missed its heartbeats for
# WORKER_ABANDONED_AFTER seconds. RQ's own defaults (maintenance every 600 s, run only when an
# idle worker wakes from a 405 s wait) can leave such a job for over a quarter of an hour.
DEFAULT_MAINTENANCE_INTERVAL = 60
DEFAULT_ABANDONED_AFTER = 90  # RQ's default: a 30 s heartbeat plus 60 s of grace
# Deployment protection (workers/deployments.py): the newest successful deployments of each live
# environment that keep their commits' tags, and when a cleanup that kept tags only for an
# environment looks again.
DEFAULT_KEEP_DEPLOYMENTS = 3
MAX_KEEP_DEPLOYMENTS = 100  # one page of GitLab's deployments
DEFAULT_IN_USE_RECHECK = 3600
# Retention on live branches (workers/retention.py): off unless KEEP_COMMITS is set.
DEFAULT_KEEP_COMMITS_MIN_AGE = 7 * 86400
DEFAULT_RETIRE_DELAY = 300  # a burst of pipelines on one branch makes one retention pass


# --- the worker's and the commands' settings -----------------------------------------------

class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def _env(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={value!r} is not a boolean: use 1 or 0")


def whole_number(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    """An integer setting: empty means the default; anything else must be a whole number >= minimum."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def seconds(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    """Whole seconds >= minimum; empty means the default."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        raise ConfigError(f"{name}={raw!r}: give a whole number of seconds >= {minimum}")
    return int(raw)


def keep_deployments(env: Mapping[str, str]) -> int:
    """KEEP_DEPLOYMENTS: how many of each live environment's newest successful deployments keep
    their commits' tags. At least 1: the deployment an environment runs always counts; at most
    100, what one page of GitLab's deployments holds."""
    raw = env.get("KEEP_DEPLOYMENTS", "").strip()
    if not raw:
        return DEFAULT_KEEP_DEPLOYMENTS
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_KEEP_DEPLOYMENTS:
        raise ConfigError(f"KEEP_DEPLOYMENTS={raw!r}: give a whole number from 1 to {MAX_KEEP_DEPLOYMENTS} (1 keeps "
                          f"only what each live environment runs, {DEFAULT_KEEP_DEPLOYMENTS} also its two rollback "
                          "targets)")
    return int(raw)


def in_use_recheck(env: Mapping[str, str]) -> int:
    """IN_USE_RECHECK: seconds after which a cleanup that kept tags only because an environment
    used them runs again; 0 turns the re-check off (the scheduled sweep still releases them)."""
    raw = env.get("IN_USE_RECHECK", "").strip()
    if not raw:
        return DEFAULT_IN_USE_RECHECK
    if not raw.isdigit():
        raise ConfigError(f"IN_USE_RECHECK={raw!r}: give a whole number of seconds (0 turns the re-check off)")
    return int(raw)


def keep_commits(env: Mapping[str, str]) -> int | None:
    """KEEP_COMMITS: how many of each live branch's newest built commits keep their commit tags;
    unset (or empty) turns retention off."""
    raw = env.get("KEEP_COMMITS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"KEEP_COMMITS={raw!r}: give a whole number of commits, at least 1 "
                          "(leave it unset to turn retention off)")
    return int(raw)


def keep_commits_branches(env: Mapping[str, str]) -> re.Pattern[str] | None:
    """KEEP_COMMITS_BRANCHES: a regular expression a branch's whole name must match for retention
    to touch it; unset: every branch."""
    raw = env.get("KEEP_COMMITS_BRANCHES", "").strip()
    if not raw:
        return None
    try:
        return re.compile(raw)
    except re.error as exc:
        raise ConfigError(f"KEEP_COMMITS_BRANCHES is not a valid regular expression ({exc}): "
                          "give one like main|release/.*") from None


_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def keep_commits_min_age(env: Mapping[str, str]) -> int:
    """KEEP_COMMITS_MIN_AGE: how old a commit's first pipeline must be before retention may retire
    its tags, in seconds, or with a unit: 7d, 12h, 30m, 2w. Default 7 days; 0 means no minimum."""
    raw = env.get("KEEP_COMMITS_MIN_AGE", "").strip().lower()
    if not raw:
        return DEFAULT_KEEP_COMMITS_MIN_AGE
    m = re.fullmatch(r"(\d+)\s*([smhdw]?)", raw)
    if not m:
        raise ConfigError(f"KEEP_COMMITS_MIN_AGE={raw!r}: give whole seconds, or a number with a unit "
                          "(s, m, h, d, w) such as 7d")
    return int(m.group(1)) * _AGE_UNITS[m.group(2)]


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def _cron(env: Mapping[str, str], name: str) -> str:
    """A cron expression (5 fields, evaluated in UTC), or "" for off."""
    raw = " ".join(env.get(name, "").split())
    if not raw:
        return DEFAULT_SWEEP_CRON
    if raw.lower() in ("off", "none", "0", "false", "no"):
        return ""
    from croniter import croniter  # an RQ dependency

    if len(raw.split()) != 5 or not croniter.is_valid(raw):
        raise ConfigError(f"{name}={raw!r} is not a cron expression like '17 3 * * *' "
                          "(minute hour day month weekday, in UTC), or 'off'")
    return raw


def _projects(env: Mapping[str, str], name: str) -> tuple[int | str, ...]:
    """Comma-separated project ids or paths (group/project)."""
    out: list[int | str] = []
    for item in env.get(name, "").split(","):
        try:
            value = parse_project(item)
        except ValueError:
            continue  # an empty item
        if isinstance(value, str) and not re.fullmatch(r"[\w.-]+(/[\w.-]+)+", value):
            raise ConfigError(f"{name}: {value!r} is neither a project id nor a path like group/project")
        if value not in out:
            out.append(value)
    return tuple(out)


def _secrets(value: str | list | tuple) -> tuple[str, ...]:
    """WEBHOOK_SECRET's comma-separated values (or a list of them), stripped, empties dropped, in order."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(s.strip() for s in items if s.strip())


def _policy(env: Mapping[str, str]) -> Policy:
    try:
        return Policy(
            branch_templates=parse_templates(env.get("BRANCH_TAGS") or ",".join(DEFAULT_BRANCH_TAGS),
                                             BRANCH_FIELDS, "BRANCH_TAGS"),
            commit_templates=parse_templates(env.get("COMMIT_TAGS") or ",".join(DEFAULT_COMMIT_TAGS),
                                             COMMIT_FIELDS, "COMMIT_TAGS"),
            protected=compile_protected(env.get("PROTECTED_TAGS") or DEFAULT_PROTECTED_TAGS),
        )
    except RuleError as exc:
        raise ConfigError(str(exc)) from None


def audit_max_entries(env: Mapping[str, str] | None = None) -> int:
    """AUDIT_MAX_ENTRIES: how many entries the audit trail keeps (about)."""
    return whole_number(_env(env), "AUDIT_MAX_ENTRIES", DEFAULT_AUDIT_MAX_ENTRIES, minimum=1)


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    queue: str = DEFAULT_QUEUE
    gitlab_url: str = ""
    gitlab_token: str = field(default="", repr=False)
    dry_run: bool = False
    policy: Policy = field(default_factory=Policy)
    delete_concurrency: int = 4
    http_timeout: float = 30.0
    pipeline_memory_days: int = 90
    pipeline_memory_cap: int = 500
    log_format: str = "json"
    registry_mode: str = "api"
    registry_url: str = ""
    registry_user: str = "tagsweeper"
    sweep_cron: str = DEFAULT_SWEEP_CRON  # "" when SWEEP_CRON=off
    sweep_projects: tuple[int | str, ...] = ()
    sweep_timeout: int = 14400
    # ALLOWED_PROJECTS: a cleanup of any other project is skipped (empty: every project).
    allowed_projects: allowlist.AllowList = field(default_factory=allowlist.AllowList)
    audit_max_entries: int = DEFAULT_AUDIT_MAX_ENTRIES
    cleanup_lock_ttl: int = DEFAULT_CLEANUP_LOCK_TTL
    worker_maintenance_interval: int = DEFAULT_MAINTENANCE_INTERVAL
    worker_abandoned_after: int = DEFAULT_ABANDONED_AFTER
    keep_deployments: int = DEFAULT_KEEP_DEPLOYMENTS
    in_use_recheck: int = DEFAULT_IN_USE_RECHECK  # 0: off
    # A re-check is a cleanup job: retried as the web process's cleanups are.
    cleanup_retries: int = DEFAULT_RETRIES
    cleanup_retry_intervals: tuple[int, ...] = DEFAULT_RETRY_INTERVALS
    # WEBHOOK_SECRET's values: `tagsweeper register` gives GitLab the first one.
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    # Retention on live branches (workers/retention.py): None is off.
    keep_commits: int | None = None
    keep_commits_branches: re.Pattern[str] | None = None  # None: every branch
    keep_commits_min_age: int = DEFAULT_KEEP_COMMITS_MIN_AGE
    retire_delay: int = DEFAULT_RETIRE_DELAY

    @property
    def retention(self) -> bool:
        """Whether retention on live branches is on (KEEP_COMMITS is set)."""
        return self.keep_commits is not None

    def retires(self, branch: str) -> bool:
        """Whether retention applies to `branch` (KEEP_COMMITS set, KEEP_COMMITS_BRANCHES matches)."""
        return self.retention and (self.keep_commits_branches is None
                                   or self.keep_commits_branches.fullmatch(branch) is not None)

    @property
    def api_url(self) -> str:
        return self.gitlab_url + "/api/v4"

    def require_gitlab(self) -> "Settings":
        """Fail with a clear message when the GitLab connection is not configured."""
        if not self.gitlab_url:
            raise ConfigError("GITLAB_URL is not set: set it to your GitLab's base URL, e.g. https://gitlab.com")
        if not self.gitlab_token:
            raise ConfigError("GITLAB_TOKEN is not set: give a token with the api scope (Maintainer for deletes)")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = _env(env)
        gitlab_url = env.get("GITLAB_URL", "").strip().rstrip("/")
        gitlab_url = re.sub(r"/api/v4$", "", gitlab_url)
        if gitlab_url and not re.match(r"https?://[^/\s]+", gitlab_url):
            raise ConfigError(f"GITLAB_URL={gitlab_url!r} must start with http:// or https://")
        policy = _policy(env)
        log_format = env.get("LOG_FORMAT", "json").strip().lower() or "json"
        if log_format not in ("json", "text"):
            raise ConfigError(f"LOG_FORMAT={log_format!r}: use json or text")
        mode = env.get("REGISTRY_MODE", "").strip().lower() or "api"
        if mode not in ("api", "registry"):
            raise ConfigError(f"REGISTRY_MODE={mode!r}: use api (GitLab REST API) or registry (registry v2 API)")
        registry_url = env.get("REGISTRY_URL", "").strip().rstrip("/")
        if registry_url and not re.match(r"https?://[^/\s]+$", registry_url):
            raise ConfigError(f"REGISTRY_URL={registry_url!r} must be like https://registry.example.com")
        try:
            allowed_projects = allowlist.parse(env.get("ALLOWED_PROJECTS"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(
            allowed_projects=allowed_projects,
            registry_mode=mode,
            registry_url=registry_url,
            registry_user=env.get("REGISTRY_USER", "").strip() or "tagsweeper",
            sweep_cron=_cron(env, "SWEEP_CRON"),
            sweep_projects=_projects(env, "SWEEP_PROJECTS"),
            sweep_timeout=whole_number(env, "SWEEP_TIMEOUT", 14400, minimum=60),
            redis_url=env.get("REDIS_URL", "").strip() or DEFAULT_REDIS_URL,
            queue=env.get("RQ_QUEUE", "").strip() or DEFAULT_QUEUE,
            gitlab_url=gitlab_url,
            gitlab_token=env.get("GITLAB_TOKEN", "").strip(),
            dry_run=_flag(env, "DRY_RUN"),
            policy=policy,
            delete_concurrency=whole_number(env, "DELETE_CONCURRENCY", 4, minimum=1),
            http_timeout=_float(env, "HTTP_TIMEOUT", 30.0),
            pipeline_memory_days=whole_number(env, "PIPELINE_MEMORY_DAYS", 90, minimum=1),
            pipeline_memory_cap=whole_number(env, "PIPELINE_MEMORY_CAP", 500, minimum=1),
            log_format=log_format,
            audit_max_entries=audit_max_entries(env),
            cleanup_lock_ttl=whole_number(env, "CLEANUP_LOCK_TTL", DEFAULT_CLEANUP_LOCK_TTL, minimum=1),
            worker_maintenance_interval=seconds(env, "WORKER_MAINTENANCE_INTERVAL", DEFAULT_MAINTENANCE_INTERVAL),
            worker_abandoned_after=seconds(env, "WORKER_ABANDONED_AFTER", DEFAULT_ABANDONED_AFTER, minimum=2),
            keep_deployments=keep_deployments(env),
            in_use_recheck=in_use_recheck(env),
            cleanup_retries=_web_value(parse_whole, env.get("CLEANUP_RETRIES"), "CLEANUP_RETRIES", DEFAULT_RETRIES,
                                       0, "retries"),
            cleanup_retry_intervals=_web_value(parse_intervals, env.get("CLEANUP_RETRY_INTERVALS")),
            webhook_secrets=_secrets(env.get("WEBHOOK_SECRET", "")),
            keep_commits=keep_commits(env),
            keep_commits_branches=keep_commits_branches(env),
            keep_commits_min_age=keep_commits_min_age(env),
            retire_delay=whole_number(env, "RETIRE_DELAY", DEFAULT_RETIRE_DELAY, minimum=0),
        )


def _web_value(parse: Callable[..., Any], *args: Any) -> Any:
    """A setting both processes read, parsed as the web process parses it; ConfigError if bad."""
    try:
        return parse(*args)
    except RuntimeError as exc:
        raise ConfigError(str(exc)) from None


# --- the web process's settings --------------------------------------------------------------

MISSING_SECRET = (
    "WEBHOOK_SECRET is not set: the web process refuses to start without a webhook secret; "
    "set it to the secret token configured on the GitLab webhook"
)

# The variables web_config reads: a key of the same name in create_app's test_config overrides one.
WEB_VARIABLES = frozenset({"WEBHOOK_SECRET", "REDIS_URL", "CLEANUP_DELAY", "MAX_BODY_BYTES", "RQ_QUEUE",
                           "CLEANUP_RETRIES", "CLEANUP_RETRY_INTERVALS", "LOG_FORMAT",
                           "DASHBOARD_USER", "DASHBOARD_PASSWORD", "WEBHOOK_SIGNING_KEY", "ALLOWED_PROJECTS",
                           "GITLAB_TOKEN"})


def web_config(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None, *,
               signing_keys: Callable[[Any], tuple[bytes, ...]]) -> dict[str, Any]:
    """Flask config keys for the hooks app, validated.

    Each value comes from `overrides` when that has the key, else from `environ`, else from
    its default. `signing_keys` parses WEBHOOK_SIGNING_KEY (the format is hooks.signing's:
    only the web side verifies signatures); its ValueError says what is wrong.
    """
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
        "WEBHOOK_SIGNING_KEYS": _signing_keys(raw("WEBHOOK_SIGNING_KEY"), signing_keys),
        "ALLOWED_PROJECTS": parse_allowed_projects(raw("ALLOWED_PROJECTS")),
        # The web process has no use for GITLAB_TOKEN, but honcho gives it the worker's environment:
        # the dashboard blanks it out of what it shows.
        "GITLAB_TOKEN": raw("GITLAB_TOKEN") or "",
    }


def _signing_keys(value: Any, parse: Callable[[Any], tuple[bytes, ...]]) -> tuple[bytes, ...]:
    """Comma-separated whsec_<base64> keys, () when unset; the message never shows a key."""
    try:
        return parse(value)
    except ValueError as exc:
        raise RuntimeError(str(exc)) from None


def parse_allowed_projects(value: Any) -> allowlist.AllowList:
    """Comma-separated project ids, paths and group paths; empty allows every project."""
    try:
        return allowlist.parse(value)
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
        value = ()
    elif not isinstance(value, str) and not (isinstance(value, (list, tuple))
                                             and all(isinstance(v, str) for v in value)):
        raise RuntimeError("WEBHOOK_SECRET must be a string of comma-separated secrets")
    secrets = _secrets(value)
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
