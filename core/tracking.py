"""The one MLflow helper: store location, runs, batched metrics, artifacts (SPEC §0.2).

Everything depthlab sends to MLflow goes through this module, so the store layout, the
1000-metrics-per-call limit and the tag set are handled once.

Store: ``sqlite:///<root>/mlflow.db`` with artifacts under ``<root>/artifacts`` where
``<root>`` is ``$DEPTHLAB_MLRUNS`` or ``./mlruns``. MLflow 3.17 refuses a plain file store,
and an experiment created without an explicit artifact location would scatter artifacts
into the current directory, so experiments are always created with one.

Reliability (what a kill, a second command or a bad store must not break):

* :func:`check_store` proves the store usable in well under a second, before any
  training (a read-only folder or a garbage ``mlflow.db`` used to fail after minutes);
* the store's creation (MLflow's schema migrations) runs under a lock, so two first
  commands on a new store do not race;
* :func:`lock` gives the cross-process locks of jobs and tables; every run records the
  name of the lock its process holds (``depthlab.lock``), and :func:`sweep_dead_runs`
  marks a RUNNING run whose lock is free as KILLED: its process is gone;
* :func:`buffered` holds metrics back until :func:`flush`; the runner flushes when a
  backup is committed, so the store never holds epochs a resume would train again.

A tracking server (Ray executor, SPEC-less issue 20): when ``MLFLOW_TRACKING_URI`` is an
``http(s)`` URI, runs go to that server instead (experiments created there get the server's
artifact store); the local folder still holds the locks and the checkpoints.
:func:`serve` starts such a server over the local store for the workers of a
single-machine cluster. Every run records the host whose lock it names
(``depthlab.lock_host``): a sweep ends only the dead runs of its own host.

Functions that log act on the active run and do nothing when there is none, so layers
and callbacks can be used without MLflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

# MLflow 3 sends usage telemetry from a background thread: nothing leaves a researcher's
# machine unasked, and no thread races the training loop for it.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Against a server, MLflow prints two "View run ... at" lines per run end: depthlab's
# progress and table lines stay the output.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric, RunStatus, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from depthlab import files  # noqa: E402

MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit
MAX_PARAM_LENGTH = 6000  # MLflow 3.x param value limit

# Tags every run carries (SPEC §0.2); values come from depthlab.backend.describe etc.
TAG_CONFIG_HASH = "depthlab.config_hash"
TAG_STATUS = "depthlab.status"  # finished | diverged | failed | killed | running
TAG_LOCK = "depthlab.lock"  # the lock its process holds while the run is live
TAG_LOCK_HOST = "depthlab.lock_host"  # the machine whose store folder holds that lock
TAG_NOTE = "mlflow.note.content"  # a run's description in the UI (Markdown)
# The UI opens an experiment of this kind in its "Model training" view (runs, charts),
# not the GenAI traces overview.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


class StoreError(RuntimeError):
    """The tracking store cannot be used (one line, for the CLI)."""


def store_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the SQLite store and the artifacts."""
    root = root or os.environ.get("DEPTHLAB_MLRUNS", "mlruns")
    return Path(root).resolve()


