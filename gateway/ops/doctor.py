"""``gateway doctor``: field self-diagnosis with one remedy per problem.

Why: the person in front of the box is store staff or a retail-IT technician on the phone, not a
developer. Each check says pass/warn/fail, what it saw, and what to do about it; the exit code
(0 all pass or warn, 1 any fail) lets fleet tooling run it over SSH. Checks are read-only: the
outbox is opened ``mode=ro``, the broker check connects and disconnects without publishing.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import datetime as dt
import json
import math
import os
import re
import shutil
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.config import ConfigError, Settings, load_settings

Status = Literal["pass", "warn", "fail", "skip"]
DEFAULT_CONFIG = Path("/etc/gateway/gateway.toml")
MIN_FREE_BYTES = 200 * 1024 * 1024
WARN_FREE_FRACTION = 0.10


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    remedy: str = ""


# --------------------------------------------------------------------------- pure verdicts

TIME_ERROR = 5
STA_UNSYNC = 0x0040


def clock_verdict(state: int, status_flags: int, now: float) -> Check:
    """From adjtimex(2): the kernel's view of NTP discipline. A Pi has no RTC, so a year in the
    past also means "never synchronised since boot"."""
    year = dt.datetime.fromtimestamp(now, dt.UTC).year
    if year < 2025:
        return Check("clock", "fail", f"system time is in {year}", _CLOCK_REMEDY)
    if state == TIME_ERROR or status_flags & STA_UNSYNC:
        return Check("clock", "fail", "kernel reports the clock as not synchronised (adjtimex)", _CLOCK_REMEDY)
    return Check("clock", "pass", "synchronised (adjtimex)")


_CLOCK_REMEDY = (
    "enable NTP: `timedatectl set-ntp true`; allow UDP 123 to the store's NTP server; TLS and event times need it"
)


def monitor_capable_phys(iw_list: str) -> list[str]:
    """Wiphys whose 'Supported interface modes' include monitor, from `iw list` output."""
    phys: list[str] = []
    phy: str | None = None
    in_modes = False
    for line in iw_list.splitlines():
        m = re.match(r"^Wiphy (\S+)", line)
        if m:
            phy, in_modes = m.group(1), False
            continue
        s = line.strip()
        if s.startswith("Supported interface modes:"):
            in_modes = True
            continue
        if in_modes:
            if s.startswith("* "):
                if s[2:].strip() == "monitor" and phy is not None and phy not in phys:
                    phys.append(phy)
                continue
            in_modes = False
    return phys


def disk_verdict(path: Path, total: int, free: int) -> Check:
    frac = free / total if total else 0.0
    detail = f"{path}: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB ({frac:.0%})"
    remedy = "free space on the data partition (old logs, /var/cache); the outbox evicts low-priority events when full"
    if free < MIN_FREE_BYTES:
        return Check("disk", "fail", detail, remedy)
    if frac < WARN_FREE_FRACTION:
        return Check("disk", "warn", detail, remedy)
    return Check("disk", "pass", detail)


# --------------------------------------------------------------------------- checks with I/O


# preflight fields that have a check row of their own below (layout, tls identity, technician login)
_OWN_ROWS = ("paths.layout", "mqtt.ca_file", "mqtt.cert_file", "mqtt.key_file", "status.credential_file")


def check_config(path: Path | None) -> tuple[Check, Settings | None]:
    """The settings model, then what would stop `gateway run` (gateway/ops/preflight.py)."""
    from gateway.ops.preflight import check

    remedy = f"fix the file, then `gateway config check {path}`" if path else "set GATEWAY_* or give --config"
    try:
        s = load_settings(path)
    except ConfigError as e:
        return Check("config", "fail", "; ".join(e.lines)[:400], remedy), None
    ok = f"{path or '<defaults+env>'}: gateway {s.gateway.id}, store {s.gateway.store_id}"
    problems = [p for p in check(s) if p.field not in _OWN_ROWS]
    errors = [p.line() for p in problems if p.severity == "error"]
    warnings = [p.line() for p in problems if p.severity == "warning"]
    if errors:
        return Check("config", "fail", "; ".join(errors + warnings)[:600], remedy), s
    if warnings:
        return Check("config", "warn", f"{ok}; " + "; ".join(warnings)[:500], remedy), s
    return Check("config", "pass", ok), s


def check_layout(s: Settings) -> Check:
    from gateway.layout import load_layout

    if s.paths.layout is None:
        return Check("layout", "warn", "no layout configured: the embedded example store is used", "provision --layout")
    try:
        lay = load_layout(s.paths.layout)
    except Exception as e:  # load_layout's error names the field; doctor must not crash on it
        return Check("layout", "fail", f"{s.paths.layout}: {e}"[:400], "fix the layout file; re-run provisioning")
    if lay.store.id != s.gateway.store_id:
        return Check(
            "layout",
            "fail",
            f"layout is for store {lay.store.id!r}, config says {s.gateway.store_id!r}",
            "re-provision",
        )
    return Check("layout", "pass", f"{lay.store.id}: {len(lay.sensors)} sensors, {len(lay.zones)} zones")


def check_coverage(s: Settings) -> Check:
    """Can the layout's sensors place a standing visitor in each zone? (``gateway layout check``)"""
    from gateway.layout import embedded_layout, load_layout
    from gateway.ops.layout_check import RadioModel, check_layout_coverage, doctor_summary

    try:
        lay = load_layout(s.paths.layout) if s.paths.layout is not None else embedded_layout()
    except Exception:  # the layout row says why
        return Check("zone coverage", "skip", "layout not readable")
    report = check_layout_coverage(lay, RadioModel.from_settings(s.localization))
    detail, remedy = doctor_summary(report)
    return Check("zone coverage", "pass" if report.ok else "warn", detail, remedy)


