from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings, config_docs, load_settings


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gateway.toml"
    p.write_text(text)
    return p


def test_defaults_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(__import__("os").environ):
        if k.startswith("GATEWAY_"):
            monkeypatch.delenv(k)
    s = load_settings()
    assert s.gateway.id == "gw-demo"
    assert s.outbox_path == Path("var/outbox.sqlite3")


def test_errors_name_field_and_reason(tmp_path: Path) -> None:
    p = write(tmp_path, '[mqtt]\nport = 99999\nbogus = 1\n[gateway]\nid = "bad id"\n[nosuch]\nx=1\n')
    with pytest.raises(ConfigError) as ei:
        load_settings(p)
    lines = ei.value.lines
    assert any("mqtt.port" in line and "less than or equal to 65535" in line for line in lines)
    assert any("mqtt.bogus" in line and "unknown key" in line for line in lines)
    assert any("gateway.id" in line and "pattern" in line for line in lines)
    assert any("nosuch" in line and "unknown key" in line for line in lines)
    assert all(line.startswith(str(p)) for line in lines)


def test_toml_syntax_error_is_readable(tmp_path: Path) -> None:
    p = write(tmp_path, "[mqtt\nport=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_settings(tmp_path / "nope.toml")


def test_env_overrides_file_nested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "[mqtt]\nport = 1884\nkeepalive_s = 20\n")
    monkeypatch.setenv("GATEWAY_MQTT__PORT", "2883")
    s = load_settings(p)
    assert s.mqtt.port == 2883  # env wins
    assert s.mqtt.keepalive_s == 20  # file value kept for other keys of the section


def test_env_error_names_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_MQTT__PORT", "abc")
    with pytest.raises(ConfigError, match=r"mqtt\.port"):
        load_settings()


def test_cross_field_checks(tmp_path: Path) -> None:
    p = write(tmp_path, "[replay]\nenabled = true\n")
    with pytest.raises(ConfigError, match="replay.path"):
        load_settings(p)
    p = write(tmp_path, '[mqtt]\nhost = "broker.example"\ntls = true\n')
    with pytest.raises(ConfigError, match="ca_file"):
        load_settings(p)


def test_docs_cover_every_key() -> None:
    doc = config_docs()
    for name, fld in Settings.model_fields.items():
        sub = fld.annotation
        for key in sub.model_fields:  # type: ignore[union-attr]
            assert f"GATEWAY_{name.upper()}__{key.upper()}" in doc


def test_committed_docs_are_current() -> None:
    committed = (Path(__file__).resolve().parents[2] / "docs" / "config.md").read_text()
    assert committed.strip() == config_docs().strip(), "run: gateway config docs > docs/config.md"


def test_nodes_make_misses_cheaper_unless_packet_loss_is_set() -> None:
    from gateway.config import NODES_PACKET_LOSS

    assert load_settings().localization.packet_loss == 0.05
    nodes = {"enabled": True, "mapping": {"n11": "n11"}}
    assert load_settings(nodes=nodes).localization.packet_loss == NODES_PACKET_LOSS
    assert load_settings(nodes=nodes, localization={"packet_loss": 0.1}).localization.packet_loss == 0.1
