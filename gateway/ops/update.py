"""``gateway update``: signed A/B updates with automatic rollback.

Layout under the releases directory (``/opt/gateway`` on a box)::

    /opt/gateway/1.4.0/        an unpacked release (bin/gateway, the code, its venv)
    /opt/gateway/1.5.0/
    /opt/gateway/current  ->  1.5.0     what the unit runs (ExecStart=/opt/gateway/current/bin/gateway)
    /opt/gateway/previous ->  1.4.0     the rollback target

Why this way: a symlink swap (``rename`` of a temporary link over ``current``) is atomic, so a
power cut leaves either the old or the new version selected, never a half-unpacked one. Only two
releases are kept (A/B), so flash wear and disk use stay bounded.

A package is ``NAME.tar.gz`` with ``release.json`` (``{"version": "1.5.0", "entry": "bin/gateway"}``)
at its top, plus a detached ``NAME.tar.gz.sig``: an Ed25519 signature over
``b"gateway-release-v1\\n" + sha512(package)``. The signature is checked *before* the archive is
opened at all; members are then checked for path traversal, links out of the tree and special
files before anything is written.

A release tree is a virtualenv built with ``--copies`` (no absolute symlinks: they are refused,
like any link leaving the release) at ``/opt/gateway/<version>``, holding ``bin/gateway`` and
``bin/python``.

READY: after switching, the updater deletes the ready file, restarts the service and waits for
the new version to write ``{"version": ..., "pid": ...}`` to the ready file. The daemon does this
(:func:`write_ready`) right after it sends ``READY=1`` to systemd, i.e. once its sources, outbox and
uplink are up. If that does not happen within the deadline, ``current`` is switched back and the
service restarted on the previous release.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.ops.ready import DEFAULT_READY_FILE, MANIFEST
from gateway.ops.ready import announce_ready as announce_ready  # the READY handshake lives there (re-exported)
from gateway.ops.ready import release_version as release_version
from gateway.ops.ready import write_ready as write_ready

DOMAIN = b"gateway-release-v1\n"
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
DEFAULT_RESTART = "systemctl restart gateway.service"
MAX_MEMBERS = 50_000
MAX_UNPACKED = 2 * 1024**3
RESERVED = {"current", "previous"}


class UpdateError(Exception):
    """A refused or failed update; the message says what and why."""


# --------------------------------------------------------------------------- signing


def _message(package: bytes) -> bytes:
    return DOMAIN + hashlib.sha512(package).digest()


def keygen(out_dir: Path) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    out_dir.mkdir(parents=True, exist_ok=True)
    priv, pub = out_dir / "release-signing.key", out_dir / "release-signing.pub"
    if priv.exists():
        raise UpdateError(f"{priv} exists; refusing to overwrite a signing key")
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return priv, pub


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise UpdateError(f"{path}: cannot load signing key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise UpdateError(f"{path}: not an Ed25519 private key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as e:
        raise UpdateError(f"--pubkey {path}: cannot load ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UpdateError(f"--pubkey {path}: not an Ed25519 public key")
    return key


def sign(package: Path, key_file: Path) -> Path:
    sig = _load_private(key_file).sign(_message(package.read_bytes()))
    out = Path(str(package) + ".sig")
    out.write_text(base64.b64encode(sig).decode() + "\n")
    return out


def verify(package_bytes: bytes, sig_text: bytes, pub: Ed25519PublicKey) -> None:
    try:
        sig = base64.b64decode(sig_text.strip(), validate=True)
    except ValueError:
        raise UpdateError("signature file is not base64") from None
    try:
        pub.verify(sig, _message(package_bytes))
    except InvalidSignature:
        raise UpdateError("signature does not verify with the trusted key: refusing the package") from None


def pack(src: Path, version: str, out: Path, entry: str = "bin/gateway") -> Path:
    """Build a release package from a directory (the release pipeline's step before ``sign``)."""
    if not VERSION_RE.match(version) or version in RESERVED:
        raise UpdateError(f"version {version!r} is not valid")
    if not (src / entry).is_file():
        raise UpdateError(f"{src}: entry point {entry} is missing")
    manifest = json.dumps({"version": version, "entry": entry}).encode()
    with tarfile.open(out, "w:gz") as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode, info.mtime = len(manifest), 0o644, int(time.time())
        tar.addfile(info, io.BytesIO(manifest))
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src).as_posix()
            if rel == MANIFEST:
                continue
            tar.add(p, arcname=rel, recursive=False)
    return out


