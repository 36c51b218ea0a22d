"""Provisioning into a temporary directory used as the target root (as an image would be)."""

from __future__ import annotations

import io
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.config import load_settings
from gateway.content.commands import Ed25519Signer, load_verifier
from gateway.layout import load_layout
from gateway.ops.provision import (
    CONFIG,
    CREDENTIAL,
    CSR,
    KEY,
    ProvisionError,
    Request,
    check_id,
    parse_broker,
    provision,
)
from tests.conftest import LAYOUT
from tests.pki import Pki, make_pki

PLATFORM_KEY = Ed25519Signer.generate()  # the platform's command-signing key pair (the box gets the public half)
PASSWD = "root:x:0:0:root:/root:/bin/bash\nmessagebus:x:100:101::/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nshadow:x:42:\nmessagebus:x:101:\nbluetooth:x:112:pi\n"
SHADOW = "root:*:19000:0:99999:7:::\n"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A minimal image root with the system files a Debian/Pi OS image has."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "etc/shadow").write_text(SHADOW)
    os.chmod(root / "etc/shadow", 0o640)
    return root


def _req(image: Path, pki: Pki, **kw: object) -> Request:
    base = Request(
        root=image,
        store_id="demo-store",
        gateway_id="gw-0042",
        broker_host="mqtt.example.net",
        broker_port=8883,
        ca_pem=pki.ca_file.read_bytes(),
        layout_toml=LAYOUT.read_bytes(),
        tech_user="tech",
        tech_password="correct horse battery",
        command_pubkey_pem=PLATFORM_KEY.public_pem(),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _run(req: Request) -> tuple[list[str], str]:
    buf = io.StringIO()
    plan = provision(req, buf)
    return plan.changes, buf.getvalue()


def _snapshot(root: Path) -> dict[str, tuple[bytes | str, int, int, int]]:
    out: dict[str, tuple[bytes | str, int, int, int]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body: bytes | str = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
        out[str(p.relative_to(root))] = (body, st.st_mode, st.st_uid, st.st_gid)
    return out


def test_first_run_writes_everything_with_modes_and_owners(image: Path, pki: Pki) -> None:
    changes, out = _run(_req(image, pki))
    assert changes
    assert "provisioned gateway gw-0042" in out
    assert "next: have /etc/gateway/tls/device.csr signed" in out
    passwd = (image / "etc/passwd").read_text()
    assert passwd.startswith(PASSWD)  # existing lines untouched
    entry = [ln for ln in passwd.splitlines() if ln.startswith("gateway:")]
    assert len(entry) == 1
    uid, gid = int(entry[0].split(":")[2]), int(entry[0].split(":")[3])
    assert 100 <= uid <= 999
    assert f"gateway:x:{gid}:" in (image / "etc/group").read_text()
    assert "bluetooth:x:112:pi,gateway" in (image / "etc/group").read_text()
    assert (image / "etc/shadow").read_text().startswith(SHADOW)
    assert "\ngateway:!*:" in (image / "etc/shadow").read_text()

    def meta(p: str) -> tuple[str, int, int]:
        st = (image / p).stat()
        return oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid

    assert meta("etc/gateway/tls/device.key") == (oct(0o600), uid, gid)
    assert meta("etc/gateway/technician.json") == (oct(0o640), 0, gid)
    assert meta("etc/gateway/gateway.toml") == (oct(0o640), 0, gid)
    assert meta("etc/gateway") == (oct(0o750), 0, gid)
    assert meta("var/lib/gateway") == (oct(0o750), uid, gid)
    assert meta("var/log/gateway") == (oct(0o750), uid, gid)
    assert meta("etc/systemd/system/gateway.service")[0] == oct(0o644)
    assert os.readlink(image / "etc/systemd/system/multi-user.target.wants/gateway.service") == (
        "/etc/systemd/system/gateway.service"
    )
    # the config validates with the same model the daemon uses, and points at box paths
    s = load_settings(image / "etc/gateway/gateway.toml")
    assert (s.gateway.id, s.gateway.store_id) == ("gw-0042", "demo-store")
    assert (s.mqtt.host, s.mqtt.port, s.mqtt.tls) == ("mqtt.example.net", 8883, True)
    assert str(s.mqtt.key_file) == "/etc/gateway/tls/device.key"
    assert str(s.status.credential_file) == "/etc/gateway/technician.json"
    # cloud commands: verified with the platform's public key, which the box holds (0644, public)
    assert str(s.content.command_public_key_file) == "/etc/gateway/command.pub"
    assert s.content.command_auth == "ed25519" and s.content.command_secret_file is None
    assert meta("etc/gateway/command.pub")[0] == oct(0o644)
    assert load_verifier("ed25519", image / "etc/gateway/command.pub", None) is not None
    assert load_layout(image / "etc/gateway/layout.toml").store.id == "demo-store"
    cred = json.loads((image / "etc/gateway/technician.json").read_text())
    assert cred["user"] == "tech"
    assert cred["hash"].startswith("$argon2id$")
    assert PasswordHasher().verify(cred["hash"], "correct horse battery")
    csr = x509.load_pem_x509_csr((image / "etc/gateway/tls/device.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "O=demo-store,CN=gw-0042"


def test_second_run_changes_nothing_and_says_so(image: Path, pki: Pki) -> None:
    _run(_req(image, pki))
    before = _snapshot(image)
    changes, out = _run(_req(image, pki))
    assert changes == []
    assert "no changes: gateway gw-0042" in out
    assert _snapshot(image) == before


def test_dry_run_writes_nothing_and_shows_plan(image: Path, pki: Pki) -> None:
    before = _snapshot(image)
    changes, out = _run(_req(image, pki, dry_run=True))
    assert _snapshot(image) == before
    assert all(c.startswith("would ") for c in changes)
    assert "would create /etc/gateway/gateway.toml" in out
    assert '    | id = "gw-0042"' in out  # the config content is shown
    assert "correct horse" not in out  # never the password
    assert "nothing was written" in out
    assert len(changes) == len(set(changes))  # each directory planned once
    real, _ = _run(_req(image, pki))
    # the dry run is exact: the same changes, minus the "would"
    assert [c.removeprefix("would ").split(" (")[0] for c in changes] == [c.split(" (")[0] for c in real]


def test_dry_run_after_provisioning_reports_no_change(image: Path, pki: Pki) -> None:
    _run(_req(image, pki))
    changes, out = _run(_req(image, pki, dry_run=True))
    assert changes == []
    assert "no changes" in out


def test_drifted_modes_are_repaired(image: Path, pki: Pki) -> None:
    _run(_req(image, pki))
    os.chmod(image / "etc/gateway/tls/device.key", 0o644)
    changes, _ = _run(_req(image, pki))
    assert changes == ["chmod /etc/gateway/tls/device.key 0644 -> 0600"]


def test_certificate_import_second_step(image: Path, pki: Pki) -> None:
    _run(_req(image, pki))
    cert = pki.sign_csr((image / "etc/gateway/tls/device.csr").read_bytes())
    changes, out = _run(_req(image, pki, cert_pem=cert))
    assert changes == [f"create /etc/gateway/tls/device.crt (0644 root:root, {len(cert)} bytes)"]
    assert "next:" not in out
    assert _run(_req(image, pki, cert_pem=cert))[0] == []  # idempotent with --cert too


def test_cert_for_another_key_or_ca_refused(image: Path, pki: Pki, tmp_path: Path) -> None:
    _run(_req(image, pki))
    other = make_pki(tmp_path / "other")
    foreign = other.sign_csr((image / "etc/gateway/tls/device.csr").read_bytes())
    with pytest.raises(ProvisionError, match="not issued by a CA in the --ca bundle"):
        _run(_req(image, pki, cert_pem=foreign))
    from cryptography.hazmat.primitives.asymmetric import ec

    from gateway.ops.provision import make_csr

    stranger = pki.sign_csr(make_csr(ec.generate_private_key(ec.SECP256R1()), "gw-0042", "demo-store"))
    with pytest.raises(ProvisionError, match="not for this box's device key"):
        _run(_req(image, pki, cert_pem=stranger))
    with pytest.raises(ProvisionError, match="not a PEM certificate"):
        _run(_req(image, pki, cert_pem=b"garbage"))
    assert not (image / "etc/gateway/tls/device.crt").exists()


def test_existing_key_for_other_gateway_needs_force(image: Path, pki: Pki) -> None:
    _run(_req(image, pki))
    key_before = (image / "etc/gateway/tls/device.key").read_bytes()
    with pytest.raises(ProvisionError, match=r"belongs to gateway 'gw-0042'.*--force"):
        _run(_req(image, pki, gateway_id="gw-0099"))
    assert (image / "etc/gateway/tls/device.key").read_bytes() == key_before
    changes, _ = _run(_req(image, pki, gateway_id="gw-0099", force=True))
    assert any(c.startswith("update /etc/gateway/tls/device.key") for c in changes)
    assert (image / "etc/gateway/tls/device.key").read_bytes() != key_before
    csr = x509.load_pem_x509_csr((image / "etc/gateway/tls/device.csr").read_bytes())
    assert csr.subject.rfc4514_string() == "O=demo-store,CN=gw-0099"


def test_unreadable_existing_key_refused_without_force(image: Path, pki: Pki) -> None:
    _run(_req(image, pki))
    (image / "etc/gateway/tls/device.key").write_text("not a key")
    with pytest.raises(ProvisionError, match=r"existing key is unreadable.*--force"):
        _run(_req(image, pki))


def test_force_drops_stale_certificate(image: Path, pki: Pki) -> None:
    _run(_req(image, pki))
    cert = pki.sign_csr((image / "etc/gateway/tls/device.csr").read_bytes())
    _run(_req(image, pki, cert_pem=cert))
    changes, out = _run(_req(image, pki, force=True))
    assert "remove /etc/gateway/tls/device.crt (does not match the device key)" in changes
    assert "next:" in out


def test_technician_edits_in_config_are_kept(image: Path, pki: Pki) -> None:
    _run(_req(image, pki))
    cfg = image / "etc/gateway/gateway.toml"
    cfg.write_text(cfg.read_text() + '\n[ble]\nenabled = true\nadapter = "hci1"\n')
    changes, _ = _run(_req(image, pki, broker_host="mqtt2.example.net"))
    assert changes == [f"update {CONFIG} (0640 root:gateway, {len(cfg.read_bytes())} bytes)"]
    s = load_settings(cfg)
    assert s.ble.adapter == "hci1"
    assert s.mqtt.host == "mqtt2.example.net"


def test_password_change_rehashes(image: Path, pki: Pki) -> None:
    _run(_req(image, pki))
    changes, _ = _run(_req(image, pki, tech_password="another long password"))
    assert [c.split(" (")[0] for c in changes] == [f"update {CREDENTIAL}"]
    cred = json.loads((image / "etc/gateway/technician.json").read_text())
    assert PasswordHasher().verify(cred["hash"], "another long password")


def test_a_hash_with_older_parameters_is_made_anew_with_todays(image: Path, pki: Pki) -> None:
    """A credential hashed with argon2-cffi's 64 MiB default (before) verifies, and re-provisioning
    with the same password re-hashes it with the product's parameters (19 MiB, t=2, p=1)."""
    _run(_req(image, pki))
    path = image / "etc/gateway/technician.json"
    cred = json.loads(path.read_text())
    cred["hash"] = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4).hash("correct horse battery")
    path.write_text(json.dumps(cred) + "\n")
    changes, _ = _run(_req(image, pki))
    assert [c.split(" (")[0] for c in changes] == [f"update {CREDENTIAL}"]
    new = json.loads(path.read_text())["hash"]
    assert "$m=19456,t=2,p=1$" in new and PasswordHasher().verify(new, "correct horse battery")
    assert _run(_req(image, pki))[0] == []  # and kept from then on


def test_symlinked_target_refused(image: Path, pki: Pki, tmp_path: Path) -> None:
    (image / "etc/gateway").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (image / "etc/gateway/tls").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ProvisionError, match="symlink"):
        _run(_req(image, pki))
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("bad", ["", "-gw", "gw 1", "gw/1", "a" * 65, "gw;rm"])
def test_bad_ids(bad: str) -> None:
    with pytest.raises(ProvisionError, match="--gateway-id"):
        check_id(bad, "--gateway-id")


@pytest.mark.parametrize(
    ("url", "msg"),
    [
        ("mqtt://broker:1883", "must be mqtts"),
        ("https://broker", "must be mqtts"),
        ("mqtts://", "no host"),
        ("mqtts://u:p@broker:8883", "credentials"),
        ("mqtts://broker:99999", "out of range"),
        ("mqtts://broker:8883/x", "unexpected path"),
        ("mqtts://bro ker", "not a valid host"),
    ],
)
def test_bad_broker_urls(url: str, msg: str) -> None:
    with pytest.raises(ProvisionError, match=msg):
        parse_broker(url)


def test_good_broker_urls() -> None:
    assert parse_broker("mqtts://mqtt.example.net") == ("mqtt.example.net", 8883)
    assert parse_broker("mqtts://[::1]:8884") == ("::1", 8884)


def test_paths_are_box_paths() -> None:
    assert str(KEY).startswith("/etc/gateway/")
    assert CSR.parent == KEY.parent


def test_update_pubkey_installed_and_validated(image: Path, pki: Pki, tmp_path: Path) -> None:
    from gateway.ops.provision import check_update_pubkey
    from gateway.ops.update import keygen

    priv, pub = keygen(tmp_path / "rk")
    changes, _ = _run(_req(image, pki, update_pubkey_pem=check_update_pubkey(pub.read_bytes(), str(pub))))
    assert (image / "etc/gateway/release.pub").read_bytes() == pub.read_bytes()
    assert any(c.startswith("create /etc/gateway/release.pub (0644") for c in changes)
    with pytest.raises(ProvisionError, match="PRIVATE KEY"):
        check_update_pubkey(priv.read_bytes(), str(priv))
    with pytest.raises(ProvisionError, match="not an Ed25519 key"):
        check_update_pubkey(
            pki.cert.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "ec.pub",
        )


@pytest.mark.parametrize("bad", ["gw1\n", "gw.1", "-gw", "gw/1", ""])
def test_ids_are_whole_topic_levels(bad: str) -> None:
    from gateway.ops.provision import ProvisionError, check_id

    with pytest.raises(ProvisionError, match="not valid"):
        check_id(bad, "--gateway-id")
    assert check_id("gw-1_a", "--gateway-id") == "gw-1_a"


def test_command_pubkey_required_checked_and_kept(image: Path, pki: Pki, tmp_path: Path) -> None:
    """No box is provisioned that would run without a command key; the key is validated; a re-run
    without the option keeps the installed key (--cert step)."""
    from gateway.ops.provision import check_command_pubkey

    with pytest.raises(ProvisionError, match="--command-pubkey FILE is required"):
        _run(_req(image, pki, command_pubkey_pem=None))
    assert not (image / "etc/gateway/gateway.toml").exists()
    with pytest.raises(ProvisionError, match="PRIVATE key"):
        check_command_pubkey(PLATFORM_KEY.private_pem(), "platform.key")
    with pytest.raises(ProvisionError, match="not an Ed25519 key"):
        check_command_pubkey(
            pki.cert.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "ec.pub",
        )
    with pytest.raises(ProvisionError, match="no PEM public key"):
        check_command_pubkey(b"", "empty.pub")
    _run(_req(image, pki))
    changes, out = _run(_req(image, pki, command_pubkey_pem=None))
    assert changes == [] and "no changes" in out
    rotated = PLATFORM_KEY.public_pem() + Ed25519Signer.generate().public_pem()
    changes, _ = _run(_req(image, pki, command_pubkey_pem=rotated))
    assert changes == [f"update /etc/gateway/command.pub (0644 root:root, {len(rotated)} bytes)"]