def check_disk(s: Settings) -> Check:
    d = s.paths.state_dir
    if not d.is_dir():
        return Check(
            "state dir", "fail", f"{d} does not exist", "re-run provisioning (creates it 0750 gateway:gateway)"
        )
    if not os.access(d, os.W_OK):
        return Check("state dir", "fail", f"{d} is not writable by uid {os.getuid()}", f"chown gateway:gateway {d}")
    u = shutil.disk_usage(d)
    return disk_verdict(d, u.total, u.free)


def check_clock() -> Check:
    try:
        r = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=3,
            check=False,
        )
        if r.returncode == 0 and r.stdout.strip() in ("yes", "no"):
            if r.stdout.strip() == "yes":
                return Check("clock", "pass", "synchronised (timedatectl)")
            return Check("clock", "fail", "timedatectl: NTPSynchronized=no", _CLOCK_REMEDY)
    except (OSError, subprocess.TimeoutExpired):
        pass
    buf = ctypes.create_string_buffer(512)  # struct timex is < 256 bytes on every ABI
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError) as e:
        return Check("clock", "warn", f"cannot query the clock state ({e})", _CLOCK_REMEDY)
    if state < 0:
        return Check("clock", "warn", f"adjtimex failed (errno {ctypes.get_errno()})", _CLOCK_REMEDY)
    status_flags = int.from_bytes(buf.raw[4:8], sys.byteorder, signed=True)  # after `unsigned int modes`
    return clock_verdict(state, status_flags, time.time())


def check_outbox(s: Settings) -> Check:
    p = s.outbox_path
    if not p.exists():
        return Check("outbox", "pass", f"{p} not created yet (the daemon creates it on first start)")
    try:
        with p.open("rb") as f:
            header = f.read(16)
    except OSError as e:
        return Check("outbox", "fail", f"{p}: cannot read ({e.strerror})", "check ownership: gateway:gateway 0640")
    if header != b"SQLite format 3\x00":
        return Check("outbox", "fail", f"{p}: not an SQLite database", _OUTBOX_REMEDY)
    try:
        con = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=2)
        try:
            rows = [r[0] for r in con.execute("PRAGMA integrity_check").fetchall()]
            pending = None
            if con.execute("SELECT 1 FROM sqlite_master WHERE name='events'").fetchone():
                pending = con.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        return Check("outbox", "fail", f"{p}: {e}", _OUTBOX_REMEDY)
    if rows != ["ok"]:
        return Check("outbox", "fail", f"{p}: integrity_check: {'; '.join(map(str, rows))[:300]}", _OUTBOX_REMEDY)
    extra = f", {pending} event(s) pending" if pending is not None else ""
    return Check("outbox", "pass", f"{p}: integrity ok ({p.stat().st_size} bytes{extra})")


