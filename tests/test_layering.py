"""The layering of `node` and `sync`, read from every import in the code (those under
TYPE_CHECKING and inside functions included):

    node.golang   the pure ports of Go's x/mod: imports nothing else from node
    base          node.errors, .flights, .metrics, .logs, .settings, .config: below everything
    cache         node.cache and node.hooks (the request path, and the mesh's seam)
    sumdb         node.sumdb: the checksum databases, over the cache's upstreams
    server        node.server: the aiohttp app; never the composition root
    service       node.service and node.plugins: the composition root
    tools         node.tools: the operator commands, over a running or local node
    cli           node.cli: the command line, on top

A layer imports only layers below it (and itself); `node` never imports `sync`. No
two modules import each other, directly or round a loop, and no module takes a
`_private` name from another module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["golang", "base", "cache", "sumdb", "server", "service", "tools", "cli"]


def layer(module: str) -> str | None:
    """The layer of a dotted module of `node`, None for anything else."""
    parts = module.split(".")
    if parts[0] != "node":
        return None
    if len(parts) == 1:
        return "base"  # node/__init__.py: the version string
    top = parts[1]
    if top in ("golang", "cache", "sumdb", "server", "tools", "cli"):
        return top
    if top == "hooks":
        return "cache"
    if top in ("service", "plugins"):
        return "service"
    if top in ("errors", "flights", "metrics", "logs", "settings", "config"):
        return "base"
    raise AssertionError(f"{module}: no layer; add it to tests/test_layering.py")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("node", "sync"):
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
            out[name] = path
    return out


MODULES = modules()


def imports(name: str, path: Path) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in MODULES:  # `from node.golang import modzip`: the module itself
                    yield sub, None, node.lineno
                else:
                    yield base, alias.name, node.lineno


EDGES = {
    name: [
        (target, imported, line)
        for target, imported, line in imports(name, path)
        if target.split(".")[0] in ("node", "sync")
    ]
    for name, path in MODULES.items()
}


def test_every_module_is_read() -> None:
    assert "node.cache.proxy" in MODULES and "sync.mesh" in MODULES and len(MODULES) > 100


def test_node_never_imports_sync() -> None:
    bad = [
        f"{m}:{line} imports {t}"
        for m, es in EDGES.items()
        if m.startswith("node")
        for t, _, line in es
        if t.startswith("sync")
    ]
    assert not bad, bad


def test_each_layer_imports_only_layers_below_it() -> None:
    bad = []
    for m, es in EDGES.items():
        mine = layer(m)
        if mine is None:
            continue
        for t, _, line in es:
            theirs = layer(t)
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{m}:{line} ({mine}) imports {t} ({theirs})")
    assert not bad, "\n".join(bad)


def test_golang_is_pure() -> None:
    bad = [
        f"{m}:{line} imports {t}"
        for m, es in EDGES.items()
        if m.startswith("node.golang")
        for t, _, line in es
        if not t.startswith("node.golang")
    ]
    assert not bad, bad


def test_no_import_cycles() -> None:
    graph = {m: {t for t, _, _ in es if t in MODULES and t != m} for m, es in EDGES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_names_across_modules() -> None:
    bad = [
        f"{m}:{line} takes {t}.{name}"
        for m, es in EDGES.items()
        for t, name, line in es
        if name is not None and _private(name) and t != m
    ]
    for m, path in MODULES.items():  # `module._name` through an imported module
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in MODULES:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and _private(node.attr)
            ):
                bad.append(f"{m}:{node.lineno} takes {aliases[node.value.id]}.{node.attr}")
    assert not bad, bad


@pytest.mark.parametrize("pkg", ["node", "sync"])
def test_no_module_over_450_lines(pkg: str) -> None:
    long = {m: n for m, p in MODULES.items() if m.startswith(pkg) and (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
