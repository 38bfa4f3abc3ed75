"""The GitLab emulator's merge request handlers (MergeRequestBasic views).

`GET /projects/:id/merge_requests` (`state`, `source_branch`, `target_branch`, `iids[]`; newest
first), `/projects/:id/merge_requests/:iid` and `/projects/:id/merge_requests/:iid/commits`
(newest first). A merge request's pipelines are in emulator_pipelines. A mixin of `GitLabEmulator`.
"""

from __future__ import annotations

from tests.support.emulator_http import ApiError, _not_found
from tests.support.emulator_state import MergeRequest, Project


class MergeRequestsApi:
    """Merge requests and their commits: a mixin of `GitLabEmulator`."""

    def _mr_json(self, mr: MergeRequest) -> dict:
        """MergeRequestBasic's fields (the list and the single view alike), kept simple:
        merge_status is can_be_merged, detailed_merge_status mergeable / draft_status /
        commits_status (no commits) while open and not_open otherwise."""
        p = self.projects.get(mr.project_id)
        if mr.state != "opened":
            detailed = "not_open"
        elif mr.draft:
            detailed = "draft_status"
        else:
            detailed = "mergeable" if mr.commits else "commits_status"
        merged, closed = mr.state == "merged", mr.state == "closed"
        return {
            "id": mr.id, "iid": mr.iid, "project_id": mr.project_id, "title": mr.title, "description": "",
            "state": mr.state, "created_at": mr.created_at, "updated_at": mr.updated_at,
            "merged_by": self.USER if merged else None, "merge_user": self.USER if merged else None,
            "merged_at": mr.merged_at if merged else None,
            "closed_by": self.USER if closed else None, "closed_at": mr.closed_at if closed else None,
            "source_branch": mr.source_branch, "target_branch": mr.target_branch,
            "source_project_id": mr.source_project_id, "target_project_id": mr.target_project_id,
            "author": self.USER, "assignee": None, "assignees": [], "reviewers": [], "labels": [],
            "user_notes_count": 0, "upvotes": 0, "downvotes": 0, "milestone": None,
            "draft": mr.draft, "work_in_progress": mr.draft, "merge_when_pipeline_succeeds": False,
            "merge_status": "can_be_merged", "detailed_merge_status": detailed, "has_conflicts": False,
            "sha": mr.sha, "merge_commit_sha": mr.merge_commit_sha, "squash_commit_sha": mr.squash_commit_sha,
            "squash": mr.squash, "squash_on_merge": mr.squash, "discussion_locked": None,
            "should_remove_source_branch": mr.force_remove_source_branch or None,
            "force_remove_source_branch": mr.force_remove_source_branch,
            "blocking_discussions_resolved": True, "prepared_at": mr.created_at,
            "reference": f"!{mr.iid}",
            "references": {"short": f"!{mr.iid}", "relative": f"!{mr.iid}",
                           "full": f"{p.path if p else mr.project_id}!{mr.iid}"},
            "web_url": f"{self.url}/{p.path if p else mr.project_id}/-/merge_requests/{mr.iid}",
        }

    # merge requests
    def list_merge_requests(self, req, raw_path, pid):
        p = self._project(pid)
        state = req.args.get("state", "all")
        if state not in ("opened", "closed", "merged", "locked", "all"):
            raise ApiError(400, "state does not have a valid value", key="error")
        src, tgt = req.args.get("source_branch"), req.args.get("target_branch")
        # `iids[]=1&iids[]=2` (GitLab's array parameter): only those merge requests.
        raw_iids = req.args.getlist("iids[]")
        try:
            iids = {int(i) for i in raw_iids} if raw_iids else None
        except ValueError:
            raise ApiError(400, "iids is invalid", key="error") from None
        with self.lock:
            mrs = sorted(p.merge_requests.values(), key=lambda m: m.iid, reverse=True)  # newest first
            items = [self._mr_json(m) for m in mrs
                     if (state == "all" or m.state == state)
                     and (src is None or m.source_branch == src)
                     and (tgt is None or m.target_branch == tgt)
                     and (iids is None or m.iid in iids)]
        return self._paginate(req, raw_path, items)

    def _mr(self, p: Project, iid: str) -> MergeRequest:
        with self.lock:
            mr = p.merge_requests.get(int(iid)) if iid.isdigit() else None
        if mr is None:
            raise _not_found("Merge Request")
        return mr

    def get_merge_request(self, req, raw_path, pid, iid):
        mr = self._mr(self._project(pid), iid)
        with self.lock:
            return self._json(self._mr_json(mr))

    def list_mr_commits(self, req, raw_path, pid, iid):
        mr = self._mr(self._project(pid), iid)
        with self.lock:
            commits = [dict(c) for c in reversed(mr.commits)]  # GitLab lists newest first
        return self._paginate(req, raw_path, commits)
