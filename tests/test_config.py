from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node.cli import build_parser
from node.config import (
    SETTINGS,
    Config,
    ConfigError,
    default_data_dir,
    load_config,
    parse_duration,
    parse_size,
    parse_sumdb,
)
from node.settings import Flag, parse_bool, parse_int, parse_list, parse_path


def test_precedence_flags_env_file_defaults(tmp_path: Path) -> None:
    f = tmp_path / "modmesh.toml"
    f.write_text('listen = "127.0.0.1:4000"\nupstream = "https://file"\nmeta_ttl = "2m"\nread_timeout = 7\n')
    env = {"MODMESH_UPSTREAM": "https://env", "MODMESH_META_TTL": "90s"}
    cfg = load_config(f, env=env, flags={"upstream": "https://flag", "data": tmp_path / "d"})
    assert cfg.upstream == "https://flag"  # flag beats env beats file
    assert cfg.meta_ttl == 90  # env beats file
    assert cfg.listen == "127.0.0.1:4000" and cfg.read_timeout == 7  # file beats default
    assert cfg.connect_timeout == Config().connect_timeout  # default
    assert cfg.data == tmp_path / "d"


def test_unknown_key_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "c.toml"
    f.write_text("no_such_key = 1\n")
    load_config(f, env={})
    assert "unknown key 'no_such_key'" in caplog.text


@pytest.mark.parametrize("text", ['listen = "nope"', 'meta_ttl = "soon"', "[[[", 'log_format = "xml"'])
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError):
        load_config(f, env={})


def test_units() -> None:
    assert parse_duration("250ms") == 0.25 and parse_duration("5m") == 300 and parse_duration(3) == 3
    assert parse_size("4MiB") == 4 << 20 and parse_size("50GB") == 50 * 10**9 and parse_size(10) == 10


def test_default_data_dir() -> None:
    assert default_data_dir({"STATE_DIRECTORY": "/var/lib/modmesh"}) == Path("/var/lib/modmesh")
    assert default_data_dir({"HOME": "/home/u"}) == Path("/home/u/.local/share/modmesh")


# ---- the declarations and what is derived from them ------------------------------------

#: The contract other tooling drives: every TOML key with its default (`data`'s depends
#: on the environment). The environment variable of each is MODMESH_<KEY> (upper-case),
#: except [[route]], which only the file has.
CONTRACT: dict[str, object] = {
    "listen": "127.0.0.1:3000",
    "upstream": "https://proxy.golang.org",
    "connect_timeout": 5.0,
    "read_timeout": 30.0,
    "small_timeout": 60.0,
    "breaker_threshold": 3,
    "breaker_reset": 30.0,
    "meta_ttl": 300.0,
    "meta_stale_window": 300.0,
    "negative_ttl": 60.0,
    "stream_threshold": 4 << 20,
    "write_idle_timeout": 60.0,
    "head_timeout": 60.0,
    "passthrough_memory": 512 << 20,
    "memory_cache": 64 << 20,
    "check_on_serve": True,
    "scrub_period": 7 * 86400.0,
    "scrub_rate": 8 << 20,
    "max_size": None,
    "sumdb": ("sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8",),
    "sumdb_verify": "sumdb",
    "private": "",
    "nosumdb": "",
    "sumdb_latest_ttl": 60.0,
    "trust_env": False,
    "offline": False,
    "route": (),
    "direct_timeout": 300.0,
    "direct_jobs": 4,
    "client_tokens_file": None,
    "client_basic_file": None,
    "client_rate": 0.0,
    "client_burst": 50,
    "admin_token_file": None,
    "tls_cert_file": None,
    "tls_key_file": None,
    "log_level": "info",
    "log_format": "json",
}
#: `modmesh serve` flags: (setting, metavar, repeatable, switch).
FLAGS = {
    "--listen": ("listen", "HOST:PORT", False, False),
    "--data": ("data", "DIR", False, False),
    "--upstream": ("upstream", "GOPROXY-STRING", False, False),
    "--sumdb": ("sumdb", "'NAME+KEY URL'", True, False),
    "--log-level": ("log_level", None, False, False),
    "--log-format": ("log_format", None, False, False),
    "--offline": ("offline", None, False, True),
    "--max-size": ("max_size", "SIZE", False, False),
}


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["serve"]
    return parser


def test_declarations_keep_the_contract() -> None:
    declared = {s.toml: SETTINGS.default(s) for s in SETTINGS.all}
    assert declared.pop("data") == default_data_dir()
    assert declared == CONTRACT
    assert {SETTINGS.env_var(s) for s in SETTINGS.all} - {None} == {
        f"MODMESH_{k.upper()}" for k in [*CONTRACT, "data"] if k != "route"
    }
    assert [f.name for f in dataclasses.fields(Config)] == [s.name for s in SETTINGS.all] + ["sections"]


