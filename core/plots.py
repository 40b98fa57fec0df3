"""Figures shared by the studies (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def gradient_flow(labels: Sequence[str], per_epoch: np.ndarray, title: str,
                  ylabel: str = "mean |grad|") -> Figure:
    """The course's gradient-flow plot (SPEC §3.1): layers in model order on x, linear y
    from 0, one line per epoch (alpha 0.3).

    Args:
        labels: entry names in model order.
        per_epoch: array [epochs, len(labels)].
        title: figure title (names the model and the dataset).
    """
    values = np.asarray(per_epoch, dtype=float)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(labels) + 2), 4.5), layout="constrained")
    x = np.arange(len(labels))
    for row in values:
        ax.plot(x, row, alpha=0.3, color="tab:blue", linewidth=1)
    ax.set_xticks(x, labels, rotation=90, fontsize=7)
    ax.set_ylim(bottom=0)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    return fig


def training_curves(history: Mapping[str, Sequence[float]], title: str) -> Figure:
    """Loss and accuracy vs epoch, train and validation (SPEC §3.1 Fig. 1)."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    for key, ax in (("loss", loss_ax), ("accuracy", acc_ax)):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                ax.plot(np.arange(1, len(values) + 1), values, style,
                        label="train" if not prefix else "val")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
