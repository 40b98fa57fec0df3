"""TorchDefault: PyTorch's U(±1/sqrt(fan_in)) for kernels and biases (SPEC §0.3, §3.2, §3.7-8)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from depthlab.layers import TorchDefault, torch_fan_in


@pytest.mark.parametrize(
    ("shape", "depthwise", "expected"),
    [
        ((32, 100), False, 32),  # Dense (in, out) -> in
        ((3, 3, 3, 32), False, 27),  # VGG entry conv
        ((3, 3, 32, 32), False, 288),  # VGG conv
        ((5, 16, 8), False, 80),  # Conv1D (k, in, out)
        ((7, 7, 96, 1), True, 49),  # depthwise (kh, kw, C, 1) -> kh * kw
    ],
)
def test_torch_fan_in(shape, depthwise, expected):
    assert torch_fan_in(shape, depthwise=depthwise) == expected


def test_bias_needs_explicit_fan_in():
    with pytest.raises(ValueError, match="fan_in"):
        TorchDefault(seed=0)((32,))
    with pytest.raises(ValueError, match="fan_in"):
        TorchDefault(fan_in=0)


@pytest.mark.parametrize(("shape", "fan_in"), [((3, 3, 32, 32), 288), ((3, 3, 3, 32), 27)])
def test_kernel_range_and_std(shape, fan_in):
    values = keras.ops.convert_to_numpy(TorchDefault(seed=7)(shape))
    bound = 1.0 / math.sqrt(fan_in)
    assert values.shape == shape
    assert np.abs(values).max() <= bound
    assert np.abs(values).max() > 0.98 * bound  # fills the range
    assert values.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.05)
    assert abs(values.mean()) < 0.1 * bound


def test_bias_range_uses_given_fan_in():
    values = keras.ops.convert_to_numpy(TorchDefault(fan_in=288, seed=3)((2000,)))
    bound = 1.0 / math.sqrt(288)
    assert np.abs(values).max() <= bound
    assert np.abs(values).max() > 0.98 * bound
    assert values.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.05)


def test_same_range_as_variance_scaling_one_third_fan_in_uniform():
    """kaiming_uniform(a=sqrt 5) = VarianceScaling(1/3, fan_in, uniform): the same bound."""
    shape = (3, 3, 16, 8)
    ours = keras.ops.convert_to_numpy(TorchDefault(seed=11)(shape))
    keras_vs = keras.ops.convert_to_numpy(
        keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform", seed=11)(shape))
    bound = 1 / math.sqrt(3 * 3 * 16)
    for values in (ours, keras_vs):
        assert np.abs(values).max() <= bound and np.abs(values).max() > 0.97 * bound


def test_numpy_draw_is_identical_on_every_backend():
    """Weights come from numpy: pinned values for seed 0 hold whatever the backend."""
    values = keras.ops.convert_to_numpy(TorchDefault(fan_in=4, seed=0)((3,)))
    expected = np.random.default_rng(0).uniform(-0.5, 0.5, 3).astype(np.float32)
    np.testing.assert_array_equal(values, expected)


def test_depthwise_bound():
    values = keras.ops.convert_to_numpy(TorchDefault(depthwise=True, seed=0)((7, 7, 64, 1)))
    assert np.abs(values).max() <= 1.0 / 7.0
    assert np.abs(values).max() > 0.98 / 7.0


def test_seeded_is_deterministic():
    a = keras.ops.convert_to_numpy(TorchDefault(seed=5)((20, 30)))
    b = keras.ops.convert_to_numpy(TorchDefault(seed=5)((20, 30)))
    c = keras.ops.convert_to_numpy(TorchDefault(seed=6)((20, 30)))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_serialisation_round_trip():
    init = TorchDefault(fan_in=288, depthwise=False, seed=9)
    assert keras.saving.get_registered_name(TorchDefault) == "depthlab>TorchDefault"
    assert init.get_config() == {"fan_in": 288, "depthwise": False, "seed": 9}
    restored = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert isinstance(restored, TorchDefault)
    assert restored.get_config() == init.get_config()
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(restored((32,))), keras.ops.convert_to_numpy(init((32,)))
    )
    assert TorchDefault().get_config()["seed"] is None


def test_in_a_dense_layer():
    layer = keras.layers.Dense(
        50,
        kernel_initializer=TorchDefault(seed=0),
        bias_initializer=TorchDefault(fan_in=40, seed=1),
    )
    layer.build((None, 40))
    bound = 1.0 / math.sqrt(40)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    bias = keras.ops.convert_to_numpy(layer.bias)
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    assert np.abs(bias).max() > 0.5 * bound  # not Keras' zeros


def test_string_name_torch_default():
    layer = keras.layers.Conv2D(8, 3, kernel_initializer="torch_default")
    layer.build((None, 5, 5, 4))
    assert isinstance(layer.kernel_initializer, TorchDefault)
    kernel = keras.ops.convert_to_numpy(layer.kernel)
    assert np.abs(kernel).max() <= 1.0 / 6.0  # fan_in = 3 * 3 * 4 = 36
    assert np.abs(kernel).max() > 0.9 / 6.0
