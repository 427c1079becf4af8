"""Tree heads and records as a checksum database writes them (port of Go's
golang.org/x/mod/sumdb/tlog note.go): the signed tree text and the lookup reply."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from node.sumdb.tlog import MAX_LOOKUP_SIZE, MAX_TREE_SIZE, TlogError, check_hash, check_size

__all__ = ["Tree", "format_record", "format_tree", "parse_record", "parse_tree", "split_lookup"]

_TREE_HEADER = "go.sum database tree\n"

_B64_HASH = re.compile(r"[A-Za-z0-9+/]{43}=")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


@dataclass(frozen=True)
class Tree:
    """A tree head: the log's size and root hash, as signed by the database."""

    n: int
    hash: bytes

    def __post_init__(self) -> None:
        check_size(self.n)
        object.__setattr__(self, "hash", check_hash(self.hash, "tree hash"))


def format_tree(tree: Tree) -> str:
    """The note text for a tree head: `go.sum database tree\\n<N>\\n<base64 hash>\\n`."""
    return f"{_TREE_HEADER}{tree.n}\n{base64.b64encode(tree.hash).decode()}\n"


def _decimal(s: str, what: str) -> int:
    if not _DECIMAL.fullmatch(s) or int(s) > MAX_TREE_SIZE:
        raise TlogError(f"malformed {what}")
    return int(s)


def parse_tree(text: str) -> Tree:
    """Parse a tree head text; lines after the hash are allowed (forward compatibility)."""
    if (
        not isinstance(text, str)
        or len(text) > MAX_LOOKUP_SIZE
        or not text.startswith(_TREE_HEADER)
        or text.count("\n") < 3
    ):
        raise TlogError("malformed tree note")
    lines = text.split("\n", 3)
    n = _decimal(lines[1], "tree note")
    if not _B64_HASH.fullmatch(lines[2]):
        raise TlogError("malformed tree note")
    return Tree(n, base64.b64decode(lines[2]))


def _is_valid_record_text(text: bytes) -> bool:
    """UTF-8, no control characters but \\n, ends in \\n, no blank lines (nor a leading one)."""
    try:
        s = text.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if not s.endswith("\n") or s.startswith("\n") or "\n\n" in s:
        return False
    return not any(c < " " and c != "\n" for c in s)


def format_record(id: int, text: bytes) -> bytes:
    """`<id>\\n<text>\\n`: a lookup reply before its signed tree head."""
    check_size(id, "record id")
    if not _is_valid_record_text(text):
        raise TlogError("malformed record data")
    return b"%d\n%s\n" % (id, text)


def parse_record(msg: bytes) -> tuple[int, bytes, bytes]:
    """Split `<id>\\n<text>\\n<rest>` into (id, text, rest); rest follows the blank line.

    Stricter than Go's ParseRecord, which also takes `+7`, `007` or a negative id
    and a record text starting with an empty line: none of those comes from a
    real database.
    """
    if not isinstance(msg, (bytes, bytearray)) or len(msg) > MAX_LOOKUP_SIZE:
        raise TlogError("malformed record data")
    msg = bytes(msg)
    head, sep, body = msg.partition(b"\n")
    if not sep:
        raise TlogError("malformed record data")
    try:
        id = _decimal(head.decode("ascii"), "record data")
    except UnicodeDecodeError:
        raise TlogError("malformed record data") from None
    end = body.find(b"\n\n")
    if end < 0:
        raise TlogError("malformed record data")
    text, rest = body[: end + 1], body[end + 2 :]
    if not _is_valid_record_text(text):
        raise TlogError("malformed record data")
    return id, text, rest


def split_lookup(reply: bytes) -> tuple[int, bytes, bytes]:
    """A /lookup reply as (record id, record text, signed tree note); the note is not opened."""
    id, text, note = parse_record(reply)
    if not note:
        raise TlogError("lookup reply has no signed tree head")
    return id, text, note
