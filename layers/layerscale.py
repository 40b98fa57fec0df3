"""LayerScale: a learnable (or frozen) scale on a residual branch (SPEC §1.2, E3 of §1.1).

Reference: melgor/1k_cnn_layers src/convnext_v2.py (``gamma``, one scalar per block, init 0);
Touvron et al.'s LayerScale keeps one value per channel, offered here as ``per_channel``.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="depthlab")
class LayerScale(keras.layers.Layer):
    """y = gamma * x, gamma of shape (1,) or (C,) broadcast over the last axis.

    With ``trainable=False`` gamma is created as a non-trainable variable, so it is absent
    from ``trainable_weights`` of this layer *and* of any layer or model holding it, hence
    never seen by the optimiser (SPEC §1.2, ``layerscale_trainable``; E3 "1 frozen").

    Args:
        init_value: initial value of every entry of gamma. Defaults to 0.0 (the reference
            code's default and the E1 runs, SPEC §1.6).
        per_channel: one gamma per channel (last axis) instead of one scalar. Defaults to
            False.
        trainable: whether gamma is learned. Defaults to True.
        **kwargs: base ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(
        self,
        init_value: float = 0.0,
        per_channel: bool = False,
        trainable: bool = True,
        **kwargs,
    ):
        super().__init__(trainable=trainable, **kwargs)
        self.init_value = float(init_value)
        self.per_channel = bool(per_channel)
        self.supports_masking = True

    def build(self, input_shape):
        if self.per_channel and input_shape[-1] is None:
            raise ValueError(
                "LayerScale(per_channel=True) needs a known last axis. "
                f"Received: input_shape={input_shape}"
            )
        shape = (input_shape[-1],) if self.per_channel else (1,)
        self.gamma = self.add_weight(
            name="gamma",
            shape=shape,
            initializer=keras.initializers.Constant(self.init_value),
            trainable=self.trainable,
        )

    def call(self, inputs):
        return inputs * ops.cast(self.gamma, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        base_config = super().get_config()
        config = {"init_value": self.init_value, "per_channel": self.per_channel}
        return {**base_config, **config}
