"""Signed A/B updates: good package switches, bad signature refused, no READY -> rollback."""

from __future__ import annotations

import io
import json
import os
import shlex
import tarfile
from pathlib import Path

import pytest

from gateway.ops.update import UpdateError, install, keygen, pack, read_ready, sign, write_ready

# The test release's entry point: started by the restart command like systemd would, it reports
# READY (writes the ready file) only if its release says so -- a stand-in for the real daemon.
ENTRY = """#!/bin/sh
here=$(dirname "$0")
if [ -f "$here/../works" ]; then
    sleep 0.1
    printf '{"version": "%s", "pid": %d}' "$(cat "$here/../VERSION")" $$ > "$GATEWAY_READY_FILE"
fi
exit 0
"""


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return keygen(tmp_path / "keys")


def make_release(tmp_path: Path, version: str, works: bool = True) -> Path:
    src = tmp_path / f"src-{version}"
    (src / "bin").mkdir(parents=True)
    (src / "bin/gateway").write_text(ENTRY)
    (src / "bin/gateway").chmod(0o755)
    (src / "VERSION").write_text(version)
    (src / "lib").mkdir()
    (src / "lib/code.py").write_text("print('hi')\n")
    os.symlink("../lib/code.py", src / "bin/code-link")
    if works:
        (src / "works").write_text("")
    return pack(src, version, tmp_path / f"gateway-{version}.tar.gz")


def restart_cmd(releases: Path) -> list[str]:
    # like `systemctl restart`: start the (new) current release in the background and return
    return ["/bin/sh", "-c", '"$0/current/bin/gateway" >/dev/null 2>&1 &', str(releases)]


def _install(pkg: Path, releases: Path, pub: Path, timeout: float = 5.0) -> tuple[str, str]:
    out = io.StringIO()
    res = install(
        pkg,
        releases,
        pub,
        restart_cmd=restart_cmd(releases),
        ready_file=releases.parent / "ready.json",
        ready_timeout_s=timeout,
        out=out,
    )
    return res.outcome, out.getvalue()


