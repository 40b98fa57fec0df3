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
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("depthlab")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].startswith("depthlab: error: ")


def test_missing_data_fails_fast_with_exit_2(tmp_path):
    """The offline CIFAR-100 copy lacks the paper profile's images: say so, don't train."""
    start = time.perf_counter()
    result = _cli("vgg", "--table", "1", "--profile", "paper", "--rows", "vgg08",
                  "--results-dir", str(tmp_path), env={"DEPTHLAB_MLRUNS": str(tmp_path / "m")})
    assert result.returncode == 2, result.stdout + result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("depthlab: error")]
    assert len(error) == 1 and "partial copy" in error[0] and "cifar100.npz" in error[0]
    assert time.perf_counter() - start < 90  # seconds, no training started
    assert "epoch 1/" not in result.stdout


def test_list_shows_tables_and_rows():
    result = _cli("vgg", "--list")
    assert result.returncode == 0
    assert "table 1: rows vgg08, vgg38, vgg38_bn_1e-2" in result.stdout
    assert "profiles: paper, quick" in result.stdout
