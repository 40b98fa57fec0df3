"""The CIFAR-10 ConvNeXt of the 1000-layer study (SPEC §1.2, exact; §1.4 decay groups).

Reference: melgor/1k_cnn_layers @ afdf268, src/convnext_v2.py (``Block``, ``ConvNeXt``) and
timm's ``convnext.py`` layout (block -> stages -> model -> helpers). Channels-last (NHWC,
SPEC §0.3); the block's 1x1 convolutions are ``Dense`` layers on the channel axis, as in the
reference's ``nn.Linear`` (same parameters and arithmetic as a 1x1 convolution).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import keras
import numpy as np
from keras import layers

from depthlab.layers.initializers import NumpyNormal, sub_seed
from depthlab.layers.layerscale import LayerScale

INIT_STD = 0.02  # every Conv/Linear weight ~ N(0, 0.02^2), plain normal (SPEC §1.2)
LN_EPS = 1e-5  # the reference's LayerNorm eps (SPEC §0.3, §1.2)
ACTIVATIONS = ("gelu", "sigmoid", "tanh")
DEFAULT_DEPTHS = (2, 2, 2, 2)
DEFAULT_DIMS = (64, 128, 256, 512)


def _normal(seed: int | None) -> keras.initializers.Initializer:
    """N(0, 0.02^2) (not truncated); ``seed`` None draws fresh values."""
    return NumpyNormal(INIT_STD, seed)


def _layer_norm(name: str) -> layers.LayerNormalization:
    """LayerNorm over the channel axis only, eps 1e-5, affine (SPEC §1.2)."""
    return layers.LayerNormalization(axis=-1, epsilon=LN_EPS, name=name)



@keras.saving.register_keras_serializable(package="depthlab")
class ConvNeXtBlock(keras.layers.Layer):
    """One ConvNeXt block: out = x + gamma * h(x), or h(x) without skip (SPEC §1.2 item 3).

    h = DWConv 3x3 (bias, padding 1) -> LN(C) -> 1x1 C->4C (bias) -> act -> 1x1 4C->C (bias).
    Kernels ~ N(0, 0.02^2), biases 0, gamma = ``layerscale_init``.

    Args:
        dim: channels C (input and output).
        activation: "gelu" (exact), "sigmoid" or "tanh"; replaces only the block
            activation (E2). Defaults to "gelu".
        block_norm: keep the in-block LayerNorm (E2 ablation). Defaults to True.
        skip: residual connection. ``False`` returns h with no identity term and no gamma
            (READING of SPEC §1.2). Defaults to True.
        layerscale_init: initial gamma (E3: 0, 1e-6, 1). Defaults to 0.0.
        layerscale_trainable: ``False`` freezes gamma (excluded from the optimiser).
            Defaults to True.
        remat: recompute the block in the backward pass (``keras.remat`` around the whole
            block, SPEC §0.2a/§0.6), so only its input is kept. Defaults to False.
        seed: seed of the three kernel initialisers (``seed``, ``seed + 1``, ``seed + 2``);
            None draws fresh values. Defaults to None.
        **kwargs: base ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(
        self,
        dim: int,
        activation: str = "gelu",
        block_norm: bool = True,
        skip: bool = True,
        layerscale_init: float = 0.0,
        layerscale_trainable: bool = True,
        remat: bool = False,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(dim) < 1:
            raise ValueError(f"dim must be a positive integer. Received: dim={dim}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {ACTIVATIONS}. Received: activation={activation}"
            )
        # === Config ===
        self.dim = int(dim)
        self.activation = activation
        self.block_norm = bool(block_norm)
        self.skip = bool(skip)
        self.layerscale_init = float(layerscale_init)
        self.layerscale_trainable = bool(layerscale_trainable)
        self.remat = bool(remat)
        self.seed = seed
        # === Layers ===
        self._act = keras.activations.get(activation)  # gelu: the exact erf form, as torch
        self.dwconv = layers.DepthwiseConv2D(
            3,
            padding="same",  # stride 1: pads 1 on every side, like torch padding=1
            depthwise_initializer=_normal(sub_seed(seed, 0)),
            bias_initializer="zeros",
            name="dwconv",
        )
        self.norm = _layer_norm("norm") if self.block_norm else None
        self.pwconv1 = layers.Dense(
            4 * self.dim, kernel_initializer=_normal(sub_seed(seed, 1)), name="pwconv1"
        )
        self.pwconv2 = layers.Dense(
            self.dim, kernel_initializer=_normal(sub_seed(seed, 2)), name="pwconv2"
        )
        self.layerscale = (
            LayerScale(self.layerscale_init, trainable=self.layerscale_trainable, name="layerscale")
            if self.skip
            else None
        )

    def build(self, input_shape):
        if input_shape[-1] != self.dim:
            raise ValueError(
                f"ConvNeXtBlock(dim={self.dim}) needs {self.dim} input channels. "
                f"Received: input_shape={input_shape}"
            )
        self.dwconv.build(input_shape)
        if self.norm is not None:
            self.norm.build(input_shape)
        self.pwconv1.build(input_shape)
        self.pwconv2.build((*input_shape[:-1], 4 * self.dim))
        if self.layerscale is not None:
            self.layerscale.build(input_shape)

    def _forward(self, x):
        h = self.dwconv(x)
        if self.norm is not None:
            h = self.norm(h)
        h = self.pwconv2(self._act(self.pwconv1(h)))
        if self.layerscale is None:
            return h
        return x + self.layerscale(h)

    def call(self, inputs):
        if self.remat:
            # Wrapped per call: a wrapper made once keeps, under JAX, the traced weights of
            # its first call (measured: a different training step from the plain block).
            return keras.remat(self._forward)(inputs)
        return self._forward(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        base_config = super().get_config()
        config = {
            "dim": self.dim,
            "activation": self.activation,
            "block_norm": self.block_norm,
            "skip": self.skip,
            "layerscale_init": self.layerscale_init,
            "layerscale_trainable": self.layerscale_trainable,
            "remat": self.remat,
            "seed": self.seed,
        }
        return {**base_config, **config}


def layer_count(depths: Sequence[int]) -> int:
    """Counted layers: 3 convs per block + stem conv + head linear (SPEC §1.2)."""
    return 3 * sum(depths) + 2


def block_param_count(dim: int, block_norm: bool = True, skip: bool = True) -> int:
    """Trainable parameters of one block: 8C^2 + 17C + 1 with LN and gamma (SPEC §1.2)."""
    return 8 * dim * dim + 15 * dim + (2 * dim if block_norm else 0) + (1 if skip else 0)


def convnext_param_count(
    depths: Sequence[int] = DEFAULT_DEPTHS,
    dims: Sequence[int] = DEFAULT_DIMS,
    num_classes: int = 10,
    in_channels: int = 3,
    block_norm: bool = True,
    skip: bool = True,
) -> int:
    """Closed-form trainable parameter count (SPEC §0.9, §1.2), for any depth, no build.

    Args:
        depths: blocks per stage.
        dims: widths per stage.
        num_classes: head outputs. Defaults to 10.
        in_channels: image channels. Defaults to 3.
        block_norm: in-block LayerNorm present. Defaults to True.
        skip: residual connection (and gamma) present. Defaults to True.

    Returns:
        stem + downsamples + head + sum_s B_s * block_param_count(C_s).
    """
    c0 = dims[0]
    total = in_channels * c0 + c0 + 2 * c0  # stem conv 1x1 (bias) + LN
    for c_in, c_out in zip(dims[:-1], dims[1:], strict=True):
        total += 2 * c_in + 4 * c_in * c_out + c_out  # LN + conv 2x2 (bias)
    total += 2 * dims[-1] + dims[-1] * num_classes + num_classes  # head LN + linear
    for blocks, dim in zip(depths, dims, strict=True):
        total += blocks * block_param_count(dim, block_norm, skip)
    return total


def memory_estimate(
    depths: Sequence[int] = DEFAULT_DEPTHS,
    dims: Sequence[int] = DEFAULT_DIMS,
    batch: int = 64,
    remat: bool = False,
    bf16: bool = True,
    image_size: int = 32,
) -> dict[str, int]:
    """SPEC §1.5's memory model of one training step, in bytes (an estimate, not a measure).

    A block keeps ~26 bytes per element of its B x C x H x W input in eager bf16-mixed
    (bf16 dwconv input 2, fp32 LN input 4, bf16 LN output 2, bf16 4C pre-activation 8,
    bf16 4C GELU output 8, bf16 branch output 2), 52 in float32; with per-block remat only
    the fp32 input (4 bytes). States: 16 bytes per parameter (fp32 weight, grad, Adam m, v).

    Returns:
        {"states", "activations", "total"}.
    """
    per_element = 4 if remat else (26 if bf16 else 52)
    activations, size = 0, image_size
    for s, (blocks, dim) in enumerate(zip(depths, dims, strict=True)):
        if s:
            size //= 2
        activations += blocks * batch * dim * size * size * per_element
    states = 16 * convnext_param_count(depths, dims)
    return {"states": states, "activations": activations, "total": states + activations}


def build_convnext(
    depths: Sequence[int] = DEFAULT_DEPTHS,
    dims: Sequence[int] = DEFAULT_DIMS,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    seed: int | None = None,
    activation: str = "gelu",
    block_norm: bool = True,
    skip: bool = True,
    layerscale_init: float = 0.0,
    layerscale_trainable: bool = True,
    remat: bool = False,
    name: str | None = None,
) -> keras.Model:
    """The CIFAR ConvNeXt of SPEC §1.2 as a functional model returning logits.

    Stem 1x1 conv 3->C1 + LN; stage s (s >= 2) opens with LN + 2x2 stride-2 conv (valid);
    blocks ``stage{s}_block{b}``; head GAP -> LN -> Dense(num_classes).

    Args:
        depths: blocks per stage (E1: (2,2,2,2) ... (28,28,250,28)).
        dims: widths per stage. Defaults to (64, 128, 256, 512).
        num_classes: logits. Defaults to 10.
        input_shape: NHWC image shape without batch. Defaults to (32, 32, 3).
        seed: base seed; every kernel gets its own seed derived from it and is drawn with
            numpy, so the same seed gives the same model on every backend. None: unseeded.
        activation, block_norm, skip, layerscale_init, layerscale_trainable, remat:
            block switches, see :class:`ConvNeXtBlock`.
        name: model name. Defaults to "convnext_<layer_count>".

    Returns:
        An uncompiled ``keras.Model`` mapping NHWC images to logits.
    """
    if len(depths) != len(dims):
        raise ValueError(f"depths and dims differ in length. Received: {depths=}, {dims=}")
    streams = itertools.count()

    def next_seed() -> int | None:
        """An int32 seed per initialiser, derived from (seed, index) by numpy's SeedSequence."""
        index = next(streams)
        if seed is None:
            return None
        return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] >> 2)

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(dims[0], 1, kernel_initializer=_normal(next_seed()), name="stem_conv")(inputs)
    x = _layer_norm("stem_norm")(x)
    for s, (blocks, dim) in enumerate(zip(depths, dims, strict=True), start=1):
        if s > 1:
            x = _layer_norm(f"stage{s}_down_norm")(x)
            x = layers.Conv2D(
                dim,
                2,
                strides=2,
                padding="valid",
                kernel_initializer=_normal(next_seed()),
                name=f"stage{s}_down_conv",
            )(x)
        for b in range(1, blocks + 1):
            x = ConvNeXtBlock(
                dim,
                activation=activation,
                block_norm=block_norm,
                skip=skip,
                layerscale_init=layerscale_init,
                layerscale_trainable=layerscale_trainable,
                remat=remat,
                seed=next_seed(),
                name=f"stage{s}_block{b}",
            )(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = _layer_norm("head_norm")(x)
    outputs = layers.Dense(num_classes, kernel_initializer=_normal(next_seed()), name="head")(x)
    return keras.Model(inputs, outputs, name=name or f"convnext_{layer_count(depths)}")


def decay_mask(model: keras.Model) -> list[bool]:
    """AdamW decay flags aligned with ``model.trainable_variables`` (SPEC §1.4, §1.7 item 5).

    True exactly for Conv/Dense kernels (Keras names them "kernel", depthwise included);
    False for biases, LayerNorm weights and biases, and gamma.
    """
    return [v.name == "kernel" for v in model.trainable_variables]


def decay_variables(model: keras.Model) -> list:
    """The trainable variables that get decoupled weight decay (the Conv/Dense kernels)."""
    return [v for v, d in zip(model.trainable_variables, decay_mask(model), strict=True) if d]


def exclude_from_decay(optimizer: keras.optimizers.Optimizer, model: keras.Model) -> None:
    """Exclude every non-kernel variable from ``optimizer``'s weight decay (SPEC §0.3, §1.4).

    Call before the optimiser is built (before the first step).
    """
    keep = decay_mask(model)
    optimizer.exclude_from_weight_decay(
        var_list=[v for v, d in zip(model.trainable_variables, keep, strict=True) if not d]
    )
