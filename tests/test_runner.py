"""The shared runner end to end on real MNIST (``tiny_study``): MLflow contents, reuse,
resume after a crash equal to an uninterrupted run, divergence that does not depend on a
kernel's NaN handling, checkpoints that survive damage, determinism."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tiny_study
from conftest import BACKEND
from mlflow.tracking import MlflowClient
from tiny_study import CRASH_AT, STUDY, TinyConfig

from depthlab import tracking
from depthlab.config import ConfigError
from depthlab.reproductions import runner


def _run(config: TinyConfig | None = None, rows=None, tmp=None, **kwargs):
    lines: list[str] = []
    outcomes = runner.run(STUDY, "t", "quick", config=config or TinyConfig(), rows=rows,
                          results_dir=tmp,
                          echo=lines.append, **kwargs)
    return outcomes, lines


def _csv(run_id: str, path: str, tmp: Path) -> str:
    return Path(MlflowClient().download_artifacts(run_id, path, str(tmp))).read_text()


def test_end_to_end_run_is_in_the_store(mlruns, tmp_path):
    (outcome,), lines = _run(tmp=tmp_path)
    assert outcome.status == "finished", outcome.message
    assert outcome.results["epochs_logged"] == 3
    assert outcome.results["weights_finite"] == 1.0
    assert any("epoch 3/3" in line and "loss" in line for line in lines)
    client = MlflowClient()
    run = client.get_run(outcome.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.params["lr"] == "0.05"
    for tag in ("backend", "keras_version", "framework_version", "device", "git_commit",
                "profile", "dataset", "data_digest", tracking.TAG_CONFIG_HASH):
        assert run.data.tags[tag], tag
    history = client.get_metric_history(outcome.run_id, "loss")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert history[-1].value == pytest.approx(outcome.results["final_loss"])
    assert {"lr", "accuracy", "epoch_time_s", "result/final_loss", "wall_time_s"} <= set(
        run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "notes")}
    assert artifacts == {"notes/hello.txt"}
    saved = client.download_artifacts(outcome.run_id, "config.json", str(tmp_path))
    assert json.loads(Path(saved).read_text()) == dataclasses.asdict(TinyConfig())
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        f"tiny_tablet_quick_{run.data.tags['backend']}.md"}
    report = (tmp_path / f"tiny_tablet_quick_{run.data.tags['backend']}.md").read_text()
    assert report.count("| a | loss |") == 1
    # each row says which run, commit and data made it
    assert f"| a | finished | {outcome.run_id[:8]} | {run.data.tags['git_commit']} | " \
           f"{run.data.tags['data_digest']} |" in report
    # the artifacts live under the store's folder, wherever the process ran from
    assert run.info.artifact_uri.startswith((mlruns / "artifacts").as_uri())
    assert not (tracking.store_root() / "checkpoints" / run.data.tags[
        tracking.TAG_CONFIG_HASH]).exists()


def test_finished_runs_are_reused_only_for_the_same_code_and_data(mlruns, tmp_path,
                                                                  monkeypatch):
    (first,), _ = _run()
    (again,), lines = _run()
    assert again.status == "skipped" and again.run_id == first.run_id
    assert again.results == pytest.approx(first.results)
    assert any("already finished" in line for line in lines)
    (other,), _ = _run(dataclasses.replace(TinyConfig(), lr=0.01))
    assert other.status == "finished" and other.run_id != first.run_id
    (rerun,), _ = _run(rerun=True)  # --rerun recomputes
    assert rerun.status == "finished" and rerun.run_id not in (first.run_id, other.run_id)
    # other data: the same arrays in another file (a new download, a repaired copy)
    folder = tmp_path / "data"
    folder.mkdir()
    with np.load(Path(tiny_study.data.path("mnist"))) as npz:
        np.savez(folder / "mnist.npz", **{k: npz[k] for k in npz.files})
    monkeypatch.setenv("DEPTHLAB_DATA_DIR", str(folder))
    (moved,), _ = _run()
    assert moved.status == "finished" and moved.data != first.data
    assert moved.results["final_loss"] == first.results["final_loss"]
    # other code: another commit recomputes too
    monkeypatch.setattr(runner, "git_commit", lambda: "0000000")
    (recoded,), _ = _run()
    assert recoded.status == "finished" and recoded.commit == "0000000"


def test_written_tables_leave_the_code_identity_clean(tmp_path):
    """A command writes its tables into the tracked docs/results; the next command must still
    see the same commit (else it would retrain every finished job), while a code edit shows."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    for folder in ("docs/results", "reproductions"):
        (tmp_path / folder).mkdir(parents=True)
    table = tmp_path / "docs" / "results" / "t_quick_torch.md"
    code = tmp_path / "reproductions" / "study.py"  # a nested file: the patterns match any depth
    table.write_text("| a | 1 |\n")
    code.write_text("LR = 0.1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "init")
    head = git("rev-parse", "--short", "HEAD").strip()
    table.write_text("| a | 2 |\n")
    assert runner.git_commit(tmp_path) == head
    code.write_text("LR = 0.2\n")
    edited = runner.git_commit(tmp_path)
    assert edited.startswith(head + "+dirty.")
    code.write_text("LR = 0.3\n")
    assert runner.git_commit(tmp_path) not in (head, edited)


def test_user_overrides_win_over_row_values_or_are_refused():
    config = TinyConfig()
    (job,) = runner.expand(STUDY, "t", config, ["a"], {"lr": 0.2})
    assert job.config.lr == 0.2 and job.label == "a (--set)"
    fixed = dataclasses.replace(STUDY, fixed={"t": ("lr",)})
    with pytest.raises(ConfigError, match="set by each row of table t"):
        runner.expand(fixed, "t", config, None, {"lr": 0.2})
    with pytest.raises(ConfigError, match="epochs=0: must be a finite number > 0"):
        dataclasses.replace(config, epochs=0)
    with pytest.raises(ConfigError, match="lr=nan: must be a finite number > 0"):
        dataclasses.replace(config, lr=math.nan)


def _record(outcome: runner.Outcome, tmp: Path) -> dict:
    """What a run left: results, per-step metric histories, the gradient artifacts."""
    client = MlflowClient()
    out = {"results": outcome.results}
    for key in ("loss", "accuracy", "grad/global_norm"):
        out[key] = sorted((m.step, m.value) for m in client.get_metric_history(
            outcome.run_id, key))
    for name in ("step_norms", "epoch_last_norm"):
        text = _csv(outcome.run_id, f"gradients/{name}.csv", tmp / outcome.run_id)
        out[name] = np.loadtxt(text.splitlines(), delimiter=",", skiprows=1)
    return out


def test_a_resumed_run_equals_an_uninterrupted_one(mlruns, tmp_path, monkeypatch,
                                                   _migrated_store):
    config = dataclasses.replace(TinyConfig(), capture=True, best=True)
    monkeypatch.setitem(CRASH_AT, "epoch", 1)
    (crashed,), _ = _run(config)
    assert crashed.status == "failed" and "simulated crash at epoch 1" in crashed.message
    failed = tracking.find_runs(tracking.experiment("depthlab-tiny"),
                                {"depthlab.status": "failed"})
    assert len(failed) == 1 and failed[0].info.status == "FAILED"
    monkeypatch.setitem(CRASH_AT, "epoch", -1)
    (resumed,), lines = _run(config)
    assert any("resuming run" in line for line in lines)
    assert any("resumed after epoch 1" in line for line in lines)
    assert resumed.status == "finished" and resumed.run_id == failed[0].info.run_id
    assert MlflowClient().get_run(resumed.run_id).info.status == "FINISHED"
    assert resumed.results["steps"] == 12 and resumed.results["best_loaded"] == 1.0
    # the same job, never interrupted, in a second store
    a = _record(resumed, tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(_migrated_store, other / "mlflow.db")
    monkeypatch.setenv("DEPTHLAB_MLRUNS", str(other))
    (whole,), _ = _run(config)
    b = _record(whole, tmp_path)
    assert a["results"] == pytest.approx(b["results"], rel=1e-6)
    for key in ("loss", "accuracy", "grad/global_norm"):
        assert [s for s, _ in a[key]] == [s for s, _ in b[key]], key  # each step once
        assert [v for _, v in a[key]] == pytest.approx([v for _, v in b[key]], rel=1e-5), key
    for key in ("step_norms", "epoch_last_norm"):
        assert a[key].shape == b[key].shape and np.allclose(a[key], b[key], rtol=1e-5), key


def test_a_job_of_two_fits_resumes_each_from_its_own_backup(mlruns, tmp_path, monkeypatch,
                                                          _migrated_store):
    config = dataclasses.replace(TinyConfig(), fits=2)
    monkeypatch.setitem(CRASH_AT, "epoch", 1)  # in the second fit
    (crashed,), _ = _run(config)
    assert crashed.status == "failed"
    monkeypatch.setitem(CRASH_AT, "epoch", -1)
    (resumed,), lines = _run(config)
    assert resumed.status == "finished"
    assert sum("resumed after epoch" in line for line in lines) == 2  # fit 1 at 3, fit 2 at 1
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(_migrated_store, other / "mlflow.db")
    monkeypatch.setenv("DEPTHLAB_MLRUNS", str(other))
    (whole,), _ = _run(config)
    assert resumed.results["final_loss"] == pytest.approx(whole.results["final_loss"], rel=1e-6)
    assert resumed.results["steps"] == whole.results["steps"] == 12


def test_backups_are_throttled_and_a_resume_without_one_starts_over(mlruns, monkeypatch):
    """With an interval longer than the run only the last epoch is backed up: a crash
    before it trains from epoch 0 again, in the same MLflow run, each epoch logged once."""
    monkeypatch.setitem(CRASH_AT, "epoch", 1)
    config = dataclasses.replace(TinyConfig(), backup_every_s=3600.0)
    (crashed,), _ = _run(config)
    assert crashed.status == "failed"
    assert list((tracking.store_root() / "checkpoints").rglob("*.weights.h5")) == []
    monkeypatch.setitem(CRASH_AT, "epoch", -1)
    (resumed,), _ = _run(config)
    assert resumed.status == "finished"
    steps = sorted(m.step for m in MlflowClient().get_metric_history(resumed.run_id, "loss"))
    assert steps == [0, 1, 2]  # epoch 0 trained again, logged once
    assert resumed.results["epochs_logged"] == 3 and resumed.results["steps"] == 12


@pytest.mark.parametrize("poison, capture, reason", [
    ("nan", False, ""),  # the loss or the weights, as the CPU's kernels have it
    # NaN weights behind a layer that maps NaN to 0 (oneDNN's ReLU on some CPUs): the loss
    # stays finite at ~ln 10; the gradients' flag or the weights give it away.
    ("masked", True, "non-finite gradients"),
    ("masked", False, "is not finite"),
])
def test_divergence_marks_the_run_and_the_sweep_continues(mlruns, poison, capture, reason):
    config = dataclasses.replace(TinyConfig(), poison=poison, capture=capture, best=True)
    outcomes, lines = _run(config, rows=["a", "b"])
    assert [o.status for o in outcomes] == ["diverged", "diverged"]
    message = outcomes[0].message
    assert message.startswith("diverged at epoch 1: ") and reason in message, message
    assert any("epoch 1/3" in line for line in lines)  # counted as the progress line counts
    run = MlflowClient().get_run(outcomes[0].run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["depthlab.status"] == "diverged"
    assert run.data.tags["depthlab.status_message"] == message
    assert len(MlflowClient().get_metric_history(outcomes[0].run_id, "loss")) == 1
    # nothing of the diverged job is left to be reused: no backup, no best weights
    assert not list((tracking.store_root() / "checkpoints").rglob("*"))


def test_a_finite_but_absurd_loss_is_divergence(mlruns):
    config = dataclasses.replace(TinyConfig(), max_loss=1.0)  # MNIST starts near ln 10
    (outcome,), _ = _run(config)
    assert outcome.status == "diverged"
    assert "above the bound 1 (step 1)" in outcome.message


def test_damaged_checkpoints_are_discarded_with_a_warning(mlruns, monkeypatch):
    """A torn best-weights file or backup (a kill during a write by an older version, a
    bad disk) costs a warning and a retrain, never a job that fails on every rerun."""
    config = dataclasses.replace(TinyConfig(), best=True)
    monkeypatch.setitem(CRASH_AT, "epoch", config.epochs)  # after fit: every epoch backed up
    _run(config)
    folder = next((tracking.store_root() / "checkpoints").iterdir())
    best = folder / "best.weights.h5"
    best.write_bytes(best.read_bytes()[:100])  # torn (the backup's copy is the same file)
    monkeypatch.setitem(CRASH_AT, "epoch", -1)
    (outcome,), lines = _run(config)
    assert outcome.status == "finished", outcome.message
    assert outcome.results["best_loaded"] == 0.0
    assert any("best.weights.h5 cannot be read" in line and "discarded" in line
               for line in lines)
    # a torn backup: discarded, the job starts over and finishes
    monkeypatch.setitem(CRASH_AT, "epoch", 1)
    config = dataclasses.replace(config, lr=0.04)
    _run(config)
    (backup,) = (tracking.store_root() / "checkpoints").rglob("state.weights.h5")
    backup.write_bytes(b"")
    monkeypatch.setitem(CRASH_AT, "epoch", -1)
    (outcome,), lines = _run(config)
    assert outcome.status == "finished" and outcome.results["steps"] == 12
    assert any("cannot be read" in line and "discarded" in line for line in lines)


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


def test_arrays_precision_memory_and_the_kept_model(mlruns, tmp_path):
    """A job's arrays come back (also when reused), its precision policy holds for it and
    is reset after, an out-of-memory error is reported as such and the sweep goes on, and
    the trained model is kept as an artifact that reloads."""
    import keras

    from depthlab.reproductions.runner import ARRAYS_FILE

    config = dataclasses.replace(TinyConfig(), precision="mixed_bfloat16")
    (first,), _ = _run(config)
    assert first.status == "finished" and first.results["bf16"] == 1.0
    assert keras.mixed_precision.dtype_policy().name == "float32"  # reset after the job
    assert first.arrays["first_layer_weights"].shape == (32, 10)
    (again,), _ = _run(config)
    assert again.status == "skipped"
    np.testing.assert_array_equal(again.arrays["first_layer_weights"],
                                  first.arrays["first_layer_weights"])
    client = MlflowClient()
    assert ARRAYS_FILE in {a.path for a in client.list_artifacts(first.run_id)}
    model = keras.saving.load_model(client.download_artifacts(first.run_id, "model/model.keras",
                                                              str(tmp_path)))
    np.testing.assert_array_equal(model.layers[-1].get_weights()[0],
                                  first.arrays["first_layer_weights"])
    outcomes, lines = _run(dataclasses.replace(TinyConfig(), oom=True), rows=["a", "b"])
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert outcomes[0].message.startswith("out of memory")
    assert any("FAILED: out of memory" in line for line in lines)
    run = client.get_run(outcomes[0].run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["depthlab.status_message"].startswith("out of memory")


def test_overlapping_splits_are_refused_before_any_run(mlruns):
    overlap = dataclasses.replace(STUDY, splits=lambda config: {
        "train": ("mnist:train", np.arange(100)), "val": ("mnist:train", np.arange(90, 120)),
        "test": ("mnist:test", np.arange(100))})
    with pytest.raises(ConfigError, match="10 images are in both its train and val sets"):
        runner.run(overlap, "t", "quick", config=TinyConfig(), results_dir=None)
    assert not tracking.find_runs(tracking.experiment("depthlab-tiny"), {})


def test_every_study_keeps_train_val_and_test_disjoint():
    """Every profile and table of every study the CLI knows: no image in two parts."""
    import importlib

    from depthlab import cli, data

    checked = 0
    for name, module in cli.STUDIES.items():
        study = importlib.import_module(module).STUDY
        for profile, config in study.profiles.items():
            for table in study.tables:
                for job in runner.expand(study, table, config, profile=profile):
                    if not study.datasets(job.config):
                        continue  # synthetic inputs, drawn per sample: no data set to split
                    assert study.splits is not None, f"{name} reads data but declares no splits"
                    runner.check_splits(study, job)  # raises ConfigError on an overlap
                    assert {"train", "test"} <= set(study.splits(job.config)), job.key
                    checked += 1
    assert checked > 0
    # the VGG quick set is the first 2,048 training images, which hold 95 coursework
    # validation images: its validation part leaves them out
    vgg = importlib.import_module(cli.STUDIES["vgg"])
    quick = vgg.split_indices(vgg.QUICK)
    coursework_val = data.cifar_indices("val", "coursework")
    assert np.intersect1d(coursework_val, np.arange(2048)).size == 95
    assert quick["val"][1].min() >= 2048 and len(quick["val"][1]) == 500


def test_data_files_too_large_for_the_results_folder_stay_in_mlflow(mlruns, tmp_path):
    """A figure's CSV above RESULTS_TEXT_LIMIT goes to the parent run only; the results
    folder (docs/results, in git) gets the table, the small files and a line saying where."""
    big, small = "x" * (runner.RESULTS_TEXT_LIMIT + 1), "a,b\n1,2\n"
    study = dataclasses.replace(STUDY, figures=lambda table, config, outcomes, profile: {
        "big.csv": big, "small.csv": small})
    outcomes = runner.run(study, "t", "quick", config=TinyConfig(epochs=1), results_dir=tmp_path,
                          echo=lambda line: None)
    stem = f"tiny_tablet_quick_{BACKEND}"
    assert (tmp_path / f"{stem}_small.csv").read_text() == small
    assert not (tmp_path / f"{stem}_big.csv").exists()
    assert "`big.csv` (1.0 MiB) is kept only in MLflow" in (tmp_path / f"{stem}.md").read_text()
    parent = tracking.get_run(outcomes[0].run_id).data.tags["mlflow.parentRunId"]
    assert _csv(parent, "figures/big.csv", tmp_path / "dl") == big
