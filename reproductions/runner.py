"""The one experiment runner: every study's tables run through :func:`run`.

A study is data (:class:`Study`): a config dataclass per profile, tables that expand into
jobs, an ``execute`` function for one job, and a ``report`` that sets measured numbers
beside the paper's. The runner owns everything around a job, once for all studies:

* one MLflow parent run per table (study, table, profile, backend, config, code), which
  later invocations of the same table join, and one nested run per job, with the
  flattened config as params and backend/versions/device/commit/profile/dataset as tags;
* the user's ``--set`` overrides win over the values a table's rows set, except for the
  fields that define the rows (``Study.fixed``), which are refused; an overridden row is
  labelled "(--set)";
* reuse: a job whose identity (study, row, backend, config, code commit, data digest)
  already has a finished (or diverged) run is skipped and its results are read back; an
  interrupted job resumes its MLflow run and, through :meth:`Context.fit`, its last backup;
  ``rerun=True`` recomputes;
* one process per job: a job runs under a store lock; a second command waits for it and
  then reuses its result; runs whose process died are marked KILLED on the next start;
* an executor runs the pending jobs: :func:`run_local` (default) one after the other in
  this process, :class:`~depthlab.reproductions.ray_executor.RayExecutor` as Ray tasks;
  the report keeps the table's order either way;
* failure: divergence (:class:`~depthlab.callbacks.divergence.DivergenceGuard`) ends the
  job as FAILED "diverged at epoch e" and the sweep goes on; any other exception marks the
  run FAILED and the sweep goes on (exit code 1 at the end); Ctrl-C / SIGTERM mark it
  KILLED and stop; a full disk stops the table with one line;
* between jobs the backend's memory is released; a job's precision policy
  (``config.precision``, e.g. "mixed_bfloat16") is set for it and reset after; an
  out-of-memory error is reported as such, with the peak; the peak device memory of each
  job is logged where the backend exposes it;
* a job returns scalars (``result/<name>`` metrics) and arrays (one ``results.npz``
  artifact); the model a fit trained is kept as ``model/model.keras``;
* the final "paper | ours | delta" table, with each row's run, commit and data digest,
  and the study's figures, built from the runs as the store holds them (skipped jobs and
  new ones alike), printed and stored in the parent run (its description is the table)
  and in ``docs/results/``.

Unit of work: the runner costs ~60 ms per new job and ~6 ms per reused one on the 2-core
CPU (``benchmarks/runner_overhead.py``), so a job should be at least seconds of compute:
a grid study makes one job per grid row and vectorises the row inside it.

Studies that never call ``fit`` (init-time simulations, diagnostics) use the same
``Context`` for metrics and artifacts and simply return their results.

This module imports no backend at import time: the CLI selects the backend first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from depthlab import files, report, tracking
from depthlab.config import ConfigError

RESULT_PREFIX = "result/"  # its own section in the MLflow UI, after the training curves
ARRAYS_FILE = "results.npz"
TAG_TABLE = "depthlab.table_id"
TAG_ARRAYS = "depthlab.arrays"  # "1" when the run has a results.npz
RESULTS_TEXT_LIMIT = 1 << 20  # bytes: a larger data file goes to MLflow, not docs/results
NOTE_LIMIT = 7_900  # characters of a run description (MLflow truncates tags at 8,000)


class Diverged(RuntimeError):
    """A job's training diverged (non-finite or absurd loss, metrics, gradients, weights)."""

    def __init__(self, epoch: int, reason: str = ""):
        super().__init__(f"diverged at epoch {epoch}" + (f": {reason}" if reason else ""))
        self.epoch = epoch


@dataclasses.dataclass(frozen=True)
class Job:
    """One run of a table: a row id, its label in the paper's table, and its config."""

    key: str
    label: str
    config: Any


