"""PyTorch's default Conv/Linear initialisation as a Keras initialiser (SPEC §0.3, §3.2).

PyTorch draws every ``Conv2d``/``Linear`` weight with ``kaiming_uniform_(a=sqrt(5))`` and
every bias from the same range, i.e. U(±1/sqrt(fan_in)) for both. For kernels this equals
``keras.initializers.VarianceScaling(1/3, "fan_in", "uniform")``; a bias cannot know its
layer's fan-in, so it is given explicitly.
"""

from __future__ import annotations

import math
import random as python_random
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

BN_EPSILON = 1e-5  # torch BatchNorm2d eps (SPEC §0.3)
BN_MOMENTUM = 0.9  # torch momentum 0.1 (new-statistic weight) in Keras' convention


def torch_batch_norm(name: str) -> keras.layers.BatchNormalization:
    """BatchNorm with torch's defaults: eps 1e-5, momentum 0.1 (Keras 0.9), gamma 1, beta 0."""
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def sub_seed(seed: int | None, offset: int) -> int | None:
    """The seed of a layer's ``offset``-th initialiser (None stays None: fresh draws)."""
    return None if seed is None else seed + offset


def torch_fan_in(shape: Sequence[int], depthwise: bool = False) -> int:
    """PyTorch's fan-in of a Keras kernel shape (SPEC §0.3).

    Args:
        shape: kernel shape in Keras layout: Dense ``(in, out)``; Conv ``(*kernel, in, out)``;
            DepthwiseConv2D ``(kh, kw, channels, multiplier)``.
        depthwise: the kernel is a depthwise kernel (torch ``groups=channels``), whose
            fan-in is the spatial size only (``kh * kw``). Defaults to ``False``.

    Returns:
        The fan-in: ``in`` for Dense, ``prod(kernel) * in`` for Conv, ``prod(kernel)`` for
        depthwise kernels.

    Raises:
        ValueError: the shape has fewer than 2 dimensions (a bias: pass ``fan_in``).
    """
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(
            "A rank-0/1 weight (a bias) has no fan-in of its own: pass `fan_in` explicitly. "
            f"Received: shape={shape}"
        )
    if len(shape) == 2:
        return shape[0]
    spatial = math.prod(shape[:-2])
    return spatial if depthwise else spatial * shape[-2]


@keras.saving.register_keras_serializable(package="depthlab")
class TorchDefault(keras.initializers.Initializer):
    """U(±1/sqrt(fan_in)): PyTorch's default for Conv/Linear weights and biases (SPEC §0.3).

    Args:
        fan_in: the fan-in of the layer. Required for biases; for kernels ``None`` computes
            it from the shape with :func:`torch_fan_in`. Defaults to ``None``.
        depthwise: kernels are depthwise (fan-in ``kh * kw``), used when ``fan_in`` is
            ``None``. Defaults to ``False``.
        seed: integer seed. As with Keras' own initialisers, a seeded (or unseeded)
            instance returns the same values on every call: give each weight its own
            instance. ``None`` draws a seed at construction. Defaults to ``None``.
    """

    def __init__(self, fan_in: int | None = None, depthwise: bool = False, seed: int | None = None):
        if fan_in is not None and int(fan_in) < 1:
            raise ValueError(f"`fan_in` must be a positive integer. Received: fan_in={fan_in}")
        if seed is not None and not isinstance(seed, int):
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        self.fan_in = None if fan_in is None else int(fan_in)
        self.depthwise = bool(depthwise)
        self._init_seed = seed
        # Same convention as keras' RandomInitializer: an unseeded instance fixes one seed.
        self.seed = seed if seed is not None else python_random.randint(1, int(1e9))

    def bound(self, shape: Sequence[int]) -> float:
        """The half-width 1/sqrt(fan_in) of the range used for ``shape``."""
        fan_in = self.fan_in if self.fan_in is not None else torch_fan_in(shape, self.depthwise)
        return 1.0 / math.sqrt(fan_in)

    def __call__(self, shape, dtype=None):
        # Drawn with numpy: the same seed gives the same weights on every backend (Keras'
        # seeded initialisers do not, SPEC §0.4), and JAX compiles no kernel per shape.
        limit = self.bound(shape)
        values = np.random.default_rng(self.seed).uniform(-limit, limit, tuple(shape))
        return ops.convert_to_tensor(values.astype(np.float32), dtype=dtype or "float32")

    def get_config(self) -> dict:
        return {"fan_in": self.fan_in, "depthwise": self.depthwise, "seed": self._init_seed}


# The name SPEC §0.3 gives it: ``Dense(..., kernel_initializer="torch_default")`` (kernels only:
# a bias needs ``TorchDefault(fan_in=...)``).
keras.saving.get_custom_objects()["torch_default"] = TorchDefault


@keras.saving.register_keras_serializable(package="depthlab")
class NumpyNormal(keras.initializers.Initializer):
    """N(0, stddev^2) drawn with numpy (plain normal, not truncated).

    Keras' seeded initialisers draw different numbers per backend (SPEC §0.4) and, under
    JAX, compile one kernel per new shape; a numpy draw is identical on every backend for
    the same seed and costs no compilation.

    Args:
        stddev: standard deviation. Defaults to 0.02 (SPEC §1.2).
        seed: numpy seed (int or sequence of ints); the same seed gives the same values
            on every call. None draws fresh values. Defaults to None.
    """

    def __init__(self, stddev: float = 0.02, seed: int | Sequence[int] | None = None):
        self.stddev = float(stddev)
        self.seed = list(seed) if isinstance(seed, list | tuple) else seed

    def __call__(self, shape, dtype=None):
        rng = np.random.default_rng(self.seed)
        values = rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(self.stddev)
        return ops.convert_to_tensor(values, dtype=dtype or "float32")

    def get_config(self):
        return {"stddev": self.stddev, "seed": self.seed}
