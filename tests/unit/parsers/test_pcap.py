"""pcap / pcapng reader on the committed fixtures, corrupt files, fuzzing; ``gateway decode pcap``."""

from __future__ import annotations

import collections
import importlib.util
import io
import json
import random
import struct
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from gateway.log import MAC_RE
from gateway.models import EVENT_ADAPTER
from gateway.parsers.pcap import LINKTYPE_IEEE802_11, LINKTYPE_RADIOTAP, PcapError, read_records, write_pcapng
from tests.conftest import gateway_cmd, gateway_env

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "wifi"


def _make_pcaps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_pcaps", FIX / "make_pcaps.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MP = _make_pcaps()
CROWD = MP.crowd()


def _read(name: str) -> list[tuple[float | None, int, bytes]]:
    with (FIX / name).open("rb") as f:
        return list(read_records(f))


def test_fixtures_are_reproducible_from_the_generator() -> None:
    built = MP.build_all()
    for name, data in built.items():
        assert (FIX / name).read_bytes() == data, f"{name} differs: rerun tests/fixtures/wifi/make_pcaps.py"


def test_classic_pcap_little_endian_us() -> None:
    recs = _read("crowd.pcap")
    assert len(recs) == len(CROWD) + len(MP.expected_specials())
    crowd = [r for r in recs if r[2] in {f.frame for f in CROWD}]
    assert [r[2] for r in crowd] == [f.frame for f in CROWD]
    for (ts, lt, _), f in zip(crowd, CROWD, strict=True):
        assert lt == LINKTYPE_RADIOTAP
        assert ts == pytest.approx(f.ts, abs=1e-6)


def test_classic_pcap_big_endian_ns() -> None:
    recs = _read("crowd_be_ns.pcap")
    assert [r[2] for r in recs] == [f.frame for f in CROWD]
    for (ts, lt, _), f in zip(recs, CROWD, strict=True):
        assert lt == LINKTYPE_RADIOTAP
        assert ts == pytest.approx(f.ts, abs=1e-6)


def test_pcapng_two_interfaces_linktypes_and_resolutions() -> None:
    recs = _read("mixed.pcapng")
    assert len(recs) == 40
    for i, ((ts, lt, data), f) in enumerate(zip(recs, CROWD[:40], strict=True)):
        assert ts == pytest.approx(f.ts, abs=2e-6)
        if i % 2:
            assert lt == LINKTYPE_IEEE802_11
            assert f.frame.endswith(data)
            assert data[0] == 0x40
        else:
            assert lt == LINKTYPE_RADIOTAP
            assert data == f.frame


def test_pcapng_big_endian_binary_resolution() -> None:
    recs = _read("crowd_be.pcapng")
    assert [r[2] for r in recs] == [f.frame for f in CROWD]
    for (ts, _lt, _), f in zip(recs, CROWD, strict=True):
        assert ts == pytest.approx(f.ts, abs=2e-6)  # 2^-20 s resolution


def test_pcapng_simple_packet_blocks_have_no_timestamp() -> None:
    recs = _read("simple.pcapng")
    assert [r[2] for r in recs] == [f.frame for f in CROWD[:10]]
    assert all(ts is None and lt == LINKTYPE_RADIOTAP for ts, lt, _ in recs)


def test_truncated_pcap_yields_records_then_error_with_offset() -> None:
    got = []
    with (FIX / "truncated.pcap").open("rb") as f, pytest.raises(PcapError) as e:
        got.extend(read_records(f))
    assert len(got) == 30
    assert "truncated record" in e.value.reason
    assert e.value.offset == len((FIX / "truncated.pcap").read_bytes()) - 26


