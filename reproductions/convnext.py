"""Study §1: ConvNeXt beyond 1000 layers on CIFAR-10 (Ludwiczuk's blog, melgor/1k_cnn_layers).

Tables:
  ``e0``  the sigmoid demo (SPEC §1.1, §1.7 item 7): a 5-layer sigmoid MLP, per-layer
          gradient L2 norms over 100 SGD iterations and the layer-1 pre-activations on the
          sigmoid curve; the blog's "~10,000x" beside the true ratio.
  ``e1``  depth sweep 26, 56, 110, 218, 503, 1004 layers (skip + LN + GELU, gamma 0): val
          accuracy and the stem-gradient statistics of the blog's table.
  ``e2``  activation x in-block LN x skip at 28-28-250-28 (12 runs).
  ``e3``  LayerScale init {0, 1e-6, 1, 1 frozen} at 28-28-250-28.
  ``e4``  the deepest net that trains: ``deepest`` = the blog's 1607 layers (READING
          45-45-400-45) with and without per-block remat, ``target-remat`` = the 10,022-layer
          target with remat + bf16 (3-epoch OneCycle); each row's peak memory beside the §1.5
          memory model. Quick: the 56-layer quick net with and without remat.
Each table ends with the claims of SPEC §1.1/§1.5 checked on the rows that ran (quick:
Q1-Q5; paper: the §1.5 acceptance).

Profiles: ``paper`` is §1.4's recipe (all 50,000 training images, the 10,000 test images as
validation, 101 epochs, AdamW + OneCycle with beta1 cycling, clip 5, bf16-mixed);
``quick`` is §1.5's CPU check (quarter widths, 2,560 / 1,000 stratified images of the
offline lossy copy, 2 epochs = 80 steps, OneCycle over those steps, float32).

Same configs share one job: a row of one table that is a row of another (E2's GELU + LN +
skip, E3's gamma 0 and E1's 1004 layers) is trained once and reused.

Usage:
    python -m depthlab.reproductions.convnext --table e1 --profile quick --backend jax
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Literal

import numpy as np

from depthlab import config as configs
from depthlab.report import Comparison, claim
from depthlab.reproductions.runner import Context, Job, Outcome, Study

# SPEC §1.3: the reference's normalisation (scaled to [0, 1]).
MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
QUICK_DIMS = (16, 32, 64, 128)


@dataclasses.dataclass(frozen=True)
class ConvNeXtConfig:
    """One run of the study (SPEC §1.2–§1.5). Defaults: the ``paper`` recipe at 26 layers."""

    task: Literal["train", "sigmoid"] = "train"
    blocks: tuple[int, ...] = (2, 2, 2, 2)
    dims: tuple[int, ...] = (64, 128, 256, 512)
    activation: Literal["gelu", "sigmoid", "tanh"] = "gelu"
    block_norm: bool = True
    skip: bool = True
    layerscale_init: float = 0.0
    layerscale_trainable: bool = True
    remat: bool = False  # keras.remat around every block (SPEC §0.6)
    precision: str = "mixed_bfloat16"  # "" = float32
    lr: float = 1e-3
    weight_decay: float = 0.01  # decoupled, Conv/Linear kernels only
    clipnorm: float = 5.0  # global L2 norm
    batch_size: int = 64
    epochs: int = 101  # num_epochs 100 + 1
    schedule_steps_per_epoch: int = 784  # the reference's 50200 // 64 (782 run, SPEC §1.4)
    train_images: int = 0  # 0: all 50,000; N: a stratified subset (seed 42)
    val_images: int = 0  # 0: all 10,000 test images; N: a stratified subset
    augment: bool = True  # per-image 4-px crop + flip
    color_jitter: float = 0.2  # brightness, contrast, saturation; 0 turns it off
    early_stop_patience: int = 30  # on val accuracy, min_delta 0.01; 0 turns it off
    grad_every: int = 10  # stem |grad| logged every 10 optimiser steps
    eval_batch_size: int = 500
    sigmoid_iterations: int = 100  # E0
    seed: int = 42

    def __post_init__(self) -> None:
        configs.check(self, positive=("lr", "batch_size", "epochs", "schedule_steps_per_epoch",
                                      "grad_every", "eval_batch_size", "sigmoid_iterations"),
                      non_negative=("weight_decay", "clipnorm", "train_images", "val_images",
                                    "color_jitter", "early_stop_patience"))
        if len(self.blocks) != len(self.dims) or min(self.blocks, default=0) < 1:
            raise configs.ConfigError(
                f"blocks={self.blocks}, dims={self.dims}: one positive block count per width")
        if min(self.dims) < 1:
            raise configs.ConfigError(f"dims={self.dims}: widths must be positive")
        if self.precision not in ("", "float32", "mixed_bfloat16", "mixed_float16"):
            raise configs.ConfigError(f"precision={self.precision!r}: expected '', float32, "
                                      "mixed_bfloat16 or mixed_float16")
        if self.color_jitter >= 1:
            raise configs.ConfigError(f"color_jitter={self.color_jitter}: must be below 1")


PAPER = ConvNeXtConfig()
QUICK = dataclasses.replace(PAPER, dims=QUICK_DIMS, precision="", epochs=2,
                            schedule_steps_per_epoch=40, train_images=2560, val_images=1000)
PROFILES = {"paper": PAPER, "quick": QUICK}

E1_BLOCKS = {"26": (2, 2, 2, 2), "56": (3, 3, 9, 3), "110": (3, 3, 27, 3),
             "218": (6, 6, 54, 6), "503": (14, 14, 125, 14), "1004": (28, 28, 250, 28)}
ABLATION_BLOCKS = {"paper": (28, 28, 250, 28), "quick": (3, 3, 9, 3)}
E2_ROWS = {f"{act}-{'ln' if ln else 'noln'}-{'skip' if skip else 'noskip'}":
           dict(activation=act, block_norm=ln, skip=skip)
           for skip in (True, False) for ln in (True, False) for act in ("gelu", "sigmoid", "tanh")}
E3_ROWS = {"0": dict(layerscale_init=0.0), "1e-6": dict(layerscale_init=1e-6),
           "1": dict(layerscale_init=1.0), "1-frozen": dict(layerscale_init=1.0,
                                                           layerscale_trainable=False)}
# E4: the blog's deepest (READING 45-45-400-45) and the 10,022-layer target (SPEC §1.1, §1.5)
# quick: "deepest" is the quick profile's deepest net, 56 layers, with and without remat.
E4_ROWS = {"deepest": dict(blocks=(45, 45, 400, 45)),
           "deepest-remat": dict(blocks=(45, 45, 400, 45), remat=True),
           "target-remat": dict(blocks=(280, 280, 2500, 280), remat=True, epochs=3)}
E4_QUICK = {"deepest": dict(blocks=(3, 3, 9, 3)),
            "deepest-remat": dict(blocks=(3, 3, 9, 3), remat=True)}
QUICK_ROWS = {"e1": ("26", "56"), "e2": ("gelu-ln-skip", "gelu-ln-noskip"),
              "e4": ("deepest", "deepest-remat")}


def paper_numbers() -> dict:
    """The blog's and the notebooks' numbers (``convnext_paper.json``, quoted from SPEC §1)."""
    text = resources.files("depthlab.reproductions").joinpath("convnext_paper.json").read_text()
    return json.loads(text)


def layers_of(config: ConvNeXtConfig) -> int:
    return 3 * sum(config.blocks) + 2


def label(key: str, config: ConvNeXtConfig) -> str:
    """E.g. "56 layers (3-3-9-3), tanh, no LN, skip, γ 1e-06" (defaults left out)."""
    if config.task == "sigmoid":
        return "sigmoid demo (5 x Linear + sigmoid)"
    parts = [f"{layers_of(config)} layers ({'-'.join(map(str, config.blocks))})"]
    if config.activation != "gelu":
        parts.append(config.activation)
    if not config.block_norm:
        parts.append("no LN")
    if not config.skip:
        parts.append("no skip")
    if config.skip and (config.layerscale_init != 0 or not config.layerscale_trainable):
        parts.append(f"γ {config.layerscale_init:g}"
                     + ("" if config.layerscale_trainable else " frozen"))
    if config.remat:
        parts.append("remat")
    return ", ".join(parts)


def job_key(config: ConvNeXtConfig) -> str:
    """One key per configuration, so two tables' identical rows are one job."""
    if config.task == "sigmoid":
        return "sigmoid"
    gamma = (f"g{config.layerscale_init:g}" + ("" if config.layerscale_trainable else "f")
             if config.skip else "g-")
    return "_".join(["-".join(map(str, config.blocks)), config.activation,
                     "ln" if config.block_norm else "noln",
                     "skip" if config.skip else "noskip", gamma]
                    + (["remat"] if config.remat else []))


