"""Pre-activation residual block (layers/residual.py; SPEC §0.3 conventions)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from depthlab.layers.initializers import NumpyNormal
from depthlab.layers.residual import PreActBlock


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _conv(x, kernel, stride, pad):
    """Cross-correlation, NHWC, symmetric zero padding (torch semantics)."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    size = kernel.shape[0]
    rows = (xp.shape[1] - size) // stride + 1
    cols = (xp.shape[2] - size) // stride + 1
    out = 0.0
    for i in range(size):
        for j in range(size):
            window = xp[
                :,
                i : i + stride * (rows - 1) + 1 : stride,
                j : j + stride * (cols - 1) + 1 : stride,
            ]
            out = out + window @ kernel[i, j]
    return out


def _bn(x, w, name):
    scale = w[f"{name}/gamma"] / np.sqrt(w[f"{name}/moving_variance"] + 1e-5)
    return (x - w[f"{name}/moving_mean"]) * scale + w[f"{name}/beta"]


def _np_block(x, w, stride):
    pre = np.maximum(_bn(x, w, "bn1"), 0.0)
    skip = _conv(pre, w["shortcut/kernel"], stride, 0) if "shortcut/kernel" in w else x
    h = _conv(pre, w["conv1/kernel"], stride, 1)
    h = _conv(np.maximum(_bn(h, w, "bn2"), 0.0), w["conv2/kernel"], 1, 1)
    return h + skip


def _randomise(block, seed):
    rng = np.random.default_rng(seed)
    for v in block.weights:
        value = rng.standard_normal(v.shape)
        if "variance" in v.path:
            value = rng.uniform(0.5, 2.0, v.shape)
        v.assign(value.astype("float32"))


@pytest.mark.parametrize("filters,stride", [(3, 1), (4, 2), (5, 1)])
def test_inference_matches_numpy_reference(filters, stride):
    """Identity shortcut (3->3, stride 1) and 1x1 projections (stride 2; 3->5 channels)."""
    block = PreActBlock(filters, stride, kernel_initializer="zeros", name="blk")  # set below
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 3)).astype("float32")
    block.build(x.shape)
    _randomise(block, 1)
    weights = {v.path.split("/", 1)[1]: _np(v).astype(np.float64) for v in block.weights}
    assert ("shortcut/kernel" in weights) == (filters != 3 or stride != 1)
    expected = _np_block(x.astype(np.float64), weights, stride)
    out = _np(block(x, training=False))
    assert out.shape == (2, 3 if stride == 2 else 5, 3 if stride == 2 else 5, filters)
    assert tuple(block.compute_output_shape((None, 5, 5, 3))) == (None, *out.shape[1:])
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_parameter_counts_and_conventions():
    block = PreActBlock(8, 2, kernel_initializer="zeros")
    block.build((None, 8, 8, 4))
    trainable = sum(math.prod(v.shape) for v in block.trainable_weights)
    # BN(4) + conv 3x3 4->8 + BN(8) + conv 3x3 8->8 + 1x1 projection 4->8, no conv biases
    assert trainable == 2 * 4 + 9 * 4 * 8 + 2 * 8 + 9 * 8 * 8 + 4 * 8
    assert (block.bn1.epsilon, block.bn1.momentum) == (1e-5, 0.9)  # torch eps / momentum 0.1


def test_default_kernels_follow_torch_default():
    """U(+-1/sqrt(fan_in)), fan_in = 9 * in_channels (SPEC §0.3); one fresh draw per conv."""
    block = PreActBlock(16)
    block.build((None, 4, 4, 16))
    conv1, conv2 = _np(block.conv1.kernel), _np(block.conv2.kernel)
    bound = 1 / math.sqrt(9 * 16)
    for kernel in (conv1, conv2):
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.95 * bound
        assert kernel.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert not np.array_equal(conv1, conv2)


def _model(seed: int = 0) -> keras.Model:
    """Two blocks (identity, then stride-2 projection) and a head, drawn with numpy.

    Keras' random initialisers (TorchDefault included) compile one kernel per shape under
    JAX, ~5 s each on a loaded 2-core CPU; the default is covered by its own test.
    """
    init = NumpyNormal(0.2, seed=seed)
    inputs = keras.Input((6, 6, 3))
    x = PreActBlock(4, kernel_initializer=init, name="block1")(inputs)
    x = PreActBlock(8, stride=2, kernel_initializer=init, name="block2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, kernel_initializer=init, name="head")(x))


def test_one_training_step_updates_weights_and_statistics():
    model = _model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((8, 6, 6, 3)).astype("float32"), np.arange(8) % 10
    before = {v.path: _np(v) for v in model.weights}
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    for v in model.weights:  # trainable weights and BN moving statistics all change
        assert not np.array_equal(_np(v), before[v.path]), v.path


def test_keras_save_reload_identical_outputs(tmp_path):
    model = _model(3)
    x = np.random.default_rng(4).standard_normal((2, 6, 6, 3)).astype("float32")
    model.save(tmp_path / "preact.keras")
    reloaded = keras.saving.load_model(tmp_path / "preact.keras")
    np.testing.assert_array_equal(_np(reloaded(x, training=False)), _np(model(x, training=False)))
    block = model.get_layer("block2")
    assert PreActBlock.from_config(block.get_config()).get_config() == block.get_config()
    with pytest.raises(ValueError, match="stride"):
        PreActBlock(4, stride=0)
