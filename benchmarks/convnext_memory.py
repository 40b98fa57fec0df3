"""Memory and step time of the ConvNeXt of SPEC §1 with and without per-block remat, measured
on the CPU so that the §1.5 memory model (26 bytes per block-input element in bf16-mixed, 4
with remat; states 16 bytes/param) and the depth it allows (1004, 1607, 10,022 layers) rest
on numbers, not only on an estimate, before any GPU time is spent on them.

Why each part:

1. Peak activation memory per block is what decides whether 1004 or 10,022 layers fit a GPU.
   XLA reports it without running anything: ``jax.jit(step).lower(...).compile()
   .memory_analysis()`` of one full training step (forward, backward, AdamW update, global
   clip 5, batch 64, full widths) on abstract inputs. ``temp_size_in_bytes`` (activations and
   workspace) is compiled for several depths; its slope over the number of blocks is the
   per-block cost, in float32 and mixed bf16, each with ``remat`` off and on. The acceptance
   of §1.5 is that this slope drops >= 4x with remat.
2. XLA's CPU pipeline as it ships deletes the optimisation barriers that ``jax.checkpoint`` (hence
   ``keras.remat``) puts around the recompute; without them XLA schedules the recompute in
   the forward pass and keeps its results until the backward, so on CPU the remat saves
   nothing. The report shows where the compiled schedule puts the recompute. The same steps
   are also compiled with ``XLA_FLAGS=--xla_disable_hlo_passes=cse_barrier_expander``
   (barriers kept, what ``depthlab.backend.select("jax")`` sets), in a separate process, to
   see what the remat itself saves.
3. The per-stage slopes plus 16 bytes/param of states give 1004 / 1607 / 10,022-layer
   estimates beside §1.5's.
4. Step time: remat's recompute cost (acceptance <= 1.4x), and the three Keras backends on
   the same quarter-width model and batch (SPEC §0.6: measure them side by side).

Every measurement runs in its own worker process (this script re-invoked with ``--worker``):
Keras fixes its backend, and XLA its flags, when first imported.

    python benchmarks/convnext_memory.py [--out docs/results/convnext_memory_benchmark.md]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

BATCH = 64
FULL_DIMS = (64, 128, 256, 512)
QUARTER_DIMS = (16, 32, 64, 128)
SPATIAL = (32, 16, 8, 4)
MIB = 2**20
GIB = 2**30
KEEP_BARRIERS = "--xla_disable_hlo_passes=cse_barrier_expander"
POLICIES = {"float32": "f32", "mixed_bfloat16": "bf16"}
SPEC_BYTES_PER_ELEMENT = {("f32", False): 52, ("bf16", False): 26, ("f32", True): 4,
                          ("bf16", True): 4}
TARGETS = {1004: (28, 28, 250, 28), 1607: (45, 45, 400, 45), 10022: (280, 280, 2500, 280)}
SPEC_TEXT = {  # SPEC §1.5, bf16-mixed, batch 64 (its own estimates, in GiB)
    1004: "2.9 states + 11.0 act. = 13.9 (no remat)",
    1607: "4.7 + 17.6 = 22.3 (no remat); 7.4 (remat)",
    10022: "29.2 + 16.9 = 46 (remat); 139 (no remat)",
}
MARK = "@@RESULT "
BACKENDS = ("jax", "tensorflow", "torch")


# ---------------------------------------------------------------- workers (one per process)


def _emit(record: dict) -> None:
    print(MARK + json.dumps(record), flush=True)


def _jax_step(model, optimizer):
    import keras

    from depthlab.backend import memory

    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return memory.jax_train_step(model, optimizer, loss)


def _model_and_optimizer(depths: Sequence[int], dims: Sequence[int], remat: bool, policy: str):
    import keras

    from depthlab.layers.convnext import build_convnext, exclude_from_decay

    keras.backend.clear_session()  # also resets the global dtype policy: set it after
    keras.mixed_precision.set_global_policy(policy)
    model = build_convnext(tuple(depths), dims=tuple(dims), seed=0, remat=remat)
    optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.01, global_clipnorm=5.0)
    exclude_from_decay(optimizer, model)
    optimizer.build(model.trainable_variables)
    return model, optimizer


def worker_memory(jobs: list[dict]) -> None:
    """Compile (never run) one full-width training step per job; emit XLA's memory analysis."""
    import jax

    from depthlab.layers.convnext import convnext_param_count, memory_estimate

    def abstract(variables) -> list:
        return [jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) for v in variables]

    for job in jobs:
        start = time.perf_counter()
        model, optimizer = _model_and_optimizer(job["depths"], FULL_DIMS, job["remat"],
                                                job["policy"])
        built = time.perf_counter()
        args = (abstract(model.trainable_variables), abstract(model.non_trainable_variables),
                abstract(optimizer.variables),
                jax.ShapeDtypeStruct((BATCH, 32, 32, 3), "float32"),
                jax.ShapeDtypeStruct((BATCH,), "int32"))
        lowered = jax.jit(_jax_step(model, optimizer)).lower(*args)
        compiled = lowered.compile()
        done = time.perf_counter()
        stats = compiled.memory_analysis()
        _emit({**job, **_schedule(compiled.as_text()), "kind": "memory",
               "temp": stats.temp_size_in_bytes,
               "argument": stats.argument_size_in_bytes, "output": stats.output_size_in_bytes,
               "alias": stats.alias_size_in_bytes, "build_s": built - start,
               "compile_s": done - built, "params": model.count_params()})
    for layers, depths in TARGETS.items():
        _emit({"kind": "target", "layers": layers, "depths": depths,
               "params": convnext_param_count(depths, FULL_DIMS),
               "spec_noremat": memory_estimate(depths, FULL_DIMS, BATCH, remat=False),
               "spec_remat": memory_estimate(depths, FULL_DIMS, BATCH, remat=True)})
    _emit({"kind": "versions", **_versions()})


