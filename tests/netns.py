"""Network-namespace lab: N isolated hosts on one private Ethernet segment, for tests
that need real multicast (mDNS) between real processes.

Topology, all of it outside the test process's own namespace:

    mmtest-<pid>-<seq>-hub     a bridge `br0` (no STP delay, no multicast snooping)
      v0 ... v<N-1>            one veth end per host, enslaved to br0
    mmtest-<pid>-<seq>-<i>     lo up, `mm0` (the other veth end) with 10.77.0.<i+1>/24,
                               and a 224.0.0.0/4 route on mm0 so multicast has a way out

Nothing is added to the host's namespace, so the host's interfaces, routes and
multicast groups are untouched and no packet of ours can leave the machine: the
addresses are reachable only from inside the lab, which is why HTTP probes run as a
subprocess in a namespace (`Prober`) rather than from the test process.

Processes run through `ip netns exec` (which execs, so the pid we hold is the
program's own) with a parent-death signal, so they die with the test process even if
it is killed. Teardown, which runs on every exit path (`async with`, and atexit as a
backstop): SIGTERM then SIGKILL our processes, SIGKILL whatever else is still inside
our namespaces (only things we started can be there), delete the namespaces (which
destroys the veths and the bridge with them). Namespaces left by a test run that was
SIGKILLed (whose processes died with it) are recognised by the dead pid in their
name and deleted on the next run.

When namespaces cannot be used (not root, no `ip`, the kernel or a container
refusing), `lab()` skips the test with the reason; set MODMESH_REQUIRE_NETNS=1 in CI
to make that a failure instead.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import ctypes
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "mmtest"
IFACE = "mm0"
_seq = itertools.count()
_live: weakref.WeakSet[Lab] = weakref.WeakSet()
_PR_SET_PDEATHSIG = 1


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be used here; the message says why."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and res.returncode != 0:
        raise NetnsUnavailable(f"`ip {' '.join(args)}` failed: {res.stderr.strip() or res.returncode}")
    return res


def unavailable_reason() -> str | None:
    """Why this machine cannot run netns tests, or None if it probably can."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespace tests need root (CI runs them as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _clean_env() -> dict[str, str]:
    """The environment for lab processes: no HTTP proxy may catch lab-internal URLs."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the test process dies (survives exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_leftovers(name: str) -> None:
    """SIGKILL every process still inside namespace `name` (ours: it is a private namespace)."""
    res = _ip("netns", "pids", name, check=False)
    for tok in res.stdout.split():
        if tok.isdigit() and int(tok) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(tok), signal.SIGKILL)


def remove_stale() -> None:
    """Delete namespaces of earlier test runs whose process no longer exists."""
    res = _ip("netns", "list", check=False)
    for line in res.stdout.splitlines():
        name = line.split(" ", 1)[0]
        m = re.fullmatch(rf"{PREFIX}-(\d+)-.+", name)
        if m and not _pid_alive(int(m[1])):
            # Its processes died with their parent (parent-death signal); only the
            # name is left, and deleting it frees the namespace and its veths.
            _ip("netns", "del", name, check=False)


@dataclass(frozen=True)
class Response:
    status: int  # 0: no HTTP answer (connection refused, timeout); see `error`
    headers: dict[str, str]
    body: bytes
    error: str = ""

    def json(self) -> Any:
        return json.loads(self.body)


_PROBE_SRC = r"""
import base64, json, sys, urllib.error, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for line in sys.stdin:
    q = json.loads(line)
    out = {"status": 0, "headers": {}, "body": "", "error": ""}
    try:
        r = opener.open(urllib.request.Request(q["url"], headers=q["headers"]), timeout=q["timeout"])
        out.update(status=r.status, headers=dict(r.headers), body=base64.b64encode(r.read()).decode())
    except urllib.error.HTTPError as e:
        out.update(status=e.code, headers=dict(e.headers), body=base64.b64encode(e.read()).decode())
    except Exception as e:
        out["error"] = repr(e)
    print(json.dumps(out), flush=True)
"""


class Prober:
    """An HTTP client living inside a namespace: one long-lived Python process
    answering one request per line, so polling costs no interpreter start-up."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._lock = asyncio.Lock()

    async def get(self, url: str, headers: dict[str, str] | None = None, timeout: float = 10.0) -> Response:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        async with self._lock:
            q = {"url": url, "headers": headers or {}, "timeout": timeout}
            self._proc.stdin.write(json.dumps(q).encode() + b"\n")
            await self._proc.stdin.drain()
            line = await asyncio.wait_for(self._proc.stdout.readline(), timeout + 5)
        if not line:
            raise RuntimeError(f"prober exited (rc {self._proc.returncode})")
        d = json.loads(line)
        return Response(d["status"], d["headers"], base64.b64decode(d["body"]), d["error"])

    async def aclose(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), 5)


