"""The poison detector, without a broker: the rule that decides when a message the broker drops the
link for is set aside, and when the broker itself is to blame (docs/fleet.md, stop 16)."""

from __future__ import annotations

from gateway.uplink.poison import PACKET_TOO_LARGE, POISON_LOSSES, PoisonDetector, Verdict, refusal


def lose_alone(p: PoisonDetector, seq: int, times: int, count: int = 1) -> list[Verdict]:
    """The link drops ``times`` times with message ``seq`` alone in flight (after the first loss the
    detector probes: window 1)."""
    out = []
    for _ in range(times):
        out.append(p.link_lost((seq, count)))
        assert p.probing and p.window(100) == 1
    return out


def test_a_loss_with_a_full_window_only_starts_probing() -> None:
    p = PoisonDetector()
    assert p.window(100) == 100
    assert p.link_lost((7, 1)) == Verdict("none")  # 7 was one of many in flight: no evidence
    assert p.probing and p.window(100) == 1
    assert p.link_lost(None) == Verdict("none")  # lost with nothing in flight: probing ends
    assert not p.probing and p.suspect is None


def test_five_drops_on_the_same_lone_event_make_it_a_suspect() -> None:
    p = PoisonDetector()
    p.link_lost(None)
    p.probing = True
    verdicts = lose_alone(p, 7, POISON_LOSSES)
    assert [v.decision for v in verdicts] == ["counting"] * (POISON_LOSSES - 1) + ["suspect"]
    assert [v.losses for v in verdicts[:-1]] == list(range(1, POISON_LOSSES))
    assert p.suspect == 7 and p.needs_control()


def suspected(seq: int = 7) -> PoisonDetector:
    p = PoisonDetector()
    p.link_lost((seq, 1))  # full window: starts probing
    lose_alone(p, seq, POISON_LOSSES - 1)
    v = p.link_lost((seq, 1))
    assert v.decision == "suspect" and p.suspect == seq
    return p


def test_a_drop_on_the_suspect_dead_letters_it_only_after_the_control_was_acknowledged() -> None:
    p = suspected()
    p.control_sent()
    p.control_acknowledged()
    assert p.link_lost((7, 1)) == Verdict("dead_letter", 7, losses=POISON_LOSSES + 1)
    assert p.suspect is None and not p.needs_control()


def test_without_an_acknowledged_control_a_drop_on_the_suspect_is_not_enough() -> None:
    p = suspected()  # no control sent (nothing acknowledged yet to re-send)
    v = p.link_lost((7, 1))
    assert v.decision == "counting" and p.suspect is None  # counting starts again, nothing set aside
    p = suspected()
    p.control_sent()
    p.control_refused()  # a failure code on the control: no evidence either way
    assert p.link_lost((7, 1)).decision == "counting"


def test_a_link_lost_on_the_control_clears_the_suspicion() -> None:
    p = suspected()
    p.control_sent()  # the control is in flight when the link drops: the broker is unwell
    assert p.link_lost(None) == Verdict("cleared", 7)
    assert p.suspect is None and p.probing  # the next link probes again, from zero
    assert [v.decision for v in lose_alone(p, 7, POISON_LOSSES - 1)] == ["counting"] * (POISON_LOSSES - 1)


def test_an_acknowledged_probe_ends_probing_and_the_suspicion() -> None:
    p = suspected()
    p.control_sent()
    p.control_acknowledged()
    p.acknowledged()  # the suspect went through after all
    assert not p.probing and p.suspect is None and p.window(10) == 10
    assert p.link_lost((7, 1)) == Verdict("none")


def test_another_head_restarts_the_count() -> None:
    p = PoisonDetector()
    p.link_lost((1, 1))
    lose_alone(p, 7, POISON_LOSSES - 1)
    assert p.link_lost((8, 1)) == Verdict("counting", 8, losses=1)


def test_a_batch_dropped_on_five_times_is_unbatched_not_suspected() -> None:
    p = PoisonDetector()
    p.link_lost((10, 50))
    verdicts = lose_alone(p, 10, POISON_LOSSES, count=50)
    assert verdicts[-1] == Verdict("unbatch", 10, until=59, losses=POISON_LOSSES)
    assert p.suspect is None


def test_what_a_puback_failure_means() -> None:
    assert refusal(PACKET_TOO_LARGE, 50) == "unbatch"  # re-sent event by event
    assert refusal(PACKET_TOO_LARGE, 1) == "dead_letter"  # one event too large: never accepted
    assert refusal(0x99, 1) == refusal(0x99, 20) == "dead_letter"  # payload format invalid
    for code in (0x80, 0x87, 0x97, 0x83):  # unspecified, not authorized, quota, implementation specific
        assert refusal(code, 1) == refusal(code, 9) == "retry"
