"""README.md's settings tables list exactly the declared settings, with their flags.

The node's table is under "Configuration", the mesh's `[mesh]` table under "The LAN
mesh". A row's first column holds one or more keys (`a`, `b`; `[[route]]` for an array
of tables; `-` for a row that is no setting, `--config`); its second the flags; its
third the defaults, checked against the declarations where there is a `value` per key
(or "none"/"empty").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.config import SETTINGS as NODE
from node.settings import ConfigError, Settings
from sync.config import SETTINGS as MESH

README = Path(__file__).resolve().parent.parent / "README.md"

#: Section heading -> the settings its table documents.
TABLES: dict[str, Settings[Any]] = {"Configuration": NODE, "The LAN mesh": MESH}
#: Flags a table may list that belong to no setting.
NOT_SETTINGS = {"--config"}

_CELL_SPLIT = re.compile(r"(?<!\\)\|")


def settings_tables(text: str) -> dict[str, list[list[str]]]:
    """{section heading: rows (cells) of its settings table}; a settings table is one
    whose header starts with "Key"."""
    tables: dict[str, list[list[str]]] = {}
    section = ""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        prev = lines[i - 1] if i else ""
        if not line.startswith("|") or prev.startswith("|"):
            continue  # not the first line of a table
        header = [c.strip() for c in _CELL_SPLIT.split(line.strip())[1:-1]]
        if not header or not header[0].startswith("Key"):
            continue
        if section in tables:
            raise AssertionError(f"README section {section!r} has two settings tables")
        rows = []
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            rows.append([c.strip() for c in _CELL_SPLIT.split(row.strip())[1:-1]])
        tables[section] = rows
    return tables


def _names(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def problems(text: str) -> list[str]:
    """What is wrong with the settings tables of a README text (empty: nothing)."""
    out: list[str] = []
    tables = settings_tables(text)
    for section in tables.keys() - TABLES.keys():
        out.append(f"a settings table under {section!r}, where no settings are declared")
    for section, settings in TABLES.items():
        rows = tables.get(section)
        if rows is None:
            out.append(f"no settings table under {section!r}")
            continue
        listed: list[str] = []
        for cells in rows:
            keys = [k.removeprefix("[[").removesuffix("]]") for k in _names(cells[0])]
            listed += keys
            out += [f"{section}: {p}" for p in _row_problems(settings, keys, cells)]
        for key in sorted(settings.by_toml.keys() - set(listed)):
            out.append(f"{section}: declared setting {key!r} is missing from the table")
        for key in sorted({k for k in listed if listed.count(k) > 1}):
            out.append(f"{section}: {key!r} is listed more than once")
    return out


def _row_problems(settings: Settings[Any], keys: list[str], cells: list[str]) -> list[str]:
    out: list[str] = []
    flag_cell, default_cell = [*cells, "", ""][1:3]
    flags = {f.split()[0] for f in _names(flag_cell) if f.startswith("--")}
    defaults = _names(default_cell)
    for flag in flags - NOT_SETTINGS - {s.flag.spelling for k in keys if (s := settings.by_toml.get(k)) and s.flag}:
        out.append(f"row {cells[0]} lists {flag}, which is not the flag of its key(s)")
    for i, key in enumerate(keys):
        s = settings.by_toml.get(key)
        if s is None:
            out.append(f"{key!r} is listed but not a declared setting")
            continue
        if s.flag is not None and s.flag.spelling not in flags:
            out.append(f"{key!r} has the flag {s.flag.spelling}, not listed in its row")
        declared = settings.default(s)
        if default_cell in ("none", "empty") and declared not in (None, (), ""):
            out.append(f"{key!r} is shown with no default, declared {declared!r}")
        if len(defaults) == len(keys):  # a `value` per key: the declared default
            try:
                same = settings.parse(s, defaults[i]) == declared
            except ConfigError:
                same = False
            if not same:
                out.append(f"{key!r} is shown with default {defaults[i]!r}, declared {declared!r}")
    return out


def test_readme_tables_list_every_declared_setting() -> None:
    assert problems(README.read_text()) == []


def test_the_tables_are_found() -> None:
    tables = settings_tables(README.read_text())
    assert set(tables) == set(TABLES)
    assert all(len(rows) > 10 for rows in tables.values())


@pytest.mark.parametrize(
    "edit, complaint",
    [
        (
            lambda t: t.replace("| `write_idle_timeout` |", "| `write_idle_timeout_x` |"),
            "'write_idle_timeout' is missing",
        ),
        (
            lambda t: t.replace("| `write_idle_timeout` |", "| `write_idle_timeout_x` |"),
            "'write_idle_timeout_x' is listed",
        ),
        (lambda t: t.replace("`client_rate`, `client_burst`", "`client_rate`"), "'client_burst' is missing"),
        (lambda t: t.replace("`gossip_interval`, `fanout`", "`gossip_interval`"), "'fanout' is missing"),
        (lambda t: t.replace("| `name` |", "| `name` |\n| `name` |"), "'name' is listed more than once"),
        (lambda t: t.replace("| `max_size` | `--max-size SIZE` |", "| `max_size` | |"), "has the flag --max-size"),
        (lambda t: t.replace("| `mdns` | `--no-mdns` |", "| `mdns` | `--mdns` |"), "lists --mdns"),
        (lambda t: t.replace("| `negative_ttl` | | `60s` |", "| `negative_ttl` | | `90s` |"), "default '90s'"),
        (lambda t: t.replace("`10GiB`, `2`, `0` (unlimited)", "`10GiB`, `3`, `0` (unlimited)"), "default '3'"),
        (
            lambda t: t.replace(
                "| `listen` | `--listen HOST:PORT` | `127.0.0.1:3000` |", "| `listen` | `--listen HOST:PORT` | none |"
            ),
            "'listen' is shown with no default",
        ),
        (lambda t: t.replace("## The LAN mesh", "## The mesh"), "no settings table under 'The LAN mesh'"),
    ],
)
def test_a_wrong_table_is_noticed(edit: Callable[[str], str], complaint: str) -> None:
    found = problems(edit(README.read_text()))
    assert any(complaint in p for p in found), found
