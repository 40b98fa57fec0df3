"""fGn / fBm / GP samplers of Marion et al.'s initialisations (SPEC §2.2, §2.6 item 1, §2.7 item 6).

Pure numpy: the same on every backend.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from depthlab.layers.fractional import (
    circulant_eigenvalues,
    fbm_path,
    fgn,
    fgn_autocovariance,
    gp_smooth,
)

N = 1000
PATHS = 20_000  # SPEC §2.7 item 6
LAGS = (0, 1, 2, 10, 100)
HURSTS = (0.05, 0.2, 0.5, 0.8, 0.97)


@functools.cache
def _sample_stats(hurst: float) -> tuple[np.ndarray, float]:
    """Autocovariances at LAGS (mean over paths and time, known zero mean) and Var(sum)/N^2H."""
    rng = np.random.default_rng(2022)
    products = np.zeros(len(LAGS))
    sums = []
    for _ in range(PATHS // 2000):
        x = fgn(N, hurst, size=2000, rng=rng)
        for i, lag in enumerate(LAGS):
            products[i] += np.einsum("ij,ij->", x[:, : N - lag], x[:, lag:]) / (N - lag)
        sums.append(x.sum(axis=1))
    total = np.concatenate(sums)
    return products / PATHS, float(np.mean(total**2)) / N ** (2 * hurst)


def test_autocovariance_formula_hand_values():
    assert fgn_autocovariance([0], 0.8)[0] == pytest.approx(1.0)
    # gamma_0.8(1) = (2^1.6 - 2) / 2 = 0.51571 (SPEC §2.6: "0.516")
    assert fgn_autocovariance([1], 0.8)[0] == pytest.approx((2**1.6 - 2) / 2, rel=1e-12)
    assert fgn_autocovariance([1], 0.8)[0] == pytest.approx(0.5157, abs=1e-4)
    np.testing.assert_allclose(fgn_autocovariance(np.arange(1, 50), 0.5), 0.0, atol=1e-15)
    assert fgn_autocovariance([-3], 0.3)[0] == fgn_autocovariance([3], 0.3)[0]


def test_circulant_eigenvalues_nonnegative_on_both_grids():
    """SPEC §2.6 item 1: positive for N=1000 on the Fig 7 and Fig 9 H grids."""
    grid = np.concatenate([np.linspace(0.05, 0.97, 51), np.linspace(0.1, 0.9, 10)])
    ratios = [circulant_eigenvalues(N, float(h)) for h in grid]
    assert min(r.min() / r.max() for r in ratios) > 0.0
    np.testing.assert_allclose(circulant_eigenvalues(N, 0.5), 1.0, atol=1e-12)


@pytest.mark.parametrize("hurst", HURSTS)
def test_fgn_autocovariance_and_variance_of_sum(hurst):
    """SPEC §2.7 item 6: 20,000 paths, N=1000, lags 0,1,2,10,100 within 0.02; Var(sum)/N^2H."""
    cov, var_ratio = _sample_stats(hurst)
    np.testing.assert_allclose(cov, fgn_autocovariance(LAGS, hurst), atol=0.02)
    assert abs(var_ratio - 1.0) < 0.05


def test_half_is_white_noise():
    cov, var_ratio = _sample_stats(0.5)
    np.testing.assert_allclose(cov[1:], 0.0, atol=0.02)
    assert cov[0] == pytest.approx(1.0, abs=0.02)
    assert var_ratio == pytest.approx(1.0, abs=0.05)  # Var(sum of N iid) = N = N^(2*0.5)


def test_fgn_shapes_and_seeding():
    assert fgn(7, 0.3, rng=0).shape == (7,)
    assert fgn(7, 0.3, size=3, rng=0).shape == (3, 7)  # odd: one imaginary path dropped
    np.testing.assert_array_equal(fgn(50, 0.7, size=4, rng=5), fgn(50, 0.7, size=4, rng=5))
    assert not np.array_equal(fgn(50, 0.7, size=2, rng=5), fgn(50, 0.7, size=2, rng=6))
    with pytest.raises(ValueError, match="hurst"):
        fgn(10, 1.0)


def test_real_and_imaginary_paths_are_independent():
    """Rows 2i and 2i+1 are the real and imaginary parts of one FFT: uncorrelated, any lag."""
    x = fgn(200, 0.9, size=20_000, rng=7)
    real, imag = x[0::2], x[1::2]
    for lag in (0, 1, 10):
        assert abs(np.mean(real[:, : 200 - lag] * imag[:, lag:])) < 0.03, lag
    assert np.mean(real * real) == pytest.approx(1.0, abs=0.03)


def test_fgn_cholesky_fallback_has_the_same_covariance():
    x = fgn(64, 0.9, size=20_000, rng=3, method="cholesky")
    emp = np.array([np.mean(x[:, : 64 - n] * x[:, n:]) for n in range(5)])
    np.testing.assert_allclose(emp, fgn_autocovariance(range(5), 0.9), atol=0.03)


def test_fbm_path_is_scaled_cumsum_from_zero():
    """Fig 6: n + 1 points from 0, path = cumsum(fGn) * n^(-H)."""
    path = fbm_path(1000, 0.8, rng=11)
    steps = fgn(1000, 0.8, rng=11)
    assert path.shape == (1001,) and path[0] == 0.0
    np.testing.assert_allclose(path[1:], np.cumsum(steps) * 1000**-0.8, rtol=1e-12)


def test_gp_smooth_rbf_covariance():
    """SPEC §2.2 smooth: GP values at t_m = m/L, covariance exp(-(t-s)^2 / (2 * 0.1^2))."""
    x = gp_smooth(100, size=20_000, rng=4)
    assert x.shape == (20_000, 100)
    for lag in (0, 5, 10, 20, 40):
        expected = np.exp(-((lag / 100) ** 2) / (2 * 0.1**2))
        emp = np.mean(x[:, : 100 - lag] * x[:, lag:])
        assert emp == pytest.approx(expected, abs=0.03), lag
    assert gp_smooth(1000, rng=1).shape == (1000,)  # L = 1000: singular Gram, no Cholesky
    np.testing.assert_array_equal(gp_smooth(30, size=2, rng=9), gp_smooth(30, size=2, rng=9))
