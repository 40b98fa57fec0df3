"""Bookkeeping cost of the runner per job: N jobs that compute nothing, through ``runner.run``,
beside the floor of the same MLflow work done by hand, in one process and one store.

Arms, rotated each round so drifting load hits them alike:

* ``runner, new``: a table of N no-op jobs, each a new nested run (locks, identity, params,
  config.json, results, status, the report and its re-read of every run from the store);
* ``runner, reused``: the same table again: every job found finished and skipped;
* ``mlflow floor``: per job, ``start_run`` (nested) + ``log_params`` + ``log_metric`` +
  ``end_run`` with the fluent API: what any tracking of N runs costs at least.

Printed: milliseconds per job (median over rounds) and the runner's ratio to the floor.

    python benchmarks/runner_overhead.py --backend torch --jobs 40 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default=None)
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from depthlab import backend

    backend.select(args.backend)
    backend.configure()
    os.environ.setdefault("DEPTHLAB_MLRUNS", tempfile.mkdtemp(prefix="depthlab-bench-"))
    import mlflow

    from depthlab import tracking
    from depthlab.report import Comparison
    from depthlab.reproductions import runner

    @dataclasses.dataclass(frozen=True)
    class NoOp:
        jobs: int = args.jobs
        round: int = 0
        seed: int = 0

    def jobs(config, rows, profile):
        return [runner.Job(f"j{i}", f"job {i}", dataclasses.replace(config, seed=i))
                for i in range(config.jobs)]

    def report(table, config, outcomes, profile):
        return [Comparison(o.job.label, "x", None, o.results.get("x")) for o in outcomes]

    study = runner.Study("noop", {"quick": NoOp()}, {"t": jobs},
                         lambda job, ctx: {"x": float(job.config.seed)}, report, {"t": []})

    def through_runner(config) -> float:
        start = time.perf_counter()
        runner.run(study, "t", "quick", config=config, results_dir=None, echo=lambda _: None)
        return (time.perf_counter() - start) / args.jobs

    def floor(round_: int) -> float:
        experiment = tracking.experiment("depthlab-noop-floor")
        start = time.perf_counter()
        with mlflow.start_run(experiment_id=experiment, run_name=f"floor {round_}"):
            for i in range(args.jobs):
                with mlflow.start_run(experiment_id=experiment, run_name=f"job {i}",
                                      nested=True):
                    mlflow.log_params({"jobs": args.jobs, "round": round_, "seed": i})
                    mlflow.log_metric("x", float(i))
        return (time.perf_counter() - start) / args.jobs

    through_runner(NoOp(jobs=1, round=-1))  # create the store and the experiment
    floor(-1)
    times: dict[str, list[float]] = {"runner, new": [], "runner, reused": [], "mlflow floor": []}
    for round_ in range(args.rounds):
        config = NoOp(round=round_)
        arms = [("runner, new", lambda c=config: through_runner(c)),
                ("runner, reused", lambda c=config: through_runner(c)),
                ("mlflow floor", lambda r=round_: floor(r))]
        if round_ % 2:  # rotate the floor before the runner every other round
            arms = arms[2:] + arms[:2]
        for name, arm in arms:
            times[name].append(arm())
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.jobs} no-op jobs, {args.rounds} rounds, backend {backend.describe()['backend']}"
          f", cpu_count {os.cpu_count()}")
    for name, value in median.items():
        print(f"  {name:15s} {1000 * value:7.1f} ms/job")
    print(f"  runner new / floor: {median['runner, new'] / median['mlflow floor']:.2f}")


if __name__ == "__main__":
    main()
