"""gateway doctor against a good box (real TLS mosquitto, real SQLite outbox) and broken ones."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import load_settings
from gateway.content.commands import Ed25519Signer
from gateway.ops.doctor import (
    STA_UNSYNC,
    TIME_ERROR,
    check_outbox,
    clock_verdict,
    disk_verdict,
    monitor_capable_phys,
    render,
    run_checks,
)
from gateway.ops.provision import make_csr
from tests.conftest import LAYOUT, Mosquitto, gateway_cmd, gateway_env, make_mosquitto
from tests.pki import Pki, make_pki

# Abridged real `iw list` output (an MT7612U USB adapter, and a Pi's brcmfmac without nexmon).
IW_LIST = """Wiphy phy1
\tmax # scan SSIDs: 4
\tSupported interface modes:
\t\t * IBSS
\t\t * managed
\t\t * AP
\t\t * AP/VLAN
\t\t * monitor
\t\t * mesh point
\tBand 1:
\t\tCapabilities: 0x1ff
Wiphy phy0
\tSupported interface modes:
\t\t * IBSS
\t\t * managed
\t\t * AP
\t\t * P2P-client
\tsoftware interface modes (can always be added):
\t\t * monitor
"""


def test_iw_list_parser() -> None:
    assert monitor_capable_phys(IW_LIST) == ["phy1"]
    assert monitor_capable_phys("") == []


def test_clock_verdicts() -> None:
    now = 1_790_000_000.0  # 2026
    assert clock_verdict(0, 0, now).status == "pass"
    assert clock_verdict(TIME_ERROR, 0, now).status == "fail"
    assert clock_verdict(0, STA_UNSYNC, now).status == "fail"
    c = clock_verdict(0, 0, 0.0)  # a Pi without RTC before NTP: 1970
    assert c.status == "fail"
    assert "1970" in c.detail


def test_disk_verdicts() -> None:
    assert disk_verdict(Path("/x"), 100 * 2**30, 50 * 2**30).status == "pass"
    assert disk_verdict(Path("/x"), 100 * 2**30, 5 * 2**30).status == "warn"
    assert disk_verdict(Path("/x"), 100 * 2**30, 10 * 2**20).status == "fail"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Mosquitto:
    cert, key = pki.server_files()
    m = make_mosquitto(
        tmp_path,
        f"cafile {pki.ca_file}\ncertfile {cert}\nkeyfile {key}\n"
        "require_certificate true\nuse_identity_as_username true\n"
        "user root\n",  # mosquitto drops to its own user otherwise and cannot read pytest tmp dirs
    )
    m.start()
    try:
        yield m  # type: ignore[misc]
    finally:
        m.stop()


def _box(tmp_path: Path, pki: Pki, port: int, signed: bool = True, local_port: int = 1) -> Path:
    """A provisioned-looking box laid out in tmp_path: key, cert, config, state dir, outbox, the
    platform's command key; the observations come from a replay file (a radio needs D-Bus)."""
    tls = tmp_path / "tls"
    tls.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    (tls / "device.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tls / "device.key").chmod(0o600)
    signer = pki if signed else make_pki(tmp_path / "rogue")
    (tls / "device.crt").write_bytes(signer.sign_csr(make_csr(key, "gw-1", "demo-store")))
    state = tmp_path / "state"
    state.mkdir()
    con = sqlite3.connect(state / "outbox.sqlite3")
    con.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB)")
    con.executemany("INSERT INTO events (body) VALUES (?)", [(b"x" * 200,) for _ in range(2000)])
    con.commit()
    con.close()
    from argon2 import PasswordHasher

    cred = tmp_path / "technician.json"
    cred.write_text(json.dumps({"user": "tech", "hash": PasswordHasher().hash("a long password")}))
    cred.chmod(0o640)
    (tmp_path / "command.pub").write_bytes(Ed25519Signer.generate().public_pem())
    (tmp_path / "obs.jsonl").write_text('{"ts": 1.0, "sensor": "s1", "device": "d", "rssi": -60}\n')
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f"""[status]
credential_file = "{cred}"
[content]
command_public_key_file = "{tmp_path / "command.pub"}"
[replay]
enabled = true
path = "{tmp_path / "obs.jsonl"}"
[local_broker]
host = "127.0.0.1"
port = {local_port}
[gateway]
id = "gw-1"
store_id = "demo-store"
[paths]
state_dir = "{state}"
layout = "{LAYOUT}"
[mqtt]
host = "127.0.0.1"
port = {port}
tls = true
ca_file = "{pki.ca_file}"
cert_file = "{tls / "device.crt"}"
key_file = "{tls / "device.key"}"
"""
    )
    return cfg


def _by_name(checks: list) -> dict[str, str]:  # type: ignore[type-arg]
    return {c.name: c.status for c in checks}


def test_good_box_all_pass(tmp_path: Path, pki: Pki, tls_broker: Mosquitto, mosquitto: Mosquitto) -> None:
    cfg = _box(tmp_path, pki, tls_broker.port, local_port=mosquitto.port)
    checks = run_checks(cfg, timeout_s=5, skip=frozenset({"clock"}))
    st = _by_name(checks)
    assert st == {
        "config": "pass",
        "layout": "pass",
        "zone coverage": "pass",
        "disk": "pass",
        "outbox": "pass",
        "tls identity": "pass",
        "technician login": "pass",
        "broker": "pass",
        "local broker": "pass",
        "ble radio": "skip",
        "wifi monitor": "skip",
    }, render(checks)
    assert "2000 event(s) pending" in next(c.detail for c in checks if c.name == "outbox")


