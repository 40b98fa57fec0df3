"""The shared runner end to end on real MNIST: MLflow contents, resume-skip, resume of an
interrupted run, divergence, determinism. Uses a two-layer net so each fit takes seconds."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from depthlab import data, tracking
from depthlab.report import Comparison
from depthlab.reproductions import runner


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    epochs: int = 3
    images: int = 256
    lr: float = 0.05
    poison: bool = False  # a NaN pixel: the loss is NaN from the first step
    seed: int = 0
    backup_every_s: float = 0.0  # back up every epoch (the runner's default is 60 s)


# An interrupted job: raise at the end of this epoch. Kept out of the config so the
# resumed job has the same config hash as the crashed one.
CRASH_AT = {"epoch": -1}


class Crash(RuntimeError):
    pass


class CrashAt(keras.callbacks.Callback):
    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise Crash(f"simulated crash at epoch {epoch}")


def execute(job: runner.Job, ctx: runner.Context) -> dict[str, float]:
    config = job.config
    mnist = data.mnist()
    x = mnist.train.x[: config.images].astype("float32")
    if config.poison:
        x[0, 0, 0] = np.nan
    y = mnist.train.y[: config.images]
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(config.lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    train = data.ImageBatches(x, y, batch_size=64, shuffle=True, seed=config.seed)
    callbacks = [CrashAt(CRASH_AT["epoch"])]
    history = ctx.fit(model, train, epochs=config.epochs, callbacks=callbacks,
                      backup_every_s=config.backup_every_s)
    ctx.log_text("hello", "notes/hello.txt")
    return {"final_loss": history["loss"][-1], "epochs_logged": len(history["loss"])}


def report(table, config, outcomes):
    return [Comparison(o.job.label, "loss", None, o.results.get("final_loss")) for o in outcomes]


def jobs(config, rows):
    return [runner.Job(key, key, config) for key in rows or ["a"]]


STUDY = runner.Study(name="tiny", profiles={"quick": TinyConfig()}, tables={"t": jobs},
                     execute=execute, report=report, rows={"t": ["a", "b"]},
                     tags=lambda config: {"dataset": "mnist"})


def _run(config=TinyConfig(), rows=None, tmp=None):
    lines: list[str] = []
    outcomes = runner.run(STUDY, "t", "quick", config=config, rows=rows, results_dir=tmp,
                          echo=lines.append)
    return outcomes, lines


def test_end_to_end_run_is_in_the_store(mlruns, tmp_path):
    (outcome,), lines = _run(tmp=tmp_path)
    assert outcome.status == "finished", outcome.message
    assert outcome.results["epochs_logged"] == 3
    assert any("epoch 3/3" in line and "loss" in line for line in lines)
    client = MlflowClient()
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.params["lr"] == "0.05"
    for tag in ("backend", "keras_version", "framework_version", "device", "git_commit",
                "profile", "dataset", tracking.TAG_CONFIG_HASH):
        assert run.data.tags[tag], tag
    history = client.get_metric_history(outcome.run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert history[-1].value == pytest.approx(outcome.results["final_loss"])
    assert {"lr", "accuracy", "epoch_time_s", "result.final_loss", "wall_time_s"} <= set(
        run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "notes")}
    assert artifacts == {"notes/hello.txt"}
    saved = client.download_artifacts(outcome.run_id, "config.json", str(tmp_path))
    assert json.loads(Path(saved).read_text()) == dataclasses.asdict(TinyConfig())
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        f"tiny_tablet_quick_{run.data.tags['backend']}.md"}
    assert (tmp_path / f"tiny_tablet_quick_{run.data.tags['backend']}.md").read_text().count(
        "| a | loss |") == 1
    # the artifacts live under the store's folder, wherever the process ran from
    assert run.info.artifact_uri.startswith((mlruns / "artifacts").as_uri())


def test_finished_runs_are_skipped(mlruns):
    (first,), _ = _run()
    (again,), lines = _run()
    assert again.status == "skipped" and again.run_id == first.run_id
    assert again.results == pytest.approx(first.results)
    assert any("already finished" in line for line in lines)
    (other,), _ = _run(dataclasses.replace(TinyConfig(), lr=0.01))
    assert other.status == "finished" and other.run_id != first.run_id


def test_interrupted_run_resumes_from_its_last_epoch(mlruns, monkeypatch):
    monkeypatch.setitem(CRASH_AT, "epoch", 1)
    (crashed,), _ = _run()
    assert crashed.status == "failed" and "simulated crash at epoch 1" in crashed.message
    client = MlflowClient()
    failed = tracking.find_runs(tracking.experiment("depthlab-tiny"),
                                {"depthlab.status": "failed"})
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    monkeypatch.setitem(CRASH_AT, "epoch", -1)
    (resumed,), lines = _run()
    assert any("resuming run" in line for line in lines)
    assert resumed.status == "finished" and resumed.run_id == failed[0].info.run_id
    steps = sorted(m.step for m in client.get_metric_history(resumed.run_id, "loss"))
    assert steps == [0, 1, 2]  # epoch 0 restored from its checkpoint, not trained again
    assert resumed.results["epochs_logged"] == 3
    assert client.get_run(resumed.run_id).info.status == "FINISHED"


def test_backups_are_throttled_and_a_resume_without_one_starts_over(mlruns, monkeypatch):
    """With an interval longer than the run no backup is written: the resumed job trains
    from epoch 0 again (same MLflow run, epoch 0 logged twice, the later value kept)."""
    monkeypatch.setitem(CRASH_AT, "epoch", 1)
    config = dataclasses.replace(TinyConfig(), backup_every_s=3600.0)
    (crashed,), _ = _run(config)
    assert crashed.status == "failed"
    backups = list((tracking.store_root() / "checkpoints").rglob("*.weights.h5"))
    assert backups == []
    monkeypatch.setitem(CRASH_AT, "epoch", -1)
    (resumed,), _ = _run(config)
    assert resumed.status == "finished"
    steps = sorted(m.step for m in MlflowClient().get_metric_history(resumed.run_id, "loss"))
    assert steps == [0, 0, 1, 2]  # epoch 0 trained again (the crash came before 1 was logged)
    assert resumed.results["epochs_logged"] == 3


def test_divergence_marks_the_run_and_the_sweep_continues(mlruns):
    poisoned = dataclasses.replace(TinyConfig(), poison=True)
    outcomes, lines = _run(poisoned, rows=["a", "b"])
    assert [o.status for o in outcomes] == ["diverged", "diverged"]
    assert outcomes[0].message == "diverged at epoch 0"
    run = MlflowClient().get_run(outcomes[0].run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["depthlab.status"] == "diverged"
    assert run.data.tags["depthlab.status_message"] == "diverged at epoch 0"
    assert len(MlflowClient().get_metric_history(outcomes[0].run_id, "loss")) == 1


def test_same_seed_same_first_epoch_loss(mlruns, tmp_path, monkeypatch, _migrated_store):
    (first,), _ = _run(dataclasses.replace(TinyConfig(), epochs=1))
    other = tmp_path / "other"  # a second store: the first run must not be skipped
    other.mkdir()
    shutil.copy(_migrated_store, other / "mlflow.db")
    monkeypatch.setenv("DEPTHLAB_MLRUNS", str(other))
    tracking.configure(other)
    (second,), _ = _run(dataclasses.replace(TinyConfig(), epochs=1))
    assert second.status == "finished"
    assert second.results["final_loss"] == first.results["final_loss"]
    assert math.isfinite(first.results["final_loss"])
