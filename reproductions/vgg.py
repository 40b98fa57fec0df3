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
import functools
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


def table1_jobs(config: VGGConfig, rows: Sequence[str] | None) -> list[Job]:
    quick = config.split == "head"
    keys = rows or (list(QUICK_STEPS) if quick else list(ROWS))
    jobs = []
    for key in keys:
        row = dict(ROWS[key])
        if quick and key in QUICK_STEPS:  # a user's --set of either still wins (runner)
            row["epochs"], row["steps_per_epoch"] = QUICK_STEPS[key]
        job_config = dataclasses.replace(config, **row)
        jobs.append(Job(key, label(key, job_config), job_config))
    return jobs


def init_jobs(config: VGGConfig, rows: Sequence[str] | None) -> list[Job]:
    jobs = []
    for key in rows or INIT_ROWS:
        job_config = dataclasses.replace(config, **INIT_ROWS[key], epochs=1, steps_per_epoch=1,
                                         schedule="constant", task="init_gradients")
        jobs.append(Job(key, label(key, job_config).split(",")[0] + " at init", job_config))
    return jobs


# --- execution (imports Keras) -------------------------------------------------------------


def split_indices(config: VGGConfig) -> dict[str, tuple[str, np.ndarray]]:
    """Each part's (source file part, indices): train, val and test, disjoint.

    ``coursework``: SPEC §3.3's split. ``head`` (quick, SPEC §3.5): the first
    ``train_images`` of the training file in file order; its validation images are the
    coursework validation images outside that head (the quick set's first 2,048 images
    include 95 of them).
    """
    from depthlab import data

    val = data.cifar_indices("val", "coursework")
    if config.split == "head":
        train = np.arange(config.train_images)
        val = val[val >= config.train_images]
    else:
        train = data.cifar_indices("train", "coursework")
        train = train[: config.train_images] if config.train_images else train
    val = val[: config.val_images] if config.val_images else val
    test = data.cifar_indices("test")
    test = test[: config.test_images] if config.test_images else test
    return {"train": (f"{config.dataset}:train", train), "val": (f"{config.dataset}:train", val),
            "test": (f"{config.dataset}:test", test)}


def _images(config: VGGConfig):
    """(train, val, test, num_classes) of the configured data: uint8 images, int labels."""
    return _load(VGGConfig(dataset=config.dataset, split=config.split,
                           train_images=config.train_images, val_images=config.val_images,
                           test_images=config.test_images))


@functools.lru_cache(maxsize=2)
def _load(key: VGGConfig):
    """Only the images a job uses are read, so a partial offline copy serves what it holds
    and fails at once beyond it (``key``: a config holding just the data fields)."""
    from depthlab import data

    num_classes = 100 if key.dataset == "cifar100" else 10
    parts = {}
    for part, (source, idx) in split_indices(key).items():
        source = source.split(":")[1]
        parts[part] = data.Split(data.cifar_images(num_classes, source, idx),
                                 data.cifar_labels(num_classes, source)[idx])
    return parts["train"], parts["val"], parts["test"], num_classes


def _batches(split, config: VGGConfig, train: bool):
    from depthlab import data

    return data.ImageBatches(
        split.x, split.y, batch_size=config.batch_size, mean=data.CIFAR10_MEAN,
        std=data.CIFAR10_STD, augment=train and config.augment, shuffle=train, seed=config.seed,
        repeat=train and config.steps_per_epoch > 0,  # exact step counts (quick profile)
    )


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


