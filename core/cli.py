"""Command line: ``depthlab <study> --table T --profile P --backend B [--set k=v ...]``.

``python -m depthlab.reproductions.<study>`` takes the same flags. Bad input (unknown
flag, study, table, row, profile, backend or config field; a value outside its field's
range; missing or corrupt data; an unusable MLflow store or results folder; a full disk)
prints one line ``depthlab: error: ...`` and exits with code 2, before any training where
it can be known before. The backend is selected from the flags before anything imports
Keras. SIGTERM is handled like Ctrl-C: the running job's MLflow run is marked KILLED, and
the same command resumes it. ``--executor ray`` runs the jobs as Ray tasks (README, "Tables
on a Ray cluster").
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

from depthlab import backend, config

STUDIES = {"vgg": "depthlab.reproductions.vgg", "marion": "depthlab.reproductions.marion",
           "oyedotun": "depthlab.reproductions.oyedotun",
           "convnext": "depthlab.reproductions.convnext"}
EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line input; reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


def _parser(study: str | None, definition: Any = None) -> argparse.ArgumentParser:
    prog = f"python -m {STUDIES[study]}" if study else (
        definition.name if definition is not None else "depthlab")
    parser = _Parser(prog=prog, description=__doc__.split("\n")[0])
    if study is None and definition is None:
        parser.add_argument("study", help=f"one of: {', '.join(STUDIES)}")
    parser.add_argument("--table", help="table id of the study (see --list), or all")
    parser.add_argument("--profile", default="quick", help="quick (CPU, minutes) or paper")
    parser.add_argument("--backend", default=None,
                        help=f"{' | '.join(backend.BACKENDS)} (default: $KERAS_BACKEND or jax)")
    parser.add_argument("--rows", default=None, help="comma-separated row keys (default: all)")
    parser.add_argument("--dataset", default=None, help="shorthand for --set dataset=NAME")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field (repeatable)")
    parser.add_argument("--rerun", action="store_true",
                        help="recompute jobs that already finished (default: reuse them "
                        "when their code commit and data digest match)")
    parser.add_argument("--results-dir", default="docs/results",
                        help="where the final table goes (default: docs/results)")
    parser.add_argument("--list", action="store_true", help="list tables, rows and profiles")
    cluster = parser.add_argument_group("executor (README 'Tables on a Ray cluster')")
    cluster.add_argument("--executor", default="local", choices=("local", "ray"),
                         help="local: the jobs one after the other here (default); ray: each "
                         "job a Ray task")
    cluster.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                         help="join this Ray cluster (default: start one on this machine)")
    cluster.add_argument("--cpus-per-job", type=float, default=None, metavar="N",
                         help="CPUs Ray reserves per job (default 1)")
    cluster.add_argument("--gpus-per-job", type=float, default=None, metavar="N",
                         help="GPUs Ray reserves per job (default 0)")
    return parser


def main(argv: Sequence[str] | None = None, study: str | Any | None = None) -> int:
    """Parse, select the backend, run one table; return the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        study: a study name of ``STUDIES`` (its own ``python -m`` entry), a
            :class:`~depthlab.reproductions.runner.Study` object, or None (first argument).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        definition = study if study is not None and not isinstance(study, str) else None
        args = _parser(None if definition else study, definition).parse_args(argv)
        if definition is None:
            name = study or args.study
            if name not in STUDIES:
                raise UsageError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
            definition = importlib.import_module(STUDIES[name]).STUDY
        if args.list:
            _print_listing(definition)
            return 0
        table = args.table or next(iter(definition.tables))
        if table not in (*definition.tables, "all"):
            raise UsageError(f"unknown table {table!r}; choose one of "
                             f"{', '.join(definition.tables)} or all")
        if table == "all" and args.rows is not None:
            raise UsageError("--rows needs one table, not all")
        tables = list(definition.tables) if table == "all" else [table]
        if args.profile not in definition.profiles:
            raise UsageError(f"unknown profile {args.profile!r}; choose one of "
                             f"{', '.join(definition.profiles)}")
        rows = _rows(args.rows, definition.rows[table]) if table != "all" else None
        overrides = config.parse_overrides(args.overrides)
        if args.dataset is not None:
            overrides["dataset"] = args.dataset
        base = config.apply_overrides(definition.profiles[args.profile], overrides)
        typed = {key: getattr(base, key) for key in overrides}
        backend.select(args.backend)
        executor = _executor(args)
    except (UsageError, config.ConfigError, backend.BackendError) as error:
        return _fail(error)
    from depthlab import files, tracking

    try:  # in seconds, before Keras loads: the places this command will write
        tracking.check_store()
        if args.results_dir:
            files.check_writable(args.results_dir, "results folder (--results-dir)")
    except (tracking.StoreError, OSError) as error:
        return _fail(error)
    backend.configure()
    from depthlab import data
    from depthlab.reproductions import runner

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        outcomes = [outcome for name in tables for outcome in runner.run(
            definition, name, args.profile, config=base, rows=rows, overrides=typed,
            rerun=args.rerun, results_dir=args.results_dir, executor=executor)]
    except (config.ConfigError, data.DataNotFoundError, data.DataCorruptError,
            tracking.StoreError) as error:
        return _fail(error)
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept, run the same command to resume",
              file=sys.stderr)
        return 130
    except OSError as error:  # a full disk, an unwritable folder
        if files.is_disk_full(error) or isinstance(error, PermissionError | files.DiskFullError):
            return _fail(error)
        raise
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _executor(args: argparse.Namespace) -> Any:
    """The executor the flags ask for (None: local); its flags checked before anything."""
    ray_flags = {"--ray-address": args.ray_address, "--cpus-per-job": args.cpus_per_job,
                 "--gpus-per-job": args.gpus_per_job}
    given = [flag for flag, value in ray_flags.items() if value is not None]
    if args.executor == "local":
        if given:
            raise UsageError(f"{', '.join(given)} needs --executor ray")
        return None
    import math

    for flag, value, zero_ok in (("--cpus-per-job", args.cpus_per_job, False),
                                 ("--gpus-per-job", args.gpus_per_job, True)):
        if value is not None and not (math.isfinite(value) and (value > 0 or
                                                                 zero_ok and value == 0)):
            raise UsageError(f"{flag} {value:g}: must be a number "
                             f"{'of 0 or more' if zero_ok else 'above 0'}")
    if args.ray_address is not None:
        _check_ray_address(args.ray_address)
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UsageError("--executor ray needs Ray: pip install 'depthlab[ray]'")
    from depthlab.reproductions.ray_executor import RayExecutor

    return RayExecutor(address=args.ray_address,
                       cpus_per_job=1.0 if args.cpus_per_job is None else args.cpus_per_job,
                       gpus_per_job=args.gpus_per_job or 0.0)


