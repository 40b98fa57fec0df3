"""Loops over stacked per-block weights, the way each backend runs them fastest.

``keras.ops.scan`` slices the weights inside one compiled loop (JAX, TensorFlow) and its
gradient stacks per-block slices: O(L d^2). Keras' torch ``scan`` indexes ``x[i]``, whose
backward writes a full-size zero tensor per block (O(L^2 d^2): ~9 s per step at L=1000,
d=40); ``unstack`` (torch ``unbind``) stacks its gradient once (~1 s). The TensorFlow
``fori_loop`` with dynamic indexing has the same quadratic backward (~10 s vs ~2 s for
``scan``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops


def scan_blocks(block: Callable[[Any, tuple], Any], h: Any, stacked: tuple) -> Any:
    """h <- block(h, (x_k, ...)) for k = 0..L-1, x_k the k-th slice of each stacked tensor."""
    if keras.backend.backend() == "torch":  # eager Python loop: unroll over unbind slices
        for sliced in zip(*(ops.unstack(t, axis=0) for t in stacked), strict=True):
            h = block(h, sliced)
        return h
    return ops.scan(lambda carry, sliced: (block(carry, sliced), None), h, stacked)[0]