def execute_table1(job: Job, ctx: Context) -> dict[str, float]:
    """Train one Table 1 row; return its last-epoch and best-checkpoint numbers."""
    from depthlab import plots
    from depthlab.callbacks.step_loss import StepLoss
    from depthlab.layers.vgg import gradient_flow_labels

    config = job.config
    train, val, test, num_classes = _images(config)
    train_batches = _batches(train, config, train=True)
    steps = config.steps_per_epoch or len(train_batches)
    model = _model_and_optimizer(config, num_classes, steps)
    labels = [name for name, _ in gradient_flow_labels(model)]
    step_loss = StepLoss(window=10)
    history = ctx.fit(model, train_batches, epochs=config.epochs,
                      validation=_batches(val, config, train=False),
                      callbacks=[_grad_logger(config), step_loss],
                      best_monitor="val_accuracy", steps_per_epoch=config.steps_per_epoch or None)
    flow = np.array([ctx.metric_history(f"grad_mean_abs/{name}") for name in labels]).T
    title = f"{job.label}: gradient flow ({_dataset_text(config)})"
    ctx.log_text(_flow_csv(labels, flow), "gradient_flow.csv")
    figure = plots.gradient_flow(labels, flow, title)
    ctx.log_figure(figure, "gradient_flow.png")
    plots.close(figure)
    figure = plots.training_curves(history, f"{job.label} ({_dataset_text(config)})")
    ctx.log_figure(figure, "curves.png")
    plots.close(figure)
    best_epoch = int(np.argmax(history["val_accuracy"])) if history.get("val_accuracy") else -1
    ctx.load_best(model)
    test_metrics = model.evaluate(_batches(test, config, train=False), return_dict=True, verbose=0)
    results = {
        "params": _trainable_params(model),
        "train_loss": history["loss"][-1],
        "train_acc": 100 * history["accuracy"][-1],
        "val_loss": history["val_loss"][-1],
        "val_acc": 100 * history["val_accuracy"][-1],
        "test_loss": float(test_metrics["loss"]),
        "test_acc": 100 * float(test_metrics["accuracy"]),
        "best_epoch": best_epoch,
        "last10_loss": step_loss.last_mean(10),
        "steps": step_loss.steps,
    }
    results.update({f"grad.{name}": float(v) for name, v in zip(labels, flow[-1], strict=True)})
    results.update(_flow_extremes(labels, flow))
    return results


def _flow_extremes(labels: Sequence[str], flow: np.ndarray) -> dict[str, float]:
    """Over every epoch: the smallest entry, and the largest entry up to the two labels the
    paper-profile claims name (SPEC §3.5)."""
    out = {"grad_min": float(flow.min())}
    for stop, key in (("reduction_block_0_conv_1", "grad_max_to_reduction_0"),
                      ("block_2_4_conv_1", "grad_max_to_block_2")):
        if stop in labels:
            out[key] = float(flow[:, : list(labels).index(stop) + 1].max())
    return out


def execute_init(job: Job, ctx: Context) -> dict[str, float]:
    """Mean |grad| per entry after one train-mode forward/backward at init (SPEC §3.5 Q1)."""
    from depthlab import data
    from depthlab.layers.vgg import gradient_flow_labels

    config = dataclasses.replace(job.config, batch_size=INIT_IMAGES, augment=False)
    train, _, _, num_classes = _images(config)
    first = data.Split(train.x[:INIT_IMAGES], train.y[:INIT_IMAGES])
    model = _model_and_optimizer(config, num_classes, 1)
    ctx.fit(model, _batches(first, config, train=False), epochs=1,
            callbacks=[_grad_logger(config)])
    labels = [name for name, _ in gradient_flow_labels(model)]
    values = [ctx.metric_history(f"grad_mean_abs/{name}")[-1] for name in labels]
    ctx.log_text(_flow_csv(labels, np.array([values])), "gradient_flow_init.csv")
    return {f"grad.{name}": float(v) for name, v in zip(labels, values, strict=True)}


def execute(job: Job, ctx: Context) -> dict[str, float]:
    if job.config.task == "init_gradients":
        return execute_init(job, ctx)
    return execute_table1(job, ctx)


def _flow_csv(labels: Sequence[str], flow: np.ndarray) -> str:
    lines = ["epoch," + ",".join(labels)]
    lines += [f"{e}," + ",".join(f"{v:.6e}" for v in row) for e, row in enumerate(flow)]
    return "\n".join(lines) + "\n"


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

TABLE1_METRICS = (
    ("params", "#params", 0), ("train_loss", "train loss", 3), ("train_acc", "train acc %", 2),
    ("val_loss", "val loss", 3), ("val_acc", "val acc %", 2), ("test_acc", "test acc %", 2),
)


