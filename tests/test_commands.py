"""Whole commands under stress, through the CLI in subprocesses (``tiny_study``): unusable
stores and result folders, a full disk, ``kill -9`` at random moments, and two or three
commands at once on one store. After each, the store must hold exactly one FINISHED run
per job, nothing RUNNING, and results equal to an uninterrupted run's.

Disks: a size-limited tmpfs and a read-only bind mount where this process may mount (root
with CAP_SYS_ADMIN, as on the CI machines); otherwise a read-only folder by permissions
(non-root), and the free-space floor raised (``DEPTHLAB_MIN_FREE_MB``) to stand for a full
disk.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

TINY = str(REPO / "tests" / "tiny_study.py")


def _command(store: Path, *args: str, results: Path | None = None, **env: str):
    results = results or store.parent / "results"
    argv = [sys.executable, TINY, "--table", "t", "--results-dir", str(results), *args]
    return argv, {**os.environ, "DEPTHLAB_MLRUNS": str(store), **env}


def _cli(store: Path, *args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    argv, env = _command(store, *args, **kwargs)
    return subprocess.run(argv, cwd=REPO, env=env, text=True, capture_output=True,
                          timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess, message: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("depthlab: error: "), result.stderr
    assert message in lines[0], lines[0]
    return lines[0]


def _runs(store: Path) -> list[tuple[str, str, str, str, str]]:
    """(kind, job, MLflow status, depthlab status, final loss) of every run in the store."""
    with contextlib.closing(sqlite3.connect(store / "mlflow.db")) as con:
        rows = con.execute("""
            select r.run_uuid, r.status,
                   (select value from tags t where t.run_uuid = r.run_uuid
                    and t.key = 'depthlab.kind'),
                   (select value from tags t where t.run_uuid = r.run_uuid and t.key = 'job'),
                   (select value from tags t where t.run_uuid = r.run_uuid
                    and t.key = 'depthlab.status'),
                   (select value from latest_metrics m where m.run_uuid = r.run_uuid
                    and m.key = 'result/final_loss')
            from runs r where r.lifecycle_stage = 'active'""").fetchall()
    return [(kind, job, status, mine, loss) for _, status, kind, job, mine, loss in rows]


def _assert_clean(store: Path, jobs: list[str], tables: int = 1) -> dict[str, float]:
    """One FINISHED run per job, nothing RUNNING, one parent per table; return each job's
    final loss."""
    runs = _runs(store)
    assert not [r for r in runs if r[2] == "RUNNING"], runs
    finished = [r for r in runs if r[0] == "job" and r[2] == "FINISHED"]
    assert sorted(r[1] for r in finished) == sorted(jobs), runs
    assert all(r[3] == "finished" for r in finished), runs
    assert len([r for r in runs if r[0] == "table"]) == tables, runs
    return {r[1]: float(r[4]) for r in finished}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, float]:
    """The uninterrupted table: each job's final loss."""
    store = tmp_path_factory.mktemp("reference") / "mlruns"
    result = _cli(store, "--rows", "a,b", "--set", "epochs=4")
    assert result.returncode == 0, result.stdout + result.stderr
    return _assert_clean(store, ["a", "b"])


