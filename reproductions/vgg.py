"""Study §3: vanishing gradients in VGG08 / VGG38 with BatchNorm and residual connections.

Tables:
  ``1``    Table 1 of the report: seven rows (VGG08; VGG38; VGG38 BN at 1e-2 and 1e-3;
           VGG38 RC; VGG38 BN+RC at 1e-3 and 1e-2) with parameters, last-epoch train/val
           loss and accuracy, and test accuracy of the best-val checkpoint; each run logs
           its gradient flow (mean |grad| of the last training batch of every epoch, per
           non-bias weight, course labels) as metrics, CSV and the course-style plot.
  ``init`` Gradient flow at initialisation (SPEC §3.5 Q1): one train-mode forward/backward
           on 100 images for the five architectures.
Both tables end with the study's claims (SPEC §3.5) checked on the rows that ran:
Q1-Q4 in ``quick``, the paper acceptance in ``paper``, the stand-in's on CIFAR-10.

Profiles: ``paper`` is the full recipe (CIFAR-100, 100 epochs, batch 100, Adam + cosine
per epoch); ``quick`` is the CPU-minutes check of §3.5 (first 2,048 offline CIFAR-10
training images, no augmentation, batch 32, constant lr 1e-3, 300/100/20 steps).

This module defines the study as data and imports Keras only inside functions, so
``python -m depthlab.reproductions.vgg --backend torch`` can pick the backend first.

Usage:
    python -m depthlab.reproductions.vgg --table 1 --profile quick --backend torch
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


@dataclasses.dataclass(frozen=True)
class VGGConfig:
    """One training run of the coursework (SPEC §3.2–§3.5). Defaults: the ``paper`` recipe."""

    dataset: Literal["cifar100", "cifar10"] = "cifar100"
    num_blocks: int = 5  # processing blocks per stage: 0 -> VGG08, 5 -> VGG38
    norm: bool = False  # BatchNorm after every conv (processing and reduction blocks)
    residual: bool = False  # identity skip around every processing block
    bn_in_reduction: bool = True  # False: the student's BN-only-in-processing (338,116)
    lr: float = 1e-3  # Adam base lr (the 1e-2 rows change only this)
    lr_min: float = 2e-5  # cosine eta_min
    schedule: Literal["cosine", "constant"] = "cosine"  # cosine: per epoch, T_max = epochs
    epochs: int = 100
    steps_per_epoch: int = 0  # 0: one pass over the training images
    batch_size: int = 100
    augment: bool = True  # per-image 4-px crop + flip (train only)
    split: Literal["coursework", "head"] = "coursework"  # head: first train_images in file order
    train_images: int = 0  # with split="head": how many leading training images
    val_images: int = 0  # 0: the whole validation split; N: its first N images
    test_images: int = 0  # 0: the whole test set; N: its first N images
    grad_every: int = 50  # GradientLogger summary interval in steps
    seed: int = 0
    task: Literal["train", "init_gradients"] = "train"

    def __post_init__(self) -> None:
        configs.check(self, positive=("epochs", "batch_size", "lr", "grad_every"),
                      non_negative=("lr_min", "steps_per_epoch", "train_images", "val_images",
                                    "test_images"))
        if self.split == "head" and not self.train_images:
            raise configs.ConfigError("train_images=0: split 'head' needs a count of images")


PAPER = VGGConfig()
QUICK = dataclasses.replace(
    PAPER, dataset="cifar10", schedule="constant", epochs=1, batch_size=32, augment=False,
    split="head", train_images=2048, val_images=500, test_images=500, grad_every=10,
)
PROFILES = {"paper": PAPER, "quick": QUICK}

# Table 1 rows: architecture and lr (SPEC §3.1).
ROWS: dict[str, dict] = {
    "vgg08": dict(num_blocks=0, lr=1e-3),
    "vgg38": dict(num_blocks=5, lr=1e-3),
    "vgg38_bn_1e-2": dict(num_blocks=5, norm=True, lr=1e-2),
    "vgg38_bn_1e-3": dict(num_blocks=5, norm=True, lr=1e-3),
    "vgg38_rc": dict(num_blocks=5, residual=True, lr=1e-3),
    "vgg38_bnrc_1e-3": dict(num_blocks=5, norm=True, residual=True, lr=1e-3),
    "vgg38_bnrc_1e-2": dict(num_blocks=5, norm=True, residual=True, lr=1e-2),
}
# quick: the rows whose claims fit CPU minutes, with the calibrated steps of §3.5 (Q2-Q4).
QUICK_STEPS = {"vgg08": (5, 60), "vgg38_bnrc_1e-3": (2, 50), "vgg38": (1, 20)}
INIT_ROWS: dict[str, dict] = {
    "vgg08": dict(num_blocks=0),
    "vgg38": dict(num_blocks=5),
    "vgg38_rc": dict(num_blocks=5, residual=True),
    "vgg38_bn": dict(num_blocks=5, norm=True),
    "vgg38_bnrc": dict(num_blocks=5, norm=True, residual=True),
}
INIT_IMAGES = 100


def paper_numbers() -> dict:
    """The paper's and the course's numbers (``vgg_paper.json``, quoted from SPEC §3.1)."""
    text = resources.files("depthlab.reproductions").joinpath("vgg_paper.json").read_text()
    return json.loads(text)


def label(key: str, config: VGGConfig) -> str:
    name = "VGG08" if config.num_blocks == 0 else f"VGG{8 + 6 * config.num_blocks:02d}"
    parts = [name] + [p for p, on in (("BN", config.norm), ("RC", config.residual)) if on]
    return " ".join(parts) + f", lr {config.lr:g}"


def table1_jobs(config: VGGConfig, rows: Sequence[str] | None,
                profile: str = "paper") -> list[Job]:
    quick = profile == "quick"
    keys = rows or (list(QUICK_STEPS) if quick else list(ROWS))
    jobs = []
    for key in keys:
        row = dict(ROWS[key])
        if quick and key in QUICK_STEPS:  # a user's --set of either still wins (runner)
            row["epochs"], row["steps_per_epoch"] = QUICK_STEPS[key]
        job_config = dataclasses.replace(config, **row)
        jobs.append(Job(key, label(key, job_config), job_config))
    return jobs


def init_jobs(config: VGGConfig, rows: Sequence[str] | None,
              profile: str = "quick") -> list[Job]:
    jobs = []
    for key in rows or INIT_ROWS:
        job_config = dataclasses.replace(config, **INIT_ROWS[key], epochs=1, steps_per_epoch=1,
                                         schedule="constant", task="init_gradients")
        jobs.append(Job(key, label(key, job_config).split(",")[0] + " at init", job_config))
    return jobs


# --- execution (imports Keras) -------------------------------------------------------------


def split_indices(config: VGGConfig) -> dict[str, tuple[str, np.ndarray]]:
    """Each part's (file part, indices), as :func:`depthlab.data.cifar_parts` defines
    them: the coursework split (SPEC §3.3), or the quick profile's head of the training
    file (SPEC §3.5) with validation images outside it."""
    from depthlab import data

    parts = data.cifar_parts(config.split, config.train_images, config.val_images,
                             config.test_images)
    return {part: (f"{config.dataset}:{source}", idx) for part, (source, idx) in parts.items()}


def _dataset(config: VGGConfig):
    """The job's images (only those it uses are read: a partial copy serves what it holds)."""
    from depthlab import data

    return data.cifar(100 if config.dataset == "cifar100" else 10, config.split,
                      config.train_images, config.val_images, config.test_images)


