"""One progress line and one MLflow call per epoch.

``mlflow.keras.MlflowCallback`` (SPEC §0.2a) is not used for this: it re-logs the
optimizer config as params in ``on_train_begin``, which MLflow rejects when a resumed run
logs a value again, and it logs every ``evaluate`` (a final test evaluation included) as
``validation_*`` without a step. This callback logs Keras' epoch logs plus the learning
rate the epoch used and its wall time, in one ``log_metrics`` call per epoch. Divergence
is :class:`depthlab.callbacks.divergence.DivergenceGuard`'s concern.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path

import keras
from keras import ops

from depthlab import tracking


class EpochLogger(keras.callbacks.Callback):
    """Print a progress line and log metrics every epoch.

    Args:
        epochs: total epochs, for the progress line.
        label: prefix of the progress line (the job's name).
        echo: where lines go. Defaults to ``print``.
    """

    async_safe = True  # epoch hooks only

    def __init__(self, epochs: int, label: str = "", echo: Callable[[str], None] = print):
        super().__init__()
        self.epochs = epochs
        self.label = label
        self.echo = echo
        self.metric_names: list[str] = []

    def on_train_begin(self, logs=None):
        self.metric_names = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        # Read at epoch start: at epoch end the schedule already gives the next epoch's rate.
        self._lr = float(ops.convert_to_numpy(self.model.optimizer.learning_rate))

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

    # === Backup part: a resume that trains no further epoch still knows the metrics ===

    def backup_state(self, folder: Path) -> dict:
        return {"metric_names": self.metric_names}

    def restore_state(self, folder: Path, state: Mapping) -> None:
        self.metric_names = list(state.get("metric_names", []))