def _schedule(hlo: str) -> dict[str, int]:
    """Where the compiled (scheduled) step runs the ops JAX tagged as remat's recompute
    (``.../checkpoint/rematted_computation/...``): before or after the first op of the loss,
    i.e. in the forward or in the backward pass; and how many optimisation barriers remain."""
    entry = hlo[hlo.index("\nENTRY"):].splitlines()
    loss = next((i for i, line in enumerate(entry) if "sparse_categorical_crossentropy" in line),
                len(entry))
    remat = [i for i, line in enumerate(entry) if "rematted_computation" in line]
    return {"remat_ops": len(remat), "remat_ops_before_loss": sum(i < loss for i in remat),
            "barriers": hlo.count(" opt-barrier("), "scheduled": "is_scheduled=true" in hlo}


def worker_residuals() -> None:
    """JAX-level residuals one stage-3 block saves for its backward (before XLA optimises):
    bytes per element of the block's B x C x H x W input, by dtype policy and remat."""
    import jax.numpy as jnp
    import keras
    from jax.ad_checkpoint import print_saved_residuals

    from depthlab.layers.convnext import ConvNeXtBlock

    sizes = {"f32": 4, "bf16": 2, "bool": 1, "i32": 4, "f16": 2}
    shape = (BATCH, SPATIAL[2], SPATIAL[2], FULL_DIMS[2])
    elements = int(np.prod(shape))
    for policy in POLICIES:
        for remat in (False, True):
            keras.backend.clear_session()
            keras.mixed_precision.set_global_policy(policy)
            block = ConvNeXtBlock(FULL_DIMS[2], remat=remat, seed=0)
            block.build(shape)
            weights = [v.value for v in block.trainable_variables]
            x = jnp.ones(shape, block.compute_dtype)

            def total(weights, x, block=block):
                y, _ = block.stateless_call(weights, [], x)
                return jnp.sum(y.astype("float32"))  # linear: saves nothing of its own

            text = io.StringIO()
            with contextlib.redirect_stdout(text):
                print_saved_residuals(total, weights, x)
            activation, weight, items = 0, 0, []
            for line in text.getvalue().splitlines():
                match = re.match(r"(\w+)\[([\d,]*)\]", line.strip())
                if not match:
                    continue
                dims = [int(d) for d in match.group(2).split(",") if d]
                nbytes = sizes.get(match.group(1), 4) * int(np.prod(dims) if dims else 1)
                if dims and dims[0] == BATCH:
                    activation += nbytes
                    items.append(f"{match.group(1)}[{','.join(map(str, dims[1:]))}]")
                else:
                    weight += nbytes
            _emit({"kind": "residuals", "policy": policy, "remat": remat,
                   "bytes_per_element": activation / elements, "weight_bytes": weight,
                   "items": items})


