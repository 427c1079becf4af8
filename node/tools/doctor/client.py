"""The client side of `modmesh doctor`: the go command's settings, judged.

Every check is a pure function of the settings (goenv.py) and of what the node
said about itself, so the classic pitfalls are unit-tested one by one: GOPROXY
(goproxy.py); GOPRIVATE / GONOPROXY / GONOSUMDB disagreeing with each other or
with the node; GOSUMDB off or bypassing the node; credentials go will not send;
GOFLAGS=-insecure; GOTOOLCHAIN.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from node.cache.upstream import redact
from node.golang import semver
from node.golang.patterns import match_prefix_patterns
from node.tools.doctor.check import Check, Status
from node.tools.doctor.goenv import GO_DEFAULT_PROXY, GoEnv, read_setting_file
from node.tools.doctor.goproxy import goproxy_checks, parse_client_goproxy, redact_list

#: Well-known public modules: patterns that match them are not "private" patterns.
PUBLIC_SAMPLES = (
    "github.com/spf13/cobra",
    "golang.org/x/mod",
    "google.golang.org/grpc",
    "gopkg.in/yaml.v3",
    "go.uber.org/zap",
    "rsc.io/quote",
)


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
        return [
            *out,
            Check(
                "client",
                "GOSUMDB",
                "warn",
                "GOSUMDB=off: checksum verification disabled, go accepts "
                f"any module bytes not already in go.sum{node_note}",
                "gosumdb-off",
            ),
        ]
    fields = value.split()
    if len(fields) > 2 or not fields:
        return [
            *out,
            Check("client", "GOSUMDB", "fail", f"GOSUMDB={value!r}: want NAME[+KEY] [URL]", "gosumdb-invalid"),
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
    machines = netrc_machines(read_setting_file(netrc))
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
