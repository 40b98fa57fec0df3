"""VGG08 / VGG38 of the MLP coursework, optionally with BatchNorm and residuals (SPEC §3.2).

The blocks mirror ``pytorch_mlp_framework/model_architectures.py`` (commit ``01e54c2`` of
felipec23/mlpractical-mlp2022-23-coursework2) and the handout's BN/RC rules:

- ``input_conv``: conv_0 (3x3, no bias) -> bn_0 -> lrelu (BN even in the plain nets);
- ``block_{i}_{j}``: conv_0 (no bias) -> [bn_0] -> lrelu -> conv_1 (no bias) -> [bn_1]
  -> (+ x) -> lrelu;
- ``reduction_block_{i}``: conv_0 (bias) -> [bn_0] -> lrelu -> AvgPool 2x2/2 -> conv_1 (bias)
  -> [bn_1] -> lrelu;
- head: global average pool -> ``logit_linear_layer`` (Linear, bias).

Every conv is 3x3 stride 1 padding 1 (``"same"``), leaky-ReLU slope 0.01 and BatchNorm use
torch's defaults (eps 1e-5, momentum 0.1 = Keras 0.9), and every conv/linear weight and bias
uses :class:`~depthlab.layers.initializers.TorchDefault` (SPEC §0.3). Sublayers are created in
``__init__`` in the order conv_0, bn_0, conv_1, bn_1 so that ``model.trainable_weights``
follows the course's ``named_parameters()`` order and variable paths such as
``block_0_0/conv_0/kernel`` give the gradient-flow labels of SPEC §3.4.
"""

from __future__ import annotations

import random as python_random

import keras
from keras import ops

from depthlab.layers.initializers import TorchDefault, sub_seed, torch_batch_norm

LEAKY_SLOPE = 0.01  # torch nn.functional.leaky_relu default (SPEC §3.2, §3.6)
KERNEL_SIZE = 3


def _conv(filters: int, use_bias: bool, seed: int | None, name: str) -> keras.layers.Conv2D:
    """3x3 stride-1 'same' conv with torch's default init; the bias range is set in build."""
    return keras.layers.Conv2D(
        filters,
        KERNEL_SIZE,
        strides=1,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=TorchDefault(seed=sub_seed(seed, 0)),
        name=name,
    )


def _build_conv(conv: keras.layers.Conv2D, input_shape, seed: int | None) -> tuple:
    """Build ``conv``, its bias drawn from U(±1/sqrt(9 * in_channels)); return the output shape."""
    if conv.use_bias:
        fan_in = KERNEL_SIZE * KERNEL_SIZE * int(input_shape[-1])
        conv.bias_initializer = TorchDefault(fan_in=fan_in, seed=sub_seed(seed, 1))
    conv.build(input_shape)
    return conv.compute_output_shape(input_shape)


def _lrelu(x):
    return ops.leaky_relu(x, negative_slope=LEAKY_SLOPE)


def _check_filters(filters: int) -> int:
    if int(filters) < 1:
        raise ValueError(f"`filters` must be a positive integer. Received: filters={filters}")
    return int(filters)


class _VGGBlock(keras.layers.Layer):
    """Shared plumbing: conv_0 -> [bn_0] -> conv_1 -> [bn_1] sublayers and the config."""

    conv_bias = False

    def __init__(self, filters: int, norm: bool, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.filters = _check_filters(filters)
        self.norm = bool(norm)
        self.seed = seed
        # Assignment order = weight order = the course's named_parameters() order.
        self.conv_0 = _conv(self.filters, self.conv_bias, sub_seed(seed, 0), "conv_0")
        self.bn_0 = torch_batch_norm("bn_0") if self.norm else None
        self.conv_1 = _conv(self.filters, self.conv_bias, sub_seed(seed, 2), "conv_1")
        self.bn_1 = torch_batch_norm("bn_1") if self.norm else None

    def _norm(self, bn, x, training):
        return x if bn is None else bn(x, training=training)

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.filters)

    def get_config(self) -> dict:
        config = {"filters": self.filters, "norm": self.norm, "seed": self.seed}
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="depthlab")
class VGGEntryBlock(keras.layers.Layer):
    """``input_conv``: conv_0 (3x3, no bias) -> bn_0 -> leaky ReLU 0.01 (SPEC §3.2).

    The BatchNorm is present in every variant, the plain VGG08/VGG38 included.

    Args:
        filters: output channels. Defaults to 32.
        seed: integer seed of the conv init, or ``None``. Defaults to ``None``.
        **kwargs: base layer arguments; ``name`` defaults to ``"input_conv"``.
    """

    def __init__(self, filters: int = 32, seed: int | None = None, **kwargs):
        kwargs.setdefault("name", "input_conv")
        super().__init__(**kwargs)
        self.filters = _check_filters(filters)
        self.seed = seed
        self.conv_0 = _conv(self.filters, False, sub_seed(seed, 0), "conv_0")
        self.bn_0 = torch_batch_norm("bn_0")

    def build(self, input_shape):
        shape = _build_conv(self.conv_0, input_shape, None)  # no bias: nothing to draw
        self.bn_0.build(shape)

    def call(self, inputs, training=None):
        return _lrelu(self.bn_0(self.conv_0(inputs), training=training))

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape)[:-1], self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "seed": self.seed}


