"""`/sumdb/<db>/...`: the checksum databases, proxied from the node's verified cache."""

from __future__ import annotations

from aiohttp import web

from node.errors import InvalidRequest, NotFound
from node.golang import modpath
from node.metrics import Metrics
from node.server.accesslog import CACHE, KIND
from node.server.responses import CACHE_HEADER, IMMUTABLE, STALE_HEADER
from node.sumdb import tiles, tlog
from node.sumdb.databases import ChecksumDatabases


async def sumdb_response(
    request: web.Request, rest: str, sumdbs: ChecksumDatabases | None, metrics: Metrics
) -> web.Response:
    """`/sumdb/<db>/{supported,latest,lookup/<m>@<v>,tile/...}`: verified and cached."""
    routed = sumdbs.route(rest) if sumdbs is not None else None
    if routed is None:
        raise NotFound("this node does not proxy that checksum database")
    db, endpoint = routed
    text = "text/plain; charset=utf-8"
    if endpoint == "supported":
        request[KIND] = "sumdb-supported"
        return web.Response(body=b"", headers={"Cache-Control": "public, max-age=3600"})
    if endpoint == "latest":
        request[KIND] = "sumdb-latest"
        body, cache = await db.latest_signed()
        headers = {"Cache-Control": f"public, max-age={int(db.latest_ttl)}", CACHE_HEADER: cache}
        if cache == "stale":
            headers[STALE_HEADER] = "upstream-failed"
            headers["Cache-Control"] = "public, max-age=0"
    elif endpoint.startswith("lookup/"):
        request[KIND] = "sumdb-lookup"
        module, version = _lookup_target(endpoint[len("lookup/") :])
        assert sumdbs is not None
        if sumdbs.is_private(module):
            raise NotFound(f"{module} is private (patterns of this node or its mesh): not sent to a checksum database")
        body, cache = await db.lookup(module, version)
        headers = {"Cache-Control": "public, max-age=86400", CACHE_HEADER: cache}
    elif endpoint.startswith("tile/"):
        request[KIND] = "sumdb-tile"
        try:
            tile = tiles.parse_tile_path(endpoint)
        except tlog.TlogError as e:
            raise NotFound(f"malformed tile path: {e}") from None
        body, cache = await db.tile(tile)
        headers = {
            "Cache-Control": IMMUTABLE if tile.full else "public, max-age=60",
            CACHE_HEADER: cache,
        }
        text = "application/octet-stream"
    else:
        raise NotFound(f"unknown checksum database endpoint {endpoint[:60]!r}")
    request[CACHE] = cache
    metrics.sumdb_requests.labels(db.name, request[KIND], cache).inc()
    return web.Response(body=body, headers={**headers, "Content-Type": text})


def _lookup_target(target: str) -> tuple[str, str]:
    esc_m, at, esc_v = target.rpartition("@")
    if not at:
        raise NotFound("lookup path must be <module>@<version>")
    try:
        module, version = modpath.unescape_path(esc_m), modpath.unescape_version(esc_v)
        modpath.check(module, version)
    except ValueError as e:
        raise InvalidRequest(f"invalid lookup: {e}") from None
    if modpath.canonical_version(version) != version:
        raise NotFound(f"{module}@{version}: not a canonical version")
    return module, version
