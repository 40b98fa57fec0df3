"""Per-step training losses of the last steps of a run, for "last-10-step mean" claims.

Keras' ``logs["loss"]`` at batch end is the running mean of the epoch so far, so the loss
of batch k (equal batch sizes) is ``k * m_k - (k - 1) * m_(k-1)``. Reading a log value syncs
the device, so this reads only the final ``window + 1`` steps of the last epoch.
"""

from __future__ import annotations

import math

import keras


class StepLoss(keras.callbacks.Callback):
    """Record the per-batch training loss over the last ``window`` steps of training.

    Args:
        window: how many final steps to keep. Defaults to 10.
    """

    def __init__(self, window: int = 10):
        super().__init__()
        self.window = window
        self.losses: list[float] = []
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.losses, self.steps, self._previous = [], 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._previous = None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        total = self.params.get("steps") or 0
        last_epoch = self._epoch == self.params.get("epochs", 1) - 1
        if not logs or not last_epoch or (total and batch < total - self.window - 1):
            return
        mean = float(logs["loss"])
        if self._previous is not None:
            previous_batch, previous_mean = self._previous
            if previous_batch == batch - 1:
                self.losses.append((batch + 1) * mean - batch * previous_mean)
        elif batch == 0:
            self.losses.append(mean)
        self._previous = (batch, mean)

    def last_mean(self, count: int | None = None) -> float:
        """Mean loss of the last ``count`` recorded steps (NaN when none was recorded)."""
        values = self.losses[-(count or self.window):]
        return sum(values) / len(values) if values else math.nan
