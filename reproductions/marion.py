"""Study §2: Marion et al., scaling residual networks in the large-depth regime.

alpha_L = L^-beta scales each of L residual blocks. The figures, one table each:

  ``fig1`` / ``fig3``  out_diff / grad_diff vs L, i.i.d. res-3 blocks, beta = 1, 1/4, 1/2
  ``fig2``             histograms of out_ratio and grad_ratio, d = 100, L = 1000, beta = 1/2
  ``fig4`` / ``fig5``  out_diff / grad_diff vs L, smooth (GP) blocks, beta = 2, 1/2, 1
  ``fig6``             three fBm paths (H 0.2 / 0.5 / 0.8) and the exact sampler's covariance
  ``fig7``             heatmaps of mean log10 out_diff / grad_diff over (beta, H), fBm blocks
  ``fig8``             res-1 (d=30, L=1000) trained on MNIST: one weight entry V_k[i,j] vs k
                       for (beta, init) = (1, smooth), (1, iid), (1/2, iid); per-block gradients
  ``fig9``             res-1 with fBm blocks trained on MNIST and CIFAR-10 over (beta, H) x lr:
                       the best test accuracy of each cell ("explosion" where training diverged)

Each plotted point pools ``nets`` networks (fresh weights and input each; mean and 95 %
bootstrap interval). Figs 1 and 3 (and 4 and 5) are two views of the same jobs: the second
table reuses the first's runs. All weights are numpy draws from the seed (identical on every
backend); the propagation runs on the Keras backend in float32, every beta and input of a
network in one state (:func:`depthlab.layers.scaled_residual.propagate`); values that
overflow are "exploded". Each figure comes with a CSV of every per-sample value, and each
table ends with the regimes found set beside the paper's claims and the closed form
(1 + L^-2beta / 2)^L, and the acceptance checks of SPEC §2.7 (holds / FAILS).

Figs 8-9 train with the recipe of SPEC §2.4 (Adam, StepLR per epoch, batch 128, no
normalisation, images flattened in (C, H, W) order); one job per trained network, so Fig 9
resumes per cell. Profiles: ``paper`` is every grid of SPEC §2.1; ``quick`` the CPU-minutes
subsets of §2.5 (Fig 9: three MNIST cells on 2,000 / 1,000 images, lr 1e-2, 5 epochs).

Usage:
    python -m depthlab.reproductions.marion --table fig7 --profile quick --backend jax
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Literal

import numpy as np

from depthlab import config as configs
from depthlab.report import Comparison, claim
from depthlab.reproductions.runner import Context, Job, Outcome, Study

FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9")
FIG9_GRID = tuple(float(v) for v in np.round(np.linspace(0.1, 0.9, 10), 6))  # beta and H
FIG9_LRS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
FIG9_QUICK_CELLS = ((0.9, 0.5), (0.9, 0.9), (0.1, 0.9))
FIG8_CONFIGS = ((1.0, "smooth"), (1.0, "iid"), (0.5, "iid"))
MEMORY_LIMIT = 1 << 30  # bytes one propagation holds at most (weights, states, masks)


@dataclasses.dataclass(frozen=True)
class MarionConfig:
    """One job of the study (SPEC §2.1-2.5). Defaults: the ``paper`` grids.

    Tables set ``task``, ``init``, ``width`` and the job's own ``beta`` / ``hurst``; the
    grids below are what a user may change with ``--set``.
    """

    task: Literal["changes", "fbm", "heatmap", "train", "cells"] = "changes"
    init: Literal["iid", "smooth", "fbm"] = "iid"
    width: int = 40  # d
    inputs: int = 64  # n_in of the synthetic x ~ U[0,1)^64
    beta: float = 0.5  # this job's scaling exponent (changes)
    hurst: float = 0.5  # this job's Hurst index (heatmap)
    depths: tuple[int, ...] = (10, 120, 230, 340, 450, 560, 670, 780, 890, 1000)
    nets: int = 50  # networks per point (Fig 2: per part of FIG2_PART)
    part: int = 0  # Fig 2's 10^4 networks run as resumable parts of FIG2_PART
    depth: int = 1000  # L of Figs 2, 6, 7
    betas: int = 70  # Fig 7 rows: linspace(0, beta_max, betas)
    beta_max: float = 1.3
    hursts: tuple[float, ...] = tuple(np.round(np.linspace(0.05, 0.97, 51), 6))  # Fig 7
    inputs_per_net: int = 10  # Fig 7: fresh inputs per network, all betas reuse it
    paths: int = 20_000  # Fig 6: fGn paths of the covariance check
    # training, Figs 8-9 (SPEC §2.3-2.4): res-1, d = 30, L = depth
    dataset: Literal["mnist", "cifar10"] = "mnist"
    lr: float = 1e-2  # this job's initial learning rate
    epochs: int = 10
    lr_step: int = 5  # StepLR: lr x 0.1 every lr_step epochs (Fig 8: constant)
    batch_size: int = 128
    train_images: int = 0  # 0: the whole training file; N: its first N images
    test_images: int = 0  # 0: the whole test file; N: its first N
    selection: Literal["test", "val"] = "test"  # Fig 9: pick the lr on test (paper) or val
    val_images: int = 5000  # held out of the training images when selection="val"
    grad_every: int = 50  # per-block gradient norms every N steps (Fig 8)
    stack: int = 1  # Fig 9: (beta, H) cells of one (dataset, lr) trained in one fit
    cells: tuple[tuple[float, float], ...] = ()  # a stacked job's (beta, H) cells
    seed: int = 0

    def __post_init__(self) -> None:
        configs.check(self, positive=("width", "inputs", "nets", "depth", "betas",
                                      "inputs_per_net", "paths", "lr", "epochs", "lr_step",
                                      "batch_size", "val_images", "grad_every", "stack"),
                      non_negative=("beta", "beta_max", "part", "seed", "train_images",
                                    "test_images"))
        if not self.depths or min(self.depths) < 1:
            raise configs.ConfigError(f"depths={self.depths}: positive depths needed")
        for h in (self.hurst, *self.hursts):
            if not 0.0 < h < 1.0:
                raise configs.ConfigError(f"Hurst index {h}: must lie in (0, 1)")
        if self.beta > 4 or self.beta_max > 4:
            raise configs.ConfigError(f"beta up to {max(self.beta, self.beta_max)}: the "
                                      "study's range is [0, 4]")


PAPER = MarionConfig()
QUICK = dataclasses.replace(PAPER, depths=(10, 120, 1000), hursts=(0.2, 0.5, 0.8, 0.97))
PROFILES = {"paper": PAPER, "quick": QUICK}
FIG2_PART = 1000  # networks per Fig 2 job (resumable parts)
FIG2_NETS = {"paper": 10_000, "quick": 100}
FIG7_NETS = {"paper": 5, "quick": 2}
FIG7_INPUTS = {"paper": 10, "quick": 5}
SMOOTH_NETS = {"paper": 50, "quick": 20}

# Per table: the blocks, the betas of its panels in the paper's order, what it plots.
PANELS = {
    "fig1": ("iid", (1.0, 0.25, 0.5), "out_diff"),
    "fig3": ("iid", (1.0, 0.25, 0.5), "grad_diff"),
    "fig4": ("smooth", (2.0, 0.5, 1.0), "out_diff"),
    "fig5": ("smooth", (2.0, 0.5, 1.0), "grad_diff"),
}
SAMPLE_KEYS = ("out_diff", "grad_diff", "out_ratio", "grad_ratio")


def paper_numbers() -> dict:
    """The spec's numbers for the paper's figures (``marion_paper.json``, SPEC §2.1, §2.7)."""
    text = resources.files("depthlab.reproductions").joinpath("marion_paper.json").read_text()
    return json.loads(text)


def closed_form_ratio2(depth: int, beta: float, linear: bool = False) -> float:
    """E ||h_L||^2 / ||h_0||^2 = (1 + L^-2beta / 2)^L for i.i.d. res-3 + ReLU (linear: no /2)."""
    return (1.0 + depth ** (-2.0 * beta) / (1.0 if linear else 2.0)) ** depth


def beta_grid(config: MarionConfig) -> np.ndarray:
    return np.linspace(0.0, config.beta_max, config.betas)


def label(key: str, config: MarionConfig) -> str:
    if config.task == "changes":
        return f"{config.init}, d={config.width}, beta={config.beta:g}" + (
            f", part {config.part}" if config.part else "")
    if config.task == "heatmap":
        return f"fBm H={config.hurst:g}, L={config.depth}"
    if config.task == "train":
        blocks = f"fBm H={config.hurst:g}" if config.init == "fbm" else config.init
        return f"{config.dataset}, beta={config.beta:g}, {blocks}, lr {config.lr:g}"
    if config.task == "cells":
        return f"{config.dataset}, {len(config.cells)} (beta, H) cells, lr {config.lr:g}"
    return "fBm paths and sampler covariance"


# --- tables ------------------------------------------------------------------------------


def _changes_jobs(table: str, config: MarionConfig, rows: Sequence[str] | None,
                  profile: str) -> list[Job]:
    init, betas, _ = PANELS[table]
    nets = SMOOTH_NETS[profile] if init == "smooth" else config.nets
    jobs = [dataclasses.replace(config, task="changes", init=init, width=40, beta=b, nets=nets)
            for b in betas]
    return _keep(jobs, rows)


def _keep(configs_: list[MarionConfig], rows: Sequence[str] | None) -> list[Job]:
    jobs = [Job(_key(c), label(_key(c), c), c) for c in configs_]
    return [j for j in jobs if rows is None or j.key in rows]


def _key(config: MarionConfig) -> str:
    if config.task == "changes":
        base = f"{config.init}_d{config.width}_beta{config.beta:g}"
        return base + (f"_part{config.part}" if config.width == 100 else "")
    if config.task == "heatmap":
        return f"H{config.hurst:g}"
    if config.task == "train":
        blocks = f"H{config.hurst:g}" if config.init == "fbm" else config.init
        return f"{config.dataset}_beta{config.beta:g}_{blocks}_lr{config.lr:g}"
    if config.task == "cells":
        (b0, h0), (b1, h1) = config.cells[0], config.cells[-1]
        return f"{config.dataset}_lr{config.lr:g}_cells_b{b0:g}H{h0:g}-b{b1:g}H{h1:g}"
    return "fbm"


def fig2_jobs(config: MarionConfig, rows, profile: str = "paper") -> list[Job]:
    total = FIG2_NETS[profile]
    parts = math.ceil(total / FIG2_PART)
    return _keep([dataclasses.replace(config, task="changes", init="iid", width=100, beta=0.5,
                                      depths=(config.depth,), part=p,
                                      nets=min(FIG2_PART, total - p * FIG2_PART))
                  for p in range(parts)], rows)


def fig6_jobs(config: MarionConfig, rows, profile: str = "paper") -> list[Job]:
    return _keep([dataclasses.replace(config, task="fbm")], rows)


def fig7_jobs(config: MarionConfig, rows, profile: str = "paper") -> list[Job]:
    return _keep([dataclasses.replace(config, task="heatmap", init="fbm", hurst=float(h),
                                      nets=FIG7_NETS[profile],
                                      inputs_per_net=FIG7_INPUTS[profile])
                  for h in config.hursts], rows)


def _training(config: MarionConfig, profile: str, **fields) -> MarionConfig:
    """A training job: res-1, d=30; quick runs on 2,000 / 1,000 MNIST images (SPEC §2.5)."""
    quick = dict(train_images=2000, test_images=1000) if profile == "quick" else {}
    return dataclasses.replace(config, **{"task": "train", "width": 30, **quick, **fields})


def fig8_jobs(config: MarionConfig, rows, profile: str = "paper") -> list[Job]:
    """Fig 8: lr 1e-2 constant, 10 epochs, no block biases (quick: 1 epoch on 2,000
    images, per-block gradients every 4 of its 16 steps)."""
    quick = dict(epochs=1, grad_every=4) if profile == "quick" else dict(epochs=10)
    return _keep([_training(config, profile, init=init, beta=beta, lr=1e-2, lr_step=1000,
                            dataset="mnist", **quick)
                  for beta, init in FIG8_CONFIGS], rows)


def fig9_jobs(config: MarionConfig, rows, profile: str = "paper") -> list[Job]:
    """Fig 9: every (dataset, beta, H, lr) of SPEC §2.1 (quick: three MNIST cells at 1e-2).

    With ``stack`` > 1 the cells of one (dataset, lr) train ``stack`` at a time in one fit
    (:func:`execute_cells`); each cell stays its own network, so the results are the same.
    """
    if profile == "quick":
        cells = [("mnist", b, h, 1e-2) for b, h in FIG9_QUICK_CELLS]
        fields = dict(epochs=5, lr_step=5)
    else:
        cells = [(d, b, h, lr) for d in ("mnist", "cifar10") for b in FIG9_GRID
                 for h in FIG9_GRID for lr in FIG9_LRS]
        fields = dict(epochs=10, lr_step=5)
    if config.stack == 1:
        return _keep([_training(config, profile, init="fbm", dataset=d, beta=b, hurst=h,
                                lr=lr, **fields) for d, b, h, lr in cells], rows)
    groups: dict[tuple[str, float], list] = {}
    for d, b, h, lr in cells:
        groups.setdefault((d, lr), []).append((b, h))
    return _keep([_training(config, profile, task="cells", init="fbm", dataset=d, lr=lr,
                            cells=tuple(group[i:i + config.stack]), **fields)
                  for (d, lr), group in groups.items()
                  for i in range(0, len(group), config.stack)], rows)


def _table(name: str):
    return lambda config, rows, profile="paper": _changes_jobs(name, config, rows, profile)


TABLES = {"fig1": _table("fig1"), "fig2": fig2_jobs, "fig3": _table("fig3"),
          "fig4": _table("fig4"), "fig5": _table("fig5"), "fig6": fig6_jobs,
          "fig7": fig7_jobs, "fig8": fig8_jobs, "fig9": fig9_jobs}


def all_rows(table: str) -> list[str]:
    """Every row key a table can have (for ``--rows`` and ``--list``), paper grids."""
    keys = [j.key for j in TABLES[table](PAPER, None, "paper")]
    quick = [j.key for j in TABLES[table](QUICK, None, "quick")]
    return list(dict.fromkeys(keys + quick))


# --- execution ---------------------------------------------------------------------------


def _draw(config: MarionConfig, depth: int, stream: Sequence[int]):
    """One network's (W, V, A, F) from its own numpy stream (backend-independent)."""
    from depthlab.layers.scaled_residual import sample_blocks

    rng = np.random.default_rng([config.seed, *stream])
    d = config.width
    shape = (depth, d, d)
    hurst = config.hurst if config.init == "fbm" else None
    w = sample_blocks(config.init, shape, hurst, rng=rng) / math.sqrt(d)
    v = sample_blocks(config.init, shape, hurst, rng=rng) / math.sqrt(d)
    a = rng.standard_normal((d, config.inputs)) / math.sqrt(config.inputs)
    f = rng.standard_normal(d) / math.sqrt(d)
    return w.astype(np.float32), v.astype(np.float32), a, f, rng


