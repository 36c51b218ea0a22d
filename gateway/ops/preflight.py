"""What would stop or cripple ``gateway run`` with these settings, found before it starts.

The settings model checks each value on its own (types, ranges, patterns). This module checks
what the model cannot: files that must exist and parse (layout, keys, certificates, replay
input), a writable state directory, at least one source, an uplink broker, a usable command key.
``gateway config check`` and ``gateway doctor`` report these problems, and ``gateway run``
refuses to start on an error (exit 2, one line each) instead of logging a traceback at every
restart of the task that would fail.

Errors stop the daemon (or make one of its tasks fail in a loop); warnings leave it running with
a part missing (no command key: every cloud command is refused; no technician login).

``root``: check a mounted image (``config check --root /mnt/gw``): absolute paths in the
settings are looked up under it, as ``gateway provision --root`` writes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.config import Settings

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Problem:
    field: str
    reason: str
    severity: Severity = "error"

    def line(self) -> str:
        return f"{self.field}: {self.reason}" if self.severity == "error" else f"{self.field}: warning: {self.reason}"


class _Checker:
    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.problems: list[Problem] = []

    def host(self, p: Path) -> Path:
        return self.root / p.relative_to("/") if self.root is not None and p.is_absolute() else p

    def error(self, field: str, reason: str) -> None:
        self.problems.append(Problem(field, reason, "error"))

    def warn(self, field: str, reason: str) -> None:
        self.problems.append(Problem(field, reason, "warning"))

    def readable_file(self, field: str, p: Path | None, what: str) -> bool:
        if p is None:
            return False
        hp = self.host(p)
        if not hp.exists():
            self.error(field, f"{p}: no such file ({what})")
            return False
        if not hp.is_file():
            self.error(field, f"{p}: not a regular file ({what})")
            return False
        try:
            with hp.open("rb") as f:
                f.read(1)
        except OSError as e:
            self.error(field, f"{p}: cannot read ({e.strerror})")
            return False
        return True


def _writable_dir(c: _Checker, field: str, d: Path) -> None:
    hd = c.host(d)
    if hd.exists():
        if not hd.is_dir():
            c.error(field, f"{d}: exists and is not a directory")
        elif not os.access(hd, os.W_OK | os.X_OK):
            c.error(field, f"{d}: not writable by uid {os.getuid()} (provisioning makes it gateway:gateway 0750)")
        return
    parent = hd.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        c.error(field, f"{d}: does not exist and cannot be created (re-run provisioning)")


def check(s: Settings, *, root: Path | None = None) -> list[Problem]:
    """Every problem found, errors first in the order the daemon would meet them."""
    c = _Checker(root)
    _layout(c, s)
    _sources(c, s)
    _writable_dir(c, "paths.state_dir", s.paths.state_dir)
    if s.outbox.path is not None:
        _writable_dir(c, "outbox.path", s.outbox.path.parent)
    _uplink(c, s)
    if s.content.enabled:
        _command_key(c, s)
    if s.status.enabled:
        _status(c, s)
    return sorted(c.problems, key=lambda p: p.severity != "error")


def _layout(c: _Checker, s: Settings) -> None:
    from gateway.layout import Layout, LayoutError, embedded_layout, load_layout

    lay: Layout
    if s.paths.layout is None:
        c.warn("paths.layout", "not set: the embedded example store is used (provision --layout)")
        lay = embedded_layout()
    else:
        if not c.readable_file("paths.layout", s.paths.layout, "the store layout"):
            return
        try:
            lay = load_layout(c.host(s.paths.layout))
        except LayoutError as e:
            c.error("paths.layout", str(e).splitlines()[0] if str(e) else "invalid layout")
            return
        if lay.store.id != s.gateway.store_id:
            c.error("paths.layout", f"layout is for store {lay.store.id!r}, gateway.store_id is {s.gateway.store_id!r}")
    if s.nodes.enabled:
        known = {x.id for x in lay.sensors}
        for node, sensor in sorted(s.nodes.mapping.items()):
            if sensor not in known:
                c.error("nodes.mapping", f"node {node!r} maps to sensor {sensor!r}, which is not in the layout")
    for flag, sid in (("ble", s.ble.sensor_id), ("wifi", s.wifi.sensor_id)):
        if getattr(s, flag).enabled and sid not in {x.id for x in lay.sensors}:
            c.error(f"{flag}.sensor_id", f"{sid!r} is not a sensor of the layout (its radio's position)")


def _sources(c: _Checker, s: Settings) -> None:
    if not (s.simulator.enabled or s.replay.enabled or s.ble.enabled or s.wifi.enabled or s.nodes.enabled):
        c.error(
            "sources",
            "no observation source is enabled: set enabled = true in [ble], [wifi], [nodes], [replay] or [simulator]",
        )
    if s.replay.enabled:
        c.readable_file("replay.path", s.replay.path, "the observations to replay")
    if s.wifi.enabled and s.wifi.pcap is not None:
        c.readable_file("wifi.pcap", s.wifi.pcap, "the capture to replay")
    if s.ble.enabled and s.ble.irk_file is not None and c.readable_file("ble.irk_file", s.ble.irk_file, "known IRKs"):
        from gateway.sources.ble import load_irks

        try:
            load_irks(c.host(s.ble.irk_file))
        except (ValueError, UnicodeDecodeError) as e:
            c.error("ble.irk_file", str(e) if isinstance(e, ValueError) else f"{s.ble.irk_file}: not UTF-8 text")


def _uplink(c: _Checker, s: Settings) -> None:
    m = s.mqtt
    if m.host is None:
        c.error("mqtt.host", "not set: the daemon would have no uplink (events would only pile up in the outbox)")
        return
    if not m.tls:
        c.warn("mqtt.tls", "false: events and commands cross the network unencrypted")
        return
    c.readable_file("mqtt.ca_file", m.ca_file, "CA bundle of the broker")
    if (m.cert_file is None) != (m.key_file is None):
        c.error("mqtt.cert_file", "mqtt.cert_file and mqtt.key_file go together")
        return
    if m.cert_file is not None and m.key_file is not None:
        c.readable_file("mqtt.cert_file", m.cert_file, "device certificate; import it: gateway provision ... --cert")
        c.readable_file("mqtt.key_file", m.key_file, "device key")


def _command_key(c: _Checker, s: Settings) -> None:
    from gateway.content.commands import CommandKeyError, load_verifier

    cs = s.content
    pub = c.host(cs.command_public_key_file) if cs.command_public_key_file is not None else None
    sec = c.host(cs.command_secret_file) if cs.command_secret_file is not None else None
    try:
        v = load_verifier(cs.command_auth, pub, sec)
    except CommandKeyError as e:
        c.error("content.command_key", str(e))
        return
    if v is None:
        c.warn(
            "content.command_public_key_file",
            "not set: every cloud command will be refused (provision --command-pubkey)",
        )


def _status(c: _Checker, s: Settings) -> None:
    p = s.status.credential_file
    if p is None:
        c.warn("status.credential_file", "not set: nobody can log in to the status page")
        return
    if not c.host(p).exists():
        c.warn("status.credential_file", f"{p}: no such file: nobody can log in to the status page")
