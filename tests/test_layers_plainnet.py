"""PlainNet layers and builders, max-norm layers (SPEC §4.2, §4.4, §4.7 checks 1, 3, 4, 5, 9)."""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import pytest

from depthlab.layers import (
    PLAINNET_VARIANTS,
    TABLE_II_VARIANTS,
    MaxNormConv2D,
    MaxNormDense,
    PlainBlock,
    PlainConvBlock,
    build_conv_plainnet,
    build_plainnet,
    plainnet_activation_layers,
    plainnet_switches,
)

COIL_DEPTHS = (3, 5, 10, 15, 20, 40, 50)
COIL_BN = (495_920, 677_720, 1_132_220, 1_586_720, 2_041_220, 3_859_220, 4_768_220)
COIL_NO_BN = (494_120, 674_720, 1_126_220, 1_577_720, 2_029_220, 3_835_220, 4_738_220)


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _count(model) -> int:
    return sum(math.prod(v.shape) for v in model.trainable_weights)


@functools.cache
def _usps_proposed():
    """USPS D=100 proposed net with the paper's weight decay 1e-4 (built once)."""
    return build_plainnet(100, "proposed", 256, 10, weight_decay=1e-4, seed=0)


@functools.cache
def _conv_net():
    return build_conv_plainnet(seed=0)


@pytest.mark.parametrize(
    ("depth", "with_bn", "without_bn"), list(zip(COIL_DEPTHS, COIL_BN, COIL_NO_BN, strict=True))
)
def test_table_i_counts_coil20(depth, with_bn, without_bn):
    """Table I: COIL-20 32x32 (1024 -> 20), trainable = sum of trainable weight sizes (§0.9)."""
    assert _count(build_plainnet(depth, "bn", 1024, 20)) == with_bn
    assert _count(build_plainnet(depth, "naive", 1024, 20)) == without_bn
    formula = 1024 * 300 + 300 + (depth - 1) * (300 * 300 + 300) + 300 * 20 + 20
    assert without_bn == formula and with_bn == formula + 600 * depth


def test_usps_100_layer_counts():
    model = _usps_proposed()
    assert _count(model) == 9_079_810
    assert model.count_params() == 9_079_810 + 600 * 100  # + BN moving statistics
    assert _count(build_plainnet(100, "lrelu_maxnorm", 256, 10)) == 9_019_810


def test_blocks_named_in_depth_order_and_exposed():
    model = build_plainnet(4, "proposed", 16, 3, width=8, seed=0)
    blocks = plainnet_activation_layers(model)
    assert [b.name for b in blocks] == ["block_1", "block_2", "block_3", "block_4"]
    probe = keras.Model(model.inputs, [b.output for b in blocks] + [model.output])
    x = np.random.default_rng(0).uniform(size=(5, 16)).astype("float32")
    *hidden, probs = probe.predict(x, verbose=0)
    assert [h.shape for h in hidden] == [(5, 8)] * 4
    # The last block's output feeds the head: softmax(output(h_4)) = the model's output.
    expected = _np(keras.ops.softmax(model.get_layer("output")(hidden[-1])))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)


def test_proposed_net_constraints_slope_and_regularisers():
    model = _usps_proposed()
    blocks = plainnet_activation_layers(model)
    assert len(blocks) == 100
    for block in blocks:
        assert isinstance(block.linear, MaxNormDense)
        constraint = block.linear.kernel_constraint
        assert isinstance(constraint, keras.constraints.MaxNorm)
        assert constraint.max_value == 3.0 and constraint.axis == 0
        assert isinstance(block.act, keras.layers.LeakyReLU)
        assert block.act.negative_slope == 0.3
        assert block.bn.epsilon == 1e-3 and block.bn.momentum == 0.99
    output = model.get_layer("output")
    assert output.kernel_constraint is None and output.kernel.constraint is None
    # Weight decay 1e-4 = coupled L2 on kernels only: L2(5e-5), gradient 1e-4 * W (§4.4).
    for v in model.weights:
        if v.path.endswith("/kernel"):
            assert isinstance(v.regularizer, keras.regularizers.L2), v.path
            assert v.regularizer.l2 == pytest.approx(5e-5), v.path
        else:
            assert v.regularizer is None, v.path
    assert len(model.losses) == 101