def propagation_bytes(depth: int, width: int, nets: int, columns: int) -> int:
    """Memory of one propagation: W and V, the states and the ReLU masks, in float32."""
    return 4 * nets * depth * width * (2 * width + columns) + 16 * nets * width * columns


def _chunk(depth: int, width: int, columns: int) -> int:
    """How many networks one propagation may hold within MEMORY_LIMIT."""
    return max(1, MEMORY_LIMIT // propagation_bytes(depth, width, 1, columns))


def execute_changes(job: Job, ctx: Context) -> dict:
    """Figs 1-5: per depth, ``nets`` fresh networks with one fresh input each."""
    from depthlab.layers.scaled_residual import propagate

    config = job.config
    out = {k: np.full((len(config.depths), config.nets), np.nan) for k in SAMPLE_KEYS}
    stream_beta = round(config.beta * 1e6)
    for row, depth in enumerate(config.depths):
        step = _chunk(depth, config.width, 1)
        for start in range(0, config.nets, step):
            batch = range(start, min(config.nets, start + step))
            nets = [_draw(config, depth, (stream_beta, depth, config.part, i)) for i in batch]
            h0 = np.stack([a @ rng.random(config.inputs) for _, _, a, _, rng in nets])[..., None]
            values = propagate(np.stack([n[0] for n in nets]), np.stack([n[1] for n in nets]),
                               h0, np.stack([n[3] for n in nets]),
                               np.full((len(nets), 1), depth ** -config.beta))
            for key in SAMPLE_KEYS:
                out[key][row, start:start + len(nets)] = values[key][:, 0]
        ctx.echo(f"[{job.label}] L={depth}: mean out_diff {_mean(out['out_diff'][row]):.4g}, "
                 f"grad_diff {_mean(out['grad_diff'][row]):.4g} ({config.nets} networks)")
    results = {"depths": np.array(config.depths), **out}
    last = len(config.depths) - 1
    results.update({f"mean_{k}_L{config.depths[last]}": _mean(out[k][last])
                    for k in SAMPLE_KEYS})
    results["exploded"] = float(np.sum(~np.isfinite(out["out_diff"])))
    return results


def execute_heatmap(job: Job, ctx: Context) -> dict:
    """Fig 7, one H column: each network reused for every beta, fresh inputs per network."""
    from depthlab.layers.scaled_residual import propagate

    config = job.config
    betas, per = beta_grid(config), config.inputs_per_net
    columns = len(betas) * per
    alpha = np.repeat(config.depth ** -betas, per)  # column = (beta, input), beta-major
    samples = {k: np.full((len(betas), config.nets * per), np.nan) for k in SAMPLE_KEYS}
    step = min(config.nets, _chunk(config.depth, config.width, columns))
    for start in range(0, config.nets, step):
        batch = range(start, min(config.nets, start + step))
        nets = [_draw(config, config.depth, (round(config.hurst * 1e6), i)) for i in batch]
        h0 = np.stack([np.tile(a @ rng.random((config.inputs, per)), len(betas))
                       for _, _, a, _, rng in nets])
        values = propagate(np.stack([n[0] for n in nets]), np.stack([n[1] for n in nets]), h0,
                           np.stack([n[3] for n in nets]), np.tile(alpha, (len(nets), 1)))
        for key in SAMPLE_KEYS:
            block = values[key].reshape(len(nets), len(betas), per).transpose(1, 0, 2)
            samples[key][:, start * per:(start + len(nets)) * per] = block.reshape(
                len(betas), -1)
    cells = {k: cell_values(samples[k]) for k in ("out_diff", "grad_diff")}
    out_cross, grad_cross = crossing(betas, cells["out_diff"]), crossing(betas,
                                                                         cells["grad_diff"])
    ctx.echo(f"[{job.label}] crossing (first beta with cell <= 0): output {out_cross:.3f}, "
             f"gradient {grad_cross:.3f}; beta_c(H) = {max(0.5, config.hurst):.3f}")
    return {"betas": betas, **samples, "out_cells": cells["out_diff"],
            "grad_cells": cells["grad_diff"], "out_crossing": out_cross,
            "grad_crossing": grad_cross, "out_cell_beta_max": cells["out_diff"][-1],
            "out_cell_beta0": cells["out_diff"][0]}


def cell_values(samples: np.ndarray) -> np.ndarray:
    """Fig 7 cells: mean log10 over a row's samples, NaN skipped; +-inf or all-NaN -> 16."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(np.asarray(samples, float))
    out = np.full(len(logs), 16.0)
    for i, row in enumerate(logs):
        finite = row[~np.isnan(row)]
        if len(finite) and np.all(np.isfinite(finite)):
            out[i] = finite.mean()
    return out


def crossing(betas: np.ndarray, cells: np.ndarray) -> float:
    """The first beta whose cell is <= 0 (NaN if none)."""
    below = np.flatnonzero(np.asarray(cells) <= 0)
    return float(betas[below[0]]) if len(below) else float("nan")


COV_HURSTS = (0.05, 0.2, 0.5, 0.8, 0.97)
COV_LAGS = (0, 1, 2, 10, 100)
PATH_HURSTS = (0.2, 0.5, 0.8)


def execute_fbm(job: Job, ctx: Context) -> dict:
    """Fig 6 paths, and SPEC §2.7 item 6: the exact fGn sampler's autocovariances at lags
    0, 1, 2, 10, 100 and Var(sum)/N^2H, from ``paths`` paths of length ``depth``."""
    from depthlab.layers.fractional import fbm_path, fgn, fgn_autocovariance

    config = job.config
    n = config.depth
    paths = np.stack([fbm_path(n, h, rng=[config.seed, i]) for i, h in enumerate(PATH_HURSTS)])
    measured = np.zeros((len(COV_HURSTS), len(COV_LAGS)))
    var_sum = np.zeros(len(COV_HURSTS))
    for i, h in enumerate(COV_HURSTS):
        series = fgn(n, h, size=config.paths, rng=[config.seed, 100 + i])
        for j, lag in enumerate(COV_LAGS):
            measured[i, j] = np.mean(series[:, : n - lag] * series[:, lag:])
        var_sum[i] = np.var(series.sum(axis=1)) / n ** (2 * h)
    theory = np.stack([fgn_autocovariance(np.array(COV_LAGS), h) for h in COV_HURSTS])
    worst = float(np.abs(measured - theory).max())
    ctx.echo(f"[{job.label}] {config.paths} paths of {n}: worst |autocovariance - gamma_H| "
             f"{worst:.4f}; Var(sum)/N^2H {', '.join(f'{v:.3f}' for v in var_sum)}")
    return {"paths": paths, "path_hursts": np.array(PATH_HURSTS),
            "cov_hursts": np.array(COV_HURSTS), "cov_lags": np.array(COV_LAGS),
            "autocov": measured, "autocov_theory": theory, "var_sum_ratio": var_sum,
            "worst_autocov_error": worst,
            "worst_var_sum_error": float(np.abs(var_sum - 1).max())}


def training_parts(config: MarionConfig) -> dict[str, tuple[str, np.ndarray]]:
    """Each part's (file part, indices): the first ``train_images`` / ``test_images`` (all
    when 0), and with ``selection="val"`` 5,000 training images held out at random (seed 0)."""
    sizes = {"mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}[config.dataset]
    train = np.arange(config.train_images or sizes[0])
    test = np.arange(config.test_images or sizes[1])
    parts = {"train": (f"{config.dataset}:train", train)}
    if config.selection == "val":
        held = np.sort(np.random.default_rng(0).choice(train, config.val_images, replace=False))
        parts = {"train": (f"{config.dataset}:train", np.setdiff1d(train, held)),
                 "val": (f"{config.dataset}:train", held)}
    return {**parts, "test": (f"{config.dataset}:test", test)}


def _training_data(config: MarionConfig) -> dict:
    """uint8 images and labels of each part (SPEC §2.3: torchvision's files and order)."""
    from depthlab import data

    dataset = data.mnist() if config.dataset == "mnist" else data.cifar(10, "official")
    out = {}
    for part, (source, idx) in training_parts(config).items():
        split = dataset.train if source.endswith(":train") else dataset.test
        out[part] = data.Split(split.x[idx], split.y[idx])
    return out


def roughness(v: np.ndarray) -> float:
    """Mean over entries (i, j) of mean_k |V_{k+1}[i,j] - V_k[i,j]| / std_k V_k[i,j]: about
    2/sqrt(pi) = 1.13 for i.i.d. weights, near 0 for weights smooth in k (Fig 8)."""
    v = np.asarray(v, dtype=np.float64)
    steps = np.abs(np.diff(v, axis=0)).mean(axis=0)
    return float(np.mean(steps / np.maximum(v.std(axis=0), 1e-12)))


def execute_train(job: Job, ctx: Context) -> dict:
    """Figs 8-9: train one res-1 net (SPEC §2.4) and evaluate it; per-block gradient norms
    of V every ``grad_every`` steps; one entry V_k[i, j] before and after training."""
    import keras
    from keras import ops

    from depthlab import augment
    from depthlab.callbacks import GradientCapture, GradientLogger
    from depthlab.layers.scaled_residual import build_resnet
    from depthlab.schedules import EpochStep

    config = job.config
    parts = _training_data(config)
    train = augment.ImageBatches(parts["train"].x, parts["train"].y, config.batch_size,
                                 shuffle=True, seed=config.seed, flatten=True)
    inputs = int(np.prod(parts["train"].x.shape[1:]))
    model = build_resnet("res1", config.depth, config.width, config.beta, config.init,
                         num_inputs=inputs, num_outputs=10,
                         hurst=config.hurst if config.init == "fbm" else None, seed=config.seed)
    adam = keras.optimizers.Adam(EpochStep(config.lr, 0.1, config.lr_step, len(train)),
                                 beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    model.compile(GradientCapture(adam, slices=("blocks/V",)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    blocks = model.get_layer("blocks")
    before = ops.convert_to_numpy(blocks.V)
    logger = GradientLogger(every_n_steps=config.grad_every, per_layer_metrics=False)
    history = ctx.fit(model, train, epochs=config.epochs, callbacks=[logger])
    after = ops.convert_to_numpy(blocks.V)
    i, j = np.random.default_rng([config.seed, 8]).integers(0, config.width, 2)
    results = {"train_loss": history["loss"][-1], "train_acc": history["accuracy"][-1],
               "roughness_init": roughness(before), "roughness_trained": roughness(after),
               "v_entry_init": before[:, i, j], "v_entry_trained": after[:, i, j],
               "v_entry_index": np.array([i, j]),
               "block_grad_norms": logger.history["epoch_slice_norms"]}
    for part in ("val", "test"):
        if part in parts:
            batches = augment.ImageBatches(parts[part].x, parts[part].y, 256, flatten=True)
            scores = model.evaluate(batches, return_dict=True, verbose=0)
            results[f"{part}_acc"], results[f"{part}_loss"] = (float(scores["accuracy"]),
                                                               float(scores["loss"]))
    ctx.echo(f"[{job.label}] test accuracy {results['test_acc']:.3f}")
    return results


def execute_cells(job: Job, ctx: Context) -> dict:
    """Fig 9, many cells at once: the (beta, H) cells of one (dataset, lr) trained in one
    ``fit`` of :class:`~depthlab.layers.scaled_residual.ResidualCells` (each cell exactly
    its own network, Adam being elementwise); a cell whose outputs stop being finite is
    frozen and reported as an explosion, the others go on."""
    import keras

    from depthlab import augment
    from depthlab.callbacks import GradientCapture
    from depthlab.callbacks.divergence import MAX_LOSS
    from depthlab.layers.scaled_residual import ResidualCells, cells_loss
    from depthlab.schedules import EpochStep

    config = job.config
    parts = _training_data(config)
    train = augment.ImageBatches(parts["train"].x, parts["train"].y, config.batch_size,
                                 shuffle=True, seed=config.seed, flatten=True)
    inputs = int(np.prod(parts["train"].x.shape[1:]))
    cells = [{"beta": b, "hurst": h, "init": "fbm", "seed": config.seed} for b, h in config.cells]
    model = keras.Sequential([keras.Input((inputs,)),
                              ResidualCells(cells, config.depth, config.width, inputs, 10,
                                            name="cells")])
    adam = keras.optimizers.Adam(EpochStep(config.lr, 0.1, config.lr_step, len(train)),
                                 beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    model.compile(GradientCapture(adam, finite_only=True), cells_loss)
    # the loss is the cells' sum: a bound per cell, and per-cell explosions are results
    history = ctx.fit(model, train, epochs=config.epochs, max_loss=len(cells) * MAX_LOSS)
    layer = model.get_layer("cells")
    alive = keras.ops.convert_to_numpy(layer.alive) > 0
    results = {"cell_beta": np.array([b for b, _ in config.cells]),
               "cell_hurst": np.array([h for _, h in config.cells]),
               "train_loss_sum": history["loss"][-1]}
    for part in ("val", "test"):
        if part not in parts:
            continue
        batches = augment.ImageBatches(parts[part].x, parts[part].y, 256, flatten=True)
        logits = model.predict(batches, verbose=0)  # (N, K, 10)
        labels = parts[part].y
        results[f"cell_{part}_acc"] = (logits.argmax(-1) == labels[:, None]).mean(axis=0)
        shifted = logits - logits.max(-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        results[f"cell_{part}_loss"] = -np.take_along_axis(
            log_p, labels[:, None, None].repeat(len(cells), 1), -1)[..., 0].mean(axis=0)
    loss = results["cell_test_loss"]
    results["cell_exploded"] = (~alive | ~np.isfinite(loss) | (loss > MAX_LOSS)).astype(float)
    ctx.echo(f"[{job.label}] {len(cells)} cells: test accuracy "
             + ", ".join(f"{a:.3f}" for a in results["cell_test_acc"])
             + f"; exploded {int(results['cell_exploded'].sum())}")
    return results


def execute(job: Job, ctx: Context) -> dict:
    return {"changes": execute_changes, "heatmap": execute_heatmap, "fbm": execute_fbm,
            "train": execute_train, "cells": execute_cells}[job.config.task](job, ctx)


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) == len(values) else float("inf")


def prepare(config: MarionConfig) -> None:
    """Refuse a grid whose propagation would not fit in memory, before any run."""
    if config.task in ("train", "cells"):
        sizes = {"mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}[config.dataset]
        for field, size in zip(("train_images", "test_images"), sizes, strict=True):
            if getattr(config, field) > size:
                raise configs.ConfigError(f"{field}={getattr(config, field)}: "
                                          f"{config.dataset} has {size:,} images for it")
        if config.selection == "val" and config.val_images >= len(
                training_parts(dataclasses.replace(config, selection="test"))["train"][1]):
            raise configs.ConfigError(f"val_images={config.val_images}: more than the "
                                      "training images it is held out of")
        _training_data(config)  # missing data stops the table now
        return
    if config.task == "changes":
        need = propagation_bytes(max(config.depths), config.width, 1, 1)
    elif config.task == "heatmap":
        need = propagation_bytes(config.depth, config.width, 1,
                                 config.betas * config.inputs_per_net)
    else:
        need = 8 * 2 * config.paths * 2 * config.depth  # complex FFT work of the sampler
    if need > MEMORY_LIMIT:
        raise configs.ConfigError(
            f"one network of this grid needs {need / 2**30:.1f} GiB (limit "
            f"{MEMORY_LIMIT / 2**30:.0f} GiB): lower depth, width, betas or inputs_per_net")


# --- report: paper | ours | delta, regimes, acceptance (SPEC §2.1, §2.7) -------------------


def _by_beta(outcomes: list[Outcome]) -> dict[float, Outcome]:
    return {o.job.config.beta: o for o in outcomes if "depths" in o.arrays}


def _row(outcome: Outcome, key: str, depth: int) -> np.ndarray:
    depths = list(outcome.arrays["depths"])
    return outcome.arrays[key][depths.index(depth)] if depth in depths else np.array([])


def report(table: str, config: MarionConfig, outcomes: list[Outcome],
           profile: str = "paper") -> list[Comparison]:
    paper = paper_numbers()
    if table in PANELS:
        return _report_changes(table, outcomes, paper, profile)
    if table == "fig2":
        return _report_fig2(config, outcomes, paper, profile)
    if table == "fig6":
        return _report_fig6(outcomes)
    if table == "fig8":
        return _report_fig8(outcomes)
    if table == "fig9":
        return _report_fig9(outcomes, paper, profile)
    return _report_fig7(outcomes, paper)


def _report_changes(table: str, outcomes: list[Outcome], paper: dict,
                    profile: str) -> list[Comparison]:
    init, betas, key = PANELS[table]
    got = _by_beta(outcomes)
    quantity = key.replace("_", " ")
    rows: list[Comparison] = []
    for beta in betas:
        outcome = got.get(beta)
        if outcome is None:
            continue
        depths = [int(d) for d in outcome.arrays["depths"]]
        ref = paper["iid_L1000" if init == "iid" else "smooth_out_diff_by_L"]
        for depth in depths:
            samples = _row(outcome, key, depth)
            mean = _mean(samples)
            low, high = _ci(samples)
            spec = _spec_value(paper, init, key, beta, depth)
            rms = math.sqrt(max(closed_form_ratio2(depth, beta) - 1, 0.0))
            notes = [f"ours 95% CI [{low:.3g}, {high:.3g}]"]
            if init == "iid" and key == "out_diff":
                notes.append(f"closed-form RMS {rms:.4g}")
            if init == "iid" and depth == 1000 and _beta_key(beta) in ref:
                entry = ref[_beta_key(beta)]
                ci = entry["out_ci" if key == "out_diff" else "grad_ci"]
                notes.append(f"spec CI [{ci[0]:g}, {ci[1]:g}]")
            rows.append(Comparison(outcome.job.label, f"mean {quantity}, L={depth}", spec,
                                   mean, "; ".join(notes), digits=4))
    return rows + _regimes(table, got, init, key) + _claims_changes(init, got, profile)


def _beta_key(beta: float) -> str:
    return f"{beta:g}"


def _spec_value(paper: dict, init: str, key: str, beta: float, depth: int) -> float | None:
    if init == "iid":
        if depth == 1000:
            return paper["iid_L1000"].get(_beta_key(beta), {}).get(key)
        return paper["iid_out_diff_by_L"].get(_beta_key(beta), {}).get(str(depth)) if (
            key == "out_diff") else None
    table = paper["smooth_out_diff_by_L" if key == "out_diff" else "smooth_grad_diff_by_L"]
    return table.get(_beta_key(beta), {}).get(str(depth))


def _ci(samples: np.ndarray) -> tuple[float, float]:
    from depthlab.plots import bootstrap_ci

    return bootstrap_ci(samples)


PAPER_REGIMES = {"iid": {0.25: "explodes", 0.5: "non-trivial (neural SDE limit)",
                         1.0: "identity"},
                 "smooth": {0.5: "explodes", 1.0: "non-trivial (neural ODE limit)",
                            2.0: "identity"}}


def regime(means: Sequence[float], depths: Sequence[int]) -> str:
    """The regime a row of means shows as L grows: explodes, identity or non-trivial."""
    first, last = means[0], means[-1]
    if not math.isfinite(last) or last > 10 * max(first, 1e-12) and last > 2:
        return "explodes"
    if last < 0.5 * first and last < 0.1:
        return "identity"
    return "non-trivial"


def _regimes(table: str, got: Mapping[float, Outcome], init: str,
             key: str) -> list[Comparison]:
    rows = []
    for beta, outcome in sorted(got.items()):
        depths = [int(d) for d in outcome.arrays["depths"]]
        means = [_mean(_row(outcome, key, d)) for d in depths]
        found = regime(means, depths)
        expected = PAPER_REGIMES[init].get(beta, "")
        holds = bool(expected) and expected.startswith(found)
        trend = " -> ".join(f"{m:.3g}" for m in means)
        rows.append(claim(f"regime beta={beta:g} ({key} from L={depths[0]} to {depths[-1]}: "
                          f"{trend}): {found}", None, holds, expected, "SPEC §2.1 claims"))
    return rows


def _claims_changes(init: str, got: Mapping[float, Outcome], profile: str
                    ) -> list[Comparison]:
    out: list[Comparison] = []
    if init == "iid":
        source = "SPEC §2.7 item 2"
        for key in ("out_diff", "grad_diff"):
            for beta, (low, high) in ((1.0, (0.020, 0.025)), (0.5, (0.70, 0.90))):
                if beta in got and 1000 in got[beta].arrays["depths"]:
                    mean = _mean(_row(got[beta], key, 1000))
                    out.append(claim(f"iid beta={beta:g}, L=1000: mean {key}", mean,
                                     low <= mean <= high, f"[{low:g}, {high:g}]", source, 4))
            if 0.25 in got and 1000 in got[0.25].arrays["depths"]:
                logs = np.log10(_row(got[0.25], key, 1000))
                value = float(np.mean(logs))
                out.append(claim(f"iid beta=1/4, L=1000: mean log10 {key}", value,
                                 3.0 <= value <= 3.5, "[3.0, 3.5]", source))
        if 0.25 in got and {10, 1000} <= set(got[0.25].arrays["depths"]):
            ratio = _mean(_row(got[0.25], "out_diff", 1000)) / _mean(
                _row(got[0.25], "out_diff", 10))
            out.append(claim("iid beta=1/4: mean out_diff at L=1000 over L=10", ratio,
                             ratio > 100, "> 100", source, 1))
        return out
    source = "SPEC §2.7 item 4"
    if 1.0 in got:
        for depth in (10, 120, 1000):
            if depth in got[1.0].arrays["depths"]:
                mean = _mean(_row(got[1.0], "out_diff", depth))
                out.append(claim(f"smooth beta=1, L={depth}: mean out_diff", mean,
                                 0.22 <= mean <= 0.38, "[0.22, 0.38]", source, 4))
    if 2.0 in got:
        for depth in (120, 1000):
            if depth in got[2.0].arrays["depths"]:
                value = depth * _mean(_row(got[2.0], "out_diff", depth))
                out.append(claim(f"smooth beta=2, L={depth}: L x mean out_diff", value,
                                 0.2 <= value <= 0.45, "[0.2, 0.45]", source, 4))
    if 0.5 in got and 1000 in got[0.5].arrays["depths"]:
        with np.errstate(divide="ignore"):
            value = float(np.mean(np.log10(_row(got[0.5], "out_diff", 1000))))
        out.append(claim("smooth beta=1/2, L=1000: mean log10 out_diff", value, value > 5,
                         "> 5", source))
    return out


def _report_fig2(config: MarionConfig, outcomes: list[Outcome], paper: dict,
                 profile: str) -> list[Comparison]:
    ratio = np.concatenate([o.arrays["out_ratio"].ravel() for o in outcomes if o.arrays])
    grads = np.concatenate([o.arrays["grad_ratio"].ravel() for o in outcomes if o.arrays])
    if not len(ratio):
        return []
    expected = closed_form_ratio2(config.depth, 0.5)
    mean2 = _mean(ratio**2)
    band = 0.1 if profile == "quick" else 0.05
    ref = paper["fig2"]
    return [
        Comparison("res-3 iid, d=100, L=1000, beta=1/2", f"mean out_ratio^2 ({len(ratio)} nets)",
                   expected, mean2, f"closed form (1 + 1/(2L))^L; spec, 200 nets: "
                   f"{ref['spec_200_nets_out_ratio2']}", digits=4),
        Comparison("res-3 iid, d=100, L=1000, beta=1/2", "mean out_ratio",
                   ref["spec_200_nets_out_ratio"], _mean(ratio), "spec, 200 nets", digits=4),
        Comparison("res-3 iid, d=100, L=1000, beta=1/2", "mean grad_ratio", None, _mean(grads),
                   "", digits=4),
        claim("Fig 2: mean out_ratio^2 within the closed form's band", mean2,
              abs(mean2 - expected) <= band, f"{expected:.4f} ± {band:g}",
              "SPEC §2.5 (quick) / §2.5 paper acceptance", 4)]


def _report_fig6(outcomes: list[Outcome]) -> list[Comparison]:
    rows: list[Comparison] = []
    for o in outcomes:
        a = o.arrays
        if "autocov" not in a:
            continue
        for i, h in enumerate(a["cov_hursts"]):
            for j, lag in enumerate(a["cov_lags"]):
                rows.append(Comparison(f"fGn H={h:g}", f"autocovariance, lag {lag}",
                                       float(a["autocov_theory"][i, j]), float(a["autocov"][i, j]),
                                       "gamma_H(lag), exact", digits=4))
            rows.append(Comparison(f"fGn H={h:g}", "Var(sum) / N^2H", 1.0,
                                   float(a["var_sum_ratio"][i]), "", digits=4))
        source = "SPEC §2.7 item 6"
        rows += [claim("sampler: worst |autocovariance - gamma_H| over H and lags",
                       o.results["worst_autocov_error"], o.results["worst_autocov_error"] <= 0.02,
                       "≤ 0.02", source, 4),
                 claim("sampler: worst |Var(sum)/N^2H - 1|", o.results["worst_var_sum_error"],
                       o.results["worst_var_sum_error"] <= 0.05, "≤ 0.05", source, 4)]
    return rows


def _report_fig7(outcomes: list[Outcome], paper: dict) -> list[Comparison]:
    rows, checks = [], []
    source = "SPEC §2.7 item 5"
    for o in outcomes:
        if "out_cells" not in o.arrays:
            continue
        h = o.job.config.hurst
        critical = max(0.5, h)
        for kind in ("out", "grad"):
            ref = paper[f"fig7_{kind}_crossing"].get(f"{h:g}")
            rows.append(Comparison(o.job.label, f"{kind} crossing (first beta, cell <= 0)", ref,
                                   o.results[f"{kind}_crossing"],
                                   f"beta_c(H) = max(1/2, H) = {critical:g}", digits=3))
        cross = o.results["out_crossing"]
        low, high = (0.40, 0.56) if h <= 0.5 else (h - 0.15, h + 0.03)
        if h <= 0.5 or h >= 0.65:
            checks.append(claim(f"H={h:g}: output crossing", cross, low <= cross <= high,
                                f"[{low:.2f}, {high:.2f}]", source, 3))
        top, bottom = o.results["out_cell_beta_max"], o.results["out_cell_beta0"]
        checks += [claim(f"H={h:g}: output cell at the largest beta", top, top < -1, "< -1",
                         source),
                   claim(f"H={h:g}: output cell at beta=0", bottom,
                         bottom > 50 or bottom == 16, "> 50 or 16 (overflow)", source)]
    return rows + checks


def _report_fig8(outcomes: list[Outcome]) -> list[Comparison]:
    rows: list[Comparison] = []
    rough = []
    for o in outcomes:
        if o.status in ("diverged", "failed"):
            rows.append(claim(f"{o.job.label} trained to the end", None, False, "finished",
                              o.message or o.status))
            continue
        r = o.results
        rows += [Comparison(o.job.label, "test accuracy", None, r.get("test_acc"), "", digits=3),
                 Comparison(o.job.label, "roughness of V along k, at init", None,
                            r.get("roughness_init"), "i.i.d. ~ 2/sqrt(pi) = 1.13", digits=3),
                 Comparison(o.job.label, "roughness of V along k, trained", None,
                            r.get("roughness_trained"), "", digits=3)]
        rough.append((o.job.label, o.job.config.init, r.get("roughness_trained")))
    source = "SPEC §2.1 Fig 8 (READING, UNVERIFIED: no numbers in the paper)"
    for name, init, value in rough:  # training keeps the init's regularity in k
        smooth = init == "smooth"
        rows.append(claim(f"{name}: stays {'smooth' if smooth else 'rough'} after training "
                          "(roughness)", value, value < 0.2 if smooth else value > 0.8,
                          "< 0.2" if smooth else "> 0.8", source, 3))
    return rows


def fig9_runs(outcomes: list[Outcome]) -> list[dict]:
    """One record per trained (dataset, beta, H, lr): from a job of one cell, or from each
    cell of a stacked job. ``status`` is "explosion" for a run that diverged."""
    runs = []
    for o in outcomes:
        c, r, a = o.job.config, o.results, o.arrays
        if c.task == "train":
            exploded = o.status == "diverged" or "test_acc" not in r
            runs.append({"dataset": c.dataset, "beta": c.beta, "hurst": c.hurst, "lr": c.lr,
                         "status": "explosion" if exploded else o.status,
                         "test_acc": r.get("test_acc"), "val_acc": r.get("val_acc"),
                         "train_loss": r.get("train_loss")})
        elif c.task == "cells":
            for k, (beta, hurst) in enumerate(c.cells):
                done = "cell_test_acc" in a
                exploded = not done or a["cell_exploded"][k] > 0
                runs.append({"dataset": c.dataset, "beta": beta, "hurst": hurst, "lr": c.lr,
                             "status": "explosion" if exploded else o.status,
                             "test_acc": float(a["cell_test_acc"][k]) if done else None,
                             "val_acc": float(a["cell_val_acc"][k]) if "cell_val_acc" in a
                             else None, "train_loss": None})
    return runs


def fig9_cells(outcomes: list[Outcome], selection: str = "test") -> dict:
    """(dataset, beta, H) -> (best test accuracy over lr, chosen lr, exploded lrs).

    ``selection="test"``: the lr with the best test accuracy (the paper's choice);
    ``"val"``: the lr with the best held-out accuracy, reporting its test accuracy. A run
    that exploded counts for nothing and is listed.
    """
    cells: dict = {}
    for run in fig9_runs(outcomes):
        best = cells.setdefault((run["dataset"], run["beta"], run["hurst"]),
                                [float("nan"), None, [], -1.0])
        if run["status"] == "explosion":
            best[2].append(run["lr"])
            continue
        score = run["val_acc" if selection == "val" else "test_acc"]
        if score is not None and score > best[3]:
            best[:2], best[3] = [run["test_acc"], run["lr"]], score
    return {k: tuple(v[:3]) for k, v in cells.items()}


def _report_fig9(outcomes: list[Outcome], paper: dict, profile: str) -> list[Comparison]:
    rows: list[Comparison] = []
    selection = outcomes[0].job.config.selection if outcomes else "test"
    reference = paper["fig9_quick_mnist"]
    quick_checks = []
    for (dataset, beta, hurst), (acc, lr, exploded) in sorted(
            fig9_cells(outcomes, selection).items()):
        critical = max(0.5, hurst)
        seeds = reference.get(f"{beta:g},{hurst:g}") if profile == "quick" else None
        notes = [f"beta_c(H) = {critical:g}", f"lr chosen on {selection}: {lr:g}" if lr else ""]
        if exploded:
            notes.append("explosion (NaN/absurd loss) at lr " + ", ".join(f"{v:g}"
                                                                         for v in exploded))
        rows.append(Comparison(f"{dataset}, beta={beta:g}, H={hurst:g}",
                               "test accuracy (best lr)" if lr else "explosion",
                               seeds[0] if seeds else None, acc,
                               "; ".join(n for n in notes if n)
                               + (f"; spec seeds 0/1/2: {seeds}" if seeds else ""), digits=3))
        if profile == "quick" and dataset == "mnist":
            source = "SPEC §2.7 item 7"
            if beta >= critical:
                quick_checks.append(claim(f"beta={beta:g}, H={hurst:g} (beta >= beta_c) trains",
                                          acc, acc >= 0.75, "≥ 0.75", source, 3))
            else:
                holds = bool(exploded) or acc <= 0.25
                quick_checks.append(claim(f"beta={beta:g}, H={hurst:g} (beta < beta_c) explodes",
                                          acc, holds, "≤ 0.25 or explosion", source, 3))
    return rows + quick_checks


# --- figures (drawn from the stored arrays) ------------------------------------------------


def figures(table: str, config: MarionConfig, outcomes: list[Outcome], profile: str) -> dict:
    from depthlab import plots

    done = [o for o in outcomes if o.arrays]
    if not done:
        return {}
    if table in PANELS:
        init, betas, key = PANELS[table]
        got = _by_beta(done)
        panels = {f"beta = {b:g}": (got[b].arrays["depths"], got[b].arrays[key])
                  for b in betas if b in got}
        name = {"out_diff": "output change ||h_L - h_0|| / ||h_0||",
                "grad_diff": "gradient change ||g_0 - g_L|| / ||g_L||"}[key]
        figure = plots.mean_ci_panels(panels, "depth L", key, f"{table}: {name}, res-3, "
                                      f"{init} blocks, d={config.width}, mean and 95% "
                                      f"bootstrap interval ({profile})")
        return {table: figure, f"{table}_samples.csv": _samples_csv(done, ("depth",))}
    if table == "fig2":
        series = {k: np.concatenate([o.arrays[k].ravel() for o in done])
                  for k in ("out_ratio", "grad_ratio")}
        return {"fig2": plots.histograms(series, f"fig2: res-3 i.i.d., d=100, L={config.depth}"
                                         f", beta=1/2, {len(series['out_ratio'])} networks"),
                "fig2_samples.csv": _samples_csv(done, ("depth",))}
    if table == "fig8":
        series = {}
        for o in done:
            a = o.arrays
            i, j = a["v_entry_index"]
            series[f"{o.job.label}: V_k[{i},{j}] trained"] = a["v_entry_trained"]
        c = done[0].job.config
        figure = plots.paths(series, f"fig8: one entry of V_k vs k after training (res-1, "
                             f"d={c.width}, L={c.depth}, MNIST, {c.epochs} epoch(s))", "k / L",
                             separate=True)
        csv = _matrix_csv(["k", *series], np.column_stack(
            [np.arange(len(next(iter(series.values())))), *series.values()]))
        return {"fig8": figure, "fig8_entries.csv": csv}
    if table == "fig9":
        return _fig9_figures(config, outcomes, plots)
    if table == "fig6":
        a = done[0].arrays
        series = {f"H = {h:g}": p for h, p in zip(a["path_hursts"], a["paths"], strict=True)}
        return {"fig6": plots.paths(series, "fig6: fractional Brownian motion, exact "
                                    f"Davies-Harte sampler, {config.depth} steps"),
                "fig6_paths.csv": _matrix_csv(["t", *series], np.column_stack(
                    [np.linspace(0, 1, a["paths"].shape[1]), a["paths"].T]))}
    got = sorted(done, key=lambda o: o.job.config.hurst)
    hursts = [o.job.config.hurst for o in got]
    betas = got[0].arrays["betas"]
    maps = {"mean log10 output change": np.column_stack([o.arrays["out_cells"] for o in got]),
            "mean log10 gradient change": np.column_stack([o.arrays["grad_cells"]
                                                           for o in got])}
    boundary = np.linspace(min(hursts), max(hursts), 100)
    figure = plots.heatmaps(maps, hursts, betas, "Hurst index H", "beta",
                            f"fig7: res-3, fBm blocks, L={config.depth}, d={config.width} "
                            f"({profile})", overlay=(boundary, np.maximum(0.5, boundary),
                                                    "beta_c = max(1/2, H)"))
    return {"fig7": figure, "fig7_samples.csv": _samples_csv(got, ("beta",))}


def _fig9_figures(config: MarionConfig, outcomes: list[Outcome], plots) -> dict:
    cells = fig9_cells(outcomes, config.selection)
    if not cells:
        return {}
    maps = {}
    for dataset in sorted({k[0] for k in cells}):
        betas = sorted({k[1] for k in cells if k[0] == dataset})
        hursts = sorted({k[2] for k in cells if k[0] == dataset})
        grid = np.full((len(betas), len(hursts)), np.nan)
        for (d, b, h), (acc, _, exploded) in cells.items():
            if d == dataset:
                grid[betas.index(b), hursts.index(h)] = 0.1 if np.isnan(acc) and exploded else acc
        maps[f"{dataset}: test accuracy, best lr ({config.selection})"] = (grid, hursts, betas)
    first = next(iter(maps.values()))
    figure = plots.heatmaps({k: v[0] for k, v in maps.items()}, first[1], first[2],
                            "Hurst index H", "beta", f"fig9: res-1, fBm blocks, "
                            f"L={outcomes[0].job.config.depth}, d=30, "
                            f"{outcomes[0].job.config.epochs} epochs (explosions shown at 0.1)",
                            limits=(0.0, 1.0), overlay=(np.linspace(0.1, 0.9, 50), np.maximum(
                                0.5, np.linspace(0.1, 0.9, 50)), "beta_c = max(1/2, H)"))
    lines = ["dataset,beta,H,lr,status,test_acc,val_acc,train_loss"]
    for run in fig9_runs(outcomes):
        values = ",".join("" if run[k] is None else f"{run[k]:.6g}"
                          for k in ("test_acc", "val_acc", "train_loss"))
        lines.append(f"{run['dataset']},{run['beta']:g},{run['hurst']:g},{run['lr']:g},"
                     f"{run['status']},{values}")
    return {"fig9": figure, "fig9_runs.csv": "\n".join(lines) + "\n"}


def _samples_csv(outcomes: list[Outcome], index: tuple[str, ...]) -> str:
    """Every per-sample value: one line per (job, depth or beta, sample)."""
    lines = ["job," + ",".join(index) + ",sample," + ",".join(SAMPLE_KEYS)]
    for o in outcomes:
        a = o.arrays
        axis = a["depths"] if "depths" in a else a["betas"]
        for i, at in enumerate(axis):
            for s in range(a["out_diff"].shape[1]):
                values = ",".join(f"{a[k][i, s]:.9g}" for k in SAMPLE_KEYS)
                lines.append(f"{o.job.key},{at:.9g},{s},{values}")
    return "\n".join(lines) + "\n"


def _matrix_csv(header: Sequence[str], matrix: np.ndarray) -> str:
    buffer = io.StringIO()
    buffer.write(",".join(header) + "\n")
    np.savetxt(buffer, matrix, delimiter=",", fmt="%.9g")
    return buffer.getvalue()


def tags(config: MarionConfig) -> dict[str, str]:
    """Figs 1-7 draw synthetic inputs; Figs 8-9 read MNIST or CIFAR-10 (lossy offline)."""
    from depthlab import data

    if config.task not in ("train", "cells"):
        return {"dataset": "synthetic U[0,1)^64", "data_copy": "exact"}
    lossy = data.is_lossy(config.dataset)
    return {"dataset": config.dataset, "data_copy": "lossy" if lossy else "exact"}


STUDY = Study(
    name="marion",
    profiles=PROFILES,
    tables=TABLES,
    execute=execute,
    report=report,
    rows={t: all_rows(t) for t in TABLES},
    tags=tags,
    prepare=prepare,
    label=label,
    fixed={t: ("task", "init", "beta", "hurst", "part", "dataset", "cells")
           + (("lr",) if t == "fig9" else ()) for t in TABLES},
    figures=figures,
    datasets=lambda config: (config.dataset,) if config.task in ("train", "cells") else (),
    splits=training_parts,
)


def main(argv: Sequence[str] | None = None) -> int:
    from depthlab.cli import main as cli_main

    return cli_main(argv, study="marion")


if __name__ == "__main__":
    raise SystemExit(main())
