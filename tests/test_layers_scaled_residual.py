"""Marion et al.'s scaled residual stacks (SPEC §2.1, §2.2, §2.7 items 1 and 3)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from depthlab.layers.fractional import fgn, gp_smooth
from depthlab.layers.scaled_residual import (
    BlockInitializer,
    ScaledResidualStack,
    build_resnet,
    resnet_param_count,
    sample_blocks,
)


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _n_params(model) -> int:
    return sum(math.prod(v.shape) for v in model.trainable_weights)


def _weights(model) -> dict[str, np.ndarray]:
    return {v.path: _np(v).astype(np.float64) for v in model.weights}


def _np_forward(w: dict[str, np.ndarray], x: np.ndarray, beta: float) -> np.ndarray:
    """Independent float64 loop: h <- h + L^-beta (V_k relu(W_k h + c_k) + b_k) (SPEC §2.1)."""
    h = x @ w["A/kernel"]
    depth = w["blocks/V"].shape[0]
    for k in range(depth):
        u = h
        if "blocks/W" in w:
            u = h @ w["blocks/W"][k].T + (w["blocks/c"][k] if "blocks/c" in w else 0.0)
        u = np.maximum(u, 0.0) @ w["blocks/V"][k].T + (w["blocks/b"][k] if "blocks/b" in w else 0.0)
        h = h + depth**-beta * u
    return h @ w["F/kernel"]


# --- parameter counts (§2.7 item 1) -------------------------------------------------------

SPEC_COUNTS = [  # kind, width, n_in, n_out, init, count
    ("res3", 40, 64, 1, "iid", 3_202_600),  # Figs 1, 3
    ("res3", 40, 64, 1, "fbm", 3_282_600),  # Fig 7
    ("res3", 100, 64, 1, "iid", 20_006_500),  # Fig 2
    ("res1", 30, 784, 10, "iid", 923_820),  # Fig 8 (MNIST)
    ("res1", 30, 784, 10, "fbm", 953_820),  # Fig 9 (MNIST)
    ("res1", 30, 3072, 10, "fbm", 1_022_460),  # Fig 9 (CIFAR-10)
]


@pytest.mark.parametrize("kind,width,n_in,n_out,init,count", SPEC_COUNTS)
def test_param_counts_at_depth_1000(kind, width, n_in, n_out, init, count):
    model = build_resnet(kind, 1000, width, 0.5, init, n_in, n_out, hurst=0.7, seed=0)
    assert _n_params(model) == count
    assert resnet_param_count(kind, 1000, width, n_in, n_out, use_bias=init == "fbm") == count


# --- initialisation: numpy draws, identical on every backend (§2.2) -----------------------


def test_weights_are_the_seeded_numpy_draws():
    depth, width, seed = 50, 6, 3
    iid = build_resnet("res3", depth, width, 0.5, "iid", num_inputs=4, num_outputs=2, seed=seed)
    w = _weights(iid)
    rng_w, rng_v = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    scale = 1 / math.sqrt(width)
    np.testing.assert_allclose(
        w["blocks/W"], rng_w.standard_normal((depth, width, width)) * scale, rtol=1e-6
    )
    np.testing.assert_allclose(
        w["blocks/V"], rng_v.standard_normal((depth, width, width)) * scale, rtol=1e-6
    )
    a = np.random.default_rng([seed, 2]).standard_normal((4, width)) / 2.0  # N(0, 1/n_in)
    f = np.random.default_rng([seed, 3]).standard_normal((width, 2)) * scale  # N(0, 1/d)
    np.testing.assert_allclose(w["A/kernel"], a, rtol=1e-6)
    np.testing.assert_allclose(w["F/kernel"], f, rtol=1e-6)
    assert set(w) == {"A/kernel", "blocks/W", "blocks/V", "F/kernel"}  # no biases for iid

    fbm = _weights(build_resnet("res1", depth, width, 0.5, "fbm", 4, 2, hurst=0.8, seed=seed))
    series = fgn(depth, 0.8, size=width * width, rng=np.random.default_rng([seed, 1]))
    np.testing.assert_allclose(
        fbm["blocks/V"], series.T.reshape(depth, width, width) * scale, rtol=1e-6
    )
    np.testing.assert_array_equal(fbm["blocks/b"], 0.0)  # fbm: zero trainable bias
    assert "blocks/W" not in fbm

    smooth = _weights(build_resnet("res3", depth, width, 1.0, "smooth", 4, 2, seed=seed))
    gp = gp_smooth(depth, 0.1, size=width * width, rng=np.random.default_rng([seed, 0]))
    np.testing.assert_allclose(
        smooth["blocks/W"], gp.T.reshape(depth, width, width) * scale, rtol=1e-6
    )


def test_init_statistics_along_depth():
    """i.i.d. entries have variance 1/d; fBm entries have the fGn lag-1 correlation."""
    stack = ScaledResidualStack(200, 20, 0.5, init="fbm", hurst=0.8, seed=5)
    stack.build((None, 20))
    v = _np(stack.V).astype(np.float64) * math.sqrt(20)  # (L, d, d), unit variance
    assert v.var() == pytest.approx(1.0, abs=0.05)
    lag1 = np.mean(v[1:] * v[:-1])
    assert lag1 == pytest.approx((2**1.6 - 2) / 2, abs=0.05)  # gamma_0.8(1) = 0.516
    assert (
        stack.use_bias and tuple(stack.b.shape) == (200, 20) and tuple(stack.c.shape) == (200, 20)
    )
    iid = sample_blocks("iid", (100, 20, 20), rng=1) / math.sqrt(20)
    assert iid.var() == pytest.approx(1 / 20, rel=0.03)
    assert ScaledResidualStack(16, 4, 0.25).alpha == pytest.approx(0.5)


# --- forward and gradient ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,init",
    [("res3", "iid"), ("res3", "fbm"), ("res1", "smooth"), ("res1", "fbm")],
)
def test_forward_matches_numpy_loop(kind, init):
    model = build_resnet(kind, 6, 5, 0.5, init, num_inputs=3, num_outputs=2, hurst=0.3, seed=7)
    rng = np.random.default_rng(8)
    for v in model.weights:  # non-zero biases so that every term is exercised
        if v.path.split("/")[-1] in ("b", "c"):
            v.assign(rng.standard_normal(v.shape).astype("float32"))
    x = rng.random((4, 3)).astype("float32")
    expected = _np_forward(_weights(model), x.astype(np.float64), 0.5)
    np.testing.assert_allclose(_np(model(x)), expected, rtol=1e-5, atol=1e-6)


def _fd_gradients(w, x, y, beta, eps=1e-6) -> dict[str, np.ndarray]:
    """Central finite differences of the mean squared error, float64."""
    grads = {}
    for name, value in w.items():
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus, minus = dict(w), dict(w)
            plus[name], minus[name] = value.copy(), value.copy()
            plus[name][idx] += eps
            minus[name][idx] -= eps
            diff = np.mean((_np_forward(plus, x, beta) - y) ** 2)
            g[idx] = (diff - np.mean((_np_forward(minus, x, beta) - y) ** 2)) / (2 * eps)
        grads[name] = g
    return grads


@pytest.mark.parametrize("kind", ["res3", "res1"])
def test_one_fit_step_gradient_through_the_scan(kind):
    """One compiled SGD(lr=1) step moves every weight by exactly -dLoss/dweight."""
    model = build_resnet(kind, 3, 4, 0.5, "fbm", num_inputs=3, num_outputs=2, hurst=0.6, seed=9)
    rng = np.random.default_rng(10)
    for v in model.weights:
        if v.path.split("/")[-1] in ("b", "c"):
            v.assign(0.3 * rng.standard_normal(v.shape).astype("float32"))
    x, y = rng.random((5, 3)).astype("float32"), rng.random((5, 2)).astype("float32")
    before = _weights(model)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    model.train_on_batch(x, y)
    after = _weights(model)
    expected = _fd_gradients(before, x.astype(np.float64), y.astype(np.float64), 0.5)
    for name, grad in expected.items():
        assert np.abs(grad).max() > 1e-4, name  # every weight gets a real gradient
        np.testing.assert_allclose(
            before[name] - after[name], grad, rtol=1e-3, atol=2e-6, err_msg=name
        )


def test_closed_form_mean_squared_output_ratio():
    """SPEC §2.1: i.i.d. res-3 + ReLU, E||h_L||^2/||h_0||^2 = (1 + L^-2beta / 2)^L.

    L=100, beta=1/2: 1.6467. The identity holds for any width; d=10 keeps 2,000 networks
    cheap (numpy, weights from the layer's sampler, forward as the checked numpy loop). The
    per-network spread at d=10 gives a standard error ~0.017: tolerance 0.06 (3.6%).
    """
    depth, width, nets, beta = 100, 10, 2000, 0.5
    rng = np.random.default_rng(2022)
    h0 = rng.random((nets, width))
    h = h0.copy()
    for _ in range(depth):
        w = sample_blocks("iid", (nets, width, width), rng=rng) / math.sqrt(width)
        v = sample_blocks("iid", (nets, width, width), rng=rng) / math.sqrt(width)
        z = np.maximum(np.einsum("nij,nj->ni", w, h), 0.0)
        h = h + depth**-beta * np.einsum("nij,nj->ni", v, z)
    ratio2 = np.sum(h**2, axis=1) / np.sum(h0**2, axis=1)
    expected = (1 + depth ** (-2 * beta) / 2) ** depth
    assert expected == pytest.approx(1.6467, abs=1e-4)
    assert ratio2.mean() == pytest.approx(expected, abs=0.06)


# --- serialisation -----------------------------------------------------------------------


def test_keras_save_reload_identical_outputs(tmp_path):
    model = build_resnet("res3", 8, 5, 0.5, "fbm", num_inputs=3, num_outputs=2, hurst=0.9, seed=11)
    x = np.random.default_rng(12).random((4, 3)).astype("float32")
    model.save(tmp_path / "resnet.keras")
    reloaded = keras.saving.load_model(tmp_path / "resnet.keras")
    np.testing.assert_array_equal(_np(reloaded(x)), _np(model(x)))
    stack = reloaded.get_layer("blocks")
    assert stack.get_config() == model.get_layer("blocks").get_config()
    assert (stack.kind, stack.init, stack.hurst, stack.use_bias) == ("res3", "fbm", 0.9, True)


def test_configs_and_arguments():
    init = BlockInitializer("fbm", 0.5, hurst=0.3, seed=[4, 1])
    clone = BlockInitializer.from_config(init.get_config())
    np.testing.assert_array_equal(_np(clone((10, 2, 2))), _np(init((10, 2, 2))))
    stack = ScaledResidualStack(4, 3, 1.0, kind="res1", use_bias=True, seed=2)
    assert ScaledResidualStack.from_config(stack.get_config()).get_config() == stack.get_config()
    with pytest.raises(ValueError, match="hurst"):
        ScaledResidualStack(4, 3, 0.5, init="fbm")
    with pytest.raises(ValueError, match="kind"):
        ScaledResidualStack(4, 3, 0.5, kind="res2")


# --- many networks in one layer (Marion's Fig 9 cells) -----------------------------------


def _separate_and_stacked(cells, depth, width, x, y, epochs, batch):
    """Per-cell logits after training each cell alone, and all of them stacked."""
    import keras

    from depthlab.callbacks import GradientCapture
    from depthlab.layers.scaled_residual import ResidualCells, cells_loss

    def adam():
        return keras.optimizers.Adam(1e-2, beta_1=0.9, beta_2=0.999, epsilon=1e-8)

    alone = []
    for cell in cells:
        model = build_resnet("res1", depth, width, cell["beta"], "fbm", x.shape[1], 3,
                             hurst=cell["hurst"], seed=cell["seed"])
        model.compile(adam(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
        alone.append(model.predict(x, verbose=0))
    stacked = keras.Sequential([keras.Input((x.shape[1],)),
                                ResidualCells(cells, depth, width, x.shape[1], 3, name="cells")])
    stacked.compile(GradientCapture(adam(), finite_only=True), cells_loss)
    stacked.fit(x, y, batch_size=batch, epochs=epochs, shuffle=False, verbose=0)
    return alone, stacked


def test_stacked_cells_train_exactly_as_separate_networks():
    """Fig 9's stacked fit: K cells in one layer, the sum of their losses, Adam (elementwise)
    gives each cell the training it gets alone (same seeds and batches)."""
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 12)).astype("float32"), rng.integers(0, 3, 64)
    cells = [{"beta": 0.9, "hurst": 0.5, "init": "fbm", "seed": 1},
             {"beta": 0.5, "hurst": 0.8, "init": "fbm", "seed": 2},
             {"beta": 0.7, "hurst": 0.3, "init": "fbm", "seed": 3}]
    alone, stacked = _separate_and_stacked(cells, 20, 6, x, y, epochs=2, batch=16)
    together = stacked.predict(x, verbose=0)
    assert together.shape == (64, 3, 3)
    for k, logits in enumerate(alone):
        np.testing.assert_allclose(together[:, k], logits, rtol=1e-4, atol=1e-5)


def test_an_exploding_cell_leaves_its_neighbours_untouched():
    """(beta, H) = (0.1, 0.9) at L=1000 explodes at the first step on MNIST (Fig 9): stacked
    beside (0.9, 0.5) it is frozen, every weight stays finite, and its neighbour trains as
    it does alone."""
    from keras import ops

    from depthlab import data

    mnist = data.mnist()
    x = mnist.train.x[:128].reshape(128, -1).astype("float32") / 255
    y = mnist.train.y[:128]
    x = x[:, :12]  # a small input keeps the test quick; the blocks do the exploding
    cells = [{"beta": 0.9, "hurst": 0.5, "init": "fbm", "seed": 0},
             {"beta": 0.1, "hurst": 0.9, "init": "fbm", "seed": 0}]
    (alone, _), stacked = _separate_and_stacked(cells, 1000, 30, x, y % 3, epochs=1, batch=64)
    layer = stacked.get_layer("cells")
    assert ops.convert_to_numpy(layer.alive).tolist() == [1.0, 0.0]
    assert all(np.isfinite(ops.convert_to_numpy(w)).all() for w in stacked.weights)
    together = stacked.predict(x, verbose=0)
    np.testing.assert_allclose(together[:, 0], alone, rtol=1e-4, atol=1e-5)
    assert (together[:, 1] == 0).all()  # a dead cell outputs zeros