@dataclasses.dataclass
class Outcome:
    """What a job left in MLflow: status, results (``result.*`` metrics) and run id."""

    job: Job
    status: str  # "finished" | "diverged" | "failed" | "skipped"
    results: dict[str, float]
    run_id: str | None
    wall_time_s: float | None = None
    message: str = ""
    commit: str = ""
    data: str = ""
    arrays: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Study:
    """A study as data.

    Args:
        name: CLI name and MLflow experiment suffix ("vgg").
        profiles: profile name -> base config (frozen dataclass).
        tables: table id -> function(config, rows or None, profile) -> jobs, in order.
        execute: runs one job and returns its results: floats (e.g. final accuracies)
            and numpy arrays (e.g. a per-layer or per-sample grid).
        report: (table id, base config, outcomes, profile) -> the comparison rows.
        rows: table id -> all row keys, for ``--rows`` validation and ``--list``.
        tags: a job's config -> extra run tags (dataset, lossy copy, ...); the parent run
            carries those of the table's first job.
        prepare: called with each job's config before any run starts; raises (e.g.
            ``DataNotFoundError``, ``ConfigError`` for image counts beyond the data) to stop
            a table that cannot run, before MLflow sees it.
        label: (row key, config) -> row label, to relabel a row the user's overrides changed.
        fixed: table id -> config fields its rows define; ``--set`` of one is refused.
        datasets: config -> names of the data files a job reads (their digest is part of
            the job's identity).
        splits: config -> {"train"/"val"/"test": (source, indices into source)}; the runner
            refuses a job whose parts share an image (checked before any run).
        figures: (table id, base config, outcomes, profile) -> {name: matplotlib figure,
            or name ending in ".csv": its text}, drawn from the outcomes as the store
            holds them.
    """

    name: str
    profiles: Mapping[str, Any]
    tables: Mapping[str, Callable[[Any, Sequence[str] | None, str], list[Job]]]
    execute: Callable[[Job, Context], Mapping[str, Any]]
    report: Callable[[str, Any, list[Outcome], str], list[report.Comparison]]
    rows: Mapping[str, Sequence[str]]
    tags: Callable[[Any], Mapping[str, str]] = lambda config: {}
    prepare: Callable[[Any], None] = lambda config: None
    label: Callable[[str, Any], str] | None = None
    fixed: Mapping[str, Collection[str]] = dataclasses.field(default_factory=dict)
    datasets: Callable[[Any], Sequence[str]] = lambda config: ()
    splits: Callable[[Any], Mapping[str, tuple[str, Any]]] | None = None
    figures: Callable[[str, Any, list[Outcome], str], Mapping[str, Any]] = (
        lambda table, config, outcomes, profile: {})


