"""Bad command-line input gives one line on stderr and exit code 2, within seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "depthlab", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.once
@pytest.mark.parametrize("args, message", [
    (["nostudy"], "unknown study 'nostudy'"),
    (["vgg", "--bogus"], "unrecognized arguments: --bogus"),
    (["vgg", "--backend", "theano"], "unknown backend 'theano'"),
    (["vgg", "--table", "9"], "unknown table '9'"),
    (["vgg", "--profile", "huge"], "unknown profile 'huge'"),
    (["vgg", "--rows", "vgg99"], "unknown row(s) vgg99"),
    (["vgg", "--set", "depth=3"], "unknown config field 'depth'"),
    (["vgg", "--set", "epochs=many"], "expected an integer"),
    (["vgg", "--dataset", "imagenet"], "expected one of cifar100, cifar10"),
    (["vgg", "--rows", ""], "--rows is empty"),
    (["vgg", "--rows", ","], "--rows is empty"),
    (["vgg", "--rows", "vgg08,,vgg38"], "has an empty entry"),
    (["vgg", "--rows", "vgg08,vgg38,vgg08"], "--rows names vgg08 more than once"),
    (["vgg", "--set", "epochs=0"], "epochs=0: must be a finite number > 0"),
    (["vgg", "--set", "batch_size=-32"], "batch_size=-32: must be a finite number > 0"),
    (["vgg", "--set", "steps_per_epoch=-1"], "steps_per_epoch=-1: must be a finite number >= 0"),
    (["vgg", "--set", "lr=nan"], "lr=nan: must be a finite number > 0"),
    (["vgg", "--set", "lr=inf"], "lr=inf: must be a finite number > 0"),
    (["vgg", "--set", "lr=-1e-3"], "lr=-0.001: must be a finite number > 0"),
    (["vgg", "--set", "grad_every=0"], "grad_every=0: must be a finite number > 0"),
    (["vgg", "--set", "split=head", "--set", "train_images=0"], "train_images=0: split 'head'"),
    (["vgg", "--set", "norm=true"], "--set norm: set by each row of table 1"),
    (["vgg", "--table", "init", "--set", "lr=0.1"], "--set lr: set by each row of table init"),
    (["vgg", "--set", "val_images=5000"], "val_images=5000: cifar10 has 2,405 images"),
    (["vgg", "--set", "train_images=50001"], "train_images=50001: cifar10 has 50,000 images"),
    (["vgg", "--set", "test_images=10001"], "test_images=10001: cifar10 has 10,000 images"),
    (["vgg", "--executor", "dask"], "invalid choice: 'dask'"),
    (["vgg", "--gpus-per-job", "1"], "--gpus-per-job needs --executor ray"),
    (["vgg", "--executor", "ray", "--cpus-per-job", "0"], "--cpus-per-job 0: must be a number "
     "above 0"),
    (["vgg", "--executor", "ray", "--gpus-per-job", "-1"], "must be a number of 0 or more"),
    (["vgg", "--executor", "ray", "--ray-address", "head"], "give auto or HOST:PORT"),
    (["vgg", "--executor", "ray", "--ray-address", "127.0.0.1:1"], "nothing answers there"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    start = time.perf_counter()
    result = _cli(*args, "--results-dir", str(tmp_path / "results"),
                  env={"DEPTHLAB_MLRUNS": str(tmp_path / "mlruns")})
    _one_line_error(result, message)
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # refused before MLflow


def _one_line_error(result: subprocess.CompletedProcess, message: str) -> str:
    """Exit 2, exactly one line on stderr, which names the problem; no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("depthlab: error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def test_readme_lr_override_wins_over_each_rows_value():
    """``--set lr=3e-3`` (README): the user's value beats the rows' own learning rates,
    and every row it changed says so in its label."""
    from depthlab import config as configs
    from depthlab.reproductions import runner, vgg

    base = configs.apply_overrides(vgg.QUICK, {"lr": "3e-3"})
    jobs = runner.expand(vgg.STUDY, "1", base, list(vgg.ROWS), {"lr": 3e-3})
    assert [j.config.lr for j in jobs] == [3e-3] * 7
    assert [j.label for j in jobs][:3] == [
        "VGG08, lr 0.003 (--set)", "VGG38, lr 0.003 (--set)", "VGG38 BN, lr 0.003 (--set)"]
    plain = runner.expand(vgg.STUDY, "1", vgg.QUICK, ["vgg38_bn_1e-2"])
    assert plain[0].config.lr == 1e-2 and plain[0].label == "VGG38 BN, lr 0.01"


def test_corrupt_data_is_one_line_and_exit_2(tmp_path):
    """A truncated data file: named, called corrupt, no traceback, before any training."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "cifar10.npz").write_bytes(b"PK\x03\x04" + b"\0" * 1000)
    result = _cli("vgg", "--rows", "vgg38", "--results-dir", str(tmp_path / "r"),
                  env={"DEPTHLAB_MLRUNS": str(tmp_path / "m"), "DEPTHLAB_DATA_DIR": str(folder)})
    line = _one_line_error(result, f"{folder / 'cifar10.npz'} is corrupt (")
    assert line.endswith("; delete it to download again")
    assert "epoch 1/" not in result.stdout


def test_missing_data_fails_fast_with_exit_2(tmp_path):
    """The offline CIFAR-100 copy lacks the paper profile's images: say so, don't train."""
    start = time.perf_counter()
    result = _cli("vgg", "--table", "1", "--profile", "paper", "--rows", "vgg08",
                  "--results-dir", str(tmp_path), env={"DEPTHLAB_MLRUNS": str(tmp_path / "m")})
    line = _one_line_error(result, "partial copy")
    assert "cifar100.npz" in line
    assert time.perf_counter() - start < 90  # seconds, no training started
    assert "epoch 1/" not in result.stdout


def test_list_shows_tables_and_rows():
    result = _cli("vgg", "--list")
    assert result.returncode == 0
    assert "table 1: rows vgg08, vgg38, vgg38_bn_1e-2" in result.stdout
    assert "profiles: paper, quick" in result.stdout