@keras.saving.register_keras_serializable(package="depthlab")
class VGGProcessingBlock(_VGGBlock):
    """``block_{i}_{j}``: conv_0 -> [bn_0] -> lrelu -> conv_1 -> [bn_1] -> (+ x) -> lrelu (§3.2).

    Both convs are 3x3 'same' without bias. With ``residual`` the identity skip joins just
    before the last activation: y = lrelu(bn_1(conv_1(lrelu(bn_0(conv_0 x)))) + x).

    Args:
        filters: channels of both convs; with ``residual`` it must equal the input channels.
        norm: insert BatchNorm after each conv.
        residual: add the identity skip.
        seed: integer seed of the conv inits, or ``None``. Defaults to ``None``.
        **kwargs: base layer arguments (``name``).
    """

    def __init__(self, filters: int, norm: bool, residual: bool, seed: int | None = None, **kwargs):
        super().__init__(filters, norm, seed=seed, **kwargs)
        self.residual = bool(residual)

    def build(self, input_shape):
        if self.residual and int(input_shape[-1]) != self.filters:
            raise ValueError(
                "A residual block needs as many input channels as filters. "
                f"Received: input_shape={tuple(input_shape)}, filters={self.filters}"
            )
        shape = _build_conv(self.conv_0, input_shape, None)
        if self.bn_0 is not None:
            self.bn_0.build(shape)
        shape = _build_conv(self.conv_1, shape, None)
        if self.bn_1 is not None:
            self.bn_1.build(shape)

    def call(self, inputs, training=None):
        x = _lrelu(self._norm(self.bn_0, self.conv_0(inputs), training))
        x = self._norm(self.bn_1, self.conv_1(x), training)
        if self.residual:
            x = x + inputs
        return _lrelu(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "residual": self.residual}


@keras.saving.register_keras_serializable(package="depthlab")
class VGGReductionBlock(_VGGBlock):
    """``reduction_block_{i}``: conv_0, [bn_0], lrelu, AvgPool 2x2/2, conv_1, [bn_1], lrelu.

    Both convs are 3x3 'same' **with** bias (hard-coded in the course code), biases drawn
    from U(±1/sqrt(9 * in_channels)) (SPEC §3.2). The pooling is 'valid' (no padding).

    Args:
        filters: channels of both convs.
        norm: insert BatchNorm after each conv.
        seed: integer seed of the conv inits, or ``None``. Defaults to ``None``.
        **kwargs: base layer arguments (``name``).
    """

    conv_bias = True

    def build(self, input_shape):
        shape = _build_conv(self.conv_0, input_shape, sub_seed(self.seed, 0))
        if self.bn_0 is not None:
            self.bn_0.build(shape)
        shape = (shape[0], _half(shape[1]), _half(shape[2]), shape[3])
        shape = _build_conv(self.conv_1, shape, sub_seed(self.seed, 2))
        if self.bn_1 is not None:
            self.bn_1.build(shape)

    def call(self, inputs, training=None):
        x = _lrelu(self._norm(self.bn_0, self.conv_0(inputs), training))
        x = ops.average_pool(x, pool_size=2, strides=2, padding="valid")
        x = self._norm(self.bn_1, self.conv_1(x), training)
        return _lrelu(x)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = tuple(input_shape)
        return (n, _half(h), _half(w), self.filters)


def _half(size: int | None) -> int | None:
    return None if size is None else size // 2


def vgg_depth(num_blocks: int, num_stages: int = 3) -> int:
    """Depth = convs + 1 linear: 8 for ``num_blocks=0`` (VGG08), 38 for 5 (VGG38) (SPEC §3.2)."""
    return 1 + 2 * num_blocks * num_stages + 2 * num_stages + 1


