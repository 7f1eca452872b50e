"""Prompt collection: read, clean, deduplicate and split prompts, keeping where each came from."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from rlhf.demo import domain
from rlhf.errors import PromptSourceError
from rlhf.jsonl import json_objects
from rlhf.text import content_id

# prompt: the text (rlhf.chat.transcript); messages: the chat messages as JSON (rlhf.chat.to_json);
# source_row: the prompt's row in its source (1-based), None where the source has no rows.
PROMPT_COLUMNS = ["prompt_id", "prompt", "messages", "topic", "split", "source", "source_row"]


def split_of(prompt: str, test_fraction: float) -> str:
    """train or test, from a hash of the text: stable across runs, machines and file order."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if bucket < test_fraction else "train"


def demo_prompts() -> pd.DataFrame:
    rows = domain.all_prompts()
    return pd.DataFrame({"prompt": [p for p, _ in rows], "topic": [t for _, t in rows], "source": "demo"})


def _read_jsonl(path: Path) -> pd.DataFrame:
    return pd.DataFrame.from_records([record for _, record in json_objects(path, PromptSourceError)])


def file_prompts(path: str | Path) -> pd.DataFrame:
    """Prompts from .jsonl, .csv or .parquet with a `prompt` column (and optional `topic`)."""
    path = Path(path)
    if not path.exists():
        raise PromptSourceError(f"{path}: not found")
    readers = {".jsonl": _read_jsonl, ".csv": pd.read_csv, ".parquet": pd.read_parquet}
    if path.suffix not in readers:
        raise PromptSourceError(f"{path}: unsupported format (use .jsonl, .csv or .parquet)")
    try:
        frame = readers[path.suffix](path)
    except PromptSourceError:
        raise
    except Exception as error:  # pandas/pyarrow raise many types for a malformed file
        raise PromptSourceError(f"{path}: cannot read ({error})") from None
    if "prompt" not in frame.columns:
        raise PromptSourceError(f"{path}: missing column 'prompt' (found {list(frame.columns)})")
    bad = frame.index[~frame["prompt"].map(lambda p: isinstance(p, str))]
    if len(bad):
        raise PromptSourceError(f"{path}: row {bad[0] + 1}: 'prompt' must be text")
    topic = frame["topic"] if "topic" in frame.columns else None
    return pd.DataFrame({"prompt": frame["prompt"], "topic": topic, "source": str(path)})


def finalize(raw: pd.DataFrame, test_fraction: float, max_prompts: int | None) -> pd.DataFrame:
    """Strip, drop empty and duplicate prompts, assign ids and splits, in a deterministic order."""
    frame = raw.assign(prompt=raw["prompt"].str.strip())
    frame = frame[frame["prompt"] != ""].drop_duplicates("prompt", keep="first")
    if max_prompts is not None:
        frame = frame.head(max_prompts)
    if frame.empty:
        raise PromptSourceError("no prompts left after dropping empty and duplicate ones")
    frame = frame.assign(
        prompt_id=frame["prompt"].map(content_id),
        split=frame["prompt"].map(lambda p: split_of(p, test_fraction)),
        topic=frame["topic"].astype("string") if "topic" in frame else pd.NA,
    )
    return frame[PROMPT_COLUMNS].sort_values("prompt_id").reset_index(drop=True)
