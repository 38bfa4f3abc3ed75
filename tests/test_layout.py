"""The layout's two rules: the web process runs no worker code, and no module imports itself back.

1. `hooks` may import from `workers` only what `workers/common/` holds (settings, allow-list,
   logs, errors, audit and metrics writers). Checked on a real web process: a fresh
   interpreter imports `hooks`, creates the app (dashboard on) and answers a request of each
   kind; then no `workers.*` module outside `workers.common` may be loaded.
2. No import cycle among the modules of hooks/ and workers/. The graph is read from the
   source with `ast`: every import statement, at module level or inside a function (a lazy
   import still ties the two modules), and `importlib.import_module("...")` with a literal
   name. A package's `__init__` is a module like the others, so what it imports (re-exports
   included) counts; importing a module does not count as importing its parent package.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hooks", "workers")

_WEB_PROCESS = r"""
import base64, json, sys
from pathlib import Path

from hooks import create_app

payloads = Path(sys.argv[1])
app = create_app({"TESTING": True, "WEBHOOK_SECRET": "layout-secret", "REDIS_URL": sys.argv[2],
                  "DASHBOARD_USER": "ops", "DASHBOARD_PASSWORD": "layout-dashboard-password"})
client = app.test_client()
headers = json.loads((payloads / "headers.json").read_text())
headers["X-Gitlab-Token"] = "layout-secret"
answered = {}
for event, name in (("Merge Request Hook", "merge_request_merge.json"), ("Push Hook", "push_branch_deleted.json"),
                    ("Pipeline Hook", "pipeline_main.json")):
    headers["X-Gitlab-Event"] = event
    headers["Idempotency-Key"] = headers["X-Gitlab-Event-UUID"] = name
    answered[name] = client.post("/hooks/gitlab", data=(payloads / name).read_bytes(), headers=headers).status_code
auth = {"Authorization": "Basic " + base64.b64encode(b"ops:layout-dashboard-password").decode()}
for path in ("/healthz", "/readyz", "/metrics", "/audit", "/rq/0/data/queues.json", "/", "/activity?q=feature"):
    answered[path] = client.get(path, headers=auth).status_code
print(json.dumps({"answered": answered,
                  "loaded": sorted(name for name in sys.modules if name.split(".")[0] == "workers")}))
"""


def test_the_web_process_imports_nothing_of_the_workers_but_workers_common(redis_url):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("WEBHOOK_SECRET", "WEBHOOK_SIGNING_KEY", "ALLOWED_PROJECTS", "DASHBOARD_USER", "DASHBOARD_PASSWORD"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", _WEB_PROCESS, str(ROOT / "tests" / "payloads"), redis_url],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # Every request was served (the code behind it ran), and the check sees the web process's imports.
    assert all(status < 400 for status in seen["answered"].values()), seen["answered"]
    loaded = seen["loaded"]
    assert "workers.common.settings" in loaded
    worker_only = [name for name in loaded if name != "workers" and not name.startswith("workers.common")]
    assert worker_only == [], f"the web process imported worker-only modules: {worker_only}"


# --- the import graph -------------------------------------------------------------------------

def _modules() -> dict[str, Path]:
    """Every module of hooks/ and workers/ by its dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(name: str, source: str, modules: set[str], *, package: bool = False) -> set[str]:
    """The modules of `modules` that the module `name` imports anywhere in its `source`
    (`package`: the source is the package's __init__)."""
    targets: set[str] = set()

    def add(module: str, names: tuple[str, ...] = ()) -> None:
        for sub in names:
            if f"{module}.{sub}" in modules:  # `from package import module`
                targets.add(f"{module}.{sub}")
            elif module in modules:
                targets.add(module)
        if not names and module in modules:
            targets.add(module)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package this module is in (or is)
                parts = name.split(".")
                parts = parts[: len(parts) - node.level + (1 if package else 0)]
                base = ".".join(parts + ([base] if base else []))
            add(base, tuple(alias.name for alias in node.names))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value)
    targets.discard(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path.read_text(), set(modules), package=path.name == "__init__.py")
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_a_cycle(graph, set(component)) for component in components]


def _a_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle from the component's first module back to itself, as a path."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & component):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    return sorted(component)


def test_the_graph_reader_sees_imports_of_every_kind():
    modules = {"p", "p.a", "p.b", "p.c", "p.d", "p.e", "q"}
    source = """
import q
from p import a
from p.b import something

def later():
    from . import c
    import importlib
    return importlib.import_module("p.d")
"""
    assert _imported("p.x", source, modules) == {"q", "p.a", "p.b", "p.c", "p.d"}
    assert _imported("p", "from .e import f\nfrom p import thing", modules, package=True) == {"p.e"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "workers.common.settings" in graph["hooks"] and "workers.cli.sweep" in graph["workers.cli"]


def test_no_import_cycle_among_hooks_and_workers():
    found = cycles(import_graph())
    assert found == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)
