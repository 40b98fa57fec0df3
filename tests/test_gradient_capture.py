"""GradientCapture and GradientLogger (SPEC §0.2, §0.4, §0.9), on the backend of KERAS_BACKEND.

Expected gradients are computed by hand: for ``Dense(2)`` on x with MSE,
dL/dW = 2 / (B * 2) * x^T (x W + b - y) and dL/db = 2 / (B * 2) * sum_rows (x W + b - y).
The cross-backend test runs ``tests/grad_probe.py`` under each backend and compares with
a float64 ``jax.grad`` of a plain jax.numpy copy of the probe's network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from numpy.testing import assert_allclose

from depthlab.callbacks.gradient_capture import (
    GradientCapture,
    find_capture,
    with_gradient_capture,
)
from depthlab.callbacks.gradient_logger import GradientLogger

RNG = np.random.default_rng(0)
X = RNG.normal(size=(12, 3)).astype("float32")
Y = RNG.normal(size=(12, 2)).astype("float32")
W = RNG.normal(size=(3, 2)).astype("float32")
B = RNG.normal(size=(2,)).astype("float32")


def linear_model() -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="lin")])
    model.set_weights([W, B])
    return model


def numpy_grads(x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """dMSE/dW, dMSE/db at the initial weights, float64."""
    x, y = x.astype("float64"), y.astype("float64")
    residual = 2.0 / (len(x) * 2) * (x @ W + B - y)
    return [x.T @ residual, residual.sum(axis=0)]


def norms(grads: list[np.ndarray]) -> np.ndarray:
    return np.array([np.linalg.norm(g) for g in grads])


def mean_abs(grads: list[np.ndarray]) -> np.ndarray:
    return np.array([np.abs(g).mean() for g in grads])


def fit_one_step(optimizer: keras.optimizers.Optimizer) -> keras.Model:
    model = linear_model()
    model.compile(optimizer, "mse")
    model.fit(X[:4], Y[:4], batch_size=4, epochs=1, shuffle=False, verbose=0)
    return model


OPTIMIZERS = {
    "adam": lambda: keras.optimizers.Adam(1e-2),
    "sgd": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "adamw": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.1),
    "adam_clip": lambda: keras.optimizers.Adam(1e-2, global_clipnorm=0.5),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_first_step_equals_hand_gradient_and_update_is_unchanged(name):
    capture = GradientCapture(OPTIMIZERS[name]())
    captured = fit_one_step(capture)
    bare = fit_one_step(OPTIMIZERS[name]())
    expected = numpy_grads(X[:4], Y[:4])
    values = capture.read()
    assert_allclose(values["last_norm"], norms(expected), rtol=1e-6)
    assert_allclose(values["last_mean_abs"], mean_abs(expected), rtol=1e-6)
    global_norm = np.sqrt((norms(expected) ** 2).sum())
    assert_allclose(values["last_global_norm"], global_norm, rtol=1e-6)
    factor = min(1.0, 0.5 / global_norm) if name == "adam_clip" else 1.0
    if name == "adam_clip":
        assert factor < 0.5  # clipping really acted; the captured norm is the raw one
    assert_allclose(values["last_clip_factor"], factor, rtol=1e-6)
    assert int(values["steps"]) == 1 and int(values["iterations"]) == 1
    for after, reference in zip(captured.get_weights(), bare.get_weights(), strict=True):
        assert_allclose(after, reference, rtol=1e-6, atol=1e-7)


def test_loss_scaling_is_undone_before_capture():
    expected = norms(numpy_grads(X[:4], Y[:4]))
    static = GradientCapture(keras.optimizers.SGD(0.1, loss_scale_factor=64.0))
    assert static.loss_scale_factor == 64.0 and static.inner_optimizer.loss_scale_factor is None
    fit_one_step(static)
    assert_allclose(static.read()["last_norm"], expected, rtol=1e-6)
    dynamic = with_gradient_capture(keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1)))
    assert isinstance(dynamic, keras.optimizers.LossScaleOptimizer)
    assert with_gradient_capture(static) is static
    assert isinstance(with_gradient_capture("sgd").inner_optimizer, keras.optimizers.SGD)
    with pytest.raises(ValueError, match="must not wrap"):
        GradientCapture(static)
    fit_one_step(dynamic)
    assert_allclose(find_capture(dynamic).read()["last_norm"], expected, rtol=1e-6)


def test_tiny_and_missing_gradients():
    # ~1e-25 entries: their squares (1e-50) flush to zero in float32; the norm must not.
    pattern = np.arange(1.0, 7.0).reshape(2, 3)
    first = keras.Variable(np.zeros((2, 3), "float32"))
    second = keras.Variable(np.zeros((4,), "float32"))
    capture = GradientCapture(keras.optimizers.SGD(0.0))
    tiny = (1e-25 * pattern).astype("float32")
    with pytest.warns(UserWarning, match="Gradients do not exist"):  # Keras' own warning
        capture.apply([keras.ops.convert_to_tensor(tiny), None], [first, second])
    values = capture.read()
    assert_allclose(values["last_norm"], [np.linalg.norm(tiny.astype("float64")), 0.0], rtol=1e-6)
    assert_allclose(values["last_mean_abs"], [3.5e-25, 0.0], rtol=1e-6)
    ones = np.ones(4, "float32")
    with pytest.warns(UserWarning, match="Gradients do not exist"):
        capture.apply([None, keras.ops.convert_to_tensor(ones)], [first, second])
    assert_allclose(capture.read()["last_norm"], [0.0, 2.0], rtol=1e-6)
    assert_allclose(capture.read()["sum_norm"][1], 2.0, rtol=1e-6)
    assert int(capture.read()["steps"]) == 2


def test_learning_rate_and_iterations_are_the_inner_optimizers():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    scheduled = GradientCapture(keras.optimizers.SGD(schedule))
    fit_one_step(scheduled)  # one step: iterations 1, lr = 0.1 * 0.5
    assert int(keras.ops.convert_to_numpy(scheduled.iterations)) == 1
    assert_allclose(keras.ops.convert_to_numpy(scheduled.learning_rate), 0.05, rtol=1e-6)
    capture = GradientCapture(keras.optimizers.Adam(1e-2))
    model = linear_model()
    model.compile(capture, "mse")
    set_lr = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.25 / (epoch + 1))
    model.fit(X, Y, batch_size=4, epochs=2, verbose=0, callbacks=[set_lr, GradientLogger()])
    inner_lr = keras.ops.convert_to_numpy(capture.inner_optimizer.learning_rate)
    assert_allclose(inner_lr, 0.125, rtol=1e-6)
    assert_allclose(keras.ops.convert_to_numpy(capture.learning_rate), 0.125, rtol=1e-6)


def test_epoch_values_are_the_last_batch_and_the_mean_over_steps():
    # lr 0: the weights never move, so batch k's gradient is numpy_grads of its rows.
    model = linear_model()
    model.compile(GradientCapture(keras.optimizers.SGD(0.0)), "mse")
    logger = GradientLogger(
        every_n_steps=2,
        labels=lambda v: None if v.name == "bias" else "lin_kernel",
        log_to_mlflow=False,
    )
    model.fit(X, Y, batch_size=4, epochs=2, shuffle=False, verbose=0, callbacks=[logger])
    batches = [numpy_grads(X[k : k + 4], Y[k : k + 4])[0] for k in (0, 4, 8)]
    h = logger.history
    assert h["labels"] == ["lin_kernel"]
    assert list(h["epochs"]) == [0, 1] and list(h["epoch_steps"]) == [3, 3]
    for e in range(2):
        assert_allclose(h["last_norm"][e], [np.linalg.norm(batches[2])], rtol=1e-6)
        assert_allclose(h["last_mean_abs"][e], [np.abs(batches[2]).mean()], rtol=1e-6)
        assert_allclose(h["mean_norm"][e], [np.mean(norms(batches))], rtol=1e-6)
        assert_allclose(h["mean_mean_abs"][e], [np.mean(mean_abs(batches))], rtol=1e-6)
    # every 2 steps: steps 1, 3, 5 = epoch 0 batch 1, epoch 1 batch 0, epoch 1 batch 2
    assert list(h["steps"]) == [1, 3, 5]
    assert_allclose(h["step_norms"][:, 0], norms([batches[1], batches[0], batches[2]]), rtol=1e-6)
    # resumed fit: epoch numbering and step numbering continue
    resumed = {"initial_epoch": 2, "shuffle": False, "verbose": 0, "callbacks": [logger]}
    model.fit(X, Y, batch_size=4, epochs=3, **resumed)
    assert list(logger.history["epochs"]) == [2] and list(logger.history["steps"]) == [7]


def test_keras_file_round_trip_then_training_continues(tmp_path):
    model = linear_model()
    model.compile(GradientCapture(keras.optimizers.Adam(1e-2)), "mse")
    model.fit(X, Y, batch_size=6, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "captured.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    capture = loaded.optimizer
    assert isinstance(capture, GradientCapture)
    assert isinstance(capture.inner_optimizer, keras.optimizers.Adam)
    assert_allclose(keras.ops.convert_to_numpy(capture.learning_rate), 1e-2, rtol=1e-6)
    for key, value in model.optimizer.read().items():
        assert_allclose(capture.read()[key], value, rtol=1e-7, err_msg=key)
    logger = GradientLogger(every_n_steps=1, log_to_mlflow=False)
    for m, callbacks in ((model, []), (loaded, [logger])):
        m.fit(X, Y, batch_size=6, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)
    for a, b in zip(model.get_weights(), loaded.get_weights(), strict=True):
        assert_allclose(b, a, rtol=1e-6, atol=1e-7)  # Adam state restored: same update
    assert int(capture.read()["iterations"]) == 4
    assert list(logger.history["steps"]) == [2, 3]


def test_logger_requires_a_capture_optimizer():
    model = linear_model()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    with pytest.raises(ValueError, match="GradientCapture"):
        model.fit(X, Y, batch_size=4, epochs=1, verbose=0, callbacks=[GradientLogger()])


def test_mlflow_metrics_and_artifacts(mlruns, tmp_path):
    from mlflow.tracking import MlflowClient

    from depthlab import tracking

    def train(name: str, logger: GradientLogger) -> str:
        model = linear_model()
        model.compile(GradientCapture(keras.optimizers.Adam(1e-2, global_clipnorm=0.5)), "mse")
        with tracking.run(tracking.experiment("t"), name) as active:
            model.fit(X, Y, batch_size=6, epochs=2, shuffle=False, verbose=0, callbacks=[logger])
        return active.info.run_id

    client = MlflowClient()
    run_id = train("r", GradientLogger(every_n_steps=1))
    metrics = client.get_run(run_id).data.metrics
    for key in ("global_norm", "min_layer_norm", "max_layer_norm", "first_last_ratio"):
        assert f"grad/{key}" in metrics
    assert "grad/clip_factor" in metrics
    assert {"grad_mean_abs/lin/kernel", "grad_mean_abs/lin/bias"} <= set(metrics)
    assert not any(k.startswith("grad_norm/") for k in metrics)  # norms: artifacts only
    history = client.get_metric_history(run_id, "grad/global_norm")
    assert sorted(m.step for m in history) == [0, 1]  # per epoch, like the training curves
    per_epoch = client.get_metric_history(run_id, "grad_mean_abs/lin/kernel")
    assert sorted(m.step for m in per_epoch) == [0, 1]
    files = {Path(f.path).name for f in client.list_artifacts(run_id, "gradients")}
    assert {"history.npz", "step_norms.csv", "epoch_last_mean_abs.csv",
            "norms_heatmap.png"} <= files
    csv_path = client.download_artifacts(run_id, "gradients/step_norms.csv", str(tmp_path))
    lines = Path(csv_path).read_text().splitlines()
    assert lines[0] == "step,lin/kernel,lin/bias" and len(lines) == 5
    # two entries > max_layer_metrics=1: no per-layer keys, summaries still there
    small = train("r2", GradientLogger(every_n_steps=1, max_layer_metrics=1))
    keys = set(client.get_run(small).data.metrics)
    assert "grad/global_norm" in keys
    assert not any(k.startswith(("grad_mean_abs/", "grad_norm/")) for k in keys)


# === Cross-backend gradient test (SPEC §0.9) ===


def jax_reference(params: dict, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[norms; mean |g|] of the probe network's gradients by float64 jax.grad."""
    import jax
    import jax.numpy as jnp
    from grad_probe import EPSILON, PARAMS

    def conv(h, kernel, bias, stride, pad):
        dims = ("NHWC", "HWIO", "NHWC")
        h = jax.lax.conv_general_dilated(h, kernel, (stride,) * 2, pad, dimension_numbers=dims)
        return h + bias

    def batch_norm(h, gamma, beta):
        mean = h.mean(axis=(0, 1, 2))
        var = ((h - mean) ** 2).mean(axis=(0, 1, 2))  # biased, as in training mode
        return gamma * (h - mean) / jnp.sqrt(var + EPSILON) + beta

    def loss(p, x, y):
        h = conv(x, p["conv1/kernel"], p["conv1/bias"], 1, ((1, 1), (1, 1)))
        h = jax.nn.relu(batch_norm(h, p["bn1/gamma"], p["bn1/beta"]))
        # Keras "same" with stride 2 on 32 pixels pads one row/column at the bottom/right.
        h = conv(h, p["conv2/kernel"], p["conv2/bias"], 2, ((0, 1), (0, 1)))
        h = jax.nn.relu(batch_norm(h, p["bn2/gamma"], p["bn2/beta"]))
        logits = h.mean(axis=(1, 2)) @ p["head/kernel"] + p["head/bias"]
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, y[:, None], axis=1).mean()

    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(v, jnp.float64) for k, v in params.items()}
        x64 = jnp.asarray(images, jnp.float64)
        grads = jax.grad(loss)(p64, x64, jnp.asarray(labels))
        grads = {k: np.asarray(g, "float64") for k, g in grads.items()}
    keys = [f"{layer}/{weight}" for layer, weight, _ in PARAMS]
    rows = ([np.linalg.norm(grads[k]) for k in keys], [np.abs(grads[k]).mean() for k in keys])
    return np.array(rows)