def test_bad_block_length_error_names_offset() -> None:
    with (FIX / "badblock.pcapng").open("rb") as f, pytest.raises(PcapError) as e:
        list(read_records(f))
    assert "trailing length" in e.value.reason
    data = (FIX / "badblock.pcapng").read_bytes()
    p = 0
    for _ in range(5):  # the generator damaged the 6th block's trailing length
        p += struct.unpack_from("<I", data, p + 4)[0]
    assert e.value.offset == p + struct.unpack_from("<I", data, p + 4)[0] - 4


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "file too short"),
        (b"GIF89a..", "unknown magic number"),
        (b"\xd4\xc3\xb2\xa1" + bytes(10), "truncated pcap global header"),
        (
            struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 127) + struct.pack("<IIII", 1, 0, 10**7, 10),
            "exceeds",
        ),
        (struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 127) + struct.pack("<III", 1, 0, 1), "record header"),
        (
            struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 127) + struct.pack("<IIII", 1, 2 * 10**6, 0, 0),
            "fraction",
        ),
        (struct.pack("<II", 0x0A0D0D0A, 28) + b"\x01\x02\x03\x04" + bytes(16), "byte-order magic"),
        (struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 27), "trailing length"),
        (struct.pack("<IIIHHqI", 0x0A0D0D0A, 30, 0x1A2B3C4D, 1, 0, -1, 30), "invalid total length"),
        (struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 2, 0, -1, 28), "major version 2"),
    ],
)
def test_corrupt_headers(data: bytes, reason: str) -> None:
    with pytest.raises(PcapError) as e:
        list(read_records(io.BytesIO(data)))
    assert reason in str(e.value)


def test_epb_before_any_interface_is_an_error() -> None:
    b = io.BytesIO()
    write_pcapng(b, [], [])
    body = struct.pack("<IIIII", 0, 0, 0, 4, 4) + b"abcd"
    b.write(struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body)))
    with pytest.raises(PcapError) as e:
        list(read_records(io.BytesIO(b.getvalue())))
    assert "undeclared interface 0" in str(e.value)


