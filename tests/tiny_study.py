"""A study small enough to run, crash, kill and race in seconds: a two-layer net on real
MNIST, through the real runner, CLI and MLflow store.

``python tests/tiny_study.py --table t --rows a,b [--set ...]`` runs it like any study.
Kept outside the package: it exists for the tests of the shared machinery.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import keras
import numpy as np
from keras import ops

from depthlab import augment, data
from depthlab.config import check
from depthlab.report import Comparison
from depthlab.reproductions import runner


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    epochs: int = 3
    images: int = 256
    lr: float = 0.05
    poison: str = "none"  # "nan": a NaN pixel; "masked": the same, hidden by NanToZero
    capture: bool = False  # compile with GradientCapture (its non-finite step counter)
    max_loss: float = 0.0  # divergence bound on the loss; 0: the runner's default
    best: bool = False  # keep the best epoch's weights (monitor: accuracy)
    seed: int = 0
    backup_every_s: float = 0.0  # back up every epoch (the runner's default is 60 s)
    sleep_s: float = 0.0  # per epoch, to give concurrency and kill tests time to act
    precision: str = ""  # a Keras dtype policy for the job, e.g. "mixed_bfloat16"
    oom: bool = False  # ask for more host memory than exists, after training
    fits: int = 1  # successive fits of the same model in one job (each resumable)

    def __post_init__(self) -> None:
        check(self, positive=("epochs", "images", "lr"),
              non_negative=("max_loss", "backup_every_s", "sleep_s"))


# An interrupted job: raise at the end of this epoch (0-based; ``epochs``: after ``fit``).
# Kept out of the config so the resumed job has the same identity as the crashed one.
CRASH_AT = {"epoch": int(os.environ.get("TINY_CRASH_AT", "-1"))}


class Crash(RuntimeError):
    pass


class CrashAt(keras.callbacks.Callback):
    def __init__(self, epoch: int, sleep_s: float):
        super().__init__()
        self.epoch, self.sleep_s = epoch, sleep_s

    def on_epoch_end(self, epoch, logs=None):
        if self.sleep_s:
            import time

            time.sleep(self.sleep_s)
        if epoch == self.epoch:
            raise Crash(f"simulated crash at epoch {epoch}")


@keras.saving.register_keras_serializable(package="tiny")
class NanToZero(keras.layers.Layer):
    """Maps NaN to 0, as TensorFlow's oneDNN ReLU does on some CPUs: on every backend and
    CPU, NaN weights then give a finite, chance-level loss."""

    def call(self, x):
        return ops.where(ops.isnan(x), ops.zeros_like(x), x)


def build(config: TinyConfig) -> keras.Model:
    from depthlab.callbacks import GradientCapture

    layers = [keras.Input((28, 28)), keras.layers.Flatten(),
              keras.layers.Dense(32, activation="relu")]
    if config.poison == "masked":
        layers.append(NanToZero())
    model = keras.Sequential([*layers, keras.layers.Dense(10)])
    optimizer = keras.optimizers.SGD(config.lr)
    model.compile(GradientCapture(optimizer) if config.capture else optimizer,
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def execute(job: runner.Job, ctx: runner.Context) -> dict[str, float]:
    from depthlab.callbacks import GradientLogger, StepLoss

    config = job.config
    mnist = data.mnist()
    x = mnist.train.x[: config.images].astype("float32")
    if config.poison != "none":
        x[0, 0, 0] = np.nan
    y = mnist.train.y[: config.images]
    model = build(config)
    train = augment.ImageBatches(x, y, batch_size=64, shuffle=True, seed=config.seed)
    for fit in range(1, config.fits + 1):  # a crash is simulated in the last fit
        crash = CRASH_AT["epoch"] if fit == config.fits else -1
        steps = StepLoss(window=3)
        callbacks = [CrashAt(crash, config.sleep_s), steps]
        if config.capture:
            callbacks.append(GradientLogger(every_n_steps=2))
        history = ctx.fit(model, train, epochs=config.epochs, callbacks=callbacks,
                          backup_every_s=config.backup_every_s,
                          best_monitor="accuracy" if config.best else None,
                          max_loss=config.max_loss or None)
    if CRASH_AT["epoch"] == config.epochs:
        raise Crash("simulated crash after fit")
    if config.oom:
        np.ones(1 << 50, dtype=np.uint8)  # 1 PiB: numpy raises MemoryError
    ctx.log_text("hello", "notes/hello.txt")
    results = {"final_loss": history["loss"][-1], "epochs_logged": len(history["loss"]),
               "steps": steps.steps, "last3_loss": steps.last_mean(3),
               "bf16": float(model.layers[-1].compute_dtype == "bfloat16"),
               "first_layer_weights": model.layers[-1].get_weights()[0]}
    if config.best:
        results["best_loaded"] = float(ctx.load_best(model))
    return results


def report(table, config, outcomes, profile):
    return [Comparison(o.job.label, "loss", None, o.results.get("final_loss")) for o in outcomes]


def jobs(config, rows, profile):
    return [runner.Job(key, key, config) for key in rows or ["a"]]


STUDY = runner.Study(name="tiny", profiles={"quick": TinyConfig()}, tables={"t": jobs},
                     execute=execute, report=report, rows={"t": ["a", "b", "c"]},
                     tags=lambda config: {"dataset": "mnist"},
                     datasets=lambda config: ("mnist",))


if __name__ == "__main__":
    from depthlab import cli

    sys.exit(cli.main(study=STUDY))
