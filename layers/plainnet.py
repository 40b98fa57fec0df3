"""Oyedotun et al.'s PlainNets: deep nets without skip connections (SPEC §4.2).

FC PlainNet: D hidden blocks ``block_1`` .. ``block_D`` of ``Dense(300)`` -> [BN] ->
activation, then an unconstrained ``Dense(n_classes)`` + softmax. The "proposed" net uses
BN (eps 1e-3, momentum 0.99: Keras defaults, the paper is a Keras model), LeakyReLU with
slope 0.3, MaxNorm(3) on each hidden kernel and ``he_uniform`` init. Conv PlainNet (Table A1):
50 conv blocks, Conv2D without bias -> BN -> LeakyReLU 0.3, two max-pools, global average
pool, Dense(10) + softmax. Each block's output is the post-activation h_l of the paper's
diagnostics; :func:`plainnet_activation_layers` lists the blocks in depth order.
"""

from __future__ import annotations

import random as python_random

import keras

from depthlab.layers.maxnorm import MaxNormConv2D, MaxNormDense

WIDTH = 300  # hidden units of every FC block (SPEC §4.2)
LEAKY_SLOPE = 0.3  # stated in the paper; Keras' LeakyReLU default too, passed explicitly
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
ACTIVATIONS = ("relu", "leaky_relu")
INITIALIZERS = ("glorot_uniform", "he_uniform", "uniform", "he_normal")

# Switches of each named FC variant (SPEC §4.2 table). Table II ablations: the proposed net
# with components removed (ReLU replaces LReLU, BN dropped, constraint dropped), he_uniform.
_NO_PARTS = {"batch_norm": False, "activation": "relu", "max_norm": None}
PLAINNET_VARIANTS: dict[str, dict] = {
    "naive": {**_NO_PARTS, "kernel_initializer": "glorot_uniform"},
    "glorot": {**_NO_PARTS, "kernel_initializer": "glorot_uniform"},
    "uniform": {**_NO_PARTS, "kernel_initializer": "uniform"},
    "he": {**_NO_PARTS, "kernel_initializer": "he_normal"},
    "bn": {**_NO_PARTS, "batch_norm": True, "kernel_initializer": "glorot_uniform"},
    "bn_only": {**_NO_PARTS, "batch_norm": True, "kernel_initializer": "he_uniform"},
    "lrelu_only": {**_NO_PARTS, "activation": "leaky_relu", "kernel_initializer": "he_uniform"},
    "maxnorm_only": {**_NO_PARTS, "max_norm": 3.0, "kernel_initializer": "he_uniform"},
    "bn_lrelu": {
        "batch_norm": True,
        "activation": "leaky_relu",
        "max_norm": None,
        "kernel_initializer": "he_uniform",
    },
    "bn_maxnorm": {
        "batch_norm": True,
        "activation": "relu",
        "max_norm": 3.0,
        "kernel_initializer": "he_uniform",
    },
    "lrelu_maxnorm": {
        "batch_norm": False,
        "activation": "leaky_relu",
        "max_norm": 3.0,
        "kernel_initializer": "he_uniform",
    },
    "proposed": {
        "batch_norm": True,
        "activation": "leaky_relu",
        "max_norm": 3.0,
        "kernel_initializer": "he_uniform",
    },
}
# Table II rows in the paper's order (components present: BN, LReLU, max-norm, ...).
TABLE_II_VARIANTS = (
    "bn_only",
    "lrelu_only",
    "maxnorm_only",
    "bn_lrelu",
    "bn_maxnorm",
    "lrelu_maxnorm",
    "proposed",
)

# Table A1, filters@kernel per conv, by resolution (Conv_49 = 96@3x3, SPEC §4.2 READING).
CONV_PLAINNET_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((16, 3), (16, 1), (16, 3)) + ((32, 1), (16, 1), (16, 3)) * 4 + ((32, 1), (48, 1)),
    ((48, 1), (64, 3), (64, 1)) + ((48, 1), (48, 3), (64, 1)) * 5 + ((80, 3),),
    ((80, 1), (80, 3), (96, 1)) * 4 + ((96, 3), (128, 3)),
)


