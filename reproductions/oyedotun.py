"""Study §4: Oyedotun et al., 100-layer PlainNets without skip connections.

Tables of the paper and its figures, one runner table each:

  ``1``       Table I: trainable parameters of the FC PlainNets at the seven depths
              (COIL-20 32x32), the 100-layer counts and the conv PlainNet's (Q7)
  ``2``       Table II: the seven component sets, USPS, D=100, 300 epochs, lr0 0.1 (and
              the 0.01 column); train / test error and whether each net is a constant
              predictor (quick: 10 steps each and the max-norm check of Q8)
  ``3``       Table III: the 50-layer conv PlainNet on CIFAR-10, 400 epochs, beside the
              literature rows; Fig 10, its training curves
  ``fig1``    train / test error vs depth, naive and BN nets, COIL-20 and USPS
  ``fig2-8``  per-layer diagnostics of the 100-layer nets: normalised mean |h| (Figs 2-3),
              max |h| (4), kappa_inf of each kernel (5), activation images at layers 50
              and 99 (6-8), kappa_2 and dead units; quick: at init, BN in training mode
              (SPEC §4.5, Q1-Q6); paper: after training, BN in inference mode
  ``fig9``    train / test error vs depth for Uniform, He, Glorot, BN and Proposed
  ``a1``      % of |h| above 0, 0.05, 0.5, 5, 50 per layer, USPS (Fig A1)

Every reading of SPEC §4 is stated in the outputs: depth = hidden blocks, Dense -> BN ->
activation, COIL-20 resized by 4x4 block means and split by ``default_rng(0)``, the
four-decade step schedule, coupled L2 on kernels only (``L2(5e-5)``), Conv_49 = 96@3x3,
errors in inference mode on the full sets at each epoch end. A training job of Figs 1 / 9
at depth 100 is the same job as Figs 2-8's (paper profile): the runner reuses it.

Usage:
    python -m depthlab.reproductions.oyedotun --table fig2-8 --profile quick --backend torch
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

TABLE1_DEPTHS = (3, 5, 10, 15, 20, 40, 50)
FIG9_NETS = ("uniform", "he", "glorot", "bn", "proposed")
FIG1_NETS = ("glorot", "bn")
PANEL_NETS = ("glorot", "bn", "proposed")  # the (a), (b), (c) panels of Figs 2-8 and A1
QUICK_NETS = ("glorot", "relu_he", "lrelu_only", "bn", "proposed")  # SPEC §4.5's table
QUICK_SEEDS = (0, 1, 2)
# Q2 for LReLU nets: the spec asserts exactly 0 zeros; BN + LReLU gives an exact 0 where a
# pre-activation equals its batch mean in float32: measured once in 307,200 entries (3.3e-6,
# torch, seed 0..2), so the check allows fewer than 1e-5 (3 entries per layer).
LRELU_ZEROS = 1e-5
IMAGE_LAYERS = (50, 99)  # Figs 6-8
PROBE_TRAINING_IMAGES = 1024  # the training-mode probe (one batch), SPEC §4.5
DATASETS = ("coil20", "usps")

# net name -> (PlainNet variant of layers.plainnet, kernel initialiser override or "")
NETS: dict[str, tuple[str, str]] = {
    "glorot": ("naive", ""),  # the naive net: ReLU, Keras' default glorot_uniform
    "uniform": ("uniform", ""),
    "he": ("he", ""),
    "bn": ("bn", ""),
    "proposed": ("proposed", ""),
    "relu_he": ("naive", "he_uniform"),  # SPEC §4.5: ReLU, he_uniform, no BN
    "lrelu_only": ("lrelu_only", ""),
    "bn_only": ("bn_only", ""),
    "maxnorm_only": ("maxnorm_only", ""),
    "bn_lrelu": ("bn_lrelu", ""),
    "bn_maxnorm": ("bn_maxnorm", ""),
    "lrelu_maxnorm": ("lrelu_maxnorm", ""),
}
NET_LABELS = {
    "glorot": "naive (Glorot init)", "uniform": "Uniform init", "he": "He init",
    "bn": "PlainNet-BN", "proposed": "Proposed", "relu_he": "ReLU, He uniform, no BN",
    "lrelu_only": "LReLU", "bn_only": "BN", "maxnorm_only": "Max-norm",
    "bn_lrelu": "BN + LReLU", "bn_maxnorm": "BN + max-norm",
    "lrelu_maxnorm": "LReLU + max-norm",
}
TABLE2_NETS = ("bn_only", "lrelu_only", "maxnorm_only", "bn_lrelu", "bn_maxnorm",
               "lrelu_maxnorm", "proposed")
TABLE2_LRS = (0.1, 0.01)
# Inference-mode errors on the whole sets (EvaluateSets names them eval_train_*, eval_test_*):
# measurements, never a divergence signal. Early in training BN's moving statistics lag the
# batch statistics, and a 100-layer net's inference-mode activations overflow (measured:
# proposed, 10 steps at lr 0.1, max |h| x ~1e4 per 10 layers, inf by layer 80) while its
# training-mode forward stays O(10).
EVAL_PREFIX = "eval_"
# Training jobs are stopped only by non-finite values (max_loss=inf), not by a large loss:
# Keras' loss includes the L2 term of every kernel, and BN makes a net blind to its
# kernels' scale; a first step at lr 0.1 grows a deep BN net's kernels (Sum w^2 ~ 1e8-1e9:
# total loss 1.5e4-2.2e4, measured at D=50) while its cross-entropy stays finite.


@dataclasses.dataclass(frozen=True)
class OyedotunConfig:
    """One job of the study (SPEC §4.2-§4.5). Defaults: the ``paper`` recipe.

    Tables set ``task``, ``dataset``, ``net``, ``depth`` (and Table II's ``lr0``); the rest
    is the recipe a user may change with ``--set``.
    """

    task: Literal["counts", "diagnostics", "train", "conv"] = "train"
    dataset: Literal["usps", "coil20", "cifar10"] = "usps"
    net: str = "proposed"  # a key of NETS
    depth: int = 100  # hidden blocks D
    width: int = 300
    epochs: int = 300  # FC 300, conv 400 (stated)
    lr0: float = 0.1  # lr(e) = lr0 * 10^-floor(4e/E) (READING)
    momentum: float = 0.9
    weight_decay: float = 1e-4  # coupled, kernels only: L2(weight_decay / 2)
    batch_size: int = 128
    steps_per_epoch: int = 0  # 0: one pass; N: N steps per epoch (quick smoke runs)
    train_images: int = 0  # 0: the whole training split; N: its first N
    test_images: int = 0  # 0: the whole test split; N: its first N
    probe_images: int = 0  # inference-mode diagnostics: 0 = the whole training split
    image_samples: int = 200  # samples (columns) of the activation images, Figs 6-8
    augment: bool = True  # CIFAR-10: 4-px crop + flip (READING)
    check_max_norm: bool = False  # read the kernels after every step (Q8)
    seed: int = 0

    def __post_init__(self) -> None:
        configs.check(self, positive=("depth", "width", "epochs", "lr0", "batch_size",
                                      "image_samples"),
                      non_negative=("momentum", "weight_decay", "steps_per_epoch",
                                    "train_images", "test_images", "probe_images", "seed"))
        if self.net not in NETS:
            raise configs.ConfigError(f"net={self.net!r}: one of {', '.join(NETS)}")
        if self.momentum >= 1:
            raise configs.ConfigError(f"momentum={self.momentum}: must be below 1")


PAPER = OyedotunConfig()
# quick training (Figs 1 / 9): 30 epochs of the same schedule shape on COIL-20 and 1,024
# USPS images (8 steps each: 240 steps, enough for BN's moving statistics, momentum 0.99, to
# follow the batch statistics; after 80 steps inference-mode BN nets were still near chance
# while their training-mode accuracy was 0.9-1.0); diagnostics on 1,024 training images.
QUICK = dataclasses.replace(PAPER, epochs=30, train_images=1024, test_images=1000,
                            probe_images=1024)
PROFILES = {"paper": PAPER, "quick": QUICK}
FIG1_DEPTHS = {"paper": TABLE1_DEPTHS, "quick": (3, 10, 50)}
FIG9_DEPTHS = {"paper": (*TABLE1_DEPTHS, 100), "quick": (3, 10, 100)}
QUICK_TABLE2_STEPS = 10  # SPEC §4.5 Q8: 10 steps at lr 0.1
QUICK_CONV = {"epochs": 1, "steps_per_epoch": 4, "train_images": 512, "test_images": 500}


def paper_numbers() -> dict:
    """The spec's numbers of the paper (``oyedotun_paper.json``, SPEC §4.1-§4.5)."""
    text = resources.files("depthlab.reproductions").joinpath("oyedotun_paper.json").read_text()
    return json.loads(text)


def label(key: str, config: OyedotunConfig) -> str:
    if config.task == "counts":
        return "parameter counts"
    if config.task == "conv":
        return f"conv PlainNet-50, CIFAR-10, lr0 {config.lr0:g}"
    name = f"{NET_LABELS[config.net]}, {config.dataset.upper()}, D={config.depth}"
    if config.task == "diagnostics":
        return f"{name}, init, seed {config.seed}"
    return f"{name}, lr0 {config.lr0:g}"


def _job(key: str, config: OyedotunConfig) -> Job:
    return Job(key, label(key, config), config)


def _train(config: OyedotunConfig, dataset: str, net: str, depth: int) -> Job:
    """A training job of Figs 1, 9 and (depth 100) 2-8 / A1: one key, so tables share it."""
    job_config = dataclasses.replace(config, task="train", dataset=dataset, net=net,
                                     depth=depth, **_whole(dataset))
    return _job(f"{dataset}_{net}_d{depth}", job_config)


def _whole(dataset: str) -> dict:
    """COIL-20 (1,008 / 432 images) is always used whole; the quick heads are USPS's."""
    return {"train_images": 0, "test_images": 0} if dataset == "coil20" else {}


def _init(config: OyedotunConfig, dataset: str, net: str, seed: int) -> Job:
    job_config = dataclasses.replace(config, task="diagnostics", dataset=dataset, net=net,
                                     depth=100, seed=seed, **_whole(dataset))
    return _job(f"{dataset}_{net}_s{seed}", job_config)


def _keep(jobs: list[Job], rows: Sequence[str] | None) -> list[Job]:
    return [j for j in jobs if rows is None or j.key in rows]


def table1_jobs(config: OyedotunConfig, rows, profile: str = "paper") -> list[Job]:
    return _keep([_job("counts", dataclasses.replace(config, task="counts"))], rows)


def table2_jobs(config: OyedotunConfig, rows, profile: str = "paper") -> list[Job]:
    jobs = []
    for lr0 in TABLE2_LRS if profile == "paper" else TABLE2_LRS[:1]:
        for net in TABLE2_NETS:
            job_config = dataclasses.replace(config, task="train", dataset="usps", net=net,
                                             depth=100, lr0=lr0)
            if profile == "quick":  # SPEC §4.5 Q8: 10 steps on the whole training split
                job_config = dataclasses.replace(
                    job_config, epochs=1, steps_per_epoch=QUICK_TABLE2_STEPS, train_images=0,
                    test_images=0, check_max_norm=net == "proposed")
            # the paper's lr0 0.1 rows are Fig 9's depth-100 USPS jobs where they share a net
            suffix = "" if lr0 == TABLE2_LRS[0] else f"_lr{lr0:g}"
            jobs.append(_job(f"usps_{net}_d100{suffix}", job_config))
    return _keep(jobs, rows)


def table3_jobs(config: OyedotunConfig, rows, profile: str = "paper") -> list[Job]:
    fields = {"epochs": 400, "train_images": 0, "test_images": 0}
    if profile == "quick":
        fields = dict(QUICK_CONV)
    job_config = dataclasses.replace(config, task="conv", dataset="cifar10", **fields)
    return _keep([_job("conv50", job_config)], rows)


def fig1_jobs(config: OyedotunConfig, rows, profile: str = "paper") -> list[Job]:
    return _keep([_train(config, d, n, depth) for d in DATASETS for n in FIG1_NETS
                  for depth in FIG1_DEPTHS[profile]], rows)


def fig9_jobs(config: OyedotunConfig, rows, profile: str = "paper") -> list[Job]:
    return _keep([_train(config, d, n, depth) for d in DATASETS for n in FIG9_NETS
                  for depth in FIG9_DEPTHS[profile]], rows)


def diagnostics_jobs(config: OyedotunConfig, rows, profile: str = "paper",
                     datasets: Sequence[str] = DATASETS) -> list[Job]:
    if profile == "paper":  # after training: the depth-100 jobs of Fig 9
        jobs = [_train(config, d, n, 100) for d in datasets for n in PANEL_NETS]
    else:  # at init: the five nets of SPEC §4.5 x three seeds on USPS, Figs 2/6/7 on COIL-20
        jobs = [_init(config, "usps", n, s) for n in QUICK_NETS for s in QUICK_SEEDS
                if "usps" in datasets]
        jobs += [_init(config, "coil20", n, 0) for n in PANEL_NETS if "coil20" in datasets]
    return _keep(jobs, rows)


def a1_jobs(config: OyedotunConfig, rows, profile: str = "paper") -> list[Job]:
    """Fig A1: the USPS nets of the (a), (b), (c) panels, seed 0 (jobs shared with Figs 2-8)."""
    jobs = diagnostics_jobs(config, None, profile, datasets=("usps",))
    return _keep([j for j in jobs if j.config.net in PANEL_NETS and j.config.seed == 0], rows)


TABLES = {"1": table1_jobs, "2": table2_jobs, "3": table3_jobs, "fig1": fig1_jobs,
          "fig2-8": diagnostics_jobs, "fig9": fig9_jobs, "a1": a1_jobs}


def all_rows(table: str) -> list[str]:
    keys = {j.key for profile in PROFILES for j in TABLES[table](PROFILES[profile], None,
                                                                 profile)}
    return sorted(keys)


# --- data (imports no backend) -------------------------------------------------------------


def _dataset(config: OyedotunConfig):
    from depthlab import data

    if config.dataset == "cifar10":
        return data.cifar(10, "official", config.train_images, 0, config.test_images)
    return data.load(config.dataset)


def _head(split, count: int):
    from depthlab.data import Split

    return split if not count else Split(split.x[:count], split.y[:count])


def _parts(config: OyedotunConfig):
    dataset = _dataset(config)
    return (dataset, _head(dataset.train, config.train_images),
            _head(dataset.test, config.test_images))


def _flat(x: np.ndarray) -> np.ndarray:
    """Images in [0, 1] as float32 vectors (USPS uint8 / 255; COIL-20 block means / 255)."""
    return (np.asarray(x, np.float32) / np.float32(255)).reshape(len(x), -1)


def probe_indices(config: OyedotunConfig, n: int, count: int) -> np.ndarray:
    """The probe: ``count`` training images drawn by ``default_rng(seed)`` (all for 0)."""
    if not count or count >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(config.seed).choice(n, count, replace=False))


