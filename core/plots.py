"""Every figure depthlab draws, in one place (matplotlib ``Figure`` objects, Agg rendering:
no display, no pyplot state shared between jobs).

Figures are drawn from numbers read back from MLflow (or from a job's arrays), so a table's
figures can be redrawn from the store at any time.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure

matplotlib.use("Agg")


def _title(figure: Figure, text: str, width: int = 110) -> None:
    """A suptitle wrapped to the figure instead of clipped at its edge."""
    figure.suptitle("\n".join(textwrap.wrap(text, width)), fontsize=9)


def _label(axes, name: str, xlabel: str, ylabel: str, log_y: bool) -> None:
    """A panel's title, axis labels, optional log y axis and grid."""
    axes.set_title(name, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if log_y:
        axes.set_yscale("log")
    axes.grid(True, alpha=0.3)


def gradient_flow(labels: Sequence[str], per_epoch: np.ndarray, title: str,
                  ylabel: str = "mean |grad|", epochs: Sequence[int] | None = None) -> Figure:
    """The course's gradient-flow plot (SPEC §3.1) beside the same data on a log axis.

    Top: layers in model order on x, linear y from 0, as the course draws it. Bottom: log
    y, where VGG38's 1e-18 and BatchNorm's 0.4 both stay visible (on the linear axis both
    read "0"). One line per epoch, coloured from early (light) to late (dark), with a legend.

    Args:
        labels: entry names in model order.
        per_epoch: array [epochs, len(labels)].
        title: figure title (names the model and the dataset).
        ylabel: the quantity. Defaults to "mean |grad|".
        epochs: the epoch of each row (1-based in the legend). Defaults to 0, 1, ...
    """
    values = np.asarray(per_epoch, dtype=float).reshape(-1, len(labels))
    epochs = list(range(len(values))) if epochs is None else list(epochs)
    figure = Figure(figsize=(max(8.0, 0.15 * len(labels) + 2), 9.0), layout="constrained")
    linear, log = figure.subplots(2, 1)
    colours = matplotlib.colormaps["viridis"](np.linspace(0.85, 0.0, max(len(values), 1)))
    x = np.arange(len(labels))
    shown = set(np.linspace(0, len(values) - 1, min(len(values), 8)).astype(int))
    for i, (row, colour) in enumerate(zip(values, colours, strict=False)):
        label = f"epoch {epochs[i] + 1}" if i in shown else None
        linear.plot(x, row, color=colour, linewidth=1, label=label)
        log.plot(x, np.where(row > 0, row, np.nan), color=colour, linewidth=1)
    for axes, scale in ((linear, "linear"), (log, "log")):
        axes.set_xticks(x, labels if scale == "log" else [], rotation=90, fontsize=6)
        axes.set_xlim(-0.5, len(labels) - 0.5)
        axes.set_yscale(scale)
        axes.set_ylabel(f"{ylabel} ({scale})")
        axes.grid(True, alpha=0.3)
    linear.set_ylim(bottom=0)
    if len(values):
        linear.legend(fontsize=7, title="epoch" if len(values) > 1 else None)
    _title(figure, title)
    return figure


def gradient_flow_models(flows: Mapping[str, tuple[Sequence[str], np.ndarray]],
                         title: str, ylabel: str = "mean |grad|") -> Figure:
    """Several models' gradient flow on one log axis (e.g. five VGGs at initialisation).

    Args:
        flows: model name -> (labels in model order, values per label).
        title: figure title.
        ylabel: the quantity. Defaults to "mean |grad|".
    """
    figure = Figure(figsize=(10.0, 5.0), layout="constrained")
    axes = figure.add_subplot()
    for name, (labels, values) in flows.items():
        values = np.asarray(values, dtype=float)
        position = np.linspace(0.0, 1.0, len(labels)) if len(labels) > 1 else np.zeros(1)
        axes.plot(position, np.where(values > 0, values, np.nan), marker=".", linewidth=1,
                  label=f"{name} ({len(labels)} entries)")
    axes.set_yscale("log")
    axes.set_xlabel("depth: entry position in model order (input 0 → output 1)")
    axes.set_ylabel(f"{ylabel} (log)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    _title(figure, title)
    return figure


def training_curves(history: Mapping[str, Sequence[float]], title: str) -> Figure:
    """Loss and accuracy vs epoch, train and validation (SPEC §3.1 Fig. 1)."""
    figure = Figure(figsize=(9, 3.8), layout="constrained")
    for key, axes in zip(("loss", "accuracy"), figure.subplots(1, 2), strict=True):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                axes.plot(np.arange(1, len(values) + 1), values, style,
                          label="train" if not prefix else "val")
        axes.set_xlabel("epoch")
        axes.set_ylabel(key)
        axes.grid(True, alpha=0.3)
        axes.legend()
    _title(figure, title)
    return figure


def gradient_heatmap(steps: np.ndarray, labels: Sequence[str], norms: np.ndarray,
                     ylabel: str = "variable (model order)") -> Figure:
    """A [label x step] heatmap of log10 gradient norm (zeros left blank)."""
    with np.errstate(divide="ignore"):
        image = np.ma.masked_invalid(np.log10(np.asarray(norms, "float64").T))
    height = min(2.0 + 0.15 * len(labels), 20.0)
    figure = Figure(figsize=(8.0, height), layout="constrained")
    axes = figure.add_subplot()
    mesh = axes.imshow(image, aspect="auto", interpolation="nearest", cmap="viridis")
    ticks = np.linspace(0, len(steps) - 1, min(len(steps), 8)).astype(int)
    axes.set_xticks(ticks, [str(steps[t]) for t in ticks])
    if len(labels) <= 60:
        axes.set_yticks(range(len(labels)), labels, fontsize=6)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(ylabel)
    figure.colorbar(mesh, ax=axes, label="log10 ||grad||")
    return figure


def activation_statistics(stats: Mapping[str, np.ndarray], title: str = "") -> Figure:
    """mean|h| and max|h| against layer index, log y (SPEC §4.1 Figs. 2–4)."""
    figure = Figure(figsize=(7, 4))  # fixed margins: a layout engine doubles render time
    figure.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.91)
    axes = figure.add_subplot()
    index = np.arange(1, len(stats["layer"]) + 1)
    for key, label in (("mean_abs", "mean |h|"), ("max_abs", "max |h|")):
        values = np.where(stats[key] > 0, stats[key], np.nan)
        axes.plot(index, values, marker=".", label=label)
    axes.set_yscale("log")
    axes.set_xlabel("layer")
    axes.set_ylabel("|h|")
    axes.set_title(title)
    axes.legend()
    return figure


def conditioning(kappas: Mapping[str, float], kappa_2_values: Sequence[float] | None = None,
                 title: str = "") -> Figure:
    """κ∞ per square kernel and, when given, κ2 per probed layer, log y (SPEC §4.1 Fig. 5).

    Infinite values cannot be drawn on a log axis; their count is given in the legend.

    Args:
        kappas: ``{layer: κ∞}`` from :func:`depthlab.callbacks.conditioning.kernel_conditioning`.
        kappa_2_values: κ2 per probed layer, or ``None``.
        title: the figure title.
    """
    figure = Figure(figsize=(7, 4))  # fixed margins: a layout engine doubles render time
    figure.subplots_adjust(left=0.11, right=0.97, bottom=0.13, top=0.91)
    axes = figure.add_subplot()
    series = [("κ∞(W), square kernels", np.array(list(kappas.values()), dtype=np.float64))]
    if kappa_2_values is not None:
        series.append(("κ2(H), probed layers", np.asarray(kappa_2_values, dtype=np.float64)))
    for label, values in series:
        n_inf = int(np.sum(np.isinf(values)))
        finite = np.where(np.isfinite(values) & (values > 0), values, np.nan)
        axes.plot(np.arange(1, len(values) + 1), finite, marker=".", label=f"{label} ({n_inf} ∞)")
    axes.set_yscale("log")
    axes.set_xlabel("layer")
    axes.set_ylabel("condition number")
    axes.set_title(title)
    axes.legend()
    return figure


def bootstrap_ci(samples: np.ndarray, level: float = 0.95, resamples: int = 1000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seaborn's default: 1000 resamples).

    Non-finite samples are left out; (nan, nan) when none is finite.
    """
    values = np.asarray(samples, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(resamples, len(values))).mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mean_ci_panels(panels: Mapping[str, tuple[Sequence[float], np.ndarray]], xlabel: str,
                   ylabel: str, title: str, log_y: bool = False) -> Figure:
    """One panel per entry: the mean of the samples at each x with its 95 % bootstrap
    interval as a band (the paper's Figs 1, 3-5); y-axes are not shared.

    Args:
        panels: panel title -> (x values, samples [len(x), n]).
        xlabel, ylabel: axis labels.
        title: figure title.
        log_y: logarithmic y axes. Defaults to False.
    """
    figure = Figure(figsize=(4.2 * len(panels), 3.8), layout="constrained")
    for axes, (name, (x, samples)) in zip(np.atleast_1d(figure.subplots(1, len(panels))),
                                          panels.items(), strict=True):
        samples = np.asarray(samples, dtype=float)
        finite = np.where(np.isfinite(samples), samples, np.nan)
        means = np.nanmean(finite, axis=1)
        bands = np.array([bootstrap_ci(row) for row in samples])
        axes.plot(x, means, marker="o", markersize=3)
        axes.fill_between(x, bands[:, 0], bands[:, 1], alpha=0.25)
        _label(axes, name, xlabel, ylabel, log_y)
    _title(figure, title)
    return figure


def histograms(series: Mapping[str, np.ndarray], title: str) -> Figure:
    """One histogram per entry, side by side (the paper's Fig 2)."""
    figure = Figure(figsize=(4.5 * len(series), 3.8), layout="constrained")
    for axes, (name, values) in zip(np.atleast_1d(figure.subplots(1, len(series))),
                                    series.items(), strict=True):
        values = np.asarray(values, dtype=float)
        axes.hist(values[np.isfinite(values)], bins="auto")
        axes.set_xlabel(name)
        axes.set_ylabel("networks")
        axes.grid(True, alpha=0.3)
    _title(figure, title)
    return figure


def paths(series: Mapping[str, np.ndarray], title: str, xlabel: str = "t",
          separate: bool = False) -> Figure:
    """Paths on [0, 1], on one axis (the paper's Fig 6) or one panel each (Fig 8)."""
    count = len(series) if separate else 1
    figure = Figure(figsize=(4.5 * count if separate else 7, 4), layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, count))
    for i, (name, values) in enumerate(series.items()):
        axes = panels[i if separate else 0]
        values = np.asarray(values, dtype=float)
        axes.plot(np.linspace(0, 1, len(values)), values, linewidth=0.8, label=name)
        if separate:
            axes.set_title(name, fontsize=9)
    for axes in panels:
        axes.set_xlabel(xlabel)
        axes.grid(True, alpha=0.3)
    if not separate:
        panels[0].legend()
    _title(figure, title)
    return figure


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around (possibly unevenly spaced) centres: midpoints, ends mirrored."""
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def heatmaps(maps: Mapping[str, np.ndarray], x: Sequence[float], y: Sequence[float],
             xlabel: str, ylabel: str, title: str, limits: tuple[float, float] = (-1, 1),
             overlay: tuple[Sequence[float], Sequence[float], str] | None = None) -> Figure:
    """Heatmaps side by side, rows = y upward, columns = x, diverging colours centred on
    the middle of ``limits`` (the paper's Figs 7 and 9); cells need not be evenly spaced.

    Args:
        maps: panel title -> values [len(y), len(x)].
        x, y: the column and row coordinates (cell centres).
        xlabel, ylabel: axis labels.
        title: figure title.
        limits: colour range. Defaults to (-1, 1).
        overlay: (x, y, label) of a line drawn over every panel, e.g. a predicted boundary.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    figure = Figure(figsize=(5.2 * len(maps), 4.6), layout="constrained")
    for axes, (name, values) in zip(np.atleast_1d(figure.subplots(1, len(maps))), maps.items(),
                                    strict=True):
        image = axes.pcolormesh(_edges(x), _edges(y), np.asarray(values, float),
                                cmap="RdBu_r", vmin=limits[0], vmax=limits[1])
        if overlay is not None:
            axes.plot(overlay[0], overlay[1], "k--", linewidth=1.2, label=overlay[2])
            axes.legend(fontsize=7, loc="lower right")
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(name, fontsize=10)
        figure.colorbar(image, ax=axes)
    _title(figure, title)
    return figure


def line_panels(panels: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
                xlabel: str, ylabel: str, title: str, log_y: bool = False,
                styles: Mapping[str, str] | None = None) -> Figure:
    """One panel per entry, one line per series (Oyedotun's per-layer Figs 2-5, A1, and
    error vs depth, Figs 1 and 9); non-finite points are left out of a log axis.

    Args:
        panels: panel title -> series label -> (x, y).
        xlabel, ylabel: axis labels.
        title: figure title.
        log_y: logarithmic y axes. Defaults to False.
        styles: series label -> matplotlib format string (e.g. "--" for test error).
    """
    figure = Figure(figsize=(4.4 * len(panels), 3.9), layout="constrained")
    for axes, (name, series) in zip(np.atleast_1d(figure.subplots(1, len(panels))),
                                    panels.items(), strict=True):
        for label, (x, y) in series.items():
            y = np.asarray(y, dtype=float)
            if log_y:
                y = np.where(y > 0, y, np.nan)
            axes.plot(x, y, (styles or {}).get(label, "-"), marker="o", markersize=2,
                      linewidth=1, label=label)
        _label(axes, name, xlabel, ylabel, log_y)
        if len(series) > 1:
            axes.legend(fontsize=7)
    _title(figure, title)
    return figure


def activation_images(images: Mapping[str, np.ndarray], title: str) -> Figure:
    """Activations as images, units down, samples across (Oyedotun's Figs 6-8), each panel
    with its own colour scale (their ranges differ by orders of magnitude) and a colour bar."""
    figure = Figure(figsize=(4.6 * len(images), 4.2), layout="constrained")
    for axes, (name, values) in zip(np.atleast_1d(figure.subplots(1, len(images))),
                                    images.items(), strict=True):
        shown = axes.imshow(np.asarray(values, dtype=float), aspect="auto", cmap="viridis",
                            interpolation="nearest")
        axes.set_title(name, fontsize=9)
        axes.set_xlabel("sample")
        axes.set_ylabel("unit")
        figure.colorbar(shown, ax=axes)
    _title(figure, title)
    return figure


def points_on_curves(curves: Mapping[str, Callable[[np.ndarray], np.ndarray]],
                     points: np.ndarray, span: tuple[float, float], xlabel: str,
                     title: str) -> Figure:
    """One panel per curve f(x) over ``span``, with ``points`` (x values) marked on it (the
    ConvNeXt study's sigmoid demo: pre-activations on sigmoid and on its derivative)."""
    x = np.linspace(span[0], span[1], 2001)
    points = np.asarray(points, dtype=float)
    figure = Figure(figsize=(4.6 * len(curves), 3.9), layout="constrained")
    for axes, (name, f) in zip(np.atleast_1d(figure.subplots(1, len(curves))), curves.items(),
                               strict=True):
        axes.plot(x, f(x), linewidth=1, color="0.4")
        axes.scatter(points, f(points), s=6, color="tab:red", alpha=0.5, zorder=3)
        _label(axes, name, xlabel, name, False)
    _title(figure, title)
    return figure
