"""FakeProxy: a real GOPROXY server on 127.0.0.1 that tests can count and break.

The node under test talks to it exactly as it would talk to proxy.golang.org,
so upstream behaviour is exercised over real sockets, never mocked. It serves a
module set (path -> version -> (info, mod, zip)) following protocol notes 1.2-1.4
and 7.4, counts every request, and injects faults per request path: statuses,
empty or wrong bodies, connection resets, truncation, hangs, delays and
throttled bodies. It can be stopped and restarted on the same port to simulate
an upstream outage.

Run standalone for benches:
    python -m tests.upstream_fixture --listen 127.0.0.1:8411 --corpus
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import re
import signal
import socket
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiohttp import web

from node.golang import modpath, pseudo, semver
from tests.corpus import CorpusVersion, build_zip

__all__ = ["FakeProxy", "Fault", "FaultKind", "ModuleSet", "Reply", "VersionFiles", "modules_from_corpus"]

#: (info, mod, zip); None means that endpoint answers 404.
VersionFiles = tuple[bytes | None, bytes | None, bytes | None]
ModuleSet = Mapping[str, Mapping[str, VersionFiles]]
FaultKind = Literal[
    "status",
    "empty_200",
    "reset_mid_body",
    "truncate",
    "wrong_body",
    "hang",
    "delay",
    "slow_body",
    "chunked",
    "chunked_cut",
    "chunked_short",
]

_TEXT = "text/plain; charset=utf-8"
_CONTENT_TYPES = {
    "list": _TEXT,
    "mod": _TEXT,
    "info": "application/json",
    "latest": "application/json",
    "zip": "application/zip",
}


@dataclass(frozen=True)
class Fault:
    """How to misbehave for a matching request; build with the classmethods."""

    kind: FaultKind
    code: int = 200
    body: bytes = b""
    seconds: float = 0.0
    rate: float = 0.0

    @classmethod
    def status(cls, code: int, body: bytes = b"") -> Fault:
        """Answer `code` with `body` (text/plain) instead of the real reply."""
        return cls("status", code=code, body=body)

    @classmethod
    def empty_200(cls) -> Fault:
        """200 with an empty body: the classic broken-CDN answer."""
        return cls("empty_200")

    @classmethod
    def reset_mid_body(cls) -> Fault:
        """Full Content-Length, half the body, then a TCP reset."""
        return cls("reset_mid_body")

    @classmethod
    def truncate(cls) -> Fault:
        """Full Content-Length, half the body, then a clean close (FIN)."""
        return cls("truncate")

    @classmethod
    def wrong_body(cls, data: bytes) -> Fault:
        """200 with other bytes: what a poisoned or confused upstream sends."""
        return cls("wrong_body", body=data)

    @classmethod
    def chunked(cls, rate: float = 0.0) -> Fault:
        """The whole body without Content-Length (chunked), at `rate` bytes/s if given."""
        return cls("chunked", rate=float(rate))

    @classmethod
    def chunked_cut(cls, rate: float = 0.0) -> Fault:
        """No Content-Length; half the body, then the connection closes mid-stream."""
        return cls("chunked_cut", rate=float(rate))

    @classmethod
    def chunked_short(cls, rate: float = 0.0) -> Fault:
        """No Content-Length; half the body, ended cleanly: a short body nothing flags."""
        return cls("chunked_short", rate=float(rate))

    @classmethod
    def hang(cls) -> Fault:
        """Never answer; released (connection dropped) when the server stops."""
        return cls("hang")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait `seconds`, then answer normally."""
        return cls("delay", seconds=seconds)

    @classmethod
    def slow_body(cls, bytes_per_sec: float) -> Fault:
        """Answer normally but stream the body at `bytes_per_sec`."""
        if bytes_per_sec <= 0:
            raise ValueError("bytes_per_sec must be positive")
        return cls("slow_body", rate=float(bytes_per_sec))


@dataclass
class _Rule:
    pattern: str
    regex: re.Pattern[str] | None
    fault: Fault
    remaining: int | None  # None: forever

    def matches(self, path: str) -> bool:
        if path.endswith(self.pattern):
            return True
        return self.regex is not None and self.regex.search(path) is not None


@dataclass
class Reply:
    """A fault-free answer; faults reshape it (cut it short, slow it down)."""

    status: int
    body: bytes
    content_type: str