def _batches(config: VGGConfig, batch_size: int | None = None) -> dict:
    """train / val / test batches: CIFAR-10 statistics for both CIFARs (SPEC §3.3), crop +
    flip on training images only; a stream for exact step counts (quick profile)."""
    from depthlab import augment

    return augment.split_batches(_dataset(config), batch_size or config.batch_size,
                                 augment=config.augment, seed=config.seed,
                                 repeat_train=config.steps_per_epoch > 0)


def _model_and_optimizer(config: VGGConfig, num_classes: int, steps_per_epoch: int):
    import keras

    from depthlab.callbacks.gradient_capture import GradientCapture
    from depthlab.layers.vgg import build_vgg
    from depthlab.schedules import EpochCosine

    model = build_vgg(config.num_blocks, config.norm, config.residual, num_classes,
                      bn_in_reduction=config.bn_in_reduction, seed=config.seed)
    if config.schedule == "cosine":
        lr = EpochCosine(config.lr, config.lr_min, config.epochs, steps_per_epoch)
    else:
        lr = config.lr
    # torch defaults (SPEC §3.4): betas (0.9, 0.999), eps 1e-8, no weight decay.
    inner = keras.optimizers.Adam(lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
    if config.task == "init_gradients":  # one captured step that changes nothing
        inner = keras.optimizers.SGD(0.0)
    model.compile(optimizer=GradientCapture(inner),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def _grad_logger(config: VGGConfig):
    from depthlab.callbacks.gradient_logger import GradientLogger
    from depthlab.layers.vgg import gradient_flow_label

    return GradientLogger(every_n_steps=config.grad_every, labels=gradient_flow_label,
                          per_layer_metrics=True)


def _trainable_params(model) -> int:
    return int(sum(math.prod(v.shape) for v in model.trainable_weights))


def execute_table1(job: Job, ctx: Context) -> dict:
    """Train one Table 1 row; return its last-epoch and best-checkpoint numbers, and its
    gradient flow (mean |grad| of each epoch's last batch per entry) as arrays."""
    from depthlab import plots
    from depthlab.callbacks.step_loss import StepLoss

    config = job.config
    batches = _batches(config)
    steps = config.steps_per_epoch or len(batches["train"])
    model = _model_and_optimizer(config, _dataset(config).num_classes, steps)
    step_loss, grads = StepLoss(window=10), _grad_logger(config)
    history = ctx.fit(model, batches["train"], epochs=config.epochs, validation=batches["val"],
                      callbacks=[grads, step_loss], best_monitor="val_accuracy",
                      steps_per_epoch=config.steps_per_epoch or None)
    labels, flow = grads.history["labels"], grads.history["last_mean_abs"]
    figure = plots.training_curves(history, f"{job.label} ({_dataset_text(config)})")
    ctx.log_figure(figure, "curves.png")
    best_epoch = int(np.argmax(history["val_accuracy"])) if history.get("val_accuracy") else -1
    ctx.load_best(model)
    test_metrics = model.evaluate(batches["test"], return_dict=True, verbose=0)
    return {
        "params": _trainable_params(model),
        "train_loss": history["loss"][-1],
        "train_acc_pct": 100 * history["accuracy"][-1],
        "val_loss": history["val_loss"][-1],
        "val_acc_pct": 100 * history["val_accuracy"][-1],
        "test_loss": float(test_metrics["loss"]),
        "test_acc_pct": 100 * float(test_metrics["accuracy"]),
        "best_epoch": best_epoch,
        "last10_loss": step_loss.last_mean(10),
        "steps": step_loss.steps,
        **_flow_extremes(labels, flow),
        "gradient_flow": flow,  # [epochs x entries]
        "gradient_flow_labels": np.array(labels),
    }


def _flow_extremes(labels: Sequence[str], flow: np.ndarray) -> dict[str, float]:
    """Over every epoch: the smallest entry, and the largest entry up to the two labels the
    paper-profile claims name (SPEC §3.5)."""
    out = {"grad_min": float(flow.min())}
    for stop, key in (("reduction_block_0_conv_1", "grad_max_to_reduction_0"),
                      ("block_2_4_conv_1", "grad_max_to_block_2")):
        if stop in labels:
            out[key] = float(flow[:, : list(labels).index(stop) + 1].max())
    return out


def execute_init(job: Job, ctx: Context) -> dict:
    """Mean |grad| per entry after one train-mode forward/backward at init (SPEC §3.5 Q1):
    the first 100 training images in one batch, SGD(0) so nothing changes."""
    from depthlab import augment

    config = job.config
    dataset = _dataset(config)
    first = augment.ImageBatches(dataset.train.x[:INIT_IMAGES], dataset.train.y[:INIT_IMAGES],
                                 batch_size=INIT_IMAGES, mean=augment.CIFAR10_MEAN,
                                 std=augment.CIFAR10_STD)
    model = _model_and_optimizer(config, dataset.num_classes, 1)
    grads = _grad_logger(config)
    ctx.fit(model, first, epochs=1, callbacks=[grads])
    return {"gradient_flow": grads.history["last_mean_abs"],  # [1 x entries]
            "gradient_flow_labels": np.array(grads.history["labels"])}


def execute(job: Job, ctx: Context) -> dict:
    if job.config.task == "init_gradients":
        return execute_init(job, ctx)
    return execute_table1(job, ctx)


def flow(outcome: Outcome) -> dict[str, float]:
    """The last epoch's gradient flow of an outcome: entry -> mean |grad| ({} if none)."""
    arrays = outcome.arrays
    if "gradient_flow" not in arrays:
        return {}
    labels = [str(v) for v in arrays["gradient_flow_labels"]]
    return dict(zip(labels, map(float, arrays["gradient_flow"][-1]), strict=True))


def figures(table: str, config: VGGConfig, outcomes: list[Outcome],
            profile: str) -> dict:
    """The study's headline plots, from the stored arrays: the gradient flow of each
    Table 1 row per epoch (course-style linear panel and a log panel), and the five
    models' gradient flow at initialisation on one log axis."""
    from depthlab import plots

    data_text = _dataset_text(config)
    shown = {o.job.key: o for o in outcomes if "gradient_flow" in o.arrays}
    if table == "init":
        if not shown:
            return {}
        flows = {o.job.label: ([str(v) for v in o.arrays["gradient_flow_labels"]],
                               o.arrays["gradient_flow"][-1]) for o in shown.values()}
        return {"gradient_flow_init": plots.gradient_flow_models(
            flows, f"Gradient flow at initialisation: mean |grad| per entry after one "
                   f"train-mode step on {INIT_IMAGES} images ({data_text}, {profile})")}
    return {f"gradient_flow_{key}": plots.gradient_flow(
        [str(v) for v in o.arrays["gradient_flow_labels"]], o.arrays["gradient_flow"],
        f"{o.job.label}: gradient flow, mean |grad| of each epoch's last batch ({data_text})")
        for key, o in shown.items()}


def _dataset_text(config: VGGConfig) -> str:
    from depthlab import data

    if config.dataset == "cifar10" and data.is_lossy("cifar10"):
        return "CIFAR-10, lossy offline copy, not comparable to the paper"
    return config.dataset.upper().replace("CIFAR", "CIFAR-")


def tags(config: VGGConfig) -> dict[str, str]:
    from depthlab import data

    lossy = config.dataset == "cifar10" and data.is_lossy("cifar10")
    return {"dataset": config.dataset, "data_copy": "lossy" if lossy else "exact",
            "dataset_note": _dataset_text(config)}


# --- report ------------------------------------------------------------------------------

# (our result, the paper's key in vgg_paper.json, column, decimals)
TABLE1_METRICS = (
    ("params", "params", "#params", 0), ("train_loss", "train_loss", "train loss", 3),
    ("train_acc_pct", "train_acc", "train acc %", 2), ("val_loss", "val_loss", "val loss", 3),
    ("val_acc_pct", "val_acc", "val acc %", 2), ("test_acc_pct", "test_acc", "test acc %", 2),
)


def report(table: str, config: VGGConfig, outcomes: list[Outcome],
           profile: str = "paper") -> list[Comparison]:
    """paper | ours | delta per row and metric; course values as the second reference.

    In the quick profile the comparable reference is the spec's calibration of the same
    check (last-10-step training loss, SPEC §3.5), listed first for each row.
    """
    paper = paper_numbers()
    quick = profile == "quick"
    if quick:
        caveat = "quick profile, CIFAR-10 subset: not comparable to the paper"
    else:
        caveat = _dataset_text(config) if config.dataset == "cifar10" else ""
    rows: list[Comparison] = []
    for outcome in outcomes:
        if table == "init":
            rows += _init_rows(outcome, paper["init_gradients_quick"])
            continue
        status = [outcome.status] if outcome.status in ("diverged", "failed") else []
        calibration = paper["quick_training"].get(outcome.job.key)
        if quick and calibration:
            seeds = " / ".join(f"{v:.3f}" for v in calibration["last10"])
            rows.append(Comparison(
                outcome.job.label, f"last-10 train loss, {calibration['steps']} steps",
                calibration["last10"][0], outcome.results.get("last10_loss"),
                "; ".join([f"spec §3.5 calibration, seeds 0/1/2: {seeds}; ln 10 = 2.303",
                           *status]), digits=3))
        ref = paper["rows"][outcome.job.key]
        for ours, key, metric, digits in TABLE1_METRICS:
            notes = [caveat] if caveat and key != "params" else []
            paper_value, paper_text = ref.get(key), ref.get(f"{key}_text")
            if key == "params":  # the paper's "60 K" and the exact count for our head
                ten = outcome.job.config.dataset == "cifar10"
                paper_value = ref["params_exact_c10" if ten else "params_exact"]
                paper_text = f"{ref['params_text']} (exact {paper_value:,}" + (
                    ", 10-class head)" if ten else ")")
            course = ref.get("course", {}).get(key)
            if course is not None:
                notes.append(f"course CSV: {course}")
            rows.append(Comparison(outcome.job.label, metric, paper_value,
                                   outcome.results.get(ours), "; ".join(notes + status),
                                   paper_text, digits))
    return rows + claims(table, config, outcomes, profile)


# --- claims ------------------------------------------------------------------------------


def claims(table: str, config: VGGConfig, outcomes: list[Outcome],
           profile: str = "paper") -> list[Comparison]:
    """The study's qualitative claims checked on the rows that ran (SPEC §3.5): Q1-Q4 in
    the quick profile, the paper profile's acceptance on CIFAR-100, and the stand-in's on
    CIFAR-10. A claim whose rows did not run is left out; one whose row did not finish
    fails. Each row's numbers: its results, and its last gradient flow as ``grad.<entry>``."""
    got = {o.job.key: {**o.results, **{f"grad.{k}": v for k, v in flow(o).items()}}
           for o in outcomes if o.results or o.arrays}
    names = {o.job.key: o.job.label for o in outcomes}
    # A row that did not train to its end with finite weights supports no claim about it.
    lost = [claim(f"{o.job.label} trained to the end, weights finite", None, False,
                  "finished", o.message or o.status)
            for o in outcomes if o.status not in ("finished", "skipped")]
    if table == "init":
        return lost + _init_claims(got, names)
    if profile == "quick":
        return lost + _quick_claims(got, outcomes)
    if config.dataset == "cifar10":
        return lost + _stand_in_claims(got)
    return lost + _paper_claims(got, names)


def _quick_claims(got: Mapping[str, Mapping], outcomes: list[Outcome]) -> list[Comparison]:
    ln10, source = math.log(10), "SPEC §3.5"
    steps = {o.job.key: o.job.config.epochs * o.job.config.steps_per_epoch for o in outcomes}
    out = []
    for key, name, margin in (("vgg08", "Q2 VGG08 learns", 0.25),
                              ("vgg38_bnrc_1e-3", "Q3 VGG38 BN+RC learns", 0.15)):
        loss = got.get(key, {}).get("last10_loss")
        if loss is not None and steps[key] == QUICK_STEPS[key][0] * QUICK_STEPS[key][1]:
            out.append(claim(f"{name}: last-10 loss, {steps[key]} steps", loss,
                             loss <= ln10 - margin, f"≤ {ln10 - margin:.3f}", source))
    plain = got.get("vgg38", {})
    if "last10_loss" in plain and steps["vgg38"] == 20:
        loss, first = plain["last10_loss"], plain["grad.input_conv_conv_0"]
        # NaN weights can read as a chance-level loss (a kernel mapping NaN to 0).
        finite = plain.get("weights_finite") == 1.0
        out += [claim("Q4 VGG38 stays at chance: last-10 loss, 20 steps, weights finite",
                      loss, finite and abs(loss - ln10) <= 0.05, f"{ln10:.3f} ± 0.05", source),
                claim("Q4 VGG38: mean|grad| input_conv_conv_0", first, first < 1e-10,
                      "< 1e-10", source)]
    return out


def _init_claims(got: Mapping[str, Mapping], names: Mapping[str, str]) -> list[Comparison]:
    def convs(key: str) -> dict[str, float]:
        return {k[len("grad."):]: v for k, v in got.get(key, {}).items()
                if k.startswith("grad.") and "conv_" in k and "_bn_" not in k}

    source, out = "SPEC §3.5 Q1", []
    plain = convs("vgg38")
    if plain:
        early = max(v for k, v in plain.items()
                    if k == "input_conv_conv_0" or k.startswith("block_0_"))
        later = plain["reduction_block_2_conv_1"]
        out += [claim("VGG38 at init: max mean|grad| input conv + block_0 convs", early,
                      early < 1e-10, "< 1e-10", source),
                claim("VGG38 at init: reduction_block_2_conv_1", later, later > 1e-6,
                      "> 1e-6", source)]
    for key, floor in (("vgg08", 1e-7), ("vgg38_rc", 1e-7), ("vgg38_bn", 1e-4),
                       ("vgg38_bnrc", 1e-4)):
        if convs(key):
            low = min(convs(key).values())
            out.append(claim(f"{names[key]}: min mean|grad| over convs", low,
                             low > floor, f"> {floor:g}", source))
    return out


def _chance_claims(plain: Mapping[str, float], classes: int, max_acc: float,
                   source: str) -> list[Comparison]:
    if "train_loss" not in plain:
        return []
    ln = math.log(classes)
    acc = max(plain["train_acc_pct"], plain["val_acc_pct"], plain["test_acc_pct"])
    finite = plain.get("weights_finite") == 1.0  # NaN weights can read as chance level
    return [claim(f"VGG38 {part} loss within ±0.02 of ln {classes}, weights finite",
                  plain[f"{part}_loss"],
                  finite and abs(plain[f"{part}_loss"] - ln) <= 0.02, f"{ln:.3f} ± 0.02", source)
            for part in ("train", "val")] + [
        claim("VGG38 max of train/val/test acc %", acc, acc <= max_acc, f"≤ {max_acc:g}",
              source, digits=2)]


def _paper_claims(got: Mapping[str, Mapping], names: Mapping[str, str]) -> list[Comparison]:
    source, paper = "SPEC §3.5 paper acceptance", paper_numbers()["rows"]
    out = _chance_claims(got.get("vgg38", {}), 100, 2.0, source)
    plain = got.get("vgg38", {})
    for key, stop, bound in (("grad_max_to_reduction_0", "reduction_block_0_conv_1", 1e-10),
                             ("grad_max_to_block_2", "block_2_4_conv_1", 1e-8)):
        if key in plain:
            out.append(claim(f"VGG38 max mean|grad| up to {stop}, every epoch", plain[key],
                             plain[key] < bound, f"< {bound:g}", source))
    for key in ("vgg08", "vgg38_bnrc_1e-3", "vgg38_bnrc_1e-2"):
        if "grad_min" in got.get(key, {}):
            low = got[key]["grad_min"]
            out.append(claim(f"{names[key]}: min mean|grad|, every epoch", low,
                             low > 1e-6, "> 1e-6", source))
    trained = {k: v for k, v in got.items() if k != "vgg38" and "val_acc_pct" in v}
    for key, row in trained.items():
        ref = paper[key]
        acc = max(abs(row[f"{m}_pct"] - ref[m]) for m in ("train_acc", "val_acc"))
        loss = max(abs(row[m] - ref[m]) for m in ("train_loss", "val_loss"))
        name = names[key]
        out += [claim(f"{name}: max |acc - paper| (train, val)", acc, acc <= 4, "≤ 4", source,
                      digits=2),
                claim(f"{name}: max |loss - paper| (train, val)", loss, loss <= 0.2, "≤ 0.2",
                      source)]
    if trained:
        low = min(v["val_acc_pct"] for v in trained.values())
        out.append(claim("every trained row: min val acc %", low, low >= 40, "≥ 40", source,
                         digits=2))
    val = {k: v["val_acc_pct"] for k, v in trained.items()}
    bnrc = [val[k] for k in ("vgg38_bnrc_1e-3", "vgg38_bnrc_1e-2") if k in val]
    bn = [val[k] for k in ("vgg38_bn_1e-2", "vgg38_bn_1e-3") if k in val]
    if bnrc and bn and "vgg38_rc" in val:
        ordered = max(bnrc) > val["vgg38_rc"] > max(bn)
        out.append(claim(f"val acc BN+RC {max(bnrc):.2f} > RC {val['vgg38_rc']:.2f} > "
                         f"BN {max(bn):.2f}", None, ordered, "ordered", source))
    if "test_acc_pct" in got.get("vgg38_bnrc_1e-2", {}):
        test = got["vgg38_bnrc_1e-2"]["test_acc_pct"]
        out.append(claim("VGG38 BN+RC, lr 0.01: test acc %", test, abs(test - 61.09) <= 4,
                         "61.09 ± 4", source, digits=2))
    return out


def _stand_in_claims(got: Mapping[str, Mapping]) -> list[Comparison]:
    source = "SPEC §3.5 stand-in acceptance (UNVERIFIED in the spec)"
    out = _chance_claims(got.get("vgg38", {}), 10, 11.0, source)
    val = {k: v["val_acc_pct"] for k, v in got.items() if k != "vgg38" and "val_acc_pct" in v}
    if val:
        low = min(val.values())
        out.append(claim("every row but VGG38: min val acc %", low, low >= 60, "≥ 60", source,
                         digits=2))
    bnrc = [val[k] for k in ("vgg38_bnrc_1e-3", "vgg38_bnrc_1e-2") if k in val]
    others = [v for k, v in val.items() if not k.startswith("vgg38_bnrc")]
    if bnrc and others:
        out.append(claim("BN+RC is the best row: its val acc % minus the best other's",
                         max(bnrc) - max(others), max(bnrc) > max(others), "> 0", source,
                         digits=2))
    return out



def _init_rows(outcome: Outcome, reference: Mapping[str, list[float]]) -> list[Comparison]:
    results = flow(outcome)
    first = results.get("input_conv_conv_0")
    logit = results.get("weight_logit_linear_layer")
    seeds = reference.get(outcome.job.key, [])
    note = ("spec Q1 (torch, MNIST, seeds 0/1/2): " + " / ".join(f"{v:.2g}" for v in seeds)
            if seeds else "")
    return [
        Comparison(outcome.job.label, "mean|grad| input_conv_conv_0", seeds[0] if seeds else None,
                   first, note, f"{seeds[0]:.2g}" if seeds else None),
        Comparison(outcome.job.label, "mean|grad| logit layer", None, logit),
    ]


def prepare(config: VGGConfig) -> None:
    """Check the image counts against the data, then load (and cache) the job's images,
    so bad counts and missing data stop the table at once."""
    from depthlab import data

    num_classes = 100 if config.dataset == "cifar100" else 10
    if config.split == "head" and config.train_images > len(data.cifar_labels(num_classes,
                                                                             "train")):
        raise configs.ConfigError(f"train_images={config.train_images}: {config.dataset} has "
                                  f"{len(data.cifar_labels(num_classes, 'train')):,} images "
                                  f"for it ({config.split} split)")
    whole = data.cifar_parts(config.split, config.train_images)  # every part at full size
    limits = {f"{part}_images": len(idx) for part, (_, idx) in whole.items()}
    for field, limit in limits.items():
        if getattr(config, field) > limit:
            raise configs.ConfigError(
                f"{field}={getattr(config, field)}: {config.dataset} has {limit:,} images for "
                f"it ({config.split} split)")
    _dataset(config)


ARCHITECTURE = ("num_blocks", "norm", "residual", "bn_in_reduction", "task")

STUDY = Study(
    name="vgg",
    profiles=PROFILES,
    tables={"1": table1_jobs, "init": init_jobs},
    execute=execute,
    report=report,
    rows={"1": list(ROWS), "init": list(INIT_ROWS)},
    tags=tags,
    prepare=prepare,
    label=label,
    figures=figures,
    # Table 1's rows are architectures; the init table also fixes its one-step recipe.
    fixed={"1": ARCHITECTURE, "init": (*ARCHITECTURE, "epochs", "steps_per_epoch", "schedule",
                                       "lr", "lr_min", "batch_size", "augment")},
    datasets=lambda config: (config.dataset,),
    splits=split_indices,
)


def main(argv: Sequence[str] | None = None) -> int:
    from depthlab.cli import main as cli_main

    return cli_main(argv, study="vgg")


if __name__ == "__main__":
    raise SystemExit(main())