# --------------------------------------------------------------------------- unpacking


@dataclass(frozen=True)
class Manifest:
    version: str
    entry: str


def check_members(tar: tarfile.TarFile) -> Manifest:
    """Everything must stay inside the release directory; refuse before extracting anything."""
    members = tar.getmembers()
    if len(members) > MAX_MEMBERS:
        raise UpdateError(f"package has {len(members)} members (limit {MAX_MEMBERS})")
    total = 0
    manifest: Manifest | None = None
    for m in members:
        name = PurePosixPath(m.name)
        if name.is_absolute() or ".." in name.parts or m.name.startswith(("/", "\\")):
            raise UpdateError(f"package member {m.name!r}: path escapes the release directory")
        if m.isdev() or m.isfifo() or m.islnk():
            raise UpdateError(f"package member {m.name!r}: special files and hard links are not allowed")
        if m.issym():
            target = PurePosixPath(m.linkname)
            resolved = PurePosixPath(*name.parent.parts, *target.parts)
            depth = 0
            for part in resolved.parts:
                depth += -1 if part == ".." else (0 if part == "." else 1)
                if depth < 0:
                    break
            if target.is_absolute() or depth < 0:
                raise UpdateError(f"package member {m.name!r}: symlink to {m.linkname!r} leaves the release")
        if m.isfile():
            total += m.size
        if m.name in (MANIFEST, f"./{MANIFEST}") and m.isfile():
            f = tar.extractfile(m)
            assert f is not None
            try:
                data = json.loads(f.read(65536))
                manifest = Manifest(str(data["version"]), str(data.get("entry", "bin/gateway")))
            except (ValueError, KeyError, TypeError):
                raise UpdateError(f"{MANIFEST}: not valid JSON with a version") from None
    if total > MAX_UNPACKED:
        raise UpdateError(f"package unpacks to {total} bytes (limit {MAX_UNPACKED})")
    if manifest is None:
        raise UpdateError(f"package has no {MANIFEST}")
    if not VERSION_RE.match(manifest.version) or manifest.version in RESERVED:
        raise UpdateError(f"{MANIFEST}: version {manifest.version!r} is not valid")
    e = PurePosixPath(manifest.entry)
    if e.is_absolute() or ".." in e.parts:
        raise UpdateError(f"{MANIFEST}: entry {manifest.entry!r} escapes the release")
    return manifest