@dataclass(eq=False)
class Netns:
    """One host of the lab."""

    lab: Lab
    name: str
    address: str
    prefix: int
    iface: str = IFACE

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    async def spawn(
        self,
        *cmd: str,
        log: Path | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> asyncio.subprocess.Process:
        """Start `cmd` inside this namespace; the lab stops it at teardown.

        With `log`, stdout and stderr go to that file (pipes nobody reads would fill up);
        otherwise stdout is a pipe and stderr is inherited."""
        out: Any = stdout if stdout is not None else asyncio.subprocess.PIPE
        err: Any = None
        fh: IO[bytes] | None = None
        if log is not None:
            fh = open(log, "ab")  # noqa: SIM115 - the child keeps its own descriptor
            out, err = fh, subprocess.STDOUT
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv(*cmd),
                stdin=stdin,
                stdout=out,
                stderr=err,
                cwd=ROOT,
                env={**_clean_env(), **(env or {})},
                preexec_fn=_die_with_parent,
            )
        finally:
            if fh is not None:
                fh.close()
        self.lab.processes.append(proc)
        return proc

    async def run(self, *cmd: str, timeout: float = 20.0) -> tuple[int, str, str]:
        """Run `cmd` to completion inside this namespace: (returncode, stdout, stderr)."""
        proc = await asyncio.create_subprocess_exec(
            *self.argv(*cmd),
            stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
            env=_clean_env(),
            preexec_fn=_die_with_parent,
        )
        self.lab.processes.append(proc)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def prober(self) -> Prober:
        proc = await self.spawn(sys.executable, "-I", "-u", "-c", _PROBE_SRC, stdin=asyncio.subprocess.PIPE)
        p = Prober(proc)
        self.lab.probers.append(p)
        return p


@dataclass(eq=False)  # identity semantics: labs live in a WeakSet
class Lab:
    """N namespaces on one bridge; `async with Lab(3) as lab: lab.hosts[0]...`."""

    count: int
    subnet: str = "10.77.0.0/24"
    hosts: list[Netns] = field(default_factory=list)
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    probers: list[Prober] = field(default_factory=list)
    _created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tag = f"{PREFIX}-{os.getpid()}-{next(_seq)}"
        self.hub = f"{self.tag}-hub"

    def create(self) -> None:
        """Build the topology; on any failure delete what was made and raise NetnsUnavailable."""
        reason = unavailable_reason()
        if reason is not None:
            raise NetnsUnavailable(reason)
        _live.add(self)
        net = ipaddress.IPv4Network(self.subnet)
        addrs = list(itertools.islice(net.hosts(), self.count))
        try:
            remove_stale()
            self._add_netns(self.hub)
            _ip(
                "-n",
                self.hub,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            )
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for i, addr in enumerate(addrs):
                name = f"{self.tag}-{i}"
                self._add_netns(name)
                _ip("-n", name, "link", "set", "lo", "up")
                _ip("-n", self.hub, "link", "add", f"v{i}", "type", "veth", "peer", "name", IFACE, "netns", name)
                _ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0")
                _ip("-n", self.hub, "link", "set", f"v{i}", "up")
                _ip("-n", name, "addr", "add", f"{addr}/{net.prefixlen}", "dev", IFACE)
                _ip("-n", name, "link", "set", IFACE, "up")
                _ip("-n", name, "route", "add", "224.0.0.0/4", "dev", IFACE)
                self.hosts.append(Netns(self, name, str(addr), net.prefixlen))
        except BaseException:
            self.destroy()
            raise

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)

    async def aclose(self) -> None:
        """Stop our processes (SIGTERM, then SIGKILL after 5 s), then destroy()."""
        try:
            for p in self.probers:
                with contextlib.suppress(Exception):
                    await p.aclose()
            await asyncio.gather(*(_stop(p) for p in self.processes), return_exceptions=True)
        finally:
            self.destroy()

    def destroy(self) -> None:
        """Synchronous last resort, safe to call twice: kill and delete everything."""
        for p in self.processes:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        for name in reversed(self._created):
            _kill_leftovers(name)
            _ip("netns", "del", name, check=False)
        self._created.clear()
        _live.discard(self)

    def existing(self) -> list[str]:
        """Our namespaces that still exist (teardown tests expect none)."""
        listed = {ln.split(" ", 1)[0] for ln in _ip("netns", "list", check=False).stdout.splitlines()}
        return sorted(n for n in listed if n.startswith(self.tag + "-"))

    async def __aenter__(self) -> Lab:
        self.create()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _stop(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
            return
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await proc.wait()


@atexit.register
def _destroy_all() -> None:
    for lab in list(_live):
        lab.destroy()


@contextlib.asynccontextmanager
async def lab(count: int, subnet: str = "10.77.0.0/24") -> AsyncIterator[Lab]:
    """A Lab for a test, or a skip saying why namespaces are unavailable here."""
    lb = Lab(count, subnet)
    try:
        lb.create()
    except NetnsUnavailable as e:
        if os.environ.get("MODMESH_REQUIRE_NETNS") == "1":
            pytest.fail(f"MODMESH_REQUIRE_NETNS=1 but: {e}")
        pytest.skip(str(e))
    try:
        yield lb
    finally:
        await lb.aclose()


async def read_json_lines(
    stream: asyncio.StreamReader, until: Callable[[dict[str, Any]], bool], timeout: float
) -> list[dict[str, Any]]:
    """Read JSON lines until one satisfies `until` (returned last), or TimeoutError."""
    seen: list[dict[str, Any]] = []

    async def go() -> list[dict[str, Any]]:
        while True:
            line = await stream.readline()
            if not line:
                raise EOFError(f"stream ended; got {seen}")
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                seen.append(obj)
                if until(obj):
                    return seen

    try:
        return await asyncio.wait_for(go(), timeout)
    except TimeoutError:
        raise TimeoutError(f"no matching line within {timeout}s; got {seen}") from None


async def poll(check: Callable[[], Any], timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """Await `check()` (an async callable) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if loop.time() >= deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s (last: {last!r})")
        await asyncio.sleep(interval)


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log file, for assertion messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"<{e}>"


__all__: Sequence[str] = [
    "IFACE",
    "Lab",
    "Netns",
    "NetnsUnavailable",
    "Prober",
    "Response",
    "lab",
    "poll",
    "read_json_lines",
    "remove_stale",
    "tail",
    "unavailable_reason",
]
