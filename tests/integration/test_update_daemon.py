"""A real release (a venv tree) of this checkout is installed with `gateway update`, started, and
its real daemon reports READY through the ready file; the updater then keeps it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from gateway.ops.update import install, keygen, pack, read_ready, sign
from tests.conftest import REPO, Mosquitto

pytestmark = pytest.mark.integration


def build_release(tmp_path: Path, version: str) -> Path:
    src = tmp_path / f"tree-{version}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--copies", str(src)], check=True, timeout=60)
    site = next((src / "lib").glob("python3*/site-packages"))
    # this checkout + the shared venv's dependencies (a real release would pip install them)
    (site / "gateway-test.pth").write_text(f"{REPO}\n{sysconfig.get_paths()['purelib']}\n")
    (src / "bin/gateway").write_text('#!/bin/sh\nexec "$(dirname "$0")/python" -m gateway "$@"\n')
    (src / "bin/gateway").chmod(0o755)
    return pack(src, version, tmp_path / f"gateway-{version}.tar.gz")


def test_real_daemon_reaches_ready_after_update(tmp_path: Path, mosquitto: Mosquitto) -> None:
    priv, pub = keygen(tmp_path / "keys")
    pkg = build_release(tmp_path, "7.0.0")
    sign(pkg, priv)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f"""[gateway]
id = "gw-upd"
store_id = "demo-store"
[paths]
state_dir = "{tmp_path / "state"}"
[simulator]
enabled = true
[mqtt]
host = "{mosquitto.host}"
port = {mosquitto.port}
tls = false
[status]
enabled = false
"""
    )
    releases = tmp_path / "opt"
    ready = tmp_path / "run" / "ready.json"
    ready.parent.mkdir()
    log = tmp_path / "daemon.log"
    start = ["/bin/sh", "-c", f'"$0/current/bin/gateway" run --config {cfg} >{log} 2>&1 &', str(releases)]
    res = install(pkg, releases, pub, restart_cmd=start, ready_file=ready, ready_timeout_s=40)
    pid = None
    try:
        assert res.outcome == "switched", log.read_text() if log.exists() else ""
        data = json.loads(ready.read_text())
        pid = int(data["pid"])
        assert data["version"] == "7.0.0"  # release.json of the running venv, not the package version
        assert read_ready(ready) == "7.0.0"
        assert os.readlink(releases / "current") == "7.0.0"
        assert (releases / "7.0.0/bin/python").is_file()
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