def unpack(package_bytes: bytes, releases: Path) -> tuple[Manifest, Path]:
    """Unpack into a temporary directory beside the releases; the caller renames it into place."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(package_bytes), mode="r:gz")  # noqa: SIM115 - closed below
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UpdateError(f"package is not a tar.gz ({e})") from None
    with tar:
        try:
            manifest = check_members(tar)
        except (tarfile.TarError, EOFError) as e:
            raise UpdateError(f"package is damaged ({e})") from None
        tmp = Path(tempfile.mkdtemp(prefix=f".incoming-{manifest.version}-", dir=releases))
        try:
            tar.extractall(tmp, filter="data")  # our own checks above, plus the stdlib's "data" filter
        except (tarfile.TarError, EOFError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UpdateError(f"package is damaged or unsafe ({e})") from None
    entry = tmp / manifest.entry
    if not (entry.is_file() and os.access(entry, os.X_OK)):
        shutil.rmtree(tmp, ignore_errors=True)
        raise UpdateError(f"entry point {manifest.entry} is missing or not executable in the package")
    os.chmod(tmp, 0o755)  # noqa: S103 - code directory: world-readable like /usr, writable only by root
    return manifest, tmp


# --------------------------------------------------------------------------- switching


def _link(releases: Path, name: str) -> str | None:
    p = releases / name
    return os.readlink(p) if p.is_symlink() else None


def switch_link(releases: Path, name: str, version: str) -> None:
    """Atomically point ``releases/name`` at ``version`` (a relative link: the tree can be moved)."""
    tmp = releases / f".{name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(version, tmp)
    os.replace(tmp, releases / name)
    fd = os.open(releases, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_ready(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    v = data.get("version") if isinstance(data, dict) else None
    return v if isinstance(v, str) else None


def wait_ready(path: Path, version: str, timeout_s: float, poll_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if read_ready(path) == version:
            return True
        time.sleep(poll_s)
    return read_ready(path) == version


@contextlib.contextmanager
def _locked(releases: Path) -> Iterator[None]:
    fd = os.open(releases / ".update.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError("another update is running") from None
        yield
    finally:
        os.close(fd)


@dataclass
class UpdateResult:
    version: str
    previous: str | None
    outcome: str  # "switched" | "unchanged" | "rolled-back" | "failed"


def _restart(cmd: list[str], ready_file: Path, timeout_s: float, out: Any) -> None:
    with contextlib.suppress(FileNotFoundError):
        ready_file.unlink()
    env = dict(os.environ, GATEWAY_READY_FILE=str(ready_file))
    try:
        r = subprocess.run(cmd, env=env, timeout=timeout_s, check=False, capture_output=True, text=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"restart command failed: {e}", file=out)
        return
    if r.returncode != 0:
        print(f"restart command exited {r.returncode}: {r.stderr.strip()[:300]}", file=out)


def install(
    package: Path,
    releases: Path,
    pubkey: Path,
    sig: Path | None = None,
    restart_cmd: list[str] | None = None,
    ready_file: Path = DEFAULT_READY_FILE,
    ready_timeout_s: float = 120.0,
    out: Any = sys.stdout,
) -> UpdateResult:
    pub = load_public(pubkey)
    sig = sig or Path(str(package) + ".sig")
    try:
        data = package.read_bytes()
    except OSError as e:
        raise UpdateError(f"{package}: cannot read ({e.strerror})") from None
    try:
        sig_text = sig.read_bytes()
    except OSError as e:
        raise UpdateError(f"{sig}: cannot read the signature ({e.strerror}); unsigned packages are refused") from None
    verify(data, sig_text, pub)
    print(f"{package.name}: signature ok", file=out)
    releases.mkdir(parents=True, exist_ok=True)
    cmd = restart_cmd if restart_cmd is not None else shlex.split(DEFAULT_RESTART)
    with _locked(releases):
        old = _link(releases, "current")
        if old is not None and not (releases / old).is_dir():
            print(f"current points to a missing release {old!r}: no rollback target", file=out)
            old = None
        manifest, tmp = unpack(data, releases)
        version = manifest.version
        if old == version:
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"version {version} is already current; nothing to do", file=out)
            return UpdateResult(version, _link(releases, "previous"), "unchanged")
        dest = releases / version
        if dest.exists():
            shutil.rmtree(dest)  # a leftover of an earlier failed attempt; the package is verified
        os.replace(tmp, dest)
        switch_link(releases, "current", version)
        if old is not None:
            switch_link(releases, "previous", old)
        print(
            f"switched current: {old or '(none)'} -> {version}; waiting up to {ready_timeout_s:g}s for READY", file=out
        )
        _restart(cmd, ready_file, ready_timeout_s, out)
        if wait_ready(ready_file, version, ready_timeout_s):
            print(f"version {version} is READY", file=out)
            _prune(releases, keep={version, old})
            return UpdateResult(version, old, "switched")
        print(f"version {version} did not reach READY within {ready_timeout_s:g}s", file=out)
        if old is None:
            print("no previous release to roll back to", file=out)
            return UpdateResult(version, None, "failed")
        switch_link(releases, "current", old)
        with contextlib.suppress(FileNotFoundError):
            (releases / "previous").unlink()
        shutil.rmtree(dest, ignore_errors=True)
        _restart(cmd, ready_file, ready_timeout_s, out)
        ok = wait_ready(ready_file, old, ready_timeout_s)
        print(f"rolled back to {old}" + ("" if ok else f" (but {old} has not reported READY either)"), file=out)
        return UpdateResult(version, old, "rolled-back")


def _prune(releases: Path, keep: set[str | None]) -> None:
    for p in releases.iterdir():
        if p.name.startswith(".") or p.name in RESERVED or p.name in keep or p.is_symlink() or not p.is_dir():
            continue
        if VERSION_RE.match(p.name):
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- CLI

USAGE = """\
gateway update PACKAGE.tar.gz --releases-dir DIR --pubkey FILE [--sig FILE] [--restart-cmd CMD]
               [--ready-file FILE] [--ready-timeout S]
