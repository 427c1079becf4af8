"""The client side of `modmesh doctor`: the go command's settings, judged.

`Check` is doctor's vocabulary: one named observation, ok / info / warn / fail,
with a one-line detail a person can act on and a stable `code` for tooling.

The settings are read the way the go command resolves them (`go env -json`, run
with GOTOOLCHAIN=local so looking never downloads a toolchain); every check is
a pure function of them (and of what the node said about itself), so the
classic pitfalls are unit-tested one by one: GOPROXY without a scheme, `off`,
missing the node, `|` fallback hiding failures; GOPRIVATE / GONOPROXY /
GONOSUMDB disagreeing with each other or with the node; GOSUMDB off or bypassing
the node; credentials go will not send; GOFLAGS=-insecure; GOTOOLCHAIN.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from node.cache.upstream import redact
from node.golang import semver
from node.golang.patterns import match_prefix_patterns

Status = Literal["ok", "info", "warn", "fail"]
RANK: dict[str, int] = {"ok": 0, "info": 0, "warn": 1, "fail": 2}
GO_DEFAULT_PROXY = "https://proxy.golang.org,direct"
GO_VARS = (
    "GOPROXY",
    "GONOPROXY",
    "GOPRIVATE",
    "GONOSUMDB",
    "GOSUMDB",
    "GOFLAGS",
    "GOINSECURE",
    "GOAUTH",
    "GOENV",
    "GOROOT",
    "GOVERSION",
    "GOOS",
    "GOARCH",
)
#: Well-known public modules: patterns that match them are not "private" patterns.
PUBLIC_SAMPLES = (
    "github.com/spf13/cobra",
    "golang.org/x/mod",
    "google.golang.org/grpc",
    "gopkg.in/yaml.v3",
    "go.uber.org/zap",
    "rsc.io/quote",
)


@dataclass(frozen=True)
class Check:
    section: str  # client, node, upstream, sumdb, consistency
    name: str  # what was checked: "GOPROXY", "upstream https://proxy.golang.org", ...
    status: Status
    detail: str  # one line a person can act on
    code: str = ""  # stable id of the problem ("empty-200", "list-lags"), for tooling

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Check:
        status = str(d.get("status", "fail"))
        return cls(
            str(d.get("section", "node")),
            str(d.get("name", "?")),
            cast(Status, status if status in RANK else "fail"),
            str(d.get("detail", "")),
            str(d.get("code", "")),
        )


def worst(checks: Sequence[Check]) -> Status:
    if any(c.status == "fail" for c in checks):
        return "fail"
    return "warn" if any(c.status == "warn" for c in checks) else "ok"


# ---- the client's go environment -----------------------------------------------------------


@dataclass(frozen=True)
class GoEnv:
    values: Mapping[str, str]  # GO* settings as the go command resolves them
    source: str  # where they came from, for the report
    error: str | None = None  # why `go env` could not be used


def env_file_value(text: str, key: str) -> str | None:
    """A key from a go env file (GOENV, $GOROOT/go.env): KEY=VALUE lines, # comments."""
    for line in text.splitlines():
        k, eq, v = line.strip().partition("=")
        if eq and k.strip() == key and not k.startswith("#"):
            return v.strip()
    return None


def _read(path: str | None) -> str:
    if not path or path == "off":
        return ""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def with_go_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """What go would report without a go command to ask (empty counts as unset)."""
    v = {k: environ.get(k, "") for k in GO_VARS}
    v["GOPROXY"] = v["GOPROXY"] or GO_DEFAULT_PROXY
    v["GOSUMDB"] = v["GOSUMDB"] or "sum.golang.org"
    v["GONOPROXY"] = v["GONOPROXY"] or v["GOPRIVATE"]
    v["GONOSUMDB"] = v["GONOSUMDB"] or v["GOPRIVATE"]
    v["GOTOOLCHAIN"] = environ.get("GOTOOLCHAIN") or "auto"
    return v


