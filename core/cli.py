"""Command line: ``depthlab <study> --table T --profile P --backend B [--set k=v ...]``.

``python -m depthlab.reproductions.<study>`` takes the same flags. Bad input (unknown
flag, study, table, row, profile, backend or config field; missing data) prints one line
``depthlab: error: ...`` and exits with code 2. The backend is selected from the flags
before anything imports Keras.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from depthlab import backend, config

STUDIES = {"vgg": "depthlab.reproductions.vgg"}
EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line input; reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message)


def _parser(study: str | None) -> argparse.ArgumentParser:
    prog = f"python -m {STUDIES[study]}" if study else "depthlab"
    parser = _Parser(prog=prog, description=__doc__.split("\n")[0])
    if study is None:
        parser.add_argument("study", help=f"one of: {', '.join(STUDIES)}")
    parser.add_argument("--table", help="table id of the study (see --list)")
    parser.add_argument("--profile", default="quick", help="quick (CPU, minutes) or paper")
    parser.add_argument("--backend", default=None,
                        help=f"{' | '.join(backend.BACKENDS)} (default: $KERAS_BACKEND or jax)")
    parser.add_argument("--rows", default=None, help="comma-separated row keys (default: all)")
    parser.add_argument("--dataset", default=None, help="shorthand for --set dataset=NAME")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config field (repeatable)")
    parser.add_argument("--results-dir", default="docs/results",
                        help="where the final table goes (default: docs/results)")
    parser.add_argument("--list", action="store_true", help="list tables, rows and profiles")
    return parser


def main(argv: Sequence[str] | None = None, study: str | None = None) -> int:
    """Parse, select the backend, run one table; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parser(study).parse_args(argv)
        name = study or args.study
        if name not in STUDIES:
            raise UsageError(f"unknown study {name!r}; choose one of {', '.join(STUDIES)}")
        definition = importlib.import_module(STUDIES[name]).STUDY
        if args.list:
            _print_listing(definition)
            return 0
        table = args.table or next(iter(definition.tables))
        if table not in definition.tables:
            raise UsageError(f"unknown table {table!r}; choose one of "
                             f"{', '.join(definition.tables)}")
        if args.profile not in definition.profiles:
            raise UsageError(f"unknown profile {args.profile!r}; choose one of "
                             f"{', '.join(definition.profiles)}")
        rows = _rows(args.rows, definition.rows[table])
        overrides = config.parse_overrides(args.overrides)
        if args.dataset is not None:
            overrides["dataset"] = args.dataset
        base = config.apply_overrides(definition.profiles[args.profile], overrides)
        backend.select(args.backend)
    except (UsageError, config.ConfigError, backend.BackendError) as error:
        return _fail(error)
    backend.configure()
    from depthlab import data
    from depthlab.reproductions import runner

    try:
        outcomes = runner.run(definition, table, args.profile, config=base, rows=rows,
                              results_dir=args.results_dir)
    except data.DataNotFoundError as error:
        return _fail(error)
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept, run the same command to resume",
              file=sys.stderr)
        return 130
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _rows(text: str | None, known: Sequence[str]) -> list[str] | None:
    if text is None:
        return None
    rows = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in rows if r not in known]
    if unknown:
        raise UsageError(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(known)}")
    return rows


def _print_listing(definition) -> None:
    print(f"study {definition.name}")
    print(f"  profiles: {', '.join(definition.profiles)}")
    for table, rows in definition.rows.items():
        print(f"  table {table}: rows {', '.join(rows)}")


def _fail(error: BaseException) -> int:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    print(f"depthlab: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
