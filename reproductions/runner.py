"""The one experiment runner: every study's tables run through :func:`run`.

A study is data (:class:`Study`): a config dataclass per profile, tables that expand into
jobs, an ``execute`` function for one job, and a ``report`` that sets measured numbers
beside the paper's. The runner owns everything around a job, once for all studies:

* one MLflow parent run per table invocation, one nested run per job, with the flattened
  config as params and backend/versions/device/commit/profile/dataset as tags;
* resume: a job whose config hash already has a finished (or diverged) run is skipped and
  its results are read back from MLflow; an interrupted job resumes its MLflow run and,
  through :meth:`Context.fit`, its last epoch checkpoint;
* failure: a NaN/Inf loss ends the job as FAILED "diverged at epoch e" and the sweep goes
  on; any other exception marks the run FAILED and the sweep goes on (exit code 1 at the
  end); Ctrl-C marks it FAILED and stops;
* the final "paper | ours | delta" table, printed and stored in MLflow and ``docs/results/``.

Studies that never call ``fit`` (init-time simulations, diagnostics) use the same
``Context`` for metrics and artifacts and simply return their results.

This module imports no backend at import time: the CLI selects the backend first.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from depthlab import report, tracking

RESULT_PREFIX = "result."


class Diverged(RuntimeError):
    """A job's loss became NaN or infinite."""

    def __init__(self, epoch: int):
        super().__init__(f"diverged at epoch {epoch}")
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


@dataclasses.dataclass(frozen=True)
class Study:
    """A study as data.

    Args:
        name: CLI name and MLflow experiment suffix ("vgg").
        profiles: profile name -> base config (frozen dataclass).
        tables: table id -> function(config, rows or None) -> jobs, in table order.
        execute: runs one job and returns its results (floats), e.g. final accuracies.
        report: builds the comparison rows from (table id, base config, outcomes).
        rows: table id -> all row keys, for ``--rows`` validation and ``--list``.
        tags: config -> extra run tags (dataset, lossy copy, ...).
        prepare: called with each job's config before any run starts; raises (e.g.
            ``DataNotFoundError``) to stop a table that cannot run, before MLflow sees it.
    """

    name: str
    profiles: Mapping[str, Any]
    tables: Mapping[str, Callable[[Any, Sequence[str] | None], list[Job]]]
    execute: Callable[[Job, Context], Mapping[str, float]]
    report: Callable[[str, Any, list[Outcome]], list[report.Comparison]]
    rows: Mapping[str, Sequence[str]]
    tags: Callable[[Any], Mapping[str, str]] = lambda config: {}
    prepare: Callable[[Any], None] = lambda config: None