_OUTBOX_REMEDY = (
    "stop the gateway, move the outbox file aside (keep it for support), start again: a fresh outbox is created"
)


def check_tls_identity(s: Settings) -> Check:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    m = s.mqtt
    if m.host is None:
        return Check("tls identity", "skip", "no cloud broker configured (demo mode)")
    if not m.tls:
        return Check("tls identity", "warn", "mqtt.tls is false: the uplink is not encrypted", "re-provision (mqtts)")
    for what, path in (("CA bundle", m.ca_file), ("device certificate", m.cert_file), ("device key", m.key_file)):
        if path is None or not path.exists():
            remedy = "sign the CSR and import it: gateway provision ... --cert FILE"
            return Check("tls identity", "fail", f"{what} missing: {path}", remedy)
    if m.cert_file is None or m.key_file is None or m.ca_file is None:  # for mypy: checked just above
        return Check("tls identity", "fail", "incomplete TLS settings", "re-run provisioning")
    try:
        cert = x509.load_pem_x509_certificate(m.cert_file.read_bytes())
        key = serialization.load_pem_private_key(m.key_file.read_bytes(), password=None)
        cas = x509.load_pem_x509_certificates(m.ca_file.read_bytes())
    except (OSError, ValueError, TypeError) as e:
        return Check("tls identity", "fail", f"cannot load: {e}", "re-run provisioning")
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        return Check("tls identity", "fail", "certificate does not match the device key", "import the right cert")
    issued = False
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            issued = True
            break
        except Exception:  # noqa: S112 - wrong issuer / bad signature: try the next CA
            continue
    if not issued:
        return Check("tls identity", "fail", "certificate not issued by the configured CA", "check mqtt.ca_file")
    now = dt.datetime.now(dt.UTC)
    left = cert.not_valid_after_utc - now
    cn = cert.subject.rfc4514_string()
    if now < cert.not_valid_before_utc or left.total_seconds() < 0:
        return Check("tls identity", "fail", f"{cn}: not valid now", "renew the certificate (new CSR is not needed)")
    if m.key_file.stat().st_mode & 0o077:
        return Check("tls identity", "warn", f"{m.key_file} is readable by group/others", f"chmod 0600 {m.key_file}")
    if left < dt.timedelta(days=30):
        return Check("tls identity", "warn", f"{cn}: expires in {left.days} days", "renew the device certificate")
    return Check("tls identity", "pass", f"{cn}, valid {left.days} more days")


def check_credential(s: Settings) -> Check:
    """The status page login: present, readable, an argon2id hash (never a plain password)."""
    p = s.status.credential_file
    if not s.status.enabled:
        return Check("technician login", "skip", "status page disabled")
    if p is None:
        return Check(
            "technician login", "warn", "no credential file configured", "provision --tech-user/--tech-password-file"
        )
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        return Check(
            "technician login", "fail", f"{p}: cannot read ({e.strerror})", "check owner root:gateway, mode 0640"
        )
    except ValueError:
        return Check("technician login", "fail", f"{p}: not JSON", "re-run provisioning with --tech-user")
    h = data.get("hash") if isinstance(data, dict) else None
    if not (isinstance(h, str) and h.startswith("$argon2id$") and isinstance(data.get("user"), str)):
        return Check("technician login", "fail", f"{p}: no argon2id hash", "re-run provisioning with --tech-user")
    if p.stat().st_mode & 0o007:
        return Check("technician login", "warn", f"{p} is world-readable", f"chmod 0640 {p}")
    return Check("technician login", "pass", f"user {data['user']!r}, argon2id")