gateway update keygen --out DIR
gateway update sign PACKAGE.tar.gz --key FILE
gateway update pack SRC_DIR --version V --out PACKAGE.tar.gz"""


def _file(value: str, what: str) -> Path:
    """An existing regular file, or UpdateError naming the option."""
    p = Path(value)
    if not p.exists():
        raise UpdateError(f"{what} {p}: no such file")
    if not p.is_file():
        raise UpdateError(f"{what} {p}: not a regular file")
    return p


def _dir(value: str, what: str) -> Path:
    p = Path(value)
    if not p.is_dir():
        raise UpdateError(f"{what} {p}: {'not a directory' if p.exists() else 'no such directory'}")
    return p


def _out(value: str, what: str, *, directory: bool = False) -> Path:
    p = Path(value)
    if directory and p.exists() and not p.is_dir():
        raise UpdateError(f"{what} {p}: exists and is not a directory")
    if not directory and p.is_dir():
        raise UpdateError(f"{what} {p}: is a directory; give a file name")
    if not p.exists() and not p.parent.is_dir():
        raise UpdateError(f"{what} {p}: directory {p.parent} does not exist")
    return p


def _run(args: argparse.Namespace) -> int:
    rest: list[str] = args.rest
    action = args.target
    try:
        if action == "keygen":
            p = argparse.ArgumentParser(prog="gateway update keygen")
            p.add_argument("--out", required=True)
            a = p.parse_args(rest)
            priv, pub = keygen(_out(a.out, "--out", directory=True))
            print(f"private key: {priv} (keep offline)\npublic key:  {pub} (ship to boxes as --pubkey)")
            return 0
        if action == "sign":
            p = argparse.ArgumentParser(prog="gateway update sign")
            p.add_argument("package")
            p.add_argument("--key", required=True)
            a = p.parse_args(rest)
            package, key = _file(a.package, "PACKAGE"), _file(a.key, "--key")
            try:
                _load_private(key)
            except UpdateError as e:
                raise UpdateError(f"--key {e}") from None
            print(sign(package, key))
            return 0
        if action == "pack":
            p = argparse.ArgumentParser(prog="gateway update pack")
            p.add_argument("src")
            p.add_argument("--version", required=True)
            p.add_argument("--out", required=True)
            p.add_argument("--entry", default="bin/gateway")
            a = p.parse_args(rest)
            if not VERSION_RE.match(a.version) or a.version in RESERVED:
                raise UpdateError(f"--version {a.version!r} is not valid (letters, digits, '.', '+', '_', '-')")
            print(pack(_dir(a.src, "SRC_DIR"), a.version, _out(a.out, "--out"), a.entry))
            return 0
        p = argparse.ArgumentParser(prog="gateway update", usage=USAGE)
        p.add_argument("--releases-dir", required=True)
        p.add_argument("--pubkey", required=True)
        p.add_argument("--sig", default=None)
        p.add_argument("--restart-cmd", default=DEFAULT_RESTART)
        p.add_argument("--ready-file", default=str(DEFAULT_READY_FILE))
        p.add_argument("--ready-timeout", type=float, default=120.0)
        a = p.parse_args(rest)
        if not (math.isfinite(a.ready_timeout) and 0 < a.ready_timeout <= 3600):
            raise UpdateError(f"--ready-timeout {a.ready_timeout:g}: must be > 0 and <= 3600 seconds")
        package = _file(action, "PACKAGE")
        releases = _out(a.releases_dir, "--releases-dir", directory=True)  # created when missing
        pubkey = _file(a.pubkey, "--pubkey")
        load_public(pubkey)  # its errors name --pubkey
        res = install(
            package,
            releases,
            pubkey,
            _file(a.sig, "--sig") if a.sig else None,
            shlex.split(a.restart_cmd),
            Path(a.ready_file),
            a.ready_timeout,
        )
    except UpdateError as e:
        print(f"gateway update: refused: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"gateway update: failed: {e}", file=sys.stderr)
        return 1
    return 0 if res.outcome in ("switched", "unchanged") else 1


def add_commands(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "update", help="install a signed release (A/B, automatic rollback); keygen/sign/pack", usage=USAGE
    )
    p.add_argument("target", metavar="PACKAGE|keygen|sign|pack")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run)
