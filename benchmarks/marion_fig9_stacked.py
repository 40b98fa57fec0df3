"""Fig 9 of Marion et al.: time per cell-epoch when K (beta, H) cells train one by one
(K fits of a res-1 net) and when they train stacked in one fit (``ResidualCells``), side by
side in one run on the same data (MNIST, first ``--images`` training images, batch 128).

Each arm trains every cell for ``--epochs`` epochs; the first epoch (compilation) is
dropped. Printed: seconds per cell-epoch of each arm and their ratio.

    python benchmarks/marion_fig9_stacked.py --backend jax --depth 100 --cells 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default=None)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--cells", type=int, default=10)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    from depthlab import backend

    backend.select(args.backend)
    backend.configure()
    import keras

    from depthlab import augment, data
    from depthlab.callbacks import GradientCapture
    from depthlab.layers.scaled_residual import ResidualCells, build_resnet, cells_loss

    mnist = data.mnist()
    x, y = mnist.train.x[: args.images], mnist.train.y[: args.images]
    grid = np.linspace(0.5, 0.9, args.cells)
    cells = [{"beta": float(b), "hurst": float(h), "init": "fbm", "seed": 0}
             for b, h in zip(grid, grid[::-1], strict=True)]

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.start)

    def fit(model, loss) -> list[float]:
        model.compile(GradientCapture(keras.optimizers.Adam(1e-2, epsilon=1e-8)), loss)
        timer = Timer()
        timer.times = []
        batches = augment.ImageBatches(x, y, 128, shuffle=True, seed=0, flatten=True)
        model.fit(batches, epochs=args.epochs, verbose=0, callbacks=[timer], shuffle=False)
        return timer.times[1:]

    alone = []
    for cell in cells:
        model = build_resnet("res1", args.depth, 30, cell["beta"], "fbm", 784, 10,
                             hurst=cell["hurst"], seed=0)
        alone += fit(model, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        keras.backend.clear_session()
    stacked = keras.Sequential([keras.Input((784,)),
                                ResidualCells(cells, args.depth, 30, 784, 10)])
    together = fit(stacked, cells_loss)
    per_cell_alone = float(np.median(alone))
    per_cell_stacked = float(np.median(together)) / args.cells
    print(f"backend {backend.describe()['backend']}, L={args.depth}, d=30, {args.cells} cells, "
          f"{args.images} images, batch 128")
    print(f"  one by one: {per_cell_alone:.3f} s per cell-epoch")
    print(f"  stacked:    {per_cell_stacked:.3f} s per cell-epoch "
          f"(x{per_cell_alone / per_cell_stacked:.2f})")


if __name__ == "__main__":
    main()