def check_broker(s: Settings, timeout_s: float) -> Check:
    """A real TLS handshake and MQTT CONNECT with the box's own identity; nothing is published."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    m = s.mqtt
    if m.host is None:
        return Check("broker", "skip", "no cloud broker configured (demo mode)")
    target = f"{m.host}:{m.port}"
    proto = mqtt.MQTTv5 if m.protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{m.client_id or s.gateway.id}-doctor",
        protocol=proto,
    )
    client.connect_timeout = timeout_s
    if m.username:
        client.username_pw_set(m.username, m.password)
    result: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        result["rc"] = rc
        done.set()

    client.on_connect = on_connect
    try:
        if m.tls:
            client.tls_set(
                ca_certs=str(m.ca_file) if m.ca_file else None,
                certfile=str(m.cert_file) if m.cert_file else None,
                keyfile=str(m.key_file) if m.key_file else None,
            )
        client.connect(m.host, m.port, keepalive=max(5, int(timeout_s) + 5))
    except ssl.SSLError as e:
        return Check("broker", "fail", f"{target}: TLS handshake failed: {e.reason or e}", _TLS_REMEDY)
    except (OSError, ValueError) as e:
        return Check(
            "broker", "fail", f"{target}: cannot connect: {e}", "check the broker URL, DNS and firewall (TCP out)"
        )
    deadline = time.monotonic() + timeout_s
    try:
        while not done.is_set() and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS and not done.is_set():
                return Check("broker", "fail", f"{target}: connection closed before CONNACK", _TLS_REMEDY)
    except ssl.SSLError as e:
        return Check("broker", "fail", f"{target}: TLS failed: {e.reason or e}", _TLS_REMEDY)
    finally:
        if done.is_set():
            client.disconnect()
            client.loop(timeout=0.1)
        sock = client.socket()
        if sock is not None:
            sock.close()
    if not done.is_set():
        return Check("broker", "fail", f"{target}: no CONNACK within {timeout_s:g}s", "check the broker is up")
    rc = result["rc"]
    if getattr(rc, "is_failure", False) or (isinstance(rc, int) and rc != 0):
        return Check(
            "broker", "fail", f"{target}: CONNECT refused: {rc}", "ask the platform team to authorise this gateway id"
        )
    return Check("broker", "pass", f"{target}: TLS + MQTT CONNECT ok")


_TLS_REMEDY = "check mqtt.ca_file is the broker's CA, the device certificate is signed and current, and the clock"


def local_broker_address(s: Settings) -> tuple[str, int]:
    """Where the daemon looks for the store-local broker (sensor nodes, MQTT actors)."""
    lb, m = s.local_broker, s.mqtt
    if lb.host is not None:
        return lb.host, lb.port
    if m.host is not None and not m.tls:  # demo/tests: one plain broker serves both roles
        return m.host, m.port
    return "127.0.0.1", lb.port


def check_local_broker(s: Settings, timeout_s: float) -> Check:
    """MQTT CONNECT to the store-local broker: sensor nodes need it (fail), MQTT actors use it (warn)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if not (s.nodes.enabled or s.content.enabled):
        return Check("local broker", "skip", "no sensor nodes and no content activation")
    host, port = local_broker_address(s)
    target = f"{host}:{port}"
    bad: Status = "fail" if s.nodes.enabled else "warn"
    why = "sensor nodes report through it" if s.nodes.enabled else "MQTT actors (screens) are reached through it"
    remedy = f"start the store broker (`systemctl enable --now mosquitto`) or set [local_broker] host/port ({why})"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{s.gateway.id}-doctor-local")
    client.connect_timeout = timeout_s
    if s.nodes.broker_username:
        client.username_pw_set(s.nodes.broker_username, s.nodes.broker_password)
    result: dict[str, Any] = {}
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        result["rc"] = rc
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=max(5, int(timeout_s) + 5))
    except (OSError, ValueError) as e:
        return Check("local broker", bad, f"{target}: cannot connect: {e}", remedy)
    try:
        deadline = time.monotonic() + timeout_s
        while not done.is_set() and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS and not done.is_set():
                return Check("local broker", bad, f"{target}: connection closed before CONNACK", remedy)
    finally:
        if done.is_set():
            client.disconnect()
            client.loop(timeout=0.1)
        sock = client.socket()
        if sock is not None:
            sock.close()
    if not done.is_set():
        return Check("local broker", bad, f"{target}: no CONNACK within {timeout_s:g}s", remedy)
    rc = result["rc"]
    if getattr(rc, "is_failure", False) or (isinstance(rc, int) and rc != 0):
        return Check("local broker", bad, f"{target}: CONNECT refused: {rc}", "check nodes.broker_username/password")
    return Check("local broker", "pass", f"{target}: MQTT CONNECT ok")


