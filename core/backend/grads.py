"""Per-gradient reductions for GradientCapture, computed on device (SPEC §0.4).

The norm is s * ||g / s|| with s = sum |g|, so that squares of the ~1e-20 gradients of
vanishing-gradient nets (SPEC §3) do not flush to zero in float32. JAX and TensorFlow
compile the ``keras.ops`` path into the step; torch runs eagerly, where that path costs
~0.4 ms per tensor (7 ms per step for an 18-tensor CNN on CPU), so it takes the fused
multi-tensor path of ``_torch_grads`` (~0.4 ms for the whole list).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

_TINY = 1e-30


def reduce_gradients(grads: list) -> tuple[Any, Any]:
    """Per-gradient sum |g| and L2 norm, as two float32 vectors of ``len(grads)``."""
    if keras.backend.backend() == "torch":
        from depthlab.backend import _torch_grads

        return _torch_grads.reduce_gradients(grads)
    sum_abs, squares = [], []
    for gradient in grads:
        g = ops.convert_to_tensor(gradient)
        if keras.backend.standardize_dtype(g.dtype) != "float32":
            g = ops.cast(g, "float32")
        total = ops.sum(ops.abs(g))
        sum_abs.append(total)
        squares.append(ops.sum(ops.square(g / ops.maximum(total, _TINY))))
    sum_abs = ops.stack(sum_abs)
    return sum_abs, ops.sqrt(ops.stack(squares)) * ops.maximum(sum_abs, _TINY)
