"""Fig 7 of Marion et al. (SPEC §2.1, §2.5): the full (beta, H) grid through the study's
vectorised propagation, beside the plain float64 numpy loop of SPEC §2.5 as the reference
arm, in one run on the same networks.

Per H column: ``nets`` fBm networks (L=1000, d=40) are drawn once (numpy, from the seed),
then both arms compute every beta (70) x input (10) of each network: ours in one state of
700 columns on the Keras backend (float32, compiled where the backend compiles), the
reference one network at a time, a forward loop keeping the ReLU masks and a backward loop.
Printed: seconds per H column for drawing the weights and for each arm, the largest
relative difference of the cells, and the whole grid's time (51 columns) measured for ours
and, for the reference, measured on ``--reference-columns`` columns and scaled by 51 / that
number (its cost per column does not depend on H).

    python benchmarks/marion_fig7.py --backend jax --columns 51 --reference-columns 3
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def reference(w, v, h0, g, alpha):
    """SPEC §2.5's float64 numpy loop for one network: (out_diff, grad_diff) per column."""
    h, masks = h0.copy(), []
    for k in range(w.shape[0]):
        z = w[k] @ h
        masks.append(z > 0)
        h = h + alpha * (v[k] @ np.where(masks[-1], z, 0.0))
    g_last = np.repeat(g[:, None], h0.shape[1], axis=1)
    grad = g_last.copy()
    for k in reversed(range(w.shape[0])):
        grad = grad + alpha * (w[k].T @ np.where(masks[k], v[k].T @ grad, 0.0))
    norm = np.linalg.norm
    return norm(h - h0, axis=0) / norm(h0, axis=0), norm(grad - g_last, axis=0) / norm(
        g_last, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default=None)
    parser.add_argument("--columns", type=int, default=51, help="H columns for our arm")
    parser.add_argument("--reference-columns", type=int, default=3)
    args = parser.parse_args()

    from depthlab import backend

    backend.select(args.backend)
    backend.configure()
    from depthlab.layers.scaled_residual import propagate
    from depthlab.reproductions import marion

    config = marion.PAPER
    hursts = np.linspace(0.05, 0.97, 51)[np.linspace(0, 50, args.columns).astype(int)]
    betas = marion.beta_grid(config)
    per, nets = config.inputs_per_net, 5
    alpha = np.repeat(config.depth ** -betas, per)
    draw_s, ours_s, ref_s, worst = [], [], [], 0.0
    for column, hurst in enumerate(hursts):
        start = time.perf_counter()
        job = marion.dataclasses.replace(config, task="heatmap", init="fbm", hurst=float(hurst))
        drawn = [marion._draw(job, config.depth, (round(hurst * 1e6), i)) for i in range(nets)]
        h0 = np.stack([np.tile(a @ rng.random((config.inputs, per)), len(betas))
                       for _, _, a, _, rng in drawn])
        draw_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours = propagate(np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn]), h0,
                         np.stack([d[3] for d in drawn]), np.tile(alpha, (nets, 1)))
        ours_s.append(time.perf_counter() - start)
        if column < args.reference_columns:
            start = time.perf_counter()
            for i, (w, v, _, f, _) in enumerate(drawn):
                out, _ = reference(w.astype(np.float64), v.astype(np.float64), h0[i], f, alpha)
                cells = marion.cell_values(out.reshape(len(betas), per))
                mine = marion.cell_values(ours["out_diff"][i].reshape(len(betas), per))
                finite = (np.abs(cells) < 15) & (np.abs(mine) < 15)
                worst = max(worst, float(np.max(np.abs(cells - mine)[finite])))
            ref_s.append(time.perf_counter() - start)
        print(f"H={hurst:.3f}: draw {draw_s[-1]:.1f} s, ours {ours_s[-1]:.2f} s"
              + (f", reference {ref_s[-1]:.1f} s" if column < args.reference_columns else ""),
              flush=True)
    scale = 51 / args.columns
    ours_grid = (sum(draw_s) + sum(ours_s)) * scale
    ref_grid = (np.mean(draw_s) + np.mean(ref_s)) * 51
    print(f"\nbackend {backend.describe()['backend']}, {nets} nets x {per} inputs x "
          f"{len(betas)} betas per column, L={config.depth}, d={config.width}")
    print(f"per column: draw {np.mean(draw_s):.2f} s, ours {np.mean(ours_s):.2f} s, "
          f"reference {np.mean(ref_s):.2f} s (x{np.mean(ref_s) / np.mean(ours_s):.1f})")
    print(f"whole grid (51 columns): ours {ours_grid / 60:.2f} min"
          + (" (measured)" if args.columns == 51 else f" (scaled from {args.columns})")
          + f", reference {ref_grid / 60:.2f} min (scaled from {args.reference_columns})")
    print(f"largest |cell difference| (mean log10 out_diff, finite cells): {worst:.2e}")


if __name__ == "__main__":
    main()