def server_uri() -> str | None:
    """The tracking server runs go to (``MLFLOW_TRACKING_URI``, http or https), or None."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri if uri.startswith(("http://", "https://")) else None


def check_store(root: str | os.PathLike | None = None) -> Path:
    """Fail fast, before any training, when the store cannot be used.

    Checks that the folder can be created and written (a probe file), and that an existing
    ``mlflow.db`` is an SQLite database with MLflow's tables, or that the tracking server
    (:func:`server_uri`) answers; touches nothing else.

    Raises:
        StoreError: with a one-line reason.
    """
    folder = store_root(root)
    try:
        files.check_writable(folder, "MLflow store (DEPTHLAB_MLRUNS)")
    except OSError as error:
        raise StoreError(str(error)) from None
    if server_uri():
        _check_server(server_uri())
        return folder
    db = folder / "mlflow.db"
    if db.exists() and db.stat().st_size:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
                con.execute("select version_num from alembic_version").fetchall()
        except sqlite3.Error as error:
            raise StoreError(f"{db} is not an MLflow store ({error}); move it away or set "
                             "DEPTHLAB_MLRUNS to another folder") from None
    return folder


def _check_server(uri: str, timeout: float = 10.0) -> None:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as answer:
            if answer.status == 200:
                return
            reason = f"HTTP {answer.status}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = str(getattr(error, "reason", error))
    raise StoreError(f"MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer: "
                     f"{reason}")


_CONFIGURED: set[str] = set()


def configure(root: str | os.PathLike | None = None) -> str:
    """Point MLflow at the depthlab store (created if missing) and return its URI.

    The first use in a process opens the store under the store lock, so that MLflow's
    schema migrations of a new store never run in two processes at once.
    """
    folder = store_root(root)
    folder.mkdir(parents=True, exist_ok=True)
    if server_uri():
        mlflow.set_tracking_uri(server_uri())
        return server_uri()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    if uri not in _CONFIGURED:
        # MLflow announces a new store's migrations on stderr: keep stderr for errors.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        with files.FileLock(folder / "locks" / "store.lock"):
            MlflowClient().search_experiments(max_results=1)
        _CONFIGURED.add(uri)
    return uri


def lock(name: str) -> files.FileLock:
    """The store's cross-process lock ``name`` (a job's or a table's; not yet taken)."""
    return files.FileLock(store_root() / "locks" / f"{name}.lock")


def experiment(name: str, root: str | os.PathLike | None = None) -> str:
    """Get or create an experiment whose artifacts live under the store's folder."""
    configure(root)
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is None:
        # On a server, its artifact store (which every worker reaches); else a folder here.
        location = None if server_uri() else (store_root(root) / "artifacts" / name).as_uri()
        try:
            return client.create_experiment(name, artifact_location=location,
                                            tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another command
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if not EXPERIMENT_KIND.items() <= found.tags.items():  # a store from an older version
        for key, value in EXPERIMENT_KIND.items():
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a dataclass / mapping into ``{"a.b": "value"}`` strings for MLflow params."""
    import dataclasses

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    out: dict[str, str] = {}
    if isinstance(config, Mapping):
        for key, value in config.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    text = json.dumps(config) if isinstance(config, list | tuple) else str(config)
    out[prefix.rstrip(".")] = text[:MAX_PARAM_LENGTH]
    return out


def config_hash(config: Any) -> str:
    """A stable short hash of a config, used to recognise finished runs in a sweep."""
    blob = json.dumps(flatten(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def find_runs(experiment_id: str, tags: Mapping[str, str],
              status: str | None = None) -> list[mlflow.entities.Run]:
    """Runs of an experiment whose tags equal ``tags`` (and MLflow status), newest first."""
    query = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if status is not None:
        query.append(f"attributes.status = '{status}'")
    return MlflowClient().search_runs(
        [experiment_id], filter_string=" and ".join(query),
        order_by=["attributes.start_time DESC"], max_results=50_000,
    )


def experiments() -> list[mlflow.entities.Experiment]:
    """Every experiment of the store."""
    configure()
    return MlflowClient().search_experiments()


def get_run(run_id: str) -> mlflow.entities.Run:
    """One run as the store holds it."""
    return MlflowClient().get_run(run_id)


def metric_history(run_id: str, key: str) -> list[float]:
    """Values of ``key`` in a run, by step; a step logged twice keeps its later value."""
    history = MlflowClient().get_metric_history(run_id, key)
    by_step = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
    return [by_step[s] for s in sorted(by_step)]


def sweep_dead_runs(experiment_id: str) -> list[str]:
    """End the RUNNING runs whose process is gone (their lock is free); return their ids.

    A run whose process recorded it finished before dying ends FINISHED, any other KILLED
    (tag ``depthlab.status=killed``); a job's next attempt resumes it.
    """
    ended = []
    for found in find_runs(experiment_id, {}, status="RUNNING"):
        name = found.data.tags.get(TAG_LOCK)
        if found.data.tags.get(TAG_LOCK_HOST, socket.gethostname()) != socket.gethostname():
            continue  # its lock is on another machine (a shared tracking server)
        probe = lock(name) if name else None
        if probe is None or not probe.acquire(blocking=False):
            continue  # alive, or not a depthlab run
        try:
            end_dead_run(found, "its process died (killed, or the machine stopped)")
            ended.append(found.info.run_id)
        finally:
            probe.release()
    return ended


@contextlib.contextmanager
def run(
    experiment_id: str,
    name: str,
    *,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    run_id: str | None = None,
    nested: bool = False,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume, with ``run_id``) a run; a run left by an exception ends FAILED.

    The body records its outcome with :func:`set_status`; a "diverged" or "failed" status
    ends the run FAILED, anything else FINISHED. An exception marks the run FAILED, an
    interruption (Ctrl-C, SIGTERM) KILLED, and is re-raised, so nothing is lost silently.
    ``parent_run_id`` nests the run under a run of another process (a Ray worker's job
    under its table).
    """
    if parent_run_id is not None:
        tags = {**(tags or {}), "mlflow.parentRunId": parent_run_id}
    active = mlflow.start_run(
        run_id=run_id, experiment_id=experiment_id, run_name=name, nested=nested, tags=tags
    )
    try:
        if params and run_id is None:
            log_params(params)
        yield active
    except BaseException as error:
        interrupted = isinstance(error, KeyboardInterrupt | SystemExit)
        with contextlib.suppress(Exception):  # the store itself may be what failed
            import traceback

            if not interrupted:
                mlflow.log_text(traceback.format_exc(), "error.txt")
            mlflow.set_tag(TAG_STATUS, "killed" if interrupted else "failed")
            mlflow.set_tag("depthlab.error", f"{type(error).__name__}: {error}"[:5000])
        status = RunStatus.KILLED if interrupted else RunStatus.FAILED
        try:
            mlflow.end_run(RunStatus.to_string(status))
        except Exception:  # noqa: BLE001 - leave it RUNNING; the next start sweeps it
            mlflow.tracking.fluent._active_run_stack.get().pop()
        raise
    else:
        status = mlflow.get_run(active.info.run_id).data.tags.get(TAG_STATUS)
        failed = status in ("diverged", "failed")
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))


