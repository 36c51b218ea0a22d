"""Content activation rules: pure, time as an argument, no I/O.

The platform pushes campaigns (via ``gateway/content/commands.py``); this module decides, for each presence
event, which campaign fires on which permitted actor, and builds the payload each actor may see.

* A campaign has a *trigger* (zone entered, dwell >= N s in a zone, visit started) and *conditions*
  (visit count >= N, consented customer with tags, time-of-day window, store ids), validity dates,
  quiet hours, frequency caps (per subject and per actor: at most ``count`` per ``window_s``) and a
  priority. For one event and one actor only the highest-priority matching campaign fires, so a
  screen never gets two contents for the same shopper moment.
* Dwell needs a timer: ``tick(now)`` fires "dwell >= N s" while a subject stays in a zone (each
  zone stay fires a campaign at most once).
* Actors declare allowed categories and data scopes; ``build_payload`` strips everything the actor
  (or the customer's consent scope) does not allow: a screen gets the content id, never a customer
  reference; a staff tablet gets a first name only if both its scopes and the consent allow it.
  Pseudonyms are never sent to actors (they are the platform's join key, not a display field).
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gateway.identity.subject_table import SubjectCounts
from gateway.models import EventBase, SubjectEvent, SubjectKind, VisitEnded, VisitStarted, ZoneEntered, ZoneLeft

Ident = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
# how long the visit counts of the previous pseudonym period are kept after a rotation: the events of
# visits still open at the rotation (backdated qualification, timeouts) arrive within minutes
PERIOD_GRACE_S = 3600.0
SWEEP_S = 60.0  # how often (event time) spent cap entries are swept

HHMM = Annotated[str, Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]

# Data an actor may receive beyond the content itself.
ActorScope = Literal["zone", "customer_ref", "first_name", "tags"]
# What a customer consented to: "presence" = be recognised across days (identity stage, see
# docs/privacy.md); the others = what in-store staff devices may receive.
ConsentScope = Literal["presence", "customer_ref", "first_name", "tags"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeWindow(Strict):
    """Local time-of-day window; ``start > end`` wraps midnight (e.g. 22:00-06:00)."""

    start: HHMM
    end: HHMM

    def contains(self, minute_of_day: int) -> bool:
        s, e = _minutes(self.start), _minutes(self.end)
        if s <= e:
            return s <= minute_of_day < e
        return minute_of_day >= s or minute_of_day < e


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


class CountWindow(Strict):
    count: int = Field(ge=1, le=100_000, description="At most this many activations...")
    window_s: float = Field(gt=0, le=366 * 86400, description="...per this many seconds")


class Caps(Strict):
    per_subject: CountWindow | None = Field(default=None, description="Per shopper (pseudonym or customer)")
    per_actor: CountWindow | None = Field(default=None, description="Per actor (e.g. a screen)")


class Segment(Strict):
    """Who and when. The trigger is the moment; every other set field is a condition (AND)."""

    trigger: Literal["zone.entered", "dwell", "visit.started"]
    zone: Ident | None = Field(default=None, description="Required for zone.entered and dwell")
    dwell_s: float | None = Field(default=None, gt=0, le=86400, description="Required for dwell")
    min_visit_count: int | None = Field(default=None, ge=1, description="Visits by this subject, incl. this one")
    customer_tags: list[Tag] | None = Field(
        default=None, description="Only consented customers having all these tags ([] = any consented customer)"
    )
    time_of_day: TimeWindow | None = Field(default=None, description="Local time window")
    store_ids: list[Ident] | None = Field(default=None, description="Only in these stores")

    @model_validator(mode="after")
    def _trigger_fields(self) -> Segment:
        if self.trigger in ("zone.entered", "dwell") and self.zone is None:
            raise ValueError(f"zone is required for trigger {self.trigger}")
        if self.trigger == "dwell" and self.dwell_s is None:
            raise ValueError("dwell_s is required for trigger dwell")
        if self.trigger != "dwell" and self.dwell_s is not None:
            raise ValueError("dwell_s is only valid with trigger dwell")
        return self


class Campaign(Strict):
    id: Ident
    name: str = Field(default="", max_length=200)
    category: Ident = Field(description="Actors must allow this category")
    content_id: Ident
    actors: list[Ident] = Field(min_length=1, max_length=100, description="Actor ids to trigger")
    priority: int = Field(default=0, ge=-1000, le=1000, description="Higher wins per actor and event")
    segment: Segment
    caps: Caps | None = Field(default=None, description="None: the gateway's default caps")
    quiet_hours: list[TimeWindow] = Field(default_factory=list, description="Local windows with no activation")
    valid_from: float | None = Field(default=None, description="Unix s")
    valid_to: float | None = Field(default=None, description="Unix s")
    timezone: str = Field(default="UTC", max_length=64, description="IANA zone for time windows")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
            raise ValueError(f"unknown time zone {v!r}") from e
        return v

    @model_validator(mode="after")
    def _dates(self) -> Campaign:
        if self.valid_from is not None and self.valid_to is not None and self.valid_to <= self.valid_from:
            raise ValueError("valid_to must be after valid_from")
        return self


class Actor(Strict):
    id: Ident
    kind: Literal["screen", "staff", "other"] = "screen"
    transport: Literal["mqtt", "webhook"] = "mqtt"
    url: str | None = Field(default=None, max_length=500, description="Webhook URL (transport webhook)")
    ack: bool = Field(default=False, description="MQTT: wait for an ack on <topic>/ack")
    categories: list[Ident] = Field(default_factory=list, description="Campaign categories it may show")
    scopes: list[ActorScope] = Field(default_factory=list, description="Data it may receive besides content")

    @model_validator(mode="after")
    def _url(self) -> Actor:
        if self.transport == "webhook":
            if self.url is None or not self.url.startswith(("http://", "https://")):
                raise ValueError("webhook actors need an http(s) url")
        elif self.url is not None:
            raise ValueError("url is only valid for webhook actors")
        return self


@dataclass(frozen=True, slots=True)
class ConsentInfo:
    """What rules and payloads may use about a consented customer (no IRK/token here)."""

    customer_ref: str
    scope: frozenset[str]
    tags: frozenset[str] = frozenset()
    first_name: str | None = None


@dataclass(slots=True)
class ContentContext:
    """State the rules read but do not own (from the command store)."""

    store_id: str
    actors: Mapping[str, Actor] = field(default_factory=dict)
    consents: Mapping[str, ConsentInfo] = field(default_factory=dict)  # by customer_ref
    optouts: frozenset[str] | set[str] = frozenset()  # subjects (pseudonyms or customer refs)


@dataclass(frozen=True, slots=True)
class Activation:
    activation_id: str
    ts: float
    campaign_id: str
    content_id: str
    category: str
    priority: int
    actor_id: str
    subject: str
    subject_kind: SubjectKind
    zone: str | None
    payload: dict[str, Any]


def build_payload(
    *,
    activation_id: str,
    ts: float,
    campaign: Campaign,
    actor: Actor,
    subject_kind: SubjectKind,
    subject: str,
    zone: str | None,
    consent: ConsentInfo | None,
) -> dict[str, Any]:
    """The message an actor receives: content always; personal data only where both the actor's
    scopes and (for customers) the consent scope allow it. Pseudonyms are never included."""
    out: dict[str, Any] = {
        "v": 1,
        "activation_id": activation_id,
        "ts": ts,
        "campaign_id": campaign.id,
        "content_id": campaign.content_id,
        "category": campaign.category,
    }
    scopes = set(actor.scopes)
    if "zone" in scopes and zone is not None:
        out["zone"] = zone
    if subject_kind == "customer" and consent is not None and consent.customer_ref == subject:
        allowed = scopes & set(consent.scope)
        if "customer_ref" in allowed:
            out["customer_ref"] = consent.customer_ref
        if "first_name" in allowed and consent.first_name:
            out["first_name"] = consent.first_name
        if "tags" in allowed and consent.tags:
            out["tags"] = sorted(consent.tags)
    return out


@dataclass
class _Stay:
    zone: str
    since: float
    kind: SubjectKind
    fired: set[str] = field(default_factory=set)  # dwell campaigns already fired for this stay


class RulesEngine:
    """Holds campaigns and the small per-subject state the rules need (zone stays, visit counts,
    cap windows). ``evaluate`` and ``tick`` take ``now`` explicitly; nothing reads the clock."""

    def __init__(
        self,
        campaigns: Iterable[Campaign] = (),
        *,
        default_caps: Caps | None = None,
        quiet_hours: Iterable[TimeWindow] = (),
        timezone: str = "UTC",
        max_subjects: int = 100_000,
        pseudonym_period: Callable[[float], tuple[float, float]] | None = None,
    ) -> None:
        self.default_caps = default_caps or Caps()
        self.quiet_hours = list(quiet_hours)
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.max_subjects = max_subjects
        self._campaigns: dict[str, Campaign] = {}
        self._stays: dict[str, _Stay] = {}
        # visit counts: pseudonymous subjects of this rotation period (and, for PERIOD_GRACE_S after
        # it began, of the one before: its visits may still be ending) / consented customers; the
        # period's ~26k pseudonyms (500 devices) with no Python object each, so that dropping them
        # at the rotation gives their memory back (issue 22)
        self._visits = SubjectCounts()
        self._visits_prev = SubjectCounts()
        self._cvisits: dict[str, int] = {}
        self._period = pseudonym_period
        self._period_end = -math.inf
        self._prev_until = -math.inf
        # per (campaign, subject): activation times within the cap window (a list: most hold one;
        # a deque is 760 bytes); entries whose times have all left the window are swept (_sweep)
        self._cap_subject: dict[tuple[str, str], list[float]] = {}
        self._next_sweep = -math.inf
        self._cap_actor: dict[tuple[str, str], list[float]] = {}
        self.fired = 0
        self.suppressed: dict[str, int] = {}
        self.set_campaigns(campaigns)

    # -- campaigns --------------------------------------------------------------------------

    def set_campaigns(self, campaigns: Iterable[Campaign]) -> None:
        self._campaigns = {c.id: c for c in campaigns}

    def put_campaign(self, c: Campaign) -> None:
        self._campaigns[c.id] = c

    def delete_campaign(self, campaign_id: str) -> None:
        self._campaigns.pop(campaign_id, None)

    @property
    def campaigns(self) -> dict[str, Campaign]:
        return dict(self._campaigns)

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self, event: EventBase, now: float, ctx: ContentContext) -> list[Activation]:
        """Activations triggered by one presence event (and updates of zone/visit state)."""
        if not isinstance(event, SubjectEvent):
            return []
        subj = event.subject
        trigger: str | None = None
        zone: str | None = None
        if event.ts >= self._period_end or event.ts >= self._prev_until:
            self._rotate(event.ts)
        if isinstance(event, VisitStarted):
            self._set_visits(subj, event.subject_kind, self.visit_count(subj) + 1)
            trigger = "visit.started"
        elif isinstance(event, ZoneEntered):
            self._stays[subj] = _Stay(event.zone, event.ts, event.subject_kind)
            trigger, zone = "zone.entered", event.zone
        elif isinstance(event, ZoneLeft):
            st = self._stays.get(subj)
            if st is not None and st.zone == event.zone:
                del self._stays[subj]
        elif isinstance(event, VisitEnded):
            self._stays.pop(subj, None)
            if event.visit_count is not None:
                self._set_visits(subj, event.subject_kind, max(self.visit_count(subj), event.visit_count))
        self._bound(now)
        if trigger is None:
            return []
        cands = [
            c
            for c in self._campaigns.values()
            if c.segment.trigger == trigger and (zone is None or c.segment.zone == zone)
        ]
        return self._fire(cands, subj, event.subject_kind, zone, now, ctx)

    def tick(self, now: float, ctx: ContentContext) -> list[Activation]:
        """Fire dwell campaigns whose threshold a current zone stay has reached."""
        dwell = [c for c in self._campaigns.values() if c.segment.trigger == "dwell"]
        if not dwell:
            return []
        out: list[Activation] = []
        for subj, st in list(self._stays.items()):
            due = [
                c
                for c in dwell
                if c.segment.zone == st.zone and c.id not in st.fired and now - st.since >= (c.segment.dwell_s or 0.0)
            ]
            if due:
                for c in due:
                    st.fired.add(c.id)
                out += self._fire(due, subj, st.kind, st.zone, now, ctx)
        return out

    def visit_count(self, subject: str) -> int:
        n = self._visits.get(subject)
        if n is None:
            n = self._cvisits.get(subject)
            if n is None:
                n = self._visits_prev.get(subject)
        return n or 0

    def _set_visits(self, subject: str, kind: SubjectKind, n: int) -> None:
        (self._cvisits if kind == "customer" else self._visits)[subject] = n

    def _rotate(self, ts: float) -> None:
        """A new pseudonym rotation period: this period's visit counts become the previous
        period's, kept PERIOD_GRACE_S for the events of visits still ending, then dropped. A
        pseudonym never comes back in a later period (keyed daily), so no rule's outcome changes:
        without it the counts of every subject of every day stayed until ``max_subjects`` (issue 22)."""
        if ts >= self._prev_until:
            self._visits_prev = SubjectCounts()
            self._prev_until = math.inf
        if self._period is None or ts < self._period_end:
            return
        start, end = self._period(ts)
        if self._period_end != -math.inf:  # not the first event seen
            if self._visits_prev:  # a period shorter than the grace: nothing of two periods ago is used
                self._visits_prev = SubjectCounts()
            self._visits_prev, self._visits = self._visits, SubjectCounts()
            self._prev_until = start + PERIOD_GRACE_S
        self._period_end = end

    # -- internals ---------------------------------------------------------------------------

    def _suppress(self, reason: str) -> None:
        self.suppressed[reason] = self.suppressed.get(reason, 0) + 1

    def _local_minute(self, now: float, tz: zoneinfo.ZoneInfo) -> int:
        t = dt.datetime.fromtimestamp(now, tz)
        return t.hour * 60 + t.minute

    def _matches(self, c: Campaign, subj: str, kind: SubjectKind, now: float, ctx: ContentContext) -> bool:
        seg = c.segment
        if c.valid_from is not None and now < c.valid_from:
            return False
        if c.valid_to is not None and now >= c.valid_to:
            return False
        if seg.store_ids is not None and ctx.store_id not in seg.store_ids:
            return False
        if seg.min_visit_count is not None and self.visit_count(subj) < seg.min_visit_count:
            return False
        if seg.customer_tags is not None:
            consent = ctx.consents.get(subj) if kind == "customer" else None
            if consent is None or not set(seg.customer_tags) <= consent.tags:
                return False
        tz = self.tz if c.timezone == "UTC" else zoneinfo.ZoneInfo(c.timezone)
        if seg.time_of_day is not None or c.quiet_hours:
            minute = self._local_minute(now, tz)
            if seg.time_of_day is not None and not seg.time_of_day.contains(minute):
                return False
            if any(q.contains(minute) for q in c.quiet_hours):
                self._suppress("quiet_hours")
                return False
        return True

    @staticmethod
    def _cap_ok(hist: list[float] | None, cap: CountWindow | None, now: float) -> bool:
        if cap is None or hist is None:
            return True
        k = 0
        while k < len(hist) and hist[k] <= now - cap.window_s:
            k += 1
        del hist[:k]
        return len(hist) < cap.count

    def _fire(
        self,
        cands: list[Campaign],
        subj: str,
        kind: SubjectKind,
        zone: str | None,
        now: float,
        ctx: ContentContext,
    ) -> list[Activation]:
        if not cands:
            return []
        if subj in ctx.optouts:
            self._suppress("optout")
            return []
        if self.quiet_hours:
            minute = self._local_minute(now, self.tz)
            if any(q.contains(minute) for q in self.quiet_hours):
                self._suppress("quiet_hours")
                return []
        matching = sorted(
            (c for c in cands if self._matches(c, subj, kind, now, ctx)), key=lambda c: (-c.priority, c.id)
        )
        out: list[Activation] = []
        taken: set[str] = set()  # actors already given a campaign for this moment
        consent = ctx.consents.get(subj) if kind == "customer" else None
        for c in matching:
            caps = c.caps or self.default_caps
            skey = (c.id, subj)
            if not self._cap_ok(self._cap_subject.get(skey), caps.per_subject, now):
                self._suppress("cap_subject")
                continue
            fired_any = False
            for actor_id in c.actors:
                actor = ctx.actors.get(actor_id)
                if actor is None:
                    self._suppress("unknown_actor")
                    continue
                if c.category not in actor.categories:
                    self._suppress("category_not_allowed")
                    continue
                if actor_id in taken:
                    self._suppress("lower_priority")
                    continue
                akey = (c.id, actor_id)
                if not self._cap_ok(self._cap_actor.get(akey), caps.per_actor, now):
                    self._suppress("cap_actor")
                    continue
                aid = uuid.uuid4().hex
                payload = build_payload(
                    activation_id=aid,
                    ts=now,
                    campaign=c,
                    actor=actor,
                    subject_kind=kind,
                    subject=subj,
                    zone=zone,
                    consent=consent,
                )
                out.append(
                    Activation(
                        aid, now, c.id, c.content_id, c.category, c.priority, actor_id, subj, kind, zone, payload
                    )
                )
                taken.add(actor_id)
                if caps.per_actor is not None:
                    self._cap_actor.setdefault(akey, []).append(now)
                fired_any = True
            if fired_any and caps.per_subject is not None:
                self._cap_subject.setdefault(skey, []).append(now)
        self.fired += len(out)
        return out

    def _sweep(self, now: float) -> None:
        """Drop per-subject cap entries whose activations have all left their cap window: such an
        entry allows what no entry allows (``_cap_ok``). Once per SWEEP_S of event time."""
        self._next_sweep = now + SWEEP_S
        for key, hist in list(self._cap_subject.items()):
            c = self._campaigns.get(key[0])
            caps = (c.caps if c is not None else None) or self.default_caps
            window = caps.per_subject.window_s if caps.per_subject is not None else 0.0
            if not hist or hist[-1] <= now - window:
                del self._cap_subject[key]

    def _bound(self, now: float) -> None:
        """Keep per-subject state bounded (pseudonyms rotate daily; visits may never end cleanly)."""
        if now >= self._next_sweep:
            self._sweep(now)
        while len(self._visits) > self.max_subjects:
            self._visits.pop_oldest()
        for d in (self._cvisits, self._stays):
            while len(d) > self.max_subjects:
                d.pop(next(iter(d)))
        if len(self._cap_subject) > self.max_subjects:
            for k in list(self._cap_subject)[: len(self._cap_subject) - self.max_subjects]:
                del self._cap_subject[k]
