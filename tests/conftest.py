"""Shared test set-up: one backend per process (KERAS_BACKEND), real offline data, a
throw-away MLflow store per test that asks for one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
if "DEPTHLAB_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["DEPTHLAB_DATA_DIR"] = str(SHARED_DATA)

from depthlab import backend  # noqa: E402

backend.select()
backend.configure()

BACKEND = os.environ["KERAS_BACKEND"]


@pytest.fixture(scope="session")
def _migrated_store(tmp_path_factory) -> Path:
    """One empty, migrated SQLite store per session: creating one costs MLflow 10-20 s."""
    import mlflow
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("store")
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    MlflowClient().search_experiments()  # runs the schema migrations
    return root / "mlflow.db"


@pytest.fixture
def mlruns(tmp_path, monkeypatch, _migrated_store) -> Path:
    """An empty MLflow store (SQLite + artifacts) under tmp_path, made the default."""
    import shutil

    from depthlab import tracking

    root = tmp_path / "mlruns"
    root.mkdir()
    shutil.copy(_migrated_store, root / "mlflow.db")
    monkeypatch.setenv("DEPTHLAB_MLRUNS", str(root))
    tracking.configure(root)
    return root
