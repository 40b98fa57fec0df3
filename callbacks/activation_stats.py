"""Activation statistics on a fixed probe batch (SPEC §0.4, §4.4 "Diagnostics", §4.5).

Per probed layer l, on its outputs h_l (post-activation for a PlainNet block, §4.4):
mean|h|, the normalised mean mean|h_l| / max_k mean|h_k|, max|h|, the fraction of
entries with |h| > t for each threshold t (t = 0: non-zero), the fraction exactly zero,
the number of dead units (exactly 0 on every probe sample; a unit of a conv output is a
channel, the last axis) and, optionally, κ2 of the samples × units matrix.

The forward pass is separate from training (§0.4): a functional sub-model over the
layers' outputs, called with ``stateless_call`` on gradient-stopped copies of the
variables. A plain ``model(x, training=True)`` call updates BatchNormalization's moving
statistics on every backend (checked on jax, tensorflow and torch, Keras 3.15.1); the
stateless call returns the updates instead, and they are dropped, so a probe never
changes the model. ``training=True`` gives batch-statistics BN; in that mode the whole
probe is one batch unless ``batch_size`` says otherwise (each chunk would have its own
BN statistics). In inference mode chunking does not change the result.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from depthlab import plots, tracking
from depthlab.callbacks import conditioning

THRESHOLDS = (0.0, 0.05, 0.5, 5.0, 50.0)  # SPEC §4.4: % of entries with |h| > t
INFERENCE_CHUNK = 1024  # rows per forward pass in inference mode (result is chunk-free)

LayerRef = str | keras.Layer


def threshold_key(t: float) -> str:
    """The stats key of the fraction of entries with |h| > t, e.g. ``"frac_above_0.05"``."""
    return f"frac_above_{t:g}"


def probe_model(model: keras.Model, layers: Sequence[LayerRef] | None = None) -> keras.Model:
    """A functional sub-model ``Model(model inputs, [layer.output, ...])`` (SPEC §0.4).

    It shares the model's layers and variables; build it once and reuse it.

    Args:
        model: a functional or Sequential model (one with symbolic inputs).
        layers: layers or layer names, in the order wanted. Defaults to every layer
            except input layers.

    Returns:
        The sub-model, one output per probed layer, named after the layers.

    Raises:
        ValueError: the model has no symbolic inputs or a layer has several outputs.
    """
    try:
        inputs = model.inputs
    except AttributeError:
        inputs = None
    if not inputs:
        raise ValueError(f"probe_model needs a functional or Sequential model. Received: {model}")
    if layers is None:
        layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    resolved = [model.get_layer(la) if isinstance(la, str) else la for la in layers]
    outputs = []
    for layer in resolved:
        output = layer.output
        if not isinstance(output, keras.KerasTensor):
            raise ValueError(f"layer {layer.name!r} has several outputs; probe one tensor")
        outputs.append(output)
    structure = inputs[0] if len(inputs) == 1 else inputs
    return keras.Model(structure, outputs, name=f"{model.name}_probe")


class _LayerAccumulator:
    """Running sums for one layer's statistics over probe chunks (float64).

    κ2's QR folding is deferred until ``FOLD_ROWS`` rows wait, and skipped when a unit is
    dead on every sample (κ2 is then ∞ without it): the naive nets' layers cost no QR.
    """

    FOLD_ROWS = 8192

    def __init__(self, units: int, thresholds: Sequence[float], kappa2: bool):
        self.thresholds = tuple(float(t) for t in thresholds)
        self.units = units
        self.count = 0
        self.sum_abs = 0.0
        self.max_abs = 0.0
        self.above = np.zeros(len(thresholds), dtype=np.int64)
        self.zeros = 0
        self.alive = np.zeros(units, dtype=bool)
        self.kappa2 = kappa2
        self.r: np.ndarray | None = None  # R factor of the samples x units rows folded so far
        self.pending: list[np.ndarray] = []  # rows not folded into R yet

    def update(self, h: np.ndarray) -> None:
        rows = h.reshape(-1, self.units)
        a = np.abs(rows)
        self.count += a.size
        self.sum_abs += float(a.sum())
        self.max_abs = float(np.maximum(self.max_abs, a.max()))  # NaN propagates
        self.above += [np.count_nonzero(a > t) for t in self.thresholds]
        self.zeros += int(np.count_nonzero(rows == 0))
        self.alive |= np.any(rows != 0, axis=0)
        if self.kappa2 and np.isfinite(self.max_abs):  # NaN / inf: κ2 is undefined
            self.pending.append(rows)
            if sum(len(p) for p in self.pending) >= self.FOLD_ROWS:
                self._fold()

    def _fold(self) -> None:
        if self.pending:
            self.r = conditioning.accumulate_r(self.r, np.vstack(self.pending))
            self.pending = []

    def kappa_2(self) -> float:
        if not np.isfinite(self.max_abs):
            return float("nan")
        if not self.alive.all():
            return float("inf")
        self._fold()
        return conditioning.kappa_2(self.r)


def _num_samples(x: Any) -> int:
    return int(keras.tree.flatten(x)[0].shape[0])


def measure(
    probe: keras.Model,
    x: Any,
    training: bool = False,
    thresholds: Sequence[float] = THRESHOLDS,
    batch_size: int | None = None,
    kappa2: bool = False,
) -> dict[str, np.ndarray]:
    """Statistics of a probe sub-model's outputs on ``x``; see :func:`activation_statistics`."""
    n = _num_samples(x)
    if batch_size is None:
        batch_size = n if training else min(n, INFERENCE_CHUNK)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive. Received: batch_size={batch_size}")
    trainable = [ops.stop_gradient(v) for v in probe.trainable_variables]
    non_trainable = [ops.stop_gradient(v) for v in probe.non_trainable_variables]
    units = [int(o.shape[-1]) if len(o.shape) > 1 else 1 for o in probe.outputs]
    accs = [_LayerAccumulator(u, thresholds, kappa2) for u in units]
    for start in range(0, n, batch_size):
        chunk = keras.tree.map_structure(
            lambda a, s=start: ops.convert_to_tensor(np.asarray(a)[s : s + batch_size]), x
        )
        outputs, _ = probe.stateless_call(trainable, non_trainable, chunk, training=training)
        for acc, out in zip(accs, keras.tree.flatten(outputs), strict=True):
            acc.update(np.asarray(ops.convert_to_numpy(out)).astype(np.float64))
    mean_abs = np.array([acc.sum_abs / acc.count for acc in accs])
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero or NaN: NaN
        normalised = mean_abs / np.max(mean_abs)
    stats: dict[str, np.ndarray] = {
        "layer": np.array(probe.output_names),
        "units": np.array(units, dtype=np.int64),
        "mean_abs": mean_abs,
        "normalised_mean_abs": normalised,
        "max_abs": np.array([acc.max_abs for acc in accs]),
    }
    for i, t in enumerate(thresholds):
        stats[threshold_key(t)] = np.array([acc.above[i] / acc.count for acc in accs])
    stats["frac_zero"] = np.array([acc.zeros / acc.count for acc in accs])
    stats["dead_units"] = np.array([int((~acc.alive).sum()) for acc in accs], dtype=np.int64)
    if kappa2:
        stats["kappa_2"] = np.array([acc.kappa_2() for acc in accs])
    return stats


