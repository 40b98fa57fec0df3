"""What ``--executor ray`` costs and gains on this machine, beside ``--executor local``.

Arms, each on a fresh store, one after the other in this run:

1. No-op tables (jobs that compute nothing), N = 8 and N = 32 jobs, through ``runner.run``
   with the local executor and with :class:`RayExecutor` (a local Ray instance started by
   the table, and the MLflow server it starts for the workers). The difference of the two
   wall times is Ray's cost; its slope over N is the cost per job, its intercept the fixed
   cost (Ray start, server start, first workers).
2. A real fit-less table, Marion Fig 2 (quick), 8 of its parts, through the CLI in a
   subprocess (what a user runs): wall time local vs ray, and the speed-up.

    python benchmarks/ray_executor.py --backend jax [--parts 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time


@dataclasses.dataclass(frozen=True)
class NoOp:
    jobs: int = 8
    seed: int = 0


def _noop_jobs(config, rows, profile):
    from depthlab.reproductions import runner

    return [runner.Job(f"j{i}", f"job {i}", dataclasses.replace(config, seed=i))
            for i in range(config.jobs)]


def _noop_report(table, config, outcomes, profile):
    from depthlab.report import Comparison

    return [Comparison(o.job.label, "x", None, o.results.get("x")) for o in outcomes]


def _noop_execute(job, ctx):
    return {"x": float(job.config.seed)}


def noop_table(jobs: int, executor) -> float:
    """Wall seconds of one no-op table of ``jobs`` jobs on a fresh store."""
    from depthlab.reproductions import runner

    study = runner.Study("noop", {"quick": NoOp()}, {"t": _noop_jobs}, _noop_execute,
                         _noop_report, {"t": []})
    os.environ["DEPTHLAB_MLRUNS"] = tempfile.mkdtemp(prefix="depthlab-ray-bench-")
    start = time.perf_counter()
    outcomes = runner.run(study, "t", "quick", config=NoOp(jobs=jobs), results_dir=None,
                          executor=executor, echo=lambda line: None)
    wall = time.perf_counter() - start
    assert [o.status for o in outcomes] == ["finished"] * jobs, outcomes
    return wall


def cli_table(executor: str, parts: int, backend: str) -> float:
    store = tempfile.mkdtemp(prefix="depthlab-ray-bench-")
    rows = ",".join(f"iid_d100_beta0.5_part{i}" for i in range(parts))
    argv = [sys.executable, "-m", "depthlab.reproductions.marion", "--table", "fig2",
            "--profile", "quick", "--backend", backend, "--rows", rows, "--executor",
            executor, "--results-dir", os.path.join(store, "results")]
    start = time.perf_counter()
    done = subprocess.run(argv, env=dict(os.environ, DEPTHLAB_MLRUNS=store),
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{executor}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--parts", type=int, default=8)
    args = parser.parse_args()

    from depthlab import backend

    backend.select(args.backend)
    backend.configure()
    from depthlab.reproductions.ray_executor import RayExecutor

    print(f"CPU: {os.cpu_count()} cores; backend {args.backend}")
    walls = {}
    for jobs in (8, 32):
        walls[jobs] = {"local": noop_table(jobs, None), "ray": noop_table(jobs, RayExecutor())}
        print(f"no-op table, {jobs} jobs: local {walls[jobs]['local']:.1f} s, "
              f"ray {walls[jobs]['ray']:.1f} s", flush=True)
    extra = {n: w["ray"] - w["local"] for n, w in walls.items()}
    per_job = (extra[32] - extra[8]) / 24
    print(f"Ray's cost: {per_job * 1000:.0f} ms per job, {extra[8] - 8 * per_job:.1f} s fixed "
          "(Ray start, MLflow server start, first workers)")
    local = cli_table("local", args.parts, args.backend)
    ray = cli_table("ray", args.parts, args.backend)
    print(f"Marion Fig 2 quick, {args.parts} parts, through the CLI: local {local:.1f} s, "
          f"ray {ray:.1f} s, speed-up {local / ray:.2f}x on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
