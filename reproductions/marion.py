"""Study §2: Marion et al., scaling residual networks in the large-depth regime.

alpha_L = L^-beta scales each of L residual blocks. The figures, one table each:

  ``fig1`` / ``fig3``  out_diff / grad_diff vs L, i.i.d. res-3 blocks, beta = 1, 1/4, 1/2
  ``fig2``             histograms of out_ratio and grad_ratio, d = 100, L = 1000, beta = 1/2
  ``fig4`` / ``fig5``  out_diff / grad_diff vs L, smooth (GP) blocks, beta = 2, 1/2, 1
  ``fig6``             three fBm paths (H 0.2 / 0.5 / 0.8) and the exact sampler's covariance
  ``fig7``             heatmaps of mean log10 out_diff / grad_diff over (beta, H), fBm blocks

Each plotted point pools ``nets`` networks (fresh weights and input each; mean and 95 %
bootstrap interval). Figs 1 and 3 (and 4 and 5) are two views of the same jobs: the second
table reuses the first's runs. All weights are numpy draws from the seed (identical on every
backend); the propagation runs on the Keras backend in float32, every beta and input of a
network in one state (:func:`depthlab.layers.scaled_residual.propagate`); values that
overflow are "exploded". Each figure comes with a CSV of every per-sample value, and each
table ends with the regimes found set beside the paper's claims and the closed form
(1 + L^-2beta / 2)^L, and the acceptance checks of SPEC §2.7 (holds / FAILS).

Profiles: ``paper`` is every grid of SPEC §2.1; ``quick`` the CPU-minutes subsets of §2.5.

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

FIGURES = ("fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7")
MEMORY_LIMIT = 1 << 30  # bytes one propagation holds at most (weights, states, masks)


@dataclasses.dataclass(frozen=True)
class MarionConfig:
    """One job of the study (SPEC §2.1-2.5). Defaults: the ``paper`` grids.

    Tables set ``task``, ``init``, ``width`` and the job's own ``beta`` / ``hurst``; the
    grids below are what a user may change with ``--set``.
    """

    task: Literal["changes", "fbm", "heatmap"] = "changes"
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
    seed: int = 0

    def __post_init__(self) -> None:
        configs.check(self, positive=("width", "inputs", "nets", "depth", "betas",
                                      "inputs_per_net", "paths"),
                      non_negative=("beta", "beta_max", "part", "seed"))
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


def _table(name: str):
    return lambda config, rows, profile="paper": _changes_jobs(name, config, rows, profile)


TABLES = {"fig1": _table("fig1"), "fig2": fig2_jobs, "fig3": _table("fig3"),
          "fig4": _table("fig4"), "fig5": _table("fig5"), "fig6": fig6_jobs,
          "fig7": fig7_jobs}


def all_rows(table: str) -> list[str]:
    """Every row key a table can have (for ``--rows`` and ``--list``), paper grids."""
    if table == "fig2":
        return [j.key for j in fig2_jobs(PAPER, None, "paper")]
    return [j.key for j in TABLES[table](PAPER, None, "paper")]


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


def execute(job: Job, ctx: Context) -> dict:
    return {"changes": execute_changes, "heatmap": execute_heatmap,
            "fbm": execute_fbm}[job.config.task](job, ctx)


def _mean(values: np.ndarray) -> float:
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) == len(values) else float("inf")


def prepare(config: MarionConfig) -> None:
    """Refuse a grid whose propagation would not fit in memory, before any run."""
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
    return {"dataset": "synthetic U[0,1)^64", "data_copy": "exact"}


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
    fixed={t: ("task", "init", "beta", "hurst", "part") for t in TABLES},
    figures=figures,
)


def main(argv: Sequence[str] | None = None) -> int:
    from depthlab.cli import main as cli_main

    return cli_main(argv, study="marion")


if __name__ == "__main__":
    raise SystemExit(main())
