"""Oyedotun et al. (SPEC §4): the quick checks Q1-Q8 of §4.5 through the runner on the
process backend, the acceptance checks of §4.7 not covered by the layer and data tests, and
one table end to end through the CLI and the MLflow store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import BACKEND
from mlflow.tracking import MlflowClient

from depthlab import data
from depthlab.callbacks.constraints import MaxNormMonitor
from depthlab.callbacks.divergence import DivergenceGuard
from depthlab.callbacks.evaluation import EvaluateSets
from depthlab.reproductions import oyedotun, runner


def _table(table: str, rows=None, overrides=None):
    outcomes = runner.run(oyedotun.STUDY, table, "quick", config=oyedotun.QUICK, rows=rows,
                          overrides=overrides, results_dir=None, echo=lambda line: None)
    rows_ = oyedotun.STUDY.report(table, oyedotun.QUICK, outcomes, "quick")
    return outcomes, {r.metric: r.notes.startswith("✓") for r in rows_ if r.row == "claim"}


@pytest.mark.once  # the counts themselves are checked per backend in test_layers_plainnet
def test_q7_counts_of_table_i_the_100_layer_nets_and_the_conv_net(mlruns):
    """Q7, §4.7 items 1-3: exact trainable counts from built models; depth 50 flagged."""
    outcomes, verdicts = _table("1")
    assert len(verdicts) == 6 and all(verdicts.values()), verdicts
    (counts,) = outcomes
    assert list(counts.arrays["coil20_bn"]) == [495_920, 677_720, 1_132_220, 1_586_720,
                                                2_041_220, 3_859_220, 4_768_220]
    assert counts.results["conv_trainable"] == 723_642
    assert counts.results["conv_count_params"] == 729_018
    rows = oyedotun.STUDY.report("1", oyedotun.QUICK, outcomes, "quick")
    flagged = [r for r in rows if "⚑" in r.notes]
    assert [r.metric for r in flagged] == ["params (M), depth 50"]
    assert flagged[0].paper == 4.78 and round(flagged[0].ours, 2) == 4.77


def test_q1_to_q6_at_init_on_usps_for_three_seeds(mlruns):
    """§4.5 Q1-Q6 (§4.7 items 10-11): five 100-layer nets x seeds 0, 1, 2 at init, BN in
    training mode on 1,024 USPS training images; every threshold of the spec."""
    usps = [f"usps_{n}_s{s}" for n in oyedotun.QUICK_NETS for s in oyedotun.QUICK_SEEDS]
    outcomes, verdicts = _table("fig2-8", rows=usps)
    assert [o.status for o in outcomes] == ["finished"] * 15
    assert len(verdicts) == 3 + 5 + 3 + 3 + 1 + 1 and all(verdicts.values()), verdicts
    for q in ("Q1", "Q2", "Q3", "Q4", "Q5", "Q6"):
        assert any(k.startswith(q) for k in verdicts), q
    a = outcomes[0].arrays  # item 11: every per-layer quantity, for 100 layers
    for key in ("mean_abs", "normalised_mean_abs", "max_abs", "frac_above_0",
                "frac_above_0.05", "frac_above_0.5", "frac_above_5", "frac_above_50",
                "frac_zero", "dead_units", "kappa_2"):
        assert a["train_" + key].shape == (100,), key
    assert a["kappa_inf"].shape == (99,)  # square kernels: blocks 2..100
    assert a["image_l50"].shape == (300, 200) and a["image_l99"].shape == (300, 200)
    figures = oyedotun.STUDY.figures("fig2-8", oyedotun.QUICK, outcomes, "quick")
    assert {"fig3", "fig4", "fig5", "fig8", "a1", "layer_stats.csv"} <= set(figures)
    assert len(figures["layer_stats.csv"].splitlines()) == 1 + 15 * 100


def test_q8_ten_steps_keep_every_unit_within_the_max_norm(mlruns):
    """§4.5 Q8, §4.7 item 4: proposed, USPS, D=100, 10 steps at lr 0.1: finite loss and
    weights, every incoming vector's norm ≤ 3 (1 + 1e-5) after every step."""
    # Q8 reads only the 10 steps: the whole-set evaluations around them are cut to heads
    outcomes, verdicts = _table("2", rows=["usps_proposed_d100"], overrides={
        "train_images": 1280, "test_images": 500, "probe_images": 256})
    assert len(verdicts) == 2 and all(verdicts.values()), verdicts
    (job,) = outcomes
    norms = job.arrays["max_incoming_norm_steps"]
    assert len(norms) == 10 and norms.max() <= 3 * (1 + 1e-5)
    assert norms.max() > 2.9  # lr 0.1 pushes the rows to the bound: the check is not idle


