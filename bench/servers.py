"""The servers a bench runs: the node (real CLI), nginx, and the two upstreams.

All of them listen on 127.0.0.1 only. The node and nginx are the servers under
test and are pinned to the server CPUs; the upstreams run with the clients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.bigzip import BigModule
from bench.procs import Proc, Procs, free_port, status_kib

#: The node answers every list from its cache for the whole run (a cache-hit
#: bench must not turn into a revalidation bench when the default 5 m TTL ends),
#: and consults no checksum database: the default is sum.golang.org, which is
#: neither on loopback nor aware of the bench's modules.
NODE_ENV = {"MODMESH_META_TTL": "1h", "MODMESH_SUMDB": "off", "MODMESH_SUMDB_VERIFY": "off"}


@dataclass
class Server:
    proc: Proc
    url: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu(self) -> float:
        return self.proc.cpu()

    def peak_rss_kib(self) -> int:
        return status_kib(self.pid, "VmHWM")

    def rss_kib(self) -> int:
        return status_kib(self.pid, "VmRSS")


def start_node(
    procs: Procs,
    workdir: Path,
    name: str,
    upstream: str,
    cpus: Sequence[int] | None,
    data: Path | None = None,
    env_extra: dict[str, str] | None = None,
) -> Server:
    """`python -m node.cli serve` with a fresh (or reused) data dir under `workdir`,
    or `data` (another node's: nodes may share one)."""
    port = free_port()
    data = data or workdir / f"{name}-data"
    env = dict(os.environ, **NODE_ENV, **(env_extra or {}))
    argv = [
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
        "--log-level",
        "warning",
    ]
    proc = procs.add(Proc(name, argv, workdir / f"{name}.log", cpus=cpus, env=env))
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url, "/readyz", timeout=60)
    return Server(proc, url)


def start_corpus_upstream(procs: Procs, workdir: Path) -> Server:
    """tests/upstream_fixture.py serving Go's test corpus (as the e2e tests do)."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.upstream_fixture", "--listen", f"127.0.0.1:{port}", "--corpus"]
    proc = procs.add(Proc("corpus-upstream", argv, workdir / "corpus-upstream.log", stdout_pipe=True))
    url = proc.read_line(timeout=120)
    return Server(proc, url)


def start_big_upstream(procs: Procs, workdir: Path, name: str, modules: Sequence[BigModule], rate: float) -> Server:
    port = free_port()
    argv = [sys.executable, "-m", "bench.bigupstream", "--listen", f"127.0.0.1:{port}", "--rate", str(rate)]
    for m in modules:
        argv += ["--zip", f"{m.module}={m.zip_path}"]
    proc = procs.add(Proc(name, argv, workdir / f"{name}.log", stdout_pipe=True))
    url = proc.read_line(timeout=30)
    return Server(proc, url)


def start_ceiling(procs: Procs, workdir: Path, cpus: Sequence[int] | None) -> Server:
    """bench/ceiling.py: the smallest aiohttp app, pinned like the node."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.ceiling", "--listen", f"127.0.0.1:{port}"]
    proc = procs.add(Proc("aiohttp-ceiling", argv, workdir / "ceiling.log", cpus=cpus, stdout_pipe=True))
    return Server(proc, proc.read_line(timeout=30))


# --- nginx ------------------------------------------------------------------------------

_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    types {{
        application/json info;
        text/plain mod;
        application/zip zip;
    }}
    default_type text/plain;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{
            try_files $uri =404;
        }}
    }}
}}
"""


def nginx_version(nginx: str) -> str:
    out = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def start_nginx(
    procs: Procs, nginx: str, workdir: Path, name: str, root: Path, workers: int, cpus: Sequence[int] | None
) -> Server:
    """nginx serving `root` as a static GOPROXY tree; master and workers pinned to `cpus`."""
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = d / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(workers=workers, dir=d, port=port, root=root))
    # As root, workers run as "nobody": they must be able to read the tree.
    _make_world_readable(root)
    argv = [nginx, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")]
    proc = procs.add(Proc(name, argv, d / "stderr.log", cpus=cpus))
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url, "/", timeout=30, want=404)
    return Server(proc, url)


def _make_world_readable(root: Path) -> None:
    """The tree and its directories; the bench's temp dir itself is made 0755 when created."""
    os.chmod(root, 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for dn in dirnames:
            os.chmod(os.path.join(dirpath, dn), 0o755)
        for fn in filenames:
            os.chmod(os.path.join(dirpath, fn), 0o644)
