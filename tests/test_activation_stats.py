"""Activation statistics on a fixed probe batch (SPEC §0.4, §4.4 "Diagnostics", §4.5)."""

from __future__ import annotations

import csv
import io
import os

import keras
import mlflow
import numpy as np
import pytest
from keras import ops
from numpy.testing import assert_allclose, assert_array_equal

from depthlab import plots, tracking
from depthlab.callbacks.activation_stats import (
    ActivationStats,
    activation_statistics,
    probe_model,
    statistics_csv,
)

# --- a 2 -> 3 -> 2 -> 1 Dense net with hand-set weights -------------------------------
X = np.array([[1, 2], [3, -1], [-1, -1], [0, 1]], np.float32)
K1 = np.array([[1, -1, 0], [0, 1, 0]], np.float32)  # unit 3 of layer 1 is dead
K2 = np.array([[10, 0.04], [60, 0], [5, 1]], np.float32)
K3 = np.array([[-0.1], [1]], np.float32)
# h1 = relu(X K1) = [[1,1,0],[3,0,0],[0,0,0],[0,1,0]]
# h2 = relu(h1 K2) = [[70,0.04],[30,0.12],[0,0],[60,0]]
# h3 = h2 K3 (linear) = [[-6.96],[-2.88],[0],[-6]]
EXPECTED = {
    "units": [3, 2, 1],
    "mean_abs": [6 / 12, 160.16 / 8, 15.84 / 4],
    "normalised_mean_abs": [0.5 / 20.02, 1.0, 3.96 / 20.02],
    "max_abs": [3.0, 70.0, 6.96],
    "frac_above_0": [4 / 12, 5 / 8, 3 / 4],
    "frac_above_0.05": [4 / 12, 4 / 8, 3 / 4],
    "frac_above_0.5": [4 / 12, 3 / 8, 3 / 4],
    "frac_above_5": [0.0, 3 / 8, 2 / 4],
    "frac_above_50": [0.0, 2 / 8, 0.0],
    "frac_zero": [8 / 12, 3 / 8, 1 / 4],
    "dead_units": [1, 0, 0],
}


def hand_model() -> keras.Model:
    inp = keras.Input((2,))
    h = keras.layers.Dense(3, activation="relu", name="d1")(inp)
    h = keras.layers.Dense(2, activation="relu", name="d2")(h)
    model = keras.Model(inp, keras.layers.Dense(1, name="d3")(h))
    for name, kernel in (("d1", K1), ("d2", K2), ("d3", K3)):
        layer = model.get_layer(name)
        layer.set_weights([kernel, np.zeros(kernel.shape[1], np.float32)])
    return model


def kappa_2_h2() -> float:
    """κ2 of h2 from its Gram matrix: c1·c1 = 9400, c2·c2 = 0.016, c1·c2 = 6.4."""
    trace, det = 9400 + 0.016, 9400 * 0.016 - 6.4**2
    root = np.sqrt(trace**2 - 4 * det)
    return float(np.sqrt((trace + root) / (trace - root)))


@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_hand_computed_dense_relu(batch_size):
    model = hand_model()
    stats = activation_statistics(
        model, ["d1", "d2", model.get_layer("d3")], X, batch_size=batch_size, kappa2=True
    )
    assert_array_equal(stats["layer"], ["d1", "d2", "d3"])
    for key, expected in EXPECTED.items():
        assert_allclose(stats[key], expected, rtol=1e-6, err_msg=key)
    assert stats["kappa_2"][0] == np.inf  # dead unit
    assert_allclose(stats["kappa_2"][1:], [kappa_2_h2(), 1.0], rtol=1e-5)


def test_conv_unit_is_a_channel():
    model = keras.Sequential(
        [keras.Input((2, 2, 1)), keras.layers.Conv2D(2, 1, activation="relu", use_bias=False)]
    )
    model.layers[0].set_weights([np.array([1, -1], np.float32).reshape(1, 1, 1, 2)])
    x = np.arange(12, dtype=np.float32).reshape(3, 2, 2, 1)  # channel 2 = relu(-x) = 0
    stats = activation_statistics(model, None, x, kappa2=True)
    assert stats["units"][0] == 2 and stats["dead_units"][0] == 1
    assert_allclose(stats["mean_abs"], [66 / 24])
    assert_allclose(stats["max_abs"], [11.0])
    assert_allclose(stats["frac_zero"], [13 / 24])
    assert stats["kappa_2"][0] == np.inf


