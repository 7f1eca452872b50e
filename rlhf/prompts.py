"""Prompt collection: read prompts from several sources, clean, deduplicate and split them, keeping
where each came from.

A source (rlhf.config's PromptSource) is the demo domain, a file, a Hugging Face dataset or a DuckDB
query. Each reader turns its rows into conversations (rlhf.chat): a string prompt is one user
message, chat messages are kept with every turn. A prompt's id and split are hashes of
`chat.prompt_key`, so a string prompt keeps the id and split it always had.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rlhf import chat
from rlhf.config import DemoPromptSource, FilePromptSource, HFDatasetPromptSource, PromptSource, SQLPromptSource
from rlhf.demo import domain
from rlhf.errors import InputError, PromptSourceError, StoreError
from rlhf.jsonl import json_objects
from rlhf.store import FeedbackStore, QueryError, query_in_memory
from rlhf.text import content_id, split_of

# prompt: the text (rlhf.chat.transcript); messages: the chat messages as JSON (rlhf.chat.to_json);
# source_row: the prompt's row in its source (1-based), None where the source has no rows.
PROMPT_COLUMNS = ["prompt_id", "prompt", "messages", "topic", "split", "source", "source_row"]
# What every reader returns, one row per source row: conversation is None for an empty prompt.
ROW_COLUMNS = ["conversation", "prompt", "topic", "source", "source_row"]


# --- one source's rows as conversations ---


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _conversation(value: object, where: str, is_messages: bool) -> chat.Conversation | None:
    """A cell as a conversation with each turn's text stripped; None when no turn has text."""
    if is_messages and isinstance(value, str):  # CSV cells and SQL text hold messages as JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError as failure:
            raise PromptSourceError(f"{where}: not valid JSON ({failure.msg})") from None
    try:
        conversation = chat.as_conversation(value, where)
    except InputError as error:
        raise PromptSourceError(str(error)) from None
    stripped = [{"role": m["role"], "content": m["content"].strip()} for m in conversation]
    return stripped if any(m["content"] for m in stripped) else None


def _topic(value: object) -> str | None:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)) or (isinstance(value, str) and not value):
        return None
    return str(value)


def _rows(label: str, where: str, column: str, is_messages: bool, values: Sequence, topics: Sequence) -> pd.DataFrame:
    """The source's rows in ROW_COLUMNS; `where` names the source in errors, `label` in provenance."""
    if len(values) == 0:
        raise PromptSourceError(f"{where}: no rows")
    conversations = [
        _conversation(value, f"{where}: row {row}: column '{column}'", is_messages)
        for row, value in enumerate(values, 1)
    ]
    return pd.DataFrame(
        {
            "conversation": pd.Series(conversations, dtype=object),
            "prompt": [chat.transcript(c) if c else None for c in conversations],
            "topic": [_topic(t) for t in topics],
            "source": label,
            "source_row": range(1, len(values) + 1),
        }
    )


def _prompt_column(frame: pd.DataFrame, where: str, columns: Mapping[str, str]) -> tuple[str, bool]:
    """The column holding the prompts and whether it is a `messages` one. Unmapped, messages wins over
    prompt: it keeps every turn, and our own prompts.parquet then reads back to the same ids."""
    found = f"found {list(frame.columns)}"
    for ours in ("messages", "prompt"):
        if ours in columns:
            if columns[ours] not in frame.columns:
                raise PromptSourceError(f"{where}: missing column '{columns[ours]}' (columns.{ours}; {found})")
            return columns[ours], ours == "messages"
    for ours in ("messages", "prompt"):
        if ours in frame.columns:
            return ours, ours == "messages"
    raise PromptSourceError(f"{where}: missing column 'prompt' or 'messages' ({found})")


def _from_table(frame: pd.DataFrame, label: str, columns: Mapping[str, str] | None = None, where: str | None = None):
    """Rows of a table with a prompt or messages column and an optional topic column."""
    columns, where = columns or {}, where or label
    column, is_messages = _prompt_column(frame, where, columns)
    topic = columns.get("topic", "topic")
    if topic not in frame.columns and "topic" in columns:
        raise PromptSourceError(f"{where}: missing column '{topic}' (columns.topic; found {list(frame.columns)})")
    topics = frame[topic] if topic in frame.columns else [None] * len(frame)
    return _rows(label, where, column, is_messages, list(frame[column]), list(topics))


