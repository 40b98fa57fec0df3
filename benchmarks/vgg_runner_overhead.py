"""Step time of the VGG study through the runner (GradientCapture + GradientLogger,
StepLoss, EpochLogger, DivergenceGuard, Backup, best checkpoint, MLflow) vs a bare ``model.fit``
of the same model, data and batch, measured side by side in one process (issue 11,
target ≤ 1.05).

Three arms per round, same seed (so the same weights) within a round: ``bare``, ``bare
again`` (the A/A arm: the same bare fit a second time, which shows the machine's own noise)
and ``runner`` (``runner.run`` of the Table 1 row, a fresh MLflow job each round). All
train the quick profile's data (offline CIFAR-10, batch 32, no augmentation) with a
validation pass per epoch; an epoch's time runs from its start to its end, validation
and the runner's per-epoch logging included. The first epoch of every fit (compilation)
is dropped. The arms rotate their order each round so drifting load hits them alike.

Printed: median ms/step per arm and the ratios to ``bare`` with a 90 % bootstrap interval
(resampling each arm's epochs). On a shared CPU the A/A interval is the yardstick: a
runner interval that overlaps it shows no cost this machine can resolve.

    python benchmarks/vgg_runner_overhead.py --backend torch --row vgg38 --steps 20 --rounds 4
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import statistics
import sys
import tempfile
import time

ARMS = ("bare", "bare again", "runner")


def ratio_interval(
    arm: list[float], base: list[float], draws: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """90 % bootstrap interval of median(arm) / median(base), resampling both lists."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(arm, k=len(arm)))
        / statistics.median(rng.choices(base, k=len(base)))
        for _ in range(draws)
    )
    return ratios[int(0.05 * draws)], ratios[int(0.95 * draws) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default=None)
    parser.add_argument("--row", default="vgg38", help="a Table 1 row key")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (first dropped)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of the three arms")
    parser.add_argument("--val-images", type=int, default=128)
    args = parser.parse_args()

    from depthlab import backend

    backend.select(args.backend)
    backend.configure()
    os.environ.setdefault("DEPTHLAB_MLRUNS", tempfile.mkdtemp(prefix="depthlab-bench-"))
    import keras
    from mlflow.tracking import MlflowClient

    from depthlab import tracking
    from depthlab.layers.vgg import build_vgg
    from depthlab.reproductions import runner, vgg

    base = dataclasses.replace(
        vgg.QUICK,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        val_images=args.val_images,
        test_images=args.val_images,
        **vgg.ROWS[args.row],
    )

    class EpochTimer(keras.callbacks.Callback):
        async_safe = True  # no batch hooks: keeps Keras' asynchronous dispatch, as the runner

        def on_train_begin(self, logs=None):
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    def bare(config) -> list[float]:
        train, val, _, classes = vgg._images(config)
        model = build_vgg(
            config.num_blocks, config.norm, config.residual, classes, seed=config.seed
        )
        model.compile(
            keras.optimizers.Adam(config.lr, epsilon=1e-8),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        timer = EpochTimer()
        model.fit(
            vgg._batches(train, config, True),
            epochs=config.epochs,
            steps_per_epoch=config.steps_per_epoch,
            shuffle=False,
            verbose=0,
            validation_data=vgg._batches(val, config, False),
            callbacks=[timer],
        )
        return timer.times[1:]

    def through_runner(config) -> list[float]:
        (outcome,) = runner.run(
            vgg.STUDY,
            "1",
            "quick",
            config=config,
            rows=[args.row],
            overrides={"epochs": config.epochs, "steps_per_epoch": config.steps_per_epoch},
            results_dir=None,
            echo=lambda line: None,
        )
        history = MlflowClient().get_metric_history(outcome.run_id, "epoch_time_s")
        return [m.value for m in sorted(history, key=lambda m: m.step)][1:]

    tracking.configure()
    fits = {"bare": bare, "bare again": bare, "runner": through_runner}
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for round_ in range(args.rounds):
        config = dataclasses.replace(base, seed=base.seed + round_)  # a fresh runner job
        order = ARMS[round_ % 3 :] + ARMS[: round_ % 3]
        for arm in order:
            times[arm] += fits[arm](config)
        print(
            f"round {round_ + 1}/{args.rounds}: "
            + ", ".join(
                f"{arm} {1000 * statistics.median(times[arm]) / args.steps:.1f}" for arm in ARMS
            )
            + " ms/step (running medians)",
            flush=True,
        )

    per_step = 1000 / args.steps
    print(
        f"\nbackend {keras.backend.backend()}, device {backend.device()}, "
        f"{os.cpu_count()} CPUs, row {args.row}, batch {base.batch_size}, "
        f"{args.steps} steps + {args.val_images} val images per epoch, "
        f"{len(times['bare'])} epochs per arm"
    )
    reference = times["bare"]
    for arm in ARMS:
        median = statistics.median(times[arm])
        line = f"{arm:11s}: {median * per_step:8.1f} ms/step"
        if arm != "bare":
            low, high = ratio_interval(times[arm], reference)
            line += (
                f"   / bare = {median / statistics.median(reference):.3f}  "
                f"(90 % interval {low:.3f} to {high:.3f})"
            )
        print(line)
    print("target: runner / bare <= 1.05")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
