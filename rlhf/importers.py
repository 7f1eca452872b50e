"""Rankings made elsewhere, read into the store's shape: CSV/JSONL, Argilla ranking exports, HH-RLHF.

Every reader returns (prompts, responses, rankings) frames that `FeedbackStore.ingest` takes, with
judge `human` and the annotator (or the file's name) as judge version, so imported labels carry
their source like labels from the ranking page. A malformed file stops with one line naming the
file and the line or record.

- csv / jsonl: one row per response: `prompt`, `response`, `rank` (1 best; equal ranks tie), and
  optionally `annotator`. Rows of the same prompt and annotator are one ranking. `columns` maps
  these names to the file's own (e.g. {"prompt": "question"}).
- argilla: a JSON list (or JSONL) of Argilla FeedbackDataset records: `fields` holding the prompt
  and responses, `responses` holding each annotator's submitted `ranking` value
  (`[{"value": <field name>, "rank": n}, ...]`).
- hh-rlhf: Anthropic HH-RLHF JSONL, `chosen` and `rejected` transcripts that share a prompt and
  differ in the last `Assistant:` turn; each line is a ranking of two. `.jsonl.gz` is read as is.

An import is all or nothing: the whole file is read and checked before one transaction writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from rlhf.errors import InputError
from rlhf.jsonl import json_objects, read_text
from rlhf.prompts import PROMPT_COLUMNS, split_of
from rlhf.ranking import RANKING_COLUMNS
from rlhf.sampling import RESPONSE_COLUMNS
from rlhf.store import HUMAN_JUDGE
from rlhf.text import content_id

FORMATS = ("csv", "jsonl", "argilla", "hh-rlhf")
ASSISTANT_TURN = "\n\nAssistant:"


class ImportFileError(InputError):
    """A rankings file that cannot be read as its format says."""


def read_rankings(
    path: str | Path, fmt: str, test_fraction: float = 0.2, columns: dict[str, str] | None = None
) -> tuple[pd.DataFrame, ...]:
    path = Path(path)
    if not path.exists():
        raise ImportFileError(f"{path}: not found")
    if fmt in ("csv", "jsonl"):
        groups = _table_groups(path, fmt, columns or {})
    elif fmt == "argilla":
        groups = _argilla_groups(path)
    elif fmt == "hh-rlhf":
        groups = _hh_groups(path)
    else:
        raise ImportFileError(f"{path}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if not groups:
        raise ImportFileError(f"{path}: no rankings in the file")
    return _frames(groups, f"import:{path.name}", test_fraction)


def _frames(groups: list[tuple[str, str, list[tuple[str, int]]]], source: str, test_fraction: float):
    """groups: (prompt, annotator, [(response text, rank), ...]) -> prompts, responses, rankings."""
    prompts, responses, rankings = {}, {}, []
    for prompt, annotator, ranked in groups:
        prompt_id = content_id(prompt)
        prompts[prompt_id] = (prompt_id, prompt, None, split_of(prompt, test_fraction), source)
        ids = []
        for text, _ in ranked:
            response_id = content_id(prompt_id, source, 0, text)
            responses[response_id] = (response_id, prompt_id, 0, text, source, "{}")
            ids.append(response_id)
        ranking_id = content_id(prompt_id, HUMAN_JUDGE, annotator, *sorted(ids))
        for response_id, (_, rank) in zip(ids, ranked):
            rankings.append((ranking_id, response_id, prompt_id, rank, float(-rank), "{}", HUMAN_JUDGE, annotator))
    return (
        pd.DataFrame(list(prompts.values()), columns=PROMPT_COLUMNS),
        pd.DataFrame(list(responses.values()), columns=RESPONSE_COLUMNS),
        pd.DataFrame(rankings, columns=RANKING_COLUMNS).drop_duplicates(["ranking_id", "response_id"]),
    )


def _table_groups(path: Path, fmt: str, columns: dict[str, str]) -> list:
    rename = {theirs: ours for ours, theirs in columns.items()}
    if fmt == "csv":
        try:
            table = pd.read_csv(path, dtype=str).rename(columns=rename)
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise ImportFileError(f"{path}: not readable as CSV ({error})") from None
        records = [(number + 2, row) for number, row in enumerate(table.to_dict("records"))]  # +2: header, 1-based
    else:
        records = [(line, {rename.get(k, k): v for k, v in row.items()}) for line, row in _json_lines(path)]
    groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for line, row in records:
        missing = [key for key in ("prompt", "response", "rank") if key not in row or pd.isna(row[key])]
        if missing:
            raise ImportFileError(f"{path}: line {line}: missing {', '.join(missing)}")
        try:
            rank = int(row["rank"])
        except (TypeError, ValueError):
            raise ImportFileError(f"{path}: line {line}: rank must be a whole number (got {row['rank']!r})") from None
        annotator = str(row.get("annotator") or path.name)
        groups.setdefault((str(row["prompt"]), annotator), []).append((str(row["response"]), rank))
    return [(prompt, annotator, ranked) for (prompt, annotator), ranked in groups.items() if len(ranked) >= 2]


def _json_lines(path: Path):
    return json_objects(path, ImportFileError)


def _argilla_groups(path: Path) -> list:
    text = read_text(path)
    try:
        records = list(enumerate(json.loads(text), start=1)) if text.lstrip().startswith("[") else None
    except json.JSONDecodeError as error:
        raise ImportFileError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
    records = records if records is not None else list(_json_lines(path))
    groups = []
    for number, record in records:
        fields = record.get("fields") if isinstance(record, dict) else None
        if not isinstance(fields, dict) or "prompt" not in fields:
            raise ImportFileError(f"{path}: record {number}: expected `fields` with a `prompt`")
        for answer in record.get("responses") or []:
            if answer.get("status", "submitted") != "submitted":
                continue
            ranking = ((answer.get("values") or {}).get("ranking") or {}).get("value")
            if not isinstance(ranking, list):
                raise ImportFileError(f"{path}: record {number}: a response has no `values.ranking.value` list")
            try:
                ranked = [(str(fields[item["value"]]), int(item["rank"])) for item in ranking]
            except (KeyError, TypeError, ValueError):
                raise ImportFileError(f"{path}: record {number}: a ranking names a field that is not there") from None
            groups.append((str(fields["prompt"]), str(answer.get("user_id") or path.name), ranked))
    return groups


def _hh_groups(path: Path) -> list:
    groups = []
    for number, record in _json_lines(path):
        chosen, rejected = record.get("chosen"), record.get("rejected")
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise ImportFileError(f"{path}: line {number}: needs `chosen` and `rejected` transcripts")
        cut_chosen, cut_rejected = chosen.rfind(ASSISTANT_TURN), rejected.rfind(ASSISTANT_TURN)
        if cut_chosen < 0 or chosen[:cut_chosen] != rejected[: max(cut_rejected, 0)]:
            raise ImportFileError(f"{path}: line {number}: chosen and rejected do not share a prompt")
        prompt = chosen[: cut_chosen + len(ASSISTANT_TURN)].strip()
        chosen_reply = chosen[cut_chosen + len(ASSISTANT_TURN) :].strip()
        rejected_reply = rejected[cut_rejected + len(ASSISTANT_TURN) :].strip()
        if chosen_reply == rejected_reply:
            continue  # HH-RLHF has a few identical pairs: no preference to learn
        groups.append((prompt, path.name, [(chosen_reply, 1), (rejected_reply, 2)]))
    return groups
