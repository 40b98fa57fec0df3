"""``BackupAndRestore`` that saves at an epoch end at most once per interval.

Keras' callback saves the weights and optimizer state at every epoch end; for VGG38 with
Adam that took ~0.25 s on the 2-core CPU (h5 writes, with a copy of the previous backup),
which short GPU epochs of the paper recipe would feel (an estimate, not measured on a GPU).
Saving once at least ``every_s`` seconds have passed bounds both that cost and the training
an interrupted run repeats when it resumes.
"""

from __future__ import annotations

import time

import keras


class ThrottledBackup(keras.callbacks.BackupAndRestore):
    """Back up at an epoch end once ``every_s`` seconds have passed since the last backup.

    Args:
        backup_dir: folder of the backup (as ``BackupAndRestore``; double checkpoint on).
        every_s: minimum seconds between backups; 0 backs up every epoch, as Keras does.
    """

    # Its batch-end hook only checks ``save_freq`` ("epoch"): no device sync needed per step.
    async_safe = True

    def __init__(self, backup_dir: str, every_s: float = 60.0):
        super().__init__(backup_dir, save_freq="epoch", double_checkpoint=True)
        self.every_s = every_s

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._saved_at = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self._saved_at >= self.every_s:
            super().on_epoch_end(epoch, logs)  # records the epoch and saves
            self._saved_at = time.monotonic()
