"""The GitLab emulator's handlers for users, projects, groups, branches, git tags and commits.

`GET /user`, `/version`, `/projects/:id`, `/groups/:id`, `/groups/:id/projects`,
`/projects/:id/repository/branches[/:branch]` (with `search`, `^` and `$` anchors),
`/projects/:id/repository/tags`, `/projects/:id/repository/commits/:sha` and
`/projects/:id/repository/commits/:sha/refs` (`type`: branch, tag, all).

The commit graph: `known_commits` (every commit a project can resolve), `commit_refs` (which live
branches and tags contain each one) and `_resolve_commit` (a SHA, a unique 4+ hex prefix, a branch
or a tag), over the state of tests/support/emulator_state.py. A mixin of `GitLabEmulator`.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from tests.support.emulator_http import ApiError, _not_found
from tests.support.emulator_state import BLANK_SHA, ZERO_TIME, MergeRequest, Project


class ProjectsApi:
    """Users, projects, groups, branches, git tags and commits: a mixin of `GitLabEmulator`."""

    # misc
    def get_user(self, req, raw_path):
        return self._json({"id": 1, "username": "emulator", "name": "GitLab Emulator", "state": "active"})

    def get_version(self, req, raw_path):
        return self._json({"version": "17.11.0-emulator", "revision": "emulator"})

    # projects
    def get_project(self, req, raw_path, pid):
        return self._json(self._project_json(self._project(pid)))

    def _project_json(self, p: Project) -> dict:
        with self.lock:
            group = next((g for g in self.groups.values() if g.path == p.namespace_path), None)
        ns_path = p.namespace_path
        return {
            "id": p.id, "name": p.name, "path": p.name, "path_with_namespace": p.path,
            "name_with_namespace": p.path.replace("/", " / "),
            "default_branch": p.default_branch, "web_url": f"{self.url}/{p.path}",
            "container_registry_image_prefix": f"{self._registry_host()}/{p.path}",
            "namespace": {
                "id": group.id if group else 0, "name": ns_path.rsplit("/", 1)[-1], "path": ns_path.rsplit("/", 1)[-1],
                "kind": "group" if group else "user", "full_path": ns_path,
            },
        }

    def _branch_json(self, p: Project, name: str, sha: str) -> dict:
        return {
            "name": name, "merged": False, "protected": name in p.protected_branches,
            "default": name == p.default_branch, "developers_can_push": False, "developers_can_merge": False,
            "can_push": True, "web_url": f"{self.url}/{p.path}/-/tree/{quote(name, safe='')}",
            "commit": {"id": sha, "short_id": sha[:8], "title": f"Head of {name}"},
        }

    # repository
    def list_branches(self, req, raw_path, pid):
        p = self._project(pid)
        with self.lock:
            branches = sorted(p.branches.items())
        search = req.args.get("search")
        if search:
            prefix, suffix = search.startswith("^"), search.endswith("$")
            term = search[1 if prefix else 0: len(search) - (1 if suffix else 0)].lower()

            def ok(name: str) -> bool:
                n = name.lower()
                if prefix and suffix:
                    return n == term
                if prefix:
                    return n.startswith(term)
                if suffix:
                    return n.endswith(term)
                return term in n
            branches = [(n, s) for n, s in branches if ok(n)]
        return self._paginate(req, raw_path, [self._branch_json(p, n, s) for n, s in branches])

    def get_branch(self, req, raw_path, pid, branch):
        p = self._project(pid)
        with self.lock:
            sha = p.branches.get(branch)
        if sha is None:
            raise _not_found("Branch")
        return self._json(self._branch_json(p, branch, sha))

    def list_git_tags(self, req, raw_path, pid):
        p = self._project(pid)
        with self.lock:
            tags = sorted(p.tags.items())
        return self._paginate(req, raw_path, [
            {"name": n, "target": s, "message": "", "protected": False,
             "commit": {"id": s, "short_id": s[:8], "title": f"Tagged {n}"}} for n, s in tags])

    # commits: the light commit graph of emulator_state.Project, plus the seeding shortcuts below.
    def known_commits(self, p: Project) -> set[str]:
        """Every commit project `p` can resolve: all that any of its branches ever held (the graph
        never forgets: keep-around refs), branch heads, tag targets, `add_commit` commits, its
        pipelines' commits (also deleted ones), and the commits, merge and squash commits of the
        merge requests it is the target or the source of."""
        with self.lock:
            known = set(p._parents) | set(p._kept) | set(p.branches.values()) | set(p.tags.values())
            known |= set(p.commits)
            for hist in p.history.values():
                known.update(hist)
            for mr in self._merge_requests_of(p):
                known.update(mr.all_commit_shas)
                known.update(c["id"] for c in mr.commits)
                known.update(s for s in (mr.merge_commit_sha, mr.squash_commit_sha) if s)
            known.discard(BLANK_SHA)
            return known

    def _merge_requests_of(self, p: Project) -> list[MergeRequest]:
        return [mr for q in self.projects.values() for mr in q.merge_requests.values()
                if mr.project_id == p.id or mr.source_project_id == p.id]

    def commit_refs(self, p: Project) -> dict[str, set[tuple[str, str]]]:
        """Every commit the project knows (`known_commits`) -> the live refs ("branch"/"tag", name)
        that contain it:

        - a live branch contains every commit of its history (`Project.history`, kept by
          add_branch, push, merge and `branches[name] = sha`) and its head; a git tag the commit
          it points at;
        - a commit seeded with `Project.add_commit(sha, on=[...])` is on those branches while they
          exist;
        - merge requests seeded with their commits (`commits=[...]`, or the legacy single commit
          when the source branch did not exist): the commits are on the source branch while it
          exists; seeded as merged (not through Project.merge), the commits and merge commit are on
          the target branch while it exists, or for a squash MR the squash and merge commits only.
          Merge requests that took their commits from the source branch, and merges done by
          Project.merge, need no rule: the branches' histories hold the truth.
        A branch's deletion leaves its commits known but on no ref."""
        with self.lock:
            refs: dict[str, set[tuple[str, str]]] = {sha: set() for sha in self.known_commits(p)}

            def on(sha: str | None, kind: str, name: str) -> None:
                if sha and (kind == "tag" or name in p.branches):
                    refs.setdefault(sha, set()).add((kind, name))

            for name, head in p.branches.items():
                on(head, "branch", name)
                for sha in p.history.get(name, ()):
                    on(sha, "branch", name)
            for name, sha in p.tags.items():
                on(sha, "tag", name)
            for sha, branches in p.commits.items():
                for name in branches:
                    on(sha, "branch", name)
            for mr in self._merge_requests_of(p):
                seeded_merged = mr.state == "merged" and not mr.merged_in_graph and mr.project_id == p.id
                for c in mr.commits:
                    if mr.commits_from != "branch" and mr.source_project_id == p.id:
                        on(c["id"], "branch", mr.source_branch)
                    if seeded_merged and not mr.squash:
                        on(c["id"], "branch", mr.target_branch)
                if seeded_merged:
                    on(mr.merge_commit_sha, "branch", mr.target_branch)
                    if mr.squash:
                        on(mr.squash_commit_sha, "branch", mr.target_branch)
            return refs

    def _resolve_commit(self, p: Project, ref: str) -> str:
        """A full SHA, a unique prefix of one (4+ hex, like git), a branch or a tag name; else 404
        (an ambiguous prefix too: git refuses it, and GitLab answers 404)."""
        with self.lock:
            if ref in p.branches:
                return p.branches[ref]
            if ref in p.tags:
                return p.tags[ref]
            known = self.known_commits(p)
        if ref in known:
            return ref
        if re.fullmatch(r"[0-9a-f]{4,39}", ref):
            matches = [sha for sha in known if sha.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
        raise _not_found("Commit")

    def get_commit(self, req, raw_path, pid, sha):
        p = self._project(pid)
        full = self._resolve_commit(p, sha)
        with self.lock:
            parents = list(p._parents.get(full, ()))
        return self._json({"id": full, "short_id": full[:8], "title": f"Commit {full[:8]}",
                           "message": f"Commit {full[:8]}", "parent_ids": parents, "created_at": ZERO_TIME,
                           "committed_date": ZERO_TIME, "authored_date": ZERO_TIME,
                           "web_url": f"{self.url}/{p.path}/-/commit/{full}"})

    def list_commit_refs(self, req, raw_path, pid, sha):
        p = self._project(pid)
        kind = req.args.get("type", "all")
        if kind not in ("branch", "tag", "all"):
            raise ApiError(400, "type does not have a valid value", key="error")
        full = self._resolve_commit(p, sha)
        refs = sorted(self.commit_refs(p).get(full, set()))
        return self._paginate(req, raw_path, [{"type": t, "name": n} for t, n in refs
                                              if kind == "all" or t == kind])

    # groups
    def get_group(self, req, raw_path, gid):
        g = self._group(gid)
        return self._json({"id": g.id, "name": g.name, "path": g.name, "full_path": g.path,
                           "web_url": f"{self.url}/groups/{g.path}"})

    def list_group_projects(self, req, raw_path, gid):
        g = self._group(gid)
        return self._paginate(req, raw_path, [self._project_json(p) for p in self.group_projects(g)])