def worker_remat_time(steps: int, repeats: int) -> None:
    """Real jitted training steps, quarter widths, 3-3-9-3, float32: remat off and on built
    side by side, timed in interleaved repeats."""
    import jax

    rng = np.random.default_rng(0)
    x = jax.device_put(rng.normal(size=(BATCH, 32, 32, 3)).astype("float32"))
    y = jax.device_put(rng.integers(0, 10, BATCH).astype("int32"))
    arms = {}
    for remat in (False, True):
        model, optimizer = _model_and_optimizer((3, 3, 9, 3), QUARTER_DIMS, remat, "float32")
        step = jax.jit(_jax_step(model, optimizer), donate_argnums=(0, 1, 2))
        state = ([v.value for v in model.trainable_variables],
                 [v.value for v in model.non_trainable_variables],
                 [v.value for v in optimizer.variables])
        start = time.perf_counter()
        for _ in range(2):  # compile + one warm step
            loss, *state = step(*state, x, y)
        jax.block_until_ready(state)
        arms[remat] = {"step": step, "state": state, "warm_s": time.perf_counter() - start,
                       "times": [], "loss": float(loss)}
    for r in range(repeats):
        for remat in (False, True) if r % 2 == 0 else (True, False):
            arm = arms[remat]
            state = arm["state"]
            start = time.perf_counter()
            for _ in range(steps):
                loss, *state = arm["step"](*state, x, y)
            jax.block_until_ready(state)
            arm["times"].append((time.perf_counter() - start) / steps)
            arm["state"] = state
    for remat, arm in arms.items():
        _emit({"kind": "remat_time", "remat": remat, "times": arm["times"],
               "warm_s": arm["warm_s"], "first_loss": arm["loss"]})


def worker_fit(steps: int, repeats: int) -> None:
    """``model.fit`` step time of the quarter-width nets on this process's backend."""
    import keras

    from depthlab import backend
    from depthlab.layers.convnext import build_convnext, exclude_from_decay

    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * BATCH, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, steps * BATCH).astype("int32")
    for depths in ((2, 2, 2, 2), (3, 3, 9, 3)):
        backend.set_seed(0)
        keras.backend.clear_session()
        model = build_convnext(depths, dims=QUARTER_DIMS, seed=0)
        optimizer = keras.optimizers.AdamW(1e-3, weight_decay=0.01, global_clipnorm=5.0)
        exclude_from_decay(optimizer, model)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        start = time.perf_counter()
        model.fit(x[: 2 * BATCH], y[: 2 * BATCH], batch_size=BATCH, epochs=1, verbose=0,
                  shuffle=False)
        warm = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
            times.append((time.perf_counter() - start) / steps)
        _emit({"kind": "fit", "depths": depths, "times": times, "warm_s": warm,
               "jit_compile": str(model.jit_compile)})
    _emit({"kind": "versions", **_versions()})


def _versions() -> dict[str, str]:
    from depthlab import backend

    info = backend.describe()
    return {"backend": info["backend"], "keras": info["keras_version"],
            "framework": info["framework_version"], "device": info["device"]}


# ---------------------------------------------------------------- orchestration


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _cpu_busy_s() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Runner:
    """Runs workers one at a time and keeps, per phase, its wall time and how many cores
    other processes kept busy meanwhile (machine busy time minus the worker's CPU time)."""

    def __init__(self) -> None:
        self.phases: list[dict] = []

    def run(self, label: str, worker_args: list[str], backend: str = "jax",
            keep_barriers: bool = False) -> list[dict]:
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        # depthlab's select() keeps remat's barriers unless XLA_FLAGS names its own list of
        # disabled passes: an empty list measures XLA as it ships.
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + (
            KEEP_BARRIERS if keep_barriers else "--xla_disable_hlo_passes=")).strip()
        cmd = [sys.executable, os.path.abspath(__file__), "--backend", backend, *worker_args]
        busy, own, start = _cpu_busy_s(), _children_cpu_s(), time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        own = _children_cpu_s() - own
        others = max(0.0, (_cpu_busy_s() - busy - own) / wall)
        self.phases.append({"label": label, "wall_s": wall, "own_cores": own / wall,
                            "other_cores": others})
        print(f"[{label}] {wall:.0f} s, this worker {own / wall:.2f} cores, "
              f"other processes {others:.2f} cores", file=sys.stderr, flush=True)
        if done.returncode:
            raise RuntimeError(f"worker {label} failed:\n{done.stderr[-4000:]}")
        return [json.loads(line[len(MARK):]) for line in done.stdout.splitlines()
                if line.startswith(MARK)]


