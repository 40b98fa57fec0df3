"""ConvNeXt of the 1000-layer study and LayerScale (SPEC §1.2, §1.4, §1.7 items 1-5; §0.9)."""

from __future__ import annotations

import math
import re
from collections import Counter

import keras
import numpy as np
import pytest

from depthlab.layers.convnext import (
    ConvNeXtBlock,
    NumpyNormal,
    block_param_count,
    build_convnext,
    convnext_param_count,
    decay_mask,
    decay_variables,
    exclude_from_decay,
    layer_count,
)
from depthlab.layers.layerscale import LayerScale

# two stages keep the tests' distinct shapes (one JAX compilation each) few
TINY = {"dims": (8, 16), "input_shape": (4, 4, 3)}
ONE_STAGE = {"dims": (8,), "input_shape": (4, 4, 3)}  # the shapes of TINY's first stage
# E1 sweep, E4 READING, config-file depths and the 10k target (SPEC §1.1, §1.5)
COUNTS = {
    (2, 2, 2, 2): (26, 6_299_666),
    (3, 3, 9, 3): (56, 12_273_116),
    (3, 3, 27, 3): (110, 21_788_654),
    (6, 6, 54, 6): (218, 42_880_850),
    (14, 14, 125, 14): (503, 98_598_065),
    (28, 28, 250, 28): (1004, 196_499_672),
    (31, 31, 275, 31): (1106, 216_534_586),
    (45, 45, 400, 45): (1607, 314_436_193),
    (56, 56, 500, 56): (2006, 392_302_886),
    (112, 112, 1000, 112): (4010, 783_909_314),
    (280, 280, 2500, 280): (10_022, 1_958_728_598),
}


def _n_params(variables) -> int:
    return sum(math.prod(v.shape) for v in variables)