class _Trickle(io.RawIOBase):
    """A stream that hands out at most 7 bytes per read (a pipe, a slow disk)."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._b.read(min(n if n >= 0 else 7, 7))


def test_streaming_reader_works_on_short_reads() -> None:
    for name in ("crowd.pcap", "mixed.pcapng"):
        data = (FIX / name).read_bytes()
        assert list(read_records(_Trickle(data))) == list(read_records(io.BytesIO(data)))  # type: ignore[arg-type]


def test_fuzz_mutated_files_only_pcap_errors() -> None:
    rng = random.Random(3)
    seeds = [(FIX / n).read_bytes()[:1500] for n in ("crowd.pcap", "mixed.pcapng", "crowd_be.pcapng")]
    for _ in range(1500):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        if rng.random() < 0.3:
            del b[rng.randrange(len(b)) :]
        try:
            for ts, lt, data in read_records(io.BytesIO(bytes(b))):
                assert isinstance(lt, int)
                assert isinstance(data, bytes)
                assert ts is None or isinstance(ts, float)
        except PcapError:
            pass


# ------------------------------------------------------------------------- gateway decode pcap


def _decode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_cmd("decode", "pcap", *args), env=gateway_env(), capture_output=True, text=True, timeout=60
    )


def test_decode_pcap_json_lines_raw() -> None:
    r = _decode(str(FIX / "crowd.pcap"), "--raw")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    on_channel = [f for f in CROWD if f.rx_channel == f.tx_channel]
    specials = [s for s in MP.expected_specials() if s[0] == "probe"]
    assert len(rows) == len(on_channel) + len(specials)
    assert set(rows[0]) == {"ts", "mac", "randomized", "rssi", "channel", "ssid_hidden", "fingerprint", "group"}
    by_ts = {round(f.ts, 6): f for f in on_channel}
    for row in rows:
        f = by_ts.get(round(row["ts"], 6))
        if f is None:
            continue  # one of the special frames
        assert row["mac"] == f.mac.hex(":")
        assert row["randomized"] == bool(f.mac[0] & 2)
        assert row["rssi"] == f.rssi
        assert row["channel"] == f.rx_channel
    # counts on stderr: each odd frame once, and the leaked (off-channel) crowd frames
    leaked = len(CROWD) - len(on_channel)
    assert "malformed.ieee80211=1" in r.stderr
    assert "malformed.radiotap=1" in r.stderr
    assert "bad_fcs=1" in r.stderr
    assert "not_probe_request=2" in r.stderr
    assert f"off_channel={leaked}" in r.stderr


def test_decode_pcap_pseudonyms_and_groups() -> None:
    raw = [json.loads(x) for x in _decode(str(FIX / "crowd.pcap"), "--raw").stdout.splitlines()]
    r = _decode(str(FIX / "crowd.pcap"))
    assert r.returncode == 0
    pseudo = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(pseudo) == len(raw)
    macs = {row["mac"] for row in raw}
    assert not macs & {row["mac"] for row in pseudo}
    assert MAC_RE.search(r.stdout) is None  # no MAC-shaped text at all
    # same raw MAC -> same pseudonym, different raw MACs -> different pseudonyms
    pairs = {(a["mac"], b["mac"]) for a, b in zip(raw, pseudo, strict=True)}
    assert len(pairs) == len(macs) == len({b for _, b in pairs})
    # groups are identical with or without --raw, and fewer than MACs (rotations were linked)
    assert [a["group"] for a in raw] == [b["group"] for b in pseudo]
    assert len({a["group"] for a in raw}) < len(macs)


def test_decode_pcap_corrupt_file_exit_2_with_offset() -> None:
    r = _decode(str(FIX / "truncated.pcap"))
    assert r.returncode == 2
    assert "truncated record" in r.stderr
    assert "at byte offset" in r.stderr
    assert len(r.stdout.splitlines()) > 0  # what came before the damage was printed
    r = _decode(str(FIX / "badblock.pcapng"))
    assert r.returncode == 2
    assert "trailing length" in r.stderr


def test_decode_pcap_timestamp_beyond_any_calendar_is_a_file_error(tmp_path: Path) -> None:
    """pcapng stamps are 64-bit (and if_tsoffset is added): one beyond year 2999 is a file error at its
    offset, in both groupings, with every line before it printed (no traceback)."""
    with (FIX / "crowd.pcap").open("rb") as f:
        recs = list(read_records(f))
    path = tmp_path / "far.pcapng"
    with path.open("wb") as f:
        write_pcapng(
            f, [(0, ts + (1e12 if i >= 40 else 0.0), data) for i, (ts, _lt, data) in enumerate(recs)], [(127, 6)]
        )
    good = _decode(str(FIX / "crowd.pcap"), "--raw")
    for grouping in ("capture", "stream"):
        r = _decode(str(path), "--raw", "--grouping", grouping)
        assert r.returncode == 2, r.stderr
        assert "outside the years 1900-2999 at byte offset" in r.stderr and "Traceback" not in r.stderr
        lines = r.stdout.splitlines()
        assert lines and len(lines) < len(good.stdout.splitlines())
        kept = [{k: v for k, v in json.loads(x).items() if k != "group"} for x in lines]
        first = [{k: v for k, v in json.loads(x).items() if k != "group"} for x in good.stdout.splitlines()]
        assert kept == first[: len(kept)]


def test_decode_pcap_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    """`gateway decode pcap big.pcap | head -1`: the reader leaves; exit 0 and no error text."""
    from gateway.parsers.pcap import write_pcap
    from gateway.sim.wifi_crowd import generate_crowd

    path = tmp_path / "big.pcap"  # output of several MB: far more than a pipe buffer
    with path.open("wb") as f:
        write_pcap(f, [(x.ts, x.frame) for x in generate_crowd(60, 1800.0, seed=4)], LINKTYPE_RADIOTAP)
    p = subprocess.Popen(
        gateway_cmd("decode", "pcap", str(path)),
        env=gateway_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline().startswith(b'{"ts"')
    p.stdout.close()
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(timeout=60) == 0, err
    assert "error" not in err and "Traceback" not in err


def test_decode_pcap_missing_and_not_pcap(tmp_path: Path) -> None:
    r = _decode(str(tmp_path / "nope.pcap"))
    assert r.returncode == 2
    assert "cannot read" in r.stderr
    assert "Traceback" not in r.stderr
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"hello world")
    r = _decode(str(junk))
    assert r.returncode == 2
    assert "unknown magic number" in r.stderr
    assert "Traceback" not in r.stderr


def test_decode_pcap_plain_80211_has_no_rssi() -> None:
    r = _decode(str(FIX / "mixed.pcapng"), "--raw")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert any(row["rssi"] is None for row in rows)  # the linktype-105 interface
    assert any(row["rssi"] is not None for row in rows)


def test_decode_pcap_holds_undecided_frames_but_keeps_capture_order() -> None:
    """Held frames (new random MACs awaiting their group) come out in capture order, none lost."""
    import io

    from gateway.ops.decode_pcap import decode_file

    outs = {}
    for hold in (0.0, 90.0):
        buf = io.StringIO()
        dec, _records, err = decode_file(FIX / "crowd.pcap", buf, raw=True, grouping="stream", group_hold_s=hold)
        assert err is None
        lines = [json.loads(x) for x in buf.getvalue().splitlines()]
        assert len(lines) == dec.probes
        outs[hold] = lines
    same = [(x["ts"], x["mac"], x["rssi"]) for x in outs[0.0]]
    assert [(x["ts"], x["mac"], x["rssi"]) for x in outs[90.0]] == same  # file order both ways
    assert [x["ts"] for x in outs[90.0]] == sorted(x["ts"] for x in outs[90.0])
    # frames of this file really are held (else this test would not exercise the buffering)
    from gateway.identity.wifi_groups import GroupParams, WifiGrouper
    from gateway.parsers.wifi_probe import ProbeDecoder

    g = WifiGrouper(GroupParams(max_delay_s=90.0))
    with (FIX / "crowd.pcap").open("rb") as f:
        for ts, mac, randomized, rssi, _ch, _hidden, fp, seq, ssid in ProbeDecoder().iter_probes(read_records(f)):
            g.offer(mac, randomized, fp, seq, ts, rssi, None, ssid)
    assert g.held_frames > 0


def test_decode_pcap_groupings_print_the_same_frames_and_capture_groups_are_purer(tmp_path: Path) -> None:
    """--grouping capture (default) and stream: the same lines but the group; on a crowd with
    ground truth, whole-capture groups mix devices less, at no more groups."""
    from gateway.ops.decode_pcap import decode_file
    from gateway.parsers.pcap import write_pcap
    from gateway.sim.wifi_crowd import generate_crowd

    crowd = generate_crowd(120, 2400.0, seed=3)
    path = tmp_path / "crowd120.pcap"
    with path.open("wb") as f:
        write_pcap(f, [(x.ts, x.frame) for x in crowd], LINKTYPE_RADIOTAP)
    truth = {round(f.ts, 6): f.device for f in crowd}
    out = {}
    for grouping in ("capture", "stream"):
        buf = io.StringIO()
        dec, _records, err = decode_file(path, buf, raw=True, grouping=grouping)
        assert err is None
        out[grouping] = [json.loads(x) for x in buf.getvalue().splitlines()]
        assert len(out[grouping]) == dec.probes
    strip = [{k: v for k, v in row.items() if k != "group"} for row in out["stream"]]
    assert [{k: v for k, v in row.items() if k != "group"} for row in out["capture"]] == strip

    def impure(rows: list[dict[str, object]]) -> tuple[int, int]:
        """Groups under 90 % one device, and groups."""
        by: dict[object, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        for row in rows:
            by[row["group"]][truth[round(float(row["ts"]), 6)]] += 1  # type: ignore[arg-type]
        return sum(c.most_common(1)[0][1] < 0.9 * sum(c.values()) for c in by.values()), len(by)

    (imp_c, n_c), (imp_s, n_s) = impure(out["capture"]), impure(out["stream"])
    assert imp_c < imp_s and n_c <= n_s, (imp_c, n_c, imp_s, n_s)
    r = _decode(str(FIX / "crowd.pcap"), "--grouping", "bogus")
    assert r.returncode == 2 and "--grouping" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("grouping", ["capture", "stream"])
def test_decode_pcap_counts_are_the_daemons_wifi_devices_events(grouping: str) -> None:
    """--counts: wifi.devices events (every minute, the quarter hour with its distinct devices, the
    whole capture last) instead of the probe lines; the whole capture's figures on stderr too."""
    r = _decode(str(FIX / "crowd.pcap"), "--counts", "--grouping", grouping)
    assert r.returncode == 0, r.stderr
    events = [EVENT_ADAPTER.validate_json(line) for line in r.stdout.splitlines()]
    assert events and all(e.type == "wifi.devices" for e in events)
    minutes = [e for e in events if e.interval_s == 60.0]
    assert len(minutes) >= 4 and all(e.sd > 0 for e in minutes if e.devices > 0)
    whole = events[-1]
    assert whole.distinct is not None and whole.distinct_sd is not None and whole.distinct > 0
    assert whole.interval_start == minutes[0].interval_start
    assert f"Wi-Fi devices present {whole.devices:.1f} +- {whole.sd:.1f} on average" in r.stderr
    assert f"{whole.distinct:.0f} +- {whole.distinct_sd:.0f} distinct" in r.stderr
    assert '"mac"' not in r.stdout  # no probe lines, no addresses