async def read_go_env(environ: Mapping[str, str], go: str | None, timeout: float = 30.0) -> GoEnv:
    """`go env -json` under the caller's environment, without switching toolchains.

    GOTOOLCHAIN=go1.99 would make `go env` itself download a toolchain, so it runs
    with GOTOOLCHAIN=local and the real value is resolved as go does: the
    environment, then the GOENV file, then $GOROOT/go.env.
    """
    if go is None:
        return GoEnv(with_go_defaults(environ), "environment (go command not found)")
    try:
        proc = await asyncio.create_subprocess_exec(
            go,
            "env",
            "-json",
            *GO_VARS,
            env={**environ, "GOTOOLCHAIN": "local"},
            cwd=tempfile.gettempdir(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise OSError("go env timed out") from None
        if proc.returncode != 0:
            raise OSError(err.decode("utf-8", "replace").strip().splitlines()[0] if err.strip() else "go env failed")
        values = {k: str(v) for k, v in json.loads(out).items()}
    except (OSError, ValueError) as e:
        return GoEnv(with_go_defaults(environ), "environment (go env failed)", str(e))
    values["GOTOOLCHAIN"] = (
        environ.get("GOTOOLCHAIN")
        or env_file_value(_read(values.get("GOENV")), "GOTOOLCHAIN")
        or env_file_value(_read(os.path.join(values.get("GOROOT", ""), "go.env")), "GOTOOLCHAIN")
        or "auto"
    )
    return GoEnv(values, f"go env ({values.get('GOVERSION', 'go')})")


# ---- GOPROXY -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProxyEntry:
    raw: str
    url: str  # as go uses it: https:// added to a bare host; "off" and "direct" as is
    sep: str  # the separator after it: "," (404/410 only), "|" (any error), "" (last)
    problem: str | None = None  # why go refuses it (and with it every lookup)
    prefixed: bool = False  # go added "https://"


def parse_client_goproxy(value: str) -> tuple[list[ProxyEntry], list[str]]:
    """GOPROXY as modfetch/proxy.go reads it; returns (entries, ignored entries)."""
    entries: list[ProxyEntry] = []
    rest = value
    while rest:
        cut = min((i for i in (rest.find(","), rest.find("|")) if i >= 0), default=-1)
        item, sep, rest = (rest, "", "") if cut < 0 else (rest[:cut], rest[cut], rest[cut + 1 :])
        item = item.strip()
        if not item:
            continue
        if item in ("off", "direct"):
            entries.append(ProxyEntry(item, item, sep))
            ignored = [i.strip() for i in rest.replace("|", ",").split(",") if i.strip()]
            return entries, ignored
        url, prefixed = item, False
        if any(c in item for c in ".:") and ":/" not in item and not item.startswith("/"):
            url, prefixed = "https://" + item, True
        entries.append(ProxyEntry(item, url, sep, _url_problem(url), prefixed))
    return entries, []


def redact_list(value: str) -> str:
    """A GOPROXY-style list with credentials masked in every entry, for reports."""
    return "".join(p if p in ",|" else redact(p) for p in re.split(r"([,|])", value))


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme:
        return "invalid proxy URL missing scheme (write http:// or https://)"
    if parts.scheme not in ("http", "https", "file"):
        return "invalid proxy URL scheme (must be https, http, file)"
    if parts.scheme == "http" and (parts.username or parts.password):
        return "refusing to pass credentials to insecure URL"
    return None


_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _address(url: str) -> tuple[str, str, int, str]:
    p = urlsplit(url)
    host = (p.hostname or "").lower()
    host = "127.0.0.1" if host in _LOOPBACK or host.startswith("127.") else host
    try:
        port = p.port or (443 if p.scheme == "https" else 80)
    except ValueError:
        port = -1
    return p.scheme, host, port, p.path.rstrip("/")


def match_node(entries: Sequence[ProxyEntry], node: str) -> tuple[int, bool] | None:
    """(index, same scheme) of the entry that names the node's address, if any."""
    scheme, host, port, path = _address(node)
    for i, e in enumerate(entries):
        if e.url in ("off", "direct") or e.problem:
            continue
        s, h, p, pa = _address(e.url)
        if (h, p, pa) == (host, port, path) or (host == "0.0.0.0" and (p, pa) == (port, path)):
            return i, s == scheme
    return None


def goproxy_checks(value: str, node: str | None, found: tuple[int, bool] | None) -> list[Check]:
    """What GOPROXY does to a client that should go through the node."""

    def chk(status: Status, detail: str, code: str = "") -> Check:
        return Check("client", "GOPROXY", status, detail, code)

    entries, ignored = parse_client_goproxy(value)
    out: list[Check] = []
    if not entries:
        return [chk("fail", f"GOPROXY={value!r} contains no entries: every module lookup fails", "goproxy-no-entries")]
    bad = next((e for e in entries if e.problem), None)
    if bad is not None:
        return [chk("fail", f"entry {bad.raw!r}: {bad.problem}; go refuses the whole list", "goproxy-invalid")]
    if entries[0].url == "off":
        return [chk("fail", "GOPROXY=off: module lookup disabled, every download fails", "goproxy-off")]
    if ignored:
        out.append(
            chk(
                "warn",
                f"entries after {entries[-1].url!r} are never used: {', '.join(ignored)}",
                "goproxy-ignored-entries",
            )
        )
    if node is None:
        return out
    if found is not None and not found[1]:
        e = entries[found[0]]
        scheme = urlsplit(node).scheme
        how = (
            f"entry {e.raw!r} has no scheme, so go uses {e.url}"
            if e.prefixed
            else f"entry {e.raw!r} uses {urlsplit(e.url).scheme}"
        )
        fails = "fails the TLS handshake" if scheme == "http" else "fails"
        return out + [
            chk(
                "fail",
                f"{how}, but the node speaks {scheme}: every request {fails}; write {node}",
                "goproxy-no-scheme" if e.prefixed else "goproxy-scheme",
            )
        ]
    if found is None:
        default = " (go's default: GOPROXY is unset)" if value == GO_DEFAULT_PROXY else ""
        return out + [
            chk(
                "fail",
                f"GOPROXY={value}{default} never reaches the node {node}: export GOPROXY={node}",
                "goproxy-misses-node",
            )
        ]
    i = found[0]
    if i > 0:
        first = ", ".join(e.url for e in entries[:i])
        out.append(
            chk(
                "warn",
                f"{first} answers before the node; the node is asked only when "
                f"{'it fails' if entries[i - 1].sep == '|' else 'it answers 404/410'}",
                "goproxy-node-not-first",
            )
        )
    after, sep = entries[i + 1 :], entries[i].sep
    if not after:
        out.append(chk("ok", "reaches the node; no fallback: what the node cannot serve fails the build"))
    elif sep == ",":
        out.append(
            chk(
                "ok",
                f"reaches the node; ',{after[0].url}': go falls back only when the node answers "
                "404/410, never on a node failure (502/504)",
            )
        )
    else:
        out.append(
            chk(
                "warn",
                f"'|{after[0].url}' after the node: any node error (an outage, a checksum mismatch) "
                f"silently falls through to {after[0].url}; use ',' to see failures",
                "goproxy-pipe-fallback",
            )
        )
    return out


# ---- private modules, checksum database, credentials, GOFLAGS, GOTOOLCHAIN -----------------


def _patterns(value: str) -> list[str]:
    return [p.strip().rstrip("/") for p in value.split(",") if p.strip().rstrip("/")]


def _covers(patterns: str, pattern: str) -> bool:
    return pattern in _patterns(patterns) or match_prefix_patterns(patterns, pattern)


def private_checks(v: Mapping[str, str], node_private: str | None, through_node: bool) -> list[Check]:
    """GOPRIVATE / GONOPROXY / GONOSUMDB: agreeing with each other and with the node."""
    out: list[Check] = []
    priv, noproxy, nosumdb = v.get("GOPRIVATE", ""), v.get("GONOPROXY", ""), v.get("GONOSUMDB", "")
    public = [m for m in PUBLIC_SAMPLES if noproxy and match_prefix_patterns(noproxy, m)]
    if public:
        out.append(
            Check(
                "client",
                "GONOPROXY",
                "fail",
                f"GONOPROXY={noproxy} matches public modules such as "
                f"{public[0]}: they are fetched directly, bypassing the node",
                "gonoproxy-public",
            )
        )
    unverified = [m for m in PUBLIC_SAMPLES if nosumdb and match_prefix_patterns(nosumdb, m)]
    if unverified:
        out.append(
            Check(
                "client",
                "GONOSUMDB",
                "warn",
                f"GONOSUMDB={nosumdb} matches public modules such as {unverified[0]}: their checksums are not verified",
                "nosumdb-public",
            )
        )
    for p in _patterns(priv):
        if not _covers(nosumdb, p):
            out.append(
                Check(
                    "client",
                    "GONOSUMDB",
                    "fail",
                    f"private pattern {p} (GOPRIVATE) is not in "
                    f"GONOSUMDB={nosumdb!r}: go asks the checksum database about private modules, "
                    "which fails and leaks their paths",
                    "private-sumdb-leak",
                )
            )
        if not _covers(noproxy, p) and through_node and node_private is not None and not _covers(node_private, p):
            out.append(
                Check(
                    "client",
                    "GOPRIVATE",
                    "warn",
                    f"private modules matching {p} go through the node "
                    f"(GONOPROXY={noproxy!r}), which does not treat them as private: it would look them "
                    "up in its checksum database and refuse them; add them to the node's `private`",
                    "private-node-sumdb",
                )
            )
    if not out:
        if noproxy:
            out.append(
                Check(
                    "client",
                    "GOPRIVATE",
                    "info",
                    f"modules matching {noproxy} are fetched directly, not through the node (GONOPROXY)",
                )
            )
        elif not (priv or nosumdb):
            out.append(Check("client", "GOPRIVATE", "ok", "no private module patterns"))
        else:
            out.append(
                Check(
                    "client", "GOPRIVATE", "ok", f"GOPRIVATE={priv!r} GONOPROXY={noproxy!r} GONOSUMDB={nosumdb!r} agree"
                )
            )
    return out


def gosumdb_checks(v: Mapping[str, str], node_dbs: Sequence[str] | None, environ: Mapping[str, str]) -> list[Check]:
    value = v.get("GOSUMDB", "sum.golang.org").strip()
    out: list[Check] = []
    if environ.get("GONOSUMCHECK"):
        out.append(Check("client", "GOSUMDB", "info", "GONOSUMCHECK is not a Go setting and is ignored"))
    if value == "off":
        node_note = "; the node still verifies what it caches" if node_dbs else ""
        return out + [
            Check(
                "client",
                "GOSUMDB",
                "warn",
                "GOSUMDB=off: checksum verification disabled, go accepts "
                f"any module bytes not already in go.sum{node_note}",
                "gosumdb-off",
            )
        ]
    fields = value.split()
    if len(fields) > 2 or not fields:
        return out + [
            Check("client", "GOSUMDB", "fail", f"GOSUMDB={value!r}: want NAME[+KEY] [URL]", "gosumdb-invalid")
        ]
    name = fields[0].split("+", 1)[0]
    if len(fields) == 2:
        out.append(
            Check(
                "client",
                "GOSUMDB",
                "warn",
                f"GOSUMDB names the URL {fields[1]}: go talks to it directly, "
                "not through the node, so verification fails offline",
                "gosumdb-url",
            )
        )
    elif node_dbs is not None and name not in node_dbs:
        out.append(
            Check(
                "client",
                "GOSUMDB",
                "warn",
                f"the node does not proxy checksum database {name} "
                f"(it proxies {', '.join(node_dbs) or 'none'}): go goes to https://{name} directly, "
                "which fails offline",
                "gosumdb-not-proxied",
            )
        )
    else:
        via = " through the node" if node_dbs else ""
        out.append(Check("client", "GOSUMDB", "ok", f"go verifies against {name}{via}"))
    return out


def netrc_machines(text: str) -> set[str]:
    """The `machine` names of a .netrc file (tokens, any layout)."""
    toks = text.split()
    return {toks[i + 1] for i, t in enumerate(toks[:-1]) if t == "machine"}


def auth_checks(v: Mapping[str, str], environ: Mapping[str, str], proxy_url: str | None) -> list[Check]:
    """The node wants credentials: will go send them? Only over https, only from GOAUTH."""
    if proxy_url is None:
        return []
    p = urlsplit(proxy_url)
    if p.scheme != "https":
        return [
            Check(
                "client",
                "GOAUTH",
                "fail",
                "the node requires credentials, and go sends credentials over "
                "https only: serve TLS (tls_cert_file) and use an https:// GOPROXY",
                "auth-over-http",
            )
        ]
    goauth = (v.get("GOAUTH") or "netrc").strip()
    if goauth == "off":
        return [
            Check(
                "client", "GOAUTH", "fail", "the node requires credentials, but GOAUTH=off: go sends none", "goauth-off"
            )
        ]
    if "netrc" not in [c.strip() for c in goauth.split(";")]:
        return [Check("client", "GOAUTH", "info", f"the node requires credentials; GOAUTH={goauth} provides them")]
    netrc = environ.get("NETRC") or os.path.join(environ.get("HOME", "~"), ".netrc")
    machines = netrc_machines(_read(netrc))
    host = p.netloc.rsplit("@", 1)[-1]
    if host in machines:
        return [Check("client", "GOAUTH", "ok", f"{netrc} has credentials for {host}")]
    if p.hostname in machines and p.port:
        return [
            Check(
                "client",
                "GOAUTH",
                "fail",
                f"{netrc} names machine {p.hostname}, but go matches {host} (with the port): add it",
                "netrc-no-port",
            )
        ]
    return [
        Check(
            "client",
            "GOAUTH",
            "fail",
            f"the node requires credentials and {netrc} has no 'machine {host}' line: go sends none and gets 401",
            "netrc-missing",
        )
    ]


def goflags_checks(v: Mapping[str, str]) -> list[Check]:
    flags = v.get("GOFLAGS", "").split()
    if any(f.split("=", 1)[0].lstrip("-") == "insecure" for f in flags):
        return [
            Check(
                "client",
                "GOFLAGS",
                "fail",
                "GOFLAGS has -insecure, which is no longer supported ('go get' "
                "fails: use GOINSECURE, which relaxes TLS for direct fetches only)",
                "goflags-insecure",
            )
        ]
    bad = [f for f in flags if not f.startswith("-")]
    if bad:
        return [
            Check("client", "GOFLAGS", "fail", f"GOFLAGS entries must be flags: {' '.join(bad)}", "goflags-invalid")
        ]
    return [Check("client", "GOFLAGS", "ok", f"GOFLAGS={' '.join(flags)!r}")]


def _toolchain_ok(value: str) -> bool:
    name, plus, mode = value.partition("+")
    if value in ("auto", "path", "local"):
        return True
    if plus and mode not in ("auto", "path"):
        return False
    release = name[2:].split("rc")[0].split("beta")[0]  # go1.21rc2, go1.22beta1
    return name == "local" or (name.startswith("go1") and semver.is_valid("v" + release))


def gotoolchain_checks(v: Mapping[str, str]) -> list[Check]:
    """GOTOOLCHAIN decides whether go downloads golang.org/toolchain through GOPROXY."""
    value = v.get("GOTOOLCHAIN", "auto")

    def chk(status: Status, detail: str, code: str = "") -> list[Check]:
        return [Check("client", "GOTOOLCHAIN", status, f"GOTOOLCHAIN={value}: {detail}", code)]

    if not _toolchain_ok(value):
        return chk("fail", "not a valid setting (auto, local, path, go1.N.M[+auto|+path])", "gotoolchain-invalid")
    name, _, mode = value.partition("+")
    if value in ("local", "path") or mode == "path" or (name == v.get("GOVERSION") and not mode):
        return chk("ok", "toolchains are never downloaded; a go.mod needing a newer go fails to build")
    sumdb_off = v.get("GOSUMDB", "") == "off"
    if not name.startswith("go"):  # auto, local+auto
        if sumdb_off:
            return chk(
                "warn",
                "toolchain switches are always verified, so with GOSUMDB=off a go.mod needing a newer "
                "go fails ('checksum database disabled by GOSUMDB=off')",
                "gotoolchain-sumdb-off",
            )
        return chk("ok", "a go.mod needing a newer go downloads golang.org/toolchain through GOPROXY")
    module = f"golang.org/toolchain@v0.0.1-{name}.{v.get('GOOS', 'linux')}-{v.get('GOARCH', 'amd64')}"
    if sumdb_off:
        return chk("fail", f"{name} must be downloaded and verified, but GOSUMDB=off", "gotoolchain-sumdb-off")
    return chk(
        "info",
        f"every go command runs {name}, downloaded as {module} through GOPROXY; `modmesh warm {module}` caches it",
        "gotoolchain-pinned",
    )


def client_checks(
    goenv: GoEnv,
    environ: Mapping[str, str],
    node: str,
    found: tuple[int, bool] | None,
    facts: Mapping[str, Any] | None,
    needs_auth: bool = False,
) -> list[Check]:
    v = goenv.values
    out = [
        Check(
            "client",
            "go env",
            "warn" if goenv.error else "ok" if "go env" in goenv.source else "info",
            f"read from {goenv.source}" + (f": {goenv.error}" if goenv.error else ""),
            "go-env-failed" if goenv.error else "",
        )
    ]
    goproxy = redact_list(v.get("GOPROXY", GO_DEFAULT_PROXY))  # the same entries, credentials masked
    out += goproxy_checks(goproxy, redact(node), found)
    through = found is not None and found[1]
    if needs_auth and found is not None and through:
        out += auth_checks(v, environ, parse_client_goproxy(goproxy)[0][found[0]].url)
    out += private_checks(v, facts.get("private") if facts else None, through)
    out += gosumdb_checks(v, facts.get("sumdb") if facts else None, environ)
    out += goflags_checks(v)
    out += gotoolchain_checks(v)
    if v.get("GOINSECURE"):
        out.append(
            Check(
                "client",
                "GOINSECURE",
                "info",
                f"GOINSECURE={v['GOINSECURE']} relaxes TLS for direct "
                "fetches only; it changes nothing for proxies or checksum verification",
            )
        )
    return out
