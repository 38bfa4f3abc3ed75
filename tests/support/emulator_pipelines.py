"""The GitLab emulator's pipeline handlers: GitLab's record of the pipelines it ran.

`GET /projects/:id/pipelines` (Ci::PipelinesFinder: scope, status, ref, sha, username,
yaml_errors, updated/created before/after, source, name, order_by, sort; Grape's 400s),
`/projects/:id/pipelines/:pipeline_id` (PipelineWithMetadata) and
`/projects/:id/merge_requests/:iid/pipelines` (Ci::PipelinesForMergeRequestFinder,
`merge_request_pipelines`). A mixin of `GitLabEmulator`.
"""

from __future__ import annotations

import re

from tests.support.emulator_http import ApiError
from tests.support.emulator_state import (
    CI_BRANCH_SOURCES, FINISHED_STATUSES, PIPELINE_SOURCES, PIPELINE_STATUSES, MergeRequest, Pipeline, Project,
    parse_time,
)


class PipelinesApi:
    """Pipelines, a project's and a merge request's: a mixin of `GitLabEmulator`."""

    # Entities::Ci::PipelineBasic (MR pipelines); the project list adds `name` (PipelineBasicWithMetadata).
    PIPELINE_BASIC = ("id", "iid", "project_id", "sha", "ref", "status", "source", "created_at",
                      "updated_at", "web_url")

    def _pipeline_basic(self, pl: Pipeline, with_name: bool = False) -> dict:
        out = {k: getattr(pl, k) for k in self.PIPELINE_BASIC}
        if with_name:
            out["name"] = pl.name
        return out

    def _pipeline_json(self, pl: Pipeline, p: Project) -> dict:
        """Entities::Ci::PipelineWithMetadata: the single pipeline."""
        out = self._pipeline_basic(pl, with_name=True)
        label = {"success": "passed", "running": "running", "failed": "failed"}.get(pl.status, pl.status)
        out.update({
            "before_sha": pl.before_sha, "tag": pl.tag, "yaml_errors": None, "user": self.USER,
            "started_at": pl.started_at, "finished_at": pl.finished_at, "committed_at": None,
            "duration": pl.duration, "queued_duration": None, "coverage": None,
            "detailed_status": {
                "icon": f"status_{pl.status}", "text": label, "label": label, "group": pl.status,
                "tooltip": label, "has_details": False, "details_path": f"/{p.path}/-/pipelines/{pl.id}",
                "illustration": None, "favicon": f"/assets/ci_favicons/favicon_status_{pl.status}.png",
            },
        })
        return out

    def merge_request_pipelines(self, mr: MergeRequest) -> list[Pipeline]:
        """Ci::PipelinesForMergeRequestFinder#all: the merge request's own pipelines (source
        merge_request_event on refs/merge-requests/<iid>/..., in its source or target project) and
        the source project's branch pipelines (ci_branch_sources, not tags) on the source branch
        whose SHA is one of the MR's commits in any version of its diff. Merge request pipelines
        first, then newest (highest id) first, as GitLab sorts them."""
        with self.lock:
            target = self.projects.get(mr.project_id)
            source = self.projects.get(mr.source_project_id)
            found: dict[int, Pipeline] = {}
            for proj in {id(x): x for x in (target, source) if x is not None}.values():
                if proj is not target and mr.iid in proj.merge_requests:
                    continue  # in a fork, that iid names the fork's own merge request
                for pl in proj.pipelines.values():
                    if pl.source == "merge_request_event" and pl.merge_request_iid == mr.iid:
                        found[pl.id] = pl
            if source is not None:
                shas = set(mr.all_commit_shas)
                for pl in source.pipelines.values():
                    if pl.source in CI_BRANCH_SOURCES and not pl.tag and pl.ref == mr.source_branch \
                            and pl.sha in shas:
                        found[pl.id] = pl
            return sorted(found.values(), key=lambda pl: (pl.source != "merge_request_event", -pl.id))

    def list_mr_pipelines(self, req, raw_path, pid, iid):
        mr = self._mr(self._project(pid), iid)
        with self.lock:
            items = [self._pipeline_basic(pl) for pl in self.merge_request_pipelines(mr)]
        return self._paginate(req, raw_path, items)

    # pipelines
    PIPELINE_ORDER = ("id", "status", "ref", "updated_at", "user_id")
    PIPELINE_SCOPES = ("running", "pending", "finished", "branches", "tags")

    def list_pipelines(self, req, raw_path, pid):
        """GET /projects/:id/pipelines as lib/api/ci/pipelines.rb validates it (Grape: invalid values
        answer 400 {"error": "<param> does not have a valid value"}, unparsable times
        "<param> is invalid", several errors joined by ", ") and Ci::PipelinesFinder filters it:
        child pipelines left out unless source=parent_pipeline; scope (branches/tags: the newest
        pipeline of each branch/tag that exists now), status, ref (exact), sha (exact), username,
        yaml_errors, updated_after/updated_before (inclusive: UpdatedAtFilterable's gteq/lteq; none
        when before < after), created_after/created_before (strict: Ci::Pipeline's gt/lt), source,
        name; then ORDER BY order_by sort. GitLab adds no tie-breaker: ties are ordered by id in the
        same direction here."""
        p = self._project(pid)
        args = req.args
        errors: list[str] = []

        def choice(name: str, allowed, default=None):
            value = args.get(name, default)
            if value is not None and value not in allowed:
                errors.append(f"{name} does not have a valid value")
                return default
            return value

        def when(name: str):
            value = args.get(name)
            if value is None:
                return None
            try:
                return parse_time(value)
            except (ValueError, TypeError):
                errors.append(f"{name} is invalid")
                return None

        # Grape's declaration order (lib/api/ci/pipelines.rb).
        scope = choice("scope", self.PIPELINE_SCOPES)
        status = choice("status", PIPELINE_STATUSES)
        ref, sha, username = args.get("ref"), args.get("sha"), args.get("username")
        yaml_errors = args.get("yaml_errors")
        if yaml_errors is not None and yaml_errors.lower() not in ("true", "false", "1", "0", "t", "f"):
            errors.append("yaml_errors is invalid")
        updated_before, updated_after = when("updated_before"), when("updated_after")
        created_before, created_after = when("created_before"), when("created_after")
        order_by = choice("order_by", self.PIPELINE_ORDER, "id")
        sort = choice("sort", ("asc", "desc"), "desc")
        source = choice("source", PIPELINE_SOURCES)
        name = args.get("name")
        if errors:
            raise ApiError(400, ", ".join(errors), key="error")

        with self.lock:
            items = list(p.pipelines.values())  # id order
            if source != "parent_pipeline":
                items = [pl for pl in items if pl.source != "parent_pipeline"]
            if scope == "running" or scope == "pending":
                items = [pl for pl in items if pl.status == scope]
            elif scope == "finished":
                items = [pl for pl in items if pl.status in FINISHED_STATUSES]
            elif scope in ("branches", "tags"):
                want_tag = scope == "tags"
                live = set(p.tags if want_tag else p.branches)
                newest: dict[str, Pipeline] = {}
                for pl in items:
                    if pl.tag == want_tag and pl.ref in live:
                        newest[pl.ref] = pl  # ascending ids: the last one wins
                items = sorted(newest.values(), key=lambda pl: pl.id)
            if status:
                items = [pl for pl in items if pl.status == status]
            if ref:
                refs = {ref}
                if self.include_reserved_refs_in_ref_filter and source in (None, "merge_request_event"):
                    for mr in p.merge_requests.values():
                        if mr.source_branch == ref:
                            refs |= {f"refs/merge-requests/{mr.iid}/{k}" for k in ("head", "merge", "train")}
                items = [pl for pl in items if pl.ref in refs]
            if sha:
                items = [pl for pl in items if pl.sha == sha]
            if username is not None and username != self.USER["username"]:
                items = []
            if yaml_errors is not None and yaml_errors.lower() in ("true", "1", "t"):
                items = []  # the emulator's pipelines have no configuration errors
            if updated_before is not None and updated_after is not None and updated_before < updated_after:
                items = []
            if updated_before is not None:
                items = [pl for pl in items if parse_time(pl.updated_at) <= updated_before]
            if updated_after is not None:
                items = [pl for pl in items if parse_time(pl.updated_at) >= updated_after]
            if created_before is not None:
                items = [pl for pl in items if parse_time(pl.created_at) < created_before]
            if created_after is not None:
                items = [pl for pl in items if parse_time(pl.created_at) > created_after]
            if source:
                items = [pl for pl in items if pl.source == source]
            if name:
                items = [pl for pl in items if pl.name == name]

            def key(pl: Pipeline):
                if order_by == "id":
                    return (pl.id,)
                if order_by == "user_id":
                    return (self.USER["id"], pl.id)
                if order_by == "updated_at":
                    return (parse_time(pl.updated_at), pl.id)
                return (getattr(pl, order_by), pl.id)

            items.sort(key=key, reverse=(sort == "desc"))
            out = [self._pipeline_basic(pl, with_name=True) for pl in items]
        return self._paginate(req, raw_path, out)

    def get_pipeline(self, req, raw_path, pid, pipeline_id):
        p = self._project(pid)
        if not re.fullmatch(r"\d+", pipeline_id):
            raise ApiError(400, "pipeline_id is invalid", key="error")
        with self.lock:
            pl = p.pipelines.get(int(pipeline_id))
            if pl is None:
                raise ApiError(404, "404 Not found")
            return self._json(self._pipeline_json(pl, p))
