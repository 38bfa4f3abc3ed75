"""The worker's settings, read from the environment when a job or command starts (never at import)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from typing import Mapping

from workers import rules
from workers.common import allowlist

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_QUEUE = "tagsweeper"


def say_redis_unreachable(exc: BaseException) -> int:
    """Tell a person at a terminal that Redis is down; exit status 1. Only the error's type is
    shown: its text could quote REDIS_URL, and with it a password."""
    print(f"tagsweeper: Redis at REDIS_URL is unreachable ({type(exc).__name__}); "
          "start redis-server or set REDIS_URL", file=sys.stderr)
    return 1


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


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


DEFAULT_SWEEP_CRON = "17 3 * * *"  # once a day, in UTC


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
        item = item.strip().strip("/")
        if not item:
            continue
        if not item.isdigit() and not re.fullmatch(r"[\w.-]+(/[\w.-]+)+", item):
            raise ConfigError(f"{name}: {item!r} is neither a project id nor a path like group/project")
        value: int | str = int(item) if item.isdigit() else item
        if value not in out:
            out.append(value)
    return tuple(out)


@dataclass(frozen=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    queue: str = DEFAULT_QUEUE
    gitlab_url: str = ""
    gitlab_token: str = field(default="", repr=False)
    dry_run: bool = False
    policy: rules.Policy = field(default_factory=rules.Policy)
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
        env = os.environ if env is None else env
        gitlab_url = env.get("GITLAB_URL", "").strip().rstrip("/")
        gitlab_url = re.sub(r"/api/v4$", "", gitlab_url)
        if gitlab_url and not re.match(r"https?://[^/\s]+", gitlab_url):
            raise ConfigError(f"GITLAB_URL={gitlab_url!r} must start with http:// or https://")
        try:
            policy = rules.Policy(
                branch_templates=rules.parse_templates(
                    env.get("BRANCH_TAGS") or ",".join(rules.DEFAULT_BRANCH_TAGS),
                    rules.BRANCH_FIELDS, "BRANCH_TAGS"),
                commit_templates=rules.parse_templates(
                    env.get("COMMIT_TAGS") or ",".join(rules.DEFAULT_COMMIT_TAGS),
                    rules.COMMIT_FIELDS, "COMMIT_TAGS"),
                protected=rules.compile_protected(env.get("PROTECTED_TAGS") or rules.DEFAULT_PROTECTED_TAGS),
            )
        except rules.RuleError as exc:
            raise ConfigError(str(exc)) from None
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
        )
