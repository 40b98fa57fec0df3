"""The best epoch's weights so far, written atomically and resumed with the backup.

Keras' ``ModelCheckpoint(save_best_only=True)`` writes in place: a kill during the write
left a torn file that made every rerun fail (an equal score is not "better", so the file
was never rewritten). Here the file is written under a temporary name and renamed, its
state (best value and file) travels in the training backup (:class:`Backup` part), a fresh
start removes what an earlier attempt left, and an unreadable file is discarded with a
warning instead of failing the job.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras

from depthlab import files


class BestWeights(keras.callbacks.Callback):
    """Save the weights whenever ``monitor`` improves on every earlier epoch.

    Args:
        path: the weights file (ends in ``.weights.h5``).
        monitor: the epoch log to watch, e.g. ``"val_accuracy"``.
        mode: ``"max"`` (accuracies) or ``"min"`` (losses). Defaults to ``"max"``.
        echo: where warnings go. Defaults to ``print``.
    """

    async_safe = True  # epoch-end hooks only

    def __init__(self, path: str | Path, monitor: str, mode: str = "max",
                 echo: Callable[[str], None] = print):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min'. Received: mode={mode!r}")
        self.path = Path(path)
        self.monitor, self.mode, self.echo = monitor, mode, echo
        self.best: float | None = None
        self.best_epoch: int | None = None

    def on_train_begin(self, logs=None):
        # A fresh start; a resume puts the backed-up file and value back after this.
        self.best = self.best_epoch = None
        self.path.unlink(missing_ok=True)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        better = self.best is None or (value > self.best if self.mode == "max"
                                       else value < self.best)
        if not better:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = sum(math.prod(v.shape) * 4 for v in self.model.weights)
        files.ensure_space(self.path.parent, 3 * size, "the best-epoch weights")
        with files.atomic_path(self.path, suffix=".weights.h5") as tmp:
            self.model.save_weights(str(tmp))
        self.best, self.best_epoch = value, epoch

    def load(self, model: Any) -> bool:
        """Load the best weights into ``model``; False (with a warning) if none is usable."""
        if not self.path.exists():
            return False
        try:
            model.load_weights(str(self.path))
        except Exception as error:  # noqa: BLE001 - a damaged file must not fail the job
            self.echo(f"warning: {self.path} cannot be read ({type(error).__name__}: "
                      f"{error}); discarded, the last epoch's weights are used")
            self.path.unlink(missing_ok=True)
            return False
        return True

    # === Backup part ===

    def backup_state(self, folder: Path) -> dict:
        if self.path.exists():
            try:
                os.link(self.path, folder / self.path.name)  # no copy: the file is immutable
            except OSError:
                shutil.copyfile(self.path, folder / self.path.name)
        return {"best": self.best, "best_epoch": self.best_epoch}

    def restore_state(self, folder: Path, state: Mapping) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        saved = folder / self.path.name
        if saved.exists():
            with files.atomic_path(self.path) as tmp:
                shutil.copyfile(saved, tmp)
        else:
            self.path.unlink(missing_ok=True)
