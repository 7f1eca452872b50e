"""A flow's command line, built from the same parameter schema as the Prefect UI's form.

Prefect reads a flow's parameters from its signature (names, types, defaults) and their
descriptions from the docstring's Google-style `Args:` section (`parameter_schema`); the UI's
"Run" form is generated from that schema, and so is this parser. A parameter added to a flow
appears in both at once, with the same default and description, and a value given here is
validated by the flow's own pydantic model (`Flow.validate_parameters`), as the UI's is.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from prefect import Flow
from prefect.exceptions import ParameterTypeError
from prefect.logging.loggers import disable_logger
from prefect.utilities.callables import parameter_schema

STRUCTURED_TYPES = {"array", "object"}  # given on the command line as JSON, as the UI's JSON fields take them


def schema_types(field: dict) -> set[str]:
    """The JSON types a field accepts: `int | None` is {"integer", "null"}."""
    if "type" in field:
        return {field["type"]}
    return {option.get("type") for option in field.get("anyOf", []) if option.get("type")}


def option_help(field: dict) -> str:
    described = field.get("description") or ""
    if "default" in field:
        return f"{described} (default: {json.dumps(field['default'])})".strip()
    return f"{described} (required)".strip()


def flow_parser(flow: Flow, prog: str, positional: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """An argparse parser with one option per flow parameter: `--name-with-dashes VALUE`, a boolean
    as `--name/--no-name`, a list or dict as JSON. `positional` names parameters also taken as
    positional arguments (a project directory). Every help line is the parameter's description."""
    schema = parameter_schema(flow.fn).model_dump()
    description = (flow.description or "").strip()
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description.split("\n\n")[0],
        epilog="Every option is a parameter of the Prefect flow "
        f"{flow.name!r}, as in the UI's form for its deployments.",
    )
    for name, field in schema["properties"].items():
        help_text = option_help(field)
        types = schema_types(field)
        if name in positional:
            parser.add_argument(name, nargs="?", default=argparse.SUPPRESS, help=help_text)
            continue
        flag = option_name(name)
        if types == {"boolean"}:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            metavar = "JSON" if types & STRUCTURED_TYPES else name.upper()
            parser.add_argument(
                flag,
                dest=name,
                default=argparse.SUPPRESS,
                metavar=metavar,
                required="default" not in field,
                help=help_text,
            )
    return parser


def flow_arguments(flow: Flow, parser: argparse.ArgumentParser, argv: list[str] | None = None) -> dict[str, Any]:
    """The keyword arguments for `flow` from the command line (`flow_parser`'s), validated and cast
    by the flow's own parameter model; only those given, so every other parameter keeps the flow's
    default. A bad value is one argparse error (exit 2) naming its option."""
    given = vars(parser.parse_args(argv))
    fields = parameter_schema(flow.fn).model_dump()["properties"]
    for name in given:
        if schema_types(fields[name]) & STRUCTURED_TYPES:
            try:
                given[name] = json.loads(given[name])
            except ValueError as error:
                parser.error(f"{option_name(name)}: not JSON ({error})")
    try:
        with disable_logger("prefect.flows"):  # it would log the same error again, with a traceback's noise
            validated = flow.validate_parameters(given)
    except ParameterTypeError as error:  # its lines: " - <parameter>: <pydantic's message>"
        problems = [line.removeprefix(" - ").split(": ", 1) for line in str(error).splitlines()[1:]]
        parser.error("; ".join(f"{option_name(name)}: {message}" for name, message in problems))
    return {name: validated[name] for name in given}


def option_name(parameter: str) -> str:
    return "--" + parameter.replace("_", "-")