def check_ble(s: Settings, timeout_s: float) -> Check:
    if not s.ble.enabled:
        return Check("ble radio", "skip", "ble.enabled is false")
    try:
        powered = asyncio.run(asyncio.wait_for(_bluez_powered(s.ble.adapter), timeout_s))
    except TimeoutError:
        return Check("ble radio", "fail", "no answer from the system D-Bus", "systemctl status dbus bluetooth")
    except _BleProblem as e:
        return Check("ble radio", "fail", e.detail, e.remedy)
    if not powered:
        return Check(
            "ble radio",
            "fail",
            f"{s.ble.adapter} is present but powered off",
            f"`rfkill unblock bluetooth; bluetoothctl power on` (adapter {s.ble.adapter})",
        )
    return Check("ble radio", "pass", f"{s.ble.adapter} present and powered (BlueZ)")


class _BleProblem(Exception):
    def __init__(self, detail: str, remedy: str) -> None:
        super().__init__(detail)
        self.detail, self.remedy = detail, remedy


async def _bluez_powered(adapter: str) -> bool:
    from dbus_fast import BusType, Message, MessageType
    from dbus_fast.aio import MessageBus

    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, ValueError) as e:
        raise _BleProblem(f"system D-Bus unreachable: {e}", "systemctl start dbus") from None
    try:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path=f"/org/bluez/{adapter}",
                interface="org.freedesktop.DBus.Properties",
                member="Get",
                signature="ss",
                body=["org.bluez.Adapter1", "Powered"],
            )
        )
    finally:
        bus.disconnect()
    assert reply is not None
    if reply.message_type == MessageType.ERROR:
        name = reply.error_name or ""
        if name.endswith("ServiceUnknown") or name.endswith("NameHasNoOwner"):
            raise _BleProblem("BlueZ (bluetoothd) is not running", "systemctl enable --now bluetooth")
        if name.endswith("AccessDenied"):
            raise _BleProblem("D-Bus denied access to BlueZ", "add the gateway user to group bluetooth")
        raise _BleProblem(
            f"adapter {adapter} not found ({name})", "plug in / check the BLE dongle, `hciconfig -a`, ble.adapter"
        )
    return bool(reply.body[0].value)


