"""The client's go environment, read the way the go command resolves it.

`go env -json` runs with GOTOOLCHAIN=local so looking never downloads a
toolchain; the real GOTOOLCHAIN is then resolved as go does (the environment,
the GOENV file, $GOROOT/go.env). Without a go command (or when it fails), the
environment with go's defaults stands in.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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


def read_setting_file(path: str | None) -> str:
    """A settings file's text (GOENV, $GOROOT/go.env, .netrc); "" if unset, off or unreadable."""
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
        except TimeoutError:
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
        or env_file_value(read_setting_file(values.get("GOENV")), "GOTOOLCHAIN")
        or env_file_value(read_setting_file(os.path.join(values.get("GOROOT", ""), "go.env")), "GOTOOLCHAIN")
        or "auto"
    )
    return GoEnv(values, f"go env ({values.get('GOVERSION', 'go')})")