def _check_ray_address(address: str) -> None:
    """``auto`` or a ``HOST:PORT`` something answers at (Ray itself retries an unreachable
    address for minutes, writing a log line every few seconds)."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address {address!r}: give auto or HOST:PORT")
    import socket

    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise UsageError(f"--ray-address {address}: nothing answers there "
                         f"({error.strerror or error})") from None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _rows(text: str | None, known: Sequence[str]) -> list[str] | None:
    if text is None:
        return None
    rows = [r.strip() for r in text.split(",")]
    if not any(rows):
        raise UsageError(f"--rows is empty; name rows ({', '.join(known)}) or leave it out "
                         "to run every row")
    if "" in rows:
        raise UsageError(f"--rows {text!r} has an empty entry")
    unknown = [r for r in rows if r not in known]
    if unknown:
        raise UsageError(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(known)}")
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    if repeated:
        raise UsageError(f"--rows names {', '.join(repeated)} more than once")
    return rows


def _print_listing(definition) -> None:
    print(f"study {definition.name}")
    print(f"  profiles: {', '.join(definition.profiles)}")
    for table, rows in definition.rows.items():
        print(f"  table {table}: rows {', '.join(rows)}")


def _fail(error: BaseException) -> int:
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    message = text.splitlines()[0] if text else type(error).__name__
    print(f"depthlab: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