@pytest.mark.once
def test_gradients_agree_across_backends_and_with_reference(tmp_path):
    from grad_probe import PARAMS, draw_params, load_batch

    reference = jax_reference(draw_params(), *load_batch())
    probe = Path(__file__).with_name("grad_probe.py")
    running = {}
    for name in ("jax", "tensorflow", "torch"):  # one process per backend, side by side
        env = {**os.environ, "KERAS_BACKEND": name, "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [sys.executable, str(probe), str(tmp_path / f"{name}.npy")]
        running[name] = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    results = {}
    for name, process in running.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name}: {stderr[-3000:]}"
        results[name] = np.load(tmp_path / f"{name}.npy")
    # Conv biases in front of BN have a zero gradient by design (BN removes the mean):
    # float32 leaves cancellation noise there, checked by order of magnitude (SPEC §0.9).
    zero = reference[0] < 1e-9 * reference[0].max()
    assert [PARAMS[i][:2] for i in np.flatnonzero(zero)] == [("conv1", "bias"), ("conv2", "bias")]
    for row in range(2):  # norms, then mean |g|
        atol = 1e-7 * reference[row].max()
        for name, values in results.items():
            got, want = values[row][~zero], reference[row][~zero]
            assert_allclose(got, want, rtol=1e-5, atol=atol, err_msg=f"{name} vs reference")
            assert np.all(values[row][zero] < 1e-5 * reference[row].max()), name
            assert_allclose(got, results["jax"][row][~zero], rtol=1e-5, atol=atol, err_msg=name)


