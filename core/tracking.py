"""The one MLflow helper: store location, runs, batched metrics, artifacts (SPEC §0.2).

Everything depthlab sends to MLflow goes through this module, so the store layout, the
1000-metrics-per-call limit and the tag set are handled once.

Store: ``sqlite:///<root>/mlflow.db`` with artifacts under ``<root>/artifacts`` where
``<root>`` is ``$DEPTHLAB_MLRUNS`` or ``./mlruns``. MLflow 3.17 refuses a plain file store,
and an experiment created without an explicit artifact location would scatter artifacts
into the current directory, so experiments are always created with one.

Functions that log act on the active run and do nothing when there is none, so layers
and callbacks can be used without MLflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

MAX_METRICS_PER_CALL = 1000  # MLflow's log_batch limit
MAX_PARAM_LENGTH = 6000  # MLflow 3.x param value limit

# Tags every run carries (SPEC §0.2); values come from depthlab.backend.describe etc.
TAG_CONFIG_HASH = "depthlab.config_hash"
TAG_STATUS = "depthlab.status"  # "finished" | "diverged" | "failed" | "running"


def store_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the SQLite store and the artifacts."""
    root = root or os.environ.get("DEPTHLAB_MLRUNS", "mlruns")
    return Path(root).resolve()


def configure(root: str | os.PathLike | None = None) -> str:
    """Point MLflow at the depthlab store (created if missing) and return its URI."""
    folder = store_root(root)
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    return uri


def experiment(name: str, root: str | os.PathLike | None = None) -> str:
    """Get or create an experiment whose artifacts live under the store's folder."""
    configure(root)
    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = (store_root(root) / "artifacts" / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


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


def find_runs(experiment_id: str, tags: Mapping[str, str]) -> list[mlflow.entities.Run]:
    """Runs of an experiment whose tags equal ``tags``, newest first."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    return MlflowClient().search_runs(
        [experiment_id], filter_string=query, order_by=["attributes.start_time DESC"]
    )


@contextlib.contextmanager
def run(
    experiment_id: str,
    name: str,
    *,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    run_id: str | None = None,
    nested: bool = False,
) -> Iterator[mlflow.ActiveRun]:
    """Start (or resume, with ``run_id``) a run; a run left by an exception ends FAILED.

    The body records its outcome with :func:`set_status`; a "diverged" or "failed" status
    ends the run FAILED, anything else FINISHED. An exception (KeyboardInterrupt too)
    marks the run FAILED and is re-raised, so nothing is lost silently.
    """
    active = mlflow.start_run(
        run_id=run_id, experiment_id=experiment_id, run_name=name, nested=nested, tags=tags
    )
    try:
        if params and run_id is None:
            log_params(params)
        yield active
    except BaseException as error:
        import traceback

        mlflow.log_text(traceback.format_exc(), "error.txt")
        mlflow.set_tag(TAG_STATUS, "failed")
        mlflow.set_tag("depthlab.error", f"{type(error).__name__}: {error}"[:5000])
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    else:
        status = mlflow.get_run(active.info.run_id).data.tags.get(TAG_STATUS)
        failed = status in ("diverged", "failed")
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED if failed else RunStatus.FINISHED))


def set_status(status: str, message: str | None = None) -> None:
    """Record depthlab's status of the active run (and an explanation)."""
    if mlflow.active_run() is None:
        return
    mlflow.set_tag(TAG_STATUS, status)
    if message:
        mlflow.set_tag("depthlab.status_message", message)


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


def log_steps(rows: Mapping[int, Mapping[str, float]]) -> None:
    """Log the metrics of several steps ({step: {name: value}}) in as few calls as MLflow
    allows: what a callback gathers during an epoch goes out in one write at its end."""
    active = mlflow.active_run()
    if active is None:
        return
    import time

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, int(step))
             for step, metrics in rows.items() for k, v in metrics.items()]
    if not batch:
        return
    client = MlflowClient()
    for start in range(0, len(batch), MAX_METRICS_PER_CALL):
        client.log_batch(active.info.run_id, metrics=batch[start : start + MAX_METRICS_PER_CALL])


def log_figure(figure: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artifact (e.g. ``"plots/grad_flow.png"``)."""
    if mlflow.active_run() is not None:
        mlflow.log_figure(figure, artifact_file)


def log_text(text: str, artifact_file: str) -> None:
    """Log text (CSV, Markdown, JSON) as an artifact."""
    if mlflow.active_run() is not None:
        mlflow.log_text(text, artifact_file)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """Log a JSON-serialisable mapping as a JSON artifact."""
    log_text(json.dumps(data, indent=2, default=str), artifact_file)