def split_parts(config: OyedotunConfig) -> dict[str, tuple[str, np.ndarray]]:
    """Each part's (file part, indices) as the job reads them (the runner checks them
    disjoint): USPS's standard split, COIL-20's seeded 70/30 (SPEC §4.3), CIFAR-10's
    official one; the quick heads keep the first images of a part."""
    from depthlab import data

    if config.dataset == "cifar10":
        parts = data.cifar_parts("official", config.train_images, 0, config.test_images)
        return {p: (f"cifar10:{source}", idx) for p, (source, idx) in parts.items() if len(idx)}
    if config.dataset == "coil20":
        train, test = data.coil20_indices()
        parts = {"train": ("coil20:all", train), "test": ("coil20:all", test)}
    else:
        parts = {"train": ("usps:train", np.arange(7291)), "test": ("usps:test", np.arange(2007))}
    heads = {"train": config.train_images, "test": config.test_images}
    return {p: (source, idx[:heads[p]] if heads[p] else idx)
            for p, (source, idx) in parts.items()}


def prepare(config: OyedotunConfig) -> None:
    """Fail before any run when the data or an image count does not fit."""
    from depthlab import data

    if config.task == "counts":
        return
    dataset = _dataset(config)
    for name, count, split in (("train_images", config.train_images, dataset.train),
                               ("test_images", config.test_images, dataset.test)):
        if count > len(split):
            raise configs.ConfigError(f"{name}={count}: {config.dataset} has {len(split)}")
    data.digest((config.dataset,))