def _np(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def model26():
    return build_convnext((2, 2, 2, 2), seed=0)


@pytest.fixture(scope="module")
def model56():
    return build_convnext((3, 3, 9, 3), seed=1)


def _images(n: int, shape=(4, 4, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


def _sgd_step(model, x, y, lr: float = 0.1, eager: bool = False) -> tuple[list, list]:
    """Weights before and after one plain-SGD step: a zero gradient leaves a weight unchanged.

    ``eager`` gives the same gradients; under JAX it compiles each op separately, which was
    twice slower here than compiling the whole step.
    """
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=eager,
    )
    before = [_np(v) for v in model.trainable_variables]
    model.train_on_batch(x, y)
    return before, [_np(v) for v in model.trainable_variables]


# --- counts (§1.7 items 1-2, §0.9) -------------------------------------------------------


def test_layer_count_every_config():
    for depths, (layers, _) in COUNTS.items():
        assert layer_count(depths) == layers


def test_built_param_counts_match_spec_and_closed_form(model26, model56):
    assert _n_params(model26.trainable_weights) == 6_299_666
    assert _n_params(model56.trainable_weights) == 12_273_116
    assert convnext_param_count((2, 2, 2, 2)) == 6_299_666
    assert convnext_param_count((3, 3, 9, 3)) == 12_273_116


def test_closed_form_param_counts_of_deep_configs():
    for depths, (_, params) in COUNTS.items():
        assert convnext_param_count(depths) == params, depths
    # SPEC §1.2: per block 8C^2+17C+1, fixed part 696,458
    assert [block_param_count(c) for c in (64, 128, 256, 512)] == [
        33_857,
        133_249,
        528_641,
        2_105_857,
    ]
    assert convnext_param_count((0, 0, 0, 0)) == 696_458


def test_ablation_param_counts_built():
    """block_norm off drops 2C per block; skip off drops gamma (1 per block)."""
    for kwargs in ({"block_norm": False}, {"skip": False}, {"layerscale_trainable": False}):
        model = build_convnext((1, 2), **TINY, **kwargs)
        expected = convnext_param_count(
            (1, 2),
            TINY["dims"],
            block_norm=kwargs.get("block_norm", True),
            skip=kwargs.get("skip", True) and kwargs.get("layerscale_trainable", True),
        )
        assert _n_params(model.trainable_weights) == expected, kwargs


# --- shapes and init (§1.7 items 3-4) ----------------------------------------------------


def test_stage_output_shapes(model26):
    shapes = [model26.get_layer(f"stage{s}_block2").output.shape[1:] for s in range(1, 5)]
    assert shapes == [(32, 32, 64), (16, 16, 128), (8, 8, 256), (4, 4, 512)]
    assert model26.get_layer("stem_norm").output.shape[1:] == (32, 32, 64)
    assert model26.output.shape[1:] == (10,)


def test_init_statistics(model26):
    kernels = 0
    for v in model26.trainable_variables:
        value = _np(v)
        if v.name == "kernel":
            if value.size >= 1000:
                kernels += 1
                assert abs(value.std() / 0.02 - 1) < 0.05, v.path
                assert abs(value.mean()) < 0.02 * 5 / math.sqrt(value.size), v.path
        elif v.name == "bias" or v.name == "beta":
            np.testing.assert_array_equal(value, 0.0, err_msg=v.path)
        elif v.path.endswith("layerscale/gamma"):
            np.testing.assert_array_equal(value, np.zeros((1,)), err_msg=v.path)
        else:  # LayerNorm weight
            assert v.path.endswith("norm/gamma"), v.path
            np.testing.assert_array_equal(value, 1.0, err_msg=v.path)
    # >= 1000 values: 3 downsamples, 16 pointwise, 6 depthwise of stages 2-4 (>= 1,152), head
    # (5,120); the stem (192) and stage-1 depthwise kernels (576) are too small to test
    assert kernels == 3 + 16 + 6 + 1


def test_numpy_normal_is_seeded_and_serialisable():
    init = NumpyNormal(0.02, seed=7)
    a = _np(init((30, 40)))
    np.testing.assert_array_equal(a, _np(NumpyNormal.from_config(init.get_config())((30, 40))))
    expected = np.random.default_rng(7).standard_normal((30, 40), dtype=np.float32) * 0.02
    np.testing.assert_array_equal(a, expected.astype(np.float32))  # same on every backend


# --- the block (§1.2 item 3) --------------------------------------------------------------


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _np_block(x, w, activation, block_norm, skip):
    """Independent float64 reference: DWConv3x3 (pad 1) -> LN -> 1x1 4C -> act -> 1x1 C."""
    h_in, w_in = x.shape[1:3]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    h = sum(
        xp[:, i : i + h_in, j : j + w_in, :] * w["dwconv/kernel"][i, j, :, 0]
        for i in range(3)
        for j in range(3)
    )
    h = h + w["dwconv/bias"]
    if block_norm:
        mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
        h = (h - mu) / np.sqrt(var + 1e-5) * w["norm/gamma"] + w["norm/beta"]
    h = h @ w["pwconv1/kernel"] + w["pwconv1/bias"]
    h = {"gelu": _gelu, "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh}[activation](h)
    h = h @ w["pwconv2/kernel"] + w["pwconv2/bias"]
    return x + w["layerscale/gamma"] * h if skip else h


@pytest.mark.parametrize(
    "activation,block_norm,skip",
    [("gelu", True, True), ("sigmoid", False, True), ("tanh", True, False)],
)
def test_block_matches_numpy_reference(activation, block_norm, skip):
    block = ConvNeXtBlock(4, activation=activation, block_norm=block_norm, skip=skip, name="blk")
    x = _images(2, (5, 5, 4), seed=1)
    block.build(x.shape)
    rng = np.random.default_rng(2)
    block.set_weights([rng.standard_normal(v.shape).astype("float32") for v in block.weights])
    weights = {v.path.split("/", 1)[1]: _np(v).astype(np.float64) for v in block.weights}
    assert ("layerscale/gamma" in weights) == skip and ("norm/gamma" in weights) == block_norm
    expected = _np_block(x.astype(np.float64), weights, activation, block_norm, skip)
    np.testing.assert_allclose(_np(block(x)), expected, rtol=1e-4, atol=1e-4)


def test_block_with_gamma_zero_returns_input_exactly():
    block = ConvNeXtBlock(16, seed=3)
    x = _images(2, (6, 6, 16), seed=4)
    np.testing.assert_array_equal(_np(block(x)), x)


def test_gamma_zero_gradients_only_outside_blocks():
    """§1.6/§1.7 item 4: at gamma=0 every in-block weight has exactly zero gradient."""
    model = build_convnext((2, 1), seed=5, **TINY)
    before, after = _sgd_step(model, _images(4, seed=6), np.array([0, 1, 2, 3]))
    moved = {}
    for v, b, a in zip(model.trainable_variables, before, after, strict=True):
        moved[v.path] = not np.array_equal(b, a)
    in_block = {p: m for p, m in moved.items() if "_block" in p and "layerscale" not in p}
    assert len(in_block) == 3 * 8 and not any(in_block.values())  # 8 weights x 3 blocks
    gammas = [p for p in moved if p.endswith("layerscale/gamma")]
    assert len(gammas) == 3 and all(moved[p] for p in gammas)
    outside = [p for p in moved if "_block" not in p]  # stem, downsample, head: all move
    assert len(outside) == 4 + 4 + 4 and all(moved[p] for p in outside), outside


def test_frozen_layerscale_is_not_trained_and_survives_reload(tmp_path):
    model = build_convnext(
        (2,), seed=8, layerscale_init=1.0, layerscale_trainable=False, **ONE_STAGE
    )
    gammas = [v for v in model.weights if v.path.endswith("layerscale/gamma")]
    assert len(gammas) == 2 and not any(v.trainable for v in gammas)
    assert not any(v.path.endswith("layerscale/gamma") for v in model.trainable_weights)
    before, after = _sgd_step(model, _images(4, seed=9), np.array([3, 1, 4, 1]))
    np.testing.assert_array_equal(_np(gammas[0]), [1.0])
    paths = [v.path for v in model.trainable_variables]
    moved = paths.index("stage1_block1/pwconv2/kernel")
    assert not np.array_equal(before[moved], after[moved])  # gamma 1: the branch trains
    model.save(tmp_path / "frozen.keras")
    reloaded = keras.saving.load_model(tmp_path / "frozen.keras")
    assert _n_params(reloaded.trainable_weights) == _n_params(model.trainable_weights)


# --- weight-decay groups (§1.4, §1.7 item 5) ----------------------------------------------


def test_decay_mask_is_exactly_the_conv_dense_kernels(model26):
    mask = decay_mask(model26)
    decayed = decay_variables(model26)
    # SPEC §1.4: 26-layer: 29 decayed tensors / 6,281,280 values, 63 undecayed / 18,386
    assert (len(decayed), _n_params(decayed)) == (29, 6_281_280)
    kept = [v for v, d in zip(model26.trainable_variables, mask, strict=True) if not d]
    assert (len(kept), _n_params(kept)) == (63, 18_386)
    layers = Counter(
        re.sub(r"^stage\d+_(block\d+/)?", "", v.path.rsplit("/", 1)[0]) for v in decayed
    )
    assert layers == {
        "stem_conv": 1,
        "down_conv": 3,
        "dwconv": 8,
        "pwconv1": 8,
        "pwconv2": 8,
        "head": 1,
    }
    assert all(v.path.endswith("/kernel") for v in decayed)


def _zero_loss(y_true, y_pred):
    return 0.0 * keras.ops.sum(y_pred)  # every gradient exactly 0


def test_exclude_from_decay_with_adamw():
    """Zero gradients: Adam's step is 0, so only decoupled decay moves a weight."""
    model = build_convnext((1,), seed=10, layerscale_init=0.5, **ONE_STAGE)
    optimizer = keras.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5)
    exclude_from_decay(optimizer, model)
    model.compile(optimizer=optimizer, loss=_zero_loss)
    variables = model.trainable_variables
    before = [_np(v) for v in variables]
    model.train_on_batch(_images(2, seed=16), np.zeros((2, 10), "float32"))
    for v, b, d in zip(variables, before, decay_mask(model), strict=True):
        expected = b * (1 - 0.1 * 0.5) if d else b
        np.testing.assert_allclose(_np(v), expected, rtol=1e-6, atol=0, err_msg=v.path)
    assert sum(decay_mask(model)) == 5  # stem, dwconv, pwconv1, pwconv2, head


# --- serialisation, remat, LayerScale -----------------------------------------------------


def test_block_config_round_trip():
    block = ConvNeXtBlock(
        8, activation="tanh", block_norm=False, layerscale_init=1e-6, remat=True, seed=4
    )
    config = block.get_config()
    assert ConvNeXtBlock.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="activation"):
        ConvNeXtBlock(8, activation="relu")


def test_keras_save_reload_identical_outputs(tmp_path):
    model = build_convnext((2,), seed=11, layerscale_init=0.3, activation="tanh", **ONE_STAGE)
    x = _images(3, seed=12)
    model.save(tmp_path / "convnext.keras")
    reloaded = keras.saving.load_model(tmp_path / "convnext.keras")
    np.testing.assert_array_equal(_np(reloaded(x)), _np(model(x)))
    assert [v.path for v in reloaded.weights] == [v.path for v in model.weights]


def test_remat_gives_the_same_training_step():
    """keras.remat around each block (SPEC §0.2a/§0.6): same loss and update as without."""
    x, y = _images(4, seed=13), np.array([1, 0, 3, 2])
    results = []
    for remat in (False, True):
        model = build_convnext((2,), seed=14, layerscale_init=0.5, remat=remat, **ONE_STAGE)
        results.append(_sgd_step(model, x, y)[1])
    for plain, remat in zip(*results, strict=True):
        np.testing.assert_allclose(remat, plain, rtol=1e-5, atol=1e-6)


def test_layerscale_values_and_config():
    scalar = LayerScale(0.5)
    channel = LayerScale(2.0, per_channel=True, trainable=False)
    x = _images(1, (2, 2, 3), seed=15)
    np.testing.assert_allclose(_np(scalar(x)), 0.5 * x, rtol=1e-7)
    np.testing.assert_allclose(_np(channel(x)), 2.0 * x, rtol=1e-7)
    assert tuple(scalar.gamma.shape) == (1,) and tuple(channel.gamma.shape) == (3,)
    assert scalar.trainable_weights and not channel.trainable_weights
    channel.gamma.assign(np.array([1.0, -1.0, 0.0], "float32"))
    np.testing.assert_allclose(_np(channel(x)), x * np.array([1.0, -1.0, 0.0]), rtol=1e-7)
    clone = LayerScale.from_config(channel.get_config())
    assert clone.get_config() == channel.get_config() and clone.trainable is False


def test_memory_model_reproduces_the_spec_estimates():
    """SPEC §1.5: 1004 layers 2.9 GiB states + 11.0 GiB activations; 1607 (45-45-400-45)
    22.3 GiB, 7.4 with remat; 10,022 layers 46 GiB with remat, 139 without (bf16, batch 64)."""
    from depthlab.layers.convnext import memory_estimate

    gib = 2**30
    m1004 = memory_estimate((28, 28, 250, 28))
    assert round(m1004["states"] / gib, 1) == 2.9 and round(m1004["activations"] / gib, 1) == 11.0
    assert round(memory_estimate((45, 45, 400, 45))["total"] / gib, 1) == 22.3
    assert round(memory_estimate((45, 45, 400, 45), remat=True)["total"] / gib, 1) == 7.4
    big = (280, 280, 2500, 280)
    assert round(memory_estimate(big, remat=True)["total"] / gib) == 46
    assert round(memory_estimate(big)["total"] / gib) == 139


_REMAT_PROBE = """
import json
from depthlab import backend
backend.select("jax")
import keras
from depthlab.backend import memory
from depthlab.layers.convnext import build_convnext

loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
temp = {}
for remat in (False, True):
    for blocks in (2, 6):
        keras.backend.clear_session()
        model = build_convnext((blocks, 1, 1, 1), dims=(16, 32, 64, 128), seed=0, remat=remat)
        optimizer = keras.optimizers.AdamW(1e-3)
        optimizer.build(model.trainable_variables)
        temp[f"{remat}-{blocks}"] = memory.compiled_step_bytes(
            model, optimizer, loss, (8, 32, 32, 3), (8,))["temp"]
print(json.dumps(temp))
"""


@pytest.mark.once
def test_remat_cuts_the_per_block_memory_of_a_compiled_jax_step():
    """SPEC §1.5 acceptance on what XLA compiles: with per-block remat the training step's
    temp bytes per added block drop >= 4x. As XLA CPU ships, its cse_barrier_expander pass
    undoes the remat (slope 14.3 vs 12.7 MB/block here); ``backend.select("jax")`` keeps the
    barriers (0.5 MB/block), in a fresh process as every command starts."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "KERAS_BACKEND")}
    done = subprocess.run([sys.executable, "-c", _REMAT_PROBE], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    temp = json.loads(done.stdout.strip().splitlines()[-1])
    plain = (temp["False-6"] - temp["False-2"]) / 4
    remat = (temp["True-6"] - temp["True-2"]) / 4
    assert plain > 4 * remat > 0, temp
