"""Settings: defaults < TOML file < environment < command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.config import AllowedPeer, ConfigError, Destination, Settings, load_settings


def test_defaults() -> None:
    s = load_settings(env={})
    assert (s.ae_title, s.bind, s.port, s.data_dir, s.allow_ae) == (
        "ICHTRIAGE", "127.0.0.1", 11112, Path("var"), ())
    assert s.database_url == f"sqlite:///{Path('var').resolve() / 'ichtriage.db'}"
    assert s.min_coverage_mm == 100.0
    assert load_settings(env={"ICHTRIAGE_MIN_COVERAGE_MM": "60"}).min_coverage_mm == 60.0


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('ae_title = "FROMFILE"\nport = 104\nsettle_seconds = 3.5\n'
                   'allow_ae = ["CT1", "CT2@10.0.0.5"]\n'
                   'destinations = ["PACS@pacs.example:104"]\n')
    s = load_settings(config_file=cfg, env={"ICHTRIAGE_PORT": "4242"},
                      overrides={"settle_seconds": 1.0, "ae_title": None})
    assert (s.ae_title, s.port, s.settle_seconds) == ("FROMFILE", 4242, 1.0)
    assert s.allow_ae == (AllowedPeer("CT1"), AllowedPeer("CT2", "10.0.0.5"))
    assert s.destinations == (Destination("PACS", "pacs.example", 104),)
    s = load_settings(env={"ICHTRIAGE_CONFIG": str(cfg), "ICHTRIAGE_ALLOW_AE": "A,B@h",
                           "ICHTRIAGE_DATA_DIR": "/srv/ich"})
    assert s.allow_ae == (AllowedPeer("A"), AllowedPeer("B", "h"))
    assert s.data_dir == Path("/srv/ich") and s.ae_title == "FROMFILE"


@pytest.mark.parametrize("env,match", [
    ({"ICHTRIAGE_AE_TITLE": "A" * 17}, "ae_title"),
    ({"ICHTRIAGE_PORT": "70000"}, "port"),
    ({"ICHTRIAGE_PORT": "eleven"}, "port"),
    ({"ICHTRIAGE_DESTINATIONS": "PACS@host"}, "AE@HOST:PORT"),
    ({"ICHTRIAGE_TLS_CERT": "/x.pem"}, "tls_cert and tls_key"),
    ({"ICHTRIAGE_SETTLE_SECONDS": "-1"}, "settle_seconds"),
    ({"ICHTRIAGE_MIN_COVERAGE_MM": "-5"}, "min_coverage_mm"),
    ({"ICHTRIAGE_DEFAULT_CHARACTER_SET": "Latin1"}, "default_character_set: 'Latin1'"),
    ({"ICHTRIAGE_SETTLE_SECOND": "5"},
     r"unknown environment variables \['ICHTRIAGE_SETTLE_SECOND'\] \(did you mean: "
     r"ICHTRIAGE_SETTLE_SECOND -> ICHTRIAGE_SETTLE_SECONDS\?\)"),
    ({"ICHTRIAGE_ALLOW_AE": "CT1@"}, "no host after '@'"),
    ({"ICHTRIAGE_ALLOW_AE": "CT1", "ICHTRIAGE_ALLOW_STORE_AE": "CT9"},
     r"allow_store_ae: CT9 can never associate: not in allow_ae \(CT1\)"),
    ({"ICHTRIAGE_ALLOW_AE": "CT1@10.0.0.1", "ICHTRIAGE_ALLOW_QUERY_AE": "CT1@10.0.0.2"},
     "allow_query_ae: CT1@10.0.0.2 can never associate"),
])
def test_bad_settings_are_named(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(env=env)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text("aetitle = 'X'\n")
    with pytest.raises(ConfigError, match=r"unknown settings \['aetitle'\] \(did you mean: "
                                          r"aetitle -> ae_title\?\)"):
        load_settings(config_file=cfg, env={})


def test_permissions_that_can_match_are_kept() -> None:
    s = load_settings(env={"ICHTRIAGE_ALLOW_AE": "CT1,WS@10.0.0.7",
                           "ICHTRIAGE_ALLOW_STORE_AE": "CT1@10.0.0.5",
                           "ICHTRIAGE_ALLOW_QUERY_AE": "WS,WS@10.0.0.7"})
    assert s.allow_store_ae == (AllowedPeer("CT1", "10.0.0.5"),)
    assert s.allow_query_ae == (AllowedPeer("WS"), AllowedPeer("WS", "10.0.0.7"))
    # without an allow-list every caller may associate: any permission can match
    assert load_settings(env={"ICHTRIAGE_ALLOW_STORE_AE": "CT9"}).allow_store_ae == (
        AllowedPeer("CT9"),)


def test_peer_matching() -> None:
    assert AllowedPeer.parse("CT1").matches("CT1", "10.1.1.1")
    assert AllowedPeer.parse("CT1@10.1.1.1").matches("CT1", "10.1.1.1")
    assert not AllowedPeer.parse("CT1@10.1.1.1").matches("CT1", "10.1.1.2")


def test_help_shows_defaults_and_bad_config_exits_1() -> None:
    out = subprocess.run([sys.executable, "-m", "node", "serve", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "default: ICHTRIAGE" in out and "default: 11112" in out and "--allow-ae" in out
    bad = subprocess.run([sys.executable, "-m", "node", "serve", "--port", "99999"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "port" in bad.stderr


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