class Context:
    """What a running job may use: MLflow logging, its checkpoint folder, and :meth:`fit`."""

    def __init__(self, study: Study, job: Job, run_id: str, checkpoint_dir: Path,
                 echo: Callable[[str], None] = print):
        self.study = study
        self.job = job
        self.run_id = run_id
        self.checkpoint_dir = checkpoint_dir
        self.echo = echo
        self.best: Any = None  # the BestWeights of the last fit with best_monitor
        self.weights_checked = False  # a fit ended with every weight checked finite
        self.model: Any = None  # the model of the last fit, kept as an artifact
        self._fits = 0  # fits so far: each has its own backup folder (resumes match them)

    log_metrics = staticmethod(tracking.log_metrics)
    log_figure = staticmethod(tracking.log_figure)
    log_text = staticmethod(tracking.log_text)
    log_dict = staticmethod(tracking.log_dict)

    def metric_history(self, key: str) -> list[float]:
        """Values of ``key`` logged so far in this job's run, by step (resumed runs too)."""
        return tracking.metric_history(self.run_id, key)

    def fit(
        self,
        model: Any,
        train: Any,
        *,
        epochs: int,
        validation: Any = None,
        callbacks: Sequence[Any] = (),
        best_monitor: str | None = None,
        best_mode: str = "max",
        steps_per_epoch: int | None = None,
        backup_every_s: float = 60.0,
        max_loss: float | None = None,
        keep_model: bool = True,
        measurements: tuple[str, ...] = (),
    ) -> dict[str, list[float]]:
        """Train with ``model.fit``, resumable per epoch, and return the per-epoch metrics.

        Adds the runner's callbacks to the study's:

        * one progress line and one MLflow ``log_metrics`` call per epoch
          (:class:`~depthlab.callbacks.epoch_logger.EpochLogger`);
        * divergence detection (:class:`~depthlab.callbacks.divergence.DivergenceGuard`:
          loss, metrics, gradients, weights; loss bound ``max_loss``), which raises
          :class:`Diverged` after ``fit``; metrics whose names start with one of
          ``measurements`` are logged but never count as divergence (an inference-mode
          evaluation may overflow while training is sound);
        * with ``best_monitor``, the best epoch's weights (``best_mode`` "max" or "min")
          for :meth:`load_best`;
        * a backup of the whole state (:class:`~depthlab.callbacks.backup.Backup`: weights,
          optimizer, the callbacks' histories, the best weights, the metrics not yet in
          MLflow), atomic, at an epoch end once ``backup_every_s`` have passed and after
          the last epoch; an interrupted job resumes from it. Metrics reach MLflow when a
          backup is committed (and at the end), so the store never holds an epoch twice.

        With ``keep_model`` the runner saves the model, as the job leaves it (e.g. with
        its best weights loaded), as the run's ``model/model.keras``: pass False for
        models too large to keep.

        Returns:
            metric name -> per-epoch values of the whole run (resumed epochs included),
            read back from MLflow.
        """
        from depthlab.callbacks.backup import Backup
        from depthlab.callbacks.best_weights import BestWeights
        from depthlab.callbacks.divergence import MAX_LOSS, DivergenceGuard
        from depthlab.callbacks.epoch_logger import EpochLogger

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        logger = EpochLogger(epochs=epochs, label=self.job.label, echo=self.echo)
        guard = DivergenceGuard(MAX_LOSS if max_loss is None else max_loss, measurements)
        ours: list[Any] = [logger, guard]  # the progress line first, whatever fails next
        self.best = None
        if best_monitor is not None:
            self.best = BestWeights(self.best_path, best_monitor, best_mode, echo=self.echo)
            ours.append(self.best)
        own = [*callbacks, *ours]
        with tracking.buffered() as held:
            parts = {f"{i}_{type(c).__name__}": c for i, c in enumerate(own)
                     if hasattr(c, "backup_state")}
            if held is not None:
                parts["mlflow_metrics"] = held
            self._fits += 1
            backup = Backup(self.checkpoint_dir / f"backup-{self._fits}", backup_every_s, parts,
                            skip=lambda: guard.diverged, on_commit=tracking.flush,
                            echo=lambda line: self.echo(f"[{self.job.label}] {line}"))
            if hasattr(train, "epoch_callback"):  # batches follow fit's epoch, resumes too
                own.insert(0, train.epoch_callback())
            model.fit(
                train,
                validation_data=validation,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                callbacks=[*own, backup],  # the backup last: it saves what the others wrote
                shuffle=False,  # the data orders itself from (seed, epoch): exact resume
                verbose=0,
            )
        if guard.diverged:
            raise Diverged(guard.diverged_at, guard.reason)
        self.weights_checked = True
        self.model = model if keep_model else None
        keys = ["loss", *logger.metric_names]
        return {k: self.metric_history(k) for k in dict.fromkeys(keys)}

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / "best.weights.h5"

    def load_best(self, model: Any) -> bool:
        """Load the best-epoch weights saved by :meth:`fit`; False if none is usable."""
        return self.best is not None and self.best.load(model)


CODE_FILES = ("*.py", "*.json", "*.toml")  # what a run's numbers can depend on


