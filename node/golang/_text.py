"""Go's view of text, for ports that must answer exactly as Go does: the bytes a Go
string holds, utf8.DecodeRune, and strconv.Quote for error messages.

A Python str that cannot be encoded as UTF-8 (lone surrogates, e.g. from surrogateescape
decoding) is treated as Go treats invalid UTF-8.
"""

from __future__ import annotations


def go_bytes(s: str) -> bytes:
    """The bytes Go would hold for s; surrogateescape'd bytes map back to themselves."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")  # invalid UTF-8 either way


def is_utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def decode_rune(b: bytes, i: int) -> tuple[int, int]:
    """utf8.DecodeRune at b[i:] (b[i:] non-empty): (rune, width), (0xFFFD, 1) if invalid."""
    b0 = b[i]
    if b0 < 0x80:
        return b0, 1
    n = 2 if 0xC2 <= b0 <= 0xDF else 3 if 0xE0 <= b0 <= 0xEF else 4 if 0xF0 <= b0 <= 0xF4 else 0
    if n and i + n <= len(b):
        try:  # the strict codec rejects overlongs, surrogates and > U+10FFFF, like Go
            return ord(b[i : i + n].decode("utf-8")), n
        except UnicodeDecodeError:
            pass
    return 0xFFFD, 1


_SHORT_ESCAPES = {7: r"\a", 8: r"\b", 9: r"\t", 10: r"\n", 11: r"\v", 12: r"\f", 13: r"\r"}


def quote(s: str, q: str = '"') -> str:
    """strconv.Quote (q='"') or QuoteRune (q="'"), for error messages that match Go's."""
    b = go_bytes(s)
    out = [q]
    i = 0
    while i < len(b):
        r, n = decode_rune(b, i)
        ch = chr(r)
        if n == 1 and r == 0xFFFD:
            out.append(f"\\x{b[i]:02x}")
        elif ch in (q, "\\"):
            out.append("\\" + ch)
        elif ch.isprintable():  # Python's printable set is Go's IsPrint (L, M, N, P, S, ' ')
            out.append(ch)
        elif r in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[r])
        elif r < 0x20 or r == 0x7F:
            out.append(f"\\x{r:02x}")
        elif r < 0x10000:
            out.append(f"\\u{r:04x}")
        else:
            out.append(f"\\U{r:08x}")
        i += n
    out.append(q)
    return "".join(out)


def quote_rune(ch: str) -> str:
    """Go's %q of a rune: 'x'."""
    return quote(ch, "'")
