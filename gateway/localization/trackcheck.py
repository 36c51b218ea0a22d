"""The track check's transmit-offset prior: what the tracker already knows about a walking phone.

The track check (:meth:`MlLocalizer._check_batch`) fits the last few seconds of a device's adverts on
their own and restarts the track when that fit lies far away and explains the data clearly better. With
the population prior on the transmit offset (N(0, ``tx_spread_db``²)) a few seconds of a moving phone
leave position and offset free to trade along a ridge - a spot near a wall with a weak offset explains
the data about as well as the right spot with the right offset - so the check's fit wanders off the
walker, and its verdict on the track is noise. After a few seconds of tracking the offset is known to a
fraction of a dB (the tracker carries it over the whole track; it changes only as the carrier turns),
so for a device the tracker calls walking the check fits position with the tracker's offset, give or
take ``sd_db`` (docs/localization.md §9.8). Standing devices keep the population prior: their check
guards the standing window, whose fix estimates the offset from a minute of data itself.
"""

from __future__ import annotations

import numpy as np

from gateway.localization.tracker import ImmTracker


def check_tx_prior(
    tracker: ImmTracker, slots: np.ndarray, p_walk: float, sd_db: float, mean: np.ndarray, prec: np.ndarray
) -> None:
    """For the devices in ``slots`` whose P(walking) exceeds ``p_walk``, set the offset entries of the
    prior ``mean`` ``(k, 3)`` / precision ``(k, 3, 3)`` (in place) to the tracker's mixture mean of the
    offset and 1 / (its mixture variance + ``sd_db``²)."""
    mu = tracker.mu[slots]
    w = mu[:, 1] > p_walk
    if not w.any():
        return
    rows = slots[w]
    d = tracker.x[rows, :, 4]
    m = np.einsum("nj,nj->n", mu[w], d)
    var = np.einsum("nj,nj->n", mu[w], tracker.P[rows, :, 4, 4] + (d - m[:, None]) ** 2)
    mean[w, 2] = m
    prec[w, 2, 2] = 1.0 / (var + sd_db**2)
