"""GOPRIVATE-style prefix patterns (GOPRIVATE, GONOPROXY, GONOSUMDB, GOINSECURE).

A port of Go's path.Match and module.MatchPrefixPatterns. Pure functions.
"""

from __future__ import annotations

from node.golang._text import decode_rune, go_bytes

__all__ = ["match_prefix_patterns"]


class _BadPattern(Exception):
    """path.ErrBadPattern."""


def _scan_chunk(pattern: bytes) -> tuple[bool, bytes, bytes]:
    """Split off (leading stars?, chunk up to the next star outside [...], rest)."""
    stripped = pattern.lstrip(b"*")
    star = len(stripped) != len(pattern)
    in_range = False
    i = 0
    while i < len(stripped):
        c = stripped[i : i + 1]
        if c == b"\\":
            i += 1  # skip the escaped byte; a trailing '\' is reported by _match_chunk
        elif c == b"[":
            in_range = True
        elif c == b"]":
            in_range = False
        elif c == b"*" and not in_range:
            return star, stripped[:i], stripped[i:]
        i += 1
    return star, stripped, b""


def _get_esc(chunk: bytes, ci: int) -> tuple[int, int]:
    """One possibly escaped rune of a [...] class at chunk[ci:]: (rune, next index)."""
    if ci >= len(chunk) or chunk[ci] in b"-]":
        raise _BadPattern
    if chunk[ci] == ord("\\"):
        ci += 1
        if ci >= len(chunk):
            raise _BadPattern
    r, n = decode_rune(chunk, ci)
    if (r == 0xFFFD and n == 1) or ci + n >= len(chunk):
        raise _BadPattern
    return r, ci + n


def _match_chunk(chunk: bytes, s: bytes, si: int) -> int | None:
    """Match chunk at s[si:]: the index after the match, or None. Raises _BadPattern.

    After a mismatch the loop keeps parsing the chunk (without reading s) so that a bad
    pattern is reported whether or not the text matched, as Go does.
    """
    failed = False
    ci = 0
    while ci < len(chunk):
        failed = failed or si >= len(s)
        c = chunk[ci]
        if c == ord("["):
            r = 0
            if not failed:
                r, n = decode_rune(s, si)
                si += n
            ci += 1
            negated = chunk[ci : ci + 1] == b"^"
            if negated:
                ci += 1
            matched = False
            nrange = 0
            while not (chunk[ci : ci + 1] == b"]" and nrange > 0):
                lo, ci = _get_esc(chunk, ci)
                hi = lo
                if chunk[ci] == ord("-"):
                    hi, ci = _get_esc(chunk, ci + 1)
                matched = matched or lo <= r <= hi
                nrange += 1
            ci += 1
            failed = failed or matched == negated
        elif c == ord("?"):
            if not failed:
                failed = s[si] == ord("/")
                si += decode_rune(s, si)[1]
            ci += 1
        else:
            if c == ord("\\"):
                ci += 1
                if ci >= len(chunk):
                    raise _BadPattern
            if not failed:
                failed = chunk[ci] != s[si]
                si += 1
            ci += 1
    return None if failed else si


def _path_match(pattern: str, name: str) -> bool:
    """Go's path.Match: shell globs where '*' and '?' never match '/'.

    Works on UTF-8 bytes as Go does ('*' skips bytes, '?' and [...] take a rune).
    Raises _BadPattern for a malformed pattern, even when the text does not match.
    """
    pat, text = go_bytes(pattern), go_bytes(name)
    ti = 0
    while pat:
        star, chunk, pat = _scan_chunk(pat)
        if star and not chunk:
            return text.find(b"/", ti) < 0  # trailing '*' takes the rest of the element
        t = _match_chunk(chunk, text, ti)
        if t is not None and (t == len(text) or pat):
            ti = t
            continue
        if star:
            # Let the star take one more byte at a time, never a '/'.
            matched_at: int | None = None
            i = ti
            while i < len(text) and text[i] != ord("/"):
                t = _match_chunk(chunk, text, i + 1)
                if t is not None and (pat or t == len(text)):
                    matched_at = t
                    break
                i += 1
            if matched_at is not None:
                ti = matched_at
                continue
        while pat:  # no match; still report a malformed remainder
            _, chunk, pat = _scan_chunk(pat)
            _match_chunk(chunk, b"", 0)
        return False
    return ti == len(text)


def match_prefix_patterns(globs: str, target: str) -> bool:
    """Whether a leading part of target matches one of the comma-separated path.Match globs.

    A glob with N slashes is matched against target's first N+1 elements, so
    "*.corp.example.com" matches "git.corp.example.com/a/b". Empty and malformed globs
    are ignored and a trailing slash on a glob is dropped (Go's MatchPrefixPatterns).
    """
    elems = target.split("/")
    for glob in globs.split(","):
        glob = glob.removesuffix("/")
        if not glob:
            continue
        n = glob.count("/")
        if n >= len(elems):
            continue  # target has fewer elements than the glob
        try:
            if _path_match(glob, "/".join(elems[: n + 1])):
                return True
        except _BadPattern:
            continue
    return False
