"""Samplers for the weight initialisations of Marion et al. (SPEC §2.2, §2.6 item 1), numpy.

- :func:`fgn`: exact fractional Gaussian noise by Davies-Harte circulant embedding (the
  official ``utils.generate_fbm`` is wrong for H > 1/2, SPEC §2.6 item 1), Cholesky fallback;
- :func:`fbm_path`: a fractional Brownian motion path on [0, 1] (Fig 6);
- :func:`gp_smooth`: Gaussian-process values with an RBF kernel (the dev branch's ``smooth``).

All in float64; no Keras, so the same seed gives the same weights on every backend.
"""

from __future__ import annotations

import functools

import numpy as np

EIGEN_TOL = 1e-10  # relative: eigenvalues above -EIGEN_TOL * max are rounding, clipped to 0


def fgn_autocovariance(lags, hurst: float) -> np.ndarray:
    """gamma_H(n) = (|n+1|^{2H} - 2|n|^{2H} + |n-1|^{2H}) / 2, unit variance (SPEC §2.2)."""
    n = np.abs(np.asarray(lags, dtype=np.float64))
    two_h = 2.0 * hurst
    return 0.5 * (np.abs(n + 1) ** two_h - 2 * n**two_h + np.abs(n - 1) ** two_h)


def _check(n: int, hurst: float) -> None:
    if int(n) < 1:
        raise ValueError(f"n must be a positive integer. Received: n={n}")
    if not 0.0 < hurst < 1.0:
        raise ValueError(f"hurst must lie in (0, 1). Received: hurst={hurst}")


@functools.lru_cache(maxsize=32)
def circulant_eigenvalues(n: int, hurst: float) -> np.ndarray:
    """Eigenvalues of the 2n circulant with first row [g_0..g_n, g_{n-1}..g_1] (SPEC §2.6)."""
    gamma = fgn_autocovariance(np.arange(n + 1), hurst)
    row = np.concatenate([gamma, gamma[-2:0:-1]])
    lam = np.fft.fft(row).real
    lam.flags.writeable = False  # cached: shared by every caller
    return lam


def fgn(
    n: int,
    hurst: float,
    size: int | None = None,
    rng: np.random.Generator | int | None = None,
    method: str = "auto",
) -> np.ndarray:
    """Exact fractional Gaussian noise G_0..G_{n-1}: Var G_k = 1, Cov(G_k, G_k+m) = gamma_H(m).

    Davies-Harte: with eigenvalues lambda of the 2n circulant embedding and
    W = sqrt(lambda / 2n) (Z1 + i Z2), the first n entries of FFT(W) have real and imaginary
    parts that are two independent exact paths. Eigenvalues are asserted >= 0 (up to
    rounding); otherwise, or with ``method="cholesky"``, the Toeplitz covariance is factored.

    Args:
        n: path length.
        hurst: Hurst index H in (0, 1); H = 1/2 is white noise.
        size: number of independent paths; None returns one path of shape (n,).
        rng: a numpy Generator or a seed. Defaults to None (fresh entropy).
        method: "auto" (Davies-Harte, Cholesky if an eigenvalue is negative),
            "davies-harte" (raise on a negative eigenvalue) or "cholesky". Defaults to "auto".

    Returns:
        float64 array of shape (size, n), or (n,) when ``size`` is None.
    """
    _check(n, hurst)
    if method not in ("auto", "davies-harte", "cholesky"):
        raise ValueError(f"unknown method. Received: method={method!r}")
    rng = np.random.default_rng(rng)
    count = 1 if size is None else int(size)
    if method == "cholesky":
        paths = _fgn_cholesky(n, hurst, count, rng)
    else:
        lam = circulant_eigenvalues(int(n), float(hurst))
        if lam.min() < -EIGEN_TOL * lam.max():
            if method == "davies-harte":
                raise ValueError(f"negative circulant eigenvalue {lam.min():.3g} for H={hurst}")
            paths = _fgn_cholesky(n, hurst, count, rng)
        else:
            paths = _fgn_davies_harte(n, np.clip(lam, 0.0, None), count, rng)
    return paths[0] if size is None else paths


