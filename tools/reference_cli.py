"""docs/reference/cli.md: every `rlhf` command's help, from the parser itself (rlhf/cli.py), so the
page says what `rlhf ... --help` says. A command without a help line stops the build."""

from __future__ import annotations

import argparse
import os

from rlhf.cli import build_parser

WIDTH = "100"  # argparse wraps to $COLUMNS: fixed, so the page does not depend on the terminal


class MissingHelp(Exception):
    """A command the parser does not describe."""


def commands(parser: argparse.ArgumentParser, path: list[str]) -> list[tuple[list[str], str, argparse.ArgumentParser]]:
    """(words, help line, parser) of every command under `parser`, depth first, in the parser's order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append(([*path, name], helps.get(name) or "", sub))
                found += commands(sub, [*path, name])
    return found


def render() -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        lines = [
            "# Command-line reference",
            "",
            "Every `rlhf` command, with the help its parser prints (`rlhf COMMAND --help`), generated from",
            "`rlhf/cli.py` (`make docs`). The pipeline's stages and flows have their own: see",
            "[operating with Prefect](../how-to/operate.md).",
            "",
            "```text",
            parser.format_help().rstrip(),
            "```",
            "",
        ]
        missing = []
        for words, help_line, sub in commands(parser, ["rlhf"]):
            if not help_line:
                missing.append(" ".join(words))
            lines += [f"{'#' * min(len(words), 4)} `{' '.join(words)}`", "", help_line, "", "```text"]
            lines += [sub.format_help().rstrip(), "```", ""]
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    if missing:
        raise MissingHelp("rlhf commands without a help line in rlhf/cli.py: " + ", ".join(missing))
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
