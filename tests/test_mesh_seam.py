"""The seam between node and mesh: `node` never imports `sync`, and `sync` imports from
`node` only what node/hooks.py's docstring lists (its contract)."""

from __future__ import annotations

import ast
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

import node.hooks

ROOT = Path(__file__).resolve().parent.parent


def imports(package: str) -> Iterator[tuple[Path, str, str | None]]:
    """(file, module, name) for every absolute import in the package; name is None
    for `import module`."""
    for path in sorted((ROOT / package).rglob("*.py")):
        for n in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(n, ast.Import):
                for a in n.names:
                    yield path, a.name, None
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
                for a in n.names:
                    yield path, n.module, a.name


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent is a module, not a package
        return False


def contract() -> dict[str, str]:
    """Module -> its bullet in node/hooks.py's docstring ("- `node.x`: names ...")."""
    doc = node.hooks.__doc__ or ""
    return dict(re.findall(r"^- `(node[\w.]*)`:(.*?)(?=^- |^\s*$)", doc, re.M | re.S))


def test_node_never_imports_sync() -> None:
    bad = [f"{p.relative_to(ROOT)}: {m}" for p, m, _ in imports("node") if m == "sync" or m.startswith("sync.")]
    assert not bad, bad


def test_sync_uses_only_what_the_seam_lists() -> None:
    listed = contract()
    assert "node.hooks" in listed and "node.service" in listed, "node/hooks.py lost its contract list"
    used: set[str] = set()
    missing = []
    for path, module, name in imports("sync"):
        if module != "node" and not module.startswith("node."):
            continue
        if name is not None and is_module(f"{module}.{name}"):
            module, name = f"{module}.{name}", None  # `from node.golang import modzip`
        used.add(module)
        if module not in listed:
            missing.append(f"{path.relative_to(ROOT)}: {module}")
        elif name is not None and f"`{name}`" not in listed[module]:
            missing.append(f"{path.relative_to(ROOT)}: {module}.{name}")
    assert not missing, f"sync imports from node what node/hooks.py does not list: {missing}"
    assert not set(listed) - used, f"node/hooks.py lists modules sync no longer imports: {set(listed) - used}"
