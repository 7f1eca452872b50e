"""The store's labelled pairs, written for other tools.

- trl: JSONL in TRL's standard preference format, {"prompt", "chosen", "rejected"} per line, each
  a string: a prompt of one user message is its text, a longer conversation its transcript
  ("Human: ...\\n\\nAssistant: ..."); a response of several turns likewise.
- trl-conversational: the same as chat messages, from the store's `messages` columns: the prompt's
  turns as they were imported or sampled, chosen and rejected as the turns after the prompt.
  Importing such a file (`rlhf store import --format trl`) and exporting it gives it back (in the
  store's order, ties left out); an implicit-prompt file comes back with its prompt explicit.
- hf-dataset: a Hugging Face `datasets` dataset (standard format) saved to disk (`load_from_disk`).
- csv: every column of the comparisons snapshot, ties, weights and provenance included.

TRL formats leave ties out (they state no preference). Each output appears whole or not at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from rlhf import chat

FORMATS = ("trl", "trl-conversational", "hf-dataset", "csv")


def export_pairs(pairs: pd.DataFrame, out: str | Path, fmt: str, split: str = "all") -> int:
    """Write `pairs` (the comparisons snapshot's columns) to `out`; returns how many rows were written."""
    out = Path(out)
    if split != "all":
        pairs = pairs[pairs["split"] == split]
    if fmt != "csv":
        pairs = pairs[~pairs["tie"]]
    partial = out.with_name(out.name + ".partial")
    if partial.is_dir():
        shutil.rmtree(partial)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        pairs.to_csv(partial, index=False)
    elif fmt == "hf-dataset":
        from datasets import Dataset

        Dataset.from_pandas(pairs[["prompt", "chosen", "rejected"]], preserve_index=False).save_to_disk(str(partial))
    elif fmt in ("trl", "trl-conversational"):
        with partial.open("w") as handle:
            for row in pairs.itertuples():
                handle.write(json.dumps(_trl_record(row, fmt == "trl-conversational"), ensure_ascii=False) + "\n")
    else:
        raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    if out.is_dir():
        shutil.rmtree(out)
    partial.replace(out)
    return len(pairs)


def _trl_record(row, conversational: bool) -> dict:
    if not conversational:
        return {"prompt": row.prompt, "chosen": row.chosen, "rejected": row.rejected}
    return {
        "prompt": chat.from_json(row.prompt_messages),
        "chosen": chat.from_json(row.chosen_messages),
        "rejected": chat.from_json(row.rejected_messages),
    }
