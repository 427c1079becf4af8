"""Starting, watching and stopping the processes a bench needs.

Everything is a subprocess we can measure from the outside: CPU time (utime +
stime, all threads) and peak RSS (VmHWM) come from /proc, so the node and
nginx are measured the same way. Servers are pinned to the server CPUs with
taskset, get SIGTERM if this script dies (PR_SET_PDEATHSIG), run in their own
process group (a Ctrl-C reaches only us; we stop them in order), and every wait
has a deadline.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import http.client
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1
T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child_setup() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# --- /proc -----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads, live and exited), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid: int, key: str) -> int:
    """A `kB` field of /proc/<pid>/status, e.g. VmHWM (peak RSS) or VmRSS."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (nginx: master and workers)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in descendants(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass  # exited between the listing and the read
    return total


# --- processes -------------------------------------------------------------------


class Proc:
    """One long-running child: started pinned, stopped by its own pid/group only."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cpus: Sequence[int] | None = None,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.stop_signal = stop_signal
        cmd = list(argv)
        if cpus:
            cmd = ["taskset", "-c", ",".join(map(str, cpus)), *cmd]
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop(), it outlives this call
        self.popen = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log,
            start_new_session=True,
            preexec_fn=_child_setup,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> float:
        """CPU seconds of the process and its children (nginx workers)."""
        return tree_cpu_seconds(self.pid)

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def read_line(self, timeout: float) -> str:
        """The first stdout line (servers print their URL once they listen)."""
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name} printed nothing in {timeout:.0f}s:\n{self.log_tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                data = os.read(fd, 4096)
                if not data:
                    self.check_alive()
                    raise RuntimeError(f"{self.name} closed stdout:\n{self.log_tail()}")
                buf += data
            else:
                self.check_alive()
        return buf.split(b"\n", 1)[0].decode().strip()

    def wait_http(self, url: str, path: str, timeout: float = 30.0, want: int = 200) -> None:
        """Poll until GET `path` answers `want` (or the process dies, or time runs out)."""
        host, port = url.removeprefix("http://").rsplit(":", 1)
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=2)
                try:
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status == want:
                        return
                    last = resp.status
                finally:
                    conn.close()
            except OSError as e:
                last = e
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready at {url}{path} after {timeout:.0f}s ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, self.stop_signal)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        # Whatever is left in its group (nginx workers, a wedged server) gets SIGKILL.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log.close()


class Procs:
    """Everything a run started, stopped in reverse order."""

    def __init__(self) -> None:
        self._procs: list[Proc] = []

    def add(self, proc: Proc) -> Proc:
        self._procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        while self._procs:
            self._procs.pop().stop()


# --- tools -------------------------------------------------------------------------


def find_tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin", "/usr/bin") if (p := Path(d) / name).exists()), None
    )


def ensure_packages(tools: dict[str, str]) -> None:
    """Install the Debian packages of missing tools ({tool: package}) with apt-get.

    A temporary policy-rc.d keeps the package's service from starting: a bench
    must not leave a web server listening on port 80 of every interface.
    """
    missing = sorted({pkg for tool, pkg in tools.items() if find_tool(tool) is None})
    if not missing:
        return
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise RuntimeError(f"missing {', '.join(missing)}: install them (apt-get install {' '.join(missing)})")
    print(f"  installing {', '.join(missing)} with apt-get ...", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    policy = Path("/usr/sbin/policy-rc.d")
    created = False
    try:
        try:
            with open(policy, "x") as f:
                f.write("#!/bin/sh\n# temporary, from modmesh bench: do not start services\nexit 101\n")
            os.chmod(policy, 0o755)
            created = True
        except FileExistsError:
            pass
        subprocess.run([apt, "update", "-q"], env=env, check=True, timeout=600, stdout=subprocess.DEVNULL)
        subprocess.run(
            [apt, "install", "-y", "-q", "--no-install-recommends", *missing],
            env=env,
            check=True,
            timeout=1200,
            stdout=subprocess.DEVNULL,
        )
    finally:
        if created:
            try:
                policy.unlink()
            except OSError as e:
                if e.errno != errno.ENOENT:
                    print(f"  warning: could not remove {policy}: {e}", file=sys.stderr)
    still = [tool for tool in tools if find_tool(tool) is None]
    if still:
        raise RuntimeError(f"still missing after apt-get install: {', '.join(still)}")


# --- other load on the machine --------------------------------------------------------


def _cpu_seconds_all() -> tuple[float, float]:
    """(user + nice + system, steal) CPU seconds over all CPUs since boot."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    busy = int(fields[1]) + int(fields[2]) + int(fields[3])
    steal = int(fields[8]) if len(fields) > 8 else 0
    return busy / CLK_TCK, steal / CLK_TCK


