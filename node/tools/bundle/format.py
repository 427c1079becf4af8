"""Bundles: one tar stream that carries modules across an air gap.

A bundle unpacked is a GOPROXY tree laid out like GOMODCACHE's cache/download
(escaped paths, as on the wire), with the manifest in front:

    modmesh-bundle.json                      manifest: always the first member
    sumdb/<db>/supported                     empty (the tree is a database proxy too)
    sumdb/<db>/latest                        the exporter's newest verified tree head
    sumdb/<db>/tile/8/<L>/<NNN>[.p/<W>]      hash tiles at that tree head's widths
    sumdb/<db>/lookup/<m>@<v>                lookup replies, byte for byte
    <m>/@v/<v>.info | .mod | .zip            versioned files, byte for byte
    <m>/@v/list, <m>/@latest                 list and latest answers

The database comes before the modules, so an importer has the records in place
before the first blob is checked against them. The manifest lists every other
member with its size and sha256 (and h1, module, version), so a reader checks
each entry on its own: one bad member is refused, the rest still import.

This module is the layout: the manifest and the member paths. The tar stream
itself is written and read by `tar`; `export` and `importing` use both.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from node.cache.protocol import ModRequest, parse_request
from node.errors import InvalidRequest, NotFound
from node.golang import modpath
from node.sumdb import tiles
from node.tools.bundle.manifest_json import ManifestJSON

FORMAT = "modmesh-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "modmesh-bundle.json"
#: The largest manifest an import reads (an exported entry takes ~300 bytes of it: about
#: 3.5 million entries). Its entries go to a temporary database on the store's disk as
#: they are parsed (import_temp.py), so memory does not grow with it; the import also
#: refuses a manifest larger than the free space of the store's disk.
MAX_MANIFEST = 1 << 30
#: The largest manifest read whole into memory (an earlier bundle's for --since-bundle,
#: an unpacked bundle's, one picked out of a stream on its way to a file).
MAX_MANIFEST_IN_MEMORY = 32 << 20
MODULE_KINDS = ("info", "mod", "zip", "list", "latest")
SUMDB_KINDS = ("sumdb-supported", "sumdb-latest", "sumdb-tile", "sumdb-lookup")
#: The order of a module's files in a bundle, per version, then its list and latest.
KIND_ORDER = {"info": 0, "mod": 1, "zip": 2, "list": 3, "latest": 4}


#: What an import did with an entry (the report's vocabulary, also over HTTP).
Status = Literal["admitted", "present", "refused", "skipped"]


class BundleError(Exception):
    """The bundle itself is unreadable (not one entry: the stream or the manifest)."""


# ---- manifest ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    path: str  # the member name: an escaped GOPROXY path, or sumdb/<db>/...
    kind: str  # info mod zip list latest sumdb-supported sumdb-latest sumdb-tile sumdb-lookup
    size: int
    sha256: str | None = None  # None only in bundles built from a directory for upload
    module: str = ""
    version: str = ""
    h1: str | None = None
    fetched_at: float | None = None
    db: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: object) -> ManifestEntry:
        if not isinstance(obj, dict):
            raise BundleError("manifest entry is not an object")
        try:
            e = cls(
                path=_typed(obj, "path", str),
                kind=_typed(obj, "kind", str),
                size=_typed(obj, "size", int),
                sha256=_typed(obj, "sha256", str, None),
                module=_typed(obj, "module", str, ""),
                version=_typed(obj, "version", str, ""),
                h1=_typed(obj, "h1", str, None),
                fetched_at=_number(obj.get("fetched_at")),
                db=_typed(obj, "db", str, ""),
            )
        except (TypeError, ValueError) as err:
            raise BundleError(f"manifest entry {str(obj.get('path'))[:120]!r}: {err}") from None
        if e.kind not in MODULE_KINDS + SUMDB_KINDS or e.size < 0:
            raise BundleError(f"manifest entry {e.path[:120]!r}: bad kind or size")
        if e.sha256 is not None and (len(e.sha256) != 64 or not _is_hex(e.sha256)):
            raise BundleError(f"manifest entry {e.path[:120]!r}: malformed sha256")
        return e

    @property
    def label(self) -> str:
        """How a report names the entry."""
        return entry_label(self.path, self.kind, self.module, self.version)


def entry_label(path: str, kind: str, module: str, version: str) -> str:
    """module@version.kind for a versioned file, the member path for anything else."""
    if kind in ("info", "mod", "zip"):
        return f"{module}@{version}.{kind}"
    return path


_MISSING = object()


def _typed(obj: dict[str, Any], key: str, typ: type, default: Any = _MISSING) -> Any:
    value = obj.get(key, default)
    if value is _MISSING:
        raise ValueError(f"{key} is missing")
    if value is None and default is None:
        return None
    if not isinstance(value, typ) or isinstance(value, bool):
        raise ValueError(f"{key} must be {typ.__name__}")
    return value


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("fetched_at must be a number")
    return float(value)


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)


@dataclass
class Manifest:
    entries: list[ManifestEntry]
    created: str
    #: Where the bundle came from: {"kind": "node", "epoch", "serial", "node_version"}
    #: for `export`; {"kind": "gomodcache" | "directory", "path"} for uploads of a tree.
    origin: dict[str, Any] = field(default_factory=dict)
    #: The export's selection, so `--since-bundle` knows what an earlier bundle covered.
    selection: dict[str, Any] = field(default_factory=dict)
    #: Per database: name, vkey, tree_size, tree_hash (base64) of the tree head carried.
    sumdb: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        obj = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": self.created,
            "origin": self.origin,
            "selection": self.selection,
            "sumdb": self.sumdb,
            "totals": {"entries": len(self.entries), "bytes": sum(e.size for e in self.entries)},
            "warnings": self.warnings,
            "entries": [e.to_json() for e in self.entries],
        }
        return json.dumps(obj, indent=1, sort_keys=False).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        if len(data) > MAX_MANIFEST_IN_MEMORY:
            raise BundleError(manifest_too_large(len(data), MAX_MANIFEST_IN_MEMORY))
        p = cls.parser()
        feed(p, data)
        return cls.parsed(p)

    @staticmethod
    def parser(sink: Callable[[ManifestEntry], None] | None = None) -> ManifestJSON[ManifestEntry]:
        """`feed` it a manifest's bytes as they come (in a thread), then pass it to `parsed`.
        With a `sink`, each entry goes there and the Manifest's `entries` stay empty."""
        if sink is None:
            return ManifestJSON(ManifestEntry.from_json)

        def entry(obj: object) -> ManifestEntry:
            e = ManifestEntry.from_json(obj)
            sink(e)
            return e

        return ManifestJSON(entry, keep=False)

    @classmethod
    def parsed(cls, p: ManifestJSON[ManifestEntry]) -> Manifest:
        feed(p, None)
        obj = p.fields
        if obj.get("format") != FORMAT:
            raise BundleError(f"not a modmesh bundle manifest (format is not {FORMAT!r})")
        if obj.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"bundle format version {obj.get('format_version')!r} is not supported (want {FORMAT_VERSION})"
            )
        if p.entries is None:
            raise BundleError("manifest has no entry list")
        origin, selection = (obj.get(k) for k in ("origin", "selection"))
        sumdb = [d for d in obj.get("sumdb") or [] if isinstance(d, dict)]
        warnings = [str(w) for w in obj.get("warnings") or []]
        return cls(
            p.entries,
            str(obj.get("created", "")),
            origin if isinstance(origin, dict) else {},
            selection if isinstance(selection, dict) else {},
            sumdb,
            warnings,
        )

    def by_path(self) -> dict[str, ManifestEntry]:
        return {e.path: e for e in self.entries}


