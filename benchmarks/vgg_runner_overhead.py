"""Step time of the VGG study through the runner (GradientCapture + GradientLogger,
EpochLogger, BackupAndRestore, best checkpoint, MLflow) vs a bare ``model.fit`` of the
same model, data and batch, measured side by side in one process (issue 11, target ≤ 1.05).

Both arms train the quick profile's data (2,048 offline CIFAR-10 images, batch 32, no
augmentation) with a validation pass per epoch; an epoch's time runs from its start to its
end, validation included, in both. The first epoch of each arm (compilation) is dropped;
the arms alternate so machine load affects both alike.

    python benchmarks/vgg_runner_overhead.py --backend torch --row vgg38 --steps 20 --epochs 4
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default=None)
    parser.add_argument("--row", default="vgg38", help="a Table 1 row key")
    parser.add_argument("--steps", type=int, default=20, help="steps per epoch")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per arm (first dropped)")
    parser.add_argument("--repeats", type=int, default=2, help="alternations of the two arms")
    parser.add_argument("--val-images", type=int, default=128)
    args = parser.parse_args()

    from depthlab import backend

    backend.select(args.backend)
    backend.configure()
    os.environ.setdefault("DEPTHLAB_MLRUNS", tempfile.mkdtemp(prefix="depthlab-bench-"))
    import keras
    from mlflow.tracking import MlflowClient

    from depthlab import tracking
    from depthlab.reproductions import runner, vgg

    config = dataclasses.replace(vgg.QUICK, epochs=args.epochs, steps_per_epoch=args.steps,
                                 val_images=args.val_images, test_images=args.val_images,
                                 **vgg.ROWS[args.row])

    class EpochTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.times = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    def bare() -> list[float]:
        train, val, _, classes = vgg._images(config)
        from depthlab.layers.vgg import build_vgg

        model = build_vgg(config.num_blocks, config.norm, config.residual, classes,
                          seed=config.seed)
        model.compile(keras.optimizers.Adam(config.lr, epsilon=1e-8),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        timer = EpochTimer()
        model.fit(vgg._batches(train, config, True), epochs=config.epochs,
                  steps_per_epoch=config.steps_per_epoch, shuffle=False, verbose=0,
                  validation_data=vgg._batches(val, config, False), callbacks=[timer])
        return timer.times[1:]

    def through_runner(repeat: int) -> list[float]:
        job_config = dataclasses.replace(config, seed=config.seed + repeat)  # a fresh job
        (outcome,) = runner.run(vgg.STUDY, "1", "quick", config=job_config, rows=[args.row],
                                results_dir=None, echo=lambda line: None)
        history = MlflowClient().get_metric_history(outcome.run_id, "epoch_time_s")
        return [m.value for m in sorted(history, key=lambda m: m.step)][1:]

    tracking.configure()
    bare_times, runner_times = [], []
    for repeat in range(args.repeats):
        bare_times += bare()
        runner_times += through_runner(repeat)
    b, r = statistics.median(bare_times), statistics.median(runner_times)
    per_step = 1000 / args.steps
    print(f"backend {keras.backend.backend()}, device {backend.device()}, "
          f"{os.cpu_count()} CPUs, row {args.row}, batch {config.batch_size}, "
          f"{args.steps} steps + {args.val_images} val images per epoch")
    print(f"bare model.fit      : {b * per_step:8.1f} ms/step (median of {len(bare_times)})")
    print(f"runner + grad logger: {r * per_step:8.1f} ms/step (median of {len(runner_times)})")
    print(f"ratio runner / bare : {r / b:.3f}  (target <= 1.05)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