# --- the readers, one per kind of source ---


def demo_prompts() -> pd.DataFrame:
    """The synthetic domain's prompts; its held-out topics and template are test-only (domain.is_held_out)."""
    rows = domain.all_prompts()
    frame = _rows("demo", "demo", "prompt", False, [p for p, _ in rows], [t for _, t in rows])
    return frame.assign(held_out=[domain.is_held_out(p, t) for p, t in rows])


def _read_jsonl(path: Path) -> pd.DataFrame:
    return pd.DataFrame.from_records([record for _, record in json_objects(path, PromptSourceError)])


def _read_csv(path: Path) -> pd.DataFrame:
    # Every cell as the text it is: a prompt "NA" or "null" stays a prompt, an empty one is empty.
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def file_prompts(path: str | Path, columns: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Prompts from .jsonl, .csv or .parquet with a `prompt` or `messages` column (and optional `topic`)."""
    path = Path(path)
    if not path.exists():
        raise PromptSourceError(f"{path}: not found")
    readers = {".jsonl": _read_jsonl, ".csv": _read_csv, ".parquet": pd.read_parquet}
    if path.suffix not in readers:
        raise PromptSourceError(f"{path}: unsupported format (use .jsonl, .csv or .parquet)")
    try:
        frame = readers[path.suffix](path)
    except PromptSourceError:
        raise
    except Exception as error:  # pandas/pyarrow raise many types for a malformed file
        raise PromptSourceError(f"{path}: cannot read ({_first_line(error)})") from None
    return _from_table(frame, str(path), columns)


@contextlib.contextmanager
def _quiet_hub() -> Iterator[None]:
    """Silence the hub client's retry warnings: a failed load is reported as one line."""
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _one_split(loaded, split: str | None, where: str):
    """A Dataset as it is; from a DatasetDict the split asked for, or its only one."""
    if not hasattr(loaded, "keys"):
        return loaded
    names = list(loaded.keys())
    if split is None and len(names) == 1:
        return loaded[names[0]]
    if split not in names:
        asked = f"no split '{split}'" if split else "several splits: set split"
        raise PromptSourceError(f"{where}: {asked} (splits: {', '.join(names)})")
    return loaded[split]


def _load_dataset(source: HFDatasetPromptSource, where: str):
    import datasets  # only this source needs it (a second of import time)

    if source.path is not None:
        if not Path(source.path).exists():
            raise PromptSourceError(f"{where}: not found")
        try:
            return _one_split(datasets.load_from_disk(source.path), source.split, where)
        except PromptSourceError:
            raise
        except Exception as error:  # a directory save_to_disk did not write
            raise PromptSourceError(f"{where}: cannot load ({_first_line(error)})") from None
    try:
        with _quiet_hub():
            loaded = datasets.load_dataset(source.name, source.config, split=source.split)
    except ConnectionError:  # what datasets raises when neither the hub nor its cache has the dataset
        raise PromptSourceError(f"{where}: the Hugging Face hub could not be reached to load '{source.name}'") from None
    except Exception as error:
        raise PromptSourceError(f"{where}: cannot load '{source.name}' ({_first_line(error)})") from None
    return _one_split(loaded, source.split, where)


def hf_prompts(source: HFDatasetPromptSource) -> pd.DataFrame:
    """Prompts from a Hugging Face dataset: a save_to_disk directory or a hub id."""
    label = f"hf:{source.path or source.name}"
    where = f"hf dataset '{source.path or source.name}'"
    dataset = _load_dataset(source, where)
    return _from_table(dataset.to_pandas(), label, source.prompt_columns, where)


def _run_query(query: str, database: str | None, where: str) -> pd.DataFrame:
    try:
        if database is None:
            return query_in_memory(query)
        if not Path(database).exists():
            raise PromptSourceError(f"{where}: {database} not found")
        # The store's own file may be in use by another stage: FeedbackStore reads it read-only.
        return FeedbackStore(database).query(query)
    except QueryError as error:
        raise PromptSourceError(f"{where}: {_first_line(error)}") from None
    except StoreError as error:
        raise PromptSourceError(f"{where}: {error}") from None


def sql_prompts(query: str, database: str | None = None) -> pd.DataFrame:
    """Prompts from a DuckDB query over a database file (read-only) or, without one, over Parquet files."""
    short = " ".join(query.split())
    short = short if len(short) <= 80 else short[:77] + "..."
    where = f"sql query on {database or 'in-memory DuckDB'} ({short!r})"
    return _from_table(_run_query(query, database, where), f"sql:{database or 'memory'}", where=where)


def read_source(source: PromptSource) -> pd.DataFrame:
    if isinstance(source, DemoPromptSource):
        return demo_prompts()
    if isinstance(source, FilePromptSource):
        return file_prompts(source.path, source.columns)
    if isinstance(source, HFDatasetPromptSource):
        return hf_prompts(source)
    if isinstance(source, SQLPromptSource):
        return sql_prompts(source.query, source.database)
    raise TypeError(f"unknown prompt source {source!r}")


# --- many sources as one set of prompts ---


@dataclass(frozen=True)
class SourceCount:
    source: str
    rows: int  # rows the source read
    empty: int  # rows with no text
    duplicates: int  # rows whose prompt came earlier, in this source or an earlier one
    beyond_limit: int  # new prompts the source's limit left out
    prompts: int  # prompts the source gave

    def __str__(self) -> str:
        return (
            f"{self.source}: {self.prompts} prompts of {self.rows} rows "
            f"({self.duplicates} duplicates, {self.empty} empty, {self.beyond_limit} beyond its limit)"
        )


def take(rows: pd.DataFrame, seen: set[str], limit: int | None) -> tuple[pd.DataFrame, SourceCount]:
    """The source's new prompts: non-empty, not in `seen` (earlier sources) nor repeated, its first
    `limit`; with key (what id and split hash) and messages."""
    label = rows["source"].iloc[0]
    present = rows[rows["conversation"].notna()]
    if present.empty:
        raise PromptSourceError(f"{label}: no prompts left after dropping empty ones ({len(rows)} rows)")
    keys = present["conversation"].map(chat.prompt_key)
    frame = present.assign(key=keys, prompt_id=keys.map(content_id), messages=present["conversation"].map(chat.to_json))
    new = frame[~frame["prompt_id"].isin(seen) & ~frame["prompt_id"].duplicated()]
    kept = new.iloc[:limit]
    count = SourceCount(
        label, len(rows), len(rows) - len(present), len(frame) - len(new), len(new) - len(kept), len(kept)
    )
    return kept.drop(columns="conversation"), count


def _split_and_order(taken: pd.DataFrame, test_fraction: float, max_prompts: int | None) -> pd.DataFrame:
    """The first max_prompts, with their splits, in a deterministic order (by id)."""
    frame = taken.iloc[:max_prompts]
    if frame.empty:
        raise PromptSourceError("no prompts left after dropping empty and duplicate ones")
    # A source may mark prompts test-only (the demo's unseen topics and template); the rest split by hash.
    held_out = frame["held_out"].fillna(False).astype(bool) if "held_out" in frame else pd.Series(False, frame.index)
    frame = frame.assign(
        split=frame["key"].map(lambda key: split_of(key, test_fraction)).where(~held_out, "test"),
        topic=frame["topic"].astype("string"),
        source_row=frame["source_row"].astype("Int64"),
    )
    return frame[PROMPT_COLUMNS].sort_values("prompt_id").reset_index(drop=True)


def collect(
    sources: Iterable[PromptSource], test_fraction: float, max_prompts: int | None
) -> tuple[pd.DataFrame, list[SourceCount]]:
    """Every source's prompts, deduplicated by id (the first source wins), limited, split and ordered;
    with what each source gave."""
    seen: set[str] = set()
    taken, counts = [], []
    for source in sources:
        prompts, count = take(read_source(source), seen, source.limit)
        seen.update(prompts["prompt_id"])
        taken.append(prompts)
        counts.append(count)
    return _split_and_order(pd.concat(taken, ignore_index=True), test_fraction, max_prompts), counts


def finalize(rows: pd.DataFrame, test_fraction: float, max_prompts: int | None) -> pd.DataFrame:
    """One source's rows as the stage's prompts: stripped, empty and repeated ones dropped, split, ordered."""
    prompts, _ = take(rows, set(), None)
    return _split_and_order(prompts, test_fraction, max_prompts)
