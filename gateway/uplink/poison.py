"""Messages the broker will never accept: refused with a code, or answered by dropping the link
(pure: no I/O, no clock).

``refusal(code, events)`` says what a PUBACK failure code means for the message: a batch too
large is re-sent event by event, a payload the broker can never take is dead-lettered, anything
else is retried (with backoff, from the lowest refused seq).

A message the broker never acknowledges but drops the connection for (no PUBACK at all) must not
block the queue forever; a broker that is itself unwell (a cluster node re-electing its stream
leaders drops every publisher for a while) must not make the gateway throw good events away.
``PoisonDetector`` tells the two apart. The connection loop (``gateway/uplink/link.py``) tells it
what happened and does what it says:

1. After a link loss the next connection *probes*: the oldest pending message alone in flight
   (``window(n)`` is 1), so the message the broker drops the link on is known exactly.
2. ``POISON_LOSSES`` losses in a row with the same message alone in flight: a batch is re-sent
   one event per message (``Verdict.unbatch_until``); a single event becomes the *suspect*.
3. With a suspect, the next connection first sends a *control* message (the last acknowledged
   event again: a duplicate the platform dedupes) and then the suspect alone.
4. Only when the broker acknowledged the control and then dropped the link on the suspect is the
   suspect dead-lettered (``Verdict.dead_letter``; kept in the outbox's dead-letter table, never
   deleted as sent). A link lost with the control in flight clears the suspicion: the broker is
   unwell, not the message. An acknowledged probe ends probing and the suspicion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Link losses in a row with the same message alone in flight before it is suspected.
POISON_LOSSES = 5
# PUBACK codes that mean "this payload will never be accepted": dead-letter instead of retrying.
DEAD_LETTER_CODES = frozenset({0x99})  # Payload format invalid
PACKET_TOO_LARGE = 0x95

Refusal = Literal["unbatch", "dead_letter", "retry"]


def refusal(code: int, events: int) -> Refusal:
    """What the broker answering a message of ``events`` events with failure ``code`` means."""
    if code == PACKET_TOO_LARGE and events > 1:
        return "unbatch"
    if code in DEAD_LETTER_CODES or code == PACKET_TOO_LARGE:
        return "dead_letter"
    return "retry"


Decision = Literal["none", "counting", "cleared", "unbatch", "suspect", "dead_letter"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a link loss means. ``seq``: the message concerned; ``until``: unbatch up to this seq."""

    decision: Decision
    seq: int | None = None
    until: int | None = None
    losses: int = 0


class PoisonDetector:
    def __init__(self, losses_to_suspect: int = POISON_LOSSES) -> None:
        self.losses_to_suspect = losses_to_suspect
        self.probing = False  # send the oldest pending message alone until it is acknowledged
        self.suspect: int | None = None
        # the control message on the current link: None not sent, False in flight, True acknowledged
        self.control: bool | None = None
        self._prev_head: tuple[int, int] | None = None
        self._same_head_losses = 0

    def window(self, normal: int) -> int:
        """Messages allowed in flight on this link."""
        return 1 if self.probing else normal

    def needs_control(self) -> bool:
        """Send the control message before anything else on this link."""
        return self.suspect is not None and self.probing

    def control_sent(self) -> None:
        self.control = False

    def control_acknowledged(self) -> None:
        self.control = True

    def control_refused(self) -> None:
        """The broker answered the control with a failure code: no evidence either way."""
        self.control = None

    def acknowledged(self) -> None:
        """A message got its PUBACK: a probe that goes through ends probing and the suspicion."""
        if self.probing:
            self.probing = False
            self.suspect = None

    def link_lost(self, head: tuple[int, int] | None) -> Verdict:
        """The link dropped. ``head``: (first seq, events) of the oldest message in flight, or None
        when nothing was (lost while idle, or before the first publish)."""
        control, self.control = self.control, None
        probing, self.probing = self.probing, head is not None or control is False
        if control is False:  # the broker dropped the link on the control message too
            suspect = self.suspect
            self._forget()
            return Verdict("cleared", suspect)
        if head is None or not probing:
            # lost with a full window (or nothing in flight): the culprit is not known yet; the
            # next link probes
            self._forget()
            return Verdict("none")
        seq, count = head
        if control and seq == self.suspect:
            self._forget()
            return Verdict("dead_letter", seq, losses=self.losses_to_suspect + 1)
        if head != self._prev_head:
            self._same_head_losses = 1
            self._prev_head = head
            self.suspect = None
            return Verdict("counting", seq, losses=1)
        self._same_head_losses += 1
        if self._same_head_losses < self.losses_to_suspect:
            return Verdict("counting", seq, losses=self._same_head_losses)
        self._forget()
        if count > 1:
            return Verdict("unbatch", seq, until=seq + count - 1, losses=self.losses_to_suspect)
        self.suspect = seq
        return Verdict("suspect", seq, losses=self.losses_to_suspect)

    def _forget(self) -> None:
        """Start counting losses on the same probe from zero."""
        self.suspect = None
        self._same_head_losses = 0
        self._prev_head = None
