"""Just enough of x/mod/modfile to vet a go.mod body.

A caching proxy has to decide whether an upstream `.mod` reply is a go.mod at
all and which module it declares, and it has to synthesise the `module <path>`
file Go generates for modules without one. Both follow the go command exactly:
the lexer and block parser are ported from modfile/read.go and the `module`
and `go` directives are interpreted the way `modfile.ParseLax` does for a
dependency's go.mod (unknown directives are ignored).

Deliberately stricter than Go: invalid UTF-8 and NUL bytes are rejected
anywhere in the file, including comments, because a proxy has no business
caching such a body. Directives other than `module` and `go` (require,
retract, ...) are not validated.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["GoModError", "check", "go_version", "legacy_go_mod", "parse_module_path", "parse_string", "statements"]


class GoModError(ValueError):
    """The bytes are not a go.mod the go command would accept."""


# Token kinds; punctuation tokens use the character itself as their kind.
_EOF = "EOF"
_EOLCOMMENT = "EOLCOMMENT"
_COMMENT = "COMMENT"
_IDENT = "IDENT"
_STRING = "STRING"
_PUNCT = frozenset("\n()[]{},")
_EOL = frozenset({_EOF, _EOLCOMMENT, "\n"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    line: int
    col: int


@dataclass(slots=True)
class _Line:
    tokens: list[str]
    line: int


@dataclass(slots=True)
class _Block:
    tokens: list[str]
    line: int
    col: int
    lines: list[_Line] = field(default_factory=list)


def _is_print(c: str) -> bool:
    """Go's unicode.IsPrint: letters, marks, numbers, punctuation, symbols and ASCII space."""
    return c == " " or unicodedata.category(c)[0] in "LMNPS"


def _is_ident(c: str) -> bool:
    return c not in " ()[]{}," and _is_print(c)


_SPACE = re.compile(r"[ \t\r]*")
# Candidate identifier runs; characters that are not printable are cut off after matching.
_IDENT_RUN = re.compile(r"[^ \t\r\n()\[\]{},]+")
# A backslash escapes any next character, a newline included (the lexer only
# refuses a newline it meets unescaped). Without the closing quote: how far a
# string gets before an unescaped newline or the end of the input.
_STRING_BODY = {'"': re.compile(r'"(?:[^"\\\n]|\\.)*', re.S), "`": re.compile(r"`[^`\n]*")}


class _Lexer:
    """modfile's lexer over already-validated text, with one token of lookahead."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1
        self._bol = 0  # offset where the current line begins
        self.token = self._read()

    def error(self, msg: str, line: int | None = None, col: int | None = None) -> GoModError:
        line = self._line if line is None else line
        col = self._pos - self._bol + 1 if col is None else col
        return GoModError(f"go.mod:{line}:{col}: {msg}" if col > 1 else f"go.mod:{line}: {msg}")

    def _skip(self, n: int) -> None:
        chunk = self._text[self._pos : self._pos + n]
        if nl := chunk.count("\n"):
            self._line += nl
            self._bol = self._pos + chunk.rindex("\n") + 1
        self._pos += n

    def lex(self) -> _Token:
        tok = self.token
        self.token = self._read()
        return tok

    def _read(self) -> _Token:
        text = self._text
        if (space := _SPACE.match(text, self._pos)) is not None:
            self._skip(space.end() - self._pos)
        start, line, col = self._pos, self._line, self._pos - self._bol + 1
        if start >= len(text):
            return _Token(_EOF, "", line, col)
        if text.startswith("//", start):
            # A comment alone on its line is handed to the parser as such; after
            # other tokens it ends that line.
            suffix = bool(text[self._bol : start].strip())
            end = text.find("\n", start)
            end = len(text) if end < 0 else end + 1
            self._skip(end - start)
            body = text[start:end].removesuffix("\n").removesuffix("\r")
            return _Token(_EOLCOMMENT if suffix else _COMMENT, body, line, col)
        if text.startswith("/*", start):
            raise self.error("mod files must use // comments (not /* */ comments)")
        c = text[start]
        if c in _PUNCT:
            self._skip(1)
            return _Token(c, c, line, col)
        if c in _STRING_BODY:
            quoted = _STRING_BODY[c].match(text, start)
            stop = start + 1 if quoted is None else quoted.end()
            if stop < len(text) and text[stop] == c:
                self._skip(stop + 1 - start)
                return _Token(_STRING, text[start : stop + 1], line, col)
            if stop >= len(text) or text[stop] == "\\":  # a backslash can only stop us at EOF
                raise self.error("unexpected EOF in string", line, col)
            self._skip(stop - start)
            raise self.error("unexpected newline in string")
        run = m[0] if (m := _IDENT_RUN.match(text, start)) else ""
        if not (run.isascii() and run.isprintable()):
            for i, d in enumerate(run):
                if not _is_ident(d):
                    run = run[:i]
                    break
        if not run:
            raise self.error(f"unexpected input character {_go_char(c)}")
        cuts = [i for i in (run.find("//"), run.find("/*")) if i >= 0]
        if cuts:
            cut = min(cuts)
            if run.startswith("/*", cut):
                self._skip(cut)
                raise self.error("mod files must use // comments (not /* */ comments)")
            run = run[:cut]
        self._skip(len(run))
        return _Token(_IDENT, run, line, col)


def _go_char(c: str) -> str:
    """Render a rune like Go's %#q: backquoted when printable, else quoted."""
    if _is_print(c) and c != "`":
        return f"`{c}`"
    return "'" + _quote_body(c, "'") + "'"


