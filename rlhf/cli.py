"""`rlhf`: command-line access to the feedback store.

rlhf store stats                      row counts of every table
rlhf store query "SELECT ..."         run read-only SQL and print the result
rlhf store agreement                  AI-vs-human and inter-annotator agreement (accuracy, Cohen's kappa)
rlhf store import FILE --format F     rankings made elsewhere: csv, jsonl, argilla, hh-rlhf, trl, ultrafeedback
rlhf store export OUT --format F      labelled pairs for other tools: trl, trl-conversational, hf-dataset, csv
rlhf annotate serve --tokens FILE     the human ranking page on http://127.0.0.1:8765
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import duckdb

from rlhf.agreement import agreement_report
from rlhf.errors import InputError
from rlhf.exporters import FORMATS as EXPORT_FORMATS
from rlhf.exporters import export_pairs
from rlhf.importers import FORMATS, ON_BAD_ROW, OddRow, read_rankings
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
    actions.add_parser(
        "agreement",
        help="AI-vs-human and inter-annotator agreement",
        description="Example: rlhf store agreement  (pairs labelled by both; accuracy and Cohen's kappa)",
    )
    imports = actions.add_parser(
        "import",
        help="import rankings made elsewhere",
        description="Example: rlhf store import hh-rlhf-train.jsonl.gz --format hh-rlhf  "
        "(formats are described in rlhf/importers.py). Rows that cannot be taken (identical chosen "
        "and rejected, no shared Human turn, a line that is not JSON, ...) are listed with file, line "
        "and reason; the rows taken are written in one transaction, all or nothing.",
    )
    imports.add_argument(
        "file", help="the rankings file (.jsonl, .jsonl.gz, .csv, .json, or .parquet for trl/ultrafeedback)"
    )
    imports.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    imports.add_argument(
        "--map",
        default="",
        help="csv/jsonl column names, e.g. prompt=question,response=answer,rank=position,annotator=user",
    )
    imports.add_argument(
        "--on-bad-row",
        default="skip",
        choices=ON_BAD_ROW,
        help="skip (default): import the other rows, list the odd ones, exit 0 (public dumps have a few "
        "odd rows, and they should not cost the rest); fail: import nothing and exit 2, naming the first "
        "odd line",
    )
    exports = actions.add_parser(
        "export",
        help="export labelled pairs",
        description="Example: rlhf store export pairs.jsonl --format trl --split train  "
        "(formats are described in rlhf/exporters.py)",
    )
    exports.add_argument("out", help="the file (a directory for hf-dataset) to write")
    exports.add_argument("--format", required=True, choices=EXPORT_FORMATS, dest="fmt")
    exports.add_argument("--split", default="all", choices=["all", "train", "test"])
    annotate = commands.add_parser("annotate", help="the human ranking page")
    annotate_actions = annotate.add_subparsers(dest="action", required=True)
    serve = annotate_actions.add_parser(
        "serve",
        help="serve the ranking page",
        description="Example: rlhf annotate serve --tokens annotators.json  "
        '(annotators.json: {"<token of 16+ characters>": "alice", ...}; '
        "each person opens http://127.0.0.1:8765/#token=<their token>)",
    )
    serve.add_argument("--store", default="feedback.duckdb", help="the store file (default: feedback.duckdb)")
    serve.add_argument("--tokens", required=True, help="JSON file: token -> annotator name")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8765)
    return parser


def serve_annotation_page(args: argparse.Namespace) -> None:
    import uvicorn

    from rlhf.annotation.app import create_app, load_tokens

    app = create_app(FeedbackStore(args.store), load_tokens(args.tokens))
    print(f"rlhf: ranking page on http://{args.host}:{args.port}/#token=<token>", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", log_config=None)


def print_agreement(report: dict) -> None:
    rows = [(f"{judge} vs people", figures) for judge, figures in report["ai_vs_human"].items()]
    if report["inter_annotator"]:
        rows.append(("person vs person", report["inter_annotator"]))
    if not rows:
        print("no pair has been labelled by both an AI judge and a person, or by two people, yet")
    for name, figures in rows:
        print(f"{name:28} pairs {figures['pairs']:6}  accuracy {figures['accuracy']:.3f}  kappa {figures['kappa']:.3f}")


def import_rankings(store: FeedbackStore, args: argparse.Namespace) -> None:
    columns = dict(pair.split("=", 1) for pair in args.map.split(",") if "=" in pair)
    imported = read_rankings(args.file, args.fmt, columns=columns, on_bad_row=args.on_bad_row)
    run = {"run_id": f"import-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}", "stage": "import"}
    added = store.ingest(run, *imported.frames())
    print(
        f"imported {args.file}: {imported.taken} rankings, {len(imported.odd_rows)} odd rows skipped; "
        + ", ".join(f"{table} +{n}" for table, n in added.items())
    )
    print_odd_rows(imported.odd_rows)


def print_odd_rows(odd_rows: list[OddRow], shown: int = 50) -> None:
    """To stderr, one line each; past `shown`, a count (a wrong --format would make every row odd)."""
    for odd in odd_rows[:shown]:
        print(f"rlhf: skipped {odd}", file=sys.stderr)
    if len(odd_rows) > shown:
        print(f"rlhf: ... and {len(odd_rows) - shown} more odd rows skipped", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "annotate":
        try:
            serve_annotation_page(args)
        except InputError as error:
            print(f"rlhf: error: {error}", file=sys.stderr)
            return 2
        return 0
    store = FeedbackStore(args.path)
    try:
        if not store.path.exists() and args.action != "import":
            raise InputError(f"{store.path}: no store here yet (run the pipeline first)")
        if args.action == "stats":
            for table, rows in store.counts().items():
                print(f"{table:16} {rows}")
        elif args.action == "agreement":
            print_agreement(agreement_report(store.pair_labels()))
        elif args.action == "export":
            rows = export_pairs(store.comparisons(), args.out, args.fmt, args.split)
            print(f"exported {rows} pairs to {args.out} ({args.fmt})")
        elif args.action == "import":
            import_rankings(store, args)
        else:
            print(store.query(args.sql).to_string(index=False))
    except (InputError, duckdb.Error) as error:
        print(f"rlhf: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
