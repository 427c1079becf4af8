"""Which checksum databases a node uses: GOSUMDB syntax (`sum.golang.org`,
`NAME+HASH+KEY`, `NAME+HASH+KEY URL`) and the shorthands the go command knows."""

from __future__ import annotations

from dataclasses import dataclass

from node.sumdb import note

SUM_GOLANG_ORG = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
#: GOSUMDB shorthands the go command knows: name -> (verifier key, URL).
KNOWN = {
    "sum.golang.org": (SUM_GOLANG_ORG, "https://sum.golang.org"),
    "sum.golang.google.cn": (SUM_GOLANG_ORG, "https://sum.golang.google.cn"),
}


class SumDBConfigError(ValueError):
    """A checksum database setting the node cannot use."""


@dataclass(frozen=True)
class DatabaseSpec:
    name: str
    vkey: str
    url: str | None  # None: find it through the upstreams, else https://<name>


def parse_sumdb_spec(value: str) -> DatabaseSpec:
    """GOSUMDB syntax: `sum.golang.org`, `NAME+HASH+KEY` or `NAME+HASH+KEY URL`."""
    fields = value.split()
    if not 1 <= len(fields) <= 2:
        raise SumDBConfigError(f"checksum database {value!r}: want 'NAME+HASH+KEY [URL]'")
    key, url = fields[0], (fields[1] if len(fields) == 2 else None)
    if key in KNOWN:
        key, default_url = KNOWN[key]
        url = url or default_url
    try:
        verifier = note.parse_verifier(key)
    except note.NoteError as e:
        raise SumDBConfigError(f"checksum database {value!r}: {e}") from None
    if url is not None:
        if not url.startswith(("https://", "http://")):
            raise SumDBConfigError(f"checksum database URL {url!r} must be http or https")
        url = url.rstrip("/")
    return DatabaseSpec(verifier.name, key, url)
