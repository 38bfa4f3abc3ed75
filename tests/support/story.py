"""A project's story told through the GitLab emulator and the real service, for end-to-end tests.

`Story` is a project in the emulator with one registry repository: each pipeline pushes its images
to the real docker-registry (and its Pipeline Hook reaches the service, or is lost), deliveries are
posted to gunicorn and their jobs awaited, and `assert_gone_exactly` reads the registry back: exactly
the expected tags are gone, every other tag is at the digest it was pushed with.
"""

from __future__ import annotations

import itertools

from tests.support.service import load_payload
from tests.support.shop import merge_payload

_ids = itertools.count(7100)


def next_project_id() -> int:
    """A project id no other story of the test session has."""
    return next(_ids)


class Story:
    """A project in the emulator, its registry repository, and what each tag should point at."""

    def __init__(self, gitlab, service):
        self.gitlab, self.service = gitlab, service
        pid = next_project_id()
        self.project = gitlab.add_project(pid, f"acme/record-{pid}", default_branch="main")
        self.project.add_registry_repository("")
        self.path = self.project.path
        self.digests: dict[str, str] = {}
        self.hooks = 0

    def pipeline(self, sha: str, ref: str, tags: list[str], *, hook: bool, mr_source: str | None = None) -> None:
        """A pipeline GitLab ran on `ref` at `sha`, which pushed `tags` (plus the SHA tags). Its
        Pipeline Hook reaches the service only when `hook`. `mr_source`: a merge request pipeline
        (ref refs/merge-requests/<iid>/head) of that source branch."""
        self.project.add_pipeline(sha, ref, source="merge_request_event" if mr_source else "push")
        pushed = [*tags, sha, sha[:8]]
        digest = self.gitlab.registry_client.push_image(self.path, pushed, content=f"{self.path}-{ref}-{sha}")
        self.digests.update({t: digest for t in pushed})
        if hook:
            body = load_payload("pipeline_main.json")
            body["project"]["id"] = self.project.id
            body["project"]["path_with_namespace"] = self.path
            body["object_attributes"].update(ref=mr_source or ref, sha=sha, tag=False)
            self.hooks += 1
            response = self.service.post(body, "Pipeline Hook", key=f"pipeline-{self.hooks}")
            assert response.status_code == 202, response.text
            assert self.service.wait_for_job(response.json()["job_id"]).get_status() == "finished"

    def merged(self, iid: int) -> dict:
        """Deliver the merge of `iid` and return the cleanup's report."""
        mr = self.project.merge_requests[iid]
        body = merge_payload(self.project, iid=iid, source_branch=mr.source_branch, target_branch=mr.target_branch,
                             merge_commit_sha=mr.merge_commit_sha, last_commit={"id": mr.sha})
        return self._cleaned(body, "Merge Request Hook", f"merge-{self.project.id}-{iid}")

    def deleted(self, branch: str) -> dict:
        """Delete `branch` in GitLab, deliver its Push Hook and return the cleanup's report."""
        before = self.project.branches[branch]
        self.project.delete_branch(branch)
        body = load_payload("push_branch_deleted.json")
        body["project_id"] = body["project"]["id"] = self.project.id
        body["project"]["path_with_namespace"] = self.path
        body.update(ref=f"refs/heads/{branch}", before=before)
        return self._cleaned(body, "Push Hook", f"push-{self.project.id}-{branch}")

    def _cleaned(self, body: dict, event: str, key: str) -> dict:
        """Post a delivery that asks for a cleanup; wait for it and return its report."""
        response = self.service.post(body, event, key=key)
        assert response.status_code == 202, response.text
        job = self.service.wait_for_job(response.json()["job_id"])
        assert job.get_status() == "finished", self.service.logs()[-3000:]
        report = job.return_value()
        assert report["skipped"] is None and report["summary"]["failed"] == 0, report
        return report

    def assert_gone_exactly(self, gone: set[str]) -> None:
        reg = self.gitlab.registry_client
        present = set(reg.tags(self.path))
        assert set(self.digests) - present == gone
        for tag in present:
            assert reg.resolve(self.path, tag) == self.digests[tag], f"{tag} moved"


def kept_because(report: dict, tag: str) -> str:
    return next(d["reason"] for d in report["decisions"] if d["tag"] == tag and d["decision"] == "kept")
