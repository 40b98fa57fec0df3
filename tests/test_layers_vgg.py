"""VGG08/VGG38 layers and builder: architecture, counts, labels, init (SPEC §3.2, §3.4, §3.7)."""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import pytest

from depthlab.layers import (
    VGGEntryBlock,
    VGGProcessingBlock,
    VGGReductionBlock,
    build_vgg,
    gradient_flow_label,
    gradient_flow_labels,
    vgg_depth,
)


@functools.cache
def _model(num_blocks, norm, residual, num_classes=100, bn_in_reduction=True):
    """Full-size models, built once per configuration (no forward pass)."""
    return build_vgg(
        num_blocks, norm, residual, num_classes, bn_in_reduction=bn_in_reduction, seed=0
    )


def _trainable_count(model) -> int:
    return sum(math.prod(v.shape) for v in model.trainable_weights)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _sublayers(model) -> list[keras.layers.Layer]:
    """conv_0, bn_0, conv_1, bn_1 of every block, in model order."""
    names = ("conv_0", "bn_0", "conv_1", "bn_1")
    return [getattr(layer, n) for layer in model.layers for n in names if getattr(layer, n, None)]


def _convs(model):
    return [sub for sub in _sublayers(model) if isinstance(sub, keras.layers.Conv2D)]


@pytest.mark.parametrize(
    ("num_blocks", "norm", "residual", "num_classes", "bn_in_reduction", "expected"),
    [
        (0, False, False, 100, True, 59_716),  # VGG08
        (5, False, False, 100, True, 336_196),  # VGG38
        (5, False, True, 100, True, 336_196),  # VGG38 RC
        (5, True, False, 100, True, 338_500),  # VGG38 BN
        (5, True, True, 100, True, 338_500),  # VGG38 BN+RC
        (5, True, False, 100, False, 338_116),  # BN in processing blocks only
        (0, False, False, 10, True, 56_746),
        (5, False, False, 10, True, 333_226),
        (5, True, True, 10, True, 335_530),
    ],
)
def test_trainable_parameter_counts(
    num_blocks, norm, residual, num_classes, bn_in_reduction, expected
):
    model = _model(num_blocks, norm, residual, num_classes, bn_in_reduction)
    assert _trainable_count(model) == expected


@pytest.mark.parametrize(("num_blocks", "depth", "convs"), [(0, 8, 7), (5, 38, 37)])
def test_depth_and_biases(num_blocks, depth, convs):
    model = _model(num_blocks, False, False)
    assert vgg_depth(num_blocks) == depth
    assert len(_convs(model)) == convs
    assert len([layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]) == 1
    biases = {v.path for v in model.trainable_weights if v.path.endswith("/bias")}
    expected = {f"reduction_block_{i}/conv_{k}/bias" for i in range(3) for k in range(2)}
    assert biases == expected | {"logit_linear_layer/bias"}
    assert all(conv.kernel_size == (3, 3) and conv.strides == (1, 1) for conv in _convs(model))
    assert all(conv.padding == "same" and conv.filters == 32 for conv in _convs(model))
    assert model.output_shape == (None, 100)


def _expected_labels(num_blocks: int, norm: bool) -> list[str]:
    sub = ["conv_0", "bn_0", "conv_1", "bn_1"] if norm else ["conv_0", "conv_1"]
    labels = ["input_conv_conv_0", "input_conv_bn_0"]
    for i in range(3):
        labels += [f"block_{i}_{j}_{s}" for j in range(num_blocks) for s in sub]
        labels += [f"reduction_block_{i}_{s}" for s in sub]
    return labels + ["weight_logit_linear_layer"]


@pytest.mark.parametrize(
    ("num_blocks", "norm", "residual", "count"),
    [(0, False, False, 9), (5, False, False, 39), (5, False, True, 39), (5, True, False, 75)],
)
def test_gradient_flow_labels(num_blocks, norm, residual, count):
    model = _model(num_blocks, norm, residual)
    labelled = gradient_flow_labels(model)
    labels = [label for label, _ in labelled]
    assert len(labels) == count
    assert labels == _expected_labels(num_blocks, norm)
    assert labels[:2] == ["input_conv_conv_0", "input_conv_bn_0"]
    # Every trainable weight is either labelled or a bias / BN beta (torch's BN "bias").
    unlabelled = [v.path for v in model.trainable_weights if gradient_flow_label(v) is None]
    assert all(p.endswith(("/bias", "/beta")) for p in unlabelled)
    assert len(unlabelled) + count == len(model.trainable_weights)
    ordered = [v for _, v in labelled]
    assert ordered == [v for v in model.trainable_weights if gradient_flow_label(v)]


