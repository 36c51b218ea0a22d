"""`gateway locate` / `gateway calibrate` as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import numpy as np
import pytest

from gateway.layout import Layout
from gateway.localization.pathloss import PathLossModel
from gateway.localization.synth import RadioParams, synthetic_run, write_jsonl
from tests.conftest import LAYOUT, gateway_cmd, gateway_env


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        gateway_cmd(*args), env=gateway_env(), capture_output=True, text=True, timeout=120, input=stdin
    )


@pytest.fixture(scope="module")
def obs_file(tmp_path_factory: pytest.TempPathFactory, layout: Layout, model: PathLossModel) -> Path:
    path = tmp_path_factory.mktemp("obs") / "obs.jsonl"
    radio = RadioParams(sigma_db=6.0, tx_spread_db=4.0, fade_probability=0.05, packet_loss=0.02)
    r = synthetic_run(model, 6, 25.0, radio, np.random.default_rng(1), walking=True)
    write_jsonl(r, [s.id for s in layout.sensors], str(path))
    return path


def test_locate_writes_fixes(obs_file: Path) -> None:
    p = run("locate", "--layout", str(LAYOUT), str(obs_file))
    assert p.returncode == 0, p.stderr
    lines = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(lines) > 100
    assert set(lines[0]) == {"ts", "device", "x", "y", "zone", "sigma_m"}
    ts = [x["ts"] for x in lines]
    assert ts == sorted(ts)
    assert {x["device"] for x in lines} == {f"dev{i}" for i in range(6)}
    assert all(-5 <= x["x"] <= 35 and -7 <= x["y"] <= 23 and x["sigma_m"] > 0 for x in lines)
    assert "skipped: none" in p.stderr


def test_locate_is_causal_prefix_of_input_gives_prefix_of_output(obs_file: Path, tmp_path: Path) -> None:
    full = run("locate", "--layout", str(LAYOUT), str(obs_file)).stdout.splitlines()
    src = obs_file.read_text().splitlines(keepends=True)
    for frac in (0.31, 0.77):
        cut = tmp_path / f"cut{frac}.jsonl"
        cut.write_text("".join(src[: int(len(src) * frac)]))
        part = run("locate", "--layout", str(LAYOUT), str(cut)).stdout.splitlines()
        assert 0 < len(part) < len(full)
        assert part == full[: len(part)]
        # ... and only observations up to each fix's time were used: the last fix is not after the cut
        last_obs_ts = json.loads(src[int(len(src) * frac) - 1])["ts"]
        assert json.loads(part[-1])["ts"] <= last_obs_ts


def test_locate_reads_stdin(obs_file: Path) -> None:
    p = run("locate", "--layout", str(LAYOUT), "-", stdin=obs_file.read_text())
    assert p.returncode == 0
    assert p.stdout.count("\n") > 100


def test_bad_lines_are_counted_and_reported(tmp_path: Path) -> None:
    good = [{"ts": 100.0 + i, "sensor": "n11", "device": "a", "rssi": -60} for i in range(5)]
    lines = [json.dumps(g) for g in good[:2]]
    lines += [
        '{"ts": 102.5, "sensor": "zz", "device": "a", "rssi": -60}',  # unknown sensor
        '{"ts": 102.6, "sensor": "n12", "device": "a", "rssi": NaN}',  # NaN
        '{"ts": 50.0, "sensor": "n12", "device": "a", "rssi": -70}',  # out of order
        '{"ts": 102.7, "sensor": "n12", "device": "a"',  # truncated JSON
        "not json at all",
        '["a", "list"]',
        '{"ts": "soon", "sensor": "n12", "device": "a", "rssi": -70}',
        "",
    ]
    lines += [json.dumps(g) for g in good[2:]]
    f = tmp_path / "bad.jsonl"
    f.write_text("\n".join(lines) + "\n")
    p = run("locate", "--layout", str(LAYOUT), str(f))
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    for reason in ("unknown_sensor=1", "bad_rssi=1", "out_of_order=1", "bad_json=3", "bad_ts=1"):
        assert reason in p.stderr, p.stderr
    assert "bad.jsonl:3: sensor: 'zz' is not in the layout" in p.stderr
    # ticks 100..103 are closed by a later observation; each report sits exactly on a tick, so it waits
    # one tick for the rest of its advert (report_jitter_s) and tick 100 has nothing yet
    assert len(p.stdout.splitlines()) == 3
    strict = run("locate", "--layout", str(LAYOUT), "--strict", str(f))
    assert strict.returncode == 2
    assert "bad.jsonl:3:" in strict.stderr
    assert "Traceback" not in strict.stderr


@pytest.mark.parametrize(
    ("content", "args", "needle"),
    [
        ("", (), "no usable observations"),
        ("\n\n", (), "no usable observations"),
        (None, (), "cannot read"),
        ("x", ("--sigma-db", "-1"), "--sigma-db"),
        ("x", ("--layout", "/nonexistent.toml"), "cannot read layout"),
    ],
)
def test_bad_invocations_exit_2_without_traceback(
    tmp_path: Path, content: str | None, args: tuple[str, ...], needle: str
) -> None:
    f = tmp_path / "o.jsonl"
    if content is not None:
        f.write_text(content)
    base = ("--layout", str(LAYOUT)) if "--layout" not in args else ()
    p = run("locate", *base, *args, str(f))
    assert p.returncode == 2
    assert needle in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_crlb_map() -> None:
    p = run("locate", "--layout", str(LAYOUT), "--crlb", "--sigma-db", "6", "--step", "3")
    assert p.returncode == 0, p.stderr
    assert "Cramér-Rao" in p.stdout
    assert "worst at" in p.stdout
    j = run("locate", "--layout", str(LAYOUT), "--crlb", "--json", "--adverts", "10")
    data = json.loads(j.stdout)
    arr = np.array(data["rmse_m"])
    assert arr.shape == (len(data["y"]), len(data["x"]))
    assert 0.5 < float(np.median(arr)) < 3.0


def test_calibrate_recovers_sensor_parameters(tmp_path: Path, layout: Layout) -> None:
    """Beacons at known places + sensors hearing each other; true p0/n differ per sensor."""
    rng = np.random.default_rng(4)
    sensors = layout.sensors
    true_p0 = rng.uniform(-66, -54, len(sensors))
    true_n = rng.uniform(1.8, 2.8, len(sensors))
    beacons = [(f"b{i}", rng.uniform(0, 30), rng.uniform(0, 20)) for i in range(25)]
    node_tx = {s.id: rng.normal(0, 3) for s in sensors}
    obs, t = [], 0.0
    for _ in range(20):
        txs = [(b, x, y, 0.0, 0.0) for b, x, y in beacons] + [(s.id, s.x, s.y, s.z, node_tx[s.id]) for s in sensors]
        for name, x, y, z, off in txs:
            for j, s in enumerate(sensors):
                if s.id == name:
                    continue
                d = np.sqrt((x - s.x) ** 2 + (y - s.y) ** 2 + (z - s.z) ** 2 + 0.09)
                r = true_p0[j] + off - 10 * true_n[j] * np.log10(d) + rng.normal(0, 3)
                if rng.random() < 0.03:
                    r -= 15  # a few deep fades: the fit must be robust
                if r >= -95:
                    obs.append({"ts": t, "sensor": s.id, "device": name, "rssi": round(float(r), 1)})
            t += 0.01
    (tmp_path / "obs.jsonl").write_text("".join(json.dumps(o) + "\n" for o in obs))
    (tmp_path / "pos.jsonl").write_text(
        "".join(json.dumps({"device": b, "x": x, "y": y}) + "\n" for b, x, y in beacons)
    )
    out = tmp_path / "sensors.toml"
    obs_path, pos_path = str(tmp_path / "obs.jsonl"), str(tmp_path / "pos.jsonl")
    p = run("calibrate", obs_path, "--layout", str(LAYOUT), "--positions", pos_path, "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert "residual sigma" in p.stderr
    fitted = tomllib.loads(out.read_text())["sensors"]
    assert [s["id"] for s in fitted] == [s.id for s in sensors]
    p0 = np.array([s["rssi_at_1m"] for s in fitted])
    n = np.array([s["path_loss_exponent"] for s in fitted])
    assert np.max(np.abs(p0 - true_p0)) < 2.5, p0 - true_p0
    assert np.max(np.abs(n - true_n)) < 0.25, n - true_n
    # the output is a valid [[sensors]] section for a layout
    assert all({"x", "y", "z"} <= set(s) for s in fitted)


def test_calibrate_bad_positions_file(tmp_path: Path) -> None:
    (tmp_path / "obs.jsonl").write_text('{"ts": 1, "sensor": "n11", "device": "b", "rssi": -60}\n')
    (tmp_path / "pos.jsonl").write_text('{"device": "b", "x": "left"}\n')
    p = run("calibrate", str(tmp_path / "obs.jsonl"), "--positions", str(tmp_path / "pos.jsonl"))
    assert p.returncode == 2
    assert "pos.jsonl:1" in p.stderr
    assert "Traceback" not in p.stderr


def test_calibrate_from_a_logged_walk(tmp_path: Path, layout: Layout) -> None:
    """A reference phone walks a logged path (positions every 2 s, interpolated in between); 20 % of its
    reports are lost at every level (packet loss): found per sensor from the adverts' missing reports."""
    rng = np.random.default_rng(8)
    sensors = layout.sensors
    true_p0 = rng.uniform(-64, -55, len(sensors))
    true_n = rng.uniform(1.9, 2.6, len(sensors))
    t = np.arange(0.0, 600.0, 2.0)
    waypoints = np.column_stack([15 + 13 * np.sin(t / 37.0), 10 + 8.5 * np.sin(t / 23.0)])
    pos_lines = [
        json.dumps({"device": "phone", "ts": float(a), "x": float(x), "y": float(y)})
        for a, (x, y) in zip(t, waypoints, strict=True)
    ]
    obs = []
    for ts in np.arange(0.5, 598.0, 0.5):
        x = float(np.interp(ts, t, waypoints[:, 0]))
        y = float(np.interp(ts, t, waypoints[:, 1]))
        for j, s in enumerate(sensors):
            d = np.sqrt((x - s.x) ** 2 + (y - s.y) ** 2 + s.z**2 + 0.09)
            r = true_p0[j] - 10 * true_n[j] * np.log10(d) + rng.normal(0, 4)
            if r >= -95 and rng.random() >= 0.2:
                obs.append(json.dumps({"ts": float(ts), "sensor": s.id, "device": "phone", "rssi": round(float(r), 1)}))
    (tmp_path / "obs.jsonl").write_text("\n".join(obs) + "\n")
    (tmp_path / "walk.jsonl").write_text("\n".join(pos_lines) + "\n")
    args = (str(tmp_path / "obs.jsonl"), "--layout", str(LAYOUT), "--positions", str(tmp_path / "walk.jsonl"))
    p = run("calibrate", *args, "--no-sensor-links")
    assert p.returncode == 0, p.stderr
    fitted = tomllib.loads(p.stdout)["sensors"]
    p0 = np.array([s["rssi_at_1m"] for s in fitted])
    n = np.array([s["path_loss_exponent"] for s in fitted])
    assert np.max(np.abs(p0 - true_p0)) < 2.0, p0 - true_p0
    assert np.max(np.abs(n - true_n)) < 0.2, n - true_n
    loss = [ln for ln in p.stderr.splitlines() if "packet loss per sensor" in ln]
    assert len(loss) == 1, p.stderr
    per_sensor = [float(x.split()[-1]) for x in loss[0].split(": ", 2)[-1].split(" -> ")[0].split(", ")]
    assert len(per_sensor) == len(sensors)
    assert 0.15 < float(np.median(per_sensor)) < 0.25, loss