def _jobs(config: ConvNeXtConfig, chosen: Sequence[str], rows: Mapping[str, Mapping]
          ) -> list[Job]:
    jobs = []
    for row in chosen:
        job_config = dataclasses.replace(config, **rows[row])
        jobs.append(Job(job_key(job_config), label(row, job_config), job_config))
    return jobs


def e0_jobs(config: ConvNeXtConfig, rows, profile: str = "paper") -> list[Job]:
    return _jobs(config, ["sigmoid"], {"sigmoid": dict(task="sigmoid")})


def e1_jobs(config: ConvNeXtConfig, rows, profile: str = "paper") -> list[Job]:
    chosen = rows or (QUICK_ROWS["e1"] if profile == "quick" else list(E1_BLOCKS))
    return _jobs(config, chosen, {k: dict(blocks=v) for k, v in E1_BLOCKS.items()})


def e2_jobs(config: ConvNeXtConfig, rows, profile: str = "paper") -> list[Job]:
    chosen = rows or (QUICK_ROWS["e2"] if profile == "quick" else list(E2_ROWS))
    blocks = ABLATION_BLOCKS["quick" if profile == "quick" else "paper"]
    return _jobs(config, chosen, {k: dict(v, blocks=blocks) for k, v in E2_ROWS.items()})