def check_wifi(s: Settings) -> Check:
    if not s.wifi.enabled:
        return Check("wifi monitor", "skip", "wifi.enabled is false")
    try:
        r = subprocess.run(["iw", "list"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("wifi monitor", "fail", f"cannot run `iw list`: {e}", "apt install iw")
    out = r.stdout + r.stderr
    if "nl80211 not found" in out or not out.strip():
        return Check("wifi monitor", "fail", "no nl80211 Wi-Fi device", "plug in a supported monitor-mode adapter")
    phys = monitor_capable_phys(r.stdout)
    if not phys:
        return Check(
            "wifi monitor",
            "fail",
            "no Wi-Fi device supports monitor mode (Pi built-in Wi-Fi does not without nexmon)",
            "use a supported USB adapter: see hardware/boards/",
        )
    if not Path("/sys/class/net", s.wifi.interface).exists() and not s.wifi.set_monitor:
        return Check(
            "wifi monitor",
            "warn",
            f"monitor-capable: {', '.join(phys)}; interface {s.wifi.interface} does not exist",
            f"`iw phy {phys[0]} interface add {s.wifi.interface} type monitor` or set wifi.set_monitor = true",
        )
    return Check("wifi monitor", "pass", f"monitor mode possible on {', '.join(phys)}")


# --------------------------------------------------------------------------- runner


def run_checks(config: Path | None, timeout_s: float = 5.0, skip: frozenset[str] = frozenset()) -> list[Check]:
    checks: list[Check] = []
    cfg, s = check_config(config)
    checks.append(cfg)
    plan: list[tuple[str, Callable[[], Check]]] = [("clock", check_clock)]
    if s is not None:
        plan += [
            ("layout", lambda: check_layout(s)),
            ("coverage", lambda: check_coverage(s)),
            ("disk", lambda: check_disk(s)),
            ("outbox", lambda: check_outbox(s)),
            ("tls", lambda: check_tls_identity(s)),
            ("login", lambda: check_credential(s)),
            ("broker", lambda: check_broker(s, timeout_s)),
            ("local-broker", lambda: check_local_broker(s, timeout_s)),
            ("ble", lambda: check_ble(s, timeout_s)),
            ("wifi", lambda: check_wifi(s)),
        ]
    for key, fn in plan:
        if key in skip:
            continue
        try:
            checks.append(fn())
        except Exception as e:  # a check must report, never crash the doctor
            checks.append(Check(key, "fail", f"check crashed: {type(e).__name__}: {e}"[:300], "report to support"))
    return checks


def render(checks: list[Check]) -> str:
    w = max(len(c.name) for c in checks)
    lines = [f"{'CHECK':<{w}}  STATUS  DETAIL"]
    for c in checks:
        lines.append(f"{c.name:<{w}}  {c.status.upper():<6}  {c.detail}")
        if c.remedy and c.status in ("fail", "warn"):
            lines.append(f"{'':<{w}}  {'':<6}  -> {c.remedy}")
    n = {st: sum(c.status == st for c in checks) for st in ("pass", "warn", "fail", "skip")}
    lines.append(f"{n['pass']} pass, {n['warn']} warn, {n['fail']} fail, {n['skip']} skipped")
    return "\n".join(lines)


CHECK_KEYS = ("clock", "layout", "coverage", "disk", "outbox", "tls", "login", "broker", "local-broker", "ble", "wifi")


def _cmd(args: argparse.Namespace) -> int:
    def usage(msg: str) -> int:
        print(f"gateway doctor: error: {msg}", file=sys.stderr)
        return 2

    if args.config:
        cfg = Path(args.config)
        if not cfg.is_file():
            return usage(f"--config {cfg}: no such file")
    elif DEFAULT_CONFIG.exists():
        cfg = DEFAULT_CONFIG
    else:
        return usage(f"no config file: {DEFAULT_CONFIG} does not exist; give --config FILE")
    if not (math.isfinite(args.timeout) and 0 < args.timeout <= 300):
        return usage(f"--timeout {args.timeout:g}: must be > 0 and <= 300 seconds")
    skip = frozenset(x.strip() for x in args.skip.split(",") if x.strip()) if args.skip else frozenset()
    unknown = sorted(skip - set(CHECK_KEYS))
    if unknown:
        return usage(f"--skip {','.join(unknown)}: unknown check (choose from {','.join(CHECK_KEYS)})")
    checks = run_checks(cfg, args.timeout, skip)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(render(checks))
    return 1 if any(c.status == "fail" for c in checks) else 0


def add_commands(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("doctor", help="check this box: radios, clock, disk, config, broker")
    p.add_argument("--config", "-c", default=os.environ.get("GATEWAY_CONFIG"), help=f"default {DEFAULT_CONFIG}")
    p.add_argument("--timeout", type=float, default=5.0, help="per network check (s)")
    p.add_argument("--skip", default="", help="comma list of checks to skip: " + ",".join(CHECK_KEYS))
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd)