# ----------------------------------------------------------------- unusable places


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(f"/tmp/depthlab-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)],
                        capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    probe.rmdir()
    return ok


MOUNT = _can_mount()


@contextlib.contextmanager
def _read_only(folder: Path):
    """``folder`` made read-only: a read-only bind mount, or permissions when not root."""
    if MOUNT:
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
            yield
        finally:
            subprocess.run(["umount", str(folder)], check=True)
    elif os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
    else:
        raise RuntimeError("root without mount rights: no way to make a read-only folder")


@pytest.mark.once
def test_unusable_stores_and_result_folders_fail_in_seconds(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "mlflow.db").write_bytes(b"this is not an SQLite database at all" * 100)
    cases = [
        (_cli(a_file / "mlruns", "--rows", "a"), f"{a_file / 'mlruns'} is not writable"),
        (_cli(garbage, "--rows", "a"), f"{garbage / 'mlflow.db'} is not an MLflow store"),
        (_cli(tmp_path / "ok", "--rows", "a", results=a_file / "results"),
         f"results folder (--results-dir) {a_file / 'results'} is not writable"),
    ]
    for result, message in cases:
        _one_line_error(result, message)
    # an existing store, read-only: refused before any training, the store untouched
    store = tmp_path / "store"
    assert _cli(store, "--rows", "a", "--set", "epochs=1").returncode == 0
    before = _runs(store)
    with _read_only(store):
        start = time.perf_counter()
        result = _cli(store, "--rows", "b")
        assert time.perf_counter() - start < 30  # the Keras import included; the check is ~1 s
    _one_line_error(result, f"{store} is not writable")
    assert "epoch 1/" not in result.stdout
    assert _runs(store) == before


@pytest.mark.once
def test_a_full_disk_stops_with_one_line_and_nothing_corrupt(tmp_path, reference):
    """The first backup finds too little space: one line, exit 2, the run FAILED, nothing
    half-written; with space again the same command resumes and finishes the table."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if MOUNT:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)],
                       check=True)
    try:
        store = disk / "mlruns"
        args = ("--rows", "a,b", "--set", "epochs=4")
        assert _cli(store, "--rows", "a", "--set", "epochs=1").returncode == 0  # the store
        if MOUNT:  # leave ~8 MiB: the store's small writes fit, a backup does not
            free = shutil.disk_usage(disk).free
            (disk / "filler").write_bytes(b"\0" * (free - (8 << 20)))
            full = _cli(store, *args)
        else:
            full = _cli(store, *args, DEPTHLAB_MIN_FREE_MB="1000000000")
        line = _one_line_error(full, "no space left on device for the training backup")
        assert "run the command again" in line
        assert not list((store / "checkpoints").rglob(".tmp-*"))
        runs = _runs(store)
        assert not [r for r in runs if r[2] == "RUNNING"], runs
        assert [r[2] for r in runs if r[0] == "job" and r[1] == "a" and r[3] != "finished"] \
            == ["FAILED"], runs
        (disk / "filler").unlink(missing_ok=True)
        again = _cli(store, *args)
        assert again.returncode == 0, again.stdout + again.stderr
        runs = _runs(store)
        losses = {r[1]: r[4] for r in runs if r[0] == "job" and r[2] == "FINISHED"
                  and r[3] == "finished" and r[4] is not None}
        assert float(losses["b"]) == pytest.approx(reference["b"], rel=1e-5)
    finally:
        if MOUNT:
            subprocess.run(["umount", str(disk)], check=True)


# ----------------------------------------------------------------- kills and races


@pytest.mark.once
def test_kill_9_at_random_moments_then_rerun_equals_the_uninterrupted_table(tmp_path,
                                                                           reference):
    store = tmp_path / "mlruns"
    argv, env = _command(store, "--rows", "a,b", "--set", "epochs=4", "--set", "sleep_s=0.3")
    rng = random.Random(0)
    for _ in range(4):  # each kill lands somewhere else: start-up, training, reporting
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 9.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
    result = _cli(store, "--rows", "a,b", "--set", "epochs=4", "--set", "sleep_s=0.3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _assert_clean(store, ["a", "b"]) == pytest.approx(reference, rel=1e-5)


@pytest.mark.once
@pytest.mark.parametrize("commands, fresh", [(2, True), (3, False)])
def test_concurrent_commands_run_each_job_once(tmp_path, reference, commands, fresh):
    """Two commands on a new store, three on an existing one: every job runs once, every
    command ends with the whole table (it waits for the jobs another one runs)."""
    store = tmp_path / "mlruns"
    if not fresh:
        assert _cli(store, "--rows", "c", "--set", "epochs=1").returncode == 0
    args = ("--rows", "a,b", "--set", "epochs=4", "--set", "sleep_s=0.2")
    processes = []
    for i in range(commands):
        argv, env = _command(store, *args, results=tmp_path / f"results{i}")
        processes.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, out + err
    losses = _assert_clean(store, ["a", "b"] + ([] if fresh else ["c"]),
                           tables=1 if fresh else 2)
    assert {k: losses[k] for k in ("a", "b")} == pytest.approx(reference, rel=1e-5)
    for i in range(commands):  # every command wrote the whole table
        text = next((tmp_path / f"results{i}").glob("*.md")).read_text()
        assert "| a | loss |" in text and "| b | loss |" in text


# ----------------------------------------------------------------- a Ray cluster


def _store_rows(store: Path, query: str) -> list[tuple]:
    for _ in range(50):  # the server may hold a write lock for a moment
        try:
            with contextlib.closing(sqlite3.connect(store / "mlflow.db", timeout=5)) as con:
                return con.execute(query).fetchall()
        except sqlite3.OperationalError:
            time.sleep(0.1)
    raise TimeoutError(f"{store / 'mlflow.db'} stayed locked")


@pytest.mark.once
def test_a_table_on_a_local_ray_cluster_survives_a_killed_worker(tmp_path, reference):
    """``--executor ray`` on a local Ray instance (2 CPUs: both jobs at once), its workers
    logging through an MLflow server the command starts: one worker is killed (-9) after an
    epoch; its run is marked KILLED, the job goes to a worker again and resumes that run.
    The store then holds one FINISHED run per job, nested under the table, with the
    local executor's results."""
    store = tmp_path / "mlruns"
    argv, env = _command(store, "--rows", "a,b", "--set", "epochs=4", "--set", "sleep_s=1.0",
                         "--executor", "ray")
    process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    victim, deadline = None, time.monotonic() + 240
    while victim is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
        if not (store / "mlflow.db").exists():
            continue
        found = _store_rows(store, """
            select t.value from runs r join tags t on t.run_uuid = r.run_uuid
            where t.key = 'depthlab.worker' and r.status = 'RUNNING' and exists (
                select 1 from metrics m where m.run_uuid = r.run_uuid and m.key = 'loss')""")
        if found:
            victim = int(found[0][0].rsplit(":", 1)[1])
            os.kill(victim, signal.SIGKILL)
    out, err = process.communicate(timeout=300)
    assert victim is not None, out + err
    assert process.returncode == 0, out + err
    assert "its Ray worker died" in out and "submitted again" in out, out
    assert _assert_clean(store, ["a", "b"]) == pytest.approx(reference, rel=1e-5)
    runs = _store_rows(store, """
        select (select value from tags t where t.run_uuid = r.run_uuid and t.key = 'job'),
               (select value from tags t where t.run_uuid = r.run_uuid
                and t.key = 'mlflow.parentRunId') from runs r""")
    jobs = [(job, parent) for job, parent in runs if job is not None]
    assert sorted(job for job, _ in jobs) == ["a", "b"], runs  # the killed run was resumed
    assert all(parent for _, parent in jobs), runs
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(store) not in processes, processes  # the command's MLflow server is gone