class Context:
    """What a running job may use: MLflow logging, its checkpoint folder, and :meth:`fit`."""

    def __init__(self, study: Study, job: Job, run_id: str, checkpoint_dir: Path,
                 echo: Callable[[str], None] = print):
        self.study = study
        self.job = job
        self.run_id = run_id
        self.checkpoint_dir = checkpoint_dir
        self.echo = echo

    log_metrics = staticmethod(tracking.log_metrics)
    log_figure = staticmethod(tracking.log_figure)
    log_text = staticmethod(tracking.log_text)
    log_dict = staticmethod(tracking.log_dict)

    def metric_history(self, key: str) -> list[float]:
        """Values of ``key`` logged so far in this job's run, by step (resumed runs too)."""
        from mlflow.tracking import MlflowClient

        history = MlflowClient().get_metric_history(self.run_id, key)
        by_step = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
        return [by_step[s] for s in sorted(by_step)]

    def fit(
        self,
        model: Any,
        train: Any,
        *,
        epochs: int,
        validation: Any = None,
        callbacks: Sequence[Any] = (),
        best_monitor: str | None = None,
        steps_per_epoch: int | None = None,
        backup_every_s: float = 60.0,
    ) -> dict[str, list[float]]:
        """Train with ``model.fit``, resumable per epoch, and return the per-epoch metrics.

        Adds the runner's callbacks to the study's: a backup in this job's checkpoint
        folder (:class:`~depthlab.callbacks.backup.ThrottledBackup`, at an epoch end once
        ``backup_every_s`` have passed since the last one; an interrupted job resumes from
        it), one progress line and one MLflow ``log_metrics`` call per epoch, NaN/Inf detection
        (raises :class:`Diverged`), and, with ``best_monitor``, a best-so-far weights file
        for :meth:`load_best` (strictly greater than every earlier epoch, starting at 0).

        Returns:
            metric name -> per-epoch values of the whole run (resumed epochs included),
            read back from MLflow.
        """
        import keras

        from depthlab.callbacks.backup import ThrottledBackup
        from depthlab.callbacks.epoch_logger import EpochLogger

        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        logger = EpochLogger(epochs=epochs, label=self.job.label, echo=self.echo)
        extra: list[Any] = [
            ThrottledBackup(str(self.checkpoint_dir / "backup"), every_s=backup_every_s),
            logger,
        ]
        if best_monitor is not None:
            earlier = self.metric_history(best_monitor)
            best = keras.callbacks.ModelCheckpoint(
                str(self.best_path),
                monitor=best_monitor,
                mode="max",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=max([0.0, *earlier]),
            )
            # Keras syncs the device every step unless every batch-end hook is async-safe;
            # with save_freq="epoch" this one only checks a counter there.
            best.async_safe = True
            extra.append(best)
        if hasattr(train, "epoch_callback"):  # batches follow fit's epoch, resumes too
            extra.insert(0, train.epoch_callback())
        model.fit(
            train,
            validation_data=validation,
            epochs=epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=[*callbacks, *extra],
            shuffle=False,  # the data orders itself from (seed, epoch): exact resume
            verbose=0,
        )
        if logger.diverged_at is not None:
            raise Diverged(logger.diverged_at)
        keys = ["loss", *logger.metric_names]
        return {k: self.metric_history(k) for k in dict.fromkeys(keys)}

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / "best.weights.h5"

    def load_best(self, model: Any) -> bool:
        """Load the best-epoch weights saved by :meth:`fit`; False if none was saved."""
        if not self.best_path.exists():
            return False
        model.load_weights(str(self.best_path))
        return True


def git_commit() -> str:
    """The repository's commit (with "+dirty" when the tree has changes), or "unknown"."""
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here,
                                capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, capture_output=True, text=True, timeout=5).stdout
        return (commit + ("+dirty" if dirty.strip() else "")) or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(
    study: Study,
    table: str,
    profile: str,
    *,
    config: Any,
    rows: Sequence[str] | None = None,
    results_dir: str | Path | None = "docs/results",
    echo: Callable[[str], None] = print,
) -> list[Outcome]:
    """Run (or resume) every job of one table and report it; return the outcomes.

    Args:
        study: the study definition.
        table: table id (a key of ``study.tables``).
        profile: profile name, recorded as a tag.
        config: the profile's config with the user's overrides applied.
        rows: row keys to run (None = all).
        results_dir: where the final table is written as Markdown and CSV (None: nowhere).
        echo: where progress lines go.
    """
    from depthlab import backend

    jobs = study.tables[table](config, rows)
    for job in jobs:
        study.prepare(job.config)
    env_tags = {**backend.describe(), "git_commit": git_commit(), "profile": profile,
                "study": study.name, "table": table, **study.tags(config)}
    experiment_id = tracking.experiment(f"depthlab-{study.name}")
    outcomes: list[Outcome] = []
    parent_name = f"{study.name} table {table} ({profile}, {env_tags['backend']})"
    echo(f"{parent_name}: {len(jobs)} job(s); MLflow store {tracking.store_root()}")
    with tracking.run(experiment_id, parent_name,
                      tags={**env_tags, "depthlab.kind": "table"}):
        for job in jobs:
            outcomes.append(_run_job(study, job, experiment_id, env_tags, echo))
        comparison = study.report(table, config, outcomes)
        _write_report(study, table, profile, env_tags, comparison, outcomes, results_dir, echo)
    return outcomes


