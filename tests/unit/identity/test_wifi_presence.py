"""What a heard Wi-Fi burst stands for: silences and visits learnt, weights, their uncertainty."""

from __future__ import annotations

import math
import random

import pytest

from gateway.identity.wifi_presence import PresenceModel, PresenceParams

FAM_A = "aaaaaaaa"
FAM_B = "bbbbbbbb"


def _learn(pm: PresenceModel, family: str, gaps: list[float], devices: int, *, public: bool = False) -> None:
    """``gaps`` from ``devices`` devices in turn (each device's own silences so far go with each)."""
    own: dict[int, tuple[float, int]] = {}
    for k, g in enumerate(gaps):
        d = k % devices
        s, n = own.get(d, (0.0, 0))
        pm.silence(family, g, 1000.0 + k, public=public, own=(s, n))
        own[d] = (s + g, n + 1)


def test_before_anything_is_learnt_the_prior_weighs_a_burst() -> None:
    p = PresenceParams()
    pm = PresenceModel(p)
    mk = pm.mark(FAM_A)
    kappa = 1.0 / (1.0 - (p.prior_spread_s - p.prior_gap_s) / p.prior_stay_s)
    assert mk.presence_s == pytest.approx(p.prior_gap_s * kappa)
    assert mk.arrivals == pytest.approx(mk.presence_s / p.prior_stay_s)
    assert mk.rel_sd > 0.3  # next to nothing known: wide


def test_silences_give_the_mean_and_the_length_biased_spread() -> None:
    rng = random.Random(1)
    gaps = [rng.expovariate(1 / 40.0) for _ in range(4000)]
    gaps = [g for g in gaps if g <= 600.0]
    pm = PresenceModel(PresenceParams(prior_n=1.0))
    _learn(pm, FAM_A, gaps, 400)
    mean = sum(gaps) / len(gaps)
    assert pm.mean_silence(FAM_A) == pytest.approx(mean, rel=0.02)
    # exponential silences: E[X^2]/E[X] = 2 E[X] (the wait from a random moment to the next burst)
    assert pm.spread(FAM_A) == pytest.approx(2.0 * mean, rel=0.05)


def test_a_family_without_silences_of_its_own_scans_like_the_pool() -> None:
    pm = PresenceModel(PresenceParams(shrink_devices=5.0))
    _learn(pm, FAM_A, [30.0] * 200, 50)
    assert pm.mean_silence(FAM_B) == pytest.approx(pm.mean_silence(FAM_A), rel=0.05)
    # its own silences weigh by devices, not by silences: two devices' hundred equal silences
    # move it two sevenths of the way (shrink_devices 5)
    _learn(pm, FAM_B, [120.0] * 100, 2)
    pooled = pm._pooled(False)[1]
    assert pm.mean_silence(FAM_B) == pytest.approx(pooled + (120.0 - pooled) * 2.0 / 7.0, rel=0.01)


def test_a_device_known_to_scan_fast_counts_once() -> None:
    pm = PresenceModel()
    _learn(pm, FAM_A, [60.0] * 300, 60)
    slow = pm.mark(FAM_A)
    fast = pm.mark(FAM_A, own=(10 * 12.0, 10))  # its own 10 silences of 12 s
    k = pm.params.own_n
    assert fast.presence_s == pytest.approx(slow.presence_s * (10 * 12.0 + k * 60.0) / (10 + k) / 60.0, rel=0.01)
    assert fast.presence_s < slow.presence_s / 2.5


def test_the_mean_visit_comes_from_whole_visits_and_sets_kappa_and_arrivals() -> None:
    pm = PresenceModel(PresenceParams(prior_visits=1.0, learn_s=math.inf))
    _learn(pm, FAM_A, [50.0] * 100, 20, public=True)
    spread = pm.spread(FAM_A, public=True)
    for k in range(199):
        pm.visit(FAM_A, 1200.0 - spread, 2000.0 + k)  # whole visits of 20 min
    assert pm.stay() == pytest.approx(1200.0, rel=0.01)
    mk = pm.mark(FAM_A, public=True)
    mean = pm.mean_silence(FAM_A, public=True)
    kappa = 1.0 / (1.0 - (spread - mean) / pm.stay())
    assert mk.presence_s == pytest.approx(mean * kappa, rel=1e-6)
    assert mk.arrivals == pytest.approx(mk.presence_s / pm.stay(), rel=1e-6)
    assert mk.arrivals_rel_sd > mk.rel_sd  # the mean visit's own error comes on top