def test_leaky_relu_slope_hand_computed():
    block = PlainBlock(2, activation="leaky_relu", kernel_initializer="he_uniform")
    block.build((None, 2))
    block.linear.kernel.assign(np.eye(2, dtype="float32"))
    np.testing.assert_allclose(_np(block(np.array([[-1.0, 2.0]], "float32"))), [[-0.3, 2.0]])
    relu = PlainBlock(2, activation="relu")
    relu.build((None, 2))
    relu.linear.kernel.assign(np.eye(2, dtype="float32"))
    np.testing.assert_allclose(_np(relu(np.array([[-1.0, 2.0]], "float32"))), [[0.0, 2.0]])


@pytest.mark.parametrize("variant", TABLE_II_VARIANTS + ("naive", "uniform", "he", "bn"))
def test_variant_switches(variant):
    switches = PLAINNET_VARIANTS[variant]
    model = build_plainnet(2, variant, 16, 3, width=8, seed=1)
    for block in plainnet_activation_layers(model):
        assert (block.bn is not None) == switches["batch_norm"]
        if switches["activation"] == "leaky_relu":
            assert isinstance(block.act, keras.layers.LeakyReLU)
            assert block.act.negative_slope == 0.3
        else:
            assert isinstance(block.act, keras.layers.ReLU) and block.act.negative_slope == 0
        assert isinstance(block.linear, MaxNormDense) == (switches["max_norm"] is not None)
        assert block.kernel_initializer == switches["kernel_initializer"]
        np.testing.assert_array_equal(_np(block.linear.bias), np.zeros(8))
    if variant in TABLE_II_VARIANTS:
        assert switches["kernel_initializer"] == "he_uniform"


def test_kernel_initialiser_ranges():
    fan_in, units = 200, 300
    bounds = {
        "glorot_uniform": math.sqrt(6.0 / (fan_in + units)),
        "he_uniform": math.sqrt(6.0 / fan_in),
        "uniform": 0.05,
    }
    for name, bound in bounds.items():
        block = PlainBlock(units, kernel_initializer=name, seed=0)
        block.build((None, fan_in))
        kernel = _np(block.linear.kernel)
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.98 * bound, name
    block = PlainBlock(units, kernel_initializer="he_normal", seed=0)
    block.build((None, fan_in))
    kernel = _np(block.linear.kernel)
    assert kernel.std() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.05)  # truncated normal
    # Truncated at 2 sigma of the pre-truncation normal (Keras' torch backend redraws only
    # 4 times, so it lets ~4e-6 of the draws through).
    beyond = np.abs(kernel) > 2 * math.sqrt(2.0 / fan_in) / 0.87962566103423978 + 1e-6
    assert beyond.mean() < 1e-4


def test_switch_overrides_and_errors():
    assert plainnet_switches("proposed", batch_norm=False, activation="relu") == {
        "batch_norm": False,
        "activation": "relu",
        "max_norm": 3.0,
        "kernel_initializer": "he_uniform",
    }
    with pytest.raises(ValueError, match="variant"):
        build_plainnet(3, "resnet", 16, 3)
    with pytest.raises(ValueError, match="Unknown PlainNet switches"):
        plainnet_switches("bn", dropout=0.5)
    with pytest.raises(ValueError, match="activation"):
        PlainBlock(8, activation="gelu")


def _one_step(layer, x, y, lr):
    """One full-batch SGD step on a model made of ``layer`` alone; return its kernel."""
    inputs = keras.Input(x.shape[1:])
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0)
    return _np(layer.kernel)


def _max_norm(w, axis, max_value=3.0):
    """SPEC §4.2: w * min(||w||, c) / (1e-7 + ||w||), norm over each unit's incoming vector."""
    norms = np.sqrt(np.sum(w.astype("float64") ** 2, axis=axis, keepdims=True))
    return w * np.minimum(norms, max_value) / (1e-7 + norms)


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_max_norm_after_a_large_step(kind):
    rng = np.random.default_rng(0)
    if kind == "dense":
        x, y = rng.normal(size=(16, 6)), rng.normal(size=(16, 4)) * 10
        plain, constrained, axis = keras.layers.Dense(4), MaxNormDense(4), (0,)
    else:
        x, y = rng.normal(size=(4, 5, 5, 2)), rng.normal(size=(4, 5, 5, 3)) * 10
        plain = keras.layers.Conv2D(3, 3, padding="same")
        constrained, axis = MaxNormConv2D(3, 3, padding="same"), (0, 1, 2)
    x, y = x.astype("float32"), y.astype("float32")
    for layer in (plain, constrained):
        layer.build(x.shape)
    weights = [w.astype("float32") for w in plain.get_weights()]
    constrained.set_weights(weights)
    unconstrained = _one_step(plain, x, y, lr=10.0)
    kernel = _one_step(constrained, x, y, lr=10.0)
    unconstrained_norms = np.sqrt((unconstrained**2).sum(axis=axis))
    assert unconstrained_norms.max() > 3.5  # the step alone would break the bound
    norms = np.sqrt((kernel.astype("float64") ** 2).sum(axis=axis))
    assert norms.max() <= 3.0 * (1 + 1e-5)
    np.testing.assert_allclose(kernel, _max_norm(unconstrained, axis), rtol=1e-5, atol=1e-6)