def report(table: str, config: VGGConfig, outcomes: list[Outcome]) -> list[Comparison]:
    """paper | ours | delta per row and metric; course values as the second reference.

    In the quick profile the comparable reference is the spec's calibration of the same
    check (last-10-step training loss, SPEC §3.5), listed first for each row.
    """
    paper = paper_numbers()
    quick = config.split == "head"
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
        for key, metric, digits in TABLE1_METRICS:
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
                                   outcome.results.get(key), "; ".join(notes + status),
                                   paper_text, digits))
    return rows + claims(table, config, outcomes)


# --- claims ------------------------------------------------------------------------------


def claims(table: str, config: VGGConfig, outcomes: list[Outcome]) -> list[Comparison]:
    """The study's qualitative claims checked on the rows that ran (SPEC §3.5): Q1-Q4 in
    the quick profile, the paper profile's acceptance on CIFAR-100, and the stand-in's on
    CIFAR-10. A claim whose rows did not run is left out."""
    got = {o.job.key: o.results for o in outcomes if o.results}
    names = {o.job.key: o.job.label for o in outcomes}
    # A row that did not train to its end with finite weights supports no claim about it.
    lost = [claim(f"{o.job.label} trained to the end, weights finite", None, False,
                  "finished", o.message or o.status)
            for o in outcomes if o.status not in ("finished", "skipped")]
    if table == "init":
        return lost + _init_claims(got, names)
    if config.split == "head":
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
    acc = max(plain["train_acc"], plain["val_acc"], plain["test_acc"])
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
    trained = {k: v for k, v in got.items() if k != "vgg38" and "val_acc" in v}
    for key, row in trained.items():
        ref = paper[key]
        acc = max(abs(row[m] - ref[m]) for m in ("train_acc", "val_acc"))
        loss = max(abs(row[m] - ref[m]) for m in ("train_loss", "val_loss"))
        name = names[key]
        out += [claim(f"{name}: max |acc - paper| (train, val)", acc, acc <= 4, "≤ 4", source,
                      digits=2),
                claim(f"{name}: max |loss - paper| (train, val)", loss, loss <= 0.2, "≤ 0.2",
                      source)]
    if trained:
        low = min(v["val_acc"] for v in trained.values())
        out.append(claim("every trained row: min val acc %", low, low >= 40, "≥ 40", source,
                         digits=2))
    val = {k: v["val_acc"] for k, v in trained.items()}
    bnrc = [val[k] for k in ("vgg38_bnrc_1e-3", "vgg38_bnrc_1e-2") if k in val]
    bn = [val[k] for k in ("vgg38_bn_1e-2", "vgg38_bn_1e-3") if k in val]
    if bnrc and bn and "vgg38_rc" in val:
        ordered = max(bnrc) > val["vgg38_rc"] > max(bn)
        out.append(claim(f"val acc BN+RC {max(bnrc):.2f} > RC {val['vgg38_rc']:.2f} > "
                         f"BN {max(bn):.2f}", None, ordered, "ordered", source))
    if "test_acc" in got.get("vgg38_bnrc_1e-2", {}):
        test = got["vgg38_bnrc_1e-2"]["test_acc"]
        out.append(claim("VGG38 BN+RC, lr 0.01: test acc %", test, abs(test - 61.09) <= 4,
                         "61.09 ± 4", source, digits=2))
    return out


def _stand_in_claims(got: Mapping[str, Mapping]) -> list[Comparison]:
    source = "SPEC §3.5 stand-in acceptance (UNVERIFIED in the spec)"
    out = _chance_claims(got.get("vgg38", {}), 10, 11.0, source)
    val = {k: v["val_acc"] for k, v in got.items() if k != "vgg38" and "val_acc" in v}
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
    results = outcome.results
    first = results.get("grad.input_conv_conv_0")
    logit = results.get("grad.weight_logit_linear_layer")
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
    total = len(data.cifar_labels(num_classes, "train"))
    limits = {"train_images": total if config.split == "head" else
              len(data.cifar_indices("train", "coursework")),
              "val_images": len(data.cifar_indices("val", "coursework")),
              "test_images": len(data.cifar_labels(num_classes, "test"))}
    for field, limit in limits.items():
        if getattr(config, field) > limit:
            raise configs.ConfigError(
                f"{field}={getattr(config, field)}: {config.dataset} has {limit:,} images for "
                f"it ({config.split} split)")
    _images(config)


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