# --- models (imports Keras) ----------------------------------------------------------------


def build_net(config: OyedotunConfig, num_inputs: int, num_classes: int):
    """The FC PlainNet of a config (SPEC §4.2), L2 on kernels when training."""
    from depthlab.layers.plainnet import build_plainnet

    variant, init = NETS[config.net]
    overrides = {"kernel_initializer": init} if init else {}
    return build_plainnet(config.depth, variant, num_inputs, num_classes, config.width,
                          weight_decay=config.weight_decay or None, seed=config.seed,
                          **overrides)


def trainable_count(model) -> int:
    """Trainable parameters (SPEC §0.9: BN moving statistics are not counted)."""
    return int(sum(math.prod(v.shape) for v in model.trainable_weights))


def _compile(model, config: OyedotunConfig, steps_per_epoch: int) -> None:
    import keras

    from depthlab.callbacks.gradient_capture import GradientCapture
    from depthlab.schedules import EpochDecades

    lr = EpochDecades(config.lr0, config.epochs, steps_per_epoch)
    sgd = keras.optimizers.SGD(lr, momentum=config.momentum, nesterov=False)
    model.compile(optimizer=GradientCapture(sgd),
                  loss=keras.losses.SparseCategoricalCrossentropy(),  # the model ends in softmax
                  metrics=["accuracy"])


def _kernel_label(variable) -> str | None:
    return variable.path if variable.path.endswith("/kernel") else None


# --- execution -----------------------------------------------------------------------------


def execute_counts(job: Job, ctx: Context) -> dict:
    """Q7 / §4.7 items 1 and 3: trainable counts from built models (nothing trained)."""
    import keras

    from depthlab.layers.plainnet import build_conv_plainnet, build_plainnet

    def count(depth: int, variant: str, n_in: int, n_out: int) -> int:
        model = build_plainnet(depth, variant, n_in, n_out)
        value = trainable_count(model)
        keras.backend.clear_session()
        return value

    conv = build_conv_plainnet()
    convs = [la for la in conv._flatten_layers(include_self=False)
             if isinstance(la, keras.layers.Conv2D)]
    shapes = [tuple(conv.get_layer(name).output.shape[1:3]) for name in
              ("block_17", "pool_1", "pool_2", "block_50")]
    return {
        "depths": np.array(TABLE1_DEPTHS),
        "coil20_bn": np.array([count(d, "bn", 1024, 20) for d in TABLE1_DEPTHS]),
        "coil20_no_bn": np.array([count(d, "naive", 1024, 20) for d in TABLE1_DEPTHS]),
        "coil20_bn_100": count(100, "bn", 1024, 20),
        "coil20_no_bn_100": count(100, "naive", 1024, 20),
        "usps_bn_100": count(100, "proposed", 256, 10),
        "usps_no_bn_100": count(100, "naive", 256, 10),
        "conv_trainable": trainable_count(conv),
        "conv_count_params": conv.count_params(),
        "conv_layers": len(convs),
        "conv_biases": sum(c.use_bias for c in convs),
        "conv_spatial": np.array(shapes),  # block 17, pool 1, pool 2, block 50
    }


def diagnose(model, modes: Mapping[str, tuple[np.ndarray, bool]], image_mode: str,
             image_samples: int) -> dict[str, np.ndarray]:
    """Per-layer statistics of the post-activation outputs h_1..h_D (SPEC §4.4, §4.7 item 11).

    Args:
        model: a built FC PlainNet.
        modes: array prefix -> (probe inputs, BN training mode); ``"inf_"`` on the training
            split in inference mode (the paper's figures, trained nets), ``"train_"`` on
            1,024 images as one batch in training mode (init, SPEC §4.5).
        image_mode: the prefix whose probe and mode give the activation images of layers
            50 and 99 (first ``image_samples`` samples; units x samples).
        image_samples: columns of the images.

    Returns:
        ``<prefix><stat>`` per layer for each mode, ``kappa_inf`` of blocks 2..D and
        ``image_l50`` / ``image_l99``.
    """
    from depthlab.callbacks import activation_stats, conditioning
    from depthlab.layers.plainnet import plainnet_activation_layers

    blocks = plainnet_activation_layers(model)
    probe = activation_stats.probe_model(model, blocks)
    out: dict[str, np.ndarray] = {}
    for prefix, (x, training) in modes.items():
        stats = activation_stats.measure(probe, x, training=training, kappa2=True)
        out.update({prefix + k: v for k, v in stats.items() if k != "layer"})
    kappas = conditioning.kernel_conditioning(model)
    out["kappa_inf"] = np.array(list(kappas.values()))  # blocks 2..D
    chosen = [blocks[i - 1] for i in IMAGE_LAYERS if i <= len(blocks)]
    if chosen:  # training mode: the whole batch sets BN's statistics, then the first columns
        x, training = modes[image_mode]
        source = x if training else x[:image_samples]
        images = activation_stats.activations(activation_stats.probe_model(model, chosen),
                                              source, training=training)
        for layer, h in zip(IMAGE_LAYERS, images, strict=False):
            out[f"image_l{layer}"] = h[:image_samples].T.astype(np.float32)  # units x samples
    return out


def _log_diagnostics(ctx: Context, arrays: Mapping[str, np.ndarray], title: str,
                     plot: bool = True) -> None:
    """Per-job artifacts: each mode's per-layer table (CSV) and, with ``plot``, its mean /
    max |h| plot (init-time jobs skip it: ~0.7 s each, and the table's Figs 2-8 show them)."""
    from depthlab import plots
    from depthlab.callbacks.activation_stats import statistics_csv

    for prefix, mode in (("inf_", "inference"), ("train_", "training")):
        stats = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if not stats:
            continue
        stats = {"layer": np.array([f"block_{i + 1}" for i in range(len(stats["mean_abs"]))]),
                 **stats}
        ctx.log_text(statistics_csv(stats), f"diagnostics/{mode}_mode.csv")
        if plot:
            ctx.log_figure(plots.activation_statistics(stats, f"{title}, BN {mode} mode"),
                           f"diagnostics/{mode}_mode.png")


def summary(arrays: Mapping[str, np.ndarray], prefix: str) -> dict[str, float]:
    """The scalars SPEC §4.5 thresholds read, from one mode's per-layer arrays."""
    mean = arrays[prefix + "mean_abs"]
    dead = arrays[prefix + "dead_units"]
    kappa2 = arrays[prefix + "kappa_2"]
    depth = len(mean)

    def at(values: np.ndarray, layer: int) -> float:
        return float(values[min(layer, depth) - 1])

    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "ratio_20_1": at(mean, 20) / mean[0], "ratio_100_1": at(mean, 100) / mean[0],
            "frac_above_0.05_l20": at(arrays[prefix + "frac_above_0.05"], 20),
            "frac_above_0.05_min": float(np.min(arrays[prefix + "frac_above_0.05"])),
            "max_abs_max": float(np.max(arrays[prefix + "max_abs"])),
            "max_abs_l1": float(arrays[prefix + "max_abs"][0]),
            "max_abs_last10": float(np.max(arrays[prefix + "max_abs"][-10:])),
            "max_abs_last": float(arrays[prefix + "max_abs"][-1]),
            "frac_zero_min": float(np.min(arrays[prefix + "frac_zero"])),
            "frac_zero_max": float(np.max(arrays[prefix + "frac_zero"])),
            "dead_l10": at(dead, 10), "dead_l50": at(dead, 50), "dead_l100": at(dead, 100),
            "kappa_2_min_10": float(np.min(kappa2[9:])) if depth >= 10 else float("nan"),
            "kappa_2_max": float(np.max(kappa2)),
            "kappa_inf_median": float(np.median(arrays["kappa_inf"]))
            if len(arrays["kappa_inf"]) else float("nan"),
        }


