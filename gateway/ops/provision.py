"""``gateway provision``: turn a flashed image (or the running box) into a configured gateway.

Why this shape: retail IT provisions hundreds of boxes, often into a mounted image directory,
sometimes twice. So every step is *declarative* (compute the wanted file/directory/account state,
compare with what is there, change only the difference), which makes a second run a no-op that
says so, makes ``--dry-run`` exact, and makes a half-finished run safe to repeat.

The device key is generated here, on the box side, and never leaves it: only the CSR is handed to
the PKI. The signed certificate comes back in a second run with ``--cert``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVICE_USER = "gateway"
SERVICE_GROUP = "gateway"
ETC = Path("/etc/gateway")
TLS = ETC / "tls"
CONFIG = ETC / "gateway.toml"
CREDENTIAL = ETC / "technician.json"
LAYOUT = ETC / "layout.toml"
KEY = TLS / "device.key"
CSR = TLS / "device.csr"
CERT = TLS / "device.crt"
CA = TLS / "ca.pem"
RELEASE_PUBKEY = ETC / "release.pub"
COMMAND_PUBKEY = ETC / "command.pub"
STATE_DIR = Path("/var/lib/gateway")
LOG_DIR = Path("/var/log/gateway")
UNIT_DIR = Path("/etc/systemd/system")
MAIN_UNIT = "gateway.service"
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # same rule as config.Id (no '.': NATS)
USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 10


class ProvisionError(Exception):
    """Unsafe or invalid input: the message names the option/file and what is wrong."""


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Request:
    root: Path
    store_id: str
    gateway_id: str
    broker_host: str
    broker_port: int
    ca_pem: bytes
    layout_toml: bytes | None = None
    tech_user: str | None = None
    tech_password: str | None = None
    cert_pem: bytes | None = None
    force: bool = False
    dry_run: bool = False
    units_dir: Path | None = None
    update_pubkey_pem: bytes | None = None
    command_pubkey_pem: bytes | None = None


def check_command_pubkey(pem: bytes, source: str) -> bytes:
    """The platform's command-signing public key(s): Ed25519 PEM, never a private key."""
    from gateway.content.commands import CommandKeyError, load_public_keys

    try:
        load_public_keys(pem, f"--command-pubkey {source}")
    except CommandKeyError as e:
        raise ProvisionError(str(e)) from None
    return pem


def check_update_pubkey(pem: bytes, source: str) -> bytes:
    """The release-signing public key `gateway update --pubkey` trusts; must be Ed25519."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if b"PRIVATE KEY" in pem:
        raise ProvisionError(f"--update-pubkey {source}: contains a PRIVATE KEY; give the .pub file")
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as e:
        raise ProvisionError(f"--update-pubkey {source}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ProvisionError(f"--update-pubkey {source}: not an Ed25519 key")
    return pem


def check_id(value: str, what: str) -> str:
    if not ID_RE.fullmatch(value):
        raise ProvisionError(
            f"{what} {value!r} is not valid: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return value


def parse_broker(url: str) -> tuple[str, int]:
    """Only ``mqtts://host[:port]``: the uplink carries store data and must be TLS."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise ProvisionError(f"--broker {url!r}: {e}") from None
    if u.scheme != "mqtts":
        raise ProvisionError(f"--broker {url!r}: scheme must be mqtts:// (TLS); got {u.scheme or 'none'!r}")
    if not u.hostname:
        raise ProvisionError(f"--broker {url!r}: no host")
    if u.username or u.password:
        raise ProvisionError(f"--broker {url!r}: credentials in the URL are not allowed (the box uses its certificate)")
    if u.path not in ("", "/") or u.query or u.fragment:
        raise ProvisionError(f"--broker {url!r}: unexpected path/query; use mqtts://host:port")
    host = u.hostname
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$", host):
            raise ProvisionError(f"--broker {url!r}: {host!r} is not a valid host name") from None
    return host, port or 8883