def git_commit(where: Path | None = None) -> str:
    """The code's identity: the commit, "+dirty.<digest of the diff>" when tracked code files
    changed (so two different edits never look alike), or the package version outside git.

    Only :data:`CODE_FILES` count: the tables a command writes into ``docs/results`` (tracked
    files) must not turn the next command's commit dirty, or it would stop reusing runs."""
    here = where or Path(__file__).resolve().parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=10, check=True).stdout

        commit = git("rev-parse", "--short", "HEAD").strip()
        diff = git("diff", "HEAD", "--binary", "--", *CODE_FILES)
        if diff:
            commit += "+dirty." + hashlib.sha256(diff.encode()).hexdigest()[:8]
        return commit
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"depthlab-{version('depthlab')}"
        except PackageNotFoundError:
            return "unknown"


def expand(study: Study, table: str, config: Any, rows: Sequence[str] | None = None,
           overrides: Mapping[str, Any] | None = None, profile: str = "quick") -> list[Job]:
    """The jobs of a table, with the user's overrides applied over the rows' own values.

    Raises:
        ConfigError: an override of a field the table's rows define (``Study.fixed``).
    """
    overrides = dict(overrides or {})
    fixed = sorted(set(study.fixed.get(table, ())) & set(overrides))
    if fixed:
        raise ConfigError(
            f"--set {', '.join(fixed)}: set by each row of table {table}, so it cannot be "
            f"overridden; pick rows with --rows instead (see --list)")
    jobs = []
    for job in study.tables[table](config, rows, profile):
        final = dataclasses.replace(job.config, **overrides) if overrides else job.config
        if final != job.config:  # the user's value beats the row's: say so in the label
            name = study.label(job.key, final) if study.label else job.label
            job = Job(job.key, f"{name} (--set)", final)
        jobs.append(job)
    return jobs


