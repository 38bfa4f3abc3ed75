"""The service's one exception tree: the kinds of trouble talking to GitLab or a registry.

Each client has its own base (`gitlab.GitLabError`, `registry.RegistryError`) and its own
classes, each a subclass of both its client's base and one shared kind here, so a caller
that does not care which service failed catches the kind:

    ServiceError                 any error talking to a service; `status` is the HTTP status
    ├── AuthError                credentials refused, or a permission missing: retrying won't help
    ├── TransientError           kept answering 429/5xx or did not answer: retry later
    └── BadResponse              an answer the client cannot use

`except errors.AuthError` covers `gitlab.AuthError` and `registry.AuthError` alike.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of GitLabError and RegistryError; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AuthError(ServiceError):
    """The service refused the credentials, or their user lacks a permission."""


class TransientError(ServiceError):
    """The service kept answering 429/5xx, or did not answer: worth retrying later."""


class BadResponse(ServiceError):
    """An answer the client cannot use (unexpected status, missing header, not JSON)."""