# --- BatchNormalization: batch vs moving statistics, and no side effects -------------
XB = np.array([[1, 0], [2, 0], [3, 0], [4, 8]], np.float32)
GAMMA, BETA = np.array([2.0, 1.0]), np.array([0.5, 0.0])
MOVING_MEAN, MOVING_VAR, EPS = np.array([1.0, -1.0]), np.array([4.0, 9.0]), 1e-3


def bn_model() -> keras.Model:
    inp = keras.Input((2,))
    h = keras.layers.BatchNormalization(epsilon=EPS, name="bn")(inp)
    model = keras.Model(inp, keras.layers.ReLU(name="relu")(h))
    model.get_layer("bn").set_weights(
        [a.astype(np.float32) for a in (GAMMA, BETA, MOVING_MEAN, MOVING_VAR)]
    )
    return model


def bn_by_hand(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    return GAMMA * (x - mean) / np.sqrt(var + EPS) + BETA


def batch_stats_by_hand(x: np.ndarray) -> np.ndarray:
    return bn_by_hand(x, x.mean(0), x.var(0))  # Keras BN: biased batch variance


def variables(model: keras.Model) -> list[np.ndarray]:
    return [np.array(ops.convert_to_numpy(v)) for v in model.variables]


def test_training_vs_inference_bn():
    model = bn_model()
    x = XB.astype(np.float64)
    cases = {
        (False, None): [bn_by_hand(x, MOVING_MEAN, MOVING_VAR)],
        (True, None): [batch_stats_by_hand(x)],  # one pass over the whole probe
        (True, 2): [batch_stats_by_hand(x[:2]), batch_stats_by_hand(x[2:])],
    }
    results = {}
    for (training, batch_size), parts in cases.items():
        stats = activation_statistics(model, ["bn", "relu"], XB, training, batch_size=batch_size)
        bn_out = np.concatenate(parts)
        relu_out = np.maximum(bn_out, 0)
        assert_allclose(stats["mean_abs"], [np.abs(bn_out).mean(), relu_out.mean()], rtol=1e-5)
        assert_allclose(stats["max_abs"], [np.abs(bn_out).max(), relu_out.max()], rtol=1e-5)
        assert_allclose(stats["frac_zero"][1], np.mean(relu_out == 0))
        results[training, batch_size] = stats["mean_abs"]
    # Batch statistics differ from moving ones, and per-chunk from whole-probe ones.
    assert not np.allclose(results[True, None], results[False, None], rtol=0.01)
    assert not np.allclose(results[True, None], results[True, 2], rtol=0.01)


def test_probe_leaves_weights_and_moving_stats_unchanged():
    model = bn_model()
    before = variables(model)
    activation_statistics(model, ["bn", "relu"], XB, training=True, kappa2=True)
    activation_statistics(model, ["bn", "relu"], XB, training=False)
    callback = ActivationStats(XB, ["bn", "relu"], training=True, conditioning=True)
    callback.set_model(model)
    callback.record(0)  # outside an MLflow run: measures, keeps history, logs nothing
    assert len(callback.history) == 1
    for old, new in zip(before, variables(model), strict=True):
        assert_array_equal(old, new)
    # Why the probe is stateless: a plain training-mode call does move the statistics.
    probe_model(model, ["bn"])(ops.convert_to_tensor(XB), training=True)
    moved = ops.convert_to_numpy(model.get_layer("bn").moving_mean)
    assert_allclose(moved, 0.99 * MOVING_MEAN + 0.01 * XB.mean(0), rtol=1e-6)


# --- the callback inside fit, logging to MLflow ----------------------------------------
def small_net() -> keras.Model:
    inp = keras.Input((4,))
    h = keras.layers.Dense(4, name="square")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(h))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def read_artifact(run_id: str, path: str) -> str:
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    with open(local) as handle:
        return handle.read()