def test_the_uncertainty_goes_by_the_devices_learnt_from() -> None:
    """Devices scanning at different rates: what is learnt is as sure as the number of devices."""
    rng = random.Random(3)

    def learn(devices: int) -> PresenceModel:
        pm = PresenceModel(PresenceParams(prior_n=1.0, learn_s=math.inf))
        rates = [rng.uniform(20.0, 120.0) for _ in range(devices)]
        _learn(pm, FAM_A, [rates[k % devices] * rng.uniform(0.8, 1.2) for k in range(400)], devices)
        return pm

    few, many = learn(4), learn(100)
    assert many.mark(FAM_A).rel_sd < few.mark(FAM_A).rel_sd / 2
    # a family with no silences of its own may scan unlike the pool: never surer than BETWEEN_CV
    assert many.mark(FAM_B).rel_sd >= 0.2


def test_learnt_statistics_fade_over_learn_s() -> None:
    pm = PresenceModel(PresenceParams(learn_s=600.0, prior_n=1.0))
    for k in range(200):
        pm.silence(FAM_A, 20.0, 1000.0 + k)
    for k in range(200):
        pm.silence(FAM_A, 100.0, 10_000.0 + k)  # hours later: the store changed
    assert pm.mean_silence(FAM_A) == pytest.approx(100.0, rel=0.02)
    # a whole capture (learn_s inf) keeps everything
    pm2 = PresenceModel(PresenceParams(learn_s=math.inf, prior_n=1.0))
    for ts, g in ((1000.0, 20.0), (10_000.0, 100.0)):
        for k in range(200):
            pm2.silence(FAM_A, g, ts + k)
    assert pm2.mean_silence(FAM_A) == pytest.approx(60.0, rel=0.02)


def test_silences_beyond_their_limits_are_not_learnt() -> None:
    pm = PresenceModel(PresenceParams(prior_n=1.0))
    pm.silence(FAM_A, 900.0, 1.0)  # beyond max_gap_s for a randomizing device
    pm.silence(FAM_A, -1.0, 1.0)
    assert pm.summary()["silences"] == 0.0
    pm.silence(FAM_A, 900.0, 1.0, public=True)  # a public MAC's is (below visit_gap_s)
    assert pm._pooled(True)[1] == pytest.approx((900.0 + 60.0) / 2)  # with the prior's one silence


@pytest.mark.parametrize(
    ("field", "value"),
    [("window_s", 0.0), ("learn_s", -1.0), ("confident", 1.0), ("prior_spread_s", 10.0), ("max_kappa", 0.5)],
)
def test_bad_params_are_refused_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PresenceParams(**{field: value})