def _probes(config: OyedotunConfig, train) -> tuple[np.ndarray, np.ndarray]:
    x = _flat(train.x)
    probe = x[probe_indices(config, len(x), config.probe_images)]
    batch = x[probe_indices(config, len(x), PROBE_TRAINING_IMAGES)]
    return probe, batch


def execute_diagnostics(job: Job, ctx: Context) -> dict:
    """Figs 2-8 / A1 at init (SPEC §4.5): no training; BN in training mode is the primary
    series (in inference mode at init BN is the identity up to 1/sqrt(1 + eps))."""
    config = job.config
    dataset, train, _ = _parts(config)
    _, batch = _probes(config, train)
    model = build_net(config, batch.shape[1], dataset.num_classes)
    arrays = diagnose(model, {"train_": (batch, True)}, "train_", config.image_samples)
    _log_diagnostics(ctx, arrays, job.label, plot=False)
    return {**{f"train_mode_{k}": v for k, v in summary(arrays, "train_").items()}, **arrays}


def predictions(model, x: np.ndarray, classes: int) -> tuple[np.ndarray, float]:
    """Inference-mode predicted-class counts and the fraction of samples whose outputs are
    not finite (argmax reads NaN as class 0: a constant class-0 "predictor" may be that)."""
    probabilities = model.predict(x, batch_size=1024, verbose=0)
    finite = np.all(np.isfinite(probabilities), axis=1)
    counts = np.bincount(np.argmax(probabilities, axis=1), minlength=classes)
    return counts, float(1 - finite.mean())


def _predicted(model, sets: Mapping[str, np.ndarray], classes: int) -> dict:
    out = {}
    for name, x in sets.items():
        out[f"{name}_predictions"], out[f"{name}_nonfinite_outputs"] = predictions(
            model, x, classes)
    return out


def execute_train(job: Job, ctx: Context) -> dict:
    """Train one FC PlainNet with the recipe of SPEC §4.4, then diagnose it (inference
    mode on the training split, the paper's Figs 2-8) and read its predictions (Table II's
    constant predictors)."""
    from depthlab import augment
    from depthlab.callbacks.evaluation import EvaluateSets
    from depthlab.callbacks.gradient_logger import GradientLogger

    config = job.config
    dataset, train, test = _parts(config)
    batches = augment.ImageBatches(train.x, train.y, config.batch_size, shuffle=True,
                                   seed=config.seed, flatten=True,
                                   repeat=config.steps_per_epoch > 0)
    full_train = augment.ImageBatches(train.x, train.y, 1024, flatten=True)
    full_test = augment.ImageBatches(test.x, test.y, 1024, flatten=True)
    steps = config.steps_per_epoch or len(batches)
    model = build_net(config, int(np.prod(train.x.shape[1:])), dataset.num_classes)
    _compile(model, config, steps)
    callbacks = [EvaluateSets({"eval_train": full_train, "eval_test": full_test}),
                 GradientLogger(every_n_steps=steps, labels=_kernel_label)]
    monitor = None
    if config.check_max_norm:
        from depthlab.callbacks.constraints import MaxNormMonitor

        monitor = MaxNormMonitor()
        callbacks.insert(0, monitor)
    history = ctx.fit(model, batches, epochs=config.epochs, callbacks=callbacks,
                      steps_per_epoch=config.steps_per_epoch or None,
                      measurements=(EVAL_PREFIX,), max_loss=math.inf,
                      keep_model=config.depth == 100)  # 36 MB each: the nets Figs 2-8 study
    train_error = 100 * (1 - np.array(history["eval_train_accuracy"]))
    test_error = 100 * (1 - np.array(history["eval_test_accuracy"]))
    ctx.log_figure(curves_figure(train_error, test_error, history["loss"], job.label),
                   "curves.png")
    x_train, x_test = _flat(train.x), _flat(test.x)
    probe, batch = _probes(config, train)
    arrays = diagnose(model, {"inf_": (probe, False), "train_": (batch, True)}, "inf_",
                      config.image_samples)
    _log_diagnostics(ctx, arrays, f"{job.label}, trained")
    out = {
        "train_error": float(train_error[-1]), "test_error": float(test_error[-1]),
        "best_test_error": float(np.min(test_error)),
        "params": trainable_count(model),
        **{f"inf_mode_{k}": v for k, v in summary(arrays, "inf_").items()},
        "train_error_curve": train_error, "test_error_curve": test_error,
        **_predicted(model, {"train": x_train, "test": x_test}, dataset.num_classes),
        **arrays,
    }
    if monitor is not None:
        out["max_incoming_norm_steps"] = np.array(monitor.history)
        out["max_incoming_norm"] = max(monitor.history)
    return out


def execute_conv(job: Job, ctx: Context) -> dict:
    """Table III / Fig 10: the conv PlainNet on CIFAR-10 (SPEC §4.2-§4.4): per-channel
    standardisation with the training split's statistics, 4-px crop + flip."""
    from depthlab import augment
    from depthlab.callbacks.evaluation import EvaluateSets
    from depthlab.callbacks.gradient_logger import GradientLogger
    from depthlab.layers.plainnet import build_conv_plainnet

    config = job.config
    dataset, train, test = _parts(config)
    scaled = train.x.reshape(-1, 3).astype(np.float64) / 255
    mean, std = scaled.mean(0), scaled.std(0)
    kwargs = {"mean": tuple(mean), "std": tuple(std)}
    batches = augment.ImageBatches(train.x, train.y, config.batch_size, shuffle=True,
                                   augment=config.augment, seed=config.seed,
                                   repeat=config.steps_per_epoch > 0, **kwargs)
    full_train = augment.ImageBatches(train.x, train.y, 500, **kwargs)
    full_test = augment.ImageBatches(test.x, test.y, 500, **kwargs)
    steps = config.steps_per_epoch or len(batches)
    model = build_conv_plainnet(dataset.num_classes, weight_decay=config.weight_decay or None,
                                seed=config.seed)
    _compile(model, config, steps)
    history = ctx.fit(model, batches, epochs=config.epochs,
                      callbacks=[EvaluateSets({"eval_train": full_train,
                                               "eval_test": full_test}),
                                 GradientLogger(every_n_steps=steps, labels=_kernel_label)],
                      steps_per_epoch=config.steps_per_epoch or None,
                      measurements=(EVAL_PREFIX,), max_loss=math.inf)
    train_error = 100 * (1 - np.array(history["eval_train_accuracy"]))
    test_error = 100 * (1 - np.array(history["eval_test_accuracy"]))
    ctx.log_figure(curves_figure(train_error, test_error, history["loss"], job.label),
                   "curves.png")
    return {"train_error": float(train_error[-1]), "test_error": float(test_error[-1]),
            "best_test_error": float(np.min(test_error)), "params": trainable_count(model),
            "train_error_curve": train_error, "test_error_curve": test_error,
            "channel_mean": mean, "channel_std": std}


def execute(job: Job, ctx: Context) -> dict:
    runs = {"counts": execute_counts, "diagnostics": execute_diagnostics,
            "train": execute_train, "conv": execute_conv}
    return runs[job.config.task](job, ctx)


