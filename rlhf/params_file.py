"""params.yaml written from the schema (rlhf/config.py), so every default lives in one place.

`python -m rlhf.params_file` writes params.yaml: every key at its default, with its field's
docstring (or, for a section, its model's) as the comment above it. `--check` writes nothing and
exits 1 when the file differs; tests/test_config.py makes the same comparison. A key marked
SHOWN_WHEN_SET is written only where its value is not the default, so the file holds every key
dvc.yaml names by dotted path and none of the settings of a judge or a source not in use.
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import sys
import textwrap
from pathlib import Path

import yaml
from pydantic import BaseModel

from rlhf.config import PARAMS_FILE, Params

WIDTH = 100  # comment lines are wrapped to this many characters, indentation included

HEADER = """\
# Every knob of the pipeline, at its default. Written from the schema, rlhf/config.py, where each
# default lives and whose field docstrings are the comments below: to change a default, edit the
# schema and run `python -m rlhf.params_file` (tests/test_config.py fails when the two drift). For a
# run of your own, set values here (or `dvc exp run -S key=value`); a key left out means its default."""


def render(params: Params | None = None) -> str:
    """The text of a params.yaml holding `params` (default: the schema's defaults), commented."""
    lines = HEADER.splitlines()
    for key_lines in _fields(params or Params()):
        lines += ["", *key_lines]  # a blank line between top-level keys
    return "\n".join(lines) + "\n"


def _fields(model: BaseModel) -> list[list[str]]:
    """Each written field of `model` as its lines (comment, then key and value), unindented."""
    written = []
    docs = field_docstrings(type(model))
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if (field.json_schema_extra or {}).get("shown_when_set") and value == field.get_default(
            call_default_factory=True
        ):
            continue
        # A section without a docstring of its own as a field is described by its model's.
        doc = docs.get(name) or (type(value).__dict__.get("__doc__") if isinstance(value, BaseModel) else None)
        written.append(_comment(doc) + _key(name, value))
    return written


@functools.cache
def field_docstrings(model: type[BaseModel]) -> dict[str, str]:
    """{field: its docstring}: the string literal written under a field of `model` and its bases."""
    docs = {}
    for cls in reversed([c for c in model.__mro__ if issubclass(c, BaseModel) and c is not BaseModel]):
        body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        for field, after in zip(body, body[1:]):
            if (
                isinstance(field, ast.AnnAssign)
                and isinstance(field.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[field.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _key(name: str, value: object) -> list[str]:
    if isinstance(value, BaseModel):
        return [f"{name}:", *_indented(sum(_fields(value), []), "  ")]
    if isinstance(value, list) and value and all(isinstance(item, BaseModel) for item in value):
        return [f"{name}:", *(line for item in value for line in _list_item(item))]
    return [f"{name}: {_scalar(value)}"]


def _list_item(item: BaseModel) -> list[str]:
    """`item` as a YAML list entry: its first key after the dash, its first key's comment above it."""
    lines = sum(_fields(item), [])
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return [*_indented(lines[:first], "  "), f"  - {lines[first]}", *_indented(lines[first + 1 :], "    ")]


def _indented(lines: list[str], prefix: str) -> list[str]:
    return [prefix + line for line in lines]


def _comment(doc: str | None) -> list[str]:
    # Wrapped to WIDTH at the deepest indentation params.yaml has (three levels), so a comment's
    # lines do not depend on where it ends up.
    if not doc:
        return []
    text = " ".join(doc.split())
    return [f"# {line}" for line in textwrap.wrap(text, WIDTH - 8, break_on_hyphens=False, break_long_words=False)]


def _scalar(value: object) -> str:
    """A value on one line as PyYAML writes it (2.0e-05, null, [a, b]), so safe_load reads it back."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rlhf.params_file",
        description="Write params.yaml from the schema's defaults (rlhf/config.py), each key with its docstring.",
    )
    parser.add_argument("path", nargs="?", default=PARAMS_FILE, help="the file to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the file differs")
    args = parser.parse_args(argv)
    path, text = Path(args.path), render()
    if args.check:
        if path.is_file() and path.read_text() == text:
            return 0
        print(f"{path}: differs from the schema's defaults; run python -m rlhf.params_file", file=sys.stderr)
        return 1
    path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
