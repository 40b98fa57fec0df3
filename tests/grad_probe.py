"""One captured training step of the SPEC §0.9 small CNN; run once per backend.

Usage: ``KERAS_BACKEND=<backend> python tests/grad_probe.py out.npy``

Writes a float64 array [2 x len(PARAMS)]: row 0 the L2 norm, row 1 the mean |g| of each
parameter's gradient, as captured by :class:`GradientCapture` in a real ``train_on_batch``
(Keras defaults except those named here). ``tests/test_gradient_capture.py`` compares
the backends with each other and with an independent float64 JAX reference built from
the same :func:`draw_params` and :func:`load_batch`. Keras is imported only in
:func:`main`, so the test can import the helpers without fixing a backend.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

SEED = 1234
BATCH = 16
EPSILON = 1e-5  # BatchNorm eps (PyTorch's, SPEC §0.3)
# (layer name, weight name, shape); Keras layer order, trainable weights only.
PARAMS = (
    ("conv1", "kernel", (3, 3, 3, 8)),
    ("conv1", "bias", (8,)),
    ("bn1", "gamma", (8,)),
    ("bn1", "beta", (8,)),
    ("conv2", "kernel", (3, 3, 8, 8)),
    ("conv2", "bias", (8,)),
    ("bn2", "gamma", (8,)),
    ("bn2", "beta", (8,)),
    ("head", "kernel", (8, 10)),
    ("head", "bias", (10,)),
)


def draw_params(seed: int = SEED) -> dict[str, np.ndarray]:
    """One seeded numpy draw of every trainable parameter, keyed ``"layer/weight"``."""
    rng = np.random.default_rng(seed)
    params = {}
    for layer, weight, shape in PARAMS:
        z = rng.standard_normal(shape)
        if weight == "kernel":
            value = z * np.sqrt(2.0 / np.prod(shape[:-1]))
        elif weight == "gamma":
            value = 1.0 + 0.1 * z
        else:
            value = 0.1 * z
        params[f"{layer}/{weight}"] = value.astype("float32")
    return params


def load_batch() -> tuple[np.ndarray, np.ndarray]:
    """The first 16 CIFAR-10 test images (/255, float32, NHWC) and their labels."""
    path = Path(os.environ.get("DEPTHLAB_DATA_DIR", "")) / "cifar10.npz"
    with np.load(path) as data:
        x = data["x_test"][:BATCH].astype("float32") / 255.0
        y = data["y_test"][:BATCH].astype("int32")
    return x, y


def build_model():
    """Conv3x3(8) -> BN -> ReLU -> Conv3x3(8, stride 2) -> BN -> ReLU -> GAP -> Dense 10."""
    import keras

    layers = keras.layers
    zeros = {"kernel_initializer": "zeros"}  # every weight is set by set_weights anyway
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            layers.Conv2D(8, 3, padding="same", name="conv1", **zeros),
            layers.BatchNormalization(epsilon=EPSILON, momentum=0.9, name="bn1"),
            layers.ReLU(),
            layers.Conv2D(8, 3, strides=2, padding="same", name="conv2", **zeros),
            layers.BatchNormalization(epsilon=EPSILON, momentum=0.9, name="bn2"),
            layers.ReLU(),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10, name="head", **zeros),
        ]
    )


def main(out: str) -> None:
    import keras

    from depthlab.callbacks.gradient_capture import GradientCapture

    model = build_model()
    params = draw_params()
    keys = {id(w): f"{layer.name}/{w.name}" for layer in model.layers for w in layer.weights}
    # set_weights over all weights: trainable from the draw, BN moving stats at 0 / 1.
    weights = []
    for variable in model.weights:
        key = keys[id(variable)]
        if key in params:
            weights.append(params[key])
        else:
            fill = 1.0 if key.endswith("moving_variance") else 0.0
            weights.append(np.full(variable.shape, fill, "float32"))
    model.set_weights(weights)
    capture = GradientCapture(keras.optimizers.SGD(learning_rate=0.0))
    model.compile(capture, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = load_batch()
    model.train_on_batch(x, y)  # BN in training mode: batch statistics
    values = capture.read()
    paths = [keys[id(v)] for v in capture.tracked_variables]
    order = [paths.index(f"{layer}/{weight}") for layer, weight, _ in PARAMS]
    result = np.stack([values["last_norm"][order], values["last_mean_abs"][order]])
    np.save(out, result.astype("float64"))
    print(keras.backend.backend(), dict(zip(paths, values["last_norm"].tolist(), strict=True)))


if __name__ == "__main__":
    main(sys.argv[1])