def _km_mean(lengths: list[float], over: list[bool]) -> float:
    """The product-limit (Kaplan-Meier) mean of ``lengths``, ``over[i]`` False where still under way
    (the survivors beyond the last visit over: as long as the longest seen)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], not over[i]))
    at_risk, surv, mean = float(len(lengths)), 1.0, 0.0
    for i in order:
        if over[i]:
            mean += surv / at_risk * lengths[i]
            surv *= 1.0 - 1.0 / at_risk
        at_risk -= 1.0
    return mean + surv * max(lengths)


def test_visits_under_way_count_in_the_mean_visit_as_lasting_at_least_so_long() -> None:
    """Early in a day only the short visits are over: the mean of those alone reads short for
    hours. Visits under way count as lasting at least as long as they have (product-limit mean)."""
    rng = random.Random(3)
    p = PresenceParams(prior_visits=1.0, prior_stay_s=600.0, learn_s=math.inf)
    pm = PresenceModel(p)
    _learn(pm, FAM_A, [40.0] * 400, 100, public=True)  # public silences: 40 s
    spread = pm.spread(FAM_A, public=True)
    # a store that opened an hour ago: visits of 5-60 min arriving all along; now = 3600
    lengths, over = [], []
    for k in range(300):
        start = rng.uniform(0.0, 3600.0)
        length = rng.uniform(300.0, 3600.0)
        if start + length <= 3600.0:
            pm.visit(FAM_A, length, start + length, public=True)
            lengths.append(length + spread)
            over.append(True)
        else:
            pm.visit_open(k, FAM_A, start)
            pm.visit_heard(k, 3600.0 - 5.0)  # heard a moment ago
            lengths.append(3600.0 - 5.0 - start + spread)
            over.append(False)
    pm.silence(FAM_A, 40.0, 3600.0, public=True)  # the model's clock: now
    done = [x for x, o in zip(lengths, over, strict=True) if o]
    only_over = (sum(done) + p.prior_stay_s) / (len(done) + 1.0)
    km = (_km_mean(lengths, over) * len(lengths) + p.prior_stay_s) / (len(lengths) + 1.0)
    assert pm.stay() == pytest.approx(km, rel=0.05)  # binned 15 % wide: close to the exact one
    assert pm.stay() > 1.3 * only_over  # what the visits over alone said
    # all over (a whole capture, or the end of the day): the plain mean of the visits, with the prior
    pm2 = PresenceModel(p)
    _learn(pm2, FAM_A, [40.0] * 400, 100, public=True)
    for x in lengths:
        pm2.visit(FAM_A, x - pm2.spread(FAM_A, public=True), 4000.0)
    assert pm2.stay() == pytest.approx((sum(lengths) + p.prior_stay_s) / (len(lengths) + 1.0), rel=1e-6)


def test_a_visit_under_way_but_long_quiet_counts_as_over_and_closing_forgets_it() -> None:
    p = PresenceParams(prior_visits=1.0, prior_stay_s=600.0, learn_s=math.inf, quiet_silences=2.0)
    pm = PresenceModel(p)
    _learn(pm, FAM_A, [40.0] * 400, 100, public=True)
    spread = pm.spread(FAM_A, public=True)
    for _ in range(50):
        pm.visit(FAM_A, 200.0, 1000.0, public=True)
    pm.visit_open("quiet", FAM_A, 0.0)
    pm.visit_heard("quiet", 3000.0)  # a visit of 50 min so far ...
    pm.silence(FAM_A, 40.0, 3000.0 + 1.9 * pm.mean_silence(FAM_A, public=True), public=True)
    under_way = pm.stay()  # ... heard lately: it outlasts every visit over, at least 50 min
    assert under_way == pytest.approx((50 * (200.0 + spread) + 3000.0 + spread + 600.0) / 52.0, rel=0.02)
    pm.silence(FAM_A, 40.0, 3000.0 + 2.1 * pm.mean_silence(FAM_A, public=True) + 20.0, public=True)
    quiet = pm.stay()  # quiet for over two mean silences: over at its latest burst, the same here
    assert quiet == pytest.approx(under_way, rel=0.02)
    pm.visit(FAM_A, 3000.0, 3100.0, public=True, key="quiet")  # over: counted once, not open any more
    assert pm.stay() == pytest.approx((50 * (200.0 + spread) + 3000.0 + spread + 600.0) / 52.0, rel=0.02)
    assert not pm._open


def test_the_mean_over_devices_weighs_each_device_once() -> None:
    """Ten devices scanning every 10 s and ten every 120 s, each heard for 20 minutes: the mean
    silence between bursts leans to the fast ones (they burst 12x as often); the mean over devices
    of their own mean silence is the plain average (~65 s), what a followed device's first burst
    stands for online."""
    pm = PresenceModel(PresenceParams(prior_n=1.0))
    k = 0
    for d in range(20):
        every = 10.0 if d % 2 else 120.0
        s, n = 0.0, 0
        for _ in range(int(1200.0 / every)):
            pm.silence(FAM_A, every, 1000.0 + k, public=True, own=(s, n))
            s, n = s + every, n + 1
            k += 1
    assert pm.mean_silence(FAM_A, public=True) < 25.0
    assert pm.device_silence(FAM_A, public=True) == pytest.approx(65.0, rel=0.1)
    # a public MAC followed from its first burst online weighs it so; without ``so_far`` as before
    first = pm.mark(FAM_A, public=True, own=(0.0, 0), so_far=True).presence_s
    assert first / pm.mark(FAM_A, public=True).presence_s == pytest.approx(
        pm.device_silence(FAM_A, public=True) / pm.mean_silence(FAM_A, public=True)
    )
