"""VGG study (SPEC §3): quick claims Q1-Q4 through the runner, and the command end to end.

Q1 (init gradients) and Q4 (plain VGG38 stays at chance) run on every backend; Q2 and Q3
(VGG08 / BN+RC learn) cost more and are marked slow (README, "Tests").
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import BACKEND
from mlflow.tracking import MlflowClient

from depthlab.reproductions import runner, vgg

LN10 = math.log(10)


def _run(table: str, rows: list[str], **overrides) -> dict[str, runner.Outcome]:
    config = dataclasses.replace(vgg.QUICK, **overrides)
    outcomes = runner.run(vgg.STUDY, table, "quick", config=config, rows=rows,
                          overrides=overrides, results_dir=None)
    for outcome in outcomes:
        assert outcome.status == "finished", outcome.message
    return {o.job.key: o for o in outcomes}


def _verdicts(table: str, config, outcomes, profile: str = "quick") -> dict[str, bool]:
    """The report's claim lines: statement -> holds."""
    rows = vgg.STUDY.report(table, config, list(outcomes), profile)
    return {r.metric: r.notes.startswith("✓") for r in rows if r.row == "claim"}


def _convs(outcome: runner.Outcome) -> dict[str, float]:
    """The conv entries of an outcome's stored gradient flow (last epoch)."""
    return {k: v for k, v in vgg.flow(outcome).items() if "conv_" in k and "_bn_" not in k}


def test_q1_init_gradients_vanish_only_in_plain_vgg38(mlruns):
    """SPEC §3.5 Q1: one train-mode forward/backward on 100 images, all five models."""
    outcomes = _run("init", list(vgg.INIT_ROWS))
    plain = _convs(outcomes["vgg38"])
    assert len(plain) == 37
    early = {k: v for k, v in plain.items() if k == "input_conv_conv_0" or k.startswith("block_0_")}
    assert len(early) == 11 and max(early.values()) < 1e-10, early
    assert plain["reduction_block_2_conv_1"] > 1e-6
    for key, floor in (("vgg08", 1e-7), ("vgg38_rc", 1e-7), ("vgg38_bn", 1e-4),
                       ("vgg38_bnrc", 1e-4)):
        convs = _convs(outcomes[key])
        assert len(convs) == (7 if key == "vgg08" else 37)
        assert min(convs.values()) > floor, (key, min(convs, key=convs.get))
    verdicts = _verdicts("init", vgg.QUICK, outcomes.values())
    assert len(verdicts) == 6 and all(verdicts.values()), verdicts


def test_q4_plain_vgg38_stays_at_chance(mlruns):
    """SPEC §3.5 Q4: 20 steps; loss within ±0.05 of ln 10, first conv's gradient < 1e-10."""
    outcome = _run("1", ["vgg38"])["vgg38"]
    result = outcome.results
    assert result["steps"] == 20
    verdicts = _verdicts("1", vgg.QUICK, [outcome])
    assert len(verdicts) == 2 and all(verdicts.values()), verdicts
    assert abs(result["last10_loss"] - LN10) <= 0.05, result["last10_loss"]
    assert vgg.flow(outcome)["input_conv_conv_0"] < 1e-10
    assert result["params"] == 333_226  # 10-class head (SPEC §3.7 item 1)


@pytest.mark.slow
def test_q2_vgg08_learns(mlruns):
    """SPEC §3.5 Q2: 300 steps; last-10 mean loss ≤ ln 10 - 0.25."""
    outcome = _run("1", ["vgg08"])["vgg08"]
    result = outcome.results
    assert list(_verdicts("1", vgg.QUICK, [outcome]).values()) == [True]
    assert result["steps"] == 300
    assert result["last10_loss"] <= LN10 - 0.25, result["last10_loss"]


@pytest.mark.slow
def test_q3_bn_rc_learns(mlruns):
    """SPEC §3.5 Q3: 100 steps; last-10 mean loss ≤ ln 10 - 0.15."""
    outcome = _run("1", ["vgg38_bnrc_1e-3"])["vgg38_bnrc_1e-3"]
    result = outcome.results
    assert list(_verdicts("1", vgg.QUICK, [outcome]).values()) == [True]
    assert result["steps"] == 100
    assert result["last10_loss"] <= LN10 - 0.15, result["last10_loss"]