def activations(probe: keras.Model, x: Any, training: bool = False) -> list[np.ndarray]:
    """The probe's raw outputs on ``x`` as numpy arrays, in one stateless forward pass
    (BN's moving statistics untouched, as in :func:`measure`); for activation images."""
    trainable = [ops.stop_gradient(v) for v in probe.trainable_variables]
    non_trainable = [ops.stop_gradient(v) for v in probe.non_trainable_variables]
    inputs = keras.tree.map_structure(lambda a: ops.convert_to_tensor(np.asarray(a)), x)
    outputs, _ = probe.stateless_call(trainable, non_trainable, inputs, training=training)
    return [np.asarray(ops.convert_to_numpy(o)) for o in keras.tree.flatten(outputs)]


def activation_statistics(
    model: keras.Model,
    layers: Sequence[LayerRef] | None,
    x: Any,
    training: bool = False,
    thresholds: Sequence[float] = THRESHOLDS,
    batch_size: int | None = None,
    kappa2: bool = False,
) -> dict[str, np.ndarray]:
    """Per-layer activation statistics on a probe batch (SPEC §4.4, §4.5); no side effects.

    Args:
        model: a functional or Sequential model.
        layers: layers or names to probe, in order; ``None`` probes every layer.
        x: the probe inputs (an array, or the model's input structure of arrays).
        training: ``True`` runs BN on batch statistics (init-time checks, §4.5);
            ``False`` on moving statistics. Defaults to False.
        thresholds: t for the fractions |h| > t. Defaults to (0, 0.05, 0.5, 5, 50).
        batch_size: rows per forward pass. Defaults to the whole probe in training mode
            and to ``INFERENCE_CHUNK`` in inference mode.
        kappa2: also compute κ2 of each layer's samples × units matrix. Defaults to False.

    Returns:
        Arrays over the probed layers: ``layer`` (names), ``units``, ``mean_abs``,
        ``normalised_mean_abs``, ``max_abs``, ``frac_above_<t>`` per threshold,
        ``frac_zero``, ``dead_units`` and, with ``kappa2``, ``kappa_2``.
    """
    probe = probe_model(model, layers)
    return measure(probe, x, training, thresholds, batch_size, kappa2)


