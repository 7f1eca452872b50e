"""The command line's conventions: every command is listed in `rlhf --help` with an example, and every
command that uses the store takes it the same way (`--store FILE`, before or after its action)."""

import argparse
import subprocess
import sys

import pytest

from rlhf.cli import STORE_DEFAULT, build_parser

pytestmark = pytest.mark.timeout(120)


def leaf_commands() -> dict[tuple[str, str], argparse.ArgumentParser]:
    """(command, action) -> its parser, for every runnable command (`rlhf verify` has no action)."""
    leaves = {}
    for command, parser in subparsers(build_parser()).items():
        actions = subparsers(parser)
        if not actions:
            leaves[command, ""] = parser
        for action, leaf in actions.items():
            leaves[command, action] = leaf
    return leaves


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_command_is_in_the_top_help_and_its_own_help_starts_with_an_example():
    top = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for (command, action), parser in leaf_commands().items():
        line = f"rlhf {command} {action}".strip()
        assert f"\n{line} " in top, f"`rlhf --help` does not list {line!r}"
        assert (parser.description or "").startswith(f"Example: {line}"), (line, parser.description)


def test_every_command_that_uses_the_store_takes_it_before_or_after_its_action():
    takes_store = {key for key, parser in leaf_commands().items() if "--store" in parser._option_string_actions}
    assert takes_store >= {("store", "stats"), ("store", "import"), ("annotate", "status"), ("annotate", "serve")}
    # of the servers, only the policy server records into the store
    assert {key for key in takes_store if key[0] in ("serve", "verify")} == {("serve", "policy")}
    extra = {"query": ["SELECT 1"], "import": ["f.csv", "--format", "csv"], "export": ["out", "--format", "csv"]}
    extra |= {"add-annotator": ["alice"], "revoke": ["alice"], "policy": ["--checkpoint", "models/policy"]}
    for command, action in takes_store:
        rest = extra.get(action, [])
        default = build_parser().parse_args([command, action, *rest])
        before = build_parser().parse_args([command, "--store", "a.duckdb", action, *rest])
        after = build_parser().parse_args([command, action, "--store", "a.duckdb", *rest])
        assert default.store == STORE_DEFAULT, (command, action)
        assert before.store == after.store == "a.duckdb", (command, action)
    # the earlier spelling still reads
    assert build_parser().parse_args(["store", "--path", "old.duckdb", "stats"]).store == "old.duckdb"


def test_a_model_directory_with_no_saved_model_is_one_error_naming_it(tmp_path, capsys, tiny_tokenizer):
    """An empty folder, or the parent of the model's: one line, not transformers' hint to install
    sentencepiece."""
    from rlhf.cli import main
    from rlhf.errors import InputError
    from rlhf.pretrained import load_policy, load_scalar_head_model

    empty, tokenizer_only = tmp_path / "empty", tmp_path / "tokenizer-only"
    empty.mkdir()
    tiny_tokenizer.save_pretrained(tokenizer_only)
    assert main(["serve", "reward", "--model", str(empty), "--port", free_port()]) == 2
    error = capsys.readouterr().err
    assert (
        f"{empty}: no saved tokenizer here" in error and "install" not in error
    )  # transformers: "install sentencepiece"
    for load in (lambda path: load_policy(path, "cpu"), lambda path: load_scalar_head_model(path, "cpu", 0)):
        with pytest.raises(InputError, match=f"{tokenizer_only}: no saved model here"):
            load(tokenizer_only)


def test_a_server_on_a_taken_port_or_no_port_is_one_error_before_it_starts(tmp_path, capsys):
    import socket

    from rlhf.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        reward = ["serve", "reward", "--model", str(tmp_path), "--port", port]
        page = ["annotate", "--store", str(tmp_path / "feedback.duckdb"), "serve", "--port", port]
        for command in (reward, [*page, "--params", str(tmp_path / "none.yaml")]):
            assert main(command) == 2, command
            error = capsys.readouterr()
            assert f"--port {port}: cannot listen there" in error.err and "pass another --port" in error.err
            assert "http://" not in error.out + error.err
        assert not (tmp_path / "feedback.duckdb").exists()  # refused before the page made its store
    with pytest.raises(SystemExit) as usage:
        main(["serve", "reward", "--port", "99999"])
    assert usage.value.code == 2 and "99999 is not a TCP port" in capsys.readouterr().err


def free_port() -> str:
    """A port nothing listens on now (the default may be taken on a shared machine)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])
