"""Every operator mistake is a one-line error: a table of bad invocations of every subcommand.

Each row is a real command line (and environment, and files) that is wrong; the gateway must
refuse it before doing any work, with an exit code of 1 or 2 (never 0: no silent acceptance), a
message naming the argument, file or setting, and no traceback (nor the CLI's last-resort
"unexpected error" line, which marks a bug). The rows run in-process through ``gateway.cli.main``
(a hang is caught by an alarm and reported as an acceptance); a sample also runs as a real
``python -m gateway`` subprocess to prove the entry point behaves the same.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.cli import main
from tests.conftest import LAYOUT, gateway_cmd, gateway_env

pytestmark = pytest.mark.integration

ROW_TIMEOUT_S = 20


@dataclass
class Row:
    argv: list[str]
    expect: str  # a piece of the error message (names the argument and the problem)
    rc: int = 2
    env: dict[str, str] = field(default_factory=dict)
    stdin: str = ""

    @property
    def id(self) -> str:
        return " ".join(self.argv)[:90]


@dataclass
class Kit:
    """Files the rows point at, good and bad."""

    d: Path

    def p(self, name: str) -> str:
        return str(self.d / name)


def make_kit(d: Path) -> Kit:
    k = Kit(d)
    (d / "empty").write_text("")
    (d / "garbage.bin").write_bytes(b"\x00\xff garbage \x01" * 10)
    (d / "adir").mkdir()
    (d / "afile").write_text("x")
    (d / "obs.jsonl").write_text('{"ts": 1.0, "sensor": "n11", "device": "d1", "rssi": -60}\n' * 3)
    (d / "bad-obs.jsonl").write_text("not json\n{}\n")
    (d / "positions-garbage.jsonl").write_text("garbage\n")
    (d / "notes.txt").write_text("# nothing but comments\n\n")
    (d / "not-toml.toml").write_text("[[[ nope\n")
    (d / "pw").write_text("a long technician password\n")
    (d / "short.pw").write_text("short\n")
    layout = LAYOUT.read_text()
    (d / "bowtie.toml").write_text(layout + '\n[[zones]]\nid = "bowtie"\npolygon = [[0, 0], [4, 3], [4, 0], [0, 5]]\n')
    (d / "other-store.toml").write_text(layout.replace('id = "demo-store"', 'id = "other-store"'))
    key = Ed25519PrivateKey.generate()
    pkcs8, spki = serialization.PrivateFormat.PKCS8, serialization.PublicFormat.SubjectPublicKeyInfo
    (d / "priv.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    (d / "pub.pem").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, spki))
    (d / "hmac-short.key").write_text("short\n")
    base = f'[gateway]\nid = "gw-t"\nstore_id = "demo-store"\n[paths]\nstate_dir = "{d / "state"}"\n'
    run = base + '[mqtt]\nhost = "127.0.0.1"\nport = 1\ntls = false\n[simulator]\nenabled = true\n'
    run += f'[content]\ncommand_public_key_file = "{d / "pub.pem"}"\n'
    configs = {
        "good.toml": run,
        "quiet.toml": run.replace("[content]\n", '[content]\nquiet_hours = ["21:00-08"]\n'),
        "tz.toml": run.replace("[content]\n", '[content]\ntimezone = "Mars/Olympus"\n'),
        "nohost.toml": run.replace('host = "127.0.0.1"\n', ""),
        "nosource.toml": run.replace("[simulator]\nenabled = true\n", ""),
        "replay.toml": run + f'[replay]\nenabled = true\npath = "{d / "missing.jsonl"}"\n',
        "channels.toml": run + "[wifi]\nchannels = [0, 999]\n",
        "layout-bowtie.toml": run.replace("[paths]\n", f'[paths]\nlayout = "{d / "bowtie.toml"}"\n'),
        "layout-other.toml": run.replace("[paths]\n", f'[paths]\nlayout = "{d / "other-store.toml"}"\n'),
        "layout-missing.toml": run.replace("[paths]\n", f'[paths]\nlayout = "{d / "nope.toml"}"\n'),
        "unknown-key.toml": run + "[mqtt2]\nport = 1\n",
        "tls-missing.toml": run.replace("tls = false\n", f'tls = true\nca_file = "{d / "nope-ca.pem"}"\n'),
        "cmdkey-private.toml": run.replace(str(d / "pub.pem"), str(d / "priv.pem")),
        "cmdkey-empty.toml": run.replace(str(d / "pub.pem"), str(d / "empty")),
        "hmac-short.toml": run.replace(
            f'command_public_key_file = "{d / "pub.pem"}"',
            f'command_auth = "hmac-sha256"\ncommand_secret_file = "{d / "hmac-short.key"}"',
        ),
        "webhook.toml": run.replace("[content]\n", '[content]\nwebhook_allow = ["10.0.0.0/33"]\n'),
        "state-file.toml": run.replace(f'state_dir = "{d / "state"}"', f'state_dir = "{d / "afile"}"'),
        "bind.toml": run + '[status]\nbind = ["the-lan"]\n',
        "irk.toml": run.replace("[simulator]\nenabled = true\n", "")
        + f'[ble]\nenabled = true\nirk_file = "{d / "garbage.bin"}"\n',
        "nodes-map.toml": run + '[nodes]\nenabled = true\nmapping = {kitchen = "no-such-sensor"}\n',
    }
    for name, text in configs.items():
        (d / name).write_text(text)
    return k


def rows(k: Kit) -> list[Row]:
    p = k.p
    good = p("good.toml")
    prov = ["provision", "--root", p("adir"), "--store-id", "demo-store", "--gateway-id", "gw-1",
            "--broker", "mqtts://broker.example:8883", "--ca", p("garbage.bin")]  # fmt: skip
    # fmt: off
    out: list[Row] = [
        # -- config ---------------------------------------------------------------------------
        Row(["config", "check", p("missing.toml")], "cannot read config"),
        Row(["config", "check", p("not-toml.toml")], "not valid TOML"),
        Row(["config", "check", p("adir")], "cannot read config"),
        Row(["config", "check", p("quiet.toml")], "'21:00-08' is not a window HH:MM-HH:MM"),
        Row(["config", "check", p("tz.toml")], "unknown time zone 'Mars/Olympus'"),
        Row(["config", "check", p("nohost.toml")], "mqtt.host: not set"),
        Row(["config", "check", p("nosource.toml")], "no observation source is enabled"),
        Row(["config", "check", p("replay.toml")], "replay.path:"),
        Row(["config", "check", p("channels.toml")], "[0, 999] not Wi-Fi channels"),
        Row(["config", "check", p("layout-bowtie.toml")], "cross (a bow tie?)"),
        Row(["config", "check", p("layout-other.toml")], "layout is for store 'other-store'"),
        Row(["config", "check", p("layout-missing.toml")], "paths.layout:"),
        Row(["config", "check", p("unknown-key.toml")], "mqtt2"),
        Row(["config", "check", p("tls-missing.toml")], "mqtt.ca_file:"),
        Row(["config", "check", p("cmdkey-private.toml")], "PRIVATE key"),
        Row(["config", "check", p("cmdkey-empty.toml")], "no PEM public key"),
        Row(["config", "check", p("hmac-short.toml")], "key is 5 bytes; at least 32"),
        Row(["config", "check", p("webhook.toml")], "neither an IP network"),
        Row(["config", "check", p("state-file.toml")], "not a directory"),
        Row(["config", "check", p("bind.toml")], "'the-lan' is not an IP address"),
        Row(["config", "check", p("irk.toml")], "ble.irk_file"),
        Row(["config", "check", p("nodes-map.toml")], "maps to sensor 'no-such-sensor'"),
        Row(["config", "check", "--root", p("missing-root"), good], "--root"),
        Row(["config", "check", good], "GATEWAY_MQTTT__PORT: unknown setting; did you mean GATEWAY_MQTT__PORT",
            env={"GATEWAY_MQTTT__PORT": "1"}),
        Row(["config", "check", good], "GATEWAY_STATUS__BIN: unknown setting",
            env={"GATEWAY_STATUS__BIN": "0.0.0.0"}),
        Row(["config", "check", good], "mqtt.port", env={"GATEWAY_MQTT__PORT": "99999"}),
        Row(["config", "check", good], "GATEWAY_MQTT__BROKERS: expected a JSON list",
            env={"GATEWAY_MQTT__BROKERS": "a:1"}),
        Row(["config", "check", good], "not Wi-Fi channels", env={"GATEWAY_WIFI__CHANNELS": "0,6"}),
        Row(["config", "check", good], "GATEWAY_WIFI__CHANNELS: not a JSON list",
            env={"GATEWAY_WIFI__CHANNELS": "[1,"}),
        Row(["config", "nope"], "invalid choice"),
        Row(["config"], "required"),
        Row(["config", "check", "a", "b"], "unrecognized arguments"),
        # -- schemas ----------------------------------------------------------------------------
        Row(["schemas", "--out", p("afile")], "--out"),
        Row(["schemas", "--out", p("missing/deeper/x")], "does not exist"),
        Row(["schemas", "--bogus"], "unrecognized arguments"),
        # -- decode -----------------------------------------------------------------------------
        Row(["decode", "ble"], "give either HEX or --file"),
        Row(["decode", "ble", "zz"], "not a hex digit"),
        Row(["decode", "ble", "0201"], "malformed advert"),
        Row(["decode", "ble", "abc"], "odd number of hex digits"),
        Row(["decode", "ble", "--file", p("missing.txt")], "cannot read"),
        Row(["decode", "ble", "--file", p("adir")], "cannot read"),
        Row(["decode", "ble", "--file", p("empty")], "no payload"),
        Row(["decode", "ble", "--file", p("notes.txt")], "no payload"),
        Row(["decode", "ble", "--file", p("garbage.bin")], "malformed advert"),
        Row(["decode", "ble", "0201", "--file", p("empty")], "give either HEX or --file"),
        Row(["decode", "pcap", p("missing.pcap")], "cannot read"),
        Row(["decode", "pcap", p("garbage.bin")], "garbage.bin"),
        Row(["decode", "pcap", p("empty")], "empty"),
        Row(["decode", "pcap", p("adir")], "adir"),
        Row(["decode", "pcap", p("obs.jsonl"), "--group-hold", "-1"], "--group-hold"),
        Row(["decode", "pcap", p("obs.jsonl"), "--group-hold", "nan"], "--group-hold"),
        Row(["decode", "pcap"], "required"),
        Row(["decode", "xml"], "invalid choice"),
        # -- locate / calibrate -----------------------------------------------------------------
        Row(["locate"], "an observations file"),
        Row(["locate", p("missing.jsonl")], "cannot read"),
        Row(["locate", p("adir")], "adir"),
        Row(["locate", p("empty")], "no usable observations"),
        Row(["locate", p("bad-obs.jsonl")], "no usable observations"),
        Row(["locate", p("bad-obs.jsonl"), "--strict"], "bad-obs.jsonl:1: not a JSON object"),
        Row(["locate", p("obs.jsonl"), "--layout", p("missing.toml")], "cannot read layout"),
        Row(["locate", p("obs.jsonl"), "--layout", p("bowtie.toml")], "bow tie"),
        Row(["locate", p("obs.jsonl"), "--config", p("missing.toml")], "cannot read config"),
        Row(["locate", p("obs.jsonl"), "--config", p("quiet.toml")], "quiet_hours"),
        Row(["locate", p("obs.jsonl"), "--sigma-db", "0"], "--sigma-db"),
        Row(["locate", p("obs.jsonl"), "--sigma-db", "nan"], "--sigma-db"),
        Row(["locate", "--crlb", "--adverts", "0"], "--adverts"),
        Row(["locate", "--crlb", "--adverts", "-3"], "--adverts"),
        Row(["locate", "--crlb", "--adverts", "inf"], "--adverts"),
        Row(["locate", "--crlb", "--step", "0"], "--step"),
        Row(["locate", "--crlb", "--step", "nan"], "--step"),
        Row(["locate", "--crlb", "--step", "1e9"], "--step"),
        Row(["locate", "--crlb", "--sigma-db", "abc"], "invalid float value"),
        Row(["locate", p("obs.jsonl"), "--adverts", "5"], "--adverts"),
        Row(["calibrate"], "required"),
        Row(["calibrate", p("missing.jsonl")], "cannot read"),
        Row(["calibrate", p("obs.jsonl"), "--positions", p("missing.jsonl")], "cannot read"),
        Row(["calibrate", p("obs.jsonl"), "--positions", p("positions-garbage.jsonl")], "positions-garbage.jsonl:1"),
        Row(["calibrate", p("obs.jsonl"), "--positions", p("adir")], "adir"),
        Row(["calibrate", p("obs.jsonl"), "--out", p("missing/x.toml")], "--out"),
        Row(["calibrate", p("obs.jsonl"), "--out", p("adir")], "--out"),
        Row(["calibrate", p("obs.jsonl"), "--layout", p("bowtie.toml")], "bow tie"),
        Row(["calibrate", p("empty")], "no observation"),
        # -- run ----------------------------------------------------------------------------------
        Row(["run", "--config", p("missing.toml")], "no such file"),
        Row(["run", "--config", p("not-toml.toml")], "not valid TOML"),
        Row(["run", "--config", p("nohost.toml")], "mqtt.host: not set"),
        Row(["run", "--config", p("nosource.toml")], "no observation source"),
        Row(["run", "--config", p("replay.toml")], "replay.path"),
        Row(["run", "--config", p("quiet.toml")], "quiet_hours"),
        Row(["run", "--config", p("tz.toml")], "unknown time zone"),
        Row(["run", "--config", p("layout-bowtie.toml")], "bow tie"),
        Row(["run", "--config", p("cmdkey-private.toml")], "PRIVATE key"),
        Row(["run", "--config", p("hmac-short.toml")], "at least 32"),
        Row(["run", "--config", p("state-file.toml")], "not a directory"),
        Row(["run", "--config", good], "GATEWAY_MQTTT__PORT", env={"GATEWAY_MQTTT__PORT": "1"}),
        Row(["run", "--config", good], "GATEWAY_WIFI__CHANNELS", env={"GATEWAY_WIFI__CHANNELS": "[1,"}),
        Row(["run", "--bogus"], "unrecognized arguments"),
        # -- demo ---------------------------------------------------------------------------------
        Row(["demo", "--status-port", "99999"], "--status-port 99999"),
        Row(["demo", "--status-port", "-1"], "--status-port"),
        Row(["demo", "--broker-port", "0"], "--broker-port"),
        Row(["demo", "--broker-port", "70000"], "--broker-port"),
        Row(["demo", "--speed", "0"], "--speed"),
        Row(["demo", "--speed", "-5"], "--speed"),
        Row(["demo", "--speed", "nan"], "--speed"),
        Row(["demo", "--duration", "0"], "--duration"),
        Row(["demo", "--duration", "-10"], "--duration"),
        Row(["demo", "--state-dir", p("afile")], "--state-dir"),
        Row(["demo", "--state-dir", p("missing/deeper")], "--state-dir"),
        Row(["demo", "--config", p("missing.toml")], "--config"),
        Row(["demo", "--config", p("quiet.toml")], "quiet_hours"),
        Row(["demo", "--speed", "fast"], "invalid float value"),
        # -- provision -----------------------------------------------------------------------------
        Row([*prov], "--ca"),
        Row(["provision", "--root", p("missing-root"), "--store-id", "s", "--gateway-id", "g",
             "--broker", "mqtts://b", "--ca", p("garbage.bin")], "--ca"),
        Row([*prov[:-1], str(LAYOUT)], "--ca"),
        Row([*prov[:6], "gw.1", *prov[7:]], "--gateway-id 'gw.1' is not valid"),
        Row([*prov[:4], "store/1", *prov[5:]], "--store-id"),
        Row([*prov[:8], "mqtt://broker:1883", *prov[9:]], "scheme must be mqtts"),
        Row([*prov[:8], "mqtts://broker:99999", *prov[9:]], "--broker"),
        Row(["provision", "--root", p("adir")], "required"),
        # -- doctor ---------------------------------------------------------------------------------
        Row(["doctor", "--config", p("missing.toml")], "--config"),
        Row(["doctor", "--config", good, "--skip", "bogus"], "--skip bogus: unknown check"),
        Row(["doctor", "--config", good, "--timeout", "0"], "--timeout"),
        Row(["doctor", "--config", good, "--timeout", "nan"], "--timeout"),
        Row(["doctor"], "no config file", env={"GATEWAY_CONFIG": ""}),
        Row(["doctor", "--config", p("nohost.toml"), "--skip", "clock,local-broker"], "mqtt.host", rc=1),
        # -- update ---------------------------------------------------------------------------------
        Row(["update", p("missing.tar.gz"), "--releases-dir", p("adir"), "--pubkey", p("pub.pem")], "missing.tar.gz"),
        Row(["update", p("garbage.bin"), "--releases-dir", p("adir"), "--pubkey", p("missing.pub")], "missing.pub"),
        Row(["update", p("garbage.bin"), "--releases-dir", p("missing/deeper"), "--pubkey", p("pub.pem")],
            "--releases-dir"),
        Row(["update", p("garbage.bin"), "--releases-dir", p("adir"), "--pubkey", p("garbage.bin")], "pubkey"),
        Row(["update", p("garbage.bin"), "--releases-dir", p("adir")], "--pubkey"),
        Row(["update", p("garbage.bin"), "--releases-dir", p("adir"), "--pubkey", p("pub.pem"),
             "--ready-timeout", "-1"], "--ready-timeout"),
        Row(["update", "keygen"], "--out"),
        Row(["update", "keygen", "--out", p("afile")], "afile"),
        Row(["update", "sign", p("missing.tar.gz"), "--key", p("priv.pem")], "missing.tar.gz"),
        Row(["update", "sign", p("garbage.bin"), "--key", p("pub.pem")], "--key"),
        Row(["update", "pack", p("missing-src"), "--version", "1.0.0", "--out", p("o.tar.gz")], "missing-src"),
        Row(["update", "pack", p("adir"), "--version", "../x", "--out", p("o.tar.gz")], "--version"),
        # -- status ---------------------------------------------------------------------------------
        Row(["status", "set-password", "--file", p("cred.json"), "--user", "tech"], "password", stdin="short\n"),
        Row(["status", "set-password", "--file", p("cred.json"), "--user", "bad user"], "user",
            stdin="a long password\n"),
        Row(["status", "set-password", "--file", p("missing/x/cred.json"), "--user", "tech"], "does not exist",
            stdin="a long password\n"),
        Row(["status", "set-password", "--file", p("adir"), "--user", "tech"], "adir", stdin="a long password\n"),
        Row(["status", "demo", "--credential", p("missing.json"), "--port", "99999"], "--port 99999"),
        Row(["status", "demo", "--credential", p("missing.json"), "--devices", "-5"], "--devices"),
        Row(["status", "demo", "--credential", p("missing.json")], "--credential"),
        Row(["status", "demo", "--credential", p("pw"), "--layout", p("bowtie.toml")], "bow tie"),
        Row(["status", "demo", "--credential", p("pw"), "--sim", "--speed", "0"], "--speed"),
        Row(["status", "demo", "--credential", p("pw"), "--host", "not an address"], "--host"),
        # -- outbox ---------------------------------------------------------------------------------
        Row(["outbox", "stats", p("missing.sqlite3")], "no such outbox file"),
        Row(["outbox", "stats", p("garbage.bin")], "not an outbox"),
        Row(["outbox", "stats", p("adir")], "adir"),
        Row(["outbox", "drive", "--db", p("x.sqlite3"), "--port", "99999"], "--port"),
        Row(["outbox", "drive", "--db", p("x.sqlite3"), "--port", "1883", "--batch", "0"], "--batch"),
        Row(["outbox", "drive", "--db", p("x.sqlite3"), "--port", "1883", "--gateway-id", "a/b"], "--gateway-id"),
        # -- top level --------------------------------------------------------------------------------
        Row([], "required"),
        Row(["launch"], "invalid choice"),
        Row(["--bogus"], "required"),
    ]
    # fmt: on
    return out


class Hung(BaseException):  # not an Exception: the CLI's last-resort handler must not catch it
    pass


@contextlib.contextmanager
def alarm(seconds: int) -> Iterator[None]:
    def on_alarm(_sig: int, _frame: types.FrameType | None) -> None:
        raise Hung(f"still running after {seconds}s: the bad input was accepted")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def run_in_process(row: Row, monkeypatch: pytest.MonkeyPatch) -> tuple[int | None, str, str]:
    """(exit code or None for an escaped exception, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with monkeypatch.context() as m:
        for k in [k for k in os.environ if k.startswith("GATEWAY_")]:
            m.delenv(k)
        for k, v in row.env.items():
            m.setenv(k, v)
        m.setattr(sys, "stdin", io.StringIO(row.stdin))
        umask = os.umask(0o022)
        os.umask(umask)
        rc: int | None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), alarm(ROW_TIMEOUT_S):
                rc = main(row.argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # an escaped exception is a traceback for the operator
            err.write(f"Traceback (escaped): {type(e).__name__}: {e}\n")
            rc = None
        finally:
            os.umask(umask)
    return rc, out.getvalue(), err.getvalue()


def verdict(row: Row, rc: int | None, stderr: str, stdout: str = "") -> str | None:
    if rc is None and "Hung" in stderr:
        return "accepted: still running"
    if rc is None or "Traceback" in stderr:
        return "traceback"
    if "unexpected error" in stderr:
        return "traceback (turned into one 'unexpected error' line by the CLI)"
    if rc == 0:
        return "accepted silently (exit 0)"
    if rc not in (1, 2):
        return f"exit code {rc}"
    if rc != row.rc:
        return f"exit code {rc}, expected {row.rc}"
    # a failed check (exit 1) may be a report on stdout (doctor's table); refusals are on stderr
    if row.expect not in (stderr + stdout if rc == 1 else stderr):
        return f"message does not say {row.expect!r}"
    return None


def test_bad_invocations_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kit = make_kit(tmp_path)
    table = rows(kit)
    every = {"config", "schemas", "decode", "locate", "calibrate", "run", "demo", "provision", "doctor", "update",
             "status", "outbox"}  # fmt: skip
    commands = {r.argv[0] for r in table if r.argv} & every
    assert len(table) >= 100 and commands == every
    failures = []
    counts = {"traceback": 0, "accepted": 0, "exit code": 0, "message": 0}
    monkeypatch.chdir(tmp_path)
    for row in table:
        rc, out, err = run_in_process(row, monkeypatch)
        why = verdict(row, rc, err, out)
        if why is not None:
            kind = next((k for k in ("traceback", "accepted", "exit code") if k in why), "message")
            counts[kind] += 1
            failures.append(f"gateway {row.id!r} [{why}]: {err.strip()[-300:]!r}")
    print(
        f"{len(table)} bad invocations of {len(commands)} commands: {counts['traceback']} tracebacks,"
        f" {counts['accepted']} accepted (exit 0 or still running), {counts['exit code']} other exit codes,"
        f" {counts['message']} without a message naming the problem"
    )
    assert not failures, f"{len(failures)} of {len(table)} rows fail:\n" + "\n".join(failures)


def test_sample_through_the_real_entry_point(tmp_path: Path) -> None:
    """The same answers from `python -m gateway` (exit codes, one stderr line, no traceback)."""
    kit = make_kit(tmp_path)
    table = rows(kit)
    picks = [r for r in table if r.argv[:2] in (["config", "check"], ["locate", "--crlb"], ["run", "--config"])][::4]
    picks += [r for r in table if r.argv[:1] in (["demo"], ["doctor"])][:3]
    assert len(picks) >= 8
    for row in picks:
        env = gateway_env(**row.env)
        r = subprocess.run(
            gateway_cmd(*row.argv), capture_output=True, text=True, env=env, input=row.stdin, timeout=60, check=False
        )
        assert verdict(row, r.returncode, r.stderr, r.stdout) is None, (row.argv, r.returncode, r.stderr[-500:])
        assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) <= 6, r.stderr