def test_cert_from_unknown_ca_fails_tls_and_broker(tmp_path: Path, pki: Pki, tls_broker: Mosquitto) -> None:
    cfg = _box(tmp_path, pki, tls_broker.port, signed=False)
    checks = run_checks(cfg, timeout_s=5, skip=frozenset({"clock"}))
    st = _by_name(checks)
    assert st["tls identity"] == "fail"
    assert st["broker"] == "fail", render(checks)  # the broker refuses the handshake


def test_broker_down_fails_with_remedy(tmp_path: Path, pki: Pki) -> None:
    from tests.conftest import free_port

    cfg = _box(tmp_path, pki, free_port())
    checks = run_checks(cfg, timeout_s=2, skip=frozenset({"clock"}))
    broker = next(c for c in checks if c.name == "broker")
    assert broker.status == "fail"
    assert "cannot connect" in broker.detail
    assert "firewall" in broker.remedy


def test_corrupt_outbox_detected_read_only(tmp_path: Path, pki: Pki) -> None:
    cfg = _box(tmp_path, pki, 1)
    db = tmp_path / "state/outbox.sqlite3"
    data = bytearray(db.read_bytes())
    page = 4096
    for off in range(page * 2 + 100, page * 2 + 2000):  # scribble over a b-tree page
        data[off] = 0xA5
    db.write_bytes(bytes(data))
    before = db.read_bytes()
    c = check_outbox(load_settings(cfg))
    assert c.status == "fail"
    assert "outbox" in c.detail or "integrity" in c.detail or "malformed" in c.detail
    assert "move the outbox file aside" in c.remedy
    assert db.read_bytes() == before  # doctor never writes


def test_plain_password_credential_fails(tmp_path: Path, pki: Pki) -> None:
    from gateway.ops.doctor import check_credential

    cfg = _box(tmp_path, pki, 1)
    (tmp_path / "technician.json").write_text('{"user": "tech", "password": "hunter2"}')
    c = check_credential(load_settings(cfg))
    assert c.status == "fail"
    assert "no argon2id hash" in c.detail


def test_not_a_database(tmp_path: Path, pki: Pki) -> None:
    cfg = _box(tmp_path, pki, 1)
    (tmp_path / "state/outbox.sqlite3").write_bytes(b"hello world, definitely not sqlite")
    c = check_outbox(load_settings(cfg))
    assert c.status == "fail"
    assert "not an SQLite database" in c.detail


@pytest.mark.integration
def test_cli_exit_codes_and_table(tmp_path: Path, pki: Pki, tls_broker: Mosquitto) -> None:
    cfg = _box(tmp_path, pki, tls_broker.port)
    run = lambda *a: subprocess.run(  # noqa: E731
        gateway_cmd("doctor", *a), capture_output=True, text=True, env=gateway_env(), timeout=60, check=False
    )
    r = run("--config", str(cfg), "--skip", "clock")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "broker" in r.stdout
    assert "TLS + MQTT CONNECT ok" in r.stdout
    assert "0 fail" in r.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "has space"\n[mqtt]\nport = "x"\n')
    r = run("--config", str(bad), "--skip", "clock", "--json")
    assert r.returncode == 1
    rows = json.loads(r.stdout)
    assert rows[0]["name"] == "config"
    assert rows[0]["status"] == "fail"
    assert "gateway.id" in rows[0]["detail"]
    assert "Traceback" not in r.stderr


@pytest.mark.skipif(not __import__("shutil").which("iw"), reason="iw not installed")
def test_wifi_check_with_real_iw(tmp_path: Path) -> None:
    """`iw list` really runs; on a machine without nl80211 Wi-Fi (CI) that is a clear fail."""
    from gateway.config import Settings
    from gateway.ops.doctor import check_wifi

    c = check_wifi(Settings(wifi={"enabled": True}))  # type: ignore[arg-type]
    r = subprocess.run(["iw", "list"], capture_output=True, text=True, timeout=5, check=False)
    if monitor_capable_phys(r.stdout):
        assert c.status in ("pass", "warn")
    else:
        assert c.status == "fail"
        assert c.remedy
    assert check_wifi(Settings()).status == "skip"


def test_config_row_reports_what_would_stop_the_daemon(tmp_path: Path, pki: Pki) -> None:
    """A config the model accepts but `gateway run` could not use: doctor fails it (it passed before)."""
    cfg = _box(tmp_path, pki, 1)
    (tmp_path / "obs.jsonl").unlink()
    text = cfg.read_text().replace("[content]\n", '[content]\nquiet_hours = ["21:00-08:00"]\n')
    cfg.write_text(text)
    checks = run_checks(cfg, timeout_s=1, skip=frozenset({"clock", "broker", "local-broker"}))
    row = next(c for c in checks if c.name == "config")
    assert row.status == "fail" and "replay.path" in row.detail and "no such file" in row.detail
    (tmp_path / "command.pub").write_text("")
    row = run_checks(cfg, timeout_s=1, skip=frozenset({"clock", "broker", "local-broker"}))[0]
    assert "content.command_key" in row.detail and "no PEM public key" in row.detail


def test_local_broker_down_fails_for_nodes_and_warns_for_actors(tmp_path: Path, pki: Pki) -> None:
    from gateway.ops.doctor import check_local_broker
    from tests.conftest import free_port

    cfg = _box(tmp_path, pki, 1, local_port=free_port())
    s = load_settings(cfg)
    c = check_local_broker(s, 2)
    assert c.status == "warn" and "cannot connect" in c.detail and "MQTT actors" in c.remedy
    s = load_settings(cfg, nodes={"enabled": True, "mapping": {"n1": "s1"}})
    c = check_local_broker(s, 2)
    assert c.status == "fail" and "sensor nodes" in c.remedy
    assert check_local_broker(load_settings(cfg, content={"enabled": False}), 2).status == "skip"