def _fgn_davies_harte(n: int, lam: np.ndarray, count: int, rng: np.random.Generator):
    scale = np.sqrt(lam / (2 * n))
    pairs = (count + 1) // 2
    out = np.empty((2 * pairs, n))
    chunk = max(1, 2**22 // (2 * n))  # bound the complex work array to ~64 MB
    for start in range(0, pairs, chunk):
        stop = min(pairs, start + chunk)
        z = rng.standard_normal((stop - start, 2 * n)) + 1j * rng.standard_normal(
            (stop - start, 2 * n)
        )
        y = np.fft.fft(scale * z, axis=-1)[:, :n]
        out[2 * start : 2 * stop : 2] = y.real
        out[2 * start + 1 : 2 * stop : 2] = y.imag
    return out[:count]


def _fgn_cholesky(n: int, hurst: float, count: int, rng: np.random.Generator):
    lags = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    chol = np.linalg.cholesky(fgn_autocovariance(lags, hurst))
    return rng.standard_normal((count, n)) @ chol.T


def fbm_path(n: int, hurst: float, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """B_H at t = k/n, k = 0..n: [0, cumsum(fGn) * n^(-H)], n + 1 points (SPEC §2.1 Fig 6).

    Args:
        n: number of steps.
        hurst: Hurst index H in (0, 1).
        rng: a numpy Generator or a seed. Defaults to None.

    Returns:
        float64 array of shape (n + 1,), starting at 0, Var B_H(1) = 1.
    """
    steps = fgn(n, hurst, rng=rng)
    return np.concatenate([[0.0], np.cumsum(steps)]) * float(n) ** (-hurst)


@functools.lru_cache(maxsize=8)
def _gp_factor(num_points: int, length_scale: float) -> np.ndarray:
    """U sqrt(lambda) over the kept eigenpairs of the RBF Gram matrix (low rank)."""
    t = np.arange(num_points) / num_points
    gram = np.exp(-((t[:, None] - t[None, :]) ** 2) / (2.0 * length_scale**2))
    lam, vec = np.linalg.eigh(gram)
    keep = lam > EIGEN_TOL * lam.max()  # the rest is rounding noise (clipped to 0)
    factor = vec[:, keep] * np.sqrt(lam[keep])
    factor.flags.writeable = False  # cached: shared by every caller
    return factor


def gp_smooth(
    num_points: int,
    length_scale: float = 0.1,
    size: int | None = None,
    rng: np.random.Generator | int | None = None,
) -> np.ndarray:
    """Gaussian-process values at t_m = m / num_points, m = 0..num_points-1 (SPEC §2.2 smooth).

    Covariance exp(-(t - s)^2 / (2 length_scale^2)), unit variance. The Gram matrix is
    numerically singular, so it is sampled through its eigendecomposition with eigenvalues
    below 1e-10 x the largest dropped (clipped to 0), not by Cholesky. With num_points = L
    this is the dev branch's grid t_m = m/L, m = 0..L, without the unused t_L.

    Args:
        num_points: number of grid points (the depth L).
        length_scale: RBF length scale. Defaults to 0.1.
        size: number of independent paths; None returns one path.
        rng: a numpy Generator or a seed. Defaults to None.

    Returns:
        float64 array of shape (size, num_points), or (num_points,) when ``size`` is None.
    """
    if int(num_points) < 1:
        raise ValueError(f"num_points must be positive. Received: num_points={num_points}")
    if length_scale <= 0:
        raise ValueError(f"length_scale must be positive. Received: length_scale={length_scale}")
    factor = _gp_factor(int(num_points), float(length_scale))
    rng = np.random.default_rng(rng)
    count = 1 if size is None else int(size)
    paths = rng.standard_normal((count, factor.shape[1])) @ factor.T
    return paths[0] if size is None else paths