def statistics_csv(stats: dict[str, np.ndarray]) -> str:
    """The per-layer table as CSV: a 1-based ``index`` column, then every stats key."""
    keys = list(stats)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", *keys])
    for i in range(len(stats["layer"])):
        row = [stats[k][i] for k in keys]
        writer.writerow([i + 1, *(repr(float(v)) if isinstance(v, float) else v for v in row)])
    return buffer.getvalue()


def summary(stats: dict[str, np.ndarray], kappa_inf: dict[str, float] | None = None) -> dict:
    """A handful of scalars summarising the per-layer table (SPEC §0.2)."""
    mean_abs = stats["mean_abs"]
    out = {
        "mean_abs_first": mean_abs[0],
        "mean_abs_last": mean_abs[-1],
        "mean_abs_ratio_last_first": mean_abs[-1] / mean_abs[0] if mean_abs[0] else np.nan,
        "max_abs_max": np.max(stats["max_abs"]),
        "frac_zero_mean": np.mean(stats["frac_zero"]),
        "dead_units_total": np.sum(stats["dead_units"]),
    }
    if threshold_key(0.05) in stats:
        out["frac_above_0.05_min"] = np.min(stats[threshold_key(0.05)])
    if "kappa_2" in stats:
        out["kappa_2_median"] = np.median(stats["kappa_2"])
        out["kappa_2_n_inf"] = np.sum(np.isinf(stats["kappa_2"]))
    if kappa_inf:
        out["kappa_inf_median"] = np.median(list(kappa_inf.values()))
        out["kappa_inf_max"] = np.max(list(kappa_inf.values()))
    return {k: float(v) for k, v in out.items()}