def test_good_package_switches_and_keeps_ab(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    assert oct((priv.stat().st_mode) & 0o777) == oct(0o600)
    rel = tmp_path / "opt"
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        pkg = make_release(tmp_path, v)
        sign(pkg, priv)
        outcome, out = _install(pkg, rel, pub)
        assert outcome == "switched", out
        assert os.readlink(rel / "current") == v
        assert read_ready(tmp_path / "ready.json") == v
    assert os.readlink(rel / "previous") == "1.1.0"
    assert sorted(p.name for p in rel.iterdir() if not p.name.startswith(".")) == [
        "1.1.0",
        "1.2.0",
        "current",
        "previous",
    ]
    assert os.readlink(rel / "1.2.0/bin/code-link") == "../lib/code.py"
    # re-installing the current version is a no-op
    outcome, out = _install(tmp_path / "gateway-1.2.0.tar.gz", rel, pub)
    assert outcome == "unchanged"
    assert "already current" in out


def test_bad_signature_refused_before_unpacking(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    rel = tmp_path / "opt"
    pkg = make_release(tmp_path, "2.0.0")
    sign(pkg, priv)
    data = bytearray(pkg.read_bytes())
    data[len(data) // 2] ^= 0x01
    pkg.write_bytes(bytes(data))
    with pytest.raises(UpdateError, match="signature does not verify"):
        _install(pkg, rel, pub)
    assert not rel.exists()
    # signed by some other key
    pkg = make_release(tmp_path, "2.0.1")
    other_priv, _ = keygen(tmp_path / "other")
    sign(pkg, other_priv)
    with pytest.raises(UpdateError, match="signature does not verify"):
        _install(pkg, rel, pub)
    # unsigned
    pkg = make_release(tmp_path, "2.0.2")
    with pytest.raises(UpdateError, match="unsigned packages are refused"):
        _install(pkg, rel, pub)


def test_version_that_never_becomes_ready_is_rolled_back(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    rel = tmp_path / "opt"
    good = make_release(tmp_path, "3.0.0")
    sign(good, priv)
    assert _install(good, rel, pub)[0] == "switched"
    bad = make_release(tmp_path, "3.1.0", works=False)
    sign(bad, priv)
    outcome, out = _install(bad, rel, pub, timeout=1.0)
    assert outcome == "rolled-back", out
    assert "did not reach READY" in out
    assert "rolled back to 3.0.0" in out
    assert "has not reported READY" not in out  # the old version came back up
    assert os.readlink(rel / "current") == "3.0.0"
    assert not (rel / "3.1.0").exists()
    assert read_ready(tmp_path / "ready.json") == "3.0.0"


def _evil_package(tmp_path: Path, priv: Path, member: tarfile.TarInfo, body: bytes = b"x") -> Path:
    pkg = tmp_path / "evil.tar.gz"
    manifest = json.dumps({"version": "6.6.6"}).encode()
    with tarfile.open(pkg, "w:gz") as tar:
        mi = tarfile.TarInfo("release.json")
        mi.size = len(manifest)
        tar.addfile(mi, io.BytesIO(manifest))
        if member.isfile():
            member.size = len(body)
            tar.addfile(member, io.BytesIO(body))
        else:
            tar.addfile(member)
    sign(pkg, priv)
    return pkg


def _sym(name: str, target: str) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.linkname = tarfile.SYMTYPE, target
    return t


def _hard(name: str, target: str) -> tarfile.TarInfo:
    t = tarfile.TarInfo(name)
    t.type, t.linkname = tarfile.LNKTYPE, target
    return t


@pytest.mark.parametrize(
    ("member", "msg"),
    [
        (tarfile.TarInfo("../../etc/cron.d/evil"), "escapes the release"),
        (tarfile.TarInfo("/etc/passwd"), "escapes the release"),
        (tarfile.TarInfo("bin/../../x"), "escapes the release"),
        (_sym("bin/sh", "/bin/sh"), "leaves the release"),
        (_sym("a/b", "../../outside"), "leaves the release"),
        (_hard("bin/x", "/etc/shadow"), "hard links"),
    ],
)
def test_path_traversal_refused(tmp_path: Path, keys: tuple[Path, Path], member: tarfile.TarInfo, msg: str) -> None:
    priv, pub = keys
    rel = tmp_path / "opt"
    pkg = _evil_package(tmp_path, priv, member)
    with pytest.raises(UpdateError, match=msg):
        _install(pkg, rel, pub)
    assert not (tmp_path / "etc").exists()
    assert [p.name for p in rel.iterdir() if not p.name.startswith(".update")] == []


def test_ready_file_roundtrip(tmp_path: Path) -> None:
    write_ready("9.9.9", tmp_path / "r.json")
    assert read_ready(tmp_path / "r.json") == "9.9.9"
    (tmp_path / "r.json").write_text("{garbage")
    assert read_ready(tmp_path / "r.json") is None


def test_cli_keygen_pack_sign_update(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import gateway_cmd, gateway_env

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            gateway_cmd(*a), capture_output=True, text=True, env=gateway_env(), timeout=60, check=False
        )

    r = run("update", "keygen", "--out", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    src = make_release(tmp_path, "4.0.0").parent / "src-4.0.0"
    r = run("update", "pack", str(src), "--version", "4.0.0", "--out", str(tmp_path / "p.tar.gz"))
    assert r.returncode == 0, r.stderr
    r = run("update", "sign", str(tmp_path / "p.tar.gz"), "--key", str(tmp_path / "k/release-signing.key"))
    assert r.returncode == 0, r.stderr
    rel = tmp_path / "opt"
    common = ["--releases-dir", str(rel), "--pubkey", str(tmp_path / "k/release-signing.pub")]
    common += ["--ready-file", str(tmp_path / "ready.json"), "--ready-timeout", "5"]
    r = run("update", str(tmp_path / "p.tar.gz"), *common, "--restart-cmd", shlex.join(restart_cmd(rel)))
    assert r.returncode == 0, r.stdout + r.stderr
    assert os.readlink(rel / "current") == "4.0.0"
    (tmp_path / "p.tar.gz.sig").write_text("AAAA\n")
    r = run("update", str(tmp_path / "p.tar.gz"), *common)
    assert r.returncode == 2
    assert "refused: signature does not verify" in r.stderr


def test_release_version_and_announce(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.ops.update import announce_ready, release_version

    rel = tmp_path / "opt/5.0.0"
    (rel / "bin").mkdir(parents=True)
    (rel / "release.json").write_text('{"version": "5.0.0", "entry": "bin/gateway"}')
    (tmp_path / "opt/current").symlink_to("5.0.0")
    assert release_version(str(tmp_path / "opt/current/bin/gateway")) == "5.0.0"
    from gateway import __version__

    assert release_version(str(tmp_path / "elsewhere/bin/gateway")) == __version__
    monkeypatch.setenv("GATEWAY_READY_FILE", str(tmp_path / "run/ready.json"))
    assert announce_ready(version="5.0.0") is False  # no runtime dir: silently nothing
    (tmp_path / "run").mkdir()
    assert announce_ready(version="5.0.0") is True
    assert read_ready(tmp_path / "run/ready.json") == "5.0.0"


def test_first_install_that_never_gets_ready_fails_without_rollback(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    rel = tmp_path / "opt"
    bad = make_release(tmp_path, "0.9.0", works=False)
    sign(bad, priv)
    outcome, out = _install(bad, rel, pub, timeout=0.5)
    assert outcome == "failed"
    assert "no previous release to roll back to" in out
