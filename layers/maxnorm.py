"""Dense and Conv2D layers whose incoming weight vectors are max-norm constrained (SPEC §4.2).

``keras.constraints.MaxNorm`` is applied by every Keras optimizer after each step:
w <- w * min(||w||, c) / (1e-7 + ||w||), the norm taken over each unit's incoming vector:
``axis=0`` for a Dense kernel (fan_in x units), ``axis=[0, 1, 2]`` for a Conv2D kernel
(kh x kw x in x filters). Keras' default ``max_value`` is 2; Oyedotun et al. use 3
(SPEC §0.7, §4.6).
"""

from __future__ import annotations

import keras

MAX_NORM = 3.0  # Oyedotun et al.'s bound on each unit's incoming weight vector (SPEC §4.2)


def _max_value(max_value: float) -> float:
    if not max_value > 0:
        raise ValueError(f"`max_value` must be positive. Received: max_value={max_value}")
    return float(max_value)


def _without_constraint(config: dict) -> dict:
    config.pop("kernel_constraint", None)
    return config


@keras.saving.register_keras_serializable(package="depthlab")
class MaxNormDense(keras.layers.Dense):
    """``keras.layers.Dense`` with ``kernel_constraint=MaxNorm(max_value, axis=0)`` (SPEC §4.2).

    Args:
        units: output units.
        max_value: bound on the L2 norm of each unit's incoming weight vector.
            Defaults to 3.
        **kwargs: any other ``Dense`` argument except ``kernel_constraint``.
    """

    def __init__(self, units: int, max_value: float = MAX_NORM, **kwargs):
        if kwargs.get("kernel_constraint") is not None:
            raise ValueError(
                "MaxNormDense sets its own kernel_constraint; use keras.layers.Dense for "
                f"another one. Received: kernel_constraint={kwargs['kernel_constraint']}"
            )
        kwargs.pop("kernel_constraint", None)
        max_value = _max_value(max_value)
        super().__init__(
            units, kernel_constraint=keras.constraints.MaxNorm(max_value, axis=0), **kwargs
        )
        self.max_value = max_value

    def get_config(self) -> dict:
        return {**_without_constraint(super().get_config()), "max_value": self.max_value}


@keras.saving.register_keras_serializable(package="depthlab")
class MaxNormConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with ``kernel_constraint=MaxNorm(max_value, axis=[0, 1, 2])``.

    Each filter's (kh, kw, in) weight block has L2 norm at most ``max_value`` (SPEC §4.2,
    Table A1).

    Args:
        filters: output channels.
        kernel_size: an int or a pair.
        max_value: bound on each filter's weight norm. Defaults to 3.
        **kwargs: any other ``Conv2D`` argument except ``kernel_constraint``.
    """

    def __init__(self, filters: int, kernel_size, max_value: float = MAX_NORM, **kwargs):
        if kwargs.get("kernel_constraint") is not None:
            raise ValueError(
                "MaxNormConv2D sets its own kernel_constraint; use keras.layers.Conv2D for "
                f"another one. Received: kernel_constraint={kwargs['kernel_constraint']}"
            )
        kwargs.pop("kernel_constraint", None)
        max_value = _max_value(max_value)
        super().__init__(
            filters,
            kernel_size,
            kernel_constraint=keras.constraints.MaxNorm(max_value, axis=[0, 1, 2]),
            **kwargs,
        )
        self.max_value = max_value

    def get_config(self) -> dict:
        return {**_without_constraint(super().get_config()), "max_value": self.max_value}


def incoming_norms(model: keras.Model) -> dict[str, float]:
    """The largest incoming-vector norm of each max-norm constrained kernel, by path.

    What the constraint bounds (SPEC §4.7 item 4): each unit's fan-in vector of a
    :class:`MaxNormDense` (axis 0) or each filter of a :class:`MaxNormConv2D` (axes 0-2).
    """
    out = {}
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, MaxNormDense | MaxNormConv2D):
            kernel = keras.ops.convert_to_numpy(layer.kernel)
            axes = tuple(range(kernel.ndim - 1))
            out[layer.kernel.path] = float((kernel.astype("float64") ** 2).sum(axes).max() ** 0.5)
    return out
