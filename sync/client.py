"""Signed requests to peers' /_mesh/ endpoints, with bounded reads.

Paths are signed exactly as sent (yarl is told the URL is already encoded, so it
cannot re-quote what the peer will verify), and no answer is read past its
message bound, whatever a peer claims or sends.
"""

from __future__ import annotations

import aiohttp
from yarl import URL

from .auth import Signer
from .messages import (
    MAX_GOSSIP_BYTES,
    MAX_PAGE_BYTES,
    Gossip,
    InventoryPage,
    MessageError,
    decode_gossip,
    decode_page,
)

MSGPACK = "application/msgpack"


class Refused(Exception):
    """The peer refused us (401: other secret; 409: other mesh or protocol)."""


class PeerClient:
    def __init__(self, session: aiohttp.ClientSession, signer: Signer, timeout: float) -> None:
        self.session = session
        self.signer = signer
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def gossip(self, base: str, body: bytes) -> Gossip:
        path = "/_mesh/gossip"
        headers = {**self.signer.headers("POST", URL(base).raw_path.rstrip("/") + path, body), "Content-Type": MSGPACK}
        async with self.session.post(
            URL(base + path, encoded=True), data=body, headers=headers, timeout=self.timeout
        ) as resp:
            if resp.status in (401, 409):
                raise Refused(f"{resp.status} {(await resp.text())[:120].strip()}")
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
            return decode_gossip(await read_bounded(resp, MAX_GOSSIP_BYTES))

    async def page(self, base: str, epoch: str, after: int, limit: int) -> InventoryPage:
        path_qs = f"/_mesh/inventory?epoch={epoch}&after={after}&limit={limit}"
        headers = self.signer.headers("GET", URL(base).raw_path.rstrip("/") + path_qs)
        async with self.session.get(URL(base + path_qs, encoded=True), headers=headers, timeout=self.timeout) as resp:
            if resp.status != 200:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
            return decode_page(await read_bounded(resp, MAX_PAGE_BYTES))


async def read_bounded(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    if resp.content_length is not None and resp.content_length > limit:
        raise MessageError(f"peer answer of {resp.content_length} bytes exceeds {limit}")
    data = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) > limit:
            raise MessageError(f"peer answer exceeds {limit} bytes")
    return bytes(data)