def build_vgg(
    num_blocks: int,
    norm: bool,
    residual: bool,
    num_classes: int,
    num_filters: int = 32,
    num_stages: int = 3,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    bn_in_reduction: bool = True,
    seed: int | None = None,
) -> keras.Model:
    """The coursework's ``ConvolutionalNetwork``: VGG08 (``num_blocks=0``) or VGG38 (5) (SPEC §3.2).

    Args:
        num_blocks: processing blocks per stage (0 -> VGG08, 5 -> VGG38).
        norm: BatchNorm after every conv of the processing (and reduction) blocks.
        residual: identity skip around each processing block.
        num_classes: C of the logit layer (100 for CIFAR-100, 10 for CIFAR-10).
        num_filters: channels of every conv. Defaults to 32.
        num_stages: stages of processing blocks + a reduction block. Defaults to 3.
        input_shape: NHWC image shape. Defaults to ``(32, 32, 3)``.
        bn_in_reduction: with ``norm``, also BN in the reduction blocks (the handout's rule,
            338,500 params); ``False`` gives the student's 338,116 variant (SPEC §3.6).
            Defaults to ``True``.
        seed: integer seed making the init deterministic for a backend; per-block seeds are
            derived from it. ``None`` draws fresh seeds. Defaults to ``None``.

    Returns:
        A functional ``keras.Model`` mapping images to logits. Layer names: ``input_conv``,
        ``block_{i}_{j}``, ``reduction_block_{i}``, ``global_average_pool``,
        ``logit_linear_layer``.
    """
    if num_blocks < 0 or num_stages < 1 or num_classes < 1:
        raise ValueError(
            "Expected num_blocks >= 0, num_stages >= 1, num_classes >= 1. Received: "
            f"num_blocks={num_blocks}, num_stages={num_stages}, num_classes={num_classes}"
        )
    rng = python_random.Random(seed)

    def next_seed() -> int | None:
        return None if seed is None else rng.randrange(2**30)

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = VGGEntryBlock(num_filters, seed=next_seed(), name="input_conv")(inputs)
    for i in range(num_stages):
        for j in range(num_blocks):
            block = VGGProcessingBlock(
                num_filters, norm, residual, seed=next_seed(), name=f"block_{i}_{j}"
            )
            x = block(x)
        reduction = VGGReductionBlock(
            num_filters, norm and bn_in_reduction, seed=next_seed(), name=f"reduction_block_{i}"
        )
        x = reduction(x)
    x = keras.layers.GlobalAveragePooling2D(name="global_average_pool")(x)
    head_seed = next_seed()
    logits = keras.layers.Dense(
        num_classes,
        kernel_initializer=TorchDefault(seed=sub_seed(head_seed, 0)),
        bias_initializer=TorchDefault(fan_in=num_filters, seed=sub_seed(head_seed, 1)),
        name="logit_linear_layer",
    )(x)
    name = f"vgg{vgg_depth(num_blocks, num_stages):02d}" + ("_bn" if norm else "")
    return keras.Model(inputs, logits, name=name + ("_rc" if residual else ""))


def gradient_flow_label(variable) -> str | None:
    """The course's gradient-flow label of a variable, or ``None`` if it is not plotted (SPEC §3.4).

    The course plots every ``named_parameters()`` entry whose name lacks "bias" (BN gamma
    included, beta being torch's BN "bias"), labelled by the module path joined with "_":
    ``block_0_0/conv_0/kernel`` -> ``block_0_0_conv_0``, ``input_conv/bn_0/gamma`` ->
    ``input_conv_bn_0``; the top-level linear layer is ``weight_logit_linear_layer``.

    Args:
        variable: a ``keras.Variable`` of a model built by :func:`build_vgg`.

    Returns:
        The label, or ``None`` for biases, BN beta and non-trainable variables.
    """
    if not variable.trainable:
        return None
    *owners, leaf = variable.path.split("/")
    if leaf not in ("kernel", "gamma") or not owners:
        return None
    if len(owners) == 1:
        return f"weight_{owners[0]}"
    return "_".join(owners[-2:])


def gradient_flow_labels(model: keras.Model) -> list[tuple[str, keras.Variable]]:
    """``(label, variable)`` for every plotted weight of ``model``, in model order (SPEC §3.4).

    Gives 9 entries for VGG08, 39 for VGG38 and VGG38 RC, 75 for VGG38 BN and BN+RC.
    """
    labelled = ((gradient_flow_label(v), v) for v in model.trainable_weights)
    return [(label, v) for label, v in labelled if label is not None]