def make_initializer(name: str, seed: int | None = None) -> keras.initializers.Initializer:
    """The kernel initialiser of a PlainNet switch (SPEC §4.2).

    Args:
        name: ``"glorot_uniform"``, ``"he_uniform"``, ``"uniform"`` (RandomUniform(-0.05,
            0.05), Keras' default range) or ``"he_normal"`` (Keras 3: truncated normal).
        seed: integer seed, or ``None``. Defaults to ``None``.
    """
    if name == "glorot_uniform":
        return keras.initializers.GlorotUniform(seed=seed)
    if name == "he_uniform":
        return keras.initializers.HeUniform(seed=seed)
    if name == "uniform":
        return keras.initializers.RandomUniform(-0.05, 0.05, seed=seed)
    if name == "he_normal":
        return keras.initializers.HeNormal(seed=seed)
    raise ValueError(f"kernel_initializer must be one of {INITIALIZERS}. Received: {name!r}")


def kernel_regularizer(weight_decay: float | None) -> keras.regularizers.Regularizer | None:
    """Coupled L2 weight decay on kernels: gradient term ``weight_decay * W`` (SPEC §0.3, §4.4).

    Keras' ``L2(l2)`` adds ``l2 * sum(W**2)`` to the loss (gradient ``2 * l2 * W``), so the
    paper's decay 1e-4 is ``L2(5e-5)``. ``None`` or 0 gives no regulariser.
    """
    if not weight_decay:
        return None
    return keras.regularizers.L2(weight_decay / 2.0)


class _PlainBlockBase(keras.layers.Layer):
    """Switches, validation and config shared by the FC and conv blocks."""

    def __init__(
        self,
        batch_norm: bool = False,
        activation: str = "relu",
        max_norm: float | None = None,
        kernel_initializer: str = "glorot_uniform",
        weight_decay: float | None = None,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}. Received: {activation!r}")
        if kernel_initializer not in INITIALIZERS:
            raise ValueError(
                f"kernel_initializer must be one of {INITIALIZERS}. "
                f"Received: {kernel_initializer!r}"
            )
        self.batch_norm = bool(batch_norm)
        self.activation = activation
        self.max_norm = None if max_norm is None else float(max_norm)
        self.kernel_initializer = kernel_initializer
        self.weight_decay = weight_decay
        self.seed = seed

    def _linear_kwargs(self) -> dict:
        return {
            "kernel_initializer": make_initializer(self.kernel_initializer, self.seed),
            "kernel_regularizer": kernel_regularizer(self.weight_decay),
            "name": "linear",
        }

    def _make_norm_and_activation(self) -> None:
        self.bn = (
            keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name="bn")
            if self.batch_norm
            else None
        )
        if self.activation == "leaky_relu":
            self.act = keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name="activation")
        else:
            self.act = keras.layers.ReLU(name="activation")

    def build(self, input_shape):
        self.linear.build(input_shape)
        shape = self.linear.compute_output_shape(input_shape)
        if self.bn is not None:
            self.bn.build(shape)

    def call(self, inputs, training=None):
        x = self.linear(inputs)
        if self.bn is not None:
            x = self.bn(x, training=training)
        return self.act(x)

    def compute_output_shape(self, input_shape):
        return self.linear.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        config = {
            "batch_norm": self.batch_norm,
            "activation": self.activation,
            "max_norm": self.max_norm,
            "kernel_initializer": self.kernel_initializer,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="depthlab")