@pytest.mark.parametrize("grouping", ["capture", "stream"])
def test_decode_pcap_pseudonyms_turn_over_at_the_key_rotation(tmp_path: Path, grouping: str) -> None:
    """The same MACs before and after 21:00 UTC (the default rotation): one pseudonym each within a
    key epoch, a new one after it, none shared across it."""
    from gateway.ops.decode_pcap import decode_file
    from gateway.parsers.pcap import write_pcap

    with (FIX / "crowd.pcap").open("rb") as f:
        recs = [r for r in read_records(f) if r[1] == LINKTYPE_RADIOTAP]
    t0 = recs[0][0]
    turn = 1_767_301_200.0  # 2026-01-01 21:00 UTC
    # the crowd once ending just before the rotation, then once again right after it
    shifted = [(ts - t0 + turn - 400.0, d) for ts, _lt, d in recs] + [(ts - t0 + turn + 5.0, d) for ts, _lt, d in recs]
    path = tmp_path / "rotation.pcap"
    with path.open("wb") as f:
        write_pcap(f, shifted, LINKTYPE_RADIOTAP)
    raw, pseudo = io.StringIO(), io.StringIO()
    decode_file(path, raw, raw=True, grouping=grouping)
    decode_file(path, pseudo, grouping=grouping)
    before: dict[str, set[str]] = collections.defaultdict(set)
    after: dict[str, set[str]] = collections.defaultdict(set)
    for a, b in zip(raw.getvalue().splitlines(), pseudo.getvalue().splitlines(), strict=True):
        ra, rb = json.loads(a), json.loads(b)
        (before if ra["ts"] < turn else after)[ra["mac"]].add(rb["mac"])
    assert before and set(before) == set(after)
    assert all(len(v) == 1 for v in [*before.values(), *after.values()])
    assert not set().union(*before.values()) & set().union(*after.values())


def test_decode_pcap_refuses_an_unbounded_group_hold() -> None:
    for bad in ("inf", "nan", "-1", "601"):
        r = _decode(str(FIX / "simple.pcapng"), "--group-hold", bad)
        assert r.returncode == 2 and "--group-hold" in r.stderr and "Traceback" not in r.stderr, bad
    assert _decode(str(FIX / "simple.pcapng"), "--group-hold", "600").returncode == 0
