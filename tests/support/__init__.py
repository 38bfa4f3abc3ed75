"""Helpers that start the real parts the tests talk to: redis-server, docker-registry, the GitLab emulator."""
