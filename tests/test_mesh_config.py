"""Mesh configuration: precedence, validation, the secret file, and "no secret, no mesh"."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from pathlib import Path

import aiohttp
import pytest

from node.cli import build_parser
from node.plugins import load_plugins
from node.settings import Flag
from sync.config import SETTINGS, MeshConfig, MeshConfigError, flags_from_args, load_mesh_config, load_secrets
from sync.plugin import MeshPlugin
from tests.mesh_fixtures import serve_args, write_secret

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_mean_mesh_off() -> None:
    cfg = load_mesh_config(None, env={})
    assert not cfg.enabled and cfg.mdns and cfg.name == "default" and cfg.peers == ()


def test_precedence_flags_over_env_over_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = write_secret(tmp_path / "s")
    section = {
        "secret_file": str(secret),
        "name": "file",
        "gossip_interval": "250ms",
        "presync_budget": "2GiB",
        "peers": ["http://a:1", "http://b:2/"],
        "bogus": 1,
    }
    with caplog.at_level(logging.WARNING):
        cfg = load_mesh_config(
            section, env={"MODMESH_MESH_NAME": "env", "MODMESH_MESH_FANOUT": "5"}, flags={"name": "flag", "mdns": None}
        )
    assert cfg.name == "flag" and cfg.fanout == 5 and cfg.gossip_interval == 0.25
    assert cfg.presync_budget == 2 << 30 and cfg.peers == ("http://a:1", "http://b:2/")
    assert cfg.secret_file == secret and cfg.enabled
    assert "unknown key 'bogus'" in caplog.text
    env_only = load_mesh_config(
        None, env={"MODMESH_MESH_SECRET_FILE": str(secret), "MODMESH_MESH_PEERS": "http://x:1,http://y:2"}
    )
    assert env_only.peers == ("http://x:1", "http://y:2") and env_only.enabled


def test_serve_flags_map_to_keys(tmp_path: Path) -> None:
    args = build_parser(load_plugins()).parse_args(
        [
            "serve",
            "--peer",
            "http://a:1",
            "--peer",
            "http://b:1",
            "--no-mdns",
            "--mesh-secret-file",
            "s",
            "--mesh-name",
            "lab",
            "--mdns-interface",
            "eth0",
            "--mdns-interface",
            "eth1",
        ]
    )
    assert flags_from_args(args) == {
        "peers": ["http://a:1", "http://b:1"],
        "mdns": False,
        "secret_file": Path("s"),
        "name": "lab",
        "mdns_interfaces": ["eth0", "eth1"],
    }
    plain = build_parser(load_plugins()).parse_args(["serve"])
    assert all(v is None for v in flags_from_args(plain).values())


@pytest.mark.parametrize(
    "flags, match",
    [
        ({"peers": ["http://a:1"]}, "static peers configured but no shared secret"),
        ({"mdns": True}, "mDNS discovery configured but no shared secret"),
        ({"mdns_interfaces": ["eth0"]}, "no shared secret"),
    ],
)
def test_mesh_requested_without_secret_is_refused(flags: dict[str, object], match: str) -> None:
    with pytest.raises(MeshConfigError, match=match):
        load_mesh_config(None, env={}, flags=flags)


@pytest.mark.parametrize(
    "section, match",
    [
        ({"name": "bad name!"}, "mesh name"),
        ({"peers": ["ftp://x"]}, "http:// or https://"),
        ({"peers": ["http://u:p@x"]}, "credentials"),
        ({"suspect_after": "5s", "dead_after": "5s"}, "dead_after"),
        ({"inventory_page": 1001}, "inventory_page"),
        ({"fanout": 0}, "fanout"),
        ({"gossip_interval": "soon"}, "duration"),
    ],
)
def test_invalid_values(tmp_path: Path, section: dict[str, object], match: str) -> None:
    secret = write_secret(tmp_path / "s")
    with pytest.raises(MeshConfigError, match=match):
        load_mesh_config({"secret_file": str(secret), **section}, env={})


def test_secret_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = tmp_path / "s"
    p.write_text("\n  new-secret-0123456789  \nold-secret-0123456789\n\n")
    p.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert load_secrets(p) == (b"new-secret-0123456789", b"old-secret-0123456789")
    assert "readable by other users" in caplog.text
    p.write_text("\n \n")
    with pytest.raises(MeshConfigError, match="empty"):
        load_secrets(p)
    with pytest.raises(MeshConfigError, match="cannot read"):
        load_secrets(tmp_path / "missing")


async def test_no_secret_no_mesh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from node.service import Node
    from tests.node_fixtures import node_config

    caplog.set_level(logging.INFO, logger="sync")
    node = Node(node_config(tmp_path / "n", "off"))
    await node.start()
    plugin = MeshPlugin(env={})
    try:
        await plugin.start(node, serve_args())
        await node.listen("127.0.0.1", 0)
        assert plugin.mesh is None and node.hooks.peers is None
        assert "mesh off" in caplog.text
        async with aiohttp.ClientSession() as s, s.get(node.url + "/_mesh/status") as r:
            assert r.status == 404  # no mesh routes at all
    finally:
        await plugin.aclose()
        await node.aclose()


async def test_serve_refuses_peers_without_secret(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "node.cli",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data",
        str(tmp_path / "d"),
        "--upstream",
        "off",
        "--sumdb",
        "off",
        "--peer",
        "http://127.0.0.1:9",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err
    assert "no shared secret" in err.decode() and "--mesh-secret-file" in err.decode()


async def test_plugin_close_releases_hooks(tmp_path: Path) -> None:
    from node.service import Node
    from tests.node_fixtures import node_config

    node = Node(
        node_config(tmp_path / "n", "off", sections={"mesh": {"secret_file": str(write_secret(tmp_path / "s"))}})
    )
    await node.start()
    plugin = MeshPlugin(env={})
    before = (list(node.hooks.observers), list(node.hooks.access), list(node.hooks.authenticators))
    try:
        await plugin.start(node, serve_args())
        await node.listen("127.0.0.1", 0)
        assert node.hooks.peers is not None and len(node.hooks.authenticators) == len(before[2]) + 1
    finally:
        await plugin.aclose()
    assert node.hooks.peers is None
    assert (node.hooks.observers, node.hooks.access, node.hooks.authenticators) == before
    await node.aclose()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("mesh:") and not t.done()]


# ---- the declarations and what is derived from them ------------------------------------

#: The [mesh] keys and their defaults; each also reads MODMESH_MESH_<KEY>.
MESH_CONTRACT: dict[str, object] = {
    "secret_file": None,
    "name": "default",
    "peers": (),
    "mdns": True,
    "mdns_interfaces": (),
    "advertise": "",
    "gossip_interval": 2.0,
    "fanout": 3,
    "request_timeout": 5.0,
    "suspect_after": 10.0,
    "dead_after": 30.0,
    "dead_failures": 3,
    "retry_backoff": 1.0,
    "retry_backoff_max": 60.0,
    "forget_after": 3600.0,
    "auth_window": 30.0,
    "peer_timeout": 2.0,
    "quarantine": 600.0,
    "half_life": 3600.0,
    "popular_top_n": 128,
    "presync": True,
    "presync_interval": 10.0,
    "presync_top_k": 200,
    "presync_min_score": 2.0,
    "presync_budget": 10 << 30,
    "presync_concurrency": 2,
    "presync_bandwidth": 0,
    "inventory_page": 1000,
    "max_catalog": 1_000_000,
}
#: The serve flags the plugin adds: (setting, metavar, repeatable, switch).
MESH_FLAGS = {
    "--peer": ("peers", "URL", True, False),
    "--no-mdns": ("mdns", None, False, True),
    "--mesh-secret-file": ("secret_file", "FILE", False, False),
    "--mesh-name": ("name", "NAME", False, False),
    "--mdns-interface": ("mdns_interfaces", "IFACE", True, False),
}


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser(load_plugins())._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["serve"]
    return parser


def test_declarations_keep_the_contract() -> None:
    assert {s.toml: SETTINGS.default(s) for s in SETTINGS.all} == MESH_CONTRACT
    assert [SETTINGS.env_var(s) for s in SETTINGS.all] == [f"MODMESH_MESH_{k.upper()}" for k in MESH_CONTRACT]
    assert [f.name for f in dataclasses.fields(MeshConfig)] == list(MESH_CONTRACT)
    actions = {a.option_strings[0]: a for a in _serve_parser()._actions if a.option_strings}
    for flag, (name, metavar, repeatable, switch) in MESH_FLAGS.items():
        a = actions[flag]
        assert (SETTINGS.by_name[name].flag or Flag("")).spelling == flag
        assert (a.metavar, isinstance(a, argparse._AppendAction), a.nargs == 0) == (metavar, repeatable, switch)
        assert a.default is None
    assert actions["--mesh-secret-file"].type is Path
    assert {s.flag.spelling for s in SETTINGS.all if s.flag} == MESH_FLAGS.keys()


@pytest.mark.parametrize(
    "name, value, parsed",
    [
        ("advertise", "http://10.0.0.1:3000", "http://10.0.0.1:3000"),
        ("mdns", "false", False),
        ("mdns_interfaces", "eth0,eth1", ("eth0", "eth1")),
        ("quarantine", "5m", 300.0),
        ("presync_bandwidth", "20MB", 20 * 10**6),
        ("max_catalog", "10", 10),
    ],
)
def test_environment_variables(tmp_path: Path, name: str, value: str, parsed: object) -> None:
    env = {"MODMESH_MESH_SECRET_FILE": str(write_secret(tmp_path / "s")), f"MODMESH_MESH_{name.upper()}": value}
    assert getattr(load_mesh_config(None, env=env), name) == parsed


def test_serve_help_shows_the_declared_help() -> None:
    text = " ".join(_serve_parser().format_help().split())
    for s in SETTINGS.all:
        if s.flag is not None:
            assert " ".join((s.flag.help or s.help).split()) in text, s.name
    assert "network interface for mDNS (repeatable; default: all)" in text
