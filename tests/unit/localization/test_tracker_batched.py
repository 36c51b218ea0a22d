"""The tracker's closed-form 3 x 3 algebra equals the LAPACK / einsum forms it replaced (issue 22).

``ImmTracker`` inverts two stacks of 3 x 3 matrices per device and model each tick; it does so with
the adjugate in closed form (``_inv3``) and batched matmuls instead of ``np.linalg.inv`` +
``slogdet`` and 3-operand einsums. These tests run the previous formulas (kept here as the
reference) beside the tracker on seeded inputs: the same states, covariances and model weights up
to float rounding.
"""

from __future__ import annotations

import copy

import numpy as np

from gateway.localization.tracker import THETA, ImmTracker, TrackerParams, _inv3


def _spd(rng: np.random.Generator, n: int, scale: np.ndarray) -> np.ndarray:
    a = rng.normal(size=(n, 3, 3)) * scale[None, :, None]
    return np.asarray(a @ a.swapaxes(1, 2) + np.diag(scale**2) * 0.05)


def test_inv3_equals_lapack_inverse_and_log_determinant() -> None:
    rng = np.random.default_rng(11)
    # covariances of (x m, y m, tx offset dB) and precisions, from tight to loose, correlated
    for scale in (np.array([0.05, 0.05, 0.5]), np.array([1.0, 1.0, 4.0]), np.array([30.0, 20.0, 10.0])):
        a = _spd(rng, 500, scale).reshape(250, 2, 3, 3)
        for m in (a, np.linalg.inv(a)):
            inv, logdet = _inv3(m)
            ref = np.linalg.inv(m)
            assert np.allclose(inv, ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
            assert np.array_equal(inv, inv.swapaxes(-1, -2))  # exactly symmetric
            assert np.allclose(logdet, np.linalg.slogdet(m)[1], rtol=0, atol=1e-9)


def _old_predict_prior(tr: ImmTracker) -> tuple[np.ndarray, np.ndarray]:
    """The combined theta prior ``predict`` returns, as computed before (einsum + np.linalg.inv)."""
    xp, Pp, c = tr._xp, tr._Pp, tr._c
    th = xp[:, :, THETA]
    m = np.einsum("nj,njk->nk", c, th)
    d = th - m[:, None, :]
    cov = np.einsum("nj,njkl->nkl", c, Pp[:, :, THETA][:, :, :, THETA]) + np.einsum("nj,njk,njl->nkl", c, d, d)
    return m, np.linalg.inv(cov)


def _old_update(tr: ImmTracker, slots: np.ndarray, t: np.ndarray, h_lik: np.ndarray, b_lik: np.ndarray) -> None:
    """``ImmTracker.update`` as it was (np.linalg.inv / slogdet, einsums)."""
    xp, Pp, c = tr._xp, tr._Pp, tr._c
    S = Pp[:, :, THETA][:, :, :, THETA]
    m = xp[:, :, THETA]
    lam = np.linalg.inv(S)
    eta = np.einsum("njkl,njl->njk", lam, m) + b_lik[:, None, :]
    lam_post = lam + h_lik[:, None, :, :]
    S_post = np.linalg.inv(lam_post)
    S_post = 0.5 * (S_post + S_post.swapaxes(-1, -2))
    m_post = np.einsum("njkl,njl->njk", S_post, eta)
    _, logdet_s = np.linalg.slogdet(S)
    _, logdet_lp = np.linalg.slogdet(lam_post)
    ll = (
        -0.5 * np.einsum("njk,njk->nj", m, np.einsum("njkl,njl->njk", lam, m))
        + 0.5 * np.einsum("njk,njk->nj", eta, m_post)
        - 0.5 * logdet_s
        - 0.5 * logdet_lp
    )
    K = np.einsum("njkl,njlm->njkm", Pp[:, :, :, THETA], lam)
    x = xp + np.einsum("njkl,njl->njk", K, m_post - m)
    P = Pp - K @ (S - S_post) @ K.swapaxes(-1, -2)
    P = 0.5 * (P + P.swapaxes(-1, -2))
    xmin, xmax, ymin, ymax = tr.params.bounds
    np.clip(x[:, :, 0], xmin, xmax, out=x[:, :, 0])
    np.clip(x[:, :, 1], ymin, ymax, out=x[:, :, 1])
    ll = ll - ll.max(axis=1, keepdims=True)
    w = c * np.exp(np.maximum(ll, -50.0))
    mu = np.clip(w / w.sum(axis=1, keepdims=True), 1e-4, 1.0)
    mu /= mu.sum(axis=1, keepdims=True)
    tr.x[slots], tr.P[slots], tr.mu[slots], tr.t[slots] = x, P, mu, t


def _old_estimate(tr: ImmTracker, slots: np.ndarray, at: float) -> tuple[np.ndarray, np.ndarray]:
    mu, x, P = tr.mu[slots], tr.x[slots], tr.P[slots]
    dt = np.maximum(at - tr.t[slots], 0.0)
    f, q = tr._models(dt)
    x = np.einsum("njkl,njl->njk", f, x)
    P = f @ P @ f.swapaxes(-1, -2) + q
    P = 0.5 * (P + P.swapaxes(-1, -2))
    m = np.einsum("nj,njk->nk", mu, x)
    d = x - m[:, None, :]
    return m, np.einsum("nj,njkl->nkl", mu, P) + np.einsum("nj,njk,njl->nkl", mu, d, d)


def test_tracker_ticks_equal_the_previous_formulas() -> None:
    """Thirty ticks of predict -> update -> estimate over 200 devices, walkers and standers, each
    step also done the old way from the same state: equal up to float rounding throughout."""
    rng = np.random.default_rng(5)
    n = 200
    tr = ImmTracker(TrackerParams(), capacity=256)
    slots = np.sort(rng.choice(256, n, replace=False))
    theta = np.c_[rng.uniform(0, 30, n), rng.uniform(0, 20, n), rng.normal(0, 3, n)]
    tr.init(slots, 100.0, theta, _spd(rng, n, np.array([1.0, 1.0, 3.0])))
    truth = theta[:, :2].copy()
    vel = rng.normal(0, 0.8, (n, 2)) * (rng.uniform(size=n) < 0.5)[:, None]
    for k in range(30):
        t = 100.0 + k + 1 + rng.uniform(-0.3, 0.3, n)
        truth += vel
        m, lam = tr.predict(slots, t)
        m_ref, lam_ref = _old_predict_prior(tr)
        assert np.allclose(m, m_ref, rtol=1e-12, atol=1e-12)
        assert np.allclose(lam, lam_ref, rtol=1e-9, atol=1e-9)
        # a linearised likelihood around a noisy measurement of the truth
        h = _spd(rng, n, np.array([1.5, 1.5, 0.4]))
        z = np.c_[truth + rng.normal(0, 1.0, (n, 2)), theta[:, 2] + rng.normal(0, 1.0, n)]
        b = np.einsum("nij,nj->ni", h, z)
        ref = copy.deepcopy(tr)
        tr.update(slots, t, h, b)
        _old_update(ref, slots, t, h, b)
        assert np.allclose(tr.x, ref.x, rtol=1e-9, atol=1e-9)
        assert np.allclose(tr.P, ref.P, rtol=1e-9, atol=1e-9)
        assert np.allclose(tr.mu, ref.mu, rtol=1e-9, atol=1e-12)
        at = 100.0 + k + 1.5
        state, cov, p_walk = tr.estimate(slots, at=at)
        s_ref, c_ref = _old_estimate(tr, slots, at)
        assert np.allclose(state, s_ref, rtol=1e-12, atol=1e-12)
        assert np.allclose(cov, c_ref, rtol=1e-9, atol=1e-12)
        assert np.array_equal(p_walk, tr.mu[slots, 1])
    # the run did exercise both models (not a test that cannot fail on a degenerate input)
    mu = tr.mu[slots, 1]
    assert mu.min() < 0.2 and mu.max() > 0.8