def feed(p: ManifestJSON[ManifestEntry], data: bytes | None) -> None:
    """More of a manifest's bytes for `p`; None: that was all."""
    try:
        if data is None:
            p.finish()
        else:
            p.feed(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"manifest is not JSON: {e}") from None


def manifest_too_large(size: int, limit: int = MAX_MANIFEST) -> str:
    return (
        f"the bundle's manifest is {size >> 20} MiB, over the {limit >> 20} MiB a node reads "
        "here; the bundle is refused: export it in parts (--module, --since)"
    )


def utc_iso(t: float) -> str:
    """A Unix time as bundles write times: ISO 8601, UTC, whole seconds."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- member paths ----------------------------------------------------------------


def module_member(module: str, version: str, kind: str) -> str:
    return ModRequest(module, version, kind).upstream_path  # type: ignore[arg-type]


def lookup_member(db: str, module: str, version: str) -> str:
    return f"sumdb/{db}/lookup/{modpath.escape_path(module)}@{modpath.escape_version(version)}"


def parse_module_member(path: str) -> ModRequest:
    """The ModRequest a member path names (validated by Go's rules), or ValueError."""
    try:
        return parse_request("/" + path)
    except (InvalidRequest, NotFound) as e:
        raise ValueError(str(e)) from None


def parse_lookup_target(target: str) -> tuple[str, str]:
    esc_m, at, esc_v = target.rpartition("@")
    if not at:
        raise ValueError("lookup path must be <module>@<version>")
    module, version = modpath.unescape_path(esc_m), modpath.unescape_version(esc_v)
    modpath.check(module, version)
    if modpath.canonical_version(version) != version:
        raise ValueError(f"{module}@{version}: not a canonical version")
    return module, version


def parse_sumdb_member(entry: ManifestEntry) -> tiles.Tile | tuple[str, str] | None:
    """Check a sumdb entry's path against its kind: a Tile, (module, version) for a
    lookup, None for latest/supported. ValueError if they do not agree."""
    prefix = f"sumdb/{entry.db}/"
    if not entry.db or not entry.path.startswith(prefix):
        raise ValueError(f"path is not under {prefix}")
    rest = entry.path[len(prefix) :]
    if entry.kind == "sumdb-tile":
        tile = tiles.parse_tile_path(rest)
        if tile.l < 0:
            raise ValueError("data tiles are not carried in bundles")
        return tile
    if entry.kind == "sumdb-lookup":
        if not rest.startswith("lookup/"):
            raise ValueError("lookup path must start with lookup/")
        return parse_lookup_target(rest[len("lookup/") :])
    if rest != entry.kind.removeprefix("sumdb-"):
        raise ValueError(f"{entry.kind} must be at {prefix}{entry.kind.removeprefix('sumdb-')}")
    return None
