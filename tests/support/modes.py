"""The two deletion modes every end-to-end cleanup runs in, and the settings that choose them.

REGISTRY_MODE=api deletes each tag through GitLab's API; REGISTRY_MODE=registry deletes through
the registry's own API with a token from GitLab's /jwt/auth. `MODES` names both (for
parametrize), `mode_env` is the environment that picks one for a `Service`, and `settings_for`
the worker `Settings` for a cleanup run in-process against the GitLab emulator.
"""

from __future__ import annotations

from workers.common.settings import Settings

MODES = ["api", "registry"]


def mode_env(mode: str, gitlab_stack) -> dict:
    """REGISTRY_MODE=registry deletes through the registry's own API with GitLab's JWT."""
    if mode == "api":
        return {"REGISTRY_MODE": "api"}
    return {"REGISTRY_MODE": "registry", "REGISTRY_URL": gitlab_stack.registry.url}


def settings_for(gitlab, gitlab_stack, redis_url: str, mode: str) -> Settings:
    return Settings.from_env({"GITLAB_URL": gitlab.url, "GITLAB_TOKEN": gitlab.token, "REDIS_URL": redis_url,
                              **mode_env(mode, gitlab_stack)})
