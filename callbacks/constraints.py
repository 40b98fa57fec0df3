"""Checks that a kernel constraint holds after every optimizer step (SPEC §4.5 Q8, §4.7 item 4).

Keras applies ``kernel_constraint`` inside the optimizer's step; this callback reads the
weights back after each step and records the largest incoming-vector norm of any max-norm
constrained kernel, so a test or a run can show the bound held at every step, not only at
the end. Each read syncs the device (and, under JAX, the trained state): a check for short
runs, not for the paper profile.
"""

from __future__ import annotations

import keras


class MaxNormMonitor(keras.callbacks.Callback):
    """Records ``max_incoming_norm`` after every training step (``history``) and its
    maximum over each epoch in the epoch's logs (``max_incoming_norm``)."""

    def __init__(self):
        super().__init__()
        self.history: list[float] = []
        self._epoch_max = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_max = 0.0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        from depthlab.layers.maxnorm import incoming_norms

        norms = incoming_norms(self.model)  # self.model: JAX's state synced first
        value = max(norms.values(), default=0.0)
        self.history.append(value)
        self._epoch_max = max(self._epoch_max, value)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs["max_incoming_norm"] = self._epoch_max