def test_gradient_flow_labels_bn_rc_ends():
    labels = [label for label, _ in gradient_flow_labels(_model(5, True, True))]
    assert len(labels) == 75
    assert labels[2:6] == [f"block_0_0_{s}" for s in ("conv_0", "bn_0", "conv_1", "bn_1")]
    assert labels[-2:] == ["reduction_block_2_bn_1", "weight_logit_linear_layer"]


def test_variable_paths():
    paths = [v.path for v in _model(5, True, True).trainable_weights]
    assert paths[:4] == [
        "input_conv/conv_0/kernel",
        "input_conv/bn_0/gamma",
        "input_conv/bn_0/beta",
        "block_0_0/conv_0/kernel",
    ]
    assert paths[-2:] == ["logit_linear_layer/kernel", "logit_linear_layer/bias"]


def test_torch_default_init_bounds_and_std():
    """Acceptance 8 of §3.7: within ±1/sqrt(fan_in), std = bound/sqrt(3) ±5 %."""
    model = _model(5, True, True)
    checked = 0
    for v in model.trainable_weights:
        if not v.path.endswith(("/kernel", "/bias")):
            continue
        if v.path.startswith("input_conv/"):
            fan_in = 27
        elif v.path.startswith("logit_linear_layer/"):
            fan_in = 32
        else:
            fan_in = 288
        bound = 1.0 / math.sqrt(fan_in)
        values = _np(v)
        assert np.abs(values).max() <= bound, v.path
        if values.size >= 864:
            assert values.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.05), v.path
            assert np.abs(values).max() > 0.98 * bound, v.path
        checked += 1
    assert checked == 37 + 6 + 2  # convs, reduction biases, linear kernel + bias
    assert 1.0 / math.sqrt(27) == pytest.approx(0.19245, abs=1e-5)
    assert 1.0 / math.sqrt(288) == pytest.approx(0.058926, abs=1e-6)
    assert 1.0 / math.sqrt(32) == pytest.approx(0.176777, abs=1e-6)


def test_batchnorm_torch_defaults():
    bns = [
        sub
        for sub in _sublayers(_model(5, True, True))
        if isinstance(sub, keras.layers.BatchNormalization)
    ]
    assert len(bns) == 1 + 30 + 6
    for bn in bns:
        assert bn.epsilon == 1e-5 and bn.momentum == 0.9
        np.testing.assert_array_equal(_np(bn.gamma), np.ones(32))
        np.testing.assert_array_equal(_np(bn.beta), np.zeros(32))
        np.testing.assert_array_equal(_np(bn.moving_mean), np.zeros(32))
        np.testing.assert_array_equal(_np(bn.moving_variance), np.ones(32))


def test_plain_vgg_has_bn_only_in_entry():
    model = _model(5, False, False)
    bns = [p for p in (v.path for v in model.trainable_weights) if "/bn_" in p]
    assert bns == ["input_conv/bn_0/gamma", "input_conv/bn_0/beta"]


def test_seed_makes_init_deterministic():
    # Full-width VGG08 (C = 10): the weight shapes of the count tests, so no new JAX compiles.
    a, b, c = (build_vgg(0, True, False, 10, seed=s) for s in (3, 3, 4))
    for va, vb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(va, vb)
    kernels_a = [_np(v) for v in a.trainable_weights if v.path.endswith("kernel")]
    kernels_c = [_np(v) for v in c.trainable_weights if v.path.endswith("kernel")]
    assert not any(np.allclose(x, y) for x, y in zip(kernels_a, kernels_c, strict=True))
    # Distinct weights get distinct draws (no two kernels equal up to scale).
    firsts = [k.ravel()[0] / np.abs(k).max() for k in kernels_a]
    assert len(set(np.round(firsts, 6))) == len(firsts)


