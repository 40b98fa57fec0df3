"""κ∞ of kernels and κ2 of activation matrices (SPEC §4.4 "Diagnostics", §4.5)."""

from __future__ import annotations

import csv
import io

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

from depthlab import plots
from depthlab.callbacks.conditioning import (
    accumulate_r,
    conditioning_csv,
    kappa_2,
    kappa_inf,
    kernel_conditioning,
)


def test_kappa_inf_hand_2x2():
    # ‖W‖∞ = max(1+2, 3+4) = 7; W⁻¹ = [[-2, 1], [1.5, -0.5]], ‖W⁻¹‖∞ = 3.
    assert kappa_inf(np.array([[1.0, 2.0], [3.0, 4.0]])) == pytest.approx(21.0, rel=1e-12)
    assert kappa_inf(np.eye(4)) == 1.0


def test_kappa_inf_matches_numpy_cond():
    rng = np.random.default_rng(0)
    for n in (3, 10, 50):
        w = rng.normal(size=(n, n)).astype(np.float32)
        assert_allclose(kappa_inf(w), np.linalg.cond(w.astype(np.float64), np.inf), rtol=1e-10)


def test_kappa_inf_singular_and_bad_shapes():
    assert kappa_inf(np.array([[1.0, 2.0], [2.0, 4.0]])) == np.inf
    assert kappa_inf(np.zeros((3, 3))) == np.inf
    assert kappa_inf(np.array([[np.nan, 0.0], [0.0, 1.0]])) == np.inf
    with pytest.raises(ValueError, match="square"):
        kappa_inf(np.ones((2, 3)))


def test_kappa_2_diagonal_dead_unit_and_wide():
    h = np.zeros((5, 3))
    h[[0, 1, 2], [0, 1, 2]] = [1.0, 2.0, 5.0]  # singular values 5, 2, 1
    assert kappa_2(h) == pytest.approx(5.0, rel=1e-12)
    h[:, 1] = 0.0  # unit 2 dead on every sample
    assert kappa_2(h) == np.inf
    assert kappa_2(np.ones((2, 3))) == np.inf  # fewer samples than units
    assert kappa_2(np.array([[3.0], [-4.0]])) == 1.0  # one unit: σmax = σmin
    with pytest.raises(ValueError, match="N x units"):
        kappa_2(np.ones(3))


def test_accumulate_r_streams_kappa_2():
    rng = np.random.default_rng(1)
    h = rng.normal(size=(50, 6))
    r = None
    for start in range(0, 50, 7):
        r = accumulate_r(r, h[start : start + 7])
    assert r.shape == (6, 6)
    assert_allclose(kappa_2(r), np.linalg.cond(h), rtol=1e-10)
    h[:, 4] = 0.0
    r = None
    for start in range(0, 50, 7):
        r = accumulate_r(r, h[start : start + 7])
    assert np.all(r[:, 4] == 0.0)  # a dead unit stays an exactly zero column
    assert kappa_2(r) == np.inf


def test_kernel_conditioning_orientation_and_square_only():
    inp = keras.Input((2,))
    h = keras.layers.Dense(3, name="first")(inp)  # 2x3: skipped
    h = keras.layers.Dense(3, name="square")(h)
    out = keras.layers.Dense(1, name="out")(h)  # 3x1: skipped
    model = keras.Model(inp, out)
    kernel = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 3.0, 1.0]], np.float32)
    model.get_layer("square").set_weights([kernel, np.zeros(3, np.float32)])
    # W = kernel.T = [[1,0,0],[2,1,3],[0,0,1]]: ‖W‖∞ = 6, W⁻¹ = [[1,0,0],[-2,1,-3],[0,0,1]]
    # has ‖W⁻¹‖∞ = 6, so κ∞ = 36 (the kernel itself would give 4 · 4 = 16).
    assert kernel_conditioning(model) == {"square": pytest.approx(36.0, rel=1e-12)}


def test_fresh_uniform_kernel_baseline():
    """SPEC §4.5: a fresh 300x300 uniform kernel has median κ∞ ≈ 2.1e4–2.2e4.

    Medians of 7 kernels (numpy, 300 draws) fall in [1.0e4, 8.1e4]; the band is wider.
    """
    keras.utils.set_random_seed(0)
    inp = keras.Input((300,))
    h = inp
    for i in range(7):
        h = keras.layers.Dense(300, name=f"dense_{i}")(h)  # glorot_uniform
    model = keras.Model(inp, keras.layers.Dense(10, name="out")(h))
    kappas = kernel_conditioning(model)
    assert list(kappas) == [f"dense_{i}" for i in range(7)]
    for name, value in kappas.items():
        kernel = keras.ops.convert_to_numpy(model.get_layer(name).kernel).astype(np.float64)
        assert_allclose(value, np.linalg.cond(kernel.T, np.inf), rtol=1e-8)
    assert 5e3 < np.median(list(kappas.values())) < 1.5e5


def test_conditioning_csv_and_plot():
    kappas = {"a": 2.0, "b": float("inf")}
    rows = list(csv.DictReader(io.StringIO(conditioning_csv(kappas))))
    assert [(r["index"], r["layer"], float(r["kappa_inf"])) for r in rows] == [
        ("1", "a", 2.0),
        ("2", "b", np.inf),
    ]
    figure = plots.conditioning(kappas, [1.0, np.inf, 3.0], "t")
    axes = figure.axes[0]
    assert axes.get_yscale() == "log"
    assert len(axes.lines) == 2