def test_lr_schedule_steps_and_recipe_in_the_compiled_optimizer():
    """§4.4, §4.7 items 8-9: SGD momentum 0.9 (no Nesterov), the four decades, L2(5e-5) on
    kernels only (no bias, no BN gamma/beta), softmax output unconstrained."""
    config = oyedotun.PAPER
    model = oyedotun.build_net(config, 256, 10)
    oyedotun._compile(model, config, steps_per_epoch=57)
    inner = model.optimizer.inner_optimizer
    assert isinstance(inner, keras.optimizers.SGD) and inner.momentum == 0.9
    assert not inner.nesterov
    schedule = inner._learning_rate  # the LearningRateSchedule (``learning_rate`` reads it)
    lr = [float(keras.ops.convert_to_numpy(schedule(e * 57)))
          for e in (0, 74, 75, 150, 225, 299)]
    np.testing.assert_allclose(lr, [0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-4], rtol=1e-6)
    regularised = {w.path for layer in model._flatten_layers() for w in
                   [getattr(layer, "kernel", None)] if getattr(layer, "kernel_regularizer", None)}
    kernels = {w.path for w in model.trainable_weights if w.path.endswith("/kernel")}
    assert regularised == kernels and len(kernels) == 101
    assert model.get_layer("output").kernel_regularizer.l2 == pytest.approx(5e-5)
    assert model.get_layer("output").kernel_constraint is None


def test_usps_and_coil20_parts_and_constant_predictors():
    """§4.7 items 6-7: the loaders' sizes and [0, 1] features; the constant predictors of
    Table II's readings give the paper's errors exactly."""
    usps = data.usps()
    x = oyedotun._flat(usps.train.x)
    assert x.shape == (7291, 256) and x.min() >= 0 and x.max() <= 1
    for cls, train, test in ((0, 83.62, 82.11), (5, 92.37, 92.03), (1, 86.22, 86.85)):
        assert round(100 * np.mean(usps.train.y != cls), 2) == train
        assert round(100 * np.mean(usps.test.y != cls), 2) == test
    parts = oyedotun.split_parts(oyedotun.dataclasses.replace(oyedotun.PAPER, dataset="coil20"))
    train, test = parts["train"][1], parts["test"][1]
    assert (len(train), len(test)) == (1008, 432) and not np.intersect1d(train, test).size
    assert np.array_equal(train, np.random.default_rng(0).permutation(1440)[:1008])
    coil = data.coil20()
    assert oyedotun._flat(coil.train.x).shape == (1008, 1024)
    assert oyedotun.constant_class(np.array([0, 0, 7, 0])) == 2
    assert oyedotun.constant_class(np.array([1, 0, 7, 0])) is None


def test_evaluate_sets_and_measurements_that_do_not_count_as_divergence():
    """EvaluateSets logs inference-mode metrics per set; a non-finite one is a measurement
    (DivergenceGuard's ``ignore``), a non-finite training metric still stops the run."""
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((64, 8)).astype("float32")
    y = (x[:, 0] > 0.5).astype("int64")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=2, verbose=0,
                        callbacks=[EvaluateSets({"eval_all": (x, y)})])
    expected = model.evaluate(x, y, return_dict=True, verbose=0)
    assert history.history["eval_all_accuracy"][-1] == pytest.approx(expected["accuracy"])
    guard = DivergenceGuard(ignore=("eval_",))
    guard.set_model(model)
    guard.on_train_begin()
    guard.on_epoch_end(0, {"loss": 0.5, "eval_all_loss": float("nan")})
    assert not guard.diverged
    guard.on_epoch_end(1, {"loss": float("nan")})
    assert guard.diverged and "loss is nan" in guard.reason