def load_ca(pem: bytes, source: str) -> list[x509.Certificate]:
    if b"PRIVATE KEY" in pem:
        raise ProvisionError(f"--ca {source}: contains a PRIVATE KEY; give only the CA certificate(s)")
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise ProvisionError(f"--ca {source}: not a PEM certificate bundle ({e})") from None
    now = dt.datetime.now(dt.UTC)
    if all(c.not_valid_after_utc < now for c in certs):
        raise ProvisionError(f"--ca {source}: every certificate in the bundle has expired")
    return certs


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ProvisionError(f"{what} {path}: cannot read ({e.strerror})") from None


def request_from_args(args: argparse.Namespace) -> Request:
    store_id = check_id(args.store_id, "--store-id")
    gateway_id = check_id(args.gateway_id, "--gateway-id")
    host, port = parse_broker(args.broker)
    ca_pem = _read(args.ca, "--ca")
    load_ca(ca_pem, args.ca)
    layout_toml = None
    if args.layout:
        from gateway.layout import load_layout

        layout_toml = _read(args.layout, "--layout")
        try:
            lay = load_layout(args.layout)
        except Exception as e:  # load_layout raises one readable error per problem
            raise ProvisionError(f"--layout {args.layout}: {e}") from None
        if lay.store.id != store_id:
            raise ProvisionError(f"--layout {args.layout}: layout is for store {lay.store.id!r}, not {store_id!r}")
    tech_user = tech_pw = None
    if (args.tech_user is None) != (args.tech_password_file is None):
        raise ProvisionError("--tech-user and --tech-password-file go together")
    if args.tech_user is not None:
        if not USER_RE.match(args.tech_user):
            raise ProvisionError(f"--tech-user {args.tech_user!r}: use letters, digits, '_', '.', '@', '-'")
        tech_user = args.tech_user
        try:
            tech_pw = _read(args.tech_password_file, "--tech-password-file").decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ProvisionError(f"--tech-password-file {args.tech_password_file}: not UTF-8 text") from None
        if len(tech_pw) < MIN_PASSWORD:
            raise ProvisionError(f"--tech-password-file: password shorter than {MIN_PASSWORD} characters")
    cert_pem = _read(args.cert, "--cert") if args.cert else None
    upd = None
    if args.update_pubkey:
        upd = check_update_pubkey(_read(args.update_pubkey, "--update-pubkey"), args.update_pubkey)
    cmd_key = None
    if args.command_pubkey:
        cmd_key = check_command_pubkey(_read(args.command_pubkey, "--command-pubkey"), args.command_pubkey)
    root = Path(args.root)
    if not root.is_dir():
        raise ProvisionError(f"--root {root}: not a directory")
    return Request(
        root=root.resolve(),
        store_id=store_id,
        gateway_id=gateway_id,
        broker_host=host,
        broker_port=port,
        ca_pem=ca_pem,
        layout_toml=layout_toml,
        tech_user=tech_user,
        tech_password=tech_pw,
        cert_pem=cert_pem,
        force=args.force,
        dry_run=args.dry_run,
        units_dir=Path(args.units_dir) if args.units_dir else None,
        update_pubkey_pem=upd,
        command_pubkey_pem=cmd_key,
    )


# --------------------------------------------------------------------------- applying state