# --- reports -------------------------------------------------------------------------------


def report(table: str, config: OyedotunConfig, outcomes: list[Outcome],
           profile: str = "paper") -> list[Comparison]:
    paper = paper_numbers()
    if table == "1":
        return _report_counts(outcomes, paper)
    if table == "2":
        return _report_table2(outcomes, paper, profile)
    if table == "3":
        return _report_table3(outcomes, paper, profile)
    if table in ("fig1", "fig9"):
        return _report_depth(table, outcomes, profile)
    return _report_diagnostics(table, outcomes, paper, profile)


def _done(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status in ("finished", "skipped") and o.arrays]


def _report_counts(outcomes: list[Outcome], paper: dict) -> list[Comparison]:
    done = _done(outcomes)
    if not done:
        return []
    a, t1 = {**done[0].results, **done[0].arrays}, paper["table1"]
    rows = []
    for i, depth in enumerate(t1["depths"]):
        ours, spec = int(a["coil20_bn"][i]), t1["spec_bn"][i]
        notes = f"{ours:,} trainable (spec {spec:,}); without BN {int(a['coil20_no_bn'][i]):,}"
        if round(ours / 1e6, 2) != t1["paper_millions"][i]:
            notes += (f"; ⚑ paper {t1['paper_millions'][i]:.2f}M vs ours {ours / 1e6:.2f}M: "
                      "no natural count gives all seven columns (SPEC §4.2, §4.6), read as "
                      "the paper's rounding or typo")
        rows.append(Comparison("Table I (COIL-20 32x32, BN net)", f"params (M), depth {depth}",
                               t1["paper_millions"][i], ours / 1e6, notes))
    conv = paper["conv"]
    rows.append(Comparison("Table III proposed (conv PlainNet-50)", "params (M)",
                           conv["paper_millions"], int(a["conv_trainable"]) / 1e6,
                           f"{int(a['conv_trainable']):,} trainable; Keras count_params "
                           f"{int(a['conv_count_params']):,} (adds BN moving statistics); "
                           "Conv_49 = 96@3x3 (READING)"))
    c100 = paper["counts_100"]
    checks = [("COIL-20 BN counts, depths 3..50", list(a["coil20_bn"]), t1["spec_bn"]),
              ("COIL-20 no-BN counts, depths 3..50", list(a["coil20_no_bn"]), t1["spec_no_bn"]),
              ("COIL-20 D=100 BN / no BN", [a["coil20_bn_100"], a["coil20_no_bn_100"]],
               [c100["coil20_bn"], c100["coil20_no_bn"]]),
              ("USPS D=100 BN / no BN", [a["usps_bn_100"], a["usps_no_bn_100"]],
               [c100["usps_bn"], c100["usps_no_bn"]]),
              ("conv trainable / count_params", [a["conv_trainable"], a["conv_count_params"]],
               [conv["trainable"], conv["count_params"]])]
    for name, ours, want in checks:
        ours = [int(v) for v in ours]
        rows.append(claim(f"{name} = {', '.join(f'{w:,}' for w in want)}", None, ours == want,
                          "exact", f"ours {', '.join(f'{v:,}' for v in ours)}; SPEC §4.2, Q7"))
    spatial = [tuple(int(v) for v in s) for s in a["conv_spatial"]]
    rows.append(claim("conv: 50 Conv2D layers without bias; 32x32 -> 16x16 -> 7x7 -> GAP",
                      None, int(a["conv_layers"]) == 50 and int(a["conv_biases"]) == 0
                      and spatial == [(32, 32), (16, 16), (7, 7), (7, 7)], "SPEC §4.7 item 3",
                      f"{int(a['conv_layers'])} convs, {int(a['conv_biases'])} with bias, "
                      f"spatial sizes {spatial}"))
    return rows


def constant_class(counts: np.ndarray) -> int | None:
    """The class a net predicts for every sample, or None when it predicts several."""
    counts = np.asarray(counts)
    nonzero = np.flatnonzero(counts)
    return int(nonzero[0]) if len(nonzero) == 1 else None


def _predictor_text(results: Mapping[str, float], arrays: Mapping[str, np.ndarray]) -> str:
    if "train_predictions" not in arrays:
        return ""
    k = constant_class(arrays["train_predictions"])
    text = (f"ours: constant predictor, class {k}" if k is not None else
            f"ours: predicts {np.count_nonzero(arrays['train_predictions'])} classes")
    bad = results.get("train_nonfinite_outputs", 0.0)
    if bad:
        text += (f" (outputs not finite on {100 * bad:.1f}% of the training images in "
                 "inference mode; argmax reads them as class 0)")
    return text


def _report_table2(outcomes: list[Outcome], paper: dict, profile: str) -> list[Comparison]:
    ref = paper["table2"]["rows"]
    accept = paper["table2"]["accept"]
    rows, claims = [], []
    quick = profile == "quick"
    for o in outcomes:
        config = o.job.config
        entry = ref[config.net]
        column = "" if config.lr0 == TABLE2_LRS[0] else f", lr0 {config.lr0:g}"
        paper_values = (entry["train"], entry["test"]) if not column else (None, None)
        if o.status not in ("finished", "skipped"):
            rows.append(Comparison(entry["label"] + column, "train err (%)", paper_values[0],
                                   None, f"{o.status}: {o.message}"))
            if config.net != "proposed" and not quick:
                claims.append(claim(f"{entry['label']}{column} fails to train (train err "
                                    "≥ 50%)", None, o.status == "diverged", "≥ 50",
                                    f"ours {o.status}: counted as failed (deviation: the "
                                    "paper's net trained to a finite error)"))
            continue
        r, a = o.results, o.arrays
        notes = f"paper: {entry['reading']}; {_predictor_text(r, a)}"
        if quick:
            notes += f"; quick: {QUICK_TABLE2_STEPS} steps, not comparable"
        rows.append(Comparison(entry["label"] + column, "train err (%)", paper_values[0],
                               r.get("train_error"), notes))
        rows.append(Comparison(entry["label"] + column, "test err (%)", paper_values[1],
                               r.get("test_error"), ""))
        if quick:
            continue
        if config.net == "proposed" and not column:
            claims.append(claim("Proposed trains: train err ≤ 1%", r["train_error"],
                                r["train_error"] <= accept["proposed_train_max"], "≤ 1",
                                "SPEC §4.7 item 12 (paper 0.11%)"))
            claims.append(claim("Proposed generalises: test err ≤ 7%", r["test_error"],
                                r["test_error"] <= accept["proposed_test_max"], "≤ 7",
                                "SPEC §4.7 item 12 (paper 5.48%)"))
        elif config.net != "proposed":
            failed = r["train_error"] >= accept["ablation_failed_min"]
            claims.append(claim(f"{entry['label']}{column} fails to train (train err ≥ 50%)",
                                r["train_error"], failed, "≥ 50",
                                "SPEC §4.6" + ("" if failed else "; DEVIATION: this ablation "
                                               "trains here")))
    if quick:
        claims += _q8_claims(outcomes)
    return rows + claims


def _q8_claims(outcomes: list[Outcome]) -> list[Comparison]:
    """SPEC §4.5 Q8: proposed, USPS, D=100, 10 steps at lr 0.1."""
    got = [o for o in outcomes if o.job.config.net == "proposed" and o.job.config.check_max_norm]
    if not got:
        return []
    o = got[0]
    if o.status not in ("finished", "skipped"):
        return [claim("Q8: proposed, 10 steps at lr 0.1: finite loss", None, False, "finite",
                      f"{o.status}: {o.message}")]
    norms = o.arrays.get("max_incoming_norm_steps", np.array([np.inf]))
    loss_finite = o.results.get("weights_finite", 0.0) == 1.0 and math.isfinite(
        o.results.get("train_error", math.nan))
    return [claim("Q8: 10 steps at lr 0.1 finish with finite loss and weights", None,
                  loss_finite, "finite", "SPEC §4.5 Q8"),
            claim("Q8: every hidden unit's incoming norm ≤ 3 (1 + 1e-5) after every step",
                  float(np.max(norms)), len(norms) == QUICK_TABLE2_STEPS
                  and float(np.max(norms)) <= 3 * (1 + 1e-5), "≤ 3.00003",
                  f"max over {len(norms)} steps; SPEC §4.5 Q8, §4.7 item 4", digits=6)]