def test_serve_flags_keep_their_spelling() -> None:
    actions = {a.option_strings[0]: a for a in _serve_parser()._actions if a.option_strings}
    assert FLAGS.keys() | {"--config", "-h"} <= actions.keys()
    for flag, (name, metavar, repeatable, switch) in FLAGS.items():
        a = actions[flag]
        assert (SETTINGS.by_name[name].flag or Flag("")).spelling == flag
        assert (a.metavar, isinstance(a, argparse._AppendAction), a.nargs == 0) == (metavar, repeatable, switch)
        assert a.default is None  # not given: the environment, file or default decides
    assert actions["--log-level"].choices == ("debug", "info", "warning", "error")
    assert actions["--log-format"].choices == ("json", "text")
    assert actions["--data"].type is Path and actions["--config"].type is Path


def _sample(name: str) -> tuple[str, object]:
    """A value for a setting as the environment gives it, and what it parses to."""
    s = SETTINGS.by_name[name]
    default = SETTINGS.default(s)
    if s.choices:
        choice = next(c for c in s.choices if c != default)
        return choice, choice
    samples: dict[Callable[[object], Any] | None, tuple[str, object]] = {
        parse_duration: ("7s", 7.0),
        parse_int: ("7", 7),
        parse_size: ("7MiB", 7 << 20),
        parse_bool: ("yes", True),
        parse_list: ("a, b", ("a", "b")),
        parse_sumdb: ("a, b", ("a", "b")),
        parse_path: ("/x/y", Path("/x/y")),
    }
    special = {
        "listen": ("10.0.0.1:4000", "10.0.0.1:4000"),
        "log_level": ("debug", "debug"),
        "check_on_serve": ("no", False),  # on by default
    }
    return special.get(name) or samples.get(s.parse) or ("x", "x")


@pytest.mark.parametrize("name", [s.name for s in SETTINGS.all if s.env])
def test_every_setting_reads_its_environment_variable(name: str, tmp_path: Path) -> None:
    value, parsed = _sample(name)
    env = {f"MODMESH_{name.upper()}": value}
    if name in ("tls_cert_file", "tls_key_file"):  # they go together
        env |= {"MODMESH_TLS_CERT_FILE": value, "MODMESH_TLS_KEY_FILE": value}
    cfg = load_config(None, env=env)
    assert getattr(cfg, name) == parsed != getattr(Config(), name)
    default = getattr(Config(), name)
    if default is not None:  # (a None flag is a flag not given)
        flagged = load_config(None, env=env, flags={name: default})
        assert getattr(flagged, name) == default  # a flag beats the environment


def test_serve_flags_become_settings(tmp_path: Path) -> None:
    argv = ["serve", "--listen", "0.0.0.0:4000", "--data", str(tmp_path), "--upstream", "off"]
    argv += ["--sumdb", "a+1+k", "--sumdb", "b+1+k", "--log-level", "debug", "--log-format", "text"]
    argv += ["--offline", "--max-size", "5GB", "--config", str(tmp_path / "c.toml")]
    args = build_parser().parse_args(argv)
    flags = SETTINGS.flags_from_args(args)
    cfg = load_config(None, env={"MODMESH_LISTEN": "127.0.0.1:1", "MODMESH_OFFLINE": "0"}, flags=flags)
    assert (cfg.listen, cfg.data, cfg.upstream, cfg.sumdb) == ("0.0.0.0:4000", tmp_path, "off", ("a+1+k", "b+1+k"))
    assert (cfg.log_level, cfg.log_format, cfg.offline, cfg.max_size) == ("debug", "text", True, 5 * 10**9)
    assert args.config == tmp_path / "c.toml"
    none = SETTINGS.flags_from_args(build_parser().parse_args(["serve"]))
    assert none.keys() == {name for name, *_ in FLAGS.values()} and set(none.values()) == {None}
    assert load_config(None, env={"MODMESH_SUMDB": "off"}).sumdb == ()


def test_serve_help_shows_the_declared_help() -> None:
    text = " ".join(_serve_parser().format_help().split())
    for s in SETTINGS.all:
        if s.flag is not None:
            assert " ".join(s.help.split()) in text, s.name
    assert "(repeatable; default: sum.golang.org)" in text and "(default: 127.0.0.1:3000)" in text


@pytest.mark.parametrize(
    "text, message",
    [
        ('sumdb_verify = "maybe"', "sumdb_verify must be 'sumdb', 'require' or 'off', not 'maybe'"),
        ('log_format = "xml"', "log_format must be 'json' or 'text', not 'xml'"),
        ('meta_ttl = "soon"', "config key 'meta_ttl': 'soon' is not a duration"),
        ('max_size = "lots"', "config key 'max_size': 'lots' is not a size"),
        ("route = 1", "'route' must be a list of tables"),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f, env={})
    assert message in str(e.value) and "\n" not in str(e.value)
