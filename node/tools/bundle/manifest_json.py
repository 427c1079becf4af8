"""A bundle's manifest parsed as its bytes arrive, entry by entry (format.py).

Neither the manifest's whole text nor a list of its JSON objects is ever held: each
entry becomes a record as soon as its closing brace arrives, kept in a list or handed
on (an import stores them in a temporary database, import_temp.py, so its memory does
not grow with the manifest), and a thread parsing it gives the GIL up between entries
(a node importing keeps answering meanwhile).
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
#: Text kept back to be retried whole at least doubles, and grows by at least this,
#: before a retry: a large value (not an entry) is parsed a few times, not once per chunk.
_RETRY_STEP = 64 << 10


class ManifestJSON(Generic[T]):
    """`feed` the bytes, then `finish`: `fields` (every top-level key but `entries`) and
    `entries`, each made by `entry` from its JSON object (None if `entries` is not a
    list: its value is in `fields`). ValueError: not one JSON object.

    With `keep=False` the entries are not kept: `entry` is all that sees them (it may
    store them elsewhere) and `entries` stays empty; `count` is how many there were."""

    def __init__(self, entry: Callable[[Any], T], keep: bool = True) -> None:
        self._entry = entry
        self._keep = keep
        self.count = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._pending: list[str] = []
        self._pending_len = 0
        self._text = ""
        self._retry_at = 0
        self._state = "start"
        self._key = ""
        self.fields: dict[str, Any] = {}
        self.entries: list[T] | None = None
        #: Interned short strings (module paths, versions, kinds): neighbours share them.
        self._names: dict[str, str] = {}

    def feed(self, data: bytes) -> None:
        text = self._utf8.decode(data)
        self._pending.append(text)
        self._pending_len += len(text)
        if len(self._text) + self._pending_len >= self._retry_at:
            self._run(final=False)

    def finish(self) -> None:
        self._pending.append(self._utf8.decode(b"", True))
        self._run(final=True)
        if self._state != "end":
            raise ValueError("the manifest ends early")

    def _run(self, final: bool) -> None:
        text = self._text + "".join(self._pending)
        self._pending, self._pending_len = [], 0
        pos = self._parse(text, final)
        self._text = text[pos:]
        self._retry_at = 2 * len(self._text) + _RETRY_STEP

    def _parse(self, text: str, final: bool) -> int:
        """Parse from the start of `text` as far as it goes; returns where it stopped."""
        pos = 0
        while True:
            pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
            if pos == len(text) and not final:
                return pos
            state, here = self._state, text[pos : pos + 1]
            if state == "end":
                if here:
                    raise ValueError(f"extra data after the manifest: {text[pos : pos + 20]!r}")
                return pos
            if state == "start":
                if here != "{":
                    raise ValueError("the manifest is not a JSON object")
                self._state, pos = "key", pos + 1
            elif state == "key":
                if here == "}" and not self.fields and self.entries is None:
                    self._state, pos = "end", pos + 1
                    continue
                got = self._value(text, pos, final)
                if got is None:
                    return pos
                key, pos = got
                if not isinstance(key, str):
                    raise ValueError("a key of the manifest is not a string")
                self._key, self._state = key, "colon"
            elif state == "colon":
                if here != ":":
                    raise ValueError(f"expected ':' after {self._key[:40]!r}")
                self._state, pos = "value", pos + 1
            elif state == "value":
                if self._key == "entries" and here == "[":
                    self.entries, self._state, pos = [], "first-entry", pos + 1
                    continue
                got = self._value(text, pos, final)
                if got is None:
                    return pos
                value, pos = got
                if self._key == "entries":
                    self.entries = None
                    self.fields["entries"] = value
                else:
                    self.fields[self._key] = value
                self._state = "after-value"
            elif state == "after-value":
                if here not in (",", "}"):
                    raise ValueError(f"expected ',' or '}}' after the value of {self._key[:40]!r}")
                self._state, pos = ("key" if here == "," else "end"), pos + 1
            elif state in ("first-entry", "entry"):
                if here == "]" and state == "first-entry":
                    self._state, pos = "after-value", pos + 1
                    continue
                got = self._value(text, pos, final)
                if got is None:
                    return pos
                obj, pos = got
                assert self.entries is not None
                made = self._entry(self._interned(obj))
                self.count += 1
                if self._keep:
                    self.entries.append(made)
                self._state = "after-entry"
            elif state == "after-entry":
                if here not in (",", "]"):
                    raise ValueError("expected ',' or ']' between entries")
                self._state, pos = ("entry" if here == "," else "after-value"), pos + 1

    def _value(self, text: str, pos: int, final: bool) -> tuple[Any, int] | None:
        """The JSON value at `pos` and where it ends; None if more text may complete it
        (a value must be followed by something unless the text is all there)."""
        try:
            value, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            if final:
                raise ValueError(str(e)) from None
            return None
        if end == len(text) and not final:
            return None
        return value, end

    def _interned(self, obj: Any) -> Any:
        if isinstance(obj, dict):
            for key in ("module", "version", "kind", "db"):
                value = obj.get(key)
                if isinstance(value, str):
                    obj[key] = self._names.setdefault(value, value)
            if len(self._names) > 4096:  # only neighbours share: keep the table small
                self._names.clear()
        return obj
