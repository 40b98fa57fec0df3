"""Divergence detection that does not depend on how a kernel treats NaN.

A NaN loss is not a reliable signal: TensorFlow's oneDNN ReLU on some CPUs maps NaN to 0,
so after a NaN step every weight is NaN while the loss reads a finite ~ln 10, exactly what
"stays at chance" looks like in these studies. A run is therefore diverged when any of
these holds (checked where it costs nothing extra):

* a batch's loss is non-finite or above ``max_loss`` (Keras hands batch-end hooks floats);
* at an epoch end, any logged metric is non-finite, or the loss is above ``max_loss``;
* at an epoch end, the optimizer's :class:`GradientCapture` counted a step with a
  non-finite gradient (an on-device counter, read once per epoch);
* at an epoch end, a weight (trainable or not: BatchNorm statistics too) is non-finite,
  reduced on device to one flag.

``max_loss`` (default :data:`MAX_LOSS` = 1e4): cross-entropy at chance is ln C ≤ 4.6 for
the data sets here, so a loss of 1e4 nats means logits about 1e4 apart, a run that has left
every regime the studies compare (torch reached a finite 4e35 at lr 1e3 while jax and
tensorflow produced NaN).
"""

from __future__ import annotations

import math

import keras
from keras import ops

from depthlab.callbacks.gradient_capture import find_capture

MAX_LOSS = 1e4


def nonfinite_weight(model: keras.Model) -> str | None:
    """The path of the first float weight of ``model`` holding a NaN/Inf, or None.

    All weights are reduced on device to one flag; only a bad model is searched further.
    """
    weights = [w for w in model.weights if "float" in str(w.dtype)]
    if not weights:
        return None
    flags = ops.stack([ops.all(ops.isfinite(w)) for w in weights])
    if bool(ops.convert_to_numpy(ops.all(flags))):
        return None
    bad = ops.convert_to_numpy(flags)
    return next(w.path for w, ok in zip(weights, bad, strict=True) if not ok)


class DivergenceGuard(keras.callbacks.Callback):
    """Stop training at the first sign of divergence and say why (see module docstring).

    Attributes:
        diverged_at: 1-based epoch (as the progress line counts) or None.
        reason: what was non-finite or too large.

    Args:
        max_loss: a finite loss above this is divergence. Defaults to ``MAX_LOSS``.
        ignore: prefixes of epoch metrics that are measurements, not training signals
            (e.g. an inference-mode evaluation whose BatchNorm moving statistics have not
            caught up yet and overflow): their values never count as divergence.
            Defaults to none.
    """

    async_safe = True  # the batch-end check reads floats Keras already made

    def __init__(self, max_loss: float = MAX_LOSS, ignore: tuple[str, ...] = ()):
        super().__init__()
        self.max_loss = max_loss
        self.ignore = tuple(ignore)
        self.diverged_at: int | None = None
        self.reason = ""
        self._batch: int | None = None  # the batch the reason names (batch-end checks)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def on_train_begin(self, logs=None):
        self.diverged_at, self.reason, self._batch = None, "", None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if logs and "loss" in logs:
            self._check_loss(float(logs["loss"]), f"step {batch + 1}", batch)

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch
        for key, value in (logs or {}).items():
            if self.ignore and key.startswith(self.ignore):
                continue
            if not math.isfinite(float(value)):
                self._diverge(f"{key} is {float(value)}")
        if logs and "loss" in logs:
            self._check_loss(float(logs["loss"]), "epoch mean")
        model = self.model  # under JAX this syncs the training state into the variables
        capture = find_capture(model.optimizer)
        if capture is not None and capture.built:
            count = int(ops.convert_to_numpy(capture.nonfinite_steps))
            if count:
                self._diverge(f"non-finite gradients in {count} step(s)")
        bad = nonfinite_weight(model)
        if bad is not None:
            self._diverge(f"weight {bad} is not finite")

    def _check_loss(self, loss: float, where: str, batch: int | None = None) -> None:
        if not math.isfinite(loss):
            self._diverge(f"loss is {loss} ({where})", batch)
        elif loss > self.max_loss:
            self._diverge(f"loss {loss:.3g} above the bound {self.max_loss:g} ({where})", batch)

    def _diverge(self, reason: str, batch: int | None = None) -> None:
        # Batch-end checks may run out of order (``async_safe``): the earliest batch of the
        # epoch that diverged is the one reported, whichever thread saw it first.
        earlier = (batch is not None and self._batch is not None and batch < self._batch
                   and self.diverged_at == self._epoch + 1)
        if self.diverged_at is None or earlier:
            self.diverged_at, self.reason, self._batch = self._epoch + 1, reason, batch
        # ``_model``, not ``model``: this may run on Keras' batch-end thread, and under JAX
        # the ``model`` property syncs the training state, racing the training thread.
        self._model.stop_training = True