def _report_table3(outcomes: list[Outcome], paper: dict, profile: str) -> list[Comparison]:
    ref = paper["table3"]
    rows = [Comparison(f"{name} ({skip} skip, {layers} layers, {params})", "test err (%)",
                       err, None, "literature value, printed as reference; not re-run")
            for name, skip, layers, params, err in ref["rows"]]
    for o in outcomes:
        if o.status not in ("finished", "skipped"):
            rows.append(Comparison("Proposed PlainNet (50 layers, 0.72M)", "test err (%)",
                                   ref["proposed"]["test_err"], None, f"{o.status}: {o.message}"))
            continue
        r = o.results
        quick = profile == "quick"
        config = o.job.config
        notes = (f"{config.epochs} epoch(s) of {config.steps_per_epoch} steps on "
                 f"{config.train_images} images: a smoke run, not comparable" if quick else
                 f"last epoch; best epoch {r['best_test_error']:.2f}%; CIFAR-10 offline "
                 "copy has JPEG-lossy pixels")
        rows.append(Comparison(f"Proposed PlainNet (50 layers, {r['params'] / 1e6:.2f}M)",
                               "test err (%)", ref["proposed"]["test_err"], r["test_error"],
                               notes))
        rows.append(Comparison("Proposed PlainNet", "train err (%)", None, r["train_error"], ""))
        if not quick:
            rows.append(claim("conv PlainNet test err ≤ 8%", r["test_error"],
                              r["test_error"] <= ref["accept_test_err_max"], "≤ 8",
                              "SPEC §4.7 item 13 (paper 6.65%)"))
        else:
            rows.append(claim("conv PlainNet trains without diverging", r["train_error"],
                              o.results.get("weights_finite") == 1.0, "finite", "smoke"))
    return rows


def depth_errors(outcomes: list[Outcome]) -> dict[tuple[str, str], dict[int, tuple]]:
    """(dataset, net) -> depth -> (train err, test err); NaN for a failed run."""
    out: dict[tuple[str, str], dict[int, tuple]] = {}
    for o in outcomes:
        c = o.job.config
        values = (o.results.get("train_error", math.nan), o.results.get("test_error", math.nan))
        out.setdefault((c.dataset, c.net), {})[c.depth] = values
    return out


def _report_depth(table: str, outcomes: list[Outcome], profile: str) -> list[Comparison]:
    rows = []
    for o in outcomes:
        r = o.results
        note = "" if o.status in ("finished", "skipped") else f"{o.status}: {o.message}"
        rows.append(Comparison(o.job.label, "train / test err (%)", None, r.get("train_error"),
                               note or f"test {r.get('test_error', math.nan):.2f}%; "
                               "the paper plots, prints no number"))
    errors = depth_errors(outcomes)
    tag = "quick: few epochs, indicative" if profile == "quick" else "paper figure"
    for dataset in DATASETS:
        naive, bn = errors.get((dataset, "glorot")), errors.get((dataset, "bn"))
        if table == "fig1" and naive and len(naive) > 1:
            lo, hi = min(naive), max(naive)
            rows.append(claim(f"{dataset}: naive train error grows with depth "
                              f"({lo} -> {hi} layers)", naive[hi][0],
                              naive[hi][0] > naive[lo][0], f"> {naive[lo][0]:.2f}",
                              f"Fig 1; {tag}"))
            if bn and hi in bn:
                rows.append(claim(f"{dataset}: BN lowers the deepest net's train error",
                                  bn[hi][0], bn[hi][0] < naive[hi][0],
                                  f"< {naive[hi][0]:.2f}", f"Fig 1; {tag}"))
        if table == "fig9":
            deepest = {n: errors.get((dataset, n), {}) for n in FIG9_NETS}
            top = max((max(d) for d in deepest.values() if d), default=None)
            if top is None:
                continue
            proposed = deepest["proposed"].get(top, (math.nan,))[0]
            rows.append(claim(f"{dataset}, D={top}: Proposed trains (train err < 20%)",
                              proposed, proposed < 20, "< 20", f"Fig 9; {tag}"))
            for net in FIG9_NETS[:-1]:
                err = deepest[net].get(top, (math.nan,))[0]
                rows.append(claim(f"{dataset}, D={top}: {NET_LABELS[net]} below 80% train "
                                  "accuracy", err, not err < 20, "≥ 20", f"Fig 9; {tag}"))
    return rows


def _stat_range(values: Sequence[float]) -> tuple[float, float]:
    return (min(values), max(values)) if values else (math.nan, math.nan)


def _spec_text(ref: Mapping[str, Sequence[float]], key: str) -> str | None:
    if key not in ref:
        return None
    lo, hi = ref[key]
    return f"{lo:.3g}–{hi:.3g}"


QUICK_ROWS = (("ratio_20_1", "mean|h_20| / mean|h_1|"),
              ("ratio_100_1", "mean|h_100| / mean|h_1|"),
              ("frac_above_0.05_min", "min over layers of fraction |h| > 0.05"),
              ("max_abs_max", "max |h| over layers"),
              ("dead_l10", "dead units, layer 10"), ("dead_l50", "dead units, layer 50"),
              ("dead_l100", "dead units, layer 100"),
              ("kappa_2_min_10", "min kappa_2(H_l), l ≥ 10"),
              ("kappa_inf_median", "median kappa_inf(W_l)"))


def _report_diagnostics(table: str, outcomes: list[Outcome], paper: dict,
                        profile: str) -> list[Comparison]:
    done = [o for o in outcomes if o.status in ("finished", "skipped") and o.arrays]
    quick = profile == "quick"
    prefix = "train_" if quick else "inf_"
    mode = "BN training mode, init" if quick else "BN inference mode, trained"
    rows = []
    by_net: dict[tuple[str, str], list[Outcome]] = {}
    for o in done:
        by_net.setdefault((o.job.config.dataset, o.job.config.net), []).append(o)
    ranges = paper["quick_ranges"]
    for (dataset, net), got in by_net.items():
        ref = ranges.get("naive" if net == "glorot" else net, {}) if (
            quick and dataset == "usps") else {}
        stats = [summary(o.arrays, prefix) for o in got]
        seeds = ", ".join(str(o.job.config.seed) for o in got)
        for key, name in QUICK_ROWS:
            lo, hi = _stat_range([s[key] for s in stats if not math.isnan(s[key])])
            if math.isnan(lo):
                continue
            shown = f"{lo:.3g}" if lo == hi else f"{lo:.3g}–{hi:.3g}"
            rows.append(Comparison(f"{NET_LABELS[net]}, {dataset.upper()}", name, None, hi,
                                   f"ours {shown} (seeds {seeds}; {mode}); ours = the largest",
                                   paper_text=_spec_text(ref, key) or "—", digits=3))
    for o in outcomes:
        if o.status not in ("finished", "skipped"):
            rows.append(Comparison(o.job.label, "diagnostics", None, None,
                                   f"{o.status}: {o.message}"))
    return rows + (quick_claims(done, table) if quick else _trained_claims(done))


