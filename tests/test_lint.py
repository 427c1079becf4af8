"""The tree stays clean under the project's linters: ruff (rules and formatting) and
`mypy --strict` for node and sync, all configured in pyproject.toml. `make lint` runs
the same three commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_rules() -> None:
    pytest.importorskip("ruff")
    res = _run("ruff", "check", "--no-cache", ".")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_ruff_format() -> None:
    pytest.importorskip("ruff")
    res = _run("ruff", "format", "--no-cache", "--check", ".")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_mypy_strict() -> None:
    pytest.importorskip("mypy")
    res = _run("mypy", "--config-file", str(ROOT / "pyproject.toml"))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
