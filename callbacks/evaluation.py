"""Metrics on whole data sets in inference mode at each epoch end (SPEC §4.4).

``fit``'s own ``loss`` / ``accuracy`` are running means over the epoch's batches in
training mode (BatchNorm on batch statistics, weights still moving). Oyedotun et al.'s
errors are those of the model at the epoch's end, on the *full* training and test sets,
with BatchNorm on its moving statistics: a constant predictor then shows as exactly
1 - (its class's share), as Table II's no-BN rows do. Keras' ``validation_data`` gives this
for one set; this callback gives it for any number, under names of their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras


class EvaluateSets(keras.callbacks.Callback):
    """``model.evaluate`` on named data sets every ``freq`` epochs, into the epoch's logs.

    Each compiled metric ``m`` of set ``name`` is logged as ``<name>_<m>`` (``loss`` included,
    regularisation terms as Keras adds them), so the runner's epoch logger puts it in the
    progress line and in MLflow. Place it before the loggers in the callback list.

    Args:
        sets: name -> data ``evaluate`` accepts: a ``PyDataset`` of unaugmented batches or
            an ``(x, y)`` pair of arrays.
        freq: evaluate every ``freq`` epochs and after the last. Defaults to 1.
    """

    def __init__(self, sets: Mapping[str, Any], freq: int = 1):
        super().__init__()
        if freq < 1:
            raise ValueError(f"freq must be >= 1. Received: freq={freq}")
        if not sets:
            raise ValueError("EvaluateSets needs at least one data set")
        self.sets = dict(sets)
        self.freq = freq

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        last = epoch + 1 == self.params.get("epochs")
        if logs is None or ((epoch + 1) % self.freq and not last):
            return
        model = self.model  # under JAX this syncs the trained state into the variables
        for name, data in self.sets.items():
            x, y = data if isinstance(data, tuple) else (data, None)
            results = model.evaluate(x, y, return_dict=True, verbose=0)
            logs.update({f"{name}_{key}": float(value) for key, value in results.items()})
