"""docs/reference/params.md: every params.yaml key with its type, default and description, from the
schema (rlhf/config.py), where each is defined once. A key without a description stops the build."""

from __future__ import annotations

import inspect
import types
import typing
from typing import Literal

from pydantic import BaseModel

from rlhf.config import Params
from rlhf.params_file import _scalar, field_docstrings


class MissingDescription(Exception):
    """A params key the schema does not describe: the reference would have a hole."""


def type_name(annotation: object) -> str:
    """`annotation` as a reader writes it: `current | all`, `list[int]`, `float | null`."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(_scalar(value) for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(annotation))
    if origin is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(type_name(arg) for arg in typing.get_args(annotation))}]"
    if annotation is type(None):
        return "null"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def section_models(annotation: object) -> list[type[BaseModel]]:
    """The models a field holds (itself, a list's items or a union's members) whose keys it nests."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) is Literal:
        return []
    return [model for arg in typing.get_args(annotation) for model in section_models(arg)]


def rows(model: type[BaseModel], prefix: str, missing: list[str]) -> list[str]:
    """Markdown for `model`'s keys under `prefix`: a table of its plain keys, then a heading, its
    description and its own table for each section it nests (a list of sections: one per kind)."""
    docs = field_docstrings(model)
    defaults = _default_instance(model)
    table, nested = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        doc = docs.get(name)
        submodels = section_models(field.annotation)
        is_list = typing.get_origin(_unannotated(field.annotation)) is list
        if _is_discriminator(name, field.annotation):
            continue  # the heading names the kind
        if submodels and not is_list:
            nested += [(key, submodel, doc or submodel.__doc__) for submodel in submodels]
            continue
        if not doc:
            missing.append(f"{model.__name__}.{name}")
        default = getattr(defaults, name, None) if defaults is not None else field.get_default()
        if submodels:
            default_text = f"{len(default)} entries, below" if default else "[]"
            nested += [(f"{key}[]", submodel, submodel.__doc__) for submodel in submodels]
        else:
            default_text = "required" if field.is_required() else _scalar(_jsonable(default))
        table.append(
            f"| `{key}` | {_cell(type_name(field.annotation))} | `{_cell(default_text)}` | {_cell(doc or '')} |"
        )
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |", *table, ""] if table else []
    for key, submodel, doc in nested:
        kind = _kind_of(submodel)
        title = f"`{key}`" + (f" (kind: `{kind}`)" if kind and key.endswith("[]") else "")
        if not doc:
            missing.append(f"{submodel.__name__} (at {key})")
        lines += [f"{'#' * min(2 + key.count('.'), 6)} {title}", "", " ".join(inspect.cleandoc(doc or "").split()), ""]
        lines += rows(submodel, f"{key}.", missing)
    return lines


def _unannotated(annotation: object) -> object:
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


def _is_discriminator(name: str, annotation: object) -> bool:
    return name == "kind" and typing.get_origin(annotation) is Literal and len(typing.get_args(annotation)) == 1


def _kind_of(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("kind")
    if field is not None and _is_discriminator("kind", field.annotation):
        return typing.get_args(field.annotation)[0]
    return None


def _default_instance(model: type[BaseModel]) -> BaseModel | None:
    try:
        return model()
    except Exception:  # a section with required keys (a reward term's name): no defaults to show
        return None


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    missing: list[str] = []
    body = rows(Params, "", missing)
    missing = list(dict.fromkeys(missing))
    if missing:
        raise MissingDescription("params keys without a description in rlhf/config.py: " + ", ".join(missing))
    header = [
        "# params.yaml reference",
        "",
        "Every key of `params.yaml`, generated from the schema in `rlhf/config.py` (`make docs`). A key",
        "left out of a params file takes the default shown; `dvc exp run -S key=value` sets one for a run.",
        "",
    ]
    return "\n".join(header + body)


if __name__ == "__main__":
    print(render())