def end_dead_run(found: mlflow.entities.Run, reason: str) -> None:
    """End a RUNNING run whose process is gone: FINISHED (or FAILED) when it recorded its
    outcome before dying, else KILLED with ``reason``; a job's next attempt resumes it."""
    recorded = found.data.tags.get(TAG_STATUS)
    if recorded in ("finished", "diverged"):  # died between its result and its end
        MlflowClient().set_terminated(found.info.run_id,
                                      "FINISHED" if recorded == "finished" else "FAILED")
    else:
        end_run(found.info.run_id, "KILLED", "killed", reason)


def active_run_id() -> str | None:
    """The id of this process's active run, if any."""
    active = mlflow.active_run()
    return active.info.run_id if active is not None else None


def end_run(run_id: str, status: str, depthlab_status: str, message: str) -> None:
    """End a run another process left (MLflow ``status``), with depthlab's status and why."""
    client = MlflowClient()
    client.log_batch(run_id, tags=[RunTag(TAG_STATUS, depthlab_status),
                                   RunTag("depthlab.status_message", message)])
    client.set_terminated(run_id, status)


def set_status(status: str, message: str | None = None) -> None:
    """Record depthlab's status of the active run (and an explanation)."""
    if mlflow.active_run() is None:
        return
    mlflow.set_tag(TAG_STATUS, status)
    if message:
        mlflow.set_tag("depthlab.status_message", message)


def set_tags(tags: Mapping[str, str]) -> None:
    """Set tags on the active run in one call."""
    if mlflow.active_run() is not None:
        mlflow.set_tags(dict(tags))


