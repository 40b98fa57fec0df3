"""Loops over stacked per-block weights, the way each backend runs them fastest.

``keras.ops.scan`` slices the weights inside one compiled loop (JAX, TensorFlow) and its
gradient stacks per-block slices: O(L d^2). Keras' torch ``scan`` indexes ``x[i]``, whose
backward writes a full-size zero tensor per block (O(L^2 d^2): ~9 s per step at L=1000,
d=40); ``unstack`` (torch ``unbind``) stacks its gradient once (~1 s). The TensorFlow
``fori_loop`` with dynamic indexing has the same quadratic backward (~10 s vs ~2 s for
``scan``).

:func:`compiled` compiles a pure function of tensors where the backend can (``jax.jit``,
``tf.function``); torch runs it eagerly. Without it, JAX re-traces a ``scan`` at every call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops


def scan(step: Callable[[Any, tuple], tuple[Any, Any]], carry: Any, xs: tuple,
         reverse: bool = False) -> tuple[Any, Any]:
    """(carry, ys) of ``carry, y_k = step(carry, (x_k, ...))`` over axis 0 of each of ``xs``.

    ``ys`` stacks the y_k along a new axis 0 in the order of ``xs`` (also when ``reverse``);
    a step may return ``None`` for y.
    """
    if keras.backend.backend() == "torch":  # eager Python loop over unbind slices
        slices = list(zip(*(ops.unstack(t, axis=0) for t in xs), strict=True))
        ys = [None] * len(slices)
        for k in reversed(range(len(slices))) if reverse else range(len(slices)):
            carry, ys[k] = step(carry, slices[k])
        return carry, None if ys[0] is None else ops.stack(ys, axis=0)
    return ops.scan(step, carry, xs, reverse=reverse)


def scan_blocks(block: Callable[[Any, tuple], Any], h: Any, stacked: tuple) -> Any:
    """h <- block(h, (x_k, ...)) for k = 0..L-1, x_k the k-th slice of each stacked tensor."""
    return scan(lambda carry, sliced: (block(carry, sliced), None), h, stacked)[0]


def compiled(fn: Callable) -> Callable:
    """``fn`` compiled once per input shape where the backend compiles (JAX, TensorFlow)."""
    name = keras.backend.backend()
    if name == "jax":
        import jax

        return jax.jit(fn)
    if name == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)  # one trace per shape: Keras' TF scan needs static lengths
    return fn