def _our_seconds() -> float:
    t = os.times()
    return tree_cpu_seconds(os.getpid()) + t.children_user + t.children_system


class Foreign:
    """How much CPU everything else took while a block ran.

    Benches on a shared machine are noisy; this makes the noise visible:
    `cores` is the CPU seconds per second that other processes (not this script
    or its children) used plus what the hypervisor stole from our vCPUs.
    """

    cores: float = 0.0
    steal: float = 0.0

    def __enter__(self) -> Foreign:
        self._t, self._ours = time.monotonic(), _our_seconds()
        self._busy, self._steal = _cpu_seconds_all()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = max(time.monotonic() - self._t, 1e-9)
        busy, steal = _cpu_seconds_all()
        other = (busy - self._busy) - (_our_seconds() - self._ours)
        self.steal = max(0.0, (steal - self._steal) / wall)
        self.cores = max(0.0, other / wall) + self.steal


#: Other load (cores) above which a measurement counts as disturbed.
NOISE_CORES = 0.10


class QuietGate:
    """Measure again when other processes disturbed a measurement, within a time budget.

    `measure()` returns (result, other_cores) for its own timed window. A result
    taken while others used more than `threshold` cores is retried after waiting
    (boundedly) for the machine to calm down, at most `retries` times and only
    while the run's retry budget lasts; the last attempt is kept either way, and
    its other_cores is reported with it.
    """

    def __init__(
        self, log: Callable[[str], None], threshold: float = NOISE_CORES, retries: int = 3, budget: float = 120.0
    ) -> None:
        self.log = log
        self.threshold = threshold
        self.retries = retries
        self.budget = budget
        self.spent = 0.0
        self.retried = 0

    def run(self, measure: Callable[[], tuple[T, float]]) -> tuple[T, float]:
        for attempt in range(self.retries + 1):
            t0 = time.monotonic()
            result, other = measure()
            if other <= self.threshold or attempt == self.retries or self.spent >= self.budget:
                return result, other
            self.log(f"      (other load {other:.2f} cores: waiting for quiet, measuring again)")
            self._wait_quiet(min(15.0, self.budget - self.spent))
            self.spent += time.monotonic() - t0
            self.retried += 1
        raise AssertionError("unreachable")

    def _wait_quiet(self, limit: float) -> None:
        deadline = time.monotonic() + max(0.0, limit)
        while time.monotonic() < deadline:
            with Foreign() as f:
                time.sleep(0.5)
            if f.cores <= self.threshold:
                return


# --- network isolation ------------------------------------------------------------------

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def isolate_network() -> str:
    """Move this process, and so everything it starts, into a new network namespace
    that has nothing but loopback: no component can reach beyond 127.0.0.0/8, whatever
    its defaults. Call before starting threads or children. Returns a description."""
    if os.geteuid() != 0:
        return "host network namespace (not root, cannot unshare); loopback addresses only"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        return f"host network namespace (unshare: {os.strerror(err)}); loopback addresses only"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack("16sH14x", b"lo", 0))
        flags = struct.unpack_from("16sH", ifr)[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
    return "own network namespace with only loopback (nothing can reach another address)"