def _fit(xs: Sequence[int], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares slope and intercept of ys over xs, and the largest residual."""
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    residual = np.max(np.abs(np.asarray(ys) - (slope * np.asarray(xs) + intercept)))
    return float(slope), float(intercept), float(residual)


def _ratio(num: float, den: float, noise: float = 0.0, floor: float = 0.5) -> str:
    """``num / den`` as a drop factor. A slope under ``floor`` MiB/block, or under the fit's
    largest residual ``noise`` (a step, not a line), is reported as unresolved."""
    if den < max(floor, noise):
        return (f"unresolved: slope {den:.1f} MiB/block vs fit residual {noise:.1f} "
                f"(> {num / max(floor, noise, den):.0f}x)")
    return f"{num / den:.1f}x"


def _isolated(stage: int, k: int) -> list[int]:
    depths = [0, 0, 0, 0]
    depths[stage - 1] = k
    return depths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the Markdown report here")
    parser.add_argument("--ks", default="2,6,10,18", help="stage-3 block counts of the sweep")
    parser.add_argument("--stage-ks", default="2,6,10",
                        help="block counts of the one-stage models (per-stage slopes)")
    parser.add_argument("--remat-steps", type=int, default=4)
    parser.add_argument("--remat-repeats", type=int, default=5)
    parser.add_argument("--fit-steps", type=int, default=8)
    parser.add_argument("--fit-repeats", type=int, default=3)
    parser.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--jobs", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        from depthlab import backend

        backend.select(args.backend)
        backend.configure()
        if args.worker == "memory":
            worker_memory(json.loads(args.jobs))
        elif args.worker == "residuals":
            worker_residuals()
        elif args.worker == "remat_time":
            worker_remat_time(args.remat_steps, args.remat_repeats)
        elif args.worker == "fit":
            worker_fit(args.fit_steps, args.fit_repeats)
        return

    began, started = datetime.datetime.now(datetime.UTC), time.perf_counter()
    load_before = os.getloadavg()
    ks = [int(k) for k in args.ks.split(",")]
    stage_ks = [int(k) for k in args.stage_ks.split(",")]
    runner = Runner()

    # 1. compiled memory, XLA defaults and barriers kept
    sweep = [{"policy": p, "remat": r, "depths": [2, 2, k, 2], "set": "sweep"}
             for p in POLICIES for r in (False, True) for k in ks]
    stages = [{"policy": "mixed_bfloat16", "remat": r, "depths": _isolated(s, k),
               "set": f"stage{s}"} for r in (False, True) for s in range(1, 5) for k in stage_ks]
    default = runner.run("memory, XLA defaults",
                         ["--worker", "memory", "--jobs", json.dumps(sweep + stages)])
    kept_jobs = [j for j in sweep + stages if j["remat"]]
    kept_jobs.append({"policy": "float32", "remat": False, "depths": [2, 2, ks[0], 2],
                      "set": "check"})
    kept = runner.run("memory, barriers kept", ["--worker", "memory", "--jobs",
                                                json.dumps(kept_jobs)], keep_barriers=True)
    residuals = runner.run("JAX residuals", ["--worker", "residuals"])
    # 3. remat step time, XLA defaults and barriers kept
    timing_args = ["--worker", "remat_time", "--remat-steps", str(args.remat_steps),
                   "--remat-repeats", str(args.remat_repeats)]
    remat_default = runner.run("remat step time, XLA defaults", timing_args)
    remat_kept = runner.run("remat step time, barriers kept", timing_args, keep_barriers=True)
    # 4. three backends
    fits = {}
    for name in BACKENDS:
        fits[name] = runner.run(f"fit, {name}", ["--worker", "fit", "--fit-steps",
                                                 str(args.fit_steps), "--fit-repeats",
                                                 str(args.fit_repeats)], backend=name)
    report = _report(args, began, time.perf_counter() - started, load_before, runner, default,
                     kept, residuals, remat_default, remat_kept, fits)
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)


# ---------------------------------------------------------------- report


def _block_elements(stage: int) -> int:
    return BATCH * FULL_DIMS[stage - 1] * SPATIAL[stage - 1] ** 2


def _report(args, began, elapsed, load_before, runner, default, kept, residuals,
            remat_default, remat_kept, fits) -> str:
    memory = [r for r in default if r["kind"] == "memory"]
    kept_memory = [r for r in kept if r["kind"] == "memory"]
    targets = [r for r in default if r["kind"] == "target"]
    versions = {r["backend"]: r for rows in [default, *fits.values()] for r in rows
                if r["kind"] == "versions"}
    variants = {  # label -> (rows, remat)
        "no remat": (memory, False),
        "keras.remat, XLA defaults": (memory, True),
        "keras.remat, barriers kept": (kept_memory, True),
    }

    def rows_of(rows, remat, policy, subset):
        chosen = [r for r in rows if r["remat"] == remat and r["policy"] == policy
                  and r["set"] == subset]
        return sorted(chosen, key=lambda r: sum(r["depths"]))

    def slope_of(rows, remat, policy, subset, stage):
        chosen = rows_of(rows, remat, policy, subset)
        return _fit([r["depths"][stage - 1] for r in chosen], [r["temp"] / MIB for r in chosen])

    out = []
    w = out.append
    w("# ConvNeXt (SPEC §1) memory and step time with and without remat, measured on CPU\n")
    w(f"Generated by `benchmarks/convnext_memory.py` on {began:%Y-%m-%d %H:%M} UTC in "
      f"{elapsed / 60:.1f} min. Host: {os.cpu_count()}-core x86-64 CPU VM "
      f"({_cpu_model()}, {platform.machine()}), no GPU; Python "
      f"{platform.python_version()}.")
    w("Versions: " + "; ".join(f"{v['backend']}: Keras {v['keras']}, {v['framework']} on "
                               f"{v['device']}" for v in versions.values()) + ".")
    w(f"Arguments: `--ks {args.ks} --stage-ks {args.stage_ks} --remat-steps "
      f"{args.remat_steps} --remat-repeats {args.remat_repeats} --fit-steps {args.fit_steps} "
      f"--fit-repeats {args.fit_repeats}`.\n")

    # -- 1
    w("## 1. Compiled memory of one training step (JAX/XLA CPU, compiled, never run)\n")
    w("Full widths 64/128/256/512, batch 64, 32x32x3 inputs, loss sparse CE from logits, "
      "AdamW(1e-3, wd 0.01, global clipnorm 5) with the §1.4 decay groups; "
      "`jax.jit(step).lower(abstract inputs).compile().memory_analysis()`. `temp` = "
      "XLA's temporary allocation (activations + workspace; the peak of the buffer "
      "assignment). Arguments and outputs (weights, optimizer state, new copies of both; no "
      "donation here) are the same with and without remat. *Barriers kept* = the same "
      f"step compiled in a process with `XLA_FLAGS={KEEP_BARRIERS}` (see §1c).\n")
    w("### 1a. Stage-3 sweep, depths (2, 2, k, 2)\n")
    w("| policy | variant | " + " | ".join(f"k={k} temp MiB" for k in sorted(
        {r["depths"][2] for r in memory if r["set"] == "sweep"})) + " | args / outputs MiB "
      "(k=min..max) | compile s (k=min..max) |")
    ncols = len({r["depths"][2] for r in memory if r["set"] == "sweep"})
    w("|---|---|" + "---|" * ncols + "---|---|")
    sweep_slopes = {}
    for policy, short in POLICIES.items():
        for label, (rows, remat) in variants.items():
            chosen = rows_of(rows, remat, policy, "sweep")
            if not chosen:
                continue
            sweep_slopes[(short, label)] = slope_of(rows, remat, policy, "sweep", 3)
            w(f"| {short} | {label} | " + " | ".join(f"{r['temp'] / MIB:.0f}" for r in chosen)
              + f" | {chosen[0]['argument'] / MIB:.0f} / {chosen[0]['output'] / MIB:.0f} .. "
              f"{chosen[-1]['argument'] / MIB:.0f} / {chosen[-1]['output'] / MIB:.0f} | "
              f"{chosen[0]['compile_s']:.1f} .. {chosen[-1]['compile_s']:.1f} |")
    check = [r for r in kept_memory if r["set"] == "check"]
    base = [r for r in memory if r["set"] == "sweep" and not r["remat"]
            and r["policy"] == "float32" and r["depths"] == check[0]["depths"]] if check else []
    if check and base:
        same = check[0]["temp"] == base[0]["temp"]
        w(f"\nCheck: the no-remat step compiled with barriers kept has temp "
          f"{check[0]['temp'] / MIB:.1f} MiB vs {base[0]['temp'] / MIB:.1f} MiB with XLA "
          f"defaults ({'identical' if same else 'DIFFERENT'}): the flag only acts on remat's "
          "barriers.")
    w("\nPer stage-3 block slope of temp (least-squares over k), beside the §1.5 model "
      "(bytes/element x 64x256x8x8 = 1 Mi elements per block):\n")
    w("| policy | variant | slope MiB/block | max residual of fit MiB | §1.5 model MiB/block "
      "| no-remat slope / this slope |")
    w("|---|---|---|---|---|---|")
    for short in POLICIES.values():
        ref = sweep_slopes.get((short, "no remat"), (0, 0, 0))[0]
        for label, (_, remat) in variants.items():
            if (short, label) not in sweep_slopes:
                continue
            slope, _, resid = sweep_slopes[(short, label)]
            model = SPEC_BYTES_PER_ELEMENT[(short, remat)] * _block_elements(3) / MIB
            w(f"| {short} | {label} | {slope:.1f} | {resid:.1f} | {model:.0f} | "
              f"{'1.0x (reference)' if not remat else _ratio(ref, slope, resid)} |")

    w("\n### 1b. Per-stage slopes, bf16-mixed, one-stage models (only stage s has blocks, "
      f"k = {args.stage_ks})\n")
    w("In the (2, 2, k, 2) sweep a small remat slope can hide below a peak that is set "
      "elsewhere (stage 1's workspace); models with one populated stage isolate each stage. "
      "Even there the stem and downsamples (at 32x32) set a fixed peak of a few hundred MiB: "
      "a remat slope of ~1-2 bytes/element per block only shows once the saved block inputs "
      "pass it, so a slope near 0 or negative means 'below what this sweep can resolve', not "
      "'free'.\n")
    w("| stage (C, HxW) | variant | temp MiB at k=" + ",".join(args.stage_ks.split(","))
      + " | slope MiB/block | max residual MiB | bytes/element | §1.5 model MiB/block | "
      "drop vs no remat |")
    w("|---|---|---|---|---|---|---|---|")
    stage_slopes: dict[tuple[str, int], float] = {}
    stage_noise: dict[tuple[str, int], float] = {}
    for stage in range(1, 5):
        ref = None
        for label, (rows, remat) in variants.items():
            chosen = rows_of(rows, remat, "mixed_bfloat16", f"stage{stage}")
            if not chosen:
                continue
            slope, _, resid = slope_of(rows, remat, "mixed_bfloat16", f"stage{stage}", stage)
            stage_slopes[(label, stage)] = slope
            stage_noise[(label, stage)] = resid
            ref = slope if ref is None else ref
            model = SPEC_BYTES_PER_ELEMENT[("bf16", remat)] * _block_elements(stage) / MIB
            w(f"| {stage} ({FULL_DIMS[stage - 1]}, {SPATIAL[stage - 1]}x{SPATIAL[stage - 1]}) "
              f"| {label} | " + ", ".join(f"{r['temp'] / MIB:.0f}" for r in chosen)
              + f" | {slope:.1f} | {resid:.1f} | {slope * MIB / _block_elements(stage):.1f} | "
              f"{model:.0f} | {'-' if not remat else _ratio(ref, slope, resid)} |")

    w("\n### 1c. Why: what JAX saves per block, and what XLA CPU does with remat\n")
    w("JAX-level residuals of one stage-3 block (`jax.ad_checkpoint.print_saved_residuals`, "
      "before XLA), in bytes per element of the block's input (activations only; weight "
      "copies listed apart):\n")
    w("| policy | remat | activation bytes/element | weight-copy bytes | saved activations |")
    w("|---|---|---|---|---|")
    for r in residuals:
        if r["kind"] == "residuals":
            w(f"| {POLICIES[r['policy']]} | {r['remat']} | {r['bytes_per_element']:.0f} | "
              f"{r['weight_bytes'] / MIB:.2f} MiB | {', '.join(r['items'])} |")
    w("")
    w(_findings_memory(sweep_slopes, memory, kept_memory))

    # -- 2
    w("\n## 2. Extrapolation, bf16-mixed, batch 64\n")
    fixed = [r["temp"] / GIB for r in memory if r["policy"] == "mixed_bfloat16"
             and r["set"].startswith("stage") and sum(r["depths"]) == min(
                 sum(q["depths"]) for q in memory if q["set"].startswith("stage"))]
    bf16_resid = {r["remat"]: r["bytes_per_element"] for r in residuals
                  if r["kind"] == "residuals" and r["policy"] == "mixed_bfloat16"}
    w("Activations = sum over stages of blocks x bytes per block; states = 16 bytes/param "
      "(fp32 weight, grad, Adam m, v) as in §1.5; the fixed part (stem, downsamples, head, "
      "workspace) is left out as §1.5 leaves it out (temp of the one-stage models at the "
      f"smallest k: {min(fixed):.2f}-{max(fixed):.2f} GiB). Bytes per block from three "
      "sources: *per-stage* = the XLA slopes of §1b; *stage-3 x elements* = the stage-3 slope "
      "of the (2, 2, k, 2) sweep scaled by each stage's element count (4 / 2 / 1 / 0.5 x "
      "stage 3); *JAX residuals* = §1c's bytes/element ("
      f"{bf16_resid.get(False, float('nan')):.0f} without, "
      f"{bf16_resid.get(True, float('nan')):.0f} with remat) x each stage's elements, i.e. "
      "what a compiler that keeps exactly JAX's residuals would hold. A slope <= 0 (peak set "
      "elsewhere) counts as 0, so those cells are lower bounds. Cells: activations / "
      "states + activations, GiB.\n")
    w("| layers (depths) | params | states GiB | bytes/block from | no remat | "
      "keras.remat, XLA defaults | keras.remat, barriers kept | §1.5 model (this package's "
      "`memory_estimate`, total) no remat / remat | §1.5 text |")
    w("|---|---|---|---|---|---|---|---|---|")
    scale = (4, 2, 1, 0.5)
    elements = [_block_elements(s) / MIB for s in range(1, 5)]  # Mi elements per block
    for t in targets:
        states = 16 * t["params"] / GIB
        for source in ("per-stage", "stage-3 x elements", "JAX residuals"):
            cells = []
            for label, (_, remat) in variants.items():
                if source == "per-stage":
                    per = [max(0.0, stage_slopes.get((label, s), float("nan")))
                           for s in range(1, 5)]
                elif source == "stage-3 x elements":
                    s3 = sweep_slopes.get(("bf16", label), (float("nan"),))[0]
                    per = [max(0.0, s3) * f for f in scale]
                elif label == "keras.remat, XLA defaults":
                    cells.append("-")
                    continue
                else:
                    per = [bf16_resid.get(remat, float("nan")) * e for e in elements]
                act = sum(b * p for b, p in zip(t["depths"], per, strict=True)) / 1024
                cells.append(f"{act:.1f} / {act + states:.1f}")
            first = source == "per-stage"
            spec = (f"{t['spec_noremat']['total'] / GIB:.1f} / "
                    f"{t['spec_remat']['total'] / GIB:.1f}") if first else ""
            text = SPEC_TEXT[t["layers"]] if first else ""
            head = (f"{t['layers']} ({'-'.join(map(str, t['depths']))}) | {t['params']:,} | "
                    f"{states:.1f}") if first else " | | "
            w(f"| {head} | {source} | " + " | ".join(cells) + f" | {spec} | {text} |")

    # -- 3
    w("\n## 3. Step time of remat (JAX, real steps)\n")
    w(f"Quarter widths {QUARTER_DIMS}, depths (3, 3, 9, 3), batch 64, float32, the jitted "
      f"stateless step of §1 (forward + backward + AdamW), random data; both arms compiled in "
      f"one process, then {args.remat_repeats} interleaved repeats of {args.remat_steps} "
      "steps each (order alternating); medians.\n")
    w("| XLA | no remat ms/step | remat ms/step | remat / no remat | per-repeat ratios | "
      "compile + 1 step s (off / on) |")
    w("|---|---|---|---|---|---|")
    remat_ratios = {}
    for label, rows in (("defaults", remat_default), ("barriers kept", remat_kept)):
        arm = {r["remat"]: r for r in rows if r["kind"] == "remat_time"}
        off, on = statistics.median(arm[False]["times"]), statistics.median(arm[True]["times"])
        per = [b / a for a, b in zip(arm[False]["times"], arm[True]["times"], strict=True)]
        remat_ratios[label] = on / off
        w(f"| {label} | {1e3 * off:.0f} | {1e3 * on:.0f} | {on / off:.2f}x | "
          + ", ".join(f"{p:.2f}" for p in per)
          + f" | {arm[False]['warm_s']:.1f} / {arm[True]['warm_s']:.1f} |")

    # -- 4
    w("\n## 4. Three backends, `model.fit`, same model and batch\n")
    w(f"Quarter widths {QUARTER_DIMS}, batch 64, float32, AdamW(1e-3, wd 0.01, clipnorm 5) + "
      "sparse CE from logits, random data; one process per backend; a 2-step `fit` first "
      f"(compile), then {args.fit_repeats} `fit`s of {args.fit_steps} steps; median ms/step. "
      "Backends ran one after another, not interleaved.\n")
    w("| depths (layers) | " + " | ".join(f"{b} ms/step" for b in BACKENDS)
      + " | ratio to fastest (" + " / ".join(BACKENDS) + ") | first fit (compile) s | "
      "jit_compile |")
    w("|---|" + "---|" * (len(BACKENDS) + 3))
    for depths in ((2, 2, 2, 2), (3, 3, 9, 3)):
        med, warm, jit = {}, {}, {}
        for name in BACKENDS:
            row = next(r for r in fits[name] if r["kind"] == "fit"
                       and tuple(r["depths"]) == depths)
            med[name], warm[name], jit[name] = (statistics.median(row["times"]),
                                                row["warm_s"], row["jit_compile"])
        best = min(med.values())
        w(f"| {'-'.join(map(str, depths))} ({3 * sum(depths) + 2}) | "
          + " | ".join(f"{1e3 * med[b]:.0f}" for b in BACKENDS) + " | "
          + " / ".join(f"{med[b] / best:.2f}" for b in BACKENDS) + " | "
          + " / ".join(f"{warm[b]:.0f}" for b in BACKENDS) + " | "
          + " / ".join(jit[b] for b in BACKENDS) + " |")

    # -- acceptance + machine
    w("\n## Acceptance (SPEC §1.5)\n")
    w(_acceptance(sweep_slopes, stage_slopes, stage_noise, remat_ratios))
    w("\n## Machine load during the run\n")
    w(f"Load average at start {load_before[0]:.2f} / {load_before[1]:.2f} / "
      f"{load_before[2]:.2f} (1/5/15 min), at end {os.getloadavg()[0]:.2f}. Per phase: "
      "wall time, CPU cores the worker used, cores other processes kept busy meanwhile "
      "(from /proc/stat):\n")
    w("| phase | wall s | worker cores | other processes, cores |")
    w("|---|---|---|---|")
    for p in runner.phases:
        w(f"| {p['label']} | {p['wall_s']:.0f} | {p['own_cores']:.2f} | "
          f"{p['other_cores']:.2f} |")
    busy = max(p["other_cores"] for p in runner.phases)
    w("\n" + ("Other processes used up to "
              f"{busy:.2f} cores in some phase: step times (§3, §4) are noisy; the ratios "
              "within one interleaved run (§3) are less affected than absolute times."
              if busy > 0.3 else "The machine was otherwise quiet (< 0.3 cores used by other "
              "processes in every phase). Compiled memory (§1, §2) does not depend on load."))
    return "\n".join(out) + "\n"


def _findings_memory(sweep_slopes, memory, kept_memory) -> str:
    lines = []
    for short in ("f32", "bf16"):
        off = sweep_slopes.get((short, "no remat"))
        on = sweep_slopes.get((short, "keras.remat, XLA defaults"))
        kept = sweep_slopes.get((short, "keras.remat, barriers kept"))
        if off and on and kept:
            lines.append(f"- {short}, stage-3 sweep: no remat {off[0]:.1f} MiB/block, "
                         f"`keras.remat` with XLA defaults {on[0]:.1f}, with barriers kept "
                         f"{kept[0]:.1f}.")
    for label, rows in (("XLA defaults", memory), ("barriers kept", kept_memory)):
        remat = [r for r in rows if r["remat"]]
        if remat:
            before = sum(r["remat_ops_before_loss"] for r in remat)
            total = sum(r["remat_ops"] for r in remat)
            barriers = sum(r["barriers"] for r in remat)
            lines.append(
                f"- Compiled schedule, {label} (all {len(remat)} remat steps compiled above): "
                f"{before} of {total} ops tagged `checkpoint/rematted_computation` run before "
                f"the first loss op, i.e. in the forward pass; {barriers} `opt-barrier` ops "
                "remain after optimisation.")
    lines.append(
        "- Reading: `keras.remat` is `jax.checkpoint`, which marks the recompute with "
        "optimisation barriers so that XLA neither merges it with the forward (CSE) nor "
        "hoists it. XLA's CPU pipeline runs the `cse_barrier_expander` pass, which deletes "
        "them; the recompute is then scheduled in the forward pass and its results are kept "
        "until the backward, exactly like saved activations: on XLA CPU with default flags "
        "remat saves no memory (its slope is even a little higher, rows above). With the "
        "pass disabled the barriers stay, the recompute moves to the backward pass and the "
        "per-block slope falls to roughly the block's input. Whether XLA GPU keeps the "
        "barriers was not measured here (no GPU). depthlab's `backend.select('jax')` "
        "disables the pass (barriers kept) unless XLA_FLAGS names its own list.")
    lines.append(
        "- The no-remat slopes are well above §1.5's 26 (bf16) / 52 (f32) bytes/element. "
        "JAX's own residual list (table above) already exceeds the model: the exact GELU's "
        "derivative keeps four 4C tensors (`mul`, `erfc`, `exp`, a copy) instead of two, and "
        "the LayerNorm keeps three fp32 tensors; XLA's compiled temp is higher still (not "
        "broken down here).")
    return "\n".join(lines)


def _acceptance(sweep_slopes, stage_slopes, stage_noise, remat_ratios) -> str:
    lines = []
    off = sweep_slopes.get(("bf16", "no remat"), (0,))[0]
    for label in ("keras.remat, XLA defaults", "keras.remat, barriers kept"):
        on, _, noise = sweep_slopes.get(("bf16", label), (0, 0, 0))
        off3, on3 = stage_slopes.get(("no remat", 3), 0), stage_slopes.get((label, 3), 0)
        held = off / max(on, 1e-9) >= 4 and off3 / max(on3, 1e-9) >= 4
        flag = (" (XLA's non-default flag, which depthlab's backend.select sets on jax)"
                if "kept" in label else "")
        lines.append(f"- Per-block slope drop >= 4x (estimate 6.5x), bf16, {label}: "
                     f"stage-3 sweep {_ratio(off, on, noise)}, one-stage stage 3 "
                     f"{_ratio(off3, on3, stage_noise.get((label, 3), 0.0))}"
                     f" -> {'HOLDS' if held else 'DOES NOT HOLD'}{flag}.")
    for label, ratio in remat_ratios.items():
        note = (" (but with XLA defaults the recompute runs in the forward pass and saves no "
                "memory, so this is not the cost of a working remat)" if label == "defaults"
                else " (the flag depthlab sets on jax; the remat works here, §1)")
        lines.append(f"- Remat step-time cost <= 1.4x, XLA {label}: {ratio:.2f}x -> "
                     f"{'HOLDS' if ratio <= 1.4 else 'DOES NOT HOLD'}{note}.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