def _parse_syntax(text: str) -> list[_Line | _Block]:
    """modfile's parseFile/parseStmt/parseLineBlock, keeping only statements."""
    lx = _Lexer(text)
    stmts: list[_Line | _Block] = []
    while True:
        kind = lx.token.kind
        if kind == _EOF:
            return stmts
        if kind in ("\n", _COMMENT):
            lx.lex()
            continue
        first = lx.lex()
        tokens = [first.text]
        while True:
            tok = lx.lex()
            if tok.kind in _EOL:
                stmts.append(_Line(tokens, first.line))
                break
            if tok.kind == "(":
                if lx.token.kind in _EOL:
                    stmts.append(_parse_block(lx, _Block(tokens, first.line, first.col)))
                    break
                if lx.token.kind == ")":
                    rparen = lx.lex()
                    if lx.token.kind in _EOL:
                        lx.lex()
                        stmts.append(_Block(tokens, first.line, first.col))
                        break
                    tokens += [tok.text, rparen.text]
                    continue
            tokens.append(tok.text)


def _parse_block(lx: _Lexer, block: _Block) -> _Block:
    while True:
        kind = lx.token.kind
        if kind in (_EOLCOMMENT, "\n", _COMMENT):
            lx.lex()
        elif kind == _EOF:
            start = f"go.mod:{block.line}:{block.col}"
            raise lx.error(f"syntax error (unterminated block started at {start})")
        elif kind == ")":
            lx.lex()
            if lx.token.kind not in _EOL:
                raise lx.error("syntax error (expected newline after closing paren)")
            lx.lex()
            return block
        else:
            first = lx.lex()
            toks = [first.text]
            while lx.token.kind not in _EOL:
                toks.append(lx.lex().text)
            lx.lex()
            block.lines.append(_Line(toks, first.line))


def _directives(stmts: list[_Line | _Block]) -> Iterator[tuple[str, list[str], int]]:
    """(verb, args, line) as ParseLax sees them; other block shapes are ignored."""
    for st in stmts:
        if isinstance(st, _Line):
            yield st.tokens[0], st.tokens[1:], st.line
        elif len(st.tokens) == 1 and st.tokens[0] in (
            "module",
            "godebug",
            "require",
            "exclude",
            "replace",
            "retract",
            "tool",
            "ignore",
        ):
            for ln in st.lines:
                yield st.tokens[0], ln.tokens, ln.line


_GO_VERSION = re.compile(r"([1-9][0-9]*)\.(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))?([a-z]+[0-9]+)?")
_LAX_GO_VERSION = re.compile(r"v?(([1-9][0-9]*)\.(0|[1-9][0-9]*))([^0-9].*)", re.S)


@dataclass(frozen=True, slots=True)
class _ModFile:
    module: str | None
    go: str | None  # None when absent or when ParseLax would reject the go lines


def _parse(data: bytes) -> _ModFile:
    if b"\x00" in data:
        raise GoModError("go.mod: unexpected NUL byte")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise GoModError(f"go.mod:{line}: invalid UTF-8") from None
    module: str | None = None
    seen_module = False
    go: str | None = None
    go_ok = True
    for verb, args, line in _directives(_parse_syntax(text)):
        if verb == "module":
            if seen_module:
                raise GoModError(f"go.mod:{line}: repeated module statement")
            seen_module = True
            if len(args) != 1:
                raise GoModError(f"go.mod:{line}: usage: module module/path")
            try:
                module = _parse_string(args[0])
            except ValueError as e:
                raise GoModError(f"go.mod:{line}: invalid quoted string: {e}") from None
        elif verb == "go":
            # ParseLax fails on these too, but only the module path is vetted here.
            if go is not None or len(args) != 1:
                go_ok = False
                continue
            if _GO_VERSION.fullmatch(args[0]):
                go = args[0]
            elif m := _LAX_GO_VERSION.fullmatch(args[0]):
                go = m[1]
            else:
                go_ok = False
    return _ModFile(module, go if go_ok else None)