def quick_claims(done: list[Outcome], table: str = "fig2-8") -> list[Comparison]:
    """Q1-Q6 of SPEC §4.5 on the USPS init-time jobs, every seed (training-mode BN)."""
    usps: dict[str, list[Outcome]] = {}
    for o in done:
        if o.job.config.dataset == "usps" and o.job.config.task == "diagnostics":
            usps.setdefault(o.job.config.net, []).append(o)
    rows: list[Comparison] = []

    def each(net: str, test, statement: str, expected: str, source: str, value=None):
        got = usps.get(net, [])
        if not got:
            return
        holds = [test(o.arrays) for o in got]
        shown = None if value is None else max(value(o.arrays) for o in got)
        seeds = ",".join(str(o.job.config.seed) for o in got)
        rows.append(claim(f"{statement} (seeds {seeds})", shown, all(holds), expected,
                          source))

    def ratio(a, layer):
        m = a["train_mean_abs"]
        return m[layer - 1] / m[0]

    relu = [n for n in ("glorot", "relu_he", "bn") if n in usps]
    lrelu = [n for n in ("lrelu_only", "proposed") if n in usps]
    if table == "fig2-8":
        each("glorot", lambda a: ratio(a, 20) < 1e-2, "Q1 naive: mean|h_20| / mean|h_1| < 1e-2",
             "< 0.01", "SPEC §4.5 Q1", lambda a: ratio(a, 20))
        each("glorot", lambda a: ratio(a, 100) < 1e-10,
             "Q1 naive: mean|h_100| / mean|h_1| < 1e-10", "< 1e-10", "SPEC §4.5 Q1",
             lambda a: ratio(a, 100))
        each("glorot", lambda a: a["train_frac_above_0.05"][19] < 0.01,
             "Q1 naive: fraction |h_20| > 0.05 below 1%", "< 0.01", "SPEC §4.5 Q1",
             lambda a: a["train_frac_above_0.05"][19])
    for net in relu:
        each(net, lambda a: bool(np.all((a["train_frac_zero"] >= 0.35)
                                        & (a["train_frac_zero"] <= 0.65))),
             f"Q2 {NET_LABELS[net]}: exact zeros in [0.35, 0.65] at every layer",
             "[0.35, 0.65]", "SPEC §4.5 Q2; paper: 'roughly 50%'",
             lambda a: float(np.max(np.abs(a["train_frac_zero"] - 0.5))) + 0.5)
    for net in lrelu:  # BN's output is exactly 0 where x equals the batch mean in float32
        each(net, lambda a: bool(np.all(a["train_frac_zero"] < LRELU_ZEROS)),
             f"Q2 {NET_LABELS[net]}: no exact zeros at any layer (below {LRELU_ZEROS:g}: "
             "a float32 coincidence x == batch mean may zero one entry)", f"< {LRELU_ZEROS:g}",
             "SPEC §4.5 Q2 (spec: 0)", lambda a: float(np.max(a["train_frac_zero"])))
    if table == "a1":
        return rows
    each("glorot", lambda a: a["train_dead_units"][9] >= 20 and a["train_dead_units"][49] >= 60,
         "Q3 naive: ≥ 20 dead units at layer 10 and ≥ 60 at layer 50", "≥ 20, ≥ 60",
         "SPEC §4.5 Q3", lambda a: float(a["train_dead_units"][49]))
    each("glorot", lambda a: bool(np.all(a["train_kappa_2"][9:] > 1e12)),
         "Q3 naive: kappa_2(H_l) > 1e12 (or inf) for l ≥ 10", "> 1e12", "SPEC §4.5 Q3",
         lambda a: float(np.min(a["train_kappa_2"][9:])))
    each("proposed", lambda a: int(np.sum(a["train_dead_units"])) == 0
         and bool(np.all(a["train_kappa_2"] < 1e3)),
         "Q3 proposed: no dead unit and kappa_2(H_l) < 1e3 at every layer", "< 1000",
         "SPEC §4.5 Q3", lambda a: float(np.max(a["train_kappa_2"])))
    each("proposed", lambda a: 0.5 <= ratio(a, 100) <= 2,
         "Q4 proposed: mean|h_100| / mean|h_1| in [0.5, 2]", "[0.5, 2]", "SPEC §4.5 Q4",
         lambda a: ratio(a, 100))
    each("proposed", lambda a: bool(np.all(a["train_frac_above_0.05"] >= 0.8)),
         "Q4 proposed: fraction |h| > 0.05 ≥ 80% at every layer", "≥ 0.8", "SPEC §4.5 Q4",
         lambda a: float(np.min(a["train_frac_above_0.05"])))
    each("proposed", lambda a: bool(np.all(a["train_max_abs"] < 50)),
         "Q4 proposed: max |h| < 50 at every layer", "< 50", "SPEC §4.5 Q4",
         lambda a: float(np.max(a["train_max_abs"])))
    each("lrelu_only", lambda a: ratio(a, 100) > 10 and a["train_max_abs"][99] > 50,
         "Q5 LReLU without BN: mean|h_100| / mean|h_1| > 10 and max|h_100| > 50", "> 10, > 50",
         "SPEC §4.5 Q5: (1 + 0.3^2)^100 growth of E h^2", lambda a: ratio(a, 100))
    each("bn", lambda a: np.max(a["train_max_abs"][90:100]) > 2 * a["train_max_abs"][0],
         "Q6 BN: max|h| over layers 91-100 > 2 x max|h_1|", "> 2 x layer 1", "SPEC §4.5 Q6",
         lambda a: float(np.max(a["train_max_abs"][90:100]) / a["train_max_abs"][0]))
    return rows


def _trained_claims(done: list[Outcome]) -> list[Comparison]:
    """The paper's readings of Figs 2-5 on the trained nets (inference-mode BN)."""
    rows = []
    for o in done:
        c, a = o.job.config, o.arrays
        if "inf_mean_abs" not in a:
            continue
        normalised = a["inf_normalised_mean_abs"]
        name = f"{NET_LABELS[c.net]}, {c.dataset.upper()}"
        if c.net in ("glorot", "bn"):
            rows.append(claim(f"{name}: normalised mean |h| decayed by layer ~20 (< 0.1)",
                              float(normalised[19]), normalised[19] < 0.1, "< 0.1",
                              "Figs 2-3 (a), (b)"))
        else:
            low = float(np.min(normalised[:99]))
            rows.append(claim(f"{name}: normalised mean |h| flat to layer 99 (min > 0.1)",
                              low, low > 0.1, "> 0.1", "Figs 2-3 (c)"))
        if c.net == "bn":
            top = float(np.max(a["inf_max_abs"]))
            rows.append(claim(f"{name}: max |h| reaches ~1e6 (> 1e4)", top, top > 1e4, "> 1e4",
                              "Fig 4 (a trained-net, inference-mode effect, SPEC §4.6)"))
    return rows


# --- figures -------------------------------------------------------------------------------


def figures(table: str, config: OyedotunConfig, outcomes: list[Outcome],
            profile: str) -> dict:
    from depthlab import plots

    done = [o for o in outcomes if o.status in ("finished", "skipped") and o.arrays]
    if table in ("fig1", "fig9"):
        return _depth_figures(table, done, profile, plots)
    if table == "3":
        return _curve_figures(done, plots)
    if table in ("fig2-8", "a1"):
        return _diagnostic_figures(table, done, profile, plots)
    if table == "2" and done:
        lines = ["row,lr0,status,train_error,test_error,constant_class,predicted_counts"]
        for o in outcomes:
            a = o.arrays
            k = constant_class(a["train_predictions"]) if "train_predictions" in a else None
            counts = " ".join(str(int(v)) for v in a.get("train_predictions", []))
            lines.append(f"{o.job.key},{o.job.config.lr0:g},{o.status},"
                         f"{o.results.get('train_error', '')},{o.results.get('test_error', '')},"
                         f"{'' if k is None else k},{counts}")
        return {"table2_predictions.csv": "\n".join(lines) + "\n"}
    return {}


