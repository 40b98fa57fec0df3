"""``python -m depthlab.ui`` (``make ui``): the MLflow UI on depthlab's store, and where to look.

MLflow 3.17's UI opens on a GenAI welcome page, and an experiment on a traces overview;
depthlab's runs are under "Model training". This command prints, for every study in the
store, the direct address of its runs in that view (``?workflowType=machine_learning``;
depthlab's experiments are also tagged as model-training experiments), then serves the UI
on the store (``$DEPTHLAB_MLRUNS`` or ``./mlruns``) until Ctrl-C. The UI takes 10-90 s to
come up on a small machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def study_urls(host: str, port: int) -> dict[str, str]:
    """Study name -> the address of its runs in the UI's Model training view."""
    from depthlab import tracking

    out = {}
    for found in tracking.experiments():
        if found.name.startswith("depthlab-"):
            out[found.name.removeprefix("depthlab-")] = (
                f"http://{host}:{port}/#/experiments/{found.experiment_id}/runs"
                "?workflowType=machine_learning")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m depthlab.ui", description=__doc__.split(
        "\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    from depthlab import tracking

    try:
        root = tracking.check_store()
    except tracking.StoreError as error:
        print(f"depthlab: error: {error}", file=sys.stderr)
        return 2
    urls = study_urls(args.host, args.port)
    print(f"MLflow UI on {root} (starting; it takes 10-90 s):")
    for study, url in urls.items():
        print(f"  {study}: {url}")
    if not urls:
        print(f"  no study has run yet: http://{args.host}:{args.port}/")
    sys.stdout.flush()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
               f"sqlite:///{root / 'mlflow.db'}", "--host", args.host, "--port",
               str(args.port), "--workers", "1"]
    os.execvpe(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
