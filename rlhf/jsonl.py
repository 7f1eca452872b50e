"""JSON Lines files read one object per line, a bad line named by number."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path


def json_objects(path: Path, error: type[Exception]) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; `error` names the file and line of a bad one."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as failure:
            raise error(f"{path}:{number}: not valid JSON ({failure.msg})") from None
        if not isinstance(record, dict):
            raise error(f"{path}:{number}: expected a JSON object")
        yield number, record