@dataclass
class Plan:
    """Applies wanted state under ``root``; records one line per change (or would-be change)."""

    root: Path
    dry_run: bool
    out: TextIO
    uids: dict[str, int] = field(default_factory=lambda: {"root": 0})
    gids: dict[str, int] = field(default_factory=lambda: {"root": 0})
    changes: list[str] = field(default_factory=list)
    can_chown: bool = field(default_factory=lambda: os.geteuid() == 0)
    planned: set[Path] = field(default_factory=set)  # dry run: directories that would exist

    def exists(self, box: Path) -> bool:
        return box in self.planned or self.host(box).exists()

    def host(self, box_path: Path) -> Path:
        return self.root / box_path.relative_to("/")

    def note(self, msg: str) -> None:
        line = f"would {msg}" if self.dry_run else msg
        self.changes.append(line)
        print(line, file=self.out)

    def _ids(self, owner: str, group: str) -> tuple[int, int]:
        # In a dry run the service account may not exist yet: report with a placeholder id.
        return self.uids.get(owner, -1), self.gids.get(group, -1)

    def _check_not_symlink(self, p: Path) -> None:
        if p.is_symlink():
            raise ProvisionError(f"{p}: is a symlink; refusing to write through it (inspect the image)")

    def ensure_dir(self, box: Path, mode: int, owner: str = "root", group: str = "root", fix: bool = True) -> None:
        p = self.host(box)
        self._check_not_symlink(p)
        uid, gid = self._ids(owner, group)
        if not self.exists(box):
            if box.parent != box and not self.exists(box.parent):
                self.ensure_dir(box.parent, 0o755, fix=False)
            self.note(f"create directory {box} ({mode:04o} {owner}:{group})")
            self.planned.add(box)
            if not self.dry_run:
                p.mkdir(mode=mode)
                self._apply_meta(p, mode, uid, gid)
            return
        if box in self.planned:
            return
        if not p.is_dir():
            raise ProvisionError(f"{box} exists in the target but is not a directory")
        if fix:
            self._fix_meta(box, p, mode, owner, group)

    def _fix_meta(self, box: Path, p: Path, mode: int, owner: str, group: str) -> None:
        st = p.lstat()
        uid, gid = self._ids(owner, group)
        if st.st_mode & 0o7777 != mode:
            self.note(f"chmod {box} {st.st_mode & 0o7777:04o} -> {mode:04o}")
            if not self.dry_run:
                os.chmod(p, mode)
        if self.can_chown and (st.st_uid, st.st_gid) != (uid, gid):
            self.note(f"chown {box} -> {owner}:{group}")
            if not self.dry_run:
                os.chown(p, uid, gid)

    def _apply_meta(self, p: Path, mode: int, uid: int, gid: int) -> None:
        os.chmod(p, mode)
        if self.can_chown:
            os.chown(p, uid, gid)

    def ensure_file(
        self, box: Path, content: bytes, mode: int, owner: str = "root", group: str = "root", show: bool = False
    ) -> None:
        p = self.host(box)
        self._check_not_symlink(p)
        if p.exists():
            if not p.is_file():
                raise ProvisionError(f"{box} exists in the target but is not a regular file")
            if p.read_bytes() == content:
                self._fix_meta(box, p, mode, owner, group)
                return
            verb = "update"
        else:
            verb = "create"
        self.note(f"{verb} {box} ({mode:04o} {owner}:{group}, {len(content)} bytes)")
        if show and self.dry_run:
            for line in content.decode("utf-8", "replace").splitlines():
                print(f"    | {line}", file=self.out)
        if not self.dry_run:
            self.write_atomic(p, content, mode, *self._ids(owner, group))

    def remove(self, box: Path, why: str) -> None:
        p = self.host(box)
        if p.exists() or p.is_symlink():
            self.note(f"remove {box} ({why})")
            if not self.dry_run:
                p.unlink()

    def ensure_symlink(self, box: Path, target: str) -> None:
        p = self.host(box)
        if p.is_symlink() and os.readlink(p) == target:
            return
        if p.exists() and not p.is_symlink():
            raise ProvisionError(f"{box} exists and is not a symlink")
        if not self.exists(box.parent):
            self.ensure_dir(box.parent, 0o755)
        self.note(f"link {box} -> {target}")
        if not self.dry_run:
            tmp = p.with_name(f".{p.name}.tmp{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(target, tmp)
            os.replace(tmp, p)

    def write_atomic(self, p: Path, content: bytes, mode: int, uid: int, gid: int) -> None:
        """Temp file in the same directory, mode and owner set before the rename: never a window
        where a key or credential is readable by the wrong user, never a half-written file."""
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
        try:
            os.fchmod(fd, mode)
            if self.can_chown:
                os.fchown(fd, uid, gid)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


# --------------------------------------------------------------------------- accounts


def _login_defs(root: Path) -> tuple[int, int]:
    lo, hi = 100, 999
    with contextlib.suppress(OSError):
        for line in (root / "etc/login.defs").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == "SYS_UID_MIN" and parts[1].isdigit():
                lo = int(parts[1])
            if len(parts) == 2 and parts[0] == "SYS_UID_MAX" and parts[1].isdigit():
                hi = int(parts[1])
    return lo, hi


def _entries(text: str) -> list[list[str]]:
    return [ln.split(":") for ln in text.splitlines() if ln and not ln.startswith("#")]


def _append_line(text: str, line: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line + "\n"


def ensure_accounts_in_root(plan: Plan) -> None:
    """Create the service user/group by editing the image's passwd/group/shadow (never the host's).

    Existing lines are kept byte for byte; only missing entries are appended, so the edit is
    idempotent and safe on an image that already has other system users."""
    etc = plan.root / "etc"
    paths = {n: etc / n for n in ("passwd", "group", "shadow", "gshadow")}
    text = {n: (p.read_text() if p.exists() else "") for n, p in paths.items()}
    for n in ("passwd", "group"):
        for i, e in enumerate(_entries(text[n])):
            if len(e) < 4:
                raise ProvisionError(f"{plan.host(Path('/etc') / n)}: line {i + 1} is malformed; fix the image first")
    users = {e[0]: e for e in _entries(text["passwd"])}
    groups = {e[0]: e for e in _entries(text["group"])}
    used_uids = {int(e[2]) for e in users.values() if e[2].isdigit()}
    used_gids = {int(e[2]) for e in groups.values() if e[2].isdigit()}
    for e in users.values():
        plan.uids[e[0]] = int(e[2]) if e[2].isdigit() else -1
    for e in groups.values():
        plan.gids[e[0]] = int(e[2]) if e[2].isdigit() else -1
    new = dict(text)
    if SERVICE_GROUP in groups:
        gid = int(groups[SERVICE_GROUP][2])
    else:
        lo, hi = _login_defs(plan.root)
        free = [i for i in range(hi, lo - 1, -1) if i not in used_gids and i not in used_uids]
        if not free:
            raise ProvisionError(f"no free system id in {lo}..{hi} in the target's passwd/group")
        gid = free[0]
        new["group"] = _append_line(new["group"], f"{SERVICE_GROUP}:x:{gid}:")
        if paths["gshadow"].exists():
            new["gshadow"] = _append_line(new["gshadow"], f"{SERVICE_GROUP}:!::")
    if SERVICE_USER in users:
        uid = int(users[SERVICE_USER][2])
    else:
        uid = gid if gid not in used_uids else max(i for i in range(100, 1000) if i not in used_uids)
        home, shell = STATE_DIR, "/usr/sbin/nologin"
        new["passwd"] = _append_line(new["passwd"], f"{SERVICE_USER}:x:{uid}:{gid}:Retail gateway:{home}:{shell}")
    if not any(e[0] == SERVICE_USER for e in _entries(new["shadow"])):
        days = int(dt.datetime.now(dt.UTC).timestamp() // 86400)
        new["shadow"] = _append_line(new["shadow"], f"{SERVICE_USER}:!*:{days}::::::")
    # BlueZ's D-Bus policy (bluetooth.conf) lets members of "bluetooth" talk to org.bluez.
    if "bluetooth" in groups:
        members = [m for m in groups["bluetooth"][3].split(",") if m]
        if SERVICE_USER not in members:
            lines = new["group"].splitlines(keepends=True)
            for i, ln in enumerate(lines):
                if ln.split(":", 1)[0] == "bluetooth":
                    e = ln.rstrip("\n").split(":")
                    e[3] = ",".join([*members, SERVICE_USER])
                    lines[i] = ":".join(e) + ("\n" if ln.endswith("\n") else "")
            new["group"] = "".join(lines)
    plan.uids[SERVICE_USER], plan.gids[SERVICE_GROUP] = uid, gid
    modes = {"passwd": 0o644, "group": 0o644, "shadow": 0o640, "gshadow": 0o640}
    shadow_gid = plan.gids.get("shadow", 0)
    for n in ("group", "gshadow", "passwd", "shadow"):
        if new[n] == text[n]:
            continue
        p = paths[n]
        if p.exists():
            st = p.stat()
            mode, o, g = st.st_mode & 0o7777, st.st_uid, st.st_gid
        else:
            mode, o, g = modes[n], 0, (shadow_gid if n in ("shadow", "gshadow") else 0)
        plan.note(f"{'update' if p.exists() else 'create'} /etc/{n} (service account {SERVICE_USER})")
        if not plan.dry_run:
            etc.mkdir(parents=True, exist_ok=True)
            plan.write_atomic(p, new[n].encode(), mode, o, g)


def ensure_accounts_on_host(plan: Plan) -> None:
    """On the running box: the distribution's own tools, which also handle nscd/sssd and locking."""
    import grp
    import pwd

    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        plan.note(f"create system user {SERVICE_USER}")
        if not plan.dry_run:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--home-dir",
                    str(STATE_DIR),
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    "--comment",
                    "Retail gateway",
                    SERVICE_USER,
                ],
                check=True,
            )
    try:
        bt = grp.getgrnam("bluetooth")
        if SERVICE_USER not in bt.gr_mem:
            plan.note(f"add {SERVICE_USER} to group bluetooth")
            if not plan.dry_run:
                subprocess.run(["usermod", "--append", "--groups", "bluetooth", SERVICE_USER], check=True)
    except KeyError:
        pass
    for p in pwd.getpwall():
        plan.uids[p.pw_name] = p.pw_uid
    for g in grp.getgrall():
        plan.gids[g.gr_name] = g.gr_gid


# --------------------------------------------------------------------------- TLS identity


def _subject(gateway_id: str, store_id: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, gateway_id), x509.NameAttribute(NameOID.ORGANIZATION_NAME, store_id)]
    )


