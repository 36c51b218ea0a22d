"""Identity resolver: pseudonyms, linking, consent (customer refs), hashed opt-outs."""

from __future__ import annotations

import os

import pytest

from gateway.identity.pseudonyms import PseudonymKeyring
from gateway.identity.subjects import (
    ConsentRecord,
    IdentityResolver,
    app_link,
    irk_link,
    normalize_identifier,
)
from gateway.models import Observation

T = 1_767_261_600.0  # 2026-01-01 10:00Z
DAY = 86400.0
MAC = "5A:11:22:33:44:55"
IRK = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")


def resolver(key: bytes = b"k" * 32, **kw: object) -> IdentityResolver:
    return IdentityResolver(PseudonymKeyring(), optout_key=key, **kw)  # type: ignore[arg-type]


def obs(device: str, ts: float = T, link: str | None = None) -> Observation:
    return Observation(ts, "n11", device, -60.0, "ble", None, link)


def test_subject_replaces_raw_id_and_link_is_cleared() -> None:
    r = resolver()
    o = obs(MAC, link="wifi:group-7")
    out = r.resolve_batch([o], T)
    assert len(out) == 1
    assert out[0].device != MAC and MAC.lower() not in out[0].device.lower()
    assert len(out[0].device) == 24
    assert out[0].link is None
    assert (out[0].ts, out[0].sensor, out[0].rssi) == (o.ts, o.sensor, o.rssi)
    assert o.device == MAC and o.link == "wifi:group-7"  # input untouched
    assert r.subject_kind(out[0].device) == "pseudonym"


def test_linked_rotations_share_one_subject_unlinked_do_not() -> None:
    r = resolver()
    a, b = r.resolve_batch([obs("5A:00:00:00:00:01", link="irk:x"), obs("5A:00:00:00:00:02", link="irk:x")], T)
    assert a.device == b.device
    c, d = r.resolve_batch([obs("5A:00:00:00:00:01"), obs("5A:00:00:00:00:02")], T)
    assert c.device != d.device
    assert a.device != c.device


def test_case_and_separator_variants_of_a_mac_are_one_device() -> None:
    r = resolver()
    out = r.resolve_batch([obs("aa:bb:cc:dd:ee:ff"), obs("AA-BB-CC-DD-EE-FF"), obs("aabb.ccdd.eeff")], T)
    assert len({o.device for o in out}) == 1
    assert normalize_identifier(" AABBCCDDEEFF ") == "aa:bb:cc:dd:ee:ff"


def test_pseudonym_rotates_with_the_period_in_one_batch() -> None:
    r = resolver()
    kr_bounds = PseudonymKeyring().epoch_bounds(T)
    t_before, t_after = kr_bounds[2] - 1.0, kr_bounds[2] + 1.0
    out = r.resolve_batch([obs(MAC, T), obs(MAC, t_before), obs(MAC, t_after)], T)
    assert out[0].device == out[1].device != out[2].device


def test_optout_drops_from_next_observation_and_stores_no_raw_id() -> None:
    key = os.urandom(32)
    r = resolver(key)
    first = r.resolve_batch([obs(MAC)], T)[0].device
    res = r.add_optout("5a-11-22-33-44-55", T + 1)
    assert first in res.subjects  # the caller erases live state for it
    for d in res.digests:
        assert len(d) == 64
        assert MAC.replace(":", "").lower() not in d
    out = r.resolve_batch([obs(MAC, T + 2), obs("5A:00:00:00:00:09", T + 2)], T + 2)
    assert len(out) == 1 and out[0].device != first
    assert r.stats.dropped_optout == 1
    # persisted digests work after a restart (same key), and only with that key
    r2 = resolver(key)
    r2.add_optout_digests(res.digests)
    assert r2.resolve_batch([obs(MAC.lower(), T + 3)], T + 3) == []
    r3 = resolver(os.urandom(32))
    r3.add_optout_digests(res.digests)
    assert len(r3.resolve_batch([obs(MAC, T + 3)], T + 3)) == 1
    r2.remove_optout_digests(res.digests)
    assert len(r2.resolve_batch([obs(MAC, T + 4)], T + 4)) == 1


def test_optout_by_irk_drops_every_linked_address() -> None:
    r = resolver()
    link = irk_link(IRK)
    assert IRK.hex() not in link
    assert len(r.resolve_batch([obs("5A:00:00:00:00:01", link=link)], T)) == 1
    r.add_optout(IRK.hex().upper(), T)
    assert r.resolve_batch([obs("5A:00:00:00:00:02", link=link), obs("5A:00:00:00:00:03", link=link)], T) == []


