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


def test_env_lists_tables_and_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """List variables accept a,b,c (JSON still works), tables k=v,k2=v2, an empty value unsets."""
    monkeypatch.setenv("GATEWAY_WIFI__CHANNELS", "1, 6,11")
    monkeypatch.setenv("GATEWAY_STATUS__BIND", "0.0.0.0")
    monkeypatch.setenv("GATEWAY_CONTENT__COMMAND_ISSUERS", '["platform", "ops"]')
    monkeypatch.setenv("GATEWAY_NODES__MAPPING", "kitchen=s1,door=s2")
    monkeypatch.setenv("GATEWAY_NODES__MAPPING__till", "s3")
    monkeypatch.setenv("GATEWAY_PATHS__LAYOUT", "")
    s = load_settings()
    assert s.wifi.channels == [1, 6, 11] and s.status.bind == ["0.0.0.0"]
    assert s.content.command_issuers == ["platform", "ops"]
    assert s.nodes.mapping == {"kitchen": "s1", "door": "s2", "till": "s3"}
    assert s.paths.layout is None


@pytest.mark.parametrize(
    ("name", "value", "expect"),
    [
        ("GATEWAY_MQTTT__PORT", "1883", "GATEWAY_MQTTT__PORT: unknown setting; did you mean GATEWAY_MQTT__PORT?"),
        ("GATEWAY_MQTT__PROT", "1883", "did you mean GATEWAY_MQTT__PORT?"),
        ("GATEWAY_STATUS__BIN", "0.0.0.0", "did you mean GATEWAY_STATUS__BIND?"),
        ("GATEWAY_NOPE", "1", "GATEWAY_NOPE: unknown setting"),
        ("GATEWAY_MQTT", "x", "a whole section must be a JSON object"),
        ("GATEWAY_MQTT__PORT__X", "1", "mqtt.port has no sub-keys"),
        ("GATEWAY_MQTT__BROKERS", "b1:8883", "expected a JSON list"),
        ("GATEWAY_NODES__MAPPING", "kitchen", "'kitchen' is not key=value"),
        ("GATEWAY_WIFI__CHANNELS", "[1, 6", "not a JSON list"),
        ("GATEWAY_WIFI__CHANNELS", "0,999", "[0, 999] not Wi-Fi channels"),
        ("GATEWAY_STATUS__BIND", "every-interface", "'every-interface' is not an IP address"),
    ],
)
def test_bad_env_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expect: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as ei:
        load_settings()
    assert any(expect in line for line in ei.value.lines), ei.value.lines
    assert all("\n" not in line for line in ei.value.lines)


def test_non_setting_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_CONFIG", "GATEWAY_PYTHON", "GATEWAY_READY_FILE", "GATEWAY_DEBUG"):
        monkeypatch.setenv(name, "x")
    load_settings()


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ({"quiet_hours": ["21:00-08"]}, "'21:00-08' is not a window HH:MM-HH:MM"),
        ({"timezone": "Europe/Atlantis"}, "unknown time zone 'Europe/Atlantis'"),
        ({"webhook_allow": ["10.0.0.0/33"]}, "neither an IP network"),
        ({"command_auth": "hmac-sha256"}, "command_secret_file is not set"),
        ({"command_secret_file": "k"}, "only used with command_auth = 'hmac-sha256'"),
    ],
)
def test_content_values_checked_at_load(content: dict[str, object], expect: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_settings(content=content)
    assert expect in "\n".join(ei.value.lines)


def test_env_beats_toml_beats_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "g.toml"
    f.write_text('[mqtt]\nport = 1000\nhost = "file-host"\ntls = false\n[log]\nlevel = "debug"\n')
    monkeypatch.setenv("GATEWAY_MQTT__PORT", "2000")
    s = load_settings(f)
    assert (s.mqtt.port, s.mqtt.host, s.log.level, s.mqtt.keepalive_s) == (2000, "file-host", "debug", 30)
    assert load_settings(f, mqtt={"port": 3000}).mqtt.port == 3000  # code overrides beat both


def test_misspelt_file_keys_get_a_suggestion(tmp_path: Path) -> None:
    f = tmp_path / "typo.toml"
    f.write_text("[mqtt]\nprot = 1\n[mqttt]\nport = 2\n[status]\nzzz = 1\n")
    with pytest.raises(ConfigError) as ei:
        load_settings(f)
    text = "\n".join(ei.value.lines)
    assert "mqtt.prot: unknown key (not allowed); did you mean [mqtt] port?" in text
    assert "mqttt: unknown key (not allowed); did you mean [mqtt]?" in text
    assert "status.zzz: unknown key (not allowed)\n" in text + "\n"  # nothing close: no guess