def e3_jobs(config: ConvNeXtConfig, rows, profile: str = "paper") -> list[Job]:
    blocks = ABLATION_BLOCKS["quick" if profile == "quick" else "paper"]
    return _jobs(config, rows or list(E3_ROWS),
                 {k: dict(v, blocks=blocks) for k, v in E3_ROWS.items()})


def e4_jobs(config: ConvNeXtConfig, rows, profile: str = "paper") -> list[Job]:
    quick = profile == "quick"
    table = E4_QUICK if quick else E4_ROWS
    chosen = rows or (QUICK_ROWS["e4"] if quick else list(E4_ROWS))
    unknown = [r for r in chosen if r not in table]
    if unknown:
        raise configs.ConfigError(f"--rows {','.join(unknown)}: not in the {profile} profile's "
                                  f"E4 (rows: {', '.join(table)})")
    return _jobs(config, chosen, table)


TABLES = {"e0": e0_jobs, "e1": e1_jobs, "e2": e2_jobs, "e3": e3_jobs, "e4": e4_jobs}
ROWS = {"e0": ["sigmoid"], "e1": list(E1_BLOCKS), "e2": list(E2_ROWS), "e3": list(E3_ROWS),
        "e4": list(E4_ROWS)}


# --- E0: the sigmoid demo ---------------------------------------------------------------

SIGMOID_SIZES = (1, 10, 10, 10, 10, 1)