def test_optout_by_an_address_drops_the_identity_it_was_seen_linked_to() -> None:
    """The status page's opt-out takes the MAC a technician reads off a phone; its next rotated
    address (same resolved IRK) must stay dropped too, also after a restart (the digest persists)."""
    key = os.urandom(32)
    r = resolver(key)
    link = irk_link(IRK)
    subject = r.resolve_batch([obs("5A:00:00:00:00:01", link=link)], T)[0].device
    res = r.add_optout("5a:00:00:00:00:01", T + 1)
    assert subject in res.subjects
    assert r.optout_digest(link) in res.digests
    assert r.resolve_batch([obs("5A:00:00:00:00:02", T + 2, link=link)], T + 2) == []
    assert len(r.resolve_batch([obs("5A:00:00:00:00:03", T + 2, link="irk:other")], T + 2)) == 1
    r2 = resolver(key)
    r2.add_optout_digests(res.digests)
    assert r2.resolve_batch([obs("5A:00:00:00:00:04", T + 3, link=link)], T + 3) == []


def test_consent_reports_customer_ref_across_days() -> None:
    r = resolver()
    r.put_consent(ConsentRecord("cust-42", frozenset({"presence", "offers"}), irk=IRK))
    link = irk_link(IRK)
    d1 = r.resolve_batch([obs("5A:00:00:00:00:01", T, link)], T)[0].device
    d2 = r.resolve_batch([obs("5A:00:00:00:00:99", T + 3 * DAY, link)], T + 3 * DAY)[0].device
    assert d1 == d2 == "cust-42"
    assert r.subject_kind("cust-42") == "customer"
    # an unconsented device the same day stays pseudonymous
    other = r.resolve_batch([obs("5A:00:00:00:00:01", T)], T)[0].device
    assert other != "cust-42" and r.subject_kind(other) == "pseudonym"
    assert r.revoke_consent("cust-42") == 1
    after = r.resolve_batch([obs("5A:00:00:00:00:01", T, link)], T)[0].device
    assert after != "cust-42" and r.subject_kind("cust-42") == "pseudonym"


def test_consent_without_the_presence_scope_is_not_used() -> None:
    r = resolver(consent_scope="presence")
    r.put_consent(ConsentRecord("cust-1", frozenset({"offers"}), app_token="tok-123"))
    d = r.resolve_batch([obs("5A:00:00:00:00:01", link=app_link("tok-123"))], T)[0].device
    assert d != "cust-1"


def test_app_token_consent_and_customer_optout() -> None:
    r = resolver()
    r.put_consent(ConsentRecord("cust-7", frozenset({"presence"}), app_token="tok-7"))
    o = obs("5A:00:00:00:00:01", link=app_link("tok-7"))
    assert r.resolve_batch([o], T)[0].device == "cust-7"
    res = r.add_optout("cust-7", T)
    assert "cust-7" in res.subjects
    assert r.resolve_batch([o], T) == []


def test_consent_record_validation() -> None:
    with pytest.raises(ValueError, match="irk or an app_token"):
        ConsentRecord("c", frozenset({"presence"}))
    with pytest.raises(ValueError, match="16 bytes"):
        ConsentRecord("c", frozenset({"presence"}), irk=b"short")
    with pytest.raises(ValueError, match="customer_ref"):
        ConsentRecord(" ", frozenset({"presence"}), app_token="t")
    with pytest.raises(ValueError, match="16 random bytes"):
        IdentityResolver(PseudonymKeyring(), optout_key=b"short")


def test_cache_makes_repeat_lookups_cheap() -> None:
    r = resolver()
    batch = [obs(f"5A:00:00:00:00:{i % 50:02x}", T + i * 0.01) for i in range(5000)]
    out = r.resolve_batch(batch, T + 50)
    assert len(out) == 5000
    assert r.stats.cache_misses == 50
    assert len({o.device for o in out}) == 50


def test_drop_in_resolve_for_pipeline() -> None:
    r = resolver()
    out = r.resolve([obs(MAC, T), obs(MAC, T + 1)])
    assert len(out) == 2 and out[0].device == out[1].device != MAC
    assert r.resolve([]) == []


