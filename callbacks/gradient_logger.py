"""GradientLogger: per-layer gradient norms and mean |g| to memory and MLflow (SPEC §0.2, §0.4).

The gradients are measured on device by :class:`GradientCapture` (the model's optimizer);
this callback only reads the capture's variables, every ``every_n_steps`` steps and at the
end of each epoch, and never imports a backend.

Why ``on_train_batch_begin``: a callback that overrides ``on_train_batch_end`` turns off
Keras' asynchronous batch-end dispatch, which then converts the logs to Python floats
after every step (a device sync per step). The state after step k is the state before
step k + 1, so reading at the start of the next batch costs nothing extra; the last step
of an epoch is read in ``on_epoch_end``. Under JAX the state lives outside the model
variables mid-epoch (keras#19054): the ``model`` property of a callback syncs it, so the
callback touches ``self.model`` only when it reads. Its history travels in the runner's
training backup (``backup_state``/``restore_state``), so a resumed run's gradient
artifacts cover the whole run, as an uninterrupted run's do.

Scale: a 10,000-layer net has ~25,000 gradient tensors. Above ``max_tensors`` entries the
logger aggregates per group (by default the label's path cut back until few enough groups
remain: a layer, then a block): a group's norm is the L2 norm of its tensors' gradients,
its mean |g| the size-weighted mean. Matrices are float32 and go to ``.npz`` (CSV beside it).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np

from depthlab import plots
from depthlab.callbacks.gradient_capture import GradientCapture, find_capture

_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")


class GradientLogger(keras.callbacks.Callback):
    """Log the gradients the optimizer applies (SPEC §0.4 definition, §0.2 limits).

    Memory (``history``): per epoch, the last batch's mean |g| and norm per entry (the
    VGG gradient flow, SPEC §3.4) and the mean over all the epoch's steps; every N steps,
    the norm and mean |g| per entry, the global norm and the clip factor.

    MLflow (through ``depthlab.tracking``, nothing without an active run), once per epoch at
    step = epoch, like every training curve: ``grad/global_norm`` and, when the optimizer
    clips by global norm, ``grad/clip_factor`` of the epoch's last batch;
    ``grad/min_layer_norm``, ``grad/max_layer_norm`` and ``grad/first_last_ratio`` (first
    entry over the last, model order) of the epoch's mean norms; ``grad_mean_abs/<entry>``
    of the last batch when per-layer metrics are on (at most ``max_layer_metrics``
    entries). At train end ``gradients/history.npz`` (every matrix below), the same as CSV,
    and a [entry x step] heatmap.

    Args:
        every_n_steps: read interval in optimizer steps (each read syncs the device).
            Defaults to 50.
        labels: ``callable(variable) -> str | None`` naming the entries to log (None
            skips a variable). Defaults to every trainable variable, keyed by its path
            without the model's name (``"conv1/kernel"``, not ``"sequential_3/conv1/kernel"``).
        per_layer_metrics: ``"auto"`` (on when there are at most ``max_layer_metrics``
            entries), True or False. Defaults to ``"auto"``.
        max_layer_metrics: the "auto" limit. Defaults to 100.
        max_tensors: above this many labelled tensors, aggregate into groups. Defaults
            to 1000.
        group: ``callable(label) -> group name`` for the aggregation. Defaults to cutting
            the label's path back ("stage_1/block_7/dwconv/kernel" -> "stage_1/block_7/dwconv"
            -> "stage_1/block_7") until at most ``max_tensors`` groups remain.
        log_to_mlflow: send metrics and artifacts to the active MLflow run. Defaults to
            True.
        watch: MLflow metric key -> variable (its path without the model's name, e.g.
            ``{"grad/stem_mean_abs": "stem_conv/kernel"}``): that variable's mean |g| is
            logged as a metric at every read (step = the optimizer step it belongs to),
            whatever the grouping; ``history["watch"]`` holds the series [S x W] in the
            order of ``history["watch_keys"]``. Defaults to none.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        labels: Callable[[Any], str | None] | None = None,
        per_layer_metrics: bool | str = "auto",
        max_layer_metrics: int = 100,
        max_tensors: int = 1000,
        group: Callable[[str], str] | None = None,
        log_to_mlflow: bool = True,
        watch: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        if int(every_n_steps) < 1:
            raise ValueError(f"every_n_steps must be >= 1. Received: every_n_steps={every_n_steps}")
        if per_layer_metrics not in ("auto", True, False):
            raise ValueError(
                "per_layer_metrics must be 'auto', True or False. "
                f"Received: per_layer_metrics={per_layer_metrics!r}"
            )
        if int(max_tensors) < 1:
            raise ValueError(f"max_tensors must be >= 1. Received: max_tensors={max_tensors}")
        self.every_n_steps = int(every_n_steps)
        self.labels = labels
        self.per_layer_metrics = per_layer_metrics
        self.max_layer_metrics = int(max_layer_metrics)
        self.max_tensors = int(max_tensors)
        self.group = group
        self.log_to_mlflow = log_to_mlflow
        self.watch = dict(watch or {})
        self._watch_index = np.zeros(0, int)
        self._capture: GradientCapture | None = None
        self._slice_labels: list[str] = []
        self._reset([], np.zeros(0, int), None)

    # === State ===

    def _reset(self, labels: list[str], index: np.ndarray,
               groups: tuple[np.ndarray, np.ndarray] | None) -> None:
        self._labels, self._index, self._groups = labels, index, groups
        self._epochs: list[int] = []
        self._epoch_rows: dict[str, list[np.ndarray]] = {
            k: [] for k in ("last_mean_abs", "last_norm", "mean_mean_abs", "mean_norm")
        }
        self._epoch_steps: list[int] = []
        self._steps: list[int] = []
        self._step_rows: dict[str, list] = {
            k: [] for k in ("norm", "mean_abs", "global_norm", "clip_factor", "slices",
                            "watch")
        }
        self._epoch_slices: list[np.ndarray] = []
        self._count = 0  # optimizer steps done before the current epoch
        self._last_row_count = 0

    @property
    def history(self) -> dict[str, Any]:
        """The gradients recorded by the last ``fit``, as numpy arrays (float32 matrices).

        Keys: ``labels`` (entries, or groups when aggregated); ``epochs`` [E];
        ``last_mean_abs``, ``last_norm`` [E x L] (the epoch's last batch);
        ``mean_mean_abs``, ``mean_norm`` [E x L] (mean over all the epoch's steps);
        ``epoch_steps`` [E]; ``steps`` [S] (0-based optimizer step); ``step_norms``,
        ``step_mean_abs`` [S x L]; ``global_norm``, ``clip_factor`` [S].
        """
        n = len(self._labels)

        def matrix(rows: list) -> np.ndarray:
            return np.array(rows, "float32").reshape(len(rows), n)

        out: dict[str, Any] = {"labels": list(self._labels)}
        out["epochs"] = np.array(self._epochs, int)
        out.update({k: matrix(v) for k, v in self._epoch_rows.items()})
        out["epoch_steps"] = np.array(self._epoch_steps, int)
        out["steps"] = np.array(self._steps, int)
        out["step_norms"] = matrix(self._step_rows["norm"])
        out["step_mean_abs"] = matrix(self._step_rows["mean_abs"])
        out["global_norm"] = np.array(self._step_rows["global_norm"], "float64")
        out["clip_factor"] = np.array(self._step_rows["clip_factor"], "float64")
        k = len(self._slice_labels)

        def slices(rows: list) -> np.ndarray:
            return np.array(rows, "float32").reshape(len(rows), k)

        out["watch_keys"] = list(self.watch)
        out["watch"] = np.array(self._step_rows["watch"], "float64").reshape(
            len(self._step_rows["watch"]), len(self.watch))
        out["slice_labels"] = list(self._slice_labels)
        out["step_slice_norms"] = slices(self._step_rows["slices"])
        out["epoch_slice_norms"] = slices(self._epoch_slices)
        return out

    @property
    def per_layer_enabled(self) -> bool:
        """Whether per-layer metric keys go to MLflow (SPEC §0.2: only for <= ~100 entries)."""
        if self.per_layer_metrics == "auto":
            return len(self._labels) <= self.max_layer_metrics
        return bool(self.per_layer_metrics)

    # === Callback hooks ===

    def on_train_begin(self, logs: dict | None = None) -> None:
        model = self.model
        capture = find_capture(model.optimizer)
        if capture is None:
            raise ValueError(
                "GradientLogger needs a model compiled with a GradientCapture optimizer: "
                "model.compile(optimizer=depthlab.callbacks.with_gradient_capture(opt), ...). "
                f"Received: optimizer={model.optimizer!r}"
            )
        if not capture.built:
            capture.build(model.trainable_variables)
        self._capture = capture
        labels, index = [], []
        prefix = f"{model.name}/"
        paths = [v.path.removeprefix(prefix) for v in capture.tracked_variables]
        missing = sorted(set(self.watch.values()) - set(paths))
        if missing:
            raise ValueError(f"GradientLogger watch: no trainable variable {missing}. "
                             f"Received: watch={self.watch}")
        self._watch_index = np.array([paths.index(p) for p in self.watch.values()], int)
        for i, variable in enumerate(capture.tracked_variables):
            if self.labels is not None:
                label = self.labels(variable)
            else:
                label = variable.path.removeprefix(prefix)
            if label is not None:
                labels.append(str(label))
                index.append(i)
        if len(set(labels)) != len(labels):
            raise ValueError(f"GradientLogger labels must be unique. Received: labels={labels}")
        index = np.array(index, int)
        groups = None
        if len(labels) > self.max_tensors:
            labels, groups = self._grouping(labels, capture.sizes[index])
        self._reset(labels, index, groups)
        self._slice_labels = capture.slice_labels
        self._count = int(keras.ops.convert_to_numpy(capture.iterations))
        self._last_row_count = self._count

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model  # noqa: B018  (JAX: make sure the state sits in the variables)
        self._capture.reset_running()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        count = self._count + batch
        if count // self.every_n_steps > self._last_row_count // self.every_n_steps:
            self._step_row(count, self._read())

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        values = self._read()
        steps = int(values["steps"])
        self._count = int(values["iterations"])
        if self._count // self.every_n_steps > self._last_row_count // self.every_n_steps:
            self._step_row(self._count, values)
        self._epochs.append(int(epoch))
        self._epoch_steps.append(steps)
        rows = self._epoch_rows
        last_norm, last_mean = self._entries(values["last_norm"], values["last_mean_abs"])
        denominator = max(steps, 1)
        mean_norm, mean_mean = self._entries(values["sum_norm"] / denominator,
                                             values["sum_mean_abs"] / denominator)
        rows["last_norm"].append(last_norm)
        rows["last_mean_abs"].append(last_mean)
        rows["mean_norm"].append(mean_norm)
        rows["mean_mean_abs"].append(mean_mean)
        self._epoch_slices.append(values["slice_norms"].astype("float32"))
        if self.log_to_mlflow and len(self._labels):
            self._log_epoch(epoch, values, last_mean, mean_norm)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.log_to_mlflow and self._labels:
            self._log_artifacts()

    # === Backup part ===

    def backup_state(self, folder: Path) -> dict:
        h = self.history
        arrays = {k: v for k, v in h.items()
                  if k not in ("labels", "slice_labels", "watch_keys")}
        np.savez(folder / "gradient_history.npz", **arrays)
        return {"labels": h["labels"], "count": self._count,
                "last_row_count": self._last_row_count}

    def restore_state(self, folder: Path, state: Mapping) -> None:
        # Keras' automatic layer names differ between builds in one process: compare sizes.
        if len(state.get("labels", [])) != len(self._labels):
            raise ValueError("the backed-up gradient history is of another model")
        with np.load(folder / "gradient_history.npz") as saved:
            h = {k: saved[k] for k in saved.files}
        self._epochs = h["epochs"].tolist()
        self._epoch_steps = h["epoch_steps"].tolist()
        for key in self._epoch_rows:
            self._epoch_rows[key] = list(h[key])
        self._steps = h["steps"].tolist()
        self._step_rows = {"norm": list(h["step_norms"]), "mean_abs": list(h["step_mean_abs"]),
                           "global_norm": h["global_norm"].tolist(),
                           "clip_factor": h["clip_factor"].tolist(),
                           "slices": list(h["step_slice_norms"]),
                           "watch": list(h["watch"]) if "watch" in h else []}
        self._epoch_slices = list(h["epoch_slice_norms"])
        self._count, self._last_row_count = int(state["count"]), int(state["last_row_count"])

    # === Entries and groups ===

    def _grouping(self, labels: list[str], sizes: np.ndarray
                  ) -> tuple[list[str], tuple[np.ndarray, np.ndarray]]:
        """Group names in model order, and per labelled tensor (group index, size)."""
        names = list(labels)
        if self.group is not None:
            names = [self.group(label) for label in labels]
        else:
            while len(dict.fromkeys(names)) > self.max_tensors and any("/" in n for n in names):
                names = [n.rsplit("/", 1)[0] if "/" in n else n for n in names]
        order = list(dict.fromkeys(names))
        position = {name: i for i, name in enumerate(order)}
        return order, (np.array([position[n] for n in names]), np.asarray(sizes, "float64"))

    def _entries(self, norms: np.ndarray, mean_abs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-entry (norm, mean |g|) of the labelled tensors, aggregated into groups."""
        norms, mean_abs = norms[self._index], mean_abs[self._index]
        if self._groups is None:
            return norms.astype("float32"), mean_abs.astype("float32")
        which, sizes = self._groups
        n = len(self._labels)
        squares = np.bincount(which, norms.astype("float64") ** 2, minlength=n)
        totals = np.bincount(which, mean_abs * sizes, minlength=n)
        counts = np.bincount(which, sizes, minlength=n)
        return np.sqrt(squares).astype("float32"), (totals / counts).astype("float32")

    # === Reading and logging ===

    def _read(self) -> dict[str, np.ndarray]:
        self.model  # noqa: B018  (JAX: accessing the model syncs the state into the variables)
        values = self._capture.read()
        return {k: np.asarray(v, "float64") for k, v in values.items()}

    def _step_row(self, count: int, values: dict[str, np.ndarray]) -> None:
        self._last_row_count = count
        norms, mean_abs = self._entries(values["last_norm"], values["last_mean_abs"])
        self._steps.append(count - 1)  # 0-based index of the step whose gradients these are
        self._step_rows["norm"].append(norms)
        self._step_rows["mean_abs"].append(mean_abs)
        self._step_rows["global_norm"].append(float(values["last_global_norm"]))
        self._step_rows["clip_factor"].append(float(values["last_clip_factor"]))
        self._step_rows["slices"].append(values["slice_norms"].astype("float32"))
        if self.watch:
            watched = values["last_mean_abs"][self._watch_index]
            self._step_rows["watch"].append(watched)
            if self.log_to_mlflow:
                from depthlab import tracking

                tracking.log_metrics(dict(zip(self.watch, map(float, watched), strict=True)),
                                     step=count - 1)

    def _log_epoch(self, epoch: int, values: dict[str, np.ndarray], last_mean: np.ndarray,
                   mean_norm: np.ndarray) -> None:
        from depthlab import tracking

        metrics = {
            "grad/global_norm": float(values["last_global_norm"]),
            "grad/min_layer_norm": float(mean_norm.min()),
            "grad/max_layer_norm": float(mean_norm.max()),
        }
        if mean_norm[-1] > 0:
            metrics["grad/first_last_ratio"] = float(mean_norm[0] / mean_norm[-1])
        if self._capture.clipnorm_global is not None:
            metrics["grad/clip_factor"] = float(values["last_clip_factor"])
        slices = values["slice_norms"]
        if len(slices):  # per-block norms of stacked weights: summaries only (SPEC §0.2)
            metrics.update({"grad/slice_total": float(np.sqrt(np.sum(slices**2))),
                            "grad/slice_min": float(slices.min()),
                            "grad/slice_max": float(slices.max())})
            if slices[-1] > 0:
                metrics["grad/slice_first_last_ratio"] = float(slices[0] / slices[-1])
        if self.per_layer_enabled:
            for label, value in zip(self._labels, last_mean, strict=True):
                metrics[f"grad_mean_abs/{_KEY_CHARS.sub('_', label)}"] = float(value)
        tracking.log_metrics(metrics, step=epoch)

    def _log_artifacts(self) -> None:
        import tempfile

        from depthlab import tracking

        h = self.history
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "history.npz"
            np.savez_compressed(file, **{k: np.asarray(v) for k, v in h.items()})
            tracking.log_file(file, "gradients")
        tables = {
            "step_norms": ("step", h["steps"], h["step_norms"]),
            "step_mean_abs": ("step", h["steps"], h["step_mean_abs"]),
            "epoch_last_mean_abs": ("epoch", h["epochs"], h["last_mean_abs"]),
            "epoch_last_norm": ("epoch", h["epochs"], h["last_norm"]),
            "epoch_mean_norm": ("epoch", h["epochs"], h["mean_norm"]),
        }
        for name, (index_name, index, matrix) in tables.items():
            text = _csv(index_name, index, h["labels"], matrix)
            tracking.log_text(text, f"gradients/{name}.csv")
        summary = np.stack([h["global_norm"], h["clip_factor"]], axis=1)
        text = _csv("step", h["steps"], ["global_norm", "clip_factor"], summary)
        tracking.log_text(text, "gradients/step_summary.csv")
        if len(h["steps"]):
            figure = plots.gradient_heatmap(h["steps"], h["labels"], h["step_norms"])
            tracking.log_figure(figure, "gradients/norms_heatmap.png")
        if h["slice_labels"] and len(h["steps"]):
            text = _csv("step", h["steps"], h["slice_labels"], h["step_slice_norms"])
            tracking.log_text(text, "gradients/step_slice_norms.csv")
            figure = plots.gradient_heatmap(h["steps"], h["slice_labels"], h["step_slice_norms"],
                                            ylabel="block (slice of the stacked weight)")
            tracking.log_figure(figure, "gradients/slice_norms_heatmap.png")


def _csv(index_name: str, index: np.ndarray, labels: list[str], matrix: np.ndarray) -> str:
    """A CSV table: one row per index value, one column per label (9 significant digits)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([index_name, *labels])
    for i, row in zip(index, matrix, strict=True):
        writer.writerow([int(i), *(format(v, ".9g") for v in row)])
    return buffer.getvalue()
