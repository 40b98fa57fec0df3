"""Command line: ``depthlab <study> --table T --profile P --backend B [--set k=v ...]``.

``python -m depthlab.reproductions.<study>`` takes the same flags. Bad input (unknown
flag, study, table, row, profile, backend or config field; a value outside its field's
range; missing or corrupt data; an unusable MLflow store or results folder; a full disk)
prints one line ``depthlab: error: ...`` and exits with code 2, before any training where
it can be known before. The backend is selected from the flags before anything imports
Keras. SIGTERM is handled like Ctrl-C: the running job's MLflow run is marked KILLED, and
the same command resumes it.
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
            rerun=args.rerun, results_dir=args.results_dir)]
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
