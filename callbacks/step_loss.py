"""Per-step training losses of the last steps of a run, for "last-10-step mean" claims.

Keras' ``logs["loss"]`` at batch end is the running mean of the epoch so far, so the loss
of batch k (equal batch sizes) is ``(k + 1) * m_k - k * m_(k-1)``. Only the final
``window + 1`` steps of the last epoch are read, and the callback is ``async_safe``: Keras
then runs batch-end hooks off the training thread (possibly out of order, hence the
recording by batch index) instead of syncing the device every step. Its state travels
in the training backup, so a resumed run counts every step of the job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import keras


class StepLoss(keras.callbacks.Callback):
    """Record the per-batch training loss over the last ``window`` steps of training.

    Args:
        window: how many final steps to keep. Defaults to 10.
    """

    async_safe = True

    def __init__(self, window: int = 10):
        super().__init__()
        self.window = window
        self.steps = 0
        self._means: dict[int, float] = {}

    def on_train_begin(self, logs=None):
        self.steps, self._means = 0, {}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._means = {}

    def on_train_batch_begin(self, batch, logs=None):
        self.steps += 1  # on the training thread: counts every step, in order

    def on_train_batch_end(self, batch, logs=None):
        total = self.params.get("steps") or 0
        last_epoch = self._epoch == self.params.get("epochs", 1) - 1
        if logs and last_epoch and (not total or batch >= total - self.window - 1):
            self._means[batch] = float(logs["loss"])

    @property
    def losses(self) -> list[float]:
        """Per-batch losses of the recorded final steps, in batch order."""
        out = []
        for batch in sorted(self._means):
            if batch == 0:
                out.append(self._means[0])
            elif batch - 1 in self._means:
                out.append((batch + 1) * self._means[batch] - batch * self._means[batch - 1])
        return out

    def last_mean(self, count: int | None = None) -> float:
        """Mean loss of the last ``count`` recorded steps (NaN when none was recorded)."""
        values = self.losses[-(count or self.window):]
        return sum(values) / len(values) if values else math.nan

    # === Backup part ===

    def backup_state(self, folder: Path) -> dict:
        return {"steps": self.steps, "means": {str(k): v for k, v in self._means.items()}}

    def restore_state(self, folder: Path, state: Mapping) -> None:
        self.steps = int(state.get("steps", 0))
        self._means = {int(k): float(v) for k, v in state.get("means", {}).items()}
