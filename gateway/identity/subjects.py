"""Identity resolution: raw identifier (+ linking hint) -> the *subject* everything downstream sees.

This is the privacy boundary of the pipeline. Observations come in with ``device`` holding what the
radio heard (a MAC, a beacon id) and ``link`` holding what a parser could link it to (an IRK
identity from RPA resolution, a Wi-Fi fingerprint group, an app token). They go out with
``device`` replaced by a subject id and ``link`` cleared, or not at all:

1. **Opt-out** (checked first): the normalised device id, the link and, for consented devices, the
   customer reference are HMAC-ed with a per-box opt-out key and looked up in the opt-out digest set.
   A hit drops the observation - nothing about it reaches localization, presence or storage. The
   opt-out list itself holds only digests, never a raw MAC/IRK/token.
2. **Consent**: if the link (or device id) belongs to a consent record whose scope contains the
   configured consent scope, the subject is the platform's ``customer_ref`` (stable across days).
3. Otherwise the subject is the keyed daily **pseudonym** of ``link or device`` (see
   ``pseudonyms.py``), so linked address rotations share one pseudonym within a rotation period.

Pure: time is an argument, no I/O; persistence of opt-out digests is the caller's job
(``gateway/presence/store.py``). Resolutions are cached per rotation period so the steady-state
cost is one dict lookup per observation.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.identity.pseudonyms import PseudonymKeyring, evict_older_half
from gateway.models import Observation, SubjectKind, app_link, irk_link

__all__ = ["ConsentRecord", "IdentityResolver", "OptOutResult", "app_link", "irk_link", "normalize_identifier"]

_MAC_SEP_RE = re.compile(r"^[0-9a-f]{2}([:\-]?)(?:[0-9a-f]{2}\1){4}[0-9a-f]{2}$")
_MAC_DOT_RE = re.compile(r"^[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4}$")
_HEX32_RE = re.compile(r"^[0-9a-f]{32}$")
# (device, link) -> subject per period: a few times the addresses heard in a few minutes; when full
# the older half goes (dict order = insertion order; a device still heard is back at its next
# advert, one HMAC). 16,384 held
# ~4 MB at 500 devices (a day's addresses, tens of thousands, pass through it; issue 22: RSS)
_CACHE_MAX = 4096
# the previous rotation period's memo is kept this long into a new one (late observations), then
# dropped: full of the day's last 4,096 addresses it otherwise stayed all night (issue 22)
_PREV_CACHE_S = 300.0
# and the current period's memo is started afresh this often (event time), so that it holds the
# devices of the last minutes, not the evening's last 4,096 addresses all night (a few thousand
# misses, one HMAC each, every quarter of an hour)
_MEMO_S = 900.0
# sensor ids shared downstream: a source makes a new string per message (JSON, pickled frames), and
# the observations queued downstream, the localizer's rows and the tracks keep them for minutes -
# one object per sensor instead of one per message (issue 22: RSS). Capped: unknown ids
# past it pass through as they came.
_SENSORS_MAX = 1024


_DROPPED = ""  # cache value for an opted-out (device, link)


def normalize_identifier(text: str) -> str:
    """Canonical form used for hashing and matching: trimmed, lower case; MACs as ``aa:bb:..``."""
    t = text.strip().lower()
    if _MAC_SEP_RE.match(t) or _MAC_DOT_RE.match(t):
        h = re.sub(r"[^0-9a-f]", "", t)
        return ":".join(h[i : i + 2] for i in range(0, 12, 2))
    return t


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """A platform consent: this IRK / app token is customer ``customer_ref`` for these scopes."""

    customer_ref: str
    scope: frozenset[str]
    irk: bytes | None = None
    app_token: str | None = None

    def __post_init__(self) -> None:
        if not self.customer_ref.strip():
            raise ValueError("consent without customer_ref")
        if self.irk is None and self.app_token is None:
            raise ValueError("consent needs an irk or an app_token")
        if self.irk is not None and len(self.irk) != 16:
            raise ValueError(f"consent irk must be 16 bytes, got {len(self.irk)}")

    def links(self) -> list[str]:
        out = []
        if self.irk is not None:
            out.append(irk_link(self.irk))
        if self.app_token is not None:
            out.append(app_link(self.app_token))
        return out


@dataclass(frozen=True, slots=True)
class OptOutResult:
    """What ``add_optout`` did: digests to persist, and live subjects the caller must forget."""

    digests: tuple[str, ...]
    subjects: frozenset[str]


@dataclass(slots=True)
class ResolverStats:
    resolved: int = 0
    dropped_optout: int = 0
    cache_misses: int = 0


class IdentityResolver:
    """Raw identifier -> subject (pseudonym or consented customer ref), or None when opted out."""

    def __init__(
        self,
        keyring: PseudonymKeyring,
        *,
        optout_key: bytes,
        consent_scope: str = "presence",
        optout_digests: Iterable[str] = (),
    ) -> None:
        if len(optout_key) < 16:
            raise ValueError("optout_key must be at least 16 random bytes")
        self._keyring = keyring
        self._optout_key = optout_key
        self._scope = consent_scope
        self._optouts: set[str] = set(optout_digests)
        self._consent_by_link: dict[str, ConsentRecord] = {}
        self._customers: dict[str, int] = {}  # customer_ref -> number of links
        # per rotation period: (device, link) -> subject ('' = dropped)
        self._caches: dict[int, dict[tuple[str, str | None], str]] = {}
        self._bounds: tuple[int, float, float] = (0, 0.0, -1.0)
        self._prev_cache_until = math.inf  # when the previous period's memo goes (_PREV_CACHE_S)
        self._memo_until = -math.inf  # when the current period's memo starts afresh (_MEMO_S)
        self._sensors: dict[str, str] = {}  # one shared string per sensor id (_SENSORS_MAX)
        self.stats = ResolverStats()

    # -- hashing -------------------------------------------------------------------------------

    def optout_digest(self, identifier: str) -> str:
        """Keyed digest of one identifier form (already normalised or a ``irk:``/``app:`` link)."""
        return hmac.new(self._optout_key, identifier.encode("utf-8"), hashlib.sha256).hexdigest()

    def _forms(self, identifier: str) -> set[str]:
        """Every form under which ``identifier`` can show up in an observation."""
        n = normalize_identifier(identifier)
        forms = {n}
        if _HEX32_RE.match(n):  # looks like an IRK
            forms.add(irk_link(bytes.fromhex(n)))
        if not n.startswith(("irk:", "app:")):
            forms.add(app_link(identifier))
        return forms

    # -- opt-out -------------------------------------------------------------------------------

    def add_optout(self, identifier: str, now: float) -> OptOutResult:
        """Opt a device/person out. Takes effect from the next observation resolved.

        ``identifier`` is a MAC, an IRK (32 hex digits), an app token or a customer reference. The
        raw value is used here and then dropped: only its keyed digests are kept (and returned for
        persistence). An address seen linked to an identity (a resolved IRK, a Wi-Fi group, an app
        token) opts that identity out too, so the device's next rotated address is dropped as well.
        ``subjects`` lists the subject ids it currently maps to, so the caller can erase live
        presence state and stored history for them.
        """
        forms = self._forms(identifier)
        linked: set[str] = set()
        subjects: set[str] = set()
        for cache in self._caches.values():
            for (dev, link), subj in cache.items():
                if subj and (link in forms or normalize_identifier(dev) in forms):
                    subjects.add(subj)
                    if link is not None:
                        linked.add(link)
        digests = tuple(sorted({self.optout_digest(f) for f in forms | linked}))
        for f in forms:
            c = self._consent_by_link.get(f)
            if c is not None:
                subjects.add(c.customer_ref)
            if f in self._customers:
                subjects.add(f)
            subjects.add(self._keyring.pseudonym(f, now))
        self._optouts.update(digests)
        self._caches.clear()
        return OptOutResult(digests, frozenset(subjects))

    def set_optout_key(self, key: bytes) -> None:
        """Switch to the persistent per-box key (at start-up). Digests made with another key are
        meaningless, so the digest set is emptied: load the stored digests afterwards."""
        if len(key) < 16:
            raise ValueError("optout_key must be at least 16 random bytes")
        self._optout_key = key
        self._optouts.clear()
        self._caches.clear()

    def add_optout_digests(self, digests: Iterable[str]) -> None:
        """Load persisted digests (at start-up)."""
        self._optouts.update(digests)
        self._caches.clear()

    def remove_optout_digests(self, digests: Iterable[str]) -> None:
        self._optouts.difference_update(digests)
        self._caches.clear()

    @property
    def optout_count(self) -> int:
        return len(self._optouts)

    # -- consent -------------------------------------------------------------------------------

    def put_consent(self, record: ConsentRecord) -> None:
        for link in record.links():
            old = self._consent_by_link.get(link)
            if old is not None:
                self._drop_customer(old.customer_ref)
            self._consent_by_link[link] = record
            self._customers[record.customer_ref] = self._customers.get(record.customer_ref, 0) + 1
        self._caches.clear()

    def revoke_consent(self, customer_ref: str) -> int:
        """Forget every consent of ``customer_ref``; its devices fall back to daily pseudonyms."""
        gone = [k for k, c in self._consent_by_link.items() if c.customer_ref == customer_ref]
        for k in gone:
            del self._consent_by_link[k]
        self._customers.pop(customer_ref, None)
        self._caches.clear()
        return len(gone)

    def _drop_customer(self, ref: str) -> None:
        n = self._customers.get(ref, 0) - 1
        if n <= 0:
            self._customers.pop(ref, None)
        else:
            self._customers[ref] = n

    def subject_kind(self, subject: str) -> SubjectKind:
        return "customer" if subject in self._customers else "pseudonym"

    # -- resolution ----------------------------------------------------------------------------

    def _miss(self, device: str, link: str | None, ts: float) -> str:
        self.stats.cache_misses += 1
        ndev = normalize_identifier(device)
        opt = self._optouts
        if opt and (self.optout_digest(ndev) in opt or (link is not None and self.optout_digest(link) in opt)):
            return _DROPPED
        consent = None
        if link is not None:
            consent = self._consent_by_link.get(link)
        if consent is None:
            consent = self._consent_by_link.get(ndev)
        if consent is not None and self._scope in consent.scope:
            if opt and self.optout_digest(normalize_identifier(consent.customer_ref)) in opt:
                return _DROPPED
            return consent.customer_ref
        # the memo is ours (``_caches``): the keyring's would hold the same subjects a second time
        return self._keyring.pseudonym(link if link is not None else ndev, ts, memo=False)

    def subject_for(self, device: str, link: str | None, ts: float) -> str | None:
        """Subject for one (device, link) heard at ``ts``; None when opted out."""
        e, lo, hi = self._bounds
        if not lo <= ts < hi:
            e, lo, hi = self._bounds = self._keyring.epoch_bounds(ts)
        cache = self._caches.setdefault(e, {})
        key = (device, link)
        subj = cache.get(key)
        if subj is None:
            if len(cache) >= _CACHE_MAX:
                evict_older_half(cache)
            subj = cache[key] = self._miss(device, link, ts)
        return subj or None

    def resolve_batch(self, observations: Sequence[Observation], now: float) -> list[Observation]:
        """Replace raw ids by subjects; drop opted-out observations; clear ``link``.

        Input observations are not modified. ``now`` bounds the caches: rotation periods that
        ended before ``now``'s previous one are forgotten.
        """
        out: list[Observation] = []
        if not observations:
            return out
        e, lo, hi = self._bounds
        if not lo <= now < hi:
            e, lo, hi = self._bounds = self._keyring.epoch_bounds(now)
            for old in [k for k in self._caches if k < e - 1]:
                del self._caches[old]
            self._prev_cache_until = lo + _PREV_CACHE_S
        if now >= self._prev_cache_until:  # a memo: dropping it only costs a lookup again
            self._prev_cache_until = math.inf
            for old in [k for k in self._caches if k < e]:
                del self._caches[old]
        if now >= self._memo_until:
            if self._memo_until != -math.inf:
                self._caches.pop(e, None)
            self._memo_until = now + _MEMO_S
        cache = self._caches.setdefault(e, {})
        sensors = self._sensors
        append = out.append
        dropped = 0
        for o in observations:
            ts = o.ts
            if lo <= ts < hi:
                key = (o.device, o.link)
                subj = cache.get(key)
                if subj is None:
                    if len(cache) >= _CACHE_MAX:
                        evict_older_half(cache)
                    subj = cache[key] = self._miss(o.device, o.link, ts)
            else:  # late/early observation from another rotation period: slow path
                s2 = self.subject_for(o.device, o.link, ts)
                self._bounds = (e, lo, hi)
                subj = s2 or _DROPPED
            if not subj:
                dropped += 1
                continue
            sensor = sensors.get(o.sensor)
            if sensor is None:
                sensor = o.sensor
                if len(sensors) < _SENSORS_MAX:
                    sensors[sensor] = sensor
            append(Observation(ts, sensor, subj, o.rssi, o.radio, o.rssi_at_1m, None, o.adv, o.presence))
        self.stats.resolved += len(out)
        self.stats.dropped_optout += dropped
        return out

    def resolve(self, batch: Sequence[Observation]) -> list[Observation]:
        """Drop-in for the pipeline's first-cut ``IdentityStage.resolve`` (time from the batch)."""
        if not batch:
            return []
        return self.resolve_batch(batch, max(o.ts for o in batch))