def _depth_figures(table: str, done: list[Outcome], profile: str, plots) -> dict:
    errors = depth_errors(done)
    nets = FIG1_NETS if table == "fig1" else FIG9_NETS
    panels = {}
    for dataset in DATASETS:
        for column, part in ((0, "train"), (1, "test")):
            series = {}
            for net in nets:
                got = errors.get((dataset, net), {})
                if got:
                    depths = sorted(got)
                    series[NET_LABELS[net]] = (depths, [got[d][column] for d in depths])
            if series:
                panels[f"{dataset.upper()}: {part} error (%)"] = series
    if not panels:
        return {}
    epochs = done[0].job.config.epochs
    figure = plots.line_panels(panels, "depth (hidden layers)", "error (%)",
                               f"{table}: FC PlainNets, width 300, {epochs} epochs ({profile})")
    lines = ["dataset,net,depth,train_error,test_error"]
    for (dataset, net), got in sorted(errors.items()):
        lines += [f"{dataset},{net},{d},{tr:.4f},{te:.4f}" for d, (tr, te) in sorted(got.items())]
    return {table: figure, f"{table}_errors.csv": "\n".join(lines) + "\n"}


def curves_figure(train_error: Sequence[float], test_error: Sequence[float],
                  loss: Sequence[float] | None, title: str):
    """Errors in inference mode on the whole sets per epoch (the paper's curves), and the
    epoch's mean training loss (batch statistics) when given."""
    from depthlab import plots

    epochs = np.arange(1, len(train_error) + 1)
    panels = {"error (%), inference mode, whole sets": {"train": (epochs, train_error),
                                                        "test": (epochs, test_error)}}
    if loss is not None:
        panels["training loss (epoch mean)"] = {"loss": (epochs, loss)}
    return plots.line_panels(panels, "epoch", "", title, styles={"test": "--"})


def _curve_figures(done: list[Outcome], plots) -> dict:
    if not done:
        return {}
    a = done[0].arrays
    figure = curves_figure(a["train_error_curve"], a["test_error_curve"], None,
                           f"fig10: {done[0].job.label}")
    lines = ["epoch,train_error,test_error"] + [
        f"{e + 1},{tr:.4f},{te:.4f}" for e, (tr, te) in
        enumerate(zip(a["train_error_curve"], a["test_error_curve"], strict=True))]
    return {"fig10": figure, "fig10_curves.csv": "\n".join(lines) + "\n"}


STAT_COLUMNS = ("mean_abs", "normalised_mean_abs", "max_abs", "frac_above_0",
                "frac_above_0.05", "frac_above_0.5", "frac_above_5", "frac_above_50",
                "frac_zero", "dead_units", "kappa_2")


def _diagnostic_figures(table: str, done: list[Outcome], profile: str, plots) -> dict:
    """Figs 2-8 / A1 from the jobs' arrays; seed 0 in the figures, every seed in the CSV."""
    mode, prefix = (("BN training mode, at init", "train_") if profile == "quick"
                    else ("BN inference mode, trained", "inf_"))
    first = {(o.job.config.dataset, o.job.config.net): o.arrays for o in done
             if o.job.config.seed == 0}
    out: dict = {}
    layers = np.arange(1, 101)

    def series(dataset: str, key: str, nets=PANEL_NETS) -> dict:
        return {NET_LABELS[n]: (np.arange(1, len(first[(dataset, n)][prefix + key]) + 1),
                                first[(dataset, n)][prefix + key])
                for n in nets if (dataset, n) in first}

    datasets = [d for d in DATASETS if any((d, n) in first for n in PANEL_NETS)]
    if table == "fig2-8":
        for fig, dataset in (("fig2", "coil20"), ("fig3", "usps")):
            panels = {name: {"normalised mean |h|": xy}
                      for name, xy in series(dataset, "normalised_mean_abs").items()}
            if panels:
                out[fig] = plots.line_panels(panels, "layer", "mean |h| / max over layers",
                                             f"{fig}: {dataset.upper()}, D=100, {mode}")
        every = tuple(n for n in QUICK_NETS if any((d, n) in first for d in datasets))
        out["fig4"] = plots.line_panels(
            {d.upper(): series(d, "max_abs", every) for d in datasets}, "layer", "max |h|",
            f"fig4: max |h| per layer, {mode}", log_y=True)
        kappas = {d.upper(): {NET_LABELS[n]: (np.arange(2, len(first[(d, n)]["kappa_inf"]) + 2),
                                              first[(d, n)]["kappa_inf"])
                              for n in every if (d, n) in first} for d in datasets}
        out["fig5"] = plots.line_panels(kappas, "layer", "kappa_inf(W_l)",
                                        "fig5: kappa_inf of each 300x300 kernel "
                                        f"({'init' if profile == 'quick' else 'trained'})",
                                        log_y=True)
        out["kappa2"] = plots.line_panels(
            {d.upper(): series(d, "kappa_2", every) for d in datasets}, "layer",
            "kappa_2(H_l) (inf not drawn)", f"kappa_2 of each layer's activations, {mode}",
            log_y=True)
        for fig, dataset, layer in (("fig6", "coil20", 50), ("fig7", "coil20", 99),
                                    ("fig8", "usps", 99)):
            images = {NET_LABELS[n]: first[(dataset, n)][f"image_l{layer}"] for n in PANEL_NETS
                      if (dataset, n) in first and f"image_l{layer}" in first[(dataset, n)]}
            if images:
                out[fig] = plots.activation_images(
                    images, f"{fig}: layer {layer} activations, {dataset.upper()} training "
                    f"samples, {mode}")
    if "usps" in datasets:
        panels = {}
        for n in PANEL_NETS:
            a = first.get(("usps", n))
            if a is None:
                continue
            lines = {f"|h| > {t}": (layers[:len(a[prefix + 'mean_abs'])],
                                    100 * a[f"{prefix}frac_above_{t}"])
                     for t in ("0", "0.05", "0.5", "5", "50")}
            lines["h == 0"] = (layers[:len(a[prefix + "mean_abs"])], 100 * a[prefix + "frac_zero"])
            panels[NET_LABELS[n]] = lines
        out["a1"] = plots.line_panels(panels, "layer", "% of activations",
                                      f"A1: USPS, D=100, {mode}",
                                      styles={"h == 0": "k--"})
    out["layer_stats.csv"] = _layer_csv(done, prefix)
    return out


def _layer_csv(done: list[Outcome], prefix: str) -> str:
    lines = ["job,dataset,net,seed,layer," + ",".join(STAT_COLUMNS) + ",kappa_inf"]
    for o in done:
        a, c = o.arrays, o.job.config
        if prefix + "mean_abs" not in a:
            continue
        for i in range(len(a[prefix + "mean_abs"])):
            values = ",".join(f"{float(a[prefix + k][i]):.6g}" for k in STAT_COLUMNS)
            kappa = f"{a['kappa_inf'][i - 1]:.6g}" if 1 <= i <= len(a["kappa_inf"]) else ""
            lines.append(f"{o.job.key},{c.dataset},{c.net},{c.seed},{i + 1},{values},{kappa}")
    return "\n".join(lines) + "\n"


def tags(config: OyedotunConfig) -> dict[str, str]:
    from depthlab import data

    if config.task == "counts":
        return {"dataset": "none (built models)", "data_copy": "exact"}
    return {"dataset": config.dataset,
            "data_copy": "lossy" if data.is_lossy(config.dataset) else "exact"}


def datasets(config: OyedotunConfig) -> tuple[str, ...]:
    return () if config.task == "counts" else (config.dataset,)


STUDY = Study(
    name="oyedotun",
    profiles=PROFILES,
    tables=TABLES,
    execute=execute,
    report=report,
    rows={t: all_rows(t) for t in TABLES},
    tags=tags,
    prepare=prepare,
    label=label,
    fixed={t: ("task", "dataset", "net", "depth") + (("lr0",) if t == "2" else ())
           for t in TABLES},
    figures=figures,
    datasets=datasets,
    splits=split_parts,
)


def main(argv: Sequence[str] | None = None) -> int:
    from depthlab.cli import main as cli_main

    return cli_main(argv, study="oyedotun")


if __name__ == "__main__":
    raise SystemExit(main())
