"""A project whose pipelines push images to the real registry, for the retention tests:
`BuiltProject` remembers the digest every pushed tag should point at, and `tags_of` names a
commit's two commit tags (`:sha` and `:short_sha`)."""

from __future__ import annotations

from tests.support.story import next_project_id


def tags_of(*shas: str) -> set[str]:
    return {t for s in shas for t in (s, s[:8])}


class BuiltProject:
    """A new emulator project (default branch `main`, one registry repository at its root)."""

    def __init__(self, gitlab, prefix: str):
        self.gitlab = gitlab
        pid = next_project_id()
        self.project = gitlab.add_project(pid, f"acme/{prefix}-{pid}", default_branch="main")
        self.project.add_registry_repository("")
        self.path = self.project.path
        self.digests: dict[str, str] = {}

    def push(self, ref: str, sha: str, tags: list[str]) -> None:
        """What a pipeline of `ref` on `sha` pushes: one image under `tags`."""
        digest = self.gitlab.registry_client.push_image(self.path, tags, content=f"{self.path}-{ref}-{sha}")
        self.digests.update({t: digest for t in tags})

    def present(self) -> set[str]:
        return set(self.gitlab.registry_client.tags(self.path))

    def assert_gone_exactly(self, gone: set[str]) -> None:
        """Exactly `gone` of the pushed tags are missing; every other one is where it was pushed."""
        reg = self.gitlab.registry_client
        present = self.present()
        assert set(self.digests) - present == gone
        for tag in present:
            assert reg.resolve(self.path, tag) == self.digests[tag], f"{tag} moved"
