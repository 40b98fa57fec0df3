"""What a user sees in the MLflow UI: ``python -m depthlab.ui`` (``make ui``) on a store made
by real quick runs, read back through the UI server's REST API, and the runs page rendered
in headless Chromium (Debian's ``chromium``, which ``.ci/run`` installs; Playwright drives
it, with no browser download of its own)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, route: str, **query) -> bytes:
    url = f"{base}{route}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{base}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A store with VGG's init table and one Table 1 row (torch, quick), and the UI on it."""
    root = tmp_path_factory.mktemp("ui")
    env = {**os.environ, "DEPTHLAB_MLRUNS": str(root / "mlruns"), "KERAS_BACKEND": "torch"}
    for args in (["--table", "init"],
                 ["--table", "1", "--rows", "vgg38", "--set", "epochs=2",
                  "--set", "steps_per_epoch=3", "--set", "val_images=64",
                  "--set", "test_images=64"]):
        done = subprocess.run([sys.executable, "-m", "depthlab", "vgg", *args, "--results-dir",
                               str(root / "results")], cwd=root, env=env, text=True,
                              capture_output=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "depthlab.ui", "--port", str(port)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        printed = [server.stdout.readline() for _ in range(2)]
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180  # MLflow's UI takes 10-90 s to come up here
        while True:
            try:
                if _get(base, "/health").strip() == b"OK":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "UI did not start"
            time.sleep(1)
        yield base, printed
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.once
def test_runs_descriptions_figures_and_metrics_through_the_ui_server(ui):
    base, printed = ui
    experiments = _post(base, "/api/2.0/mlflow/experiments/search",
                        {"max_results": 100})["experiments"]
    (vgg,) = [e for e in experiments if e["name"] == "depthlab-vgg"]
    tags = {t["key"]: t["value"] for t in vgg.get("tags", [])}
    assert tags["mlflow.experimentKind"] == "custom_model_development"  # Model training view
    url = f"{base}/#/experiments/{vgg['experiment_id']}/runs?workflowType=machine_learning"
    assert printed[1].strip() == f"vgg: {url}"
    runs = _post(base, "/api/2.0/mlflow/runs/search",
                 {"experiment_ids": [vgg["experiment_id"]], "max_results": 100})["runs"]

    def tag(run, key):
        return {t["key"]: t["value"] for t in run["data"].get("tags", [])}.get(key)

    parents = {r["info"]["run_name"]: r for r in runs if tag(r, "depthlab.kind") == "table"}
    assert set(parents) == {"vgg table init (quick, torch)", "vgg table 1 (quick, torch)"}
    init = parents["vgg table init (quick, torch)"]
    assert "| VGG38 at init | mean\\|grad\\| input_conv_conv_0 |" in tag(
        init, "mlflow.note.content")
    listed = json.loads(_get(base, "/api/2.0/mlflow/artifacts/list",
                             run_id=init["info"]["run_id"], path="figures"))
    assert [f["path"] for f in listed["files"]] == ["figures/gradient_flow_init.png"]
    png = _get(base, "/get-artifact", path="figures/gradient_flow_init.png",
               run_uuid=init["info"]["run_id"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    (job,) = [r for r in runs if tag(r, "job") == "vgg38" and tag(r, "table") == "1"]
    metrics = {m["key"] for m in job["data"]["metrics"]}
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "result/val_acc_pct"} <= metrics
    assert not [m for m in metrics if m.startswith(("grad_norm/", "result/grad."))]
    assert len(metrics) <= 70  # 39 gradient-flow entries, 10 curves, ~15 results (was 122)
    history = json.loads(_get(base, "/api/2.0/mlflow/metrics/get-history",
                              run_id=job["info"]["run_id"], metric_key="loss"))["metrics"]
    assert sorted(m["step"] for m in history) == [0, 1]  # one point per epoch
    assert "results.npz" in {f["path"] for f in json.loads(_get(
        base, "/api/2.0/mlflow/artifacts/list", run_id=job["info"]["run_id"]))["files"]}


@pytest.mark.once
def test_the_runs_page_renders_in_chromium(ui, tmp_path):
    assert CHROMIUM, "Chromium is needed for the UI check: apt-get install chromium (.ci/run)"
    from playwright.sync_api import sync_playwright

    _, printed = ui
    url = printed[1].split(": ", 1)[1].strip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.get_by_text("vgg table init (quick, torch)").first.wait_for(timeout=60_000)
            page.get_by_text("vgg table 1 (quick, torch)").first.wait_for(timeout=10_000)
            assert "workflowType=machine_learning" in page.url
            assert page.get_by_text("Model training").first.is_visible()
            page.screenshot(path=str(tmp_path / "runs.png"))
        finally:
            browser.close()
    assert Path(tmp_path / "runs.png").stat().st_size > 10_000