def _run_job(study: Study, job: Job, experiment_id: str, env_tags: Mapping[str, str],
             echo: Callable[[str], None]) -> Outcome:
    digest = tracking.config_hash({"study": study.name, "job": job.key,
                                   "backend": env_tags["backend"],
                                   "config": dataclasses.asdict(job.config)})
    previous = tracking.find_runs(experiment_id, {tracking.TAG_CONFIG_HASH: digest})
    done = [r for r in previous
            if r.data.tags.get(tracking.TAG_STATUS) in ("finished", "diverged")]
    if done:
        found = done[0]
        echo(f"[{job.label}] already {found.data.tags[tracking.TAG_STATUS]} "
             f"(run {found.info.run_id[:8]}), skipped")
        return _outcome_from_run(job, found, skipped=True)
    resume_id = previous[0].info.run_id if previous else None
    checkpoint_dir = tracking.store_root() / "checkpoints" / digest
    tags = {**env_tags, tracking.TAG_CONFIG_HASH: digest, tracking.TAG_STATUS: "running",
            "job": job.key, "depthlab.kind": "job"}
    if resume_id:
        echo(f"[{job.label}] resuming run {resume_id[:8]}")
    seed = getattr(job.config, "seed", None)
    start = time.perf_counter()
    try:
        with tracking.run(experiment_id, job.label, tags=tags,
                          params=tracking.flatten(job.config), run_id=resume_id,
                          nested=True) as active:
            if seed is not None:
                import keras

                keras.utils.set_random_seed(int(seed))
            if resume_id is None:
                tracking.log_dict(dataclasses.asdict(job.config), "config.json")
            context = Context(study, job, active.info.run_id, checkpoint_dir, echo)
            try:
                results = dict(study.execute(job, context))
            except Diverged as error:
                echo(f"[{job.label}] {error}; run marked FAILED, sweep continues")
                tracking.log_metrics({"wall_time_s": time.perf_counter() - start}, step=0)
                tracking.set_status("diverged", str(error))
                return Outcome(job, "diverged", {}, active.info.run_id,
                               time.perf_counter() - start, str(error))
            wall = time.perf_counter() - start
            tracking.log_metrics({**{RESULT_PREFIX + k: v for k, v in results.items()},
                                  "wall_time_s": wall}, step=0)
            tracking.set_status("finished")
            run_id = active.info.run_id
    except KeyboardInterrupt:
        echo(f"[{job.label}] interrupted; run marked FAILED, resume by running again")
        raise
    except Exception as error:  # noqa: BLE001 - one failing row must not end the sweep
        import traceback

        echo(f"[{job.label}] FAILED: {type(error).__name__}: {error}\n"
             + "".join(traceback.format_exception(error)[-6:]).rstrip())
        return Outcome(job, "failed", {}, None, time.perf_counter() - start,
                       f"{type(error).__name__}: {error}")
    _clear_checkpoints(checkpoint_dir)
    return Outcome(job, "finished", results, run_id, wall)


def _outcome_from_run(job: Job, found: Any, skipped: bool) -> Outcome:
    status = found.data.tags.get(tracking.TAG_STATUS, "finished")
    results = {k[len(RESULT_PREFIX):]: v for k, v in found.data.metrics.items()
               if k.startswith(RESULT_PREFIX)}
    return Outcome(job, "skipped" if skipped and status == "finished" else status, results,
                   found.info.run_id, found.data.metrics.get("wall_time_s"),
                   found.data.tags.get("depthlab.status_message", ""))


def _clear_checkpoints(folder: Path) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _write_report(study: Study, table: str, profile: str, env_tags: Mapping[str, str],
                  rows: list[report.Comparison], outcomes: list[Outcome],
                  results_dir: str | Path | None, echo: Callable[[str], None]) -> None:
    title = (f"{study.name} table {table}, profile {profile}, backend {env_tags['backend']}, "
             f"device {env_tags['device']}")
    echo("\n" + title + "\n" + report.text_table(rows))
    failed = [o for o in outcomes if o.status in ("failed", "diverged")]
    for outcome in failed:
        echo(f"  {outcome.job.label}: {outcome.status} ({outcome.message})")
    walls = ", ".join(f"{o.job.key} {o.wall_time_s:.0f} s" for o in outcomes
                      if o.wall_time_s is not None and math.isfinite(o.wall_time_s))
    meta = "\n".join(f"- {k}: {v}" for k, v in sorted(env_tags.items()))
    markdown = (f"# {title}\n\n{report.markdown_table(rows)}\n\n"
                f"Wall time per job: {walls or '—'}\n\nEnvironment:\n{meta}\n")
    stem = f"{study.name}_table{table}_{profile}_{env_tags['backend']}"
    tracking.log_text(markdown, f"{stem}.md")
    tracking.log_text(report.csv_table(rows), f"{stem}.csv")
    if results_dir is not None:
        folder = Path(results_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.md").write_text(markdown)
        (folder / f"{stem}.csv").write_text(report.csv_table(rows))
        echo(f"table written to {folder / (stem + '.md')}")
    sys.stdout.flush()
