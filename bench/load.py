"""Clients: a plain HTTP/1.1 GET that times and hashes a download, and wrk.

The downloader is http.client reading into one reusable 1 MiB buffer, so the
client costs little CPU and no memory. Load for requests/s and MB/s comes from
wrk (C, one thread, keep-alive) with a Lua script that cycles through a list of
paths and prints its summary as one JSON line we parse.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

_BUF = 1 << 20


@dataclass(frozen=True)
class Fetched:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Downloaded:
    status: int
    headers: dict[str, str]
    size: int
    sha256: str
    ttfb: float  # seconds from sending the request to the response headers
    seconds: float  # ... to the last body byte


def _conn(base: str, timeout: float) -> http.client.HTTPConnection:
    u = urlsplit(base)
    if u.hostname is None or not (u.hostname == "localhost" or u.hostname.startswith("127.")):
        raise ValueError(f"bench clients talk to loopback only, not {base}")
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def fetch(base: str, path: str, timeout: float = 120.0) -> Fetched:
    conn = _conn(base, timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        return Fetched(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


def download(base: str, path: str, timeout: float = 120.0, hash_body: bool = True) -> Downloaded:
    """GET `path`, discarding the body as it arrives (optionally hashing it), and time it.

    `timeout` bounds every socket operation and the whole transfer."""
    buf = bytearray(_BUF)
    view = memoryview(buf)
    h = hashlib.sha256()
    conn = _conn(base, timeout)
    try:
        t0 = time.perf_counter()
        conn.request("GET", path)
        resp = conn.getresponse()
        ttfb = time.perf_counter() - t0
        size = 0
        while n := resp.readinto(buf):
            if hash_body:
                h.update(view[:n])
            size += n
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"GET {path} took longer than {timeout:.0f} s")
        seconds = time.perf_counter() - t0
        return Downloaded(
            resp.status,
            {k.lower(): v for k, v in resp.getheaders()},
            size,
            h.hexdigest() if hash_body else "",
            ttfb,
            seconds,
        )
    finally:
        conn.close()


# --- wrk ------------------------------------------------------------------------------

_LUA = r"""
local reqs = {}
local n = 0
init = function(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do
    if #line > 0 then table.insert(reqs, wrk.format("GET", line)) end
  end
  f:close()
end
request = function()
  n = n + 1
  if n > #reqs then n = 1 end
  return reqs[n]
end
done = function(s, lat, req)
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    s.requests, s.duration, s.bytes, s.errors.connect, s.errors.read, s.errors.write,
    s.errors.status, s.errors.timeout, lat:percentile(50), lat:percentile(99), lat.max, lat.mean))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu: float  # CPU seconds wrk itself used

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def run_wrk(
    wrk: str,
    base: str,
    paths: Sequence[str],
    workdir: Path,
    seconds: float,
    connections: int,
    request_timeout: float = 10.0,
) -> WrkResult:
    """One wrk run (one thread) cycling through `paths` on keep-alive connections."""
    script = workdir / "bench.lua"
    script.write_text(_LUA)
    plist = workdir / f"paths-{abs(hash(tuple(paths))):x}.txt"
    plist.write_text("".join(p + "\n" for p in paths))
    argv = [
        wrk,
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(request_timeout))}s",
        "-s",
        str(script),
        base + paths[0],
        "--",
        str(plist),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + request_timeout + 30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    d = json.loads(line.removeprefix("WRKJSON "))
    return WrkResult(
        requests=d["requests"],
        seconds=d["duration_us"] / 1e6,
        bytes=d["bytes"],
        errors={k: d[k] for k in ("connect", "read", "write", "status", "timeout")},
        p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        max_ms=d["max_us"] / 1000,
        client_cpu=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )


# --- big bodies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamResult:
    seconds: float
    bytes: int
    requests: int  # completed
    latencies: list[float]
    client_cpu: float

    @property
    def bytes_per_s(self) -> float:
        return self.bytes / self.seconds


def _stream_worker(
    host: str, port: int, path: str, deadline: float, out: list[tuple[int, int, list[float]]], errors: list[str]
) -> None:
    buf = bytearray(_BUF)
    view = memoryview(buf)
    req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    total = done = 0
    lat: list[float] = []
    try:
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                sock.sendall(req)
                head = b""
                while b"\r\n\r\n" not in head:
                    n = sock.recv_into(buf)
                    if not n:
                        raise ConnectionError("closed before the headers")
                    head += view[:n]
                header, _, rest = head.partition(b"\r\n\r\n")
                status = int(header.split(b" ", 2)[1])
                length = next(
                    (
                        int(line.split(b":", 1)[1])
                        for line in header.split(b"\r\n")[1:]
                        if line.lower().startswith(b"content-length:")
                    ),
                    None,
                )
                if status != 200 or length is None:
                    raise ConnectionError(f"status {status}, content-length {length}")
                got = len(rest)
                total += got
                while got < length:
                    if time.monotonic() >= deadline:
                        break
                    n = sock.recv_into(view[: min(_BUF, length - got)])
                    if not n:
                        raise ConnectionError("closed mid-body")
                    got += n
                    total += n
                else:
                    done += 1
                    lat.append(time.perf_counter() - t0)
    except (OSError, ValueError) as e:
        errors.append(f"{type(e).__name__}: {e}")
    out.append((total, done, lat))


def stream_load(base: str, path: str, connections: int, seconds: float) -> StreamResult:
    """Repeated GETs of one big file on `connections` keep-alive connections for `seconds`.

    Counts every body byte received inside the window (a transfer cut off at the
    end counts for what arrived), reading into 1 MiB buffers so the client stays
    cheap. Each connection is a thread: recv_into releases the GIL.
    """
    u = urlsplit(base)
    assert u.hostname is not None and u.hostname.startswith("127.")
    out: list[tuple[int, int, list[float]]] = []
    errors: list[str] = []
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    deadline = start + seconds
    threads = [
        threading.Thread(
            target=_stream_worker, args=(u.hostname, u.port or 80, path, deadline, out, errors), daemon=True
        )
        for _ in range(connections)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.monotonic() - start
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    if errors or len(out) != connections:
        raise RuntimeError(f"stream load failed: {errors[:3] or 'a connection hung'}")
    return StreamResult(
        seconds=elapsed,
        bytes=sum(o[0] for o in out),
        requests=sum(o[1] for o in out),
        latencies=[x for o in out for x in o[2]],
        client_cpu=(c1.ru_utime + c1.ru_stime) - (c0.ru_utime + c0.ru_stime),
    )
