"""`modmesh verify --rebuild-index --data DIR`: build a stopped node's index again
from its journal and its blobs, without any network (node/cache/recovery.py).

A node does this by itself at start-up when SQLite reports its index damaged; the
command does it on demand (a suspect index, a restored backup of the blobs). It takes
the data directory for itself: a node or another command using it makes it refuse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from node.cache.index import Index
from node.cache.journal import Journal
from node.cache.recovery import rebuild
from node.cache.store import BlobStore, DataDirBusy
from node.tools.target import UsageError, local_config


def run_rebuild(args: argparse.Namespace) -> int:
    try:
        cfg = local_config(args)
        if cfg is None:
            raise UsageError("--rebuild-index works on a stopped node's data directory: pass --data DIR")
        res = asyncio.run(_rebuild(cfg.data))
    except UsageError as e:
        print(f"modmesh verify: {e}", file=sys.stderr)
        return 2
    except (DataDirBusy, OSError) as e:
        print(f"modmesh verify: {e}; stop it first", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(
            f"index rebuilt from the journal in {res['seconds']} s: {res['recovered']} files recovered, "
            f"{res['pins']} pins, {res['missing']} files lost (blob missing or wrong size), "
            f"{res['damaged_lines']} damaged journal lines; the old index is in {res['moved_to']}"
        )
    return 0


async def _rebuild(data: Any) -> dict[str, Any]:
    store = BlobStore(data)
    store.lock(exclusive=True)
    jrnl = Journal(data / "index.journal")
    if not jrnl.exists:
        store.close()
        raise OSError(f"{jrnl.path} does not exist: nothing to rebuild from (a node writes it when it starts)")
    jrnl.open()
    index = Index(data / "index.sqlite", jrnl)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        rec = await rebuild(index, jrnl, store, "asked for: modmesh verify --rebuild-index")
        rec.seconds = round(loop.time() - started, 3)
        return rec.to_json()
    finally:
        await index.aclose()
        jrnl.close()
        store.close()