def sigmoid_weights(seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """PyTorch's default Linear init drawn with numpy (SPEC §1.6, §1.7 item 7): per layer
    fc1..fc5, W (out, in) then b, both U(-1/sqrt(in), 1/sqrt(in)), from ``default_rng(seed)``,
    so every backend starts from the same float32 weights."""
    rng = np.random.default_rng(seed)
    out = []
    for fan_in, fan_out in zip(SIGMOID_SIZES[:-1], SIGMOID_SIZES[1:], strict=True):
        bound = 1 / math.sqrt(fan_in)
        w = rng.uniform(-bound, bound, (fan_out, fan_in))
        b = rng.uniform(-bound, bound, fan_out)
        out.append((w.astype("float32"), b.astype("float32")))
    return out


def execute_sigmoid(job: Job, ctx: Context) -> dict:
    """E0: x = 100, target 0, MSE, SGD lr 0.01, one iteration per epoch so the layer-1
    weights can be read (synced) before each update; gradients from GradientCapture."""
    import keras

    from depthlab.callbacks.gradient_capture import GradientCapture
    from depthlab.callbacks.gradient_logger import GradientLogger

    config = job.config
    layers = [keras.layers.Dense(n, activation="sigmoid", name=f"fc{i}")
              for i, n in enumerate(SIGMOID_SIZES[1:], start=1)]
    model = keras.Sequential([keras.Input((1,)), *layers], name="sigmoid_demo")
    for layer, (w, b) in zip(layers, sigmoid_weights(config.seed), strict=True):
        layer.set_weights([w.T, b])  # Keras kernels are (in, out)
    model.compile(optimizer=GradientCapture(keras.optimizers.SGD(0.01)), loss="mse")
    grads = GradientLogger(every_n_steps=1, per_layer_metrics=False,
                           labels=lambda v: v.path.split("/")[-2] if v.name == "kernel" else None)
    preacts: list[np.ndarray] = []

    class Layer1(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            w, b = self.model.layers[0].get_weights()
            preacts.append(100.0 * w[0] + b)

    x = np.array([[100.0]], "float32")
    y = np.zeros((1, 1), "float32")
    model.fit(x, y, batch_size=1, epochs=config.sigmoid_iterations, shuffle=False,
              callbacks=[grads, Layer1()], verbose=0)
    norms = grads.history["step_norms"].astype("float64")  # [iterations x fc1..fc5]
    output = float(keras.ops.convert_to_numpy(model(x))[0, 0])
    ratio = np.divide(norms[:, 0], norms[:, 4], out=np.full(len(norms), np.nan),
                      where=norms[:, 4] > 0)
    pre = np.array(preacts)
    ctx.echo(f"[{job.label}] iteration 0 |grad| fc1..fc5: "
             + " ".join(f"{v:.4g}" for v in norms[0]) + f"; output after "
             f"{len(norms)} iterations {output:.4f}")
    return {**{f"norm0_fc{i + 1}": norms[0, i] for i in range(5)},
            "ratio_fc1_fc5_max": float(np.nanmax(ratio)),
            "ratio_fc4_fc5_0": float(norms[0, 3] / norms[0, 4]),
            "final_output": output, "preact_min": float(pre.min()),
            "preact_max": float(pre.max()), "iterations": len(norms),
            "norms": norms, "preacts": pre}


# --- E1-E4: training --------------------------------------------------------------------


def _dataset(config: ConvNeXtConfig):
    from depthlab import data

    return data.cifar(10, "stratified", config.train_images, 0, config.val_images)


def split_parts(config: ConvNeXtConfig) -> dict[str, tuple[str, np.ndarray]]:
    from depthlab import data

    if config.task != "train":
        return {}
    parts = data.cifar_parts("stratified", config.train_images, 0, config.val_images)
    return {"train": (f"cifar10:{parts['train'][0]}", parts["train"][1]),
            "test": (f"cifar10:{parts['test'][0]}", parts["test"][1])}  # validates on test


def _batches(config: ConvNeXtConfig) -> tuple:
    """Train: shuffled per epoch, crop + flip + colour jitter per image (torchvision's
    order), normalised; val (the test images): normalised only (SPEC §1.3)."""
    import functools

    from depthlab import augment

    dataset = _dataset(config)
    jitter = None
    if config.color_jitter:
        strength = config.color_jitter
        jitter = functools.partial(augment.color_jitter, brightness=strength,
                                   contrast=strength, saturation=strength)
    train = augment.ImageBatches(dataset.train.x, dataset.train.y, config.batch_size,
                                 mean=MEAN, std=STD, augment=config.augment, shuffle=True,
                                 seed=config.seed, transform=jitter)
    val = augment.ImageBatches(dataset.test.x, dataset.test.y, config.eval_batch_size,
                               mean=MEAN, std=STD)
    return train, val


def build(config: ConvNeXtConfig):
    """The model and its compiled recipe: AdamW (decay on Conv/Linear kernels only) with
    OneCycle on lr and beta1 per step, global clip, behind a GradientCapture (SPEC §1.4)."""
    import keras

    from depthlab.callbacks.gradient_capture import GradientCapture
    from depthlab.layers.convnext import build_convnext, exclude_from_decay
    from depthlab.optimizers import ScheduledBeta1AdamW
    from depthlab.schedules import OneCycle, OneCycleBeta1

    model = build_convnext(config.blocks, config.dims, seed=config.seed,
                           activation=config.activation, block_norm=config.block_norm,
                           skip=config.skip, layerscale_init=config.layerscale_init,
                           layerscale_trainable=config.layerscale_trainable, remat=config.remat)
    total = config.epochs * config.schedule_steps_per_epoch
    optimizer = ScheduledBeta1AdamW(OneCycleBeta1(total),
                                    learning_rate=OneCycle(config.lr, total),
                                    weight_decay=config.weight_decay, beta_2=0.999,
                                    epsilon=1e-8, global_clipnorm=config.clipnorm or None)
    exclude_from_decay(optimizer, model)
    model.compile(optimizer=GradientCapture(optimizer),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


STEM_WATCH = {"grad/stem_mean_abs": "stem_conv/kernel",
              "grad/stem_bias_mean_abs": "stem_conv/bias"}


def stem_statistics(values: np.ndarray) -> dict[str, float]:
    """The blog's table columns over the logged stem mean |grad| (SPEC §1.1)."""
    v = np.asarray(values, "float64")
    if not len(v):
        return {}
    q25, median, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"stem_mean": v.mean(), "stem_std": v.std(ddof=1) if len(v) > 1 else 0.0,
            "stem_min": v.min(), "stem_q25": q25, "stem_median": median, "stem_q75": q75,
            "stem_max": v.max(), "stem_first": v[0], "stem_count": len(v),
            "stem_finite_positive": float(np.mean(np.isfinite(v) & (v > 0)))}


def execute_train(job: Job, ctx: Context) -> dict:
    """Train one row; return its accuracies, the stem-gradient statistics and series."""
    import keras

    from depthlab import plots
    from depthlab.backend import memory
    from depthlab.callbacks.gradient_logger import GradientLogger
    from depthlab.callbacks.step_loss import StepLoss

    config = job.config
    train, val = _batches(config)
    model = build(config)
    params = int(sum(math.prod(v.shape) for v in model.trainable_weights))
    grads = GradientLogger(every_n_steps=config.grad_every, per_layer_metrics=False,
                           watch=STEM_WATCH)
    step_loss = StepLoss(window=10)
    callbacks = [grads, step_loss]
    early = None
    if config.early_stop_patience:
        early = keras.callbacks.EarlyStopping(monitor="val_accuracy", min_delta=0.01,
                                              patience=config.early_stop_patience, mode="max")
        callbacks.append(early)
    history = ctx.fit(model, train, epochs=config.epochs, validation=val, callbacks=callbacks,
                      keep_model=params <= 25_000_000)
    stopped = int(early.stopped_epoch) if early is not None and early.stopped_epoch else -1
    if stopped >= 0:
        ctx.echo(f"[{job.label}] early stopping fired at epoch {stopped + 1}")
    watched = grads.history
    steps, stem = watched["steps"], watched["watch"]
    ctx.log_figure(plots.training_curves(history, f"{job.label} ({_dataset_text(config)})"),
                   "curves.png")
    val_acc = np.asarray(history.get("val_accuracy", [np.nan]), "float64")
    peak = memory.peak_bytes()
    return {**({"peak_memory_gib": peak / 2**30} if peak is not None else {}),
            "params": params, "layers": layers_of(config),
            "val_acc": val_acc[-1], "best_val_acc": np.nanmax(val_acc),
            "train_loss": history["loss"][-1], "last10_loss": step_loss.last_mean(10),
            "steps": step_loss.steps, "early_stop_epoch": stopped,
            **stem_statistics(stem[:, 0]),
            "stem_steps": steps, "stem_mean_abs": stem[:, 0], "stem_bias_mean_abs": stem[:, 1],
            "val_accuracy": val_acc, "train_loss_curve": np.asarray(history["loss"])}


def execute(job: Job, ctx: Context) -> dict:
    if job.config.task == "sigmoid":
        return execute_sigmoid(job, ctx)
    return execute_train(job, ctx)


def _dataset_text(config: ConvNeXtConfig) -> str:
    from depthlab import data

    if config.task == "sigmoid":
        return "one input x = 100"
    lossy = ", lossy offline copy, not comparable to the blog" if data.is_lossy("cifar10") else ""
    subset = (f", {config.train_images:,} / {config.val_images:,} stratified images"
              if config.train_images or config.val_images else "")
    widths = "" if config.dims == PAPER.dims else f", widths {'/'.join(map(str, config.dims))}"
    return f"CIFAR-10{lossy}{subset}{widths}"


def tags(config: ConvNeXtConfig) -> dict[str, str]:
    from depthlab import data

    if config.task == "sigmoid":
        return {"dataset": "none (one input)", "data_copy": "exact"}
    return {"dataset": "cifar10", "data_copy": "lossy" if data.is_lossy("cifar10") else "exact",
            "dataset_note": _dataset_text(config)}


def prepare(config: ConvNeXtConfig) -> None:
    """Fail before any run when an image count does not fit the data (or data is missing)."""
    if config.task != "train":
        return
    for name, count, limit in (("train_images", config.train_images, 50_000),
                               ("val_images", config.val_images, 10_000)):
        if count > limit:
            raise configs.ConfigError(f"{name}={count}: CIFAR-10 has {limit:,}")
        if count and count < 10:
            raise configs.ConfigError(f"{name}={count}: a stratified subset needs >= 10 images")
    _dataset(config)


def datasets(config: ConvNeXtConfig) -> tuple[str, ...]:
    return () if config.task == "sigmoid" else ("cifar10",)


# --- report -----------------------------------------------------------------------------


def report(table: str, config: ConvNeXtConfig, outcomes: list[Outcome],
           profile: str) -> list[Comparison]:
    paper = paper_numbers()
    lost = [Comparison(o.job.label, "status", None, None, f"{o.status}: {o.message}")
            for o in outcomes if o.status not in ("finished", "skipped")]
    done = [o for o in outcomes if o.status in ("finished", "skipped")]
    if table == "e0":
        return lost + _e0_rows(done, paper["e0"])
    rows = lost + _run_rows(table, done, paper, profile)
    if profile == "quick":
        return rows + _quick_claims(table, done, paper["quick"])
    return rows + _paper_claims(table, done, paper)


def _e0_rows(done: list[Outcome], ref: Mapping) -> list[Comparison]:
    out, source = [], "SPEC §1.7 item 7"
    for o in done:
        r = o.results
        seed42 = ref["seed42_float64_iteration0_norms"]
        notebook = ref["notebook_iteration0_norms"]
        for i in range(1, 6):
            out.append(Comparison(o.job.label, f"iteration-0 |grad W| fc{i}", seed42[f"fc{i}"],
                                  r.get(f"norm0_fc{i}"), "reference: seed 42, float64 (spec); "
                                  f"notebook's unseeded run: {notebook[f'fc{i}']:.4g}",
                                  f"{seed42[f'fc{i}']:.4g}", digits=6))
        worst = max(abs(r[f"norm0_fc{i}"] / seed42[f"fc{i}"] - 1) for i in range(1, 6))
        tolerance = ref["seed42_reference_rel"]
        if o.job.config.seed == 42:
            out.append(claim("iteration-0 norms equal the float64 reference (seed 42): max rel "
                             "diff", worst, worst <= tolerance, f"≤ {tolerance:g}", source,
                             digits=6))
        slip = notebook["fc5"] / ref["blog_slip_divisor"]
        true = notebook["fc5"] / notebook["fc1"]
        ours = r["norm0_fc5"] / r["norm0_fc1"] if r["norm0_fc1"] > 0 else math.inf
        out.append(Comparison(
            o.job.label, "|grad fc5| / |grad fc1| at iteration 0", None, ours,
            f"the blog's {ref['blog_ratio_text']} is an arithmetic slip: the notebook divides "
            f"{notebook['fc5']} by {ref['blog_slip_divisor']:g} (= {slip:,.0f}), but its own fc1 "
            f"is {notebook['fc1']:g}, so its true ratio is {true:.3g}; ours: seed "
            f"{o.job.config.seed}", ref["blog_ratio_text"], digits=0))
        out.append(Comparison(o.job.label, "output after 100 iterations",
                              ref["notebook_final_output"], r.get("final_output"),
                              "notebook: another (unseeded) init", digits=4))
        out.append(Comparison(o.job.label, "layer-1 pre-activation range",
                              None, None, f"ours [{r['preact_min']:.1f}, {r['preact_max']:.1f}]"
                              f"; notebook [{ref['notebook_preact_range'][0]}, "
                              f"{ref['notebook_preact_range'][1]}]"))
        bound = ref["ratio_fc1_fc5_max"]
        low, high = ref["ratio_fc4_fc5_range"]
        out += [claim(f"|g_fc1| / |g_fc5| < {bound:g} at every one of "
                      f"{int(r['iterations'])} iterations (max shown)", r["ratio_fc1_fc5_max"],
                      r["ratio_fc1_fc5_max"] < bound and r["iterations"] == 100,
                      f"< {bound:g}", source, digits=6),
                claim("|g_fc4| / |g_fc5| at iteration 0", r["ratio_fc4_fc5_0"],
                      low <= r["ratio_fc4_fc5_0"] <= high, f"in [{low:g}, {high:g}]", source)]
    return out


STAT_COLUMNS = ("mean", "std", "min", "q25", "median", "q75", "max")


def _run_rows(table: str, done: list[Outcome], paper: Mapping, profile: str
              ) -> list[Comparison]:
    out = []
    e1 = paper["e1"]
    for o in done:
        r, c = o.results, o.job.config
        blocks = "-".join(map(str, c.blocks))
        ref = e1.get(blocks, {}) if (table == "e1" and profile == "paper") else {}
        if table == "e3" and profile == "paper":
            ref = paper["e3"].get(_e3_row(c), {})
        out.append(Comparison(o.job.label, "val acc (%)", None, 100 * r.get("val_acc", math.nan),
                              "blog: not given (result tables are images)"
                              + ("; best run ~94 (text)" if table == "e1" else "")))
        out.append(Comparison(o.job.label, "last-10-step train loss", None, r.get("last10_loss"),
                              digits=3))
        if profile == "paper" and blocks in e1 and c.dims == PAPER.dims:
            out.append(Comparison(o.job.label, "trainable params", e1[blocks]["params"],
                                  r.get("params"), digits=0))
        for stat in STAT_COLUMNS:
            if stat in ("mean", "std") or ref:
                out.append(Comparison(o.job.label, f"stem mean|grad| {stat}", ref.get(stat),
                                      r.get(f"stem_{stat}"),
                                      f"over {int(r.get('stem_count', 0))} logged steps",
                                      digits=5))
        if table == "e4":
            out += _memory_rows(o)
    return out


def _e3_row(config: ConvNeXtConfig) -> str:
    """The E3 row a config's LayerScale settings are ("" for none)."""
    for name, fields in E3_ROWS.items():
        if (config.layerscale_init == fields["layerscale_init"] and config.layerscale_trainable
                == fields.get("layerscale_trainable", True)):
            return name
    return ""


def _memory_rows(o: Outcome) -> list[Comparison]:
    from depthlab.layers.convnext import memory_estimate

    c = o.job.config
    est = memory_estimate(c.blocks, c.dims, c.batch_size, c.remat,
                          bf16=c.precision == "mixed_bfloat16")
    return [Comparison(o.job.label, "peak device memory (GiB)",
                       None, o.results.get("peak_memory_gib"),
                       f"memory model (SPEC §1.5): {est['states'] / 2**30:.3g} GiB states + "
                       f"{est['activations'] / 2**30:.3g} GiB activations = "
                       f"{est['total'] / 2**30:.3g} GiB; measured only on a GPU", digits=1)]


def _skip_runs(got: Mapping[str, Outcome]) -> dict[str, Outcome]:
    return {k: o for k, o in got.items() if o.job.config.skip}


def _quick_claims(table: str, done: list[Outcome], quick: Mapping) -> list[Comparison]:
    source = "SPEC §1.5"
    got = {o.job.key: o for o in done}
    out = []
    for o in _skip_runs(got).values():  # Q1 and Q4 on every skip net
        r, name = o.results, o.job.label
        acc_ok = r["val_acc"] >= quick["q1_min_val_acc"]
        loss_ok = r["last10_loss"] <= quick["q1_max_last10_loss"]
        out += [claim(f"Q1 {name}: val acc", r["val_acc"], acc_ok,
                      f"≥ {quick['q1_min_val_acc']}", source),
                claim(f"Q1 {name}: last-10 train loss", r["last10_loss"], loss_ok,
                      f"≤ ln 10 - 0.15 = {quick['q1_max_last10_loss']}", source),
                claim(f"Q4 {name}: stem |grad| finite and > 0 at every logged step (fraction)",
                      r["stem_finite_positive"], r["stem_finite_positive"] == 1.0, "= 1",
                      source)]
    by_blocks = {o.job.config.blocks: o for o in _skip_runs(got).values()
                 if o.job.config.activation == "gelu" and o.job.config.block_norm
                 and o.job.config.layerscale_init == 0 and not o.job.config.remat}
    shallow, deep = by_blocks.get((2, 2, 2, 2)), by_blocks.get((3, 3, 9, 3))
    if shallow and deep:
        factor = deep.results["stem_mean"] / shallow.results["stem_mean"]
        bound = quick["q3_max_factor"]
        out.append(claim("Q3 mean stem |grad|, 56 layers / 26 layers", factor,
                         1 / bound <= factor <= bound, f"within ×{bound}", source))
    for o in got.values():
        if o.job.config.skip:
            continue
        twin = got.get(job_key(dataclasses.replace(o.job.config, skip=True)))
        r = o.results
        gap = twin.results["val_acc"] - r["val_acc"] if twin else None
        holds = r["val_acc"] <= quick["q2_max_val_acc"] or (gap is not None
                                                             and gap >= quick["q2_min_gap"])
        twin_text = f" (skip twin {twin.results['val_acc']:.3f})" if twin else ""
        out.append(claim(f"Q2 {o.job.label}: val acc{twin_text}", r["val_acc"], holds,
                         f"≤ {quick['q2_max_val_acc']} or ≥ {quick['q2_min_gap']} below the "
                         "skip twin", source))
        if twin:
            ratio = r["stem_median"] / twin.results["stem_median"]
            out.append(claim(f"Q5 {o.job.label}: median stem |grad| / its skip twin's", ratio,
                             ratio < quick["q5_max_median_ratio"],
                             f"< {quick['q5_max_median_ratio']:g}", source))
    if table == "e4":
        out += _remat_claims(got, "quick: remat changes memory, not the training")
    return out + _ablation_claims(table, got, "quick scale")


def _remat_claims(got: Mapping[str, Outcome], source: str) -> list[Comparison]:
    out = []
    for o in got.values():
        if not o.job.config.remat:
            continue
        plain = got.get(job_key(dataclasses.replace(o.job.config, remat=False)))
        if plain is None:
            continue
        acc = abs(o.results["val_acc"] - plain.results["val_acc"])
        rel = abs(o.results["stem_mean"] / plain.results["stem_mean"] - 1)
        out += [claim(f"{o.job.label}: |val acc - without remat|", acc, acc <= 0.01, "≤ 0.01",
                      source),
                claim(f"{o.job.label}: mean stem |grad| rel. diff to without remat", rel,
                      rel <= 0.01, "≤ 0.01", source, digits=5)]
    return out


def _ablation_claims(table: str, got: Mapping[str, Outcome], scale: str) -> list[Comparison]:
    """E2's text claims (b)-(e) and E3's 1e-6 claim, on the rows that ran (SPEC §1.1)."""
    source = f"blog text, SPEC §1.1 ({scale}; READING where marked)"
    out = []
    if table == "e2":
        runs = {(o.job.config.activation, o.job.config.block_norm): o.results
                for o in got.values() if o.job.config.skip}
        for ln in (True, False):
            gelu = runs.get(("gelu", ln))
            for act in ("sigmoid", "tanh") if ln else ("sigmoid",):
                other = runs.get((act, ln))
                if gelu and other:
                    gap = gelu["val_acc"] - other["val_acc"]
                    letter = "(b)" if ln else "(c)"
                    out.append(claim(f"{letter} {act} {'with' if ln else 'without'} LN about as "
                                     "good as GELU: val acc gap (READING ≤ 0.05)", gap,
                                     gap <= 0.05, "≤ 0.05", source))
        if len(runs) >= 2 and ("tanh", False) in runs:
            tanh = runs[("tanh", False)]
            top = max(r["stem_mean"] for r in runs.values())
            low = min(r["val_acc"] for r in runs.values())
            out.append(claim(f"(d) tanh without LN: highest mean stem |grad| and lowest val acc "
                             f"of {len(runs)} skip runs", tanh["stem_mean"],
                             tanh["stem_mean"] == top and tanh["val_acc"] == low,
                             "highest / lowest", source, digits=4))
        for o in got.values():
            series = o.arrays.get("stem_mean_abs")
            if o.job.config.skip and series is not None and len(series) >= 10:
                fifth = max(len(series) // 5, 1)
                early, late = float(np.max(series[:fifth])), float(np.mean(series[-fifth:]))
                ratio = early / late if late > 0 else math.inf
                if o.job.config.block_norm:
                    out.append(claim(f"(e) {o.job.label}: stem |grad| rises early then declines:"
                                     " max of first 20% / mean of last 20%", ratio, ratio >= 2,
                                     "≥ 2 (READING)", source))
                else:
                    out.append(claim(f"(e) {o.job.label}: stem |grad| nearly constant: max of "
                                     "first 20% / mean of last 20%", ratio, 0.5 <= ratio <= 2,
                                     "in [0.5, 2] (READING)", source))
    if table == "e3":
        by_row = {_e3_row(o.job.config): o.results for o in got.values()}
        if "0" in by_row and "1e-6" in by_row:
            ratio = by_row["1e-6"]["stem_mean"] / by_row["0"]["stem_mean"]
            out.append(claim("γ 1e-6 run's mean stem |grad| / γ 0 run's", ratio, ratio >= 2,
                             "≥ 2 (blog 0.4234 / 0.08681 = 4.9)", source))
    return out


def _paper_claims(table: str, done: list[Outcome], paper: Mapping) -> list[Comparison]:
    acc, source = paper["paper_acceptance"], "SPEC §1.5 paper acceptance"
    got = {o.job.key: o for o in done}
    out = []
    for o in got.values():
        r = o.results
        if o.job.config.skip:
            out.append(claim(f"{o.job.label}: val acc %", 100 * r["val_acc"],
                             100 * r["val_acc"] > acc["skip_min_val_acc_pct"],
                             f"> {acc['skip_min_val_acc_pct']}", source, digits=2))
        else:
            out.append(claim(f"{o.job.label} (no skip): val acc %", 100 * r["val_acc"],
                             100 * r["val_acc"] < acc["noskip_max_val_acc_pct"],
                             f"< {acc['noskip_max_val_acc_pct']} (READING)", source, digits=2))
    if table == "e1":
        tolerance = acc["e1_stem_mean_tolerance"]
        for o in got.values():
            ref = paper["e1"].get("-".join(map(str, o.job.config.blocks)))
            if ref:
                rel = o.results["stem_mean"] / ref["mean"] - 1
                out.append(claim(f"{o.job.label}: mean stem |grad| vs the blog's", rel,
                                 abs(rel) <= tolerance, f"within ±{tolerance:.0%}", source))
        means = [o.results["stem_mean"] for o in got.values()]
        if len(means) > 1:
            factor = max(means) / min(means)
            out.append(claim("mean stem |grad| across depths: max / min", factor, factor <= 2,
                             "≤ 2 (blog 0.085..0.091)", "SPEC §1.1"))
        if got:
            best = max(100 * o.results["val_acc"] for o in got.values())
            target, tol = paper["e1_best_val_acc_pct"], paper["e1_best_val_acc_tolerance"]
            out.append(claim("best E1 val acc %", best, abs(best - target) <= tol,
                             f"{target} ± {tol} (UNVERIFIED, text only)", source, digits=2))
    if table == "e4":
        out += _remat_claims(got, source)
    return out + _ablation_claims(table, got, "paper scale")


# --- figures ----------------------------------------------------------------------------


def figures(table: str, config: ConvNeXtConfig, outcomes: list[Outcome],
            profile: str) -> dict:
    from depthlab import plots

    done = [o for o in outcomes if o.status in ("finished", "skipped") and o.arrays]
    if table == "e0":
        return _e0_figures(done, plots)
    series = {o.job.label: o.arrays for o in done if "stem_mean_abs" in o.arrays}
    if not series:
        return {}
    stem = {name: (a["stem_steps"], a["stem_mean_abs"]) for name, a in series.items()}
    val = {name: (np.arange(1, len(a["val_accuracy"]) + 1), a["val_accuracy"])
           for name, a in series.items()}
    figure = plots.line_panels(
        {"stem conv mean |grad| (every 10 steps, before clipping)": stem,
         "val accuracy per epoch": val}, "optimizer step / epoch", "value",
        f"ConvNeXt {table.upper()} ({profile}): stem gradient and val accuracy", log_y=False)
    figure.axes[0].set_yscale("log")
    lines = ["row,step,stem_mean_abs,stem_bias_mean_abs"]
    for o in done:
        a = o.arrays
        if "stem_steps" in a:
            lines += [f"{o.job.key},{int(s)},{v:.9g},{b:.9g}" for s, v, b in
                      zip(a["stem_steps"], a["stem_mean_abs"], a["stem_bias_mean_abs"],
                          strict=True)]
    return {"stem_gradient": figure, "stem_gradient.csv": "\n".join(lines) + "\n"}


def _e0_figures(done: list[Outcome], plots) -> dict:
    out = {}
    for o in done:
        norms, pre = o.arrays["norms"], o.arrays["preacts"]
        steps = np.arange(len(norms))
        out["f0a_gradient_norms"] = plots.line_panels(
            {"L2 norm of each weight matrix's gradient": {
                f"fc{i + 1}": (steps, norms[:, i]) for i in range(norms.shape[1])}},
            "iteration", "|grad W|", f"E0 sigmoid demo (seed {o.job.config.seed}): gradient "
            "norms per layer", log_y=True)
        out["f0b_preactivations"] = plots.points_on_curves(
            {"sigmoid(z)": lambda z: 1 / (1 + np.exp(-z)),
             "sigmoid'(z) = s(1 - s)": lambda z: np.exp(-z) / (1 + np.exp(-z)) ** 2},
            pre.ravel(), (-100, 100), "z (layer-1 pre-activation)",
            f"E0: layer-1 pre-activations, {pre.shape[0]} iterations x {pre.shape[1]} units")
        lines = ["iteration," + ",".join(f"fc{i + 1}" for i in range(norms.shape[1]))
                 + "," + ",".join(f"z{j + 1}" for j in range(pre.shape[1]))]
        lines += [f"{t}," + ",".join(f"{v:.9g}" for v in norms[t]) + ","
                  + ",".join(f"{v:.9g}" for v in pre[t]) for t in steps]
        out["e0_iterations.csv"] = "\n".join(lines) + "\n"
    return out


STUDY = Study(
    name="convnext",
    profiles=PROFILES,
    tables=TABLES,
    execute=execute,
    report=report,
    rows=ROWS,
    tags=tags,
    prepare=prepare,
    label=label,
    fixed={"e0": ("task",), "e1": ("task", "blocks"),
           "e2": ("task", "blocks", "activation", "block_norm", "skip"),
           "e3": ("task", "blocks", "layerscale_init", "layerscale_trainable"),
           "e4": ("task", "blocks", "remat")},
    datasets=datasets,
    splits=split_parts,
    figures=figures,
)


def main(argv: Sequence[str] | None = None) -> int:
    from depthlab.cli import main as cli_main

    return cli_main(argv, study="convnext")


if __name__ == "__main__":
    raise SystemExit(main())