def test_callback_in_fit_logs_history_metrics_and_artifacts(mlruns):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    model = small_net()
    callback = ActivationStats(x[:8], ["square", "relu"], training=True, freq=2, conditioning=True)
    with tracking.run(tracking.experiment("fit"), "fit") as active:
        model.fit(x, y, batch_size=8, epochs=3, verbose=0, callbacks=[callback])
    run_id = active.info.run_id
    assert [entry["step"] for entry in callback.history] == [0, 2, 3]
    # The last entry is the trained model's state (under JAX: synced, not stale).
    final = activation_statistics(model, ["square", "relu"], x[:8], training=True, kappa2=True)
    for key, value in final.items():
        if key != "layer":
            assert_allclose(callback.history[-1]["stats"][key], value, rtol=1e-6, err_msg=key)
    kappa = ops.convert_to_numpy(model.get_layer("square").kernel).astype(np.float64).T
    assert_allclose(
        callback.history[-1]["kappa_inf"]["square"], np.linalg.cond(kappa, np.inf), rtol=1e-8
    )

    client = mlflow.tracking.MlflowClient()
    metric = client.get_metric_history(run_id, "act_train/mean_abs_first")
    assert [(m.step, m.value) for m in metric] == [
        (e["step"], pytest.approx(e["stats"]["mean_abs"][0])) for e in callback.history
    ]
    assert client.get_run(run_id).data.metrics["act_train/kappa_inf_median"] > 1
    names = {a.path for a in client.list_artifacts(run_id, "diagnostics")}
    for step in (0, 2, 3):
        for stem in ("act_train", "act_train_conditioning"):
            assert f"diagnostics/{stem}_step{step:04d}.png" in names
        assert f"diagnostics/act_train_kappa_inf_step{step:04d}.csv" in names
    rows = list(
        csv.DictReader(io.StringIO(read_artifact(run_id, "diagnostics/act_train_step0002.csv")))
    )
    assert [r["layer"] for r in rows] == ["square", "relu"]
    assert_allclose(
        [float(r["mean_abs"]) for r in rows], callback.history[1]["stats"]["mean_abs"], rtol=1e-12
    )


def test_csv_and_plot_round_trip():
    stats = activation_statistics(hand_model(), ["d1", "d2", "d3"], X)
    rows = list(csv.DictReader(io.StringIO(statistics_csv(stats))))
    assert [int(r["dead_units"]) for r in rows] == EXPECTED["dead_units"]
    assert_allclose([float(r["frac_above_50"]) for r in rows], EXPECTED["frac_above_50"])
    axes = plots.activation_statistics(stats).axes[0]
    assert axes.get_yscale() == "log" and len(axes.lines) == 2


# --- integration: a PlainNet-like stack at init on real USPS images (SPEC §4.5) --------
def plain_stack(bn: bool) -> tuple[keras.Model, list[str]]:
    inp = keras.Input((256,))
    h, names = inp, []
    for i in range(1, 31):
        h = keras.layers.Dense(64, name=f"dense_{i}")(h)  # glorot_uniform, zero bias
        if bn:
            h = keras.layers.BatchNormalization(name=f"bn_{i}")(h)
        h = keras.layers.ReLU(name=f"relu_{i}")(h)
        names.append(f"relu_{i}")
    return keras.Model(inp, h), names


def test_plain_stack_decays_and_bn_does_not():
    """Glorot at fan_in = fan_out halves E[h²] per ReLU layer: mean|h| shrinks ~2^(-29/2).

    Measured (seeds 0–2, all backends): ratio layer30/layer1 7.5e-6–5.9e-5 without BN,
    0.80–0.90 with training-mode BN; exact zeros per layer 0.37–0.65 (width 64 fluctuates
    more than the spec's width 300) and 0.47–0.53; dead units at layer 30: 18–30 / 0.
    """
    data = np.load(os.path.join(os.environ["DEPTHLAB_DATA_DIR"], "usps.npz"))
    x = (data["x_train"][:256].reshape(256, -1) / 255.0).astype(np.float32)
    keras.utils.set_random_seed(0)
    naive = activation_statistics(*plain_stack(bn=False), x, training=True, kappa2=True)
    ratio = naive["mean_abs"][-1] / naive["mean_abs"][0]
    assert ratio < 1e-3
    assert np.all((naive["frac_zero"] > 0.3) & (naive["frac_zero"] < 0.7))
    assert naive["dead_units"][-1] >= 5 and naive["kappa_2"][-1] == np.inf
    bn = activation_statistics(*plain_stack(bn=True), x, training=True, kappa2=True)
    assert 0.5 < bn["mean_abs"][-1] / bn["mean_abs"][0] < 2
    assert np.all((bn["frac_zero"] > 0.4) & (bn["frac_zero"] < 0.6))
    assert np.all(bn["dead_units"] == 0) and np.all(bn["kappa_2"] < 1e3)
