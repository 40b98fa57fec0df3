"""One progress line and one MLflow call per epoch, and early detection of divergence.

``mlflow.keras.MlflowCallback`` (SPEC §0.2a) is not used for this: it re-logs the
optimizer config as params in ``on_train_begin``, which MLflow rejects when a resumed run
logs a value again, and it logs every ``evaluate`` (a final test evaluation included) as
``validation_*`` without a step. This callback logs Keras' epoch logs plus the learning
rate the epoch used and its wall time, in one ``log_metrics`` call per epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import keras
from keras import ops

from depthlab import tracking


class EpochLogger(keras.callbacks.Callback):
    """Print a progress line and log metrics every epoch; stop on a NaN/Inf loss.

    Args:
        epochs: total epochs, for the progress line.
        label: prefix of the progress line (the job's name).
        echo: where lines go. Defaults to ``print``.
    """

    # Keras hands batch-end hooks logs it has already converted to floats (on its own
    # thread when every hook is async-safe), so checking every step's loss costs nothing.
    async_safe = True

    def __init__(self, epochs: int, label: str = "", echo: Callable[[str], None] = print):
        super().__init__()
        self.epochs = epochs
        self.label = label
        self.echo = echo
        self.diverged_at: int | None = None
        self.metric_names: list[str] = []

    def on_train_begin(self, logs=None):
        self.diverged_at = None
        self.metric_names = []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._start = time.perf_counter()
        # Read at epoch start: at epoch end the schedule already gives the next epoch's rate.
        self._lr = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_batch_end(self, batch, logs=None):
        if logs and not math.isfinite(float(logs["loss"])):
            self._diverge()

    def on_epoch_end(self, epoch, logs=None):
        values = {k: float(v) for k, v in (logs or {}).items()}
        values.pop("learning_rate", None)
        self.metric_names = list(values)
        seconds = time.perf_counter() - self._start
        tracking.log_metrics({**values, "lr": self._lr, "epoch_time_s": seconds}, step=epoch)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in values.items())
        prefix = f"[{self.label}] " if self.label else ""
        self.echo(f"{prefix}epoch {epoch + 1}/{self.epochs}  {shown}  lr {self._lr:.3g}  "
                  f"{seconds:.1f} s")
        if not math.isfinite(values.get("loss", 0.0)):
            self._diverge()

    def _diverge(self) -> None:
        if self.diverged_at is None:
            self.diverged_at = self._epoch
        # ``_model``, not ``model``: this may run on Keras' batch-end thread, and under JAX
        # the ``model`` property syncs the training state, racing the training thread.
        self._model.stop_training = True