def _conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """3x3 stride-1 convolution with symmetric zero padding 1 (torch ``padding=1``), NHWC."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy : dy + h, dx : dx + w, :] @ kernel[dy, dx]
    return out if bias is None else out + bias


def _lrelu(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, 0.01 * x)


@pytest.mark.parametrize("residual", [True, False])
def test_processing_block_hand_computed(residual):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 5, 3)).astype("float32")
    k0, k1 = (rng.normal(size=(3, 3, 3, 3)).astype("float32") * 0.3 for _ in range(2))
    block = VGGProcessingBlock(3, norm=False, residual=residual, name="block_0_0")
    block.build((None, 5, 5, 3))
    block.set_weights([k0, k1])
    expected = _conv_same(_lrelu(_conv_same(x, k0)), k1)
    expected = _lrelu(expected + x if residual else expected)
    np.testing.assert_allclose(_np(block(x)), expected, rtol=1e-5, atol=1e-5)


def test_reduction_block_hand_computed():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 4, 6, 2)).astype("float32")
    k0 = rng.normal(size=(3, 3, 2, 3)).astype("float32") * 0.3
    k1 = rng.normal(size=(3, 3, 3, 3)).astype("float32") * 0.3
    b0, b1 = rng.normal(size=3).astype("float32"), rng.normal(size=3).astype("float32")
    block = VGGReductionBlock(3, norm=False, name="reduction_block_0")
    block.build((None, 4, 6, 2))
    block.set_weights([k0, b0, k1, b1])
    h = _lrelu(_conv_same(x, k0, b0))
    h = h.reshape(2, 2, 2, 3, 2, 3).mean(axis=(2, 4))  # AvgPool 2x2 stride 2
    expected = _lrelu(_conv_same(h, k1, b1))
    out = _np(block(x))
    assert out.shape == (2, 2, 3, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_entry_block_inference_mode():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(1, 4, 4, 3)).astype("float32")
    kernel = rng.normal(size=(3, 3, 3, 4)).astype("float32") * 0.3
    block = VGGEntryBlock(4)
    assert block.name == "input_conv"
    block.build((None, 4, 4, 3))
    block.conv_0.kernel.assign(kernel)
    expected = _lrelu(_conv_same(x, kernel) / np.sqrt(1.0 + 1e-5))  # BN at init, eval mode
    np.testing.assert_allclose(_np(block(x, training=False)), expected, rtol=1e-5, atol=1e-6)


def test_residual_block_needs_matching_channels():
    with pytest.raises(ValueError, match="input channels"):
        VGGProcessingBlock(8, norm=False, residual=True).build((None, 4, 4, 3))


@pytest.mark.parametrize(
    "layer",
    [
        VGGEntryBlock(16, seed=1),
        VGGProcessingBlock(8, norm=True, residual=True, seed=2, name="block_1_2"),
        VGGReductionBlock(8, norm=False, seed=3, name="reduction_block_1"),
    ],
    ids=["entry", "processing", "reduction"],
)
def test_block_config_round_trip(layer):
    config = layer.get_config()
    restored = layer.__class__.from_config(config)
    assert restored.get_config() == config
    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config


def _small_model(seed=0):
    """Entry, one BN+RC processing block, one reduction block, head; 8x8 inputs."""
    return build_vgg(1, True, True, 10, num_stages=1, input_shape=(8, 8, 3), seed=seed)


def test_saved_model_gives_identical_outputs(tmp_path):
    model = _small_model()
    x = np.random.default_rng(3).normal(size=(4, 8, 8, 3)).astype("float32")
    path = tmp_path / "vgg.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    assert isinstance(reloaded.get_layer("block_0_0"), VGGProcessingBlock)
    assert [v.path for v in reloaded.trainable_weights] == [v.path for v in model.trainable_weights]
    np.testing.assert_array_equal(_np(reloaded(x, training=False)), _np(model(x, training=False)))


def test_one_training_step():
    model = _small_model(seed=1)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-8),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 10, size=8)
    before = model.get_weights()
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert np.isfinite(loss) and loss == pytest.approx(math.log(10), abs=1.0)
    after = model.get_weights()
    changed = [not np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
    assert all(changed)  # every trainable weight moved, BN moving statistics too
