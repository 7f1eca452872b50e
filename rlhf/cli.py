"""`rlhf`: command-line access to the feedback store.

rlhf store stats                      row counts of every table
rlhf store query "SELECT ..."         run read-only SQL and print the result
rlhf store agreement                  agreement: AI vs people, people (Cohen's kappa, Krippendorff's alpha), per annotator
rlhf store import FILE --format F     rankings made elsewhere: csv, jsonl, argilla, hh-rlhf, trl, ultrafeedback
rlhf store export OUT --format F      labelled pairs for other tools: trl, trl-conversational, hf-dataset, csv
rlhf annotate add-annotator NAME      a new token for NAME (printed once; the store keeps its sha256)
rlhf annotate revoke NAME             refuse NAME's tokens from now on
rlhf annotate status                  the queue, the overlap setting and each annotator's progress
rlhf annotate serve                   the human ranking page on http://127.0.0.1:8765
rlhf serve reward                     the reward model over HTTP (OpenRLHF's POST /get_reward)
rlhf serve reward-token NAME          a new bearer token for the reward server (printed once)
rlhf serve policy                     a policy as an OpenAI-compatible chat endpoint that records feedback
rlhf verify                           re-run the pipeline in a fresh clone of HEAD and compare with its dvc.lock

Every command that reads or writes the store takes it as --store FILE (default: feedback.duckdb),
before or after the action: `rlhf store --store X stats` and `rlhf store stats --store X` are one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf.cli_choices import EXPORT_FORMATS, IMPORT_FORMATS, LOW_AGREEMENT_KAPPA, ON_BAD_ROW
from rlhf.errors import InputError, StoreError

if TYPE_CHECKING:
    from rlhf.importers import OddRow
    from rlhf.store import FeedbackStore

# Each command imports what it uses when it runs: `rlhf --help` loads neither pandas, DuckDB nor torch.

STORE_DEFAULT = "feedback.duckdb"
STORE_HELP = f"the store file (default: {STORE_DEFAULT})"


def store_option() -> argparse.ArgumentParser:
    """`--store`, as every command that uses the store takes it after its action; the group's own
    `--store` (before the action) holds the default, so a value given here wins over the default only."""
    option = argparse.ArgumentParser(add_help=False)
    option.add_argument("--store", default=argparse.SUPPRESS, help=STORE_HELP)
    return option


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    store = commands.add_parser("store", help="inspect the DuckDB feedback store")
    # --path, the older spelling of --store, still reads
    store.add_argument("--store", "--path", dest="store", default=STORE_DEFAULT, help=STORE_HELP)
    actions = store.add_subparsers(dest="action", required=True)
    actions.add_parser(
        "stats", help="row counts of every table", description="Example: rlhf store stats", parents=[store_option()]
    )
    query = actions.add_parser(
        "query",
        parents=[store_option()],
        help="run read-only SQL",
        description='Example: rlhf store query "SELECT judge, count(*) FROM rankings GROUP BY judge"',
    )
    query.add_argument("sql", help="the SQL to run")
    agreement = actions.add_parser(
        "agreement",
        parents=[store_option()],
        help="AI-vs-human and inter-annotator agreement, per annotator",
        description="Example: rlhf store agreement  (pairs labelled by both: accuracy and Cohen's kappa; "
        "items ranked by several people: Krippendorff's ordinal alpha; each annotator against the "
        "others' consensus and each AI judge; low-agreement annotators named)",
    )
    agreement.add_argument(
        "--low-kappa",
        type=float,
        default=LOW_AGREEMENT_KAPPA,
        help=f"an annotator whose kappa with the consensus is under this is listed (default {LOW_AGREEMENT_KAPPA})",
    )
    imports = actions.add_parser(
        "import",
        parents=[store_option()],
        help="import rankings made elsewhere",
        description="Example: rlhf store import hh-rlhf-train.jsonl.gz --format hh-rlhf  "
        "(formats are described in rlhf/importers.py). Rows that cannot be taken (identical chosen "
        "and rejected, no shared Human turn, a line that is not JSON, ...) are listed with file, line "
        "and reason; the rows taken are written in one transaction, all or nothing.",
    )
    imports.add_argument(
        "file",
        help="the rankings file: .csv, or JSON lines or one JSON list of records (gzipped as .gz or not), "
        "or .parquet for trl/ultrafeedback",
    )
    imports.add_argument("--format", required=True, choices=IMPORT_FORMATS, dest="fmt")
    imports.add_argument(
        "--name",
        help="the import set's name, which store.snapshot.imports in params.yaml lists to train on it "
        "(default: the file's name without its suffixes); importing again under a name adds to that set",
    )
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
        parents=[store_option()],
        help="export labelled pairs",
        description="Example: rlhf store export pairs.jsonl --format trl --tokenizer models/sft --split train  "
        "(formats are described in rlhf/exporters.py). trl and hf-dataset write TRL's standard format: "
        "prompt is the text the policy continued and chosen/rejected the exact text that follows it "
        "(' glad you asked ...', with its space), so TRL's prompt + chosen is the exchange our stages "
        "read; trl-conversational writes chat messages for TRL to render with the model's chat template "
        "(the format for a model with one). Every TRL format carries the pair's margin, which TRL's "
        "RewardTrainer subtracts (drop the column for plain Bradley-Terry); csv is every column, for analysis.",
    )
    exports.add_argument(
        "out",
        help="the file (a directory for hf-dataset) to write; it replaces an earlier export there, "
        "never a directory of other files or the store",
    )
    exports.add_argument("--format", required=True, choices=EXPORT_FORMATS, dest="fmt")
    exports.add_argument("--split", default="all", choices=["all", "train", "test"])
    exports.add_argument(
        "--tokenizer",
        help="trl, hf-dataset: render prompts and responses with this model directory's tokenizer and chat "
        "template, as the policy reads them (e.g. models/sft); default: the plain format of a model without one",
    )
    add_annotate_commands(commands)
    add_serve_commands(commands)
    add_verify_command(commands)
    return parser


def add_annotate_commands(commands) -> None:
    annotate = commands.add_parser("annotate", help="the human ranking page and its annotators")
    annotate.add_argument("--store", default=STORE_DEFAULT, help=STORE_HELP)
    annotate_actions = annotate.add_subparsers(dest="action", required=True)
    serve = annotate_actions.add_parser(
        "serve",
        parents=[store_option()],
        help="serve the ranking page",
        description="Example: rlhf annotate serve --overlap 2 --guidelines guidelines.md  "
        "(each person opens http://127.0.0.1:8765/#token=<their token>; tokens come from "
        "`rlhf annotate add-annotator NAME`, or from --tokens annotators.json, "
        '{"<token of 16+ characters>": "alice", ...}, whose tokens are then stored hashed)',
    )
    serve.add_argument("--tokens", help="JSON file: token -> annotator name (the earlier way; stored hashed on start)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=8765)
    serve.add_argument(
        "--overlap",
        type=int,
        help="each queue item goes to this many people and leaves the queue when they ranked it "
        "(kept in the store until changed; unset: everyone ranks every item)",
    )
    serve.add_argument("--params", default="params.yaml", help="rank_responses.principles are shown as guidelines")
    serve.add_argument("--guidelines", help="a markdown file shown beside the task and on first open")
    serve.add_argument(
        "--suggest",
        action="store_true",
        help="start each ranking from the AI judge's order (off by default: it anchors people; recorded per ranking)",
    )
    serve.add_argument("--max-body-bytes", type=int, default=64 * 1024, help="refuse (413) bodies over this size")
    serve.add_argument("--rate-limit", type=float, default=20.0, help="requests/s per annotator, 429 past it; 0: off")
    for action, text in [("add-annotator", "a new token for NAME, printed once"), ("revoke", "refuse NAME's tokens")]:
        command = annotate_actions.add_parser(
            action, help=text, description=f"Example: rlhf annotate {action} alice", parents=[store_option()]
        )
        command.add_argument("name", help="the annotator's name")
    annotate_actions.add_parser(
        "status",
        help="queue and annotators",
        description="Example: rlhf annotate status --store feedback.duckdb",
        parents=[store_option()],
    )


def add_verify_command(commands) -> None:
    verify = commands.add_parser(
        "verify",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        help="re-run the pipeline in a fresh clone of the current commit and compare every output with it",
        description="Example: rlhf verify   (or: rlhf verify store_comparisons, for the stages up to it)",
    )
    verify.add_argument("targets", nargs="*", help="stages to reproduce with their upstream (default: all)")
    verify.add_argument("--keep", help="a directory to re-run in and keep (default: a temporary one, removed)")
    verify.add_argument(
        "--with-store",
        action="store_true",
        help="start the clone from a copy of the feedback store (imports and people's rankings live only there)",
    )


def add_serve_commands(commands) -> None:
    serve_models = commands.add_parser("serve", help="serve a trained model over HTTP for other tools")
    serve_models.add_argument("--store", default=STORE_DEFAULT, help=f"{STORE_HELP}; serve policy records into it")
    served = serve_models.add_subparsers(dest="action", required=True)
    reward = served.add_parser(
        "reward",
        help="the reward model under OpenRLHF's remote reward-model convention (POST /get_reward)",
        description="Example: rlhf serve reward --model models/reward --port 8000",
    )
    reward.add_argument("--model", default="models/reward", help="the reward model directory (default: models/reward)")
    reward.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    reward.add_argument("--port", type=port_number, default=8000)
    reward.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    reward.add_argument("--batch-size", type=int, default=64, help="exchanges per forward pass")
    add_reward_server_flags(reward)
    token = served.add_parser(
        "reward-token",
        help="a new bearer token for the reward server, printed once (its file keeps the sha256)",
        description="Example: rlhf serve reward-token trainer --tokens reward-tokens.json",
    )
    token.add_argument("name", help="who the token is for")
    token.add_argument("--tokens", required=True, help="the tokens file (created if missing)")
    add_policy_server_command(served)


def add_policy_server_command(served) -> None:
    from rlhf.serving.limits import ServingLimits

    limits = ServingLimits()
    policy = served.add_parser(
        "policy",
        parents=[store_option()],
        help="a policy as an OpenAI-compatible chat endpoint (POST /v1/chat/completions) that records every "
        "exchange and the feedback on it (POST /v1/feedback) in the store",
        description="Example: rlhf serve policy --checkpoint models/policy --port 8080  (clients sign in with "
        "`rlhf annotate add-annotator NAME`'s tokens; an edited answer or a choice between two answers "
        "becomes a pair that the snapshot takes with store.snapshot.imports: [deployed]; see rlhf/serving/)",
    )
    source = policy.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a policy checkpoint directory to load and sample (e.g. models/policy)")
    source.add_argument(
        "--upstream", help="an OpenAI-compatible server's base URL to stand in front of (e.g. http://127.0.0.1:8000/v1)"
    )
    policy.add_argument("--upstream-model", help="the model name to ask the upstream for (default: the client's)")
    policy.add_argument(
        "--upstream-key-env",
        help="an environment variable that holds the upstream's API key (never on the command line)",
    )
    policy.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    policy.add_argument("--port", type=port_number, default=8080)
    policy.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    policy.add_argument("--no-record", action="store_true", help="serve without storing exchanges (feedback: 404)")
    for flag, value, text in [
        ("--max-body-bytes", limits.max_body_bytes, "request body size"),
        ("--max-messages", limits.max_messages, "chat messages per request"),
        ("--max-chars", limits.max_chars, "characters per message, edit or reason"),
        ("--max-tokens", limits.max_tokens, "tokens an answer may ask for"),
    ]:
        policy.add_argument(
            flag, type=int, default=value, help=f"refuse (413) over this many: {text} (default {value})"
        )
    policy.add_argument(
        "--rate-limit",
        type=float,
        default=limits.rate_limit,
        help=f"requests/s per client token, 429 past it; 0: off (default {limits.rate_limit:g})",
    )


def add_reward_server_flags(reward) -> None:
    from rlhf.http_limits import Limits

    limits = Limits()
    reward.add_argument(
        "--tokens", help="tokens file of sha256 -> name (rlhf serve reward-token); every call needs one"
    )
    reward.add_argument(
        "--insecure",
        action="store_true",
        help="serve a non-loopback --host without tokens (anyone who reaches it can use it)",
    )
    reward.add_argument("--docs", action="store_true", help="serve /docs and /openapi.json (off by default)")
    for flag, value, text in [
        ("--max-body-bytes", limits.max_body_bytes, "request body size"),
        ("--max-queries", limits.max_queries, "exchanges per request"),
        ("--max-chars", limits.max_chars, "characters per text"),
        ("--max-tokens", limits.max_tokens, "tokens per query"),
    ]:
        reward.add_argument(
            flag, type=int, default=value, help=f"refuse (413) over this many: {text} (default {value})"
        )
    reward.add_argument(
        "--rate-limit",
        type=float,
        default=limits.rate_limit,
        help=f"requests/s per token (or client address), 429 past it; 0: off (default {limits.rate_limit:g})",
    )


def port_number(text: str) -> int:
    """argparse's type for --port: a TCP port, so a typo is a usage error rather than an OverflowError."""
    port = int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def refuse_a_taken_address(host: str, port: int) -> None:
    """InputError when host:port cannot be bound (another server has it), before the success line
    is printed; uvicorn would say so only after it, and exit 3."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            probe.bind((host, port))
        except OSError as error:
            # EADDRINUSE: another server has the port; anything else (no such address here, a
            # name that does not resolve) is the host's doing
            fix = "pass another --port" if error.errno == errno.EADDRINUSE else "pass an address of this machine"
            raise InputError(f"--host {host} --port {port}: cannot listen there ({error.strerror}); {fix}") from None


def serve_annotation_page(args: argparse.Namespace) -> None:
    import uvicorn

    from rlhf.annotation.annotators import migration_message
    from rlhf.annotation.app import create_app, load_tokens
    from rlhf.annotation.guidelines import load_guidelines, principles_from_params
    from rlhf.http_auth import check_host
    from rlhf.store import FeedbackStore

    refuse_a_taken_address(args.host, args.port)  # before the store is created or changed
    store = FeedbackStore(args.store)
    if not store.path.exists():  # a mistyped --store would otherwise serve an empty queue unnoticed
        print(f"rlhf: {store.path} does not exist yet; the page creates it, empty", file=sys.stderr, flush=True)
    tokens = load_tokens(args.tokens) if args.tokens else None
    guidelines = load_guidelines(principles_from_params(args.params), args.guidelines)
    if args.overlap is not None:
        store.set_overlap(args.overlap)
    app = create_app(
        store,
        tokens,
        guidelines,
        suggestions=args.suggest,
        tokens_source=f"tokens-file:{args.tokens}",
        max_body_bytes=args.max_body_bytes,
        rate_limit=args.rate_limit,
    )
    warning = check_host(args.host, True, False, "ranking page")
    if warning:
        print(warning, file=sys.stderr, flush=True)
    if tokens:
        print(migration_message(args.tokens, app.state.tokens_added, len(tokens)), flush=True)
    if not store.annotator_progress()["active_tokens"].sum():
        print("rlhf: nobody can sign in yet: rlhf annotate add-annotator NAME", file=sys.stderr, flush=True)
    overlap = store.overlap()
    print(
        f"rlhf: ranking page on http://{args.host}:{args.port}/#token=<token>; "
        f"overlap {overlap or 'unset (everyone ranks every item)'}; suggestions {'on' if args.suggest else 'off'}",
        flush=True,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", log_config=None)


def annotate_command(args: argparse.Namespace) -> None:
    from rlhf.annotation.annotators import add_annotator, revoke_annotator
    from rlhf.store import FeedbackStore

    # Only the commands that write may create the store; the others refuse a missing one.
    store = FeedbackStore(args.store, create=args.action in ("serve", "add-annotator"))
    if args.action == "serve":
        serve_annotation_page(args)
    elif args.action == "add-annotator":
        created = not store.path.exists()
        token = add_annotator(store, args.name)
        if created:
            print(f"rlhf: created the store {store.path}", file=sys.stderr)
        print(token)
        print(
            f"rlhf: {args.name} opens http://127.0.0.1:8765/#token={token} (shown once; the store keeps its sha256)",
            file=sys.stderr,
        )
    elif args.action == "revoke":
        revoked = revoke_annotator(store, args.name)
        print(f"revoked {revoked} token(s) of {args.name}; their rankings stay in the store")
    else:
        print_annotation_status(store)


def print_annotation_status(store: FeedbackStore) -> None:
    overlap = store.overlap()
    items, waiting = store.counts()["annotation_queue"], store.waiting_items()
    print(f"queue: {items} items, {waiting} waiting; overlap {overlap or 'unset (everyone ranks every item)'}")
    people = store.annotator_progress()
    for row in people.itertuples():
        token = "revoked" if row.revoked_tokens and not row.active_tokens else f"{row.active_tokens} token(s)"
        print(f"{row.annotator:20} ranked {row.ranked:5}  skipped {row.skipped:5}  {token}")


def print_agreement(report: dict) -> None:
    rows = [(f"{judge} vs people", figures) for judge, figures in report["ai_vs_human"].items()]
    if report["inter_annotator"]:
        rows.append(("person vs person", report["inter_annotator"]))
    if not rows:
        print("no pair has been labelled by both an AI judge and a person, or by two people, yet")
    for name, figures in rows:
        print(f"{name:28} pairs {figures['pairs']:6}  accuracy {figures['accuracy']:.3f}  kappa {figures['kappa']:.3f}")
    if (report["inter_annotator"] or {}).get("krippendorff_alpha") is not None:
        shared = report["inter_annotator"]
        alpha = shared["krippendorff_alpha"]
        print(f"{'people, ranks (ordinal)':28} items {shared['items']:6}  Krippendorff's alpha {alpha:.3f}")
    for name, figures in report.get("annotators", {}).items():
        consensus = figures["consensus"]
        line = f"{name:20} pairs {figures['pairs']:5}  vs consensus "
        line += f"kappa {consensus['kappa']:.3f} ({consensus['pairs']} pairs)" if consensus else "-"
        line += "".join(f"  vs {judge} kappa {ai['kappa']:.3f}" for judge, ai in figures["ai"].items())
        print(line)
    low = report.get("low_agreement")
    if low and low["annotators"]:
        print(f"low agreement (kappa with the consensus under {low['kappa_below']}): {', '.join(low['annotators'])}")


def import_rankings(store: FeedbackStore, args: argparse.Namespace) -> None:
    from rlhf.importers import read_rankings

    entries = [entry.strip() for entry in args.map.split(",") if entry.strip()]
    malformed = [entry for entry in entries if not all(part.strip() for part in entry.partition("=")[::2])]
    if malformed:
        raise InputError(f"--map {malformed[0]!r}: write ours=theirs, e.g. --map prompt=question,rank=position")
    columns = {ours.strip(): theirs.strip() for ours, _, theirs in (entry.partition("=") for entry in entries)}
    imported = read_rankings(args.file, args.fmt, columns=columns, on_bad_row=args.on_bad_row)
    # The import set's name is its run: store.snapshot.imports takes it by that name.
    run = {"run_id": f"import-{args.name or import_name(args.file)}", "stage": "import"}
    created = not store.path.exists()
    added = store.ingest(run, *imported.frames())
    if created:
        print(f"created the store {store.path}")
    print(
        f"imported {args.file}: {imported.taken} rankings, {len(imported.odd_rows)} odd rows skipped; "
        + ", ".join(f"{table} +{n}" for table, n in added.items())
    )
    print_odd_rows(imported.odd_rows)


def import_name(file: str) -> str:
    """An import set's default name: the file's name without its suffixes (hh-rlhf.jsonl.gz: hh-rlhf)."""
    return Path(file).name.split(".")[0]


def print_odd_rows(odd_rows: list[OddRow], shown: int = 50) -> None:
    """To stderr, one line each; past `shown`, a count (a wrong --format would make every row odd)."""
    for odd in odd_rows[:shown]:
        print(f"rlhf: skipped {odd}", file=sys.stderr)
    if len(odd_rows) > shown:
        print(f"rlhf: ... and {len(odd_rows) - shown} more odd rows skipped", file=sys.stderr)


def export_tokenizer(path: str | None):
    """The tokenizer `store export --tokenizer` names, or None (the plain format)."""
    if path is None:
        return None
    if not Path(path).is_dir():
        raise InputError(f"--tokenizer {path}: no model directory here")
    from rlhf.pretrained import load_tokenizer

    return load_tokenizer(path)


def serve_reward(args: argparse.Namespace) -> None:
    from rlhf.http_auth import add_token, check_host, load_token_hashes
    from rlhf.http_limits import Limits
    from rlhf.rewards.server import serve_reward_model

    if args.action == "reward-token":
        token = add_token(args.tokens, args.name)
        print(token)
        print(f"rlhf: {args.name}'s token (shown once; {args.tokens} keeps its sha256)", file=sys.stderr)
        return
    if not Path(args.model).is_dir():
        raise InputError(f"{args.model}: no reward model directory here (run the pipeline first, or pass --model)")
    hashes = load_token_hashes(args.tokens) if args.tokens else None
    warning = check_host(args.host, hashes is not None, args.insecure, "reward server")
    if warning:
        print(warning, file=sys.stderr, flush=True)
    limits = Limits(args.max_body_bytes, args.max_queries, args.max_chars, args.max_tokens, args.rate_limit)
    refuse_a_taken_address(args.host, args.port)
    print(f"rlhf: reward model {args.model} on http://{args.host}:{args.port}/get_reward", flush=True)
    serve_reward_model(args.model, args.host, args.port, args.device, args.batch_size, limits, hashes, args.docs)


def serve_policy(args: argparse.Namespace) -> None:
    import os

    from rlhf.http_auth import check_host
    from rlhf.serving.limits import ServingLimits

    limits = ServingLimits(
        args.max_body_bytes, args.max_messages, args.max_chars, args.max_tokens, rate_limit=args.rate_limit
    )
    if args.checkpoint is not None and not Path(args.checkpoint).is_dir():
        raise InputError(f"--checkpoint {args.checkpoint}: no policy checkpoint directory here")
    if args.upstream_key_env and args.upstream_key_env not in os.environ:
        raise InputError(f"--upstream-key-env {args.upstream_key_env}: no such environment variable is set")
    warning = check_host(args.host, True, False, "policy server")  # every call needs a client token
    if warning:
        print(warning, file=sys.stderr, flush=True)
    from rlhf.serving.backends import LocalPolicy, Upstream
    from rlhf.serving.policy_server import serve

    if args.checkpoint is None:  # checks the URL; loads nothing
        key = os.environ[args.upstream_key_env] if args.upstream_key_env else None
        backend = Upstream(args.upstream, args.upstream_model, key)
    refuse_a_taken_address(args.host, args.port)  # before the policy loads
    if args.checkpoint is not None:
        backend = LocalPolicy(args.checkpoint, args.device)
    recording = "not recording" if args.no_record else f"recording to {args.store}"
    print(f"rlhf: policy {backend.name} on http://{args.host}:{args.port}/v1 ({recording})", flush=True)
    serve(backend, args.store, args.host, args.port, limits, record=not args.no_record)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        try:
            serve_policy(args) if args.action == "policy" else serve_reward(args)
        except InputError as error:
            print(f"rlhf: error: {error}", file=sys.stderr)
            return 2
        return 0
    if args.command == "verify":
        from rlhf.verify import print_report, verify

        try:
            return print_report(verify(Path.cwd(), args.targets, args.keep, args.with_store))
        except InputError as error:
            print(f"rlhf: error: {error}", file=sys.stderr)
            return 2
    if args.command == "annotate":
        try:
            annotate_command(args)
        except (InputError, StoreError) as error:
            print(f"rlhf: error: {error}", file=sys.stderr)
            return 2
        return 0
    return store_command(args)


def store_command(args: argparse.Namespace) -> int:
    import duckdb

    from rlhf.store import FeedbackStore  # pandas loads only with a command that reads a frame

    store = FeedbackStore(args.store)
    try:
        if not store.path.exists() and args.action != "import":
            raise InputError(f"{store.path}: no store here yet (run the pipeline first)")
        if args.action == "stats":
            for table, rows in store.counts().items():
                print(f"{table:16} {rows}")
        elif args.action == "agreement":
            from rlhf.agreement import agreement_report

            print_agreement(agreement_report(store.pair_labels(), store.human_ranks(), kappa_below=args.low_kappa))
        elif args.action == "export":
            from rlhf.exporters import export_pairs

            rows = export_pairs(
                store.comparisons(), args.out, args.fmt, args.split, export_tokenizer(args.tokenizer), store.path
            )
            print(f"exported {rows} pairs to {args.out} ({args.fmt})")
        elif args.action == "import":
            import_rankings(store, args)
        else:
            try:
                print(store.query(args.sql, external_access=False).to_string(index=False))
            except duckdb.Error as error:  # DuckDB adds the query and a caret: the first line says it
                raise InputError(str(error).strip().splitlines()[0]) from None
    except (InputError, duckdb.Error) as error:
        print(f"rlhf: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
