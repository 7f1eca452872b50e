"""JSON Lines files read one object per line, a bad line named by number."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path


def read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz."""
    if path.suffix == ".gz":
        with gzip.open(path) as handle:
            return handle.read()
    return path.read_bytes()


def read_text(path: Path) -> str:
    """The file's text (UTF-8), gunzipped when its name ends in .gz."""
    return read_bytes(path).decode("utf-8")


def json_objects(path: Path, error: type[Exception]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; `error` names the file and line of a bad one."""
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as failure:
            raise error(f"{path}:{number}: not valid JSON ({failure.msg})") from None
        if not isinstance(record, dict):
            raise error(f"{path}:{number}: expected a JSON object")
        yield number, record