def test_max_norm_monitor_reads_every_step():
    from depthlab.layers.plainnet import build_plainnet

    keras.utils.set_random_seed(0)
    model = build_plainnet(3, "proposed", 16, 4, width=8)
    model.compile(keras.optimizers.SGD(5.0), "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((40, 16)).astype("float32")
    monitor = MaxNormMonitor()
    history = model.fit(x, np.arange(40) % 4, batch_size=8, epochs=1, verbose=0,
                        callbacks=[monitor])
    assert len(monitor.history) == 5
    assert max(monitor.history) <= 3 * (1 + 1e-5)
    assert history.history["max_incoming_norm"][0] == max(monitor.history)


@pytest.mark.once
def test_table_a1_end_to_end_through_the_cli(tmp_path):
    """Fig A1 (three init-time jobs) through the command: the parent's figures and CSV and
    a job's per-layer diagnostics read back from the MLflow store."""
    store = tmp_path / "mlruns"
    env = {**os.environ, "DEPTHLAB_MLRUNS": str(store)}
    done = subprocess.run([sys.executable, "-m", "depthlab", "oyedotun", "--table", "a1",
                           "--profile", "quick", "--backend", BACKEND, "--results-dir",
                           str(tmp_path / "r")], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Q2 Proposed: no exact zeros" in done.stdout and "✗ FAILS" not in done.stdout
    from depthlab import tracking

    tracking.configure(store)
    client = MlflowClient()
    experiment = client.get_experiment_by_name("depthlab-oyedotun")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`depthlab.kind` = 'table'")
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert files == {"figures/a1.png", "figures/layer_stats.csv"}
    jobs = client.search_runs([experiment.experiment_id], "tags.`depthlab.kind` = 'job'")
    assert sorted(j.data.tags["job"] for j in jobs) == [
        "usps_bn_s0", "usps_glorot_s0", "usps_proposed_s0"]
    assert all(j.info.status == "FINISHED" for j in jobs)
    job = next(j for j in jobs if j.data.tags["job"] == "usps_glorot_s0")
    diagnostics = {a.path for a in client.list_artifacts(job.info.run_id, "diagnostics")}
    assert diagnostics == {"diagnostics/training_mode.csv"}
    text = Path(client.download_artifacts(job.info.run_id, "diagnostics/training_mode.csv",
                                          str(tmp_path))).read_text().splitlines()
    assert len(text) == 1 + 100 and text[1].startswith("1,block_1,")
    assert job.data.metrics["result/train_mode_ratio_100_1"] < 1e-10
    assert (tmp_path / "r" / f"oyedotun_tablea1_quick_{BACKEND}_a1.png").stat().st_size > 10_000


@pytest.mark.once
def test_paper_profile_code_paths_on_a_stand_in(mlruns):
    """The paper profile's Table II and trained-net diagnostics, run on a stand-in (two
    epochs of two steps on heads of USPS; the 300-epoch recipe needs a GPU): the jobs
    finish, the acceptance lines of §4.7 item 12 and the trained-net readings of Figs 2-5
    are printed with a verdict, and the figures are drawn in inference mode."""
    small = {"epochs": 2, "steps_per_epoch": 2, "train_images": 256, "test_images": 256,
             "probe_images": 256}
    outcomes = runner.run(oyedotun.STUDY, "2", "paper", config=oyedotun.PAPER,
                          rows=["usps_maxnorm_only_d100", "usps_proposed_d100"],
                          overrides=small,
                          results_dir=None, echo=lambda line: None)
    assert [o.status for o in outcomes] == ["finished", "finished"]
    rows = oyedotun.STUDY.report("2", oyedotun.PAPER, outcomes, "paper")
    claims = [r.metric for r in rows if r.row == "claim"]
    assert claims == ["Max-norm fails to train (train err ≥ 50%)",
                      "Proposed trains: train err ≤ 1%", "Proposed generalises: test err ≤ 7%"]
    trained = outcomes[1].arrays
    assert trained["inf_mean_abs"].shape == (100,) and trained["train_mean_abs"].shape == (100,)
    assert trained["train_error_curve"].shape == (2,)
    outcomes = runner.run(oyedotun.STUDY, "fig2-8", "paper", config=oyedotun.PAPER,
                          rows=["usps_glorot_d100", "usps_proposed_d100"], overrides=small,
                          results_dir=None, echo=lambda line: None)
    assert [o.status for o in outcomes] == ["finished", "skipped"]  # Table II's job, reused
    rows = oyedotun.STUDY.report("fig2-8", oyedotun.PAPER, outcomes, "paper")
    assert [r.metric.split(":")[0] for r in rows if r.row == "claim"] == [
        "naive (Glorot init), USPS", "Proposed, USPS"]
    figures = oyedotun.STUDY.figures("fig2-8", oyedotun.PAPER, outcomes, "paper")
    assert {"fig3", "fig4", "fig5", "fig8", "a1"} <= set(figures)
    assert "BN inference mode, trained" in figures["fig3"]._suptitle.get_text()