def _not_found(msg: str) -> Reply:
    # One line then a blank line: the go command prints up to the first blank line.
    return Reply(404, f"not found: {msg}\n\n".encode(), _TEXT)


@dataclass
class _State:
    """Per-run resources, replaced on every start()."""

    runner: web.AppRunner
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class FakeProxy:
    """An aiohttp GOPROXY over an in-memory module set, with counters and fault injection."""

    def __init__(self, modules: ModuleSet | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        # Copy two levels deep: add_module in one test must not leak into another.
        self.modules: dict[str, dict[str, VersionFiles]] = {
            path: dict(versions) for path, versions in (modules or {}).items()
        }
        self.host = host
        self.port = port
        self.requests: collections.Counter[str] = collections.Counter()
        self.log: list[str] = []
        #: module -> query (a branch or tag name) -> the version it resolves to, like a
        #: VCS-backed proxy (proxy.golang.org); commit prefixes and `+build` suffixes
        #: resolve without an entry.
        self.queries: dict[str, dict[str, str]] = {}
        self._rules: list[_Rule] = []
        self._state: _State | None = None

    # --- construction ----------------------------------------------------------

    @classmethod
    def from_corpus(
        cls,
        corpus: Iterable[CorpusVersion],
        workdir: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> FakeProxy:
        """Serve every corpus version (servable and broken) with the zip tests/corpus.py builds."""
        return cls(modules_from_corpus(corpus, workdir), host=host, port=port)

    def add_module(self, path: str, version: str, info: bytes | None, mod: bytes | None, zip: bytes | None) -> None:
        """Add or replace one version at runtime (e.g. a big synthetic zip)."""
        self.modules.setdefault(path, {})[version] = (info, mod, zip)

    # --- counters and faults -----------------------------------------------------

    def reset_counts(self) -> None:
        self.requests.clear()
        self.log.clear()

    def count(self, suffix: str) -> int:
        """Requests whose decoded path ends with `suffix` (e.g. "quote/@v/v1.5.2.zip")."""
        return sum(n for path, n in self.requests.items() if path.endswith(suffix))

    def inject(self, pattern: str, fault: Fault, times: int | None = None) -> None:
        """Misbehave for requests whose decoded path ends with `pattern` or matches it as a regex.

        Paths are percent-decoded but still bang-escaped, with the leading "/":
        "/rsc.io/!q!u!o!t!e/@v/list". The first matching rule with uses left wins;
        `times=None` means forever.
        """
        try:
            regex: re.Pattern[str] | None = re.compile(pattern)
        except re.error:
            regex = None
        self._rules.append(_Rule(pattern, regex, fault, times))

    def clear_faults(self) -> None:
        self._rules.clear()

    def _take_fault(self, path: str) -> Fault | None:
        for rule in self._rules:
            if rule.remaining == 0 or not rule.matches(path):
                continue
            if rule.remaining is not None:
                rule.remaining -= 1
            return rule.fault
        return None

    # --- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeProxy has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._state is not None

    async def start(self) -> None:
        """Listen (again) on self.port; the first start picks an ephemeral port."""
        if self._state is not None:
            return
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        self._state = _State(runner)  # before listening: a hang must find its release event
        try:
            await site.start()
        except BaseException:
            self._state = None
            await runner.cleanup()
            raise
        if not self.port:
            self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening and drop every connection; hung and slow handlers are released."""
        state, self._state = self._state, None
        if state is None:
            return
        state.stopping.set()
        await state.runner.cleanup()

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[FakeProxy]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    # --- serving ---------------------------------------------------------------------

    def _latest(self, path: str, versions: Mapping[str, VersionFiles]) -> str | None:
        """Highest release, else highest prerelease, else newest pseudo-version."""
        valid = [v for v in versions if _checks(path, v)]
        tagged = [v for v in valid if not pseudo.is_pseudo_version(v)]
        releases = [v for v in tagged if "-" not in v.split("+", 1)[0]]
        pseudos = [v for v in valid if pseudo.is_pseudo_version(v)]
        for pool in (releases, tagged, pseudos):
            if pool:
                return max(pool, key=semver.sort_key)
        return None

    def reply_for(self, path: str) -> Reply:
        """The normal (fault-free) answer for a percent-decoded request path."""
        p = path.lstrip("/")
        if "/@v/" in p:
            enc_mod, file = p.split("/@v/", 1)
        elif p.endswith("/@latest"):
            enc_mod, file = p[: -len("/@latest")], "@latest"
        else:
            return _not_found(path)
        try:
            mod_path = modpath.unescape_path(enc_mod)
        except ValueError:
            return _not_found(f"bad module path {enc_mod}")
        versions = self.modules.get(mod_path)
        if versions is None:
            return _not_found(f"unknown module {mod_path}")
        if file == "list":
            listed = sorted(
                (v for v in versions if not pseudo.is_pseudo_version(v) and _checks(mod_path, v)),
                key=semver.sort_key,
            )
            return Reply(200, "".join(v + "\n" for v in listed).encode(), _CONTENT_TYPES["list"])
        if file == "@latest":
            latest = self._latest(mod_path, versions)
            if latest is None:
                return _not_found(f"{mod_path} has no versions")
            info = versions[latest][0]
            body = info if info is not None else json.dumps({"Version": latest}).encode()
            return Reply(200, body, _CONTENT_TYPES["latest"])
        enc_ver, dot, ext = file.rpartition(".")
        if not dot or ext not in ("info", "mod", "zip"):
            return _not_found(path)
        try:
            version = modpath.unescape_version(enc_ver)
        except ValueError:
            return _not_found(f"bad version {enc_ver}")
        files = versions.get(version)
        if files is None and ext == "info":
            resolved = self.resolve(mod_path, version)
            files = versions.get(resolved) if resolved else None
        if files is None:
            return _not_found(f"{mod_path}@{version}")
        data = files[("info", "mod", "zip").index(ext)]
        if data is None:
            return _not_found(f"{mod_path}@{version} has no .{ext}")
        return Reply(200, data, _CONTENT_TYPES[ext])

    def resolve(self, module: str, query: str) -> str | None:
        """The version a `.info` query names: a branch or tag name from `queries`, a
        commit prefix, or a version with build metadata (v1.2.3+meta -> v1.2.3)."""
        versions = self.modules.get(module, {})
        if query in self.queries.get(module, {}):
            return self.queries[module][query]
        if _HEX.fullmatch(query):
            return _resolve_commit(query, versions)
        base, plus, build = query.partition("+")
        if plus and build != "incompatible" and base in versions:
            return base
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path  # percent-decoded; "+" stays "+"
        self.requests[path] += 1
        self.log.append(path)
        state = self._state
        fault = self._take_fault(path)
        if fault is None:
            return _response(self.reply_for(path))
        kind = fault.kind
        if kind == "status":
            return web.Response(status=fault.code, body=fault.body, headers={"Content-Type": _TEXT})
        if kind == "empty_200":
            return web.Response(status=200, body=b"", headers={"Content-Type": _TEXT})
        if kind == "wrong_body":
            return web.Response(status=200, body=fault.body, content_type="application/octet-stream")
        if kind == "hang":
            if state is not None:
                await state.stopping.wait()
            return _dropped(request)
        reply = self.reply_for(path)
        if kind == "delay":
            if state is not None and await _wait(state.stopping, fault.seconds):
                return _dropped(request)
            return _response(reply)
        if kind in ("reset_mid_body", "truncate"):
            return await _half_body(request, reply, reset=kind == "reset_mid_body")
        if kind == "slow_body":
            return await _slow_body(request, reply, fault.rate, state.stopping if state else None)
        if kind in ("chunked", "chunked_cut", "chunked_short"):
            return await _chunked(request, reply, kind, fault.rate, state.stopping if state else None)
        raise AssertionError(f"unknown fault kind {kind!r}")


_HEX = re.compile(r"[0-9a-f]+")


def _resolve_commit(prefix: str, versions: Mapping[str, VersionFiles]) -> str | None:
    """Like Go's test proxy: the highest version whose pseudo-version hash or .info Short matches."""
    best: str | None = None
    for v, (info, _mod, _zip) in versions.items():
        if pseudo.is_pseudo_version(v):
            rev = v.rsplit("-", 1)[-1]
        else:
            try:
                rev = str(json.loads(info or b"{}").get("Short", ""))
            except (ValueError, AttributeError):
                rev = ""
        matches = rev and (rev.startswith(prefix) or prefix.startswith(rev))
        if matches and (best is None or semver.compare(best, v) < 0):
            best = v
    return best


def _checks(path: str, version: str) -> bool:
    try:
        modpath.check(path, version)
    except ValueError:
        return False
    return True


def _response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, headers={"Content-Type": reply.content_type})


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `event` fired first (the server is stopping)."""
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        return False
    return True


def _dropped(request: web.Request) -> web.Response:
    """Reset the connection and hand aiohttp a response it cannot send (it shrugs that off)."""
    _drop(request, reset=True)
    return web.Response(status=503)


def _drop(request: web.Request, reset: bool) -> None:
    """Close the connection under aiohttp: RST (SO_LINGER 0) or a clean FIN."""
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    else:
        transport.close()


async def _flushed(request: web.Request) -> None:
    """Wait until the kernel has everything we wrote, so a close cannot drop it."""
    transport = request.transport
    while transport is not None and not transport.is_closing() and transport.get_write_buffer_size():
        await asyncio.sleep(0.001)


async def _half_body(request: web.Request, reply: Reply, reset: bool) -> web.StreamResponse:
    resp = web.StreamResponse(status=reply.status, headers={"Content-Type": reply.content_type})
    resp.content_length = len(reply.body)
    await resp.prepare(request)
    await resp.write(reply.body[: len(reply.body) // 2])
    await _flushed(request)
    # Let the client read the headers and the half body before the connection dies,
    # so it sees a broken body rather than a failed request.
    await asyncio.sleep(0.05)
    _drop(request, reset=reset)
    # aiohttp's write_eof on the dead transport raises ConnectionError, which it
    # treats as "client went away": no error response, no log noise.
    return resp


async def _slow_body(
    request: web.Request, reply: Reply, rate: float, stopping: asyncio.Event | None
) -> web.StreamResponse:
    resp = web.StreamResponse(status=reply.status, headers={"Content-Type": reply.content_type})
    resp.content_length = len(reply.body)
    await resp.prepare(request)
    chunk = max(1, int(rate / 20))  # ~20 writes per second
    start = time.monotonic()
    sent = 0
    while sent < len(reply.body):
        piece = reply.body[sent : sent + chunk]
        await resp.write(piece)
        sent += len(piece)
        ahead = start + sent / rate - time.monotonic()
        if ahead > 0 and stopping is not None and await _wait(stopping, ahead):
            _drop(request, reset=True)
            return resp
        if ahead > 0 and stopping is None:
            await asyncio.sleep(ahead)
    await resp.write_eof()
    return resp


async def _chunked(
    request: web.Request, reply: Reply, kind: str, rate: float, stopping: asyncio.Event | None
) -> web.StreamResponse:
    resp = web.StreamResponse(status=reply.status, headers={"Content-Type": reply.content_type})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    body = reply.body if kind == "chunked" else reply.body[: len(reply.body) // 2]
    step = max(1, int(rate / 20)) if rate else 64 << 10
    start = time.monotonic()
    for i in range(0, len(body), step):
        await resp.write(body[i : i + step])
        ahead = start + (i + step) / rate - time.monotonic() if rate else 0.0
        if ahead > 0 and stopping is not None and await _wait(stopping, ahead):
            _drop(request, reset=True)
            return resp
    if kind == "chunked_cut":
        await _flushed(request)
        await asyncio.sleep(0.05)
        _drop(request, reset=False)  # FIN without the last chunk: the body is incomplete
        return resp
    await resp.write_eof()
    return resp


def modules_from_corpus(
    corpus: Iterable[CorpusVersion], workdir: Path | None = None
) -> dict[str, dict[str, VersionFiles]]:
    """path -> version -> (info, mod, zip) for every corpus version."""
    modules: dict[str, dict[str, VersionFiles]] = {}
    for cv in corpus:
        modules.setdefault(cv.path, {})[cv.version] = (cv.info, cv.mod, build_zip(cv, workdir))
    return modules


# --- script mode (benches) -------------------------------------------------------


async def _serve_forever(host: str, port: int, use_corpus: bool) -> None:
    from tests.corpus import load_corpus

    modules: dict[str, dict[str, VersionFiles]] = {}
    if use_corpus:
        with tempfile.TemporaryDirectory(prefix="fakeproxy-") as tmp:
            modules = modules_from_corpus(load_corpus(), Path(tmp))
    fp = FakeProxy(modules, host=host, port=port)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    async with fp.run():
        print(fp.url, flush=True)
        await done.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a fake GOPROXY until SIGTERM.")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks one)")
    parser.add_argument("--corpus", action="store_true", help="serve Go's test-module corpus")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    asyncio.run(_serve_forever(host or "127.0.0.1", int(port or 0), args.corpus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
