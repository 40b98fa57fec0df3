"""The installed wheel, not only the repository, gives the `depthlab` namespace."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.once
def test_wheel_installs_the_one_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path / "dist"), str(REPO)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = (tmp_path / "dist").glob("depthlab-*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, timeout=300)
    names = sorted(p.name for p in site.iterdir()
                   if not p.name.endswith(".dist-info") and p.name != "bin")  # bin: the CLI
    assert names == ["depthlab"]  # no generic top-level `layers`, `callbacks`, ...
    code = ("import depthlab, depthlab.layers, depthlab.callbacks, depthlab.reproductions.vgg "
            "as v; print(depthlab.__file__); print(v.paper_numbers()['rows']['vgg38_bnrc_1e-2']"
            "['test_acc'])")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True,
                            capture_output=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    path, test_acc = result.stdout.split()
    assert path == str(site / "depthlab" / "__init__.py") and test_acc == "61.09"
