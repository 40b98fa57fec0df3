"""Condition numbers of weights and activations (SPEC §4.4 "Diagnostics", §4.5).

Two measures from Oyedotun et al. (SPEC §4):

- κ∞(W) = ‖W‖∞‖W⁻¹‖∞ (max absolute row sum) of a square kernel, the quantity of Fig. 5.
  A fresh 300×300 uniform kernel has a median κ∞ ≈ 2e4 whatever its scale (§4.5), so
  "moderate" means ~1e4, not ~1.
- κ2(H) = σmax/σmin of an N × units activation matrix (the paper's Definition 1): ∞ when
  a unit is dead on every sample (a zero column) or the matrix is otherwise singular.

κ2 over a large probe is computed without holding H: :func:`accumulate_r` folds row
chunks into the triangular factor R of H = QR (TSQR), which has H's singular values and
H's zero columns, so ``kappa_2(R) == kappa_2(H)``.

Logging goes through :class:`depthlab.callbacks.activation_stats.ActivationStats`
(``conditioning=True``), the one way to log these values; this module only computes,
tabulates and plots them. Everything here is numpy in float64.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

import keras
import numpy as np


def kappa_inf(w: np.ndarray) -> float:
    """κ∞(W) = ‖W‖∞ ‖W⁻¹‖∞ of a square matrix (SPEC §4.4), in float64.

    Equals ``numpy.linalg.cond(w, numpy.inf)``.

    Args:
        w: a square 2-D array.

    Returns:
        The condition number; ``inf`` when ``w`` is singular or not finite.

    Raises:
        ValueError: ``w`` is not a square 2-D array.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"kappa_inf needs a square 2-D matrix. Received: shape={w.shape}")
    if not np.all(np.isfinite(w)):
        return float("inf")
    try:
        inverse = np.linalg.inv(w)
    except np.linalg.LinAlgError:
        return float("inf")
    value = np.linalg.norm(w, np.inf) * np.linalg.norm(inverse, np.inf)
    return float(value) if np.isfinite(value) else float("inf")


def kappa_2(h: np.ndarray) -> float:
    """κ2(H) = σmax/σmin of an N × units activation matrix (SPEC §4.4, Definition 1).

    The units are the columns. H is singular, and κ2 infinite, when a unit is dead on
    every sample (an exactly zero column), when σmin == 0, or when N < units (the
    columns are then linearly dependent). Passing the R factor from
    :func:`accumulate_r` gives the same value as passing H.

    Args:
        h: a 2-D array, samples × units.

    Returns:
        The condition number in float64, ``inf`` for a singular H, NaN when H holds a
        non-finite value.

    Raises:
        ValueError: ``h`` is not 2-D or has no columns.
    """
    h = np.asarray(h, dtype=np.float64)
    if h.ndim != 2 or h.shape[1] == 0:
        raise ValueError(f"kappa_2 needs an N x units matrix. Received: shape={h.shape}")
    if not np.all(np.isfinite(h)):
        return float("nan")  # undefined; LAPACK's SVD would not converge
    if h.shape[0] < h.shape[1] or not np.all(np.any(h != 0, axis=0)):
        return float("inf")
    sigma = np.linalg.svd(h, compute_uv=False)
    if not np.all(np.isfinite(sigma)) or sigma[-1] == 0:
        return float("inf")
    return float(sigma[0] / sigma[-1])


def accumulate_r(r: np.ndarray | None, rows: np.ndarray) -> np.ndarray:
    """Fold a chunk of rows of H into the R factor of H = QR (streaming TSQR).

    Householder QR maps a zero column to a zero column exactly, so the final R keeps
    H's dead units as well as its singular values.

    Args:
        r: the factor so far (``None`` before the first chunk).
        rows: the next rows of H, shape (n, units).

    Returns:
        R of the rows seen so far, shape (min(rows seen, units), units), float64.
    """
    rows = np.asarray(rows, dtype=np.float64)
    stacked = rows if r is None else np.vstack([r, rows])
    return np.linalg.qr(stacked, mode="r")


def kernel_conditioning(model: keras.Model) -> dict[str, float]:
    """κ∞ of every square 2-D Dense kernel of a model (SPEC §4.4, Fig. 5).

    The matrix is W = kernel.T (units × fan_in, row i = unit i's incoming weights, the
    vector ``MaxNorm(axis=0)`` bounds), the paper's Z = W·h orientation. Non-square
    kernels (a PlainNet's first and output layers) are skipped. Dense layers nested in
    other layers (a PlainNet block's ``linear``) count too.

    Args:
        model: a built Keras model.

    Returns:
        ``{kernel path without "/kernel": κ∞}`` in model order: the layer's name for a
        top-level Dense (``"dense_3"``), the nesting path for a nested one
        (``"block_2/linear"``), so the keys are unique.
    """
    out: dict[str, float] = {}
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, keras.layers.Dense):
            continue
        kernel = getattr(layer, "kernel", None)
        if kernel is None or len(kernel.shape) != 2 or kernel.shape[0] != kernel.shape[1]:
            continue
        out[kernel.path.removesuffix("/kernel")] = kappa_inf(keras.ops.convert_to_numpy(kernel).T)
    return out


def conditioning_csv(kappas: Mapping[str, float]) -> str:
    """A CSV table ``index,layer,kappa_inf`` (1-based index over the square kernels)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "layer", "kappa_inf"])
    for index, (name, value) in enumerate(kappas.items(), start=1):
        writer.writerow([index, name, repr(float(value))])
    return buffer.getvalue()