def set_run_tags(run_id: str | None, tags: Mapping[str, str]) -> None:
    """Set tags on a run that may have ended (nothing when ``run_id`` is None)."""
    if run_id is not None:
        with contextlib.suppress(Exception):  # the store itself may be what failed
            MlflowClient().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def finish(metrics: Mapping[str, float], status: str, message: str | None = None,
           tags: Mapping[str, str] | None = None) -> None:
    """A job's results, wall time and status in one write to the active run (step 0)."""
    active = mlflow.active_run()
    if active is None:
        return
    now = int(time.time() * 1000)
    all_tags = {TAG_STATUS: status, **(tags or {})}
    if message:
        all_tags["depthlab.status_message"] = message
    MlflowClient().log_batch(
        active.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        tags=[RunTag(k, str(v)) for k, v in all_tags.items()])


def log_arrays(arrays: Mapping[str, Any], artifact_file: str) -> None:
    """Log named numpy arrays as one ``.npz`` artifact of the active run."""
    import tempfile

    import numpy as np

    if mlflow.active_run() is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / artifact_file
        np.savez_compressed(file, **{k: np.asarray(v) for k, v in arrays.items()})
        mlflow.log_artifact(str(file))


def load_arrays(run_id: str, artifact_file: str) -> dict[str, Any]:
    """The arrays :func:`log_arrays` stored in a run."""
    import numpy as np

    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_file)
    with np.load(path, allow_pickle=False) as saved:
        return {k: saved[k] for k in saved.files}


def log_model(model: Any, artifact_dir: str = "model") -> None:
    """Save a Keras model as ``<artifact_dir>/model.keras`` of the active run (reloadable
    with ``keras.saving.load_model`` once depthlab's layers are imported)."""
    import math
    import tempfile

    if mlflow.active_run() is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        size = sum(math.prod(v.shape) * 4 for v in model.weights)
        files.ensure_space(tmp, 3 * size, "saving the trained model")
        file = Path(tmp) / "model.keras"
        from depthlab.backend import native_stderr_silenced

        with native_stderr_silenced():  # Keras may load TensorFlow here, which talks
            model.save(file)
        mlflow.log_artifact(str(file), artifact_dir)


def log_params(params: Mapping[str, str]) -> None:
    """Log params in batches (MLflow caps one call at 100 params)."""
    if mlflow.active_run() is None:
        return
    items = list(params.items())
    for start in range(0, len(items), 100):
        mlflow.log_params(dict(items[start : start + 100]))


def log_metrics(metrics: Mapping[str, float], step: int) -> None:
    """Log many metrics for one step in as few calls as MLflow allows (≤ 1000 per call)."""
    log_steps({step: metrics})


class MetricBuffer:
    """Metrics held back until a flush (see :func:`buffered`).

    It is also a part of the training backup (:class:`depthlab.callbacks.backup.Backup`):
    the rows pending when a backup is committed travel in it, and a resume writes those
    the store lacks, so the store ends up with each epoch exactly once.
    """

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.rows: dict[int, dict[str, float]] = {}

    def add(self, rows: Mapping[int, Mapping[str, float]]) -> None:
        for step, metrics in rows.items():
            self.rows.setdefault(int(step), {}).update(metrics)

    def flush(self) -> None:
        _write(self.run_id, self.rows)
        self.rows = {}

    def backup_state(self, folder: Path) -> dict:
        return {"rows": {str(k): v for k, v in self.rows.items()}}

    def restore_state(self, folder: Path, state: Mapping) -> None:
        rows = {int(k): v for k, v in state.get("rows", {}).items()}
        self.rows = {}
        if not rows:
            return
        step = max(rows)
        key = next(iter(rows[step]))
        logged = {m.step for m in MlflowClient().get_metric_history(self.run_id, key)}
        if step not in logged:  # the process died between the commit and the flush
            _write(self.run_id, rows)


_BUFFER: MetricBuffer | None = None


@contextlib.contextmanager
def buffered() -> Iterator[MetricBuffer | None]:
    """Hold the active run's metrics in a :class:`MetricBuffer` until :func:`flush`.

    Written on a normal exit, dropped on an exception: what was not yet flushed belongs to
    epochs an interrupted run trains again.
    """
    global _BUFFER
    active = mlflow.active_run()
    if active is None or _BUFFER is not None:
        yield _BUFFER
        return
    _BUFFER = MetricBuffer(active.info.run_id)
    try:
        yield _BUFFER
        _BUFFER.flush()
    finally:
        _BUFFER = None