@pytest.mark.once  # the CLI path per backend: the Marion and Oyedotun end-to-end tests
def test_command_end_to_end_and_store_contents(tmp_path):
    """The user's command runs a row and everything is readable back from MLflow."""
    store = tmp_path / "mlruns"
    command = [sys.executable, "-m", "depthlab.reproductions.vgg", "--table", "1",
               "--profile", "quick", "--backend", BACKEND, "--rows", "vgg38_bnrc_1e-2",
               "--set", "epochs=2", "--set", "steps_per_epoch=3", "--set", "val_images=64",
               "--set", "test_images=64", "--results-dir", str(tmp_path / "results")]
    env = {**os.environ, "DEPTHLAB_MLRUNS": str(store)}
    first = subprocess.run(command, cwd=tmp_path, env=env, text=True, capture_output=True,
                           timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "epoch 2/2" in first.stdout and "paper" in first.stdout and "delta" in first.stdout

    from depthlab import tracking

    tracking.configure(store)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("depthlab-vgg")
    (job,) = client.search_runs([experiment.experiment_id], "tags.`depthlab.kind` = 'job'")
    assert job.info.status == "FINISHED"
    assert job.data.tags["backend"] == BACKEND
    assert job.data.tags["dataset"] == "cifar10" and job.data.tags["data_copy"] == "lossy"
    params = job.data.params
    assert (params["num_blocks"], params["norm"], params["residual"], params["lr"]) == (
        "5", "True", "True", "0.01")
    assert [m.step for m in client.get_metric_history(job.info.run_id, "val_accuracy")] == [0, 1]
    flow = client.get_metric_history(job.info.run_id, "grad_mean_abs/input_conv_conv_0")
    assert len(flow) == 2 and all(m.value > 0 for m in flow)
    assert job.data.metrics["result/params"] == 335_530
    artifacts = {a.path for a in client.list_artifacts(job.info.run_id)}
    assert {"results.npz", "curves.png", "config.json", "gradients", "model"} <= artifacts
    arrays = tracking.load_arrays(job.info.run_id, "results.npz")
    labels = [str(v) for v in arrays["gradient_flow_labels"]]
    assert labels[:2] == ["input_conv_conv_0", "input_conv_bn_0"] and len(labels) == 75
    assert arrays["gradient_flow"].shape == (2, 75) and (arrays["gradient_flow"] > 0).all()
    # the trained model reloads as it was (its best epoch's weights)
    import keras

    import depthlab.layers  # noqa: F401  (registers the custom layers)

    model = keras.saving.load_model(client.download_artifacts(
        job.info.run_id, "model/model.keras", str(tmp_path)))
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == 335_530
    # the parent run: the table as its description, the figures as artifacts
    parent = client.get_run(job.data.tags["mlflow.parentRunId"])
    assert "| VGG38 BN RC, lr 0.01 | val acc % |" in parent.data.tags["mlflow.note.content"]
    assert parent.data.params["split"] == "head" and parent.data.params["epochs"] == "2"
    assert parent.data.metrics["jobs_finished"] == 1 and parent.data.metrics["jobs_failed"] == 0
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {"figures/gradient_flow_vgg38_bnrc_1e-2.png"}
    results = tmp_path / "results"
    report = (results / f"vgg_table1_quick_{BACKEND}.md").read_text()
    assert "VGG38 BN RC, lr 0.01" in report and "61.36" in report and "lossy" in report
    assert (results / f"vgg_table1_quick_{BACKEND}_gradient_flow_vgg38_bnrc_1e-2.png").stat(
        ).st_size > 10_000
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    again = subprocess.run(command, cwd=tmp_path, env=env, text=True, capture_output=True,
                           timeout=600)
    assert again.returncode == 0 and "already finished" in again.stdout


def test_recipe_settings(mlruns):
    """SPEC §3.7 items 5 and 7: Adam betas (0.9, 0.999), eps 1e-8, no weight decay; the
    CIFAR-10 constants for both data sets, crop pad 4, flip only on training batches."""
    from depthlab import augment

    paper = vgg.PAPER
    model = vgg._model_and_optimizer(paper, 100, steps_per_epoch=475)
    inner = model.optimizer.inner_optimizer
    assert type(inner).__name__ == "Adam"
    assert (inner.beta_1, inner.beta_2, inner.epsilon) == (0.9, 0.999, 1e-8)
    assert inner.weight_decay is None and not inner.amsgrad
    lr = inner.learning_rate  # the per-epoch cosine, read at steps 0 and 50 epochs
    assert float(lr) == pytest.approx(1e-3)
    assert float(inner._learning_rate(50 * 475)) == pytest.approx(5.1e-4, rel=1e-5)
    config = dataclasses.replace(paper, dataset="cifar10", split="head", train_images=64,
                                 val_images=64, test_images=64)
    batches = vgg._batches(config)
    for b in batches.values():
        assert (b.mean, b.std) == (augment.CIFAR10_MEAN, augment.CIFAR10_STD)
    assert batches["train"].augment and batches["train"].pad == 4
    assert not batches["val"].augment and not batches["test"].augment
    assert augment.CIFAR10_MEAN == (0.4914, 0.4822, 0.4465)
    assert augment.CIFAR10_STD == (0.2023, 0.1994, 0.2010)


def test_paper_profile_runs_on_the_cifar10_stand_in(mlruns):
    """The paper recipe itself (coursework split of 47,500 / 2,500, batch 100, per-image
    crop + flip, Adam + per-epoch cosine to 2e-5), cut to 2 epochs of 2 steps: the path a
    GPU run takes, on the offline CIFAR-10 copy, labelled lossy."""
    config = dataclasses.replace(vgg.PAPER, dataset="cifar10", epochs=2, steps_per_epoch=2,
                                 val_images=100, test_images=100)
    jobs = vgg.table1_jobs(config, ["vgg08"], "paper")
    assert jobs[0].config.epochs == 2 and jobs[0].config.batch_size == 100
    dataset = vgg._dataset(config)
    assert (len(dataset.train.x), len(dataset.val.x)) == (47_500, 100)
    assert vgg._batches(config)["train"].augment
    (outcome,) = runner.run(vgg.STUDY, "1", "paper", config=config, rows=["vgg08"],
                            results_dir=None, echo=lambda line: None)
    assert outcome.status == "finished", outcome.message
    assert outcome.results["params"] == 56_746  # SPEC §3.7 item 1, C = 10
    assert outcome.results["steps"] == 4
    client = MlflowClient()
    lr = [m.value for m in sorted(client.get_metric_history(outcome.run_id, "lr"),
                                  key=lambda m: m.step)]
    assert lr == pytest.approx([1e-3, 2e-5 + (1e-3 - 2e-5) / 2])  # cosine, T_max = 2 epochs
    run = client.get_run(outcome.run_id)
    assert run.data.tags["profile"] == "paper" and run.data.tags["data_copy"] == "lossy"
    rows = vgg.STUDY.report("1", config, [outcome], "paper")
    assert all("lossy" in row.notes for row in rows if row.row != "claim"
               and row.metric != "#params")
    # 4 steps do not reach the stand-in's 60 %: the check says so instead of hiding it
    assert _verdicts("1", config, [outcome], "paper") == {
        "every row but VGG38: min val acc %": False}


def _paper_outcomes(**changes) -> list[runner.Outcome]:
    """The paper's own Table 1 as outcomes (course test accuracies where the seed has none)."""
    outcomes = []
    for job in vgg.table1_jobs(vgg.PAPER, None, "paper"):
        ref = vgg.paper_numbers()["rows"][job.key]
        results = {"train_loss": ref["train_loss"], "val_loss": ref["val_loss"],
                   "train_acc_pct": ref["train_acc"], "val_acc_pct": ref["val_acc"]}
        results["test_acc_pct"] = ref["test_acc"] or ref.get("course", {}).get("test_acc", 50)
        results["weights_finite"] = 1.0  # what the runner records for a finished fit
        results.update(changes.get(job.key, {}))
        outcomes.append(runner.Outcome(job, "finished", results, None))
    return outcomes


def test_paper_claims_hold_on_the_papers_numbers_and_catch_a_broken_ordering():
    """The paper profile's acceptance (SPEC §3.5) checked on Table 1 itself: all hold; an
    RC row above BN+RC breaks the ordering and its own ±4-point band."""
    verdicts = _verdicts("1", vgg.PAPER, _paper_outcomes(), "paper")
    assert len(verdicts) == 3 + 6 * 2 + 3 and all(verdicts.values()), verdicts
    broken = _verdicts("1", vgg.PAPER, _paper_outcomes(vgg38_rc={"val_acc_pct": 70.0}),
                       "paper")
    assert [k for k, ok in broken.items() if not ok] == [
        "VGG38 RC, lr 0.001: max |acc - paper| (train, val)",
        "val acc BN+RC 61.36 > RC 70.00 > BN 46.72"]
    flow = {"vgg38": {"grad_max_to_reduction_0": 3e-10, "grad_max_to_block_2": 1e-9},
            "vgg08": {"grad_min": 2e-6}}
    verdicts = _verdicts("1", vgg.PAPER, _paper_outcomes(**flow), "paper")
    assert [k for k, ok in verdicts.items() if not ok] == [
        "VGG38 max mean|grad| up to reduction_block_0_conv_1, every epoch"]
