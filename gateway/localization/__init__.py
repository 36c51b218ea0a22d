"""Position estimation from RSSI at several sensors (pure numpy cores)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from gateway.config import LocalizationSettings
from gateway.layout import Layout
from gateway.models import Fix, Observation


class Localizer(Protocol):
    """Causal localizer: observations in, fixes out; time is the argument, never read inside."""

    def add(self, observations: Sequence[Observation]) -> None:
        """Add observations (``device`` is already a pseudonymous subject id)."""
        ...

    def fixes(self, now: float) -> list[Fix]:
        """Fixes at ``now`` for devices heard since the previous call (uses only ts <= now)."""
        ...

    def fixes_chunks(self, now: float, chunk: int = 0) -> Iterator[list[Fix]]:
        """:meth:`fixes` in parts of at most ``chunk`` devices (0: one part), each yielded as soon as
        it is computed; consumed to the end it is the same tick as :meth:`fixes`."""
        ...

    def set_sensor_active(self, sensor_id: str, active: bool) -> None:
        """A silent sensor (node down) is not expected to hear anything until re-activated."""
        ...

    def forget(self, device: str) -> None: ...


def make_localizer(layout: Layout, settings: LocalizationSettings) -> Localizer:
    """The configured localizer: the ML + IMM tracker by default, the centroid first cut as fallback."""
    if settings.estimator == "centroid":
        from gateway.localization.centroid import CentroidLocalizer

        return CentroidLocalizer(layout, settings)
    from gateway.localization.localizer import MlLocalizer

    return MlLocalizer(layout, settings)
