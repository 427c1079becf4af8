from __future__ import annotations

from pathlib import Path

import pytest

from node.config import Config, ConfigError, default_data_dir, load_config, parse_duration, parse_size


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