def flush() -> None:
    """Write the metrics :func:`buffered` holds (nothing when none are held)."""
    if _BUFFER is not None:
        _BUFFER.flush()


def log_steps(rows: Mapping[int, Mapping[str, float]]) -> None:
    """Log the metrics of several steps ({step: {name: value}}) in as few calls as MLflow
    allows: what a callback gathers during an epoch goes out in one write at its end (or
    into the buffer while :func:`buffered` holds them)."""
    active = mlflow.active_run()
    if active is None:
        return
    if _BUFFER is not None and _BUFFER.run_id == active.info.run_id:
        _BUFFER.add(rows)
        return
    _write(active.info.run_id, rows)


def _write(run_id: str, rows: Mapping[int, Mapping[str, float]]) -> None:
    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, int(step))
             for step, metrics in rows.items() for k, v in metrics.items()]
    client = MlflowClient()
    for start in range(0, len(batch), MAX_METRICS_PER_CALL):
        client.log_batch(run_id, metrics=batch[start : start + MAX_METRICS_PER_CALL])


def log_figure(figure: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artifact (e.g. ``"plots/grad_flow.png"``)."""
    if mlflow.active_run() is not None:
        mlflow.log_figure(figure, artifact_file)


def log_file(path: str | os.PathLike, artifact_dir: str | None = None) -> None:
    """Log a local file as an artifact (under ``artifact_dir``)."""
    if mlflow.active_run() is not None:
        mlflow.log_artifact(str(path), artifact_dir)


def log_text(text: str, artifact_file: str) -> None:
    """Log text (CSV, Markdown, JSON) as an artifact."""
    if mlflow.active_run() is not None:
        mlflow.log_text(text, artifact_file)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """Log a JSON-serialisable mapping as a JSON artifact."""
    log_text(json.dumps(data, indent=2, default=str), artifact_file)


# Runs a command in its own process group and ends the group when the process that started
# it is gone, however it went (kill -9 included): no server outlives its command.
_WATCHDOG = """
import os, signal, subprocess, sys, time
child = subprocess.Popen(sys.argv[2:])
while child.poll() is None and os.getppid() == int(sys.argv[1]):
    time.sleep(0.5)
if child.poll() is None:
    os.killpg(0, signal.SIGTERM)
"""


@contextlib.contextmanager
def serve(root: str | os.PathLike | None = None, host: str = "127.0.0.1",
          timeout: float = 120.0) -> Iterator[str]:
    """An MLflow tracking server over the local store, for the workers of one machine;
    yields its URI and stops it on exit. Its log is ``<store>/server.log``.

    Artifacts stay where the store's experiments put them (folders under the store), which
    the workers of this machine write directly; the server carries runs, params, metrics
    and tags, so that many worker processes never write one SQLite file themselves.
    """
    configure(root)  # the store exists and is migrated before the server opens it
    folder = store_root(root)
    with socket.socket() as probe:  # a free port
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    uri = f"http://{host}:{port}"
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    env.pop("MLFLOW_TRACKING_URI", None)
    log = open(folder / "server.log", "ab")  # noqa: SIM115 - closed below
    with warnings.catch_warnings():  # JAX warns of any fork; this one execs at once
        warnings.simplefilter("ignore", RuntimeWarning)
        server = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), sys.executable, "-m", "mlflow",
             "server", "--backend-store-uri",
             f"sqlite:///{folder / 'mlflow.db'}", "--default-artifact-root",
             (folder / "artifacts").as_uri(), "--host", host, "--port", str(port),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _check_server(uri, timeout=2.0)
                break
            except StoreError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise StoreError(f"the MLflow server over {folder} did not start (see "
                                     f"{folder / 'server.log'})") from None
                time.sleep(0.25)
        yield uri
    finally:
        import signal

        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # uvicorn and its workers
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