def test_logger_aggregates_many_tensors_per_group():
    """Above ``max_tensors`` entries, each layer's gradients become one group: its norm is
    the L2 norm of its tensors' gradients, its mean |g| their size-weighted mean; the
    matrices are float32."""
    layers = [keras.Input((4,))] + [keras.layers.Dense(4, name=f"d{i}") for i in range(6)]
    model = keras.Sequential(layers)
    model.compile(GradientCapture(keras.optimizers.SGD(0.01)), "mse")
    every = GradientLogger(every_n_steps=1, log_to_mlflow=False)
    grouped = GradientLogger(every_n_steps=1, max_tensors=8, log_to_mlflow=False)
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 4), "float32")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[every, grouped])
    full, groups = every.history, grouped.history
    assert len(full["labels"]) == 12 and groups["labels"] == [f"d{i}" for i in range(6)]
    assert groups["step_norms"].dtype == np.float32
    norms, mean_abs = full["last_norm"][-1], full["last_mean_abs"][-1]
    sizes = np.array([16, 4] * 6, "float64")
    assert_allclose(groups["last_norm"][-1],
                    np.sqrt(norms[0::2] ** 2 + norms[1::2] ** 2), rtol=1e-6)
    assert_allclose(groups["last_mean_abs"][-1],
                    (mean_abs[0::2] * 16 + mean_abs[1::2] * 4) / 20, rtol=1e-6)
    assert groups["step_norms"].shape == (2, 6)
    assert sizes.sum() == sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def test_per_block_norms_of_a_stacked_weight():
    """``slices``: the gradient of a stacked (L, d, d) weight measured per block, equal to
    the norms of its slices computed by hand; summaries per epoch, the matrix in history."""
    from depthlab.layers.scaled_residual import build_resnet

    model = build_resnet("res1", depth=6, width=4, beta=0.5, num_inputs=3, num_outputs=2,
                         seed=0)
    capture = GradientCapture(keras.optimizers.SGD(0.0), slices=("blocks/V",))
    model.compile(capture, "mse")
    logger = GradientLogger(every_n_steps=1, log_to_mlflow=False)
    x = np.random.default_rng(0).random((8, 3)).astype("float32")
    y = np.zeros((8, 2), "float32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[logger], shuffle=False)
    history = logger.history
    assert history["slice_labels"] == [f"blocks/V[{k}]" for k in range(6)]
    v = model.get_layer("blocks").V
    index = [i for i, var in enumerate(capture.tracked_variables) if var is v][0]
    full_norm = capture.read()["last_norm"][index]
    per_block = history["epoch_slice_norms"][-1]
    assert per_block.shape == (6,) and (per_block > 0).all()
    assert_allclose(np.sqrt(np.sum(per_block.astype("float64") ** 2)), full_norm, rtol=1e-5)
    assert history["step_slice_norms"].shape == (1, 6)
    config = capture.get_config()
    assert config["slices"] == ["blocks/V"]
    assert GradientCapture.from_config(config).slices == ("blocks/V",)
