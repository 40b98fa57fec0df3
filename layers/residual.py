"""Pre-activation residual block (He et al. 2016, "Identity Mappings in Deep Residual Networks").

Layout follows the common PyTorch PreActBlock (kuangliu/pytorch-cifar ``preact_resnet.py``):
the 1x1 projection, when the shape changes, is applied to the pre-activated input
relu(BN(x)). PyTorch conventions of SPEC §0.3: BatchNorm eps 1e-5 / momentum 0.9,
symmetric padding 1 on the stride-2 convolution, convolutions without bias, kernels drawn
with PyTorch's default U(+-1/sqrt(fan_in)) (:class:`TorchDefault`).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from depthlab.layers.initializers import TorchDefault, torch_batch_norm


@keras.saving.register_keras_serializable(package="depthlab")
class PreActBlock(keras.layers.Layer):
    """BN -> ReLU -> conv3x3(stride) -> BN -> ReLU -> conv3x3, plus a shortcut.

    The shortcut is the identity when stride is 1 and the channel count is unchanged, else
    a 1x1 convolution (same stride, no bias) of relu(BN(x)). It is computed as a subsample
    x[:, ::s, ::s] followed by a stride-1 1x1 convolution: the same numbers as a stride-s
    1x1 convolution without padding, and it avoids a torch 2.13 CPU (oneDNN) bug whose
    backward of a stride-2 1x1 convolution on channels-last input corrupts the heap.

    Args:
        filters: output channels.
        stride: stride of the first 3x3 convolution (and of the projection). Defaults to 1.
        kernel_initializer: initialiser of every convolution kernel; each convolution gets
            its own copy (a seeded one therefore repeats its values for equal shapes).
            Defaults to None: :class:`TorchDefault` (PyTorch's Conv2d default, SPEC §0.3).
        **kwargs: base ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(
        self,
        filters: int,
        stride: int = 1,
        kernel_initializer: str | keras.initializers.Initializer | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(filters) < 1 or int(stride) < 1:
            raise ValueError(
                f"filters and stride must be positive. Received: filters={filters}, stride={stride}"
            )
        # === Config ===
        self.filters = int(filters)
        self.stride = int(stride)
        self.kernel_initializer = keras.initializers.get(kernel_initializer or TorchDefault())
        # === Layers ===
        self.bn1 = torch_batch_norm("bn1")
        self.pad1 = layers.ZeroPadding2D(1, name="pad1") if self.stride > 1 else None
        self.conv1 = self._conv(3, self.stride, "conv1")
        self.bn2 = torch_batch_norm("bn2")
        self.conv2 = self._conv(3, 1, "conv2")
        self.shortcut = None

    def _conv(self, size: int, stride: int, name: str) -> layers.Conv2D:
        return layers.Conv2D(
            self.filters,
            size,
            strides=stride,
            # stride 1: "same" pads 1 on every side; stride 2 gets an explicit ZeroPadding2D
            padding="same" if stride == 1 else "valid",
            use_bias=False,
            kernel_initializer=keras.initializers.deserialize(  # a fresh copy per conv
                keras.initializers.serialize(self.kernel_initializer)
            ),
            name=name,
        )

    def build(self, input_shape):
        self.bn1.build(input_shape)
        conv_in = input_shape
        if self.pad1 is not None:
            conv_in = self.pad1.compute_output_shape(input_shape)
        self.conv1.build(conv_in)
        mid = self.conv1.compute_output_shape(conv_in)
        self.bn2.build(mid)
        self.conv2.build(mid)
        if self.stride != 1 or input_shape[-1] != self.filters:
            self.shortcut = self._conv(1, 1, "shortcut")
            self.shortcut.build(input_shape)

    def call(self, inputs, training=None):
        pre = ops.relu(self.bn1(inputs, training=training))
        skip = inputs
        if self.shortcut is not None:
            step = self.stride
            skip = self.shortcut(pre[:, ::step, ::step, :] if step > 1 else pre)
        h = self.pad1(pre) if self.pad1 is not None else pre
        h = self.conv1(h)
        h = self.conv2(ops.relu(self.bn2(h, training=training)))
        return h + skip

    def compute_output_shape(self, input_shape):
        rows, cols = input_shape[1], input_shape[2]
        if self.stride > 1:
            rows = None if rows is None else (rows - 1) // self.stride + 1
            cols = None if cols is None else (cols - 1) // self.stride + 1
        return (input_shape[0], rows, cols, self.filters)

    def get_config(self):
        base_config = super().get_config()
        config = {
            "filters": self.filters,
            "stride": self.stride,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
        return {**base_config, **config}
