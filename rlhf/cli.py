"""`rlhf`: command-line access to the feedback store.

rlhf store stats                      row counts of every table
rlhf store query "SELECT ..."         run read-only SQL and print the result
"""

from __future__ import annotations

import argparse
import sys

import duckdb

from rlhf.errors import InputError
from rlhf.store import FeedbackStore


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    store = commands.add_parser("store", help="inspect the DuckDB feedback store")
    store.add_argument("--path", default="feedback.duckdb", help="the store file (default: feedback.duckdb)")
    actions = store.add_subparsers(dest="action", required=True)
    actions.add_parser("stats", help="row counts of every table", description="Example: rlhf store stats")
    query = actions.add_parser(
        "query",
        help="run read-only SQL",
        description='Example: rlhf store query "SELECT judge, count(*) FROM rankings GROUP BY judge"',
    )
    query.add_argument("sql", help="the SQL to run")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = FeedbackStore(args.path)
    try:
        if not store.path.exists():
            raise InputError(f"{store.path}: no store here yet (run the pipeline first)")
        if args.action == "stats":
            for table, rows in store.counts().items():
                print(f"{table:12} {rows}")
        else:
            print(store.query(args.sql).to_string(index=False))
    except (InputError, duckdb.Error) as error:
        print(f"rlhf: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
