"""A disk that fills: `os` as node/store.py sees it, with ENOSPC after `room` bytes.

Patch it in at the OS boundary only (`monkeypatch.setattr(node.store, "os", disk)`);
everything above it is the real code. A real full file system (a tmpfs) is in
tests/test_streaming.py.
"""

from __future__ import annotations

import errno
import os
from typing import Any


class FillingDisk:
    """The OS as seen by node/store.py, with a disk that fills after `room` bytes."""

    def __init__(self) -> None:
        self.room: int | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        if self.room is not None:
            if self.room <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            data = bytes(data[: self.room])
            self.room -= len(data)
        return os.write(fd, data)
