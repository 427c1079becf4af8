"""The door: what a body from an upstream, a peer or an import must be before it is
written to the spool and committed (node/cache/verify.py holds the pure rules)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Mapping

import aiohttp

from node.cache import verify
from node.cache.inflight import CHUNK, Download
from node.cache.protocol import ModRequest
from node.cache.spool import Spool
from node.errors import IntegrityError, UpstreamError
from node.golang import dirhash, modzip
from node.golang.zipstream import ZipStreamHasher


def take_small(dl: Download, body: bytes) -> str | None:
    """Vet a whole .info or .mod body and write it; returns the .mod's h1."""
    req = dl.req
    if req.kind == "info":
        verify.check_info(req, body)
        h1 = None
    else:
        verify.check_mod(req, body)
        h1 = dirhash.h1_gomod(body)
    dl.begin(len(body))
    dl.write(body)
    return h1


async def take_zip(dl: Download, origin: str, chunks: AsyncIterable[bytes], length: int | None) -> str:
    """Write a zip as it arrives, hashing every entry on the way; verify; return h1."""
    req = dl.req
    what = f"{req.module}@{req.version}"
    if length is not None and length > modzip.MAX_ZIP_FILE:
        raise IntegrityError(f"zip for {what} from {origin} is larger than 500 MiB")
    dl.begin(length)
    hasher = ZipStreamHasher()
    async for chunk in chunks:
        dl.write(chunk)
        hasher.feed(chunk)
        if dl.written > modzip.MAX_ZIP_FILE:
            raise IntegrityError(f"zip for {what} from {origin} is larger than 500 MiB")
    if dl.written == 0:
        raise IntegrityError(f"{origin} sent an empty zip for {what}")
    if length is not None and dl.written != length:
        raise UpstreamError(f"{origin} sent {dl.written} of {length} bytes of {what}.zip")
    try:
        checked = await asyncio.to_thread(_check_zip, dl.spool, req.module, req.version, hasher.digests())
    except ValueError as e:
        # Worded as the go command words it when it unzips such a file itself.
        raise IntegrityError(
            f"unzip {req.upstream_path}: {e} (the zip {origin} sent breaks the module zip rules; not cached)"
        ) from None
    return checked.h1


def _check_zip(
    spool: Spool, module: str, version: str, digests: Mapping[str, tuple[str, int]] | None
) -> modzip.CheckedZip:
    with spool.open_for_check() as f:
        return modzip.check_zip_file(f, module, version, digests)


async def read_bounded(resp: aiohttp.ClientResponse, limit: int, req: ModRequest) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise IntegrityError(f"upstream {req.kind} answer for {req.key} is too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            raise IntegrityError(f"upstream {req.kind} answer for {req.key} is too large")
        chunks.append(chunk)
    return b"".join(chunks)