class PlainBlock(_PlainBlockBase):
    """FC PlainNet block: Dense(units) -> [BatchNorm] -> ReLU | LeakyReLU(0.3) (SPEC §4.2).

    Args:
        units: hidden units. Defaults to 300.
        batch_norm: BatchNormalization(eps 1e-3, momentum 0.99) after the Dense.
            Defaults to ``False``.
        activation: ``"relu"`` or ``"leaky_relu"`` (slope 0.3). Defaults to ``"relu"``.
        max_norm: MaxNorm bound on each unit's incoming weights (axis 0), or ``None`` for
            no constraint. Defaults to ``None``.
        kernel_initializer: one of ``INITIALIZERS``; biases start at zero.
            Defaults to ``"glorot_uniform"``.
        weight_decay: coupled L2 decay on the kernel only (``L2(weight_decay / 2)``, see
            :func:`kernel_regularizer`), or ``None``. Defaults to ``None``.
        seed: integer seed of the kernel init, or ``None``. Defaults to ``None``.
        **kwargs: base layer arguments (``name``).
    """

    def __init__(self, units: int = WIDTH, **kwargs):
        super().__init__(**kwargs)
        if int(units) < 1:
            raise ValueError(f"`units` must be a positive integer. Received: units={units}")
        self.units = int(units)
        linear_kwargs = self._linear_kwargs()
        if self.max_norm is None:
            self.linear = keras.layers.Dense(self.units, **linear_kwargs)
        else:
            self.linear = MaxNormDense(self.units, max_value=self.max_norm, **linear_kwargs)
        self._make_norm_and_activation()

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="depthlab")
class PlainConvBlock(_PlainBlockBase):
    """Conv PlainNet block: Conv2D (no bias, 'same') -> [BatchNorm] -> activation (Table A1).

    The conv never has a bias (Table A1's 0.72M needs ``use_bias=False``, SPEC §4.2), with
    or without BN.

    Args:
        filters: output channels.
        kernel_size: square kernel size (1 or 3 in Table A1).
        batch_norm: BatchNormalization(eps 1e-3, momentum 0.99). Defaults to ``True``.
        activation: ``"relu"`` or ``"leaky_relu"`` (slope 0.3). Defaults to ``"leaky_relu"``.
        max_norm: MaxNorm bound on each filter's weights (axis [0, 1, 2]), or ``None``.
            Defaults to 3.
        kernel_initializer: one of ``INITIALIZERS``. Defaults to ``"he_uniform"``.
        weight_decay: coupled L2 decay on the kernel, or ``None``. Defaults to ``None``.
        seed: integer seed of the kernel init, or ``None``. Defaults to ``None``.
        **kwargs: base layer arguments (``name``).
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        batch_norm: bool = True,
        activation: str = "leaky_relu",
        max_norm: float | None = 3.0,
        kernel_initializer: str = "he_uniform",
        **kwargs,
    ):
        super().__init__(
            batch_norm=batch_norm,
            activation=activation,
            max_norm=max_norm,
            kernel_initializer=kernel_initializer,
            **kwargs,
        )
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        conv_kwargs = {"padding": "same", "use_bias": False, **self._linear_kwargs()}
        if self.max_norm is None:
            self.linear = keras.layers.Conv2D(self.filters, self.kernel_size, **conv_kwargs)
        else:
            self.linear = MaxNormConv2D(
                self.filters, self.kernel_size, max_value=self.max_norm, **conv_kwargs
            )
        self._make_norm_and_activation()

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size}


def _seeds(seed: int | None):
    rng = python_random.Random(seed)
    while True:
        yield None if seed is None else rng.randrange(2**30)


def _output_head(x, num_classes: int, kernel_init: str, weight_decay, seed):
    """Unconstrained Dense(num_classes) (bias zeros) + softmax, named ``output``/``softmax``."""
    x = keras.layers.Dense(
        num_classes,
        kernel_initializer=make_initializer(kernel_init, seed),
        kernel_regularizer=kernel_regularizer(weight_decay),
        name="output",
    )(x)
    return keras.layers.Softmax(name="softmax")(x)


def plainnet_switches(variant: str, **overrides) -> dict:
    """The block switches of a named variant, with overrides (SPEC §4.2).

    Args:
        variant: a key of ``PLAINNET_VARIANTS``.
        **overrides: any of ``batch_norm``, ``activation``, ``max_norm``,
            ``kernel_initializer``.

    Raises:
        ValueError: unknown variant or override key.
    """
    if variant not in PLAINNET_VARIANTS:
        raise ValueError(
            f"variant must be one of {tuple(PLAINNET_VARIANTS)}. Received: {variant!r}"
        )
    switches = dict(PLAINNET_VARIANTS[variant])
    unknown = set(overrides) - set(switches)
    if unknown:
        raise ValueError(f"Unknown PlainNet switches {sorted(unknown)}; known: {sorted(switches)}")
    return {**switches, **overrides}


def build_plainnet(
    depth: int,
    variant: str,
    num_inputs: int,
    num_classes: int,
    width: int = WIDTH,
    *,
    weight_decay: float | None = None,
    seed: int | None = None,
    **overrides,
) -> keras.Model:
    """FC PlainNet with ``depth`` hidden blocks ``block_1`` .. ``block_D`` (SPEC §4.2).

    Trainable parameters: (n_in*W + W) + (D-1)(W*W + W) + (W*C + C) + [BN] 2*W*D.

    Args:
        depth: hidden blocks D (a "100-layer PlainNet" has D = 100).
        variant: a key of ``PLAINNET_VARIANTS`` (naive/glorot, uniform, he, bn, proposed,
            the Table II ablations).
        num_inputs: length of the flattened input (256 USPS, 1024 COIL-20 at 32x32).
        num_classes: classes of the softmax output.
        width: units per hidden block. Defaults to 300.
        weight_decay: coupled L2 decay on every kernel (paper 1e-4 = ``L2(5e-5)``), none on
            biases or BN. Defaults to ``None``.
        seed: integer seed of the init (per-block seeds derived from it). Defaults to ``None``.
        **overrides: block switches replacing the variant's (see :func:`plainnet_switches`).

    Returns:
        A functional ``keras.Model`` from ``(num_inputs,)`` to class probabilities.
    """
    if depth < 1:
        raise ValueError(f"`depth` must be >= 1. Received: depth={depth}")
    switches = plainnet_switches(variant, **overrides)
    seeds = _seeds(seed)
    inputs = keras.Input(shape=(num_inputs,), name="features")
    x = inputs
    for layer in range(1, depth + 1):
        block = PlainBlock(
            width, weight_decay=weight_decay, seed=next(seeds), name=f"block_{layer}", **switches
        )
        x = block(x)
    outputs = _output_head(
        x, num_classes, switches["kernel_initializer"], weight_decay, next(seeds)
    )
    return keras.Model(inputs, outputs, name=f"plainnet_{variant}_{depth}")


def build_conv_plainnet(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    *,
    weight_decay: float | None = None,
    seed: int | None = None,
) -> keras.Model:
    """The 50-layer convolutional PlainNet of Table A1 (SPEC §4.2): 723,642 trainable params.

    Conv blocks ``block_1`` .. ``block_50`` (``PlainConvBlock``: no bias, he_uniform,
    MaxNorm(3, axis [0,1,2]), BN, LeakyReLU 0.3); ``pool_1`` MaxPool 2x2/2 after block 17
    (32 -> 16), ``pool_2`` MaxPool 3x3/2 'valid' after block 36 (16 -> 7); global average
    pool; unconstrained Dense(num_classes) + softmax.

    Args:
        num_classes: classes. Defaults to 10 (CIFAR-10).
        input_shape: NHWC input shape. Defaults to ``(32, 32, 3)``.
        weight_decay: coupled L2 decay on every kernel, or ``None``. Defaults to ``None``.
        seed: integer seed of the init, or ``None``. Defaults to ``None``.
    """
    seeds = _seeds(seed)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = inputs
    pools = (
        keras.layers.MaxPooling2D(2, strides=2, padding="valid", name="pool_1"),
        keras.layers.MaxPooling2D(3, strides=2, padding="valid", name="pool_2"),
        None,
    )
    index = 0
    for stage, pool in zip(CONV_PLAINNET_STAGES, pools, strict=True):
        for filters, kernel_size in stage:
            index += 1
            block = PlainConvBlock(
                filters,
                kernel_size,
                weight_decay=weight_decay,
                seed=next(seeds),
                name=f"block_{index}",
            )
            x = block(x)
        if pool is not None:
            x = pool(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pool")(x)
    outputs = _output_head(x, num_classes, "he_uniform", weight_decay, next(seeds))
    return keras.Model(inputs, outputs, name="conv_plainnet_50")


def plainnet_activation_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The blocks whose outputs are the post-activation h_1 .. h_D, in depth order (SPEC §4.4).

    A probe sub-model is ``keras.Model(model.inputs, [l.output for l in layers])``.
    """
    return [layer for layer in model.layers if isinstance(layer, _PlainBlockBase)]