def test_max_norm_layers_config():
    dense = MaxNormDense(7, max_value=2.5, name="d")
    assert dense.kernel_constraint.max_value == 2.5 and dense.kernel_constraint.axis == 0
    config = dense.get_config()
    assert config["max_value"] == 2.5 and "kernel_constraint" not in config
    restored = MaxNormDense.from_config(config)
    assert restored.kernel_constraint.max_value == 2.5 and restored.units == 7
    conv = MaxNormConv2D(4, 3)
    assert conv.kernel_constraint.max_value == 3.0 and conv.kernel_constraint.axis == [0, 1, 2]
    assert MaxNormConv2D.from_config(conv.get_config()).kernel_constraint.axis == [0, 1, 2]
    with pytest.raises(ValueError, match="max_value"):
        MaxNormDense(3, max_value=0)
    with pytest.raises(ValueError, match="kernel_constraint"):
        MaxNormDense(3, kernel_constraint="non_neg")


def test_proposed_training_step_keeps_rows_bounded():
    """A short step at lr 0.1 keeps every hidden kernel's unit norms <= 3(1 + 1e-5) (§4.5 Q8)."""
    model = build_plainnet(3, "proposed", 16, 4, width=12, weight_decay=1e-4, seed=2)
    for block in plainnet_activation_layers(model):  # start at the bound
        w = _np(block.linear.kernel)
        block.linear.kernel.assign(w * 3.0 / np.linalg.norm(w, axis=0))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy"
    )
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(32, 16)).astype("float32"), rng.integers(0, 4, size=32)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # two steps
    assert np.all(np.isfinite(history.history["loss"]))
    for block in plainnet_activation_layers(model):
        norms = np.linalg.norm(_np(block.linear.kernel).astype("float64"), axis=0)
        assert norms.max() <= 3.0 * (1 + 1e-5)
        assert norms.max() > 2.5  # the constraint, not the step, set the scale


def test_saved_plainnet_reloads(tmp_path):
    model = build_plainnet(2, "proposed", 16, 3, width=8, weight_decay=1e-4, seed=3)
    x = np.random.default_rng(2).uniform(size=(4, 16)).astype("float32")
    model.save(tmp_path / "plain.keras")
    reloaded = keras.saving.load_model(tmp_path / "plain.keras")
    block = reloaded.get_layer("block_1")
    assert isinstance(block, PlainBlock) and isinstance(block.linear, MaxNormDense)
    assert block.linear.kernel_constraint.max_value == 3.0
    assert block.linear.kernel.regularizer.l2 == pytest.approx(5e-5)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), model.predict(x, verbose=0))
    conv_block = PlainConvBlock(8, 3, name="block_7")
    assert (
        PlainConvBlock.from_config(conv_block.get_config()).get_config() == conv_block.get_config()
    )


def test_conv_plainnet_table_a1():
    model = _conv_net()
    assert _count(model) == 723_642
    assert model.count_params() == 729_018
    blocks = plainnet_activation_layers(model)
    assert [b.name for b in blocks] == [f"block_{n}" for n in range(1, 51)]
    convs = [b.linear for b in blocks]
    assert all(isinstance(c, MaxNormConv2D) and not c.use_bias for c in convs)
    assert all(c.kernel_constraint.axis == [0, 1, 2] for c in convs)
    assert all(c.kernel_constraint.max_value == 3.0 for c in convs)
    assert all(b.act.negative_slope == 0.3 and b.bn is not None for b in blocks)
    assert convs[48].filters == 96 and convs[48].kernel_size == (3, 3)  # Conv_49 (READING)
    assert convs[49].filters == 128
    shapes = {name: model.get_layer(name).output.shape for name in ("pool_1", "pool_2")}
    assert shapes == {"pool_1": (None, 16, 16, 48), "pool_2": (None, 7, 7, 80)}
    assert blocks[0].output.shape == (None, 32, 32, 16)
    assert model.get_layer("global_average_pool").output.shape == (None, 128)
    assert model.output_shape == (None, 10)
    assert model.get_layer("output").kernel_constraint is None
