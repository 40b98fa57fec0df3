"""Step time of Oyedotun's 100-layer PlainNet (SPEC §4.5): the study's fit against a bare
Keras ``fit`` and a plain loop in the backend's own framework, measured side by side in one
run, and the Fig 1 / Fig 9 / Table II costs estimated from the measured steps.

Usage (one backend per process):
    KERAS_BACKEND=torch python benchmarks/oyedotun_step.py [--steps 30] [--depths 3,10,50,100]

A step is one SGD step at batch 128 on real USPS images (D hidden blocks of 300 units,
~3.5 GFLOP at D = 100). Rows:

* ``study fit``: the job's ``fit``: GradientCapture(SGD, four-decade schedule),
  GradientLogger, DivergenceGuard, L2 on kernels, MaxNorm(3), BN, LeakyReLU 0.3;
* ``bare fit``: the same model with plain SGD and no callbacks;
* ``bare fit, naive / bn``: the bare fit of the nets without BN and max-norm, or without
  max-norm: the differences say what BN and the constraint cost;
* ``plain loop``: the same proposed net written directly in the backend's framework
  (torch ``nn`` modules, a jitted JAX function, a ``tf.function``), SGD + momentum, L2 and
  max-norm, no Keras.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402

from depthlab import backend  # noqa: E402

backend.select()
backend.configure()

import keras  # noqa: E402

from depthlab import data  # noqa: E402
from depthlab.callbacks.divergence import DivergenceGuard  # noqa: E402
from depthlab.callbacks.gradient_logger import GradientLogger  # noqa: E402
from depthlab.reproductions import oyedotun  # noqa: E402

BATCH = 128
WIDTH = 300


def _data(steps: int) -> tuple[np.ndarray, np.ndarray]:
    usps = data.usps()
    x = oyedotun._flat(usps.train.x)
    n = steps * BATCH
    reps = -(-n // len(x))
    return np.tile(x, (reps, 1))[:n], np.tile(usps.train.y, reps)[:n]


def _time_fit(model, x, y, callbacks=()) -> float:
    """Seconds per step of a second ``fit`` (the first compiles)."""
    model.fit(x[: 4 * BATCH], y[: 4 * BATCH], batch_size=BATCH, epochs=1, verbose=0,
              shuffle=False)
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False,
              callbacks=list(callbacks))
    return (time.perf_counter() - start) / (len(x) // BATCH)


def study_fit(depth: int, x, y) -> float:
    config = oyedotun.dataclasses.replace(oyedotun.PAPER, depth=depth)
    model = oyedotun.build_net(config, x.shape[1], 10)
    oyedotun._compile(model, config, steps_per_epoch=57)
    return _time_fit(model, x, y, [GradientLogger(every_n_steps=57, labels=oyedotun._kernel_label,
                                                  log_to_mlflow=False), DivergenceGuard()])


def bare_fit(depth: int, net: str, x, y) -> float:
    config = oyedotun.dataclasses.replace(oyedotun.PAPER, depth=depth, net=net)
    model = oyedotun.build_net(config, x.shape[1], 10)
    model.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy")
    return _time_fit(model, x, y)


def plain_loop(depth: int, x, y) -> float | None:
    name = keras.backend.backend()
    if name == "torch":
        return _torch_loop(depth, x, y)
    if name == "jax":
        return _jax_loop(depth, x, y)
    if name == "tensorflow":
        return _tf_loop(depth, x, y)
    return None


def _torch_loop(depth: int, x, y) -> float:
    import torch

    layers, fan_in = [], x.shape[1]
    for _ in range(depth):
        layers += [torch.nn.Linear(fan_in, WIDTH), torch.nn.BatchNorm1d(WIDTH, eps=1e-3,
                                                                         momentum=0.01),
                   torch.nn.LeakyReLU(0.3)]
        fan_in = WIDTH
    net = torch.nn.Sequential(*layers, torch.nn.Linear(WIDTH, 10))
    kernels = [m.weight for m in net if isinstance(m, torch.nn.Linear)][:-1]
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)

    def step(i):
        xb, yb = xs[i * BATCH:(i + 1) * BATCH], ys[i * BATCH:(i + 1) * BATCH]
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xb), yb)
        loss = loss + 5e-5 * sum((w * w).sum() for w in kernels)
        loss.backward()
        opt.step()
        with torch.no_grad():  # MaxNorm(3): rows of torch's (out, in) weight
            for w in kernels:
                norms = w.norm(dim=1, keepdim=True)
                w.mul_(norms.clamp(max=3.0) / (1e-7 + norms))

    return _time_loop(step, len(x) // BATCH)


def _time_loop(step, steps: int) -> float:
    for i in range(3):
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    return (time.perf_counter() - start) / steps


def _jax_loop(depth: int, x, y) -> float:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    sizes = [x.shape[1]] + [WIDTH] * depth
    params = [(jnp.asarray(rng.uniform(-1, 1, (a, WIDTH)).astype("float32") * np.sqrt(6 / a)),
               jnp.zeros(WIDTH), jnp.ones(WIDTH), jnp.zeros(WIDTH)) for a in sizes[:-1]]
    head = (jnp.asarray(rng.uniform(-0.1, 0.1, (WIDTH, 10)).astype("float32")), jnp.zeros(10))

    def loss_fn(params, head, xb, yb):
        h = xb
        for w, b, g, beta in params:
            z = h @ w + b
            mean, var = z.mean(0), z.var(0)
            z = (z - mean) / jnp.sqrt(var + 1e-3) * g + beta
            h = jnp.where(z > 0, z, 0.3 * z)
        logits = h @ head[0] + head[1]
        ce = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(yb)), yb])
        return ce + 5e-5 * sum((p[0] ** 2).sum() for p in params)

    @jax.jit
    def step(state, xb, yb):
        params, head, velocity = state
        grads = jax.grad(loss_fn, argnums=(0, 1))(params, head, xb, yb)
        velocity = jax.tree.map(lambda v, g: 0.9 * v - 0.01 * g, velocity, grads)
        params, head = jax.tree.map(lambda p, v: p + v, (params, head), velocity)
        params = [(w * jnp.minimum(jnp.linalg.norm(w, axis=0), 3.0)
                   / (1e-7 + jnp.linalg.norm(w, axis=0)), b, g, beta)
                  for w, b, g, beta in params]
        return params, head, velocity

    state = [params, head, jax.tree.map(jnp.zeros_like, (params, head))]
    xs, ys = jnp.asarray(x), jnp.asarray(y)

    def run(i):
        state[:] = step(tuple(state), xs[i * BATCH:(i + 1) * BATCH], ys[i * BATCH:(i + 1) * BATCH])
        jax.block_until_ready(state[0])

    return _time_loop(run, len(x) // BATCH)


def _tf_loop(depth: int, x, y) -> float:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    sizes = [x.shape[1]] + [WIDTH] * depth
    kernels = [tf.Variable((rng.uniform(-1, 1, (a, WIDTH)) * np.sqrt(6 / a)).astype("float32"))
               for a in sizes[:-1]]
    others = [tf.Variable(np.full(WIDTH, v, "float32")) for _ in range(depth) for v in (0, 1, 0)]
    head = [tf.Variable(rng.uniform(-0.1, 0.1, (WIDTH, 10)).astype("float32")),
            tf.Variable(np.zeros(10, "float32"))]
    variables = kernels + others + head
    velocity = [tf.Variable(tf.zeros_like(v)) for v in variables]

    @tf.function(jit_compile=False)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            h = xb
            for i, w in enumerate(kernels):
                b, g, beta = others[3 * i:3 * i + 3]
                z = h @ w + b
                mean, var = tf.nn.moments(z, axes=[0])
                z = (z - mean) / tf.sqrt(var + 1e-3) * g + beta
                h = tf.where(z > 0, z, 0.3 * z)
            logits = h @ head[0] + head[1]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, logits))
            loss += 5e-5 * tf.add_n([tf.reduce_sum(w * w) for w in kernels])
        grads = tape.gradient(loss, variables)
        for v, m, g in zip(variables, velocity, grads, strict=True):
            m.assign(0.9 * m - 0.01 * g)
            v.assign_add(m)
        for w in kernels:
            norms = tf.norm(w, axis=0)
            w.assign(w * tf.minimum(norms, 3.0) / (1e-7 + norms))

    xs, ys = tf.constant(x), tf.constant(y)

    def run(i):
        step(xs[i * BATCH:(i + 1) * BATCH], ys[i * BATCH:(i + 1) * BATCH])

    return _time_loop(run, len(x) // BATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--depths", default="3,10,50,100")
    args = parser.parse_args()
    x, y = _data(args.steps)
    depths = [int(d) for d in args.depths.split(",")]
    name = keras.backend.backend()
    print(f"backend {name}, batch {BATCH}, width {WIDTH}, {args.steps} timed steps per row")
    bare = {}
    for depth in depths:
        bare[depth] = bare_fit(depth, "proposed", x, y)
        print(f"D={depth:3d}  bare fit, proposed      {1e3 * bare[depth]:8.1f} ms/step")
    top = max(depths)
    rows = {"study fit (capture, logger, guard)": study_fit(top, x, y),
            "bare fit, naive (no BN, no max-norm)": bare_fit(top, "glorot", x, y),
            "bare fit, bn (BN, no max-norm)": bare_fit(top, "bn", x, y),
            "plain loop (" + name + ")": plain_loop(top, x, y)}
    flops = 3 * 2 * BATCH * (x.shape[1] * WIDTH + (top - 1) * WIDTH * WIDTH + WIDTH * 10)
    print(f"\nD={top}: {flops / 1e9:.2f} GFLOP per step (matmuls, forward + backward)")
    print(f"  bare fit, proposed                    {1e3 * bare[top]:8.1f} ms/step  1.00x  "
          f"{flops / bare[top] / 1e9:6.1f} GFLOP/s")
    for label, seconds in rows.items():
        if seconds is None:
            continue
        print(f"  {label:37s} {1e3 * seconds:8.1f} ms/step  {seconds / bare[top]:.2f}x  "
              f"{flops / seconds / 1e9:6.1f} GFLOP/s")
    _estimates(bare, rows["study fit (capture, logger, guard)"] / bare[top])


def _estimates(bare: dict[int, float], overhead: float) -> None:
    """Paper-profile costs from the measured steps: step time linear in depth between the
    measured depths; each epoch adds one inference pass over train + test (~1/3 of a
    training step per 128 samples: forward only)."""
    depths = sorted(bare)

    def step(d: int) -> float:
        return float(np.interp(d, depths, [bare[k] for k in depths])) * overhead

    def run(d: int, dataset: str, epochs: int = 300) -> float:
        steps, evals = {"usps": (57, (7291 + 2007) / BATCH), "coil20": (8, 1440 / BATCH)}[dataset]
        return epochs * step(d) * (steps + evals / 3)

    fig1 = sum(run(d, ds) for d in oyedotun.FIG1_DEPTHS["paper"] for ds in ("usps", "coil20")
               for _ in oyedotun.FIG1_NETS)
    fig9 = sum(run(d, ds) for d in oyedotun.FIG9_DEPTHS["paper"] for ds in ("usps", "coil20")
               for _ in oyedotun.FIG9_NETS)
    table2 = 14 * run(100, "usps")
    print("\npaper-profile estimates on this machine (300 epochs each; Fig 9 includes Fig 1's "
          "jobs, which the runner reuses):")
    print(f"  one USPS run at D=100: {run(100, 'usps') / 3600:.1f} h")
    print(f"  Fig 1 (28 runs): {fig1 / 3600:.1f} h   Fig 9 (80 runs): {fig9 / 3600:.1f} h   "
          f"Table II (14 runs): {table2 / 3600:.1f} h")


if __name__ == "__main__":
    main()
