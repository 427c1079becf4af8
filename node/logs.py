"""Structured logging: one JSON object (or one key=value line) per event.

Fields passed as `extra={"fields": {...}}` become top-level keys, so the access
log line carries path, status, cache status, upstream, ms and bytes as data.

One event is one line whatever a client sent: a request path or header can hold a
newline (`%0A`), a terminal escape (`%1B`) or bytes that are not UTF-8. JSON escapes
them by construction; the text format escapes them itself (`escape`), quotes field
values that hold a space, `=` or `"`, and indents a traceback's lines, so a line that
does not start with a timestamp is always the continuation of one that does.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

#: What a text line must not carry raw: C0 and C1 controls and DEL (line breaks,
#: terminal escapes), the backslash (the escape character itself), Unicode line and
#: paragraph separators, bidi controls, and lone surrogates (bytes that were not UTF-8).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]+")
_NEEDS_QUOTES = re.compile(r'[ "=]')


def escape(text: str) -> str:
    """`text` with every unsafe character as its Python escape (`\\n`, `\\x1b`,
    `\\u2028`, `\\udcff`, `\\\\`); ordinary text is returned as it is."""
    if _UNSAFE.search(text) is None:
        return text
    return _UNSAFE.sub(_escape_run, text)


def _escape_run(m: re.Match[str]) -> str:
    return m.group().encode("unicode_escape").decode("ascii")


def _value(v: object) -> str:
    """A logfmt value: escaped, and quoted when it is empty or holds a space, `=` or `"`."""
    text = escape(str(v))
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + text.replace('"', '\\"') + '"'


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = escape(record.getMessage())
        line = f"{self.formatTime(record)} {record.levelname.lower()} {escape(record.name)}: {msg}"
        fields = getattr(record, "fields", {})
        if fields:
            line += " " + " ".join(f"{escape(str(k))}={_value(v)}" for k, v in fields.items())
        if record.exc_info:
            tb = self.formatException(record.exc_info)
            line += "".join("\n  " + escape(ln) for ln in tb.split("\n"))
        return line


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