def test_memos_stay_small_and_subjects_do_not_change() -> None:
    """A day's addresses pass through the memos (issue 22: 16,384 entries each held ~4 MB at 500
    devices): bounded, the older half goes when full; a device heard all along keeps its subject
    (recomputed once after an eviction)."""
    from gateway.identity import subjects
    from gateway.identity.pseudonyms import CACHE_MAX

    r = resolver()
    present = f"02:00:00:00:ff:{0:02x}"
    first = r.resolve_batch([obs(present)], T)[0].device
    for i in range(3 * subjects._CACHE_MAX):
        addr = f"02:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:01"
        batch = r.resolve_batch([obs(addr, T + i * 0.01), obs(present, T + i * 0.01)], T + i * 0.01)
        assert batch[1].device == first
    cache = r._caches[r._bounds[0]]
    assert len(cache) <= subjects._CACHE_MAX and (present, None) in cache
    assert len(r._keyring._cache) <= CACHE_MAX


def test_previous_periods_memo_goes_a_few_minutes_into_the_next() -> None:
    """The resolver's memo of a finished rotation period does not stay all night, and the keyring
    keeps no second copy of it (issue 22); what they map stays the same (they are memos)."""
    r = resolver()
    macs = [f"5A:00:00:00:{i // 256:02X}:{i % 256:02X}" for i in range(300)]
    rot = r._keyring.epoch_bounds(T)[2]  # the next rotation
    before = [o.device for o in r.resolve_batch([obs(m, rot - 10.0) for m in macs], rot - 10.0)]
    r.resolve_batch([obs(macs[0], rot + 1.0)], rot + 1.0)
    assert not r._keyring._cache  # the resolver's memo is the only one (the keyring's is not filled)
    late = r.resolve_batch([obs(m, rot - 5.0) for m in macs], rot + 2.0)  # late ones: same subjects
    assert [o.device for o in late] == before
    assert len(r._caches) == 2  # the previous period's memo still serves late observations
    r.resolve_batch([obs(macs[1], rot + 301.0)], rot + 301.0)
    assert len(r._caches) == 1 and len(r._caches[max(r._caches)]) == 2
    again = r.resolve_batch([obs(m, rot - 5.0) for m in macs], rot + 302.0)  # recomputed, equal
    assert [o.device for o in again] == before


def test_memo_starts_afresh_every_quarter_hour_with_the_same_subjects() -> None:
    """The memo holds the devices of the last minutes, not all night the evening's last addresses."""
    r = resolver()
    first = [o.device for o in r.resolve_batch([obs(f"5A:00:00:00:00:{i:02X}", T) for i in range(40)], T)]
    assert len(r._caches[max(r._caches)]) == 40
    r.resolve_batch([obs("5A:00:00:00:00:00", T + 600.0)], T + 600.0)
    assert len(r._caches[max(r._caches)]) == 40  # not yet
    r.resolve_batch([obs("5A:00:00:00:00:00", T + 901.0)], T + 901.0)
    assert len(r._caches[max(r._caches)]) == 1  # afresh: the one heard since
    again = r.resolve_batch([obs(f"5A:00:00:00:00:{i:02X}", T + 902.0) for i in range(40)], T + 902.0)
    assert [o.device for o in again] == first


def test_sensor_ids_come_out_as_one_shared_string_each() -> None:
    """A source makes a new string per message; what leaves the resolver shares one per sensor id, so
    the per-address and per-row state downstream holds no copy of its own (issue 22). Equal values,
    a bounded table: past the cap, ids pass through as they came."""
    from gateway.identity import subjects

    r = resolver()

    def fresh(name: str) -> str:
        return "".join(list(name))  # an equal string, not the same object

    batch = [Observation(T + i, fresh("n11"), MAC, -60.0) for i in range(3)]
    batch += [Observation(T + 3, fresh("n12"), MAC, -61.0)]
    assert len({id(o.sensor) for o in batch}) == 4
    out = r.resolve_batch(batch, T + 3)
    assert [o.sensor for o in out] == ["n11", "n11", "n11", "n12"]
    assert len({id(o.sensor) for o in out}) == 2
    later = r.resolve_batch([Observation(T + 4, fresh("n11"), MAC, -60.0)], T + 4)
    assert later[0].sensor is out[0].sensor
    n = subjects._SENSORS_MAX
    many = [Observation(T + 5, fresh(f"x{i}"), MAC, -60.0) for i in range(n + 10)]
    assert [o.sensor for o in r.resolve_batch(many, T + 5)] == [o.sensor for o in many]
    assert len(r._sensors) == n
