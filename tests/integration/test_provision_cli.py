"""The provisioning entry points as retail IT runs them: the shell script and `gateway provision`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.content.commands import Ed25519Signer
from tests.conftest import LAYOUT, REPO, gateway_cmd, gateway_env
from tests.pki import make_pki

pytestmark = pytest.mark.integration


def _image(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    return root


def _command_pubkey(root: Path) -> Path:
    p = root.parent / "platform-command.pub"
    if not p.exists():
        p.write_bytes(Ed25519Signer.generate().public_pem())
    return p


def _args(root: Path, ca: Path, pw: Path, *extra: str) -> list[str]:
    return [
        "--command-pubkey",
        str(_command_pubkey(root)),
        "--root",
        str(root),
        "--store-id",
        "demo-store",
        "--gateway-id",
        "gw-7",
        "--broker",
        "mqtts://mqtt.example.net:8883",
        "--ca",
        str(ca),
        "--layout",
        str(LAYOUT),
        "--tech-user",
        "tech",
        "--tech-password-file",
        str(pw),
        *extra,
    ]


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env=gateway_env(), timeout=60, check=False)


def test_shell_script_twice_then_cli_cert_import(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    pw = tmp_path / "pw"
    pw.write_text("a long technician password\n")
    root = _image(tmp_path)
    script = [str(REPO / "provisioning" / "provision.sh")]
    env_py = gateway_env(GATEWAY_PYTHON=sys.executable)
    r = subprocess.run(
        [*script, *_args(root, pki.ca_file, pw)], capture_output=True, text=True, env=env_py, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    assert "provisioned gateway gw-7" in r.stdout
    r = subprocess.run(
        [*script, *_args(root, pki.ca_file, pw)], capture_output=True, text=True, env=env_py, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr
    assert "no changes" in r.stdout
    cert = tmp_path / "gw-7.crt"
    cert.write_bytes(pki.sign_csr((root / "etc/gateway/tls/device.csr").read_bytes()))
    r = _run(gateway_cmd("provision", *_args(root, pki.ca_file, pw, "--cert", str(cert))))
    assert r.returncode == 0, r.stderr
    assert "create /etc/gateway/tls/device.crt" in r.stdout
    # checked as `gateway run` would use it, box paths looked up in the image
    cfg = root / "etc/gateway/gateway.toml"
    r = _run(gateway_cmd("config", "check", "--root", str(root), str(cfg)))
    assert r.returncode == 2 and "no observation source is enabled" in r.stderr, r.stderr
    cfg.write_text(cfg.read_text() + "\n[ble]\nenabled = true\n")  # what the technician adds (docs/install.md)
    r = _run(gateway_cmd("config", "check", "--root", str(root), str(cfg)))
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    ("change", "msg"),
    [
        ({"--gateway-id": "gw 7"}, "--gateway-id 'gw 7' is not valid"),
        ({"--broker": "mqtt://mqtt.example.net"}, "scheme must be mqtts://"),
        ({"--ca": "/nonexistent/ca.pem"}, "--ca /nonexistent/ca.pem: cannot read"),
        ({"--ca": "BADPEM"}, "not a PEM certificate bundle"),
        ({"--ca": "KEY"}, "contains a PRIVATE KEY"),
        ({"--store-id": "other-store"}, "layout is for store 'demo-store', not 'other-store'"),
    ],
)
def test_bad_input_clear_error_exit_2(tmp_path: Path, change: dict[str, str], msg: str) -> None:
    pki = make_pki(tmp_path / "pki")
    pw = tmp_path / "pw"
    pw.write_text("a long technician password\n")
    root = _image(tmp_path)
    args = _args(root, pki.ca_file, pw)
    for k, v in change.items():
        if v == "BADPEM":
            (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
            v = str(tmp_path / "bad.pem")
        if v == "KEY":
            key_block = "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n"
            (tmp_path / "key.pem").write_text(pki.ca_file.read_text() + key_block)
            v = str(tmp_path / "key.pem")
        args[args.index(k) + 1] = v
    r = _run(gateway_cmd("provision", *args))
    assert r.returncode == 2, r.stdout + r.stderr
    assert msg in r.stderr
    assert "Traceback" not in r.stderr
    assert not (root / "etc/gateway").exists()  # refused before touching the target