def check(data: bytes) -> str | None:
    """Vet a dependency's go.mod as `modfile.ParseLax` does; the declared module path, or
    None when it has no `module` directive (the go command accepts that too)."""
    return _parse(data).module


def parse_module_path(data: bytes) -> str:
    """The path declared by a go.mod's `module` directive."""
    mf = _parse(data)
    if mf.module is None:
        raise GoModError("go.mod: missing module directive")
    return mf.module


def go_version(data: bytes) -> str | None:
    """The `go` directive as ParseLax reports it, or None if absent or the file is invalid.

    Module zip creation uses it to pick version-dependent vendor rules.
    """
    try:
        return _parse(data).go
    except GoModError:
        return None


def statements(text: str) -> list[tuple[str, list[str], int]]:
    """(verb, tokens, line) of every statement of a go.mod or go.work file, with a block's
    lines under its verb (`require (...)`); tokens are as written (see parse_string).
    GoModError if the text does not parse."""
    out: list[tuple[str, list[str], int]] = []
    for st in _parse_syntax(text):
        if isinstance(st, _Block):
            if len(st.tokens) == 1:
                out.extend((st.tokens[0], ln.tokens, ln.line) for ln in st.lines)
        else:
            out.append((st.tokens[0], st.tokens[1:], st.line))
    return out


def parse_string(tok: str) -> str:
    """A token's value (modfile's parseString); ValueError if it is malformed."""
    return _parse_string(tok)


def _parse_string(tok: str) -> str:
    """modfile's parseString: a double-quoted Go string or a bare token."""
    if tok.startswith('"'):
        return _unquote(tok)
    if any(q in tok for q in "\"'`"):
        raise ValueError("unquoted string cannot contain quote")
    return tok


_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34}
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


def _unquote(tok: str) -> str:
    """strconv.Unquote for a double-quoted literal; the result must be UTF-8."""
    if len(tok) < 2 or tok[-1] != '"' or "\n" in tok:
        raise ValueError("invalid syntax")
    body, out, i = tok[1:-1], bytearray(), 0
    while i < len(body):
        c = body[i]
        if c == '"':
            raise ValueError("invalid syntax")
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("invalid syntax")
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
        elif e in _HEX_DIGITS:
            digits = body[i : i + _HEX_DIGITS[e]]
            i += _HEX_DIGITS[e]
            if len(digits) != _HEX_DIGITS[e] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError("invalid syntax")
            v = int(digits, 16)
            if e == "x":
                out.append(v)
            elif v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
                raise ValueError("invalid syntax")
            else:
                out += chr(v).encode()
        elif e in "01234567":
            digits = body[i - 1 : i + 2]
            i += 2
            if len(digits) != 3 or not all(d in "01234567" for d in digits) or int(digits, 8) > 255:
                raise ValueError("invalid syntax")
            out.append(int(digits, 8))
        else:
            raise ValueError("invalid syntax")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("invalid UTF-8") from None


def _must_quote(s: str) -> bool:
    """modfile.MustQuote: would s not survive as a single bare go.mod token?"""
    for c in s:
        if c in " \"'`":
            return True
        if c in "()[]{},":
            if len(s) > 1:
                return True
        elif not _is_print(c):
            return True
    return s == "" or "//" in s or "/*" in s


_QUOTE_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


def _quote_body(s: str, quote: str) -> str:
    """The inside of strconv.Quote(s) (or QuoteRune with quote="'")."""
    out: list[str] = []
    for c in s:
        r = ord(c)
        if c == quote or c == "\\":
            out.append("\\" + c)
        elif 0xD800 <= r <= 0xDFFF:  # not a valid rune: Go writes U+FFFD
            out.append("\\ufffd")
        elif _is_print(c):
            out.append(c)
        elif c in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[c])
        elif r < 0x20 or r == 0x7F:
            out.append(f"\\x{r:02x}")
        elif r < 0x10000:
            out.append(f"\\u{r:04x}")
        else:
            out.append(f"\\U{r:08x}")
    return "".join(out)


def legacy_go_mod(path: str) -> bytes:
    """modfetch.LegacyGoMod: the go.mod served for a version that has none."""
    token = f'"{_quote_body(path, chr(34))}"' if _must_quote(path) else path
    return f"module {token}\n".encode()
