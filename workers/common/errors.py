"""The root of the clients' exception trees: an error talking to a service, with its HTTP status."""

from __future__ import annotations


class ServiceError(Exception):
    """Base of GitLabError and RegistryError; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
