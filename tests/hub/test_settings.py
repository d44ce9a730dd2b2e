"""The hub's settings file: strict, and every error names the file and the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from incisive_hub.settings import (
    DEFAULT_GROUP_ROLES,
    HubSettings,
    SettingsError,
    load_settings,
    parse_settings,
)
from incisive_lab.access import LoA


@pytest.fixture
def base(tmp_path: Path) -> dict[str, Any]:
    secret = tmp_path / "secret"
    secret.write_text("s" * 32 + "\n")
    secret.chmod(0o600)
    state = tmp_path / "state"
    state.mkdir()
    (state / "gateway.json").write_text(json.dumps({"broker": "http://127.0.0.1:1/",
                                                    "nodes": {"a": "http://127.0.0.1:2/"}}))
    return {"issuer": "http://127.0.0.1:9000", "client_id": "incisive-hub",
            "client_secret_file": str(secret), "audience": "https://federation.example/",
            "state_dir": str(state)}


def write(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(values))
    return path


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path, base: dict[str, Any]) -> None:
    s = load_settings(write(tmp_path, base))
    assert isinstance(s, HubSettings)
    assert s.issuer == "http://127.0.0.1:9000" and s.client_secret() == "s" * 32
    assert s.gateway_config == tmp_path / "state" / "gateway.json"
    assert (s.ip, s.port, s.hub_port, s.proxy_api_port) == ("127.0.0.1", 8000, 0, 0)
    assert s.minimum_loa is LoA.SUBSTANTIAL
    assert s.group_roles == dict(DEFAULT_GROUP_ROLES)
    assert s.sandbox is True and s.allow_rlimit_fallback is False
    assert (s.mem_limit, s.cpu_limit, s.pids_limit) == (2 << 30, 1.0, 512)
    assert "openid" in s.scopes and "groups" in s.scopes
    assert s.callback_url == "http://127.0.0.1:8000/hub/oauth_callback"


def test_environment_variable_names_the_file(tmp_path: Path, base: dict[str, Any],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INCISIVE_HUB_CONFIG", raising=False)
    with pytest.raises(SettingsError, match="INCISIVE_HUB_CONFIG is not set"):
        load_settings()
    monkeypatch.setenv("INCISIVE_HUB_CONFIG", str(write(tmp_path, base)))
    assert load_settings().client_id == "incisive-hub"
    monkeypatch.setenv("INCISIVE_HUB_CONFIG", str(tmp_path / "missing.json"))
    with pytest.raises(SettingsError, match=r"missing\.json"):
        load_settings()


def test_values_are_parsed(tmp_path: Path, base: dict[str, Any]) -> None:
    s = parse_settings({**base, "mem_limit": "512M", "cpu_limit": 2, "minimum_loa": "high",
                        "group_roles": {"/g/x": "auditor"}, "sandbox": False,
                        "scopes": ["openid", "groups"], "port": 8123}, source=tmp_path / "s.json")
    assert s.mem_limit == 512 << 20 and s.cpu_limit == 2.0 and s.minimum_loa is LoA.HIGH
    assert s.group_roles == {"/g/x": "auditor"} and s.sandbox is False
    assert s.public_url == "http://127.0.0.1:8123"


@pytest.mark.parametrize(("change", "message"), [
    ({"secret_backdoor": True}, "unknown setting 'secret_backdoor'"),
    ({"issuer": "http://idp.example.org"}, "issuer must be an https URL"),
    ({"audience": "node-a"}, "audience must be an absolute URI"),
    ({"minimum_loa": "medium"}, "minimum_loa: unknown eIDAS level"),
    ({"group_roles": {"/g": "superuser"}}, r"group_roles\['/g'\] must be one of"),
    ({"group_roles": {}}, "group_roles must be a non-empty object"),
    ({"mem_limit": "lots"}, "mem_limit must be bytes or a size"),
    ({"mem_limit": "1M"}, "mem_limit must be at least 64M"),
    ({"cpu_limit": 0}, "cpu_limit must be a number"),
    ({"pids_limit": 2}, "pids_limit must be an integer from 16"),
    ({"port": "8000"}, "port must be an integer"),
    ({"sandbox": "yes"}, "sandbox must be true or false"),
    ({"scopes": ["profile"]}, "scopes must include 'openid'"),
    ({"ledger_origin": "a b"}, "ledger_origin must not contain spaces"),
    ({"gateway_config": "/nonexistent/gateway.json"}, "gateway_config /nonexistent"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, base: dict[str, Any],
                                               change: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as err:
        load_settings(write(tmp_path, {**base, **change}))
    assert "settings.json" in str(err.value)


def test_missing_required_key_and_bad_json(tmp_path: Path, base: dict[str, Any]) -> None:
    values = dict(base)
    del values["audience"]
    with pytest.raises(SettingsError, match="missing required setting 'audience'"):
        load_settings(write(tmp_path, values))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(SettingsError, match=r"bad\.json is not valid JSON"):
        load_settings(bad)
    bad.write_text("[]")
    with pytest.raises(SettingsError, match="must be a JSON object"):
        load_settings(bad)


def test_client_secret_file_must_be_private_and_hold_a_secret(
        tmp_path: Path, base: dict[str, Any]) -> None:
    secret = Path(base["client_secret_file"])
    secret.chmod(0o644)
    with pytest.raises(SettingsError, match=r"readable by others .*chmod 600"):
        load_settings(write(tmp_path, base))
    secret.chmod(0o600)
    secret.write_text("short")
    with pytest.raises(SettingsError, match="holds no secret"):
        load_settings(write(tmp_path, base))
    secret.unlink()
    with pytest.raises(SettingsError, match="client_secret_file"):
        load_settings(write(tmp_path, base))


def test_gateway_file_must_name_broker_and_nodes(tmp_path: Path, base: dict[str, Any]) -> None:
    gateway = Path(base["state_dir"]) / "gateway.json"
    gateway.write_text(json.dumps({"broker": "http://127.0.0.1:1/"}))
    with pytest.raises(SettingsError, match="must be an object with 'broker' and 'nodes'"):
        load_settings(write(tmp_path, base))