def _pub(key: Any) -> bytes:
    """SubjectPublicKeyInfo DER of a public key, or of a private key's public half."""
    if hasattr(key, "private_bytes"):
        key = key.public_key()
    return bytes(key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def make_csr(key: ec.EllipticCurvePrivateKey, gateway_id: str, store_id: str) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(gateway_id, store_id))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(gateway_id)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def ensure_identity(plan: Plan, req: Request) -> bool:
    """Device key + CSR (+ signed certificate). Returns whether a certificate is installed."""
    key_p, csr_p, cert_p = plan.host(KEY), plan.host(CSR), plan.host(CERT)
    want = _subject(req.gateway_id, req.store_id)
    key: ec.EllipticCurvePrivateKey | None = None
    if key_p.exists() and not req.force:
        try:
            loaded = serialization.load_pem_private_key(key_p.read_bytes(), password=None)
        except (ValueError, TypeError, OSError) as e:
            raise ProvisionError(f"{KEY}: existing key is unreadable ({e}); use --force to replace it") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ProvisionError(f"{KEY}: existing key is not an EC key; use --force to replace it")
        key = loaded
        for path, what in ((csr_p, "CSR"), (cert_p, "certificate")):
            if not path.exists():
                continue
            try:
                obj: Any = (
                    x509.load_pem_x509_csr(path.read_bytes())
                    if what == "CSR"
                    else x509.load_pem_x509_certificate(path.read_bytes())
                )
            except ValueError:
                continue  # a garbled CSR/cert is simply regenerated/replaced below
            if _cn(obj.subject) != req.gateway_id:
                raise ProvisionError(
                    f"{KEY}: an existing key belongs to gateway {_cn(obj.subject)!r} (see its {what}), "
                    f"not {req.gateway_id!r}; use --force to generate a new key for this box"
                )
    new_key = key is None
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        plan.ensure_file(KEY, key_pem, 0o600, SERVICE_USER, SERVICE_GROUP)
    else:
        plan.ensure_file(KEY, key_p.read_bytes(), 0o600, SERVICE_USER, SERVICE_GROUP)  # fixes mode/owner only
    csr_pem: bytes | None = None
    if not new_key and csr_p.exists():
        with contextlib.suppress(ValueError):
            old = x509.load_pem_x509_csr(csr_p.read_bytes())
            if old.subject == want and _pub(old.public_key()) == _pub(key) and old.is_signature_valid:
                csr_pem = csr_p.read_bytes()
    if csr_pem is None:
        csr_pem = make_csr(key, req.gateway_id, req.store_id)  # ECDSA is randomised: only when needed
    plan.ensure_file(CSR, csr_pem, 0o644)
    if req.cert_pem is not None:
        cert = check_cert(req.cert_pem, key, req)
        plan.ensure_file(CERT, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return True
    if cert_p.exists():
        try:
            cur = x509.load_pem_x509_certificate(cert_p.read_bytes())
            ok = _pub(cur.public_key()) == _pub(key)
        except ValueError:
            ok = False
        if not ok:
            plan.remove(CERT, "does not match the device key")
            return False
        return True
    return False


def check_cert(pem: bytes, key: ec.EllipticCurvePrivateKey, req: Request) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise ProvisionError(f"--cert: not a PEM certificate ({e})") from None
    if _pub(cert.public_key()) != _pub(key):
        raise ProvisionError("--cert: the certificate is not for this box's device key (was the right CSR signed?)")
    if _cn(cert.subject) != req.gateway_id:
        raise ProvisionError(f"--cert: certificate CN is {_cn(cert.subject)!r}, expected {req.gateway_id!r}")
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ProvisionError(
            f"--cert: not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d})"
        )
    for ca in x509.load_pem_x509_certificates(req.ca_pem):
        try:
            cert.verify_directly_issued_by(ca)
            return cert
        except (ValueError, TypeError, Exception):  # noqa: S112 - InvalidSignature etc: try the next CA
            continue
    raise ProvisionError("--cert: not issued by a CA in the --ca bundle")


# --------------------------------------------------------------------------- config, credential


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list) and all(not isinstance(x, dict) for x in v):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dump_toml(data: dict[str, Any], header: str = "") -> str:
    """Enough TOML for the settings file: sections of scalars, lists, inline tables, arrays of tables."""
    out = [header] if header else []
    for section, body in data.items():
        if not isinstance(body, dict):
            out.append(f"{section} = {_toml_value(body)}")
            continue
        scalars = {k: v for k, v in body.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
        tables = {k: v for k, v in body.items() if k not in scalars}
        out.append(f"\n[{section}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        for k, rows in tables.items():
            for row in rows:
                out.append(f"\n[[{section}.{k}]]")
                out += [f"{rk} = {_toml_value(rv)}" for rk, rv in row.items()]
    return "\n".join(out).strip("\n") + "\n"


def render_config(req: Request, existing: dict[str, Any], has_layout: bool, has_credential: bool) -> str:
    """Provisioned keys on top of whatever a technician already set in the file."""
    data: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in existing.items()}

    def put(section: str, **kv: Any) -> None:
        data.setdefault(section, {}).update(kv)

    put("gateway", id=req.gateway_id, store_id=req.store_id)
    put("paths", state_dir=str(STATE_DIR))
    if has_layout:
        put("paths", layout=str(LAYOUT))
    put(
        "mqtt",
        host=req.broker_host,
        port=req.broker_port,
        tls=True,
        ca_file=str(CA),
        cert_file=str(CERT),
        key_file=str(KEY),
    )
    put("content", command_public_key_file=str(COMMAND_PUBKEY))
    data.setdefault("log", {}).setdefault("format", "json")
    if has_credential:
        put("status", credential_file=str(CREDENTIAL))
    order = ["gateway", "paths", "mqtt", "content", "status", "log"]
    ordered = {k: data[k] for k in order if k in data} | {k: v for k, v in data.items() if k not in order}
    return dump_toml(ordered, "# Written by `gateway provision`; keys you add are kept on re-provisioning.")


def validate_config(text: str) -> None:
    from gateway.config import ConfigError, load_settings

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        load_settings(f.name)
    except ConfigError as e:
        raise ProvisionError("generated config is invalid:\n  " + "\n  ".join(e.lines)) from None
    finally:
        os.unlink(f.name)


def credential_bytes(plan: Plan, req: Request) -> bytes | None:
    """Keep the stored hash when it already verifies with today's parameters: argon2 salts are
    random, so re-hashing every run would break idempotency (and needlessly rotate the file); a hash
    made with other parameters (argon2-cffi's 64 MiB default before) is made anew."""
    from argon2.exceptions import InvalidHashError, VerificationError

    from gateway.status.auth import password_hasher

    p = plan.host(CREDENTIAL)
    old: dict[str, Any] | None = None
    if p.exists():
        with contextlib.suppress(ValueError, OSError):
            old = json.loads(p.read_text())
    if req.tech_user is None or req.tech_password is None:
        return p.read_bytes() if p.exists() else None
    ph = password_hasher()
    if old and old.get("user") == req.tech_user and isinstance(old.get("hash"), str):
        try:
            if ph.verify(old["hash"], req.tech_password) and not ph.check_needs_rehash(old["hash"]):
                return p.read_bytes()
        except (VerificationError, InvalidHashError):
            pass
    return (json.dumps({"user": req.tech_user, "hash": ph.hash(req.tech_password)}) + "\n").encode()


def default_units_dir() -> Path:
    here = Path(__file__).resolve().parent.parent  # the gateway package
    # a source checkout (systemd/ beside gateway/), or a release venv with systemd/ at its root
    for cand in (here.parent / "systemd", Path(sys.prefix) / "systemd", here / "data" / "systemd"):
        if (cand / MAIN_UNIT).exists():
            return cand
    raise ProvisionError("cannot find the systemd units (systemd/ next to the gateway package); use --units-dir")


# --------------------------------------------------------------------------- the whole run


def provision(req: Request, out: TextIO = sys.stdout) -> Plan:
    plan = Plan(root=req.root, dry_run=req.dry_run, out=out)
    on_host = req.root == Path("/")
    (ensure_accounts_on_host if on_host else ensure_accounts_in_root)(plan)
    plan.ensure_dir(Path("/etc"), 0o755, fix=False)
    plan.ensure_dir(ETC, 0o750, "root", SERVICE_GROUP)
    plan.ensure_dir(TLS, 0o750, "root", SERVICE_GROUP)
    plan.ensure_dir(STATE_DIR, 0o750, SERVICE_USER, SERVICE_GROUP)
    plan.ensure_dir(LOG_DIR, 0o750, SERVICE_USER, SERVICE_GROUP)
    plan.ensure_file(CA, req.ca_pem, 0o644)
    if req.update_pubkey_pem is not None:
        plan.ensure_file(RELEASE_PUBKEY, req.update_pubkey_pem, 0o644)
    # cloud commands are refused unless signed with the platform's key: the box gets its public half
    if req.command_pubkey_pem is not None:
        plan.ensure_file(COMMAND_PUBKEY, req.command_pubkey_pem, 0o644)
    elif plan.host(COMMAND_PUBKEY).exists():
        check_command_pubkey(plan.host(COMMAND_PUBKEY).read_bytes(), str(COMMAND_PUBKEY))
    else:
        raise ProvisionError(
            "--command-pubkey FILE is required: the platform's Ed25519 command-signing public key"
            " (without it the gateway refuses every cloud command)"
        )
    has_cert = ensure_identity(plan, req)
    cred = credential_bytes(plan, req)
    if cred is not None:
        plan.ensure_file(CREDENTIAL, cred, 0o640, "root", SERVICE_GROUP)
    if req.layout_toml is not None:
        plan.ensure_file(LAYOUT, req.layout_toml, 0o640, "root", SERVICE_GROUP, show=True)
    existing: dict[str, Any] = {}
    cfg_p = plan.host(CONFIG)
    if cfg_p.exists():
        try:
            existing = tomllib.loads(cfg_p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ProvisionError(f"{CONFIG}: existing file is not valid TOML ({e}); fix or remove it") from None
    has_layout = req.layout_toml is not None or plan.host(LAYOUT).exists()
    text = render_config(req, existing, has_layout, cred is not None)
    validate_config(text)
    plan.ensure_file(CONFIG, text.encode(), 0o640, "root", SERVICE_GROUP, show=True)
    units = req.units_dir or default_units_dir()
    plan.ensure_dir(UNIT_DIR, 0o755, fix=False)
    for unit in sorted(units.glob("*.service")):
        plan.ensure_file(UNIT_DIR / unit.name, unit.read_bytes(), 0o644)
    plan.ensure_symlink(UNIT_DIR / "multi-user.target.wants" / MAIN_UNIT, str(UNIT_DIR / MAIN_UNIT))
    if on_host and plan.changes and not req.dry_run and shutil.which("systemctl"):
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    if not plan.can_chown:
        print("warning: not running as root: file ownership was not set", file=out)
    if not plan.changes:
        print(
            f"no changes: gateway {req.gateway_id} (store {req.store_id}) is already provisioned as requested", file=out
        )
    elif req.dry_run:
        print(f"dry run: {len(plan.changes)} change(s) would be made; nothing was written", file=out)
    else:
        print(f"provisioned gateway {req.gateway_id} (store {req.store_id}): {len(plan.changes)} change(s)", file=out)
    if not has_cert:
        print(
            f"next: have {CSR} signed by the store PKI, then re-run with --cert FILE (same other options)",
            file=out,
        )
    return plan


def _cmd(args: argparse.Namespace) -> int:
    try:
        req = request_from_args(args)
        provision(req)
    except ProvisionError as e:
        print(f"gateway provision: error: {e}", file=sys.stderr)
        return 2
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"gateway provision: failed: {e}", file=sys.stderr)
        return 1
    return 0


def add_commands(sub: Any, _cmd_func: Callable[[argparse.Namespace], int] = _cmd) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "provision", help="provision a gateway into a target root (an image directory or /)"
    )
    p.add_argument("--root", required=True, help="target root: a mounted image directory, or / on the box")
    p.add_argument("--store-id", required=True)
    p.add_argument("--gateway-id", required=True)
    p.add_argument("--broker", required=True, help="mqtts://host[:port] of the central broker")
    p.add_argument("--ca", required=True, help="CA bundle (PEM) that signs the broker and device certificates")
    p.add_argument("--layout", help="store layout TOML (validated)")
    p.add_argument("--tech-user", help="technician login for the status page")
    p.add_argument("--tech-password-file", help="file holding the technician password (hashed with argon2id)")
    p.add_argument("--cert", help="signed device certificate to import (second step)")
    p.add_argument("--update-pubkey", help="Ed25519 release-signing public key for `gateway update`")
    p.add_argument(
        "--command-pubkey",
        help="the platform's Ed25519 command-signing public key (PEM); required unless already installed",
    )
    p.add_argument("--units-dir", help=argparse.SUPPRESS)
    p.add_argument("--force", action="store_true", help="replace an existing device key (new CSR needed)")
    p.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    p.set_defaults(func=_cmd_func)