class ActivationStats(keras.callbacks.Callback):
    """Logs activation statistics (and conditioning) of a fixed probe batch (SPEC §0.4, §4.4).

    Measures at train begin (step 0), every ``freq`` epochs (step = epochs completed)
    and at train end (unless that step was just measured). Each measurement is kept in
    ``history`` and, inside an MLflow run, logged through :mod:`depthlab.tracking`:
    summary scalars ``<name>/...`` in one ``log_metrics`` call, the per-layer table as
    ``<artifact_dir>/<name>_step<NNNN>.csv`` and a mean/max |h| plot as ``.png``; with
    ``conditioning``, κ∞ of the square Dense kernels as ``..._kappa_inf_step<NNNN>.csv``
    and a κ∞/κ2 plot. Per-layer values go only to artifacts (§0.2).

    Args:
        x: the probe inputs, fixed here (e.g. 1,024 training images, §4.5).
        layers: layers or names to probe; ``None`` probes every layer. Defaults to None.
        training: BN on batch statistics (True) or moving statistics. Defaults to False.
        freq: measure every ``freq`` epochs; 0 only at train begin/end. Defaults to 1.
        thresholds: t for the fractions |h| > t. Defaults to (0, 0.05, 0.5, 5, 50).
        batch_size: rows per forward pass; see :func:`activation_statistics`.
            Defaults to None.
        conditioning: also κ2 per probed layer and κ∞ per square Dense kernel.
            Defaults to False.
        name: metric prefix and artifact stem. Defaults to ``"act_train"`` in
            training mode, else ``"act"``.
        artifact_dir: artifact folder. Defaults to ``"diagnostics"``.
    """

    def __init__(
        self,
        x: Any,
        layers: Sequence[LayerRef] | None = None,
        training: bool = False,
        freq: int = 1,
        thresholds: Sequence[float] = THRESHOLDS,
        batch_size: int | None = None,
        conditioning: bool = False,
        name: str | None = None,
        artifact_dir: str = "diagnostics",
    ):
        super().__init__()
        if freq < 0:
            raise ValueError(f"freq must be >= 0. Received: freq={freq}")
        self.x = keras.tree.map_structure(np.asarray, x)
        self.layers = layers
        self.training = training
        self.freq = freq
        self.thresholds = tuple(thresholds)
        self.batch_size = batch_size
        self.conditioning = conditioning
        self.name = name or ("act_train" if training else "act")
        self.artifact_dir = artifact_dir
        self.history: list[dict[str, Any]] = []
        self._probe: keras.Model | None = None
        self._probed: keras.Model | None = None
        self._last_step: int | None = None
        self._epochs_done = 0

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        if self._probed is not model:
            self._probe = probe_model(model, self.layers)
            self._probed = model

    def record(self, step: int) -> dict[str, Any]:
        """Measure now, append to ``history`` and log at ``step``; returns the entry."""
        model = self.model  # under JAX this syncs the trained state into the variables
        stats = measure(
            self._probe, self.x, self.training, self.thresholds, self.batch_size, self.conditioning
        )
        kappas = conditioning.kernel_conditioning(model) if self.conditioning else None
        entry = {"step": step, "stats": stats, "kappa_inf": kappas}
        self.history.append(entry)
        self._last_step = step
        self._log(entry)
        return entry

    def _log(self, entry: dict[str, Any]) -> None:
        step, stats, kappas = entry["step"], entry["stats"], entry["kappa_inf"]
        stem = f"{self.artifact_dir}/{self.name}"
        metrics = summary(stats, kappas)
        tracking.log_metrics({f"{self.name}/{k}": v for k, v in metrics.items()}, step)
        tracking.log_text(statistics_csv(stats), f"{stem}_step{step:04d}.csv")
        title = f"{self.name}, step {step}"
        figure = plots.activation_statistics(stats, title)
        tracking.log_figure(figure, f"{stem}_step{step:04d}.png")
        if self.conditioning:
            tracking.log_text(
                conditioning.conditioning_csv(kappas), f"{stem}_kappa_inf_step{step:04d}.csv"
            )
            figure = plots.conditioning(kappas, stats["kappa_2"], title)
            tracking.log_figure(figure, f"{stem}_conditioning_step{step:04d}.png")

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.history = []
        self._last_step = None
        self._epochs_done = 0
        self.record(0)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._epochs_done = epoch + 1
        if self.freq and self._epochs_done % self.freq == 0:
            self.record(self._epochs_done)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._last_step != self._epochs_done:
            self.record(self._epochs_done)