def check_splits(study: Study, job: Job) -> None:
    """Refuse a job whose train / val / test parts share an image (``Study.splits``)."""
    if study.splits is None:
        return
    import numpy as np

    parts = study.splits(job.config)
    names = sorted(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (source_a, index_a), (source_b, index_b) = parts[a], parts[b]
            if source_a == source_b:
                shared = np.intersect1d(index_a, index_b).size
                if shared:
                    raise ConfigError(f"{job.key}: {shared} images are in both its {a} and "
                                      f"{b} sets ({source_a}); they must be disjoint")


def run(
    study: Study,
    table: str,
    profile: str,
    *,
    config: Any,
    rows: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    rerun: bool = False,
    results_dir: str | Path | None = "docs/results",
    echo: Callable[[str], None] = print,
    executor: Executor | None = None,
) -> list[Outcome]:
    """Run (or resume) every job of one table and report it; return the outcomes.

    Everything that can be checked before training is checked first: the overrides, the
    store and the results folder, the data (``prepare``) and disjoint splits.

    Args:
        study: the study definition.
        table: table id (a key of ``study.tables``).
        profile: profile name, passed to the study's tables, report and figures.
        config: the profile's config with the user's overrides applied.
        rows: row keys to run (None = all).
        overrides: the user's typed overrides, applied again over each row's values.
        rerun: recompute jobs that already finished (new runs), instead of reusing them.
        results_dir: where the final table and figures go (None: nowhere but MLflow).
        echo: where progress lines go.
        executor: runs the table's jobs (default :func:`run_local`: one after the other in
            this process); e.g. :class:`~depthlab.reproductions.ray_executor.RayExecutor`.

    Returns:
        The outcomes in table order, as the store holds them.
    """
    from depthlab import backend

    jobs = expand(study, table, config, rows, overrides, profile)
    tracking.check_store()
    if results_dir is not None:
        files.check_writable(results_dir, "results folder (--results-dir)")
    for job in jobs:
        study.prepare(job.config)
        check_splits(study, job)
    executor = executor or run_local
    env_tags = {**backend.describe(), "git_commit": git_commit(), "profile": profile,
                "study": study.name, "table": table,
                "executor": getattr(executor, "name", "local"),
                tracking.TAG_LOCK_HOST: socket.gethostname(),
                **study.tags(jobs[0].config if jobs else config)}
    experiment_id = tracking.experiment(f"depthlab-{study.name}")
    for run_id in tracking.sweep_dead_runs(experiment_id):
        echo(f"run {run_id[:8]} was left RUNNING by a process that died; marked KILLED")
    table_id = tracking.config_hash({"study": study.name, "table": table, "profile": profile,
                                     "backend": env_tags["backend"], "commit":
                                     env_tags["git_commit"],
                                     "config": dataclasses.asdict(config)})
    parent_name = f"{study.name} table {table} ({profile}, {env_tags['backend']})"
    echo(f"{parent_name}: {len(jobs)} job(s); MLflow store {tracking.store_root()}")
    table_lock = tracking.lock(f"table-{table_id}")
    with tracking.lock(f"table-{table_id}.create"):  # one parent, even for two commands
        table_lock.acquire(shared=True)
        found = tracking.find_runs(experiment_id, {TAG_TABLE: table_id})
    try:
        with tracking.run(experiment_id, parent_name,
                          run_id=found[0].info.run_id if found else None,
                          params=tracking.flatten(config),
                          tags={**env_tags, "depthlab.kind": "table", TAG_TABLE: table_id,
                                tracking.TAG_LOCK: f"table-{table_id}",
                                "depthlab.rows": ",".join(j.key for j in jobs)}):
            ran = executor(study, jobs, experiment_id, env_tags, rerun, echo)
            outcomes = [_reload(outcome) for outcome in ran]  # as the store has them
            comparison = study.report(table, config, outcomes, profile)
            figures = study.figures(table, config, outcomes, profile)
            tracking.log_metrics(_summary(outcomes, comparison), step=0)
            _write_report(study, table, profile, env_tags, comparison, outcomes, figures,
                          results_dir, echo)
    finally:
        table_lock.release()
    return outcomes


Executor = Callable[[Study, list[Job], str, Mapping[str, str], bool, Callable[[str], None]],
                    list[Outcome]]


def run_local(study: Study, jobs: list[Job], experiment_id: str, env_tags: Mapping[str, str],
              rerun: bool, echo: Callable[[str], None]) -> list[Outcome]:
    """The default executor: the jobs one after the other in this process, in table order;
    a job another command holds is come back to at the end (then reused or resumed)."""
    done: dict[int, Outcome] = {}
    busy = []
    for i, job in enumerate(jobs):
        outcome = _run_job(study, job, experiment_id, env_tags, rerun, echo, wait=False)
        if outcome is None:
            busy.append(i)
        else:
            done[i] = outcome
    for i in busy:  # run by another command meanwhile: wait, then reuse or resume
        done[i] = _run_job(study, jobs[i], experiment_id, env_tags, False, echo, wait=True)
    return [done[i] for i in range(len(jobs))]


def job_identity(study: Study, job: Job, env_tags: Mapping[str, str]) -> tuple[str, str]:
    """(digest, data digest): what makes two jobs the same computation."""
    from depthlab import data as datasets

    data = datasets.digest(study.datasets(job.config))
    digest = tracking.config_hash({"study": study.name, "job": job.key,
                                   "backend": env_tags["backend"],
                                   "config": dataclasses.asdict(job.config),
                                   "commit": env_tags["git_commit"], "data": data})
    return digest, data


def _run_job(study: Study, job: Job, experiment_id: str, env_tags: Mapping[str, str],
             rerun: bool, echo: Callable[[str], None], wait: bool) -> Outcome | None:
    """Run, resume or reuse one job under its lock; None if another command holds it."""
    digest, data = job_identity(study, job, env_tags)
    lock = tracking.lock(f"job-{digest}")
    if not lock.acquire(blocking=False):
        if not wait:
            echo(f"[{job.label}] is running in another command ({lock.holder()}); "
                 "coming back to it at the end")
            return None
        echo(f"[{job.label}] waiting for the other command ({lock.holder()}) to finish it")
        lock.acquire()
    try:
        return _run_locked(study, job, experiment_id, env_tags, digest, data, rerun, echo)
    finally:
        lock.release()


def reuse(job: Job, experiment_id: str, digest: str, rerun: bool,
          echo: Callable[[str], None]) -> tuple[Outcome | None, str | None]:
    """(the outcome of a finished or diverged run of the job, to reuse; else None, and the
    id of an unfinished run to resume, or None). The caller holds the job's lock."""
    previous = tracking.find_runs(experiment_id, {tracking.TAG_CONFIG_HASH: digest})
    done = [r for r in previous
            if r.data.tags.get(tracking.TAG_STATUS) in ("finished", "diverged")]
    if done and not rerun:
        found = done[0]
        echo(f"[{job.label}] already {found.data.tags[tracking.TAG_STATUS]} "
             f"(run {found.info.run_id[:8]}), skipped")
        return _outcome_from_run(job, found, skipped=True), None
    unfinished = [r for r in previous if r not in done]
    return None, unfinished[0].info.run_id if unfinished and not rerun else None


def _run_locked(study: Study, job: Job, experiment_id: str, env_tags: Mapping[str, str],
                digest: str, data: str, rerun: bool, echo: Callable[[str], None],
                parent_run_id: str | None = None, resume_run: str | None = None) -> Outcome:
    """Run or resume one job whose lock the caller holds (or reuse its finished run);
    ``resume_run``: resume that run, whatever the store holds besides."""
    from depthlab.backend import memory

    if resume_run is not None:
        resume_id = resume_run
    else:
        finished, resume_id = reuse(job, experiment_id, digest, rerun, echo)
        if finished is not None:
            return finished
    checkpoint_dir = tracking.store_root() / "checkpoints" / digest
    if resume_id is None:
        _clear_checkpoints(checkpoint_dir)  # nothing of an abandoned attempt is reused
    tags = {**env_tags, **study.tags(job.config), tracking.TAG_CONFIG_HASH: digest,
            tracking.TAG_STATUS: "running",
            tracking.TAG_LOCK: f"job-{digest}", "data_digest": data, "job": job.key,
            "depthlab.kind": "job", tracking.TAG_NOTE: _job_note(study, job, env_tags)}
    if resume_id:
        echo(f"[{job.label}] resuming run {resume_id[:8]}")
    seed = getattr(job.config, "seed", None)
    start = time.perf_counter()
    run_id = None
    try:
        with tracking.run(experiment_id, job.label, tags=tags,
                          params=tracking.flatten(job.config), run_id=resume_id,
                          nested=True, parent_run_id=parent_run_id) as active:
            run_id = active.info.run_id
            if resume_id is None:
                tracking.log_dict(dataclasses.asdict(job.config), "config.json")
            context = Context(study, job, run_id, checkpoint_dir, echo)
            try:
                returned = _execute(study, job, context, seed)
            except Diverged as error:
                echo(f"[{job.label}] {error}; run marked FAILED, sweep continues")
                tracking.finish({"wall_time_s": time.perf_counter() - start}, "diverged",
                                str(error))
                _clear_checkpoints(checkpoint_dir)
                return Outcome(job, "diverged", {}, run_id, time.perf_counter() - start,
                               str(error), env_tags["git_commit"], data)
            results, arrays = _split(returned)
            if context.weights_checked:
                results.setdefault("weights_finite", 1.0)
            if arrays:
                tracking.log_arrays(arrays, ARRAYS_FILE)
            if context.model is not None:
                tracking.log_model(context.model, "model")
            wall = time.perf_counter() - start
            extra = {"wall_time_s": wall}
            peak = memory.peak_bytes()
            if peak is not None:
                extra["peak_device_memory_mb"] = peak / 2**20
            tracking.finish({**{RESULT_PREFIX + k: v for k, v in results.items()}, **extra},
                            "finished", tags={TAG_ARRAYS: "1"} if arrays else None)
    except KeyboardInterrupt:
        echo(f"[{job.label}] interrupted; run marked KILLED, resume by running again")
        raise
    except Exception as error:  # noqa: BLE001 - one failing row must not end the sweep
        if files.is_disk_full(error):
            raise  # every later job would fail the same way: stop with one line
        if memory.is_out_of_memory(error):
            message = memory.describe_out_of_memory(error)
            echo(f"[{job.label}] FAILED: {message}")
        else:
            import traceback

            message = f"{type(error).__name__}: {error}"
            echo(f"[{job.label}] FAILED: {message}\n"
                 + "".join(traceback.format_exception(error)[-6:]).rstrip())
        tracking.set_run_tags(run_id, {"depthlab.status_message": message})
        return Outcome(job, "failed", {}, run_id, time.perf_counter() - start, message,
                       env_tags["git_commit"], data)
    finally:
        memory.release()  # models, compiled steps, device memory: the next job starts clean
    _clear_checkpoints(checkpoint_dir)
    return Outcome(job, "finished", results, run_id, wall, "", env_tags["git_commit"], data,
                   arrays)


def _execute(study: Study, job: Job, context: Context, seed: int | None) -> Mapping[str, Any]:
    """The study's ``execute`` with the job's seed and precision policy (reset after)."""
    import keras

    from depthlab import backend
    from depthlab.backend import memory

    memory.reset_peak()
    if seed is not None:
        backend.set_seed(int(seed))
    policy = getattr(job.config, "precision", None)
    previous = keras.mixed_precision.dtype_policy()
    try:
        if policy:
            keras.mixed_precision.set_global_policy(policy)
        return study.execute(job, context)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _split(returned: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Scalars (``result/*`` metrics) and arrays (the ``results.npz`` artifact)."""
    import numpy as np

    scalars, arrays = {}, {}
    for key, value in returned.items():
        if np.ndim(value) == 0:
            scalars[key] = float(value)
        else:
            arrays[key] = np.asarray(value)
    return scalars, arrays


def _summary(outcomes: list[Outcome], rows: list[report.Comparison]) -> dict[str, float]:
    """The parent run's metrics: how many jobs ended how, how many claims hold."""
    statuses = [o.status for o in outcomes]
    verdicts = [r.notes.startswith("✓") for r in rows if r.row == "claim"]
    return {"jobs_finished": sum(s in ("finished", "skipped") for s in statuses),
            "jobs_diverged": statuses.count("diverged"),
            "jobs_failed": statuses.count("failed"),
            "claims_hold": sum(verdicts), "claims_fail": len(verdicts) - sum(verdicts)}


def _job_note(study: Study, job: Job, env_tags: Mapping[str, str]) -> str:
    """The job run's description in the MLflow UI."""
    return (f"**{job.label}**: row `{job.key}` of {study.name} table {env_tags['table']} "
            f"({env_tags['profile']} profile, {env_tags['backend']}). Training curves are "
            "the metrics without a prefix (one point per epoch); the job's results are under "
            "`result/`; its config is `config.json`; per-layer series and figures are "
            "artifacts.")


def _outcome_from_run(job: Job, found: Any, skipped: bool) -> Outcome:
    status = found.data.tags.get(tracking.TAG_STATUS, "finished")
    results = {k[len(RESULT_PREFIX):]: v for k, v in found.data.metrics.items()
               if k.startswith(RESULT_PREFIX)}
    arrays = {}
    if found.data.tags.get(TAG_ARRAYS) == "1":
        arrays = tracking.load_arrays(found.info.run_id, ARRAYS_FILE)
    return Outcome(job, "skipped" if skipped and status == "finished" else status, results,
                   found.info.run_id, found.data.metrics.get("wall_time_s"),
                   found.data.tags.get("depthlab.status_message", ""),
                   found.data.tags.get("git_commit", ""), found.data.tags.get("data_digest", ""),
                   arrays)


def _reload(outcome: Outcome) -> Outcome:
    """The outcome as the store holds it (what the report and figures are built from)."""
    if outcome.run_id is None or outcome.status == "skipped":
        return outcome
    stored = _outcome_from_run(outcome.job, tracking.get_run(outcome.run_id), False)
    return dataclasses.replace(stored, status=outcome.status, message=outcome.message)


def _clear_checkpoints(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _jobs_table(outcomes: list[Outcome]) -> str:
    """Markdown: where each row's numbers come from (status, run, commit, data, time)."""
    lines = ["| row | status | MLflow run | commit | data digest | wall time |",
             "|---|---|---|---|---|---|"]
    for o in outcomes:
        wall = (f"{o.wall_time_s:.0f} s" if o.wall_time_s is not None
                and math.isfinite(o.wall_time_s) else "—")
        lines.append(f"| {o.job.label} | {o.status} | {(o.run_id or '—')[:8]} | "
                     f"{o.commit or '—'} | {o.data or '—'} | {wall} |")
    return "\n".join(lines)


def _write_report(study: Study, table: str, profile: str, env_tags: Mapping[str, str],
                  rows: list[report.Comparison], outcomes: list[Outcome],
                  figures: Mapping[str, Any], results_dir: str | Path | None,
                  echo: Callable[[str], None]) -> None:
    title = (f"{study.name} table {table}, profile {profile}, backend {env_tags['backend']}, "
             f"device {env_tags['device']}")
    echo("\n" + title + "\n" + report.text_table(rows))
    for outcome in outcomes:
        if outcome.status in ("failed", "diverged"):
            echo(f"  {outcome.job.label}: {outcome.status} ({outcome.message})")
    stem = f"{study.name}_table{table}_{profile}_{env_tags['backend']}"
    meta = "\n".join(f"- {k}: {v}" for k, v in sorted(env_tags.items())
                     if not k.startswith("depthlab."))  # bookkeeping tags stay in MLflow
    pictures = "".join(f"\n![{name}]({stem}_{name}.png)\n" for name, item in figures.items()
                       if not isinstance(item, str))
    body = (f"{report.markdown_table(rows)}\n\n## Runs\n\n{_jobs_table(outcomes)}\n")
    too_large = [name for name, item in figures.items()  # too large for a results folder in git
            if isinstance(item, str) and len(item.encode()) > RESULTS_TEXT_LIMIT]
    only_mlflow = "".join(f"\n`{name}` ({len(figures[name].encode()) / 2**20:.1f} MiB) is kept "
                          f"only in MLflow, as the artifact `figures/{name}` of this table's "
                          "parent run.\n" for name in too_large)
    markdown = (f"# {title}\n\n{body}{pictures}{only_mlflow}\nEnvironment of this invocation:"
                f"\n{meta}\n")
    names = {name: name if isinstance(item, str) else f"{name}.png"
             for name, item in figures.items()}
    tail = ("\nFigures and data: " + (", ".join(f"`figures/{n}`" for n in names.values())
                                       or "none") + " (artifacts of this run).")
    if len(body) + len(tail) > NOTE_LIMIT:  # MLflow cuts a tag at 8,000 characters, noisily
        cut = body[:NOTE_LIMIT - len(tail) - 200].rsplit("\n", 1)[0]
        body = cut + f"\n\n… (the rest of the table is in the artifact `{stem}.md`)\n"
    tracking.set_tags({tracking.TAG_NOTE: f"## {title}\n\n{body}{tail}"})
    tracking.log_text(markdown, f"{stem}.md")
    tracking.log_text(report.csv_table(rows), f"{stem}.csv")
    for name, item in figures.items():
        if isinstance(item, str):
            tracking.log_text(item, f"figures/{name}")
        else:
            tracking.log_figure(item, f"figures/{names[name]}")
    if results_dir is not None:
        folder = Path(results_dir)
        files.write_text(folder / f"{stem}.md", markdown)
        files.write_text(folder / f"{stem}.csv", report.csv_table(rows))
        for name, item in figures.items():
            if isinstance(item, str):
                if name not in too_large:
                    files.write_text(folder / f"{stem}_{name}", item)
                continue
            files.ensure_space(folder, 4 << 20, f"the figure {name}")
            with files.atomic_path(folder / f"{stem}_{names[name]}", suffix=".png") as tmp:
                item.savefig(tmp, dpi=110)
        echo(f"table written to {folder / (stem + '.md')}"
             + (f" with {len(figures)} figure(s)" if figures else ""))
    sys.stdout.flush()
