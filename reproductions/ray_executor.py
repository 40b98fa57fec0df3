"""Run a table's jobs as Ray tasks, on a local or remote Ray cluster (``--executor ray``).

Why an executor and not a scheduler: Ray already places tasks by their resources, restarts
workers and spans machines; the runner keeps what it owns (identity, reuse, resume, locks,
the report). This command stays the one coordinator of its table:

* it holds each job's lock while the job runs anywhere, so a second command waits for it
  and then reuses its result, as with the local executor, and reuses finished jobs itself
  before anything reaches Ray (a finished table starts neither Ray nor a server);
* each pending job is one Ray task (``num_cpus``/``num_gpus`` per job), submitted in the
  table's order, no more at a time than the cluster can run (each holds its lock until
  it ends); Ray's own retries are off: when the worker or its node dies, this command marks
  the job's run KILLED and submits the job once more, to resume that run (from its last
  backup where the backup folder is shared, else from the start); a second loss ends the
  job FAILED. An exception inside a job ends its run FAILED there, as locally; a full disk
  or an unusable store stops the table;
* tracking: workers never write an SQLite file. With ``MLFLOW_TRACKING_URI`` (an MLflow
  server every node reaches) everything goes there; without one, on a single machine, this
  command starts a server over the local store (:func:`depthlab.tracking.serve`); a
  cluster with a node elsewhere and no server is refused;
* data: each worker reads its data through the same loaders (``DEPTHLAB_DATA_DIR`` or the
  checked download), never through Ray's object store; a task returns only its outcome,
  the runner reads results and arrays back from MLflow.

The workers inherit this command's backend and settings (``KERAS_BACKEND``, ``XLA_FLAGS``,
``DEPTHLAB_*``, ``MLFLOW_*``) through the task's runtime environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from depthlab import tracking
from depthlab.config import ConfigError
from depthlab.reproductions import runner

ENV_PREFIXES = ("DEPTHLAB_", "KERAS_", "XLA_", "TF_", "MLFLOW_", "JAX_")
ATTEMPTS = 2  # a job whose worker dies is submitted once more


class ClusterError(ConfigError):
    """Ray is missing, unreachable, or the cluster cannot share one tracking store."""


@dataclasses.dataclass(frozen=True)
class RayExecutor:
    """Runs jobs as Ray tasks (module docstring).

    Args:
        address: ``None`` starts a local Ray instance for this command; ``"auto"`` or
            ``"HOST:PORT"`` joins a running cluster (``ray start --head``).
        cpus_per_job: CPUs Ray reserves per job (and the threads a worker's BLAS uses).
        gpus_per_job: GPUs Ray reserves per job (it sets ``CUDA_VISIBLE_DEVICES``).
    """

    address: str | None = None
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0
    name: str = "ray"

    def __call__(self, study: runner.Study, jobs: list[runner.Job], experiment_id: str,
                 env_tags: Mapping[str, str], rerun: bool,
                 echo: Callable[[str], None]) -> list[runner.Outcome]:
        with contextlib.ExitStack() as stack:
            table = _Table(self, study, jobs, experiment_id, env_tags, rerun, echo, stack)
            return table.run()


class _Table:
    """One table's jobs on the cluster: locks, submissions, losses, outcomes."""

    def __init__(self, executor: RayExecutor, study, jobs, experiment_id, env_tags, rerun,
                 echo, stack: contextlib.ExitStack):
        self.executor, self.study, self.jobs = executor, study, jobs
        self.experiment_id, self.env_tags, self.rerun, self.echo = (experiment_id, env_tags,
                                                                    rerun, echo)
        self.stack = stack
        self.parent = tracking.active_run_id()
        self.done: dict[int, runner.Outcome] = {}
        self.locks: dict[int, Any] = {}
        self.identity: dict[int, tuple[str, str]] = {}
        self.pending: dict[Any, tuple[int, int]] = {}  # task ref -> (job index, attempt)
        self.task = None

    def run(self) -> list[runner.Outcome]:
        busy = []
        try:
            for i in range(len(self.jobs)):
                self._make_room()
                if not self._claim(i, wait=False):
                    busy.append(i)
            for i in busy:  # held by another command: wait for it, then reuse or resume
                self._make_room()
                self._claim(i, wait=True)
            while self.pending:
                self._collect()
        except BaseException:
            self._abandon()
            raise
        finally:
            for lock in self.locks.values():
                lock.release()
        return [self.done[i] for i in range(len(self.jobs))]

    def _make_room(self) -> None:
        """Submit no more jobs than the cluster runs at once: a job holds its lock (a file
        descriptor here) from submission to its end, and a 1,000-job table must not hold
        1,000 of them; the cluster's size is read again each time (it may grow)."""
        import ray

        while self.pending:
            resources = ray.cluster_resources()
            slots = resources.get("CPU", 0) // self.executor.cpus_per_job
            if self.executor.gpus_per_job:
                slots = min(slots, resources.get("GPU", 0) // self.executor.gpus_per_job)
            if len(self.pending) < max(1, int(slots)):
                return
            self._collect()

    def _claim(self, i: int, wait: bool) -> bool:
        """Lock job ``i``; reuse its finished run or submit it. False: busy elsewhere."""
        job = self.jobs[i]
        digest, data = runner.job_identity(self.study, job, self.env_tags)
        lock = tracking.lock(f"job-{digest}")
        if not lock.acquire(blocking=False):
            if not wait:
                self.echo(f"[{job.label}] is running in another command ({lock.holder()}); "
                          "coming back to it at the end")
                return False
            self.echo(f"[{job.label}] waiting for the other command ({lock.holder()})")
            lock.acquire()
        finished, _ = runner.reuse(job, self.experiment_id, digest, self.rerun and not wait,
                                   self.echo)
        if finished is not None:
            self.done[i] = finished
            lock.release()
            return True
        self.locks[i], self.identity[i] = lock, (digest, data)
        self._submit(i, attempt=1, rerun=self.rerun and not wait)
        return True

    def _submit(self, i: int, attempt: int, rerun: bool = False,
                resume: str | None = None) -> None:
        if self.task is None:
            self.task = self._start()
        digest, data = self.identity[i]
        ref = self.task.remote(self.study, self.jobs[i], self.experiment_id,
                               dict(self.env_tags), digest, data, rerun, resume, self.parent)
        self.pending[ref] = (i, attempt)

    def _collect(self) -> None:
        """Wait for the next job to end; record it, or submit it again if its worker died."""
        import ray

        ready, _ = ray.wait(list(self.pending), num_returns=1)
        i, attempt = self.pending.pop(ready[0])
        job = self.jobs[i]
        try:
            outcome = ray.get(ready[0])
        except ray.exceptions.RayTaskError as error:  # escaped the job: stop the table
            raise error.as_instanceof_cause() from None
        except ray.exceptions.RayError as error:  # the worker or its node is gone
            reason = f"its Ray worker died ({type(error).__name__})"
            killed = self._mark_killed(i, reason)
            if attempt < ATTEMPTS:
                self.echo(f"[{job.label}] {reason}; run marked KILLED, submitted again")
                # the same run resumes (even under --rerun); none yet: the job starts anew
                self._submit(i, attempt + 1, rerun=self.rerun and not killed,
                             resume=killed[0] if killed else None)
                return
            message = f"{reason}, twice"
            self.echo(f"[{job.label}] FAILED: {message}")
            outcome = runner.Outcome(job, "failed", {}, killed[0] if killed else None, None,
                                     message, self.env_tags["git_commit"], self.identity[i][1])
        self.done[i] = outcome
        self.locks.pop(i).release()

    def _mark_killed(self, i: int, reason: str) -> list[str]:
        """End the job's runs its dead worker left RUNNING; their ids."""
        digest, _ = self.identity[i]
        ended = []
        for found in tracking.find_runs(self.experiment_id,
                                        {tracking.TAG_CONFIG_HASH: digest}, status="RUNNING"):
            tracking.end_dead_run(found, reason)
            ended.append(found.info.run_id)
        return ended

    def _abandon(self) -> None:
        """Interrupted (Ctrl-C, SIGTERM) or stopped: end the tasks still out and mark
        their runs KILLED; the same command resumes them."""
        import ray

        for ref, (i, _) in list(self.pending.items()):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            with contextlib.suppress(Exception):
                self._mark_killed(i, "its command was interrupted")
        self.pending.clear()

    def _start(self):
        """Connect to Ray (and start a tracking server if needed); the remote task."""
        import ray

        self.stack.enter_context(_connected(self.executor.address))
        env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
        env["DEPTHLAB_MLRUNS"] = str(tracking.store_root())
        env.update(_thread_limits(self.executor.cpus_per_job, env.get("XLA_FLAGS", "")))
        if not tracking.server_uri():
            here = ray.util.get_node_ip_address()
            away = {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")} - {here}
            if away:
                raise ClusterError(
                    f"the Ray cluster has nodes other than this machine ({', '.join(away)}): "
                    "set MLFLOW_TRACKING_URI to an MLflow server they all reach (README, "
                    "'Tables on a Ray cluster')")
            self.echo("starting an MLflow server over the store for the Ray workers")
            env["MLFLOW_TRACKING_URI"] = self.stack.enter_context(tracking.serve())
        resources = ray.cluster_resources()
        if self.executor.gpus_per_job > resources.get("GPU", 0):
            raise ClusterError(f"--gpus-per-job {self.executor.gpus_per_job:g}: the Ray "
                               f"cluster has {resources.get('GPU', 0):g} GPU(s)")
        if self.executor.cpus_per_job > resources.get("CPU", 0):
            raise ClusterError(f"--cpus-per-job {self.executor.cpus_per_job:g}: the Ray "
                               f"cluster has {resources.get('CPU', 0):g} CPU(s)")
        self.echo(f"Ray: {resources.get('CPU', 0):g} CPU(s), {resources.get('GPU', 0):g} "
                  f"GPU(s); {self.executor.cpus_per_job:g} CPU(s), "
                  f"{self.executor.gpus_per_job:g} GPU(s) per job")
        return ray.remote(_job_in_worker).options(
            num_cpus=self.executor.cpus_per_job, num_gpus=self.executor.gpus_per_job,
            max_retries=0, runtime_env={"env_vars": env})


def _thread_limits(cpus: float, xla_flags: str) -> dict[str, str]:
    """Each backend's CPU threads capped at the CPUs Ray reserves for the job: XLA and
    TensorFlow would otherwise each start a thread per core of the machine, and two jobs on
    two cores would fight over both (torch follows ``OMP_NUM_THREADS``, which Ray sets)."""
    n = str(max(1, int(cpus)))
    flags = xla_flags
    if "intra_op_parallelism_threads" not in flags:
        flags = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={n}"
    return {"XLA_FLAGS": flags.strip(), "TF_NUM_INTRAOP_THREADS": n,
            "TF_NUM_INTEROP_THREADS": n, "OMP_NUM_THREADS": n}


@contextlib.contextmanager
def _connected(address: str | None):
    try:
        import ray
    except ImportError:
        raise ClusterError("--executor ray needs Ray: pip install 'depthlab[ray]'") from None
    import logging
    import signal

    if ray.is_initialized():
        yield
        return
    import sys
    import warnings

    # Workers' lines come prefixed "(task pid=...)": without colour codes when not a terminal.
    os.environ.setdefault("RAY_COLOR_PREFIX", "1" if sys.stdout.isatty() else "0")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with warnings.catch_warnings():  # JAX warns of any fork; Ray's exec at once
            warnings.simplefilter("ignore", RuntimeWarning)
            ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=True)
        for sig, handler in handlers.items():  # Ray's own would abort with a stack dump:
            signal.signal(sig, handler)  # Ctrl-C / SIGTERM end the table as locally
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {first}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _job_in_worker(study: runner.Study, job: runner.Job, experiment_id: str,
                   env_tags: dict[str, str], digest: str, data: str, rerun: bool,
                   resume: str | None, parent_run_id: str | None) -> runner.Outcome:
    """One job in a Ray worker: this worker's device in the run's tags, the job run nested
    under its table; the outcome travels back without its arrays (MLflow has them)."""
    from depthlab import backend

    backend.select(env_tags["backend"])
    backend.configure()
    tracking.configure()
    tags = {**env_tags, **backend.describe(),
            "depthlab.worker": f"{socket.gethostname()}:{os.getpid()}"}

    def echo(line: str) -> None:
        print(line, flush=True)

    outcome = runner._run_locked(study, job, experiment_id, tags, digest, data, rerun, echo,
                                 parent_run_id=parent_run_id, resume_run=resume)
    return dataclasses.replace(outcome, arrays={})
