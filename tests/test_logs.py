"""Issue 18: what a client sends cannot forge or corrupt a log line. In text logs every
control character (C0, DEL, C1), line separator, bidi control and undecodable byte is
escaped, and field values are quoted when they hold a space, `=` or `"`; JSON logs
escape them by construction and read back exactly."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import pytest

from node.logs import JsonFormatter, TextFormatter, escape
from tests.node_process import free_port, serve_process

FORGED = "2026-01-01 00:00:00,000 error modmesh.access: GET /forged 500"
NASTY = "/evil\n" + FORGED + "\x1b[31mred\x07\r\x00\x7f\x85\u2028\u202e\udcff\\x0a"


def record(msg: str, *args: object, fields: dict[str, object] | None = None) -> logging.LogRecord:
    r = logging.LogRecord("modmesh.access", logging.INFO, __file__, 1, msg, args, None)
    if fields is not None:
        r.fields = fields
    return r


def test_escape_leaves_ordinary_text_alone_and_escapes_the_rest() -> None:
    for ok in ("/example.com/hello/@v/v1.0.0.info", "/caf\u00e9/\u4e16\u754c", "tab-less text with spaces"):
        assert escape(ok) is ok
    assert escape("a\nb") == "a\\nb"
    assert escape("\x1b[31m") == "\\x1b[31m"
    assert escape("\x85\x9f\x7f\x00") == "\\x85\\x9f\\x7f\\x00"
    assert escape("\u2028\u2029\u202e") == "\\u2028\\u2029\\u202e"
    assert escape("\udcff") == "\\udcff"
    assert escape("\\n") == "\\\\n"  # a literal backslash cannot pass for an escape


def test_text_line_is_one_line_whatever_the_path() -> None:
    line = TextFormatter().format(
        record("%s %s %s", "GET", NASTY, 404, fields={"path": NASTY, "status": 404, "module": "a b=c", "x": ""})
    )
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x85" not in line
    assert "\u2028" not in line and "\u202e" not in line
    line.encode("utf-8")  # no lone surrogate left
    assert line.count("\\n") == 2 and "\\x1b[31m" in line
    fields = line.split(" status=", 1)[1]
    assert fields.startswith('404 module="a b=c" x=""'), fields


def test_text_traceback_lines_are_indented_and_escaped() -> None:
    try:
        raise ValueError("bad\n" + FORGED + "\x1b]0;title\x07")
    except ValueError:
        r = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("/p\n",), sys.exc_info())
    text = TextFormatter().format(r)
    first, *rest = text.split("\n")
    assert first.endswith("failed /p\\n")
    assert rest and all(line.startswith("  ") for line in rest), rest
    assert "\x1b" not in text and not any(line.startswith("2026") for line in rest)


def test_json_line_is_one_line_and_reads_back_exactly() -> None:
    line = JsonFormatter().format(record("%s %s", "GET", NASTY, fields={"path": NASTY}))
    assert "\n" not in line and "\x1b" not in line and line.isascii()
    out = json.loads(line)
    assert out["path"] == NASTY and out["msg"] == "GET " + NASTY


async def test_a_newline_in_a_request_path_leaves_one_log_line(fake_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The real `modmesh serve --log-format text`: a path with %0A, %1B, %C2%85 (NEL) and
    %E2%80%A8 (line separator) is one line on stderr, with each of them escaped."""
    up = await fake_proxy()
    port = free_port()
    async with serve_process(tmp_path / "data", up.url, port, "--log-level", "info") as proc:
        target = "/evil%0A" + FORGED.replace(" ", "%20") + "%1B[31m%C2%85%E2%80%A8%FF/@v/list"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 4"), answer[:200]
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        err = (await asyncio.wait_for(proc.stderr.read(), 20)).decode("utf-8", "replace")
        await proc.wait()
    lines = err.splitlines()  # splitlines() also splits at \x85, \u2028, \x1c..\x1e
    evil = [ln for ln in lines if "evil" in ln]
    assert len(evil) == 1, evil
    for ln in evil:
        assert ln.startswith(tuple("0123456789")) and " modmesh.access: GET /evil\\n2026-01-01" in ln, ln
        assert "\\x1b[31m\\x85\\u2028" in ln, ln
    assert not [ln for ln in lines if ln.startswith(FORGED[:10])], err[-2000:]
    assert "\x1b" not in err


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_setup_logging_formats(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    from node.logs import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("info", fmt)
        logging.getLogger("modmesh.access").info("%s", NASTY, extra={"fields": {"path": NASTY}})
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.endswith("\n"), err
