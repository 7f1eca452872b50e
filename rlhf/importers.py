"""Rankings made elsewhere, read into the store's shape: CSV/JSONL, Argilla, HH-RLHF, TRL, UltraFeedback.

`read_rankings` returns the (prompts, responses, rankings) frames that `FeedbackStore.ingest`
takes, with judge `human` and the annotator (or the file's name) as judge version, so imported
labels carry their source like labels from the ranking page. Prompts and responses are
conversations (rlhf.chat): a prompt keeps its turns as chat messages, a response the turns that
follow the prompt (several when one dialogue goes on longer than the other).

- csv / jsonl: one row per response: `prompt`, `response`, `rank` (1 best; equal ranks tie), and
  optionally `annotator`. Rows of the same prompt and annotator are one ranking. `columns` maps
  these names to the file's own (e.g. {"prompt": "question"}). In JSONL, `prompt` and `response`
  may also be chat-message lists.
- argilla: a JSON list (or JSONL) of Argilla FeedbackDataset records: `fields` holding the prompt
  and responses, `responses` holding each annotator's submitted `ranking` value
  (`[{"value": <field name>, "rank": n}, ...]`).
- hh-rlhf: Anthropic HH-RLHF JSONL (`.jsonl.gz` is read as is): `chosen` and `rejected`, each a
  whole dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ..."). The prompt is the turns both dialogues
  share, up to their last shared Human turn; each response is the rest of its dialogue.
- trl: TRL's preference format, JSONL or Parquet: `prompt`, `chosen`, `rejected`, each a string
  (standard) or chat messages (conversational). Without `prompt` (TRL's implicit prompt), chosen
  and rejected are whole conversations and the prompt is their shared turns, as for HH-RLHF.
  Replies that repeat the prompt's turns first (HuggingFaceH4/ultrafeedback_binarized) lose them.
- ultrafeedback: UltraFeedback's JSONL or Parquet: a prompt (`instruction`, else `prompt`) and
  `completions`, each with its text in `response` and a rating; one row is a K-way ranking, higher
  rating better (rank 1 best), equal ratings tie. The rating read is the first of RATING_KEYS that
  every completion of the row carries: `fine-grained_score` (the mean of the four aspect ratings)
  before `overall_score`, because Argilla found the critique's 1s parsed as 10s in `overall_score`;
  then a plain `rating`. The rating and model are kept in the ranking's `reasons`. Its ratings are
  GPT-4's, not people's, so its rankings carry judge `ultrafeedback` (AI_RATED_JUDGE): agreement
  reports and `train_reward.label_sources: [human]` do not count them as human labels.

Odd rows: a real dump has rows that cannot be taken (identical chosen and rejected, no shared
Human turn, a missing key, a line that is not JSON, a prompt with one response). Each becomes an
OddRow (file, line or record, reason). `on_bad_row="skip"` (the default) leaves them out and lists
them: one bad row in 160,000 should not cost the other 159,999, and the list says what was left.
`"fail"` refuses the file, naming its first odd row. A file that cannot be read at all, or has no
row to take, is always refused. Either way the rows taken are written in one transaction, all or
nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from rlhf import chat
from rlhf.cli_choices import IMPORT_FORMATS as FORMATS
from rlhf.cli_choices import ON_BAD_ROW
from rlhf.errors import InputError
from rlhf.frames import RANKING_COLUMNS, RESPONSE_COLUMNS
from rlhf.jsonl import read_text
from rlhf.prompts import PROMPT_COLUMNS, split_of
from rlhf.store import HUMAN_JUDGE
from rlhf.text import content_id

AI_RATED_JUDGE = "ultrafeedback"  # the judge of UltraFeedback's rankings: GPT-4 rated its completions

RATING_KEYS = ("fine-grained_score", "overall_score", "rating")
HH_SPEAKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class ImportFileError(InputError):
    """A rankings file that cannot be read as its format says."""


class _Odd(Exception):
    """A row that cannot be taken; the message is the reason."""


@dataclass(frozen=True)
class OddRow:
    file: str
    row: int  # the line (JSONL, CSV) or record (JSON list, Parquet), 1-based
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.row}: {self.reason}"


class Reply(NamedTuple):
    label: str  # names it in an odd row's reason: chosen, completion 2, ...
    turns: chat.Conversation
    rank: int
    reasons: dict


@dataclass
class Ranking:
    prompt: chat.Conversation
    annotator: str
    replies: list[Reply]
    row: int
    judge: str = HUMAN_JUDGE  # who ranked: people, unless the dump says an AI did (UltraFeedback)


@dataclass
class ImportedRankings:
    prompts: pd.DataFrame
    responses: pd.DataFrame
    rankings: pd.DataFrame
    odd_rows: list[OddRow] = field(default_factory=list)
    taken: int = 0  # rankings read from the file

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        return self.prompts, self.responses, self.rankings


def read_rankings(
    path: str | Path,
    fmt: str,
    test_fraction: float = 0.2,
    columns: dict[str, str] | None = None,
    on_bad_row: str = "skip",
) -> ImportedRankings:
    path = Path(path)
    if not path.exists():
        raise ImportFileError(f"{path}: not found")
    if fmt not in FORMATS:
        raise ImportFileError(f"{path}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    if on_bad_row not in ON_BAD_ROW:
        raise ImportFileError(f"on_bad_row must be one of {', '.join(ON_BAD_ROW)} (got {on_bad_row!r})")
    rankings, odd = _taken_and_odd(path, _read(path, fmt, columns or {}))
    if odd and on_bad_row == "fail":
        raise ImportFileError(f"{odd[0]} (nothing imported; {_count(odd, 'odd row')} in the file)")
    if not rankings:
        first = f"; {_count(odd, 'odd row')}, the first: {odd[0]}" if odd else ""
        raise ImportFileError(f"{path}: no rankings in the file{first}")
    frames = _frames(rankings, f"import:{path.name}", test_fraction)
    return ImportedRankings(*frames, odd_rows=odd, taken=len(rankings))


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _read(path: Path, fmt: str, columns: dict[str, str]) -> Iterator[Ranking | OddRow]:
    if fmt in ("csv", "jsonl"):
        return _table_rankings(path, fmt, columns)
    if fmt == "argilla":
        return _each_row(path, _argilla_records(path), lambda record, row: _argilla_rankings(record, row, path.name))
    to_rankings = {"hh-rlhf": _hh_ranking, "trl": _trl_ranking, "ultrafeedback": _ultrafeedback_ranking}[fmt]
    return _each_row(path, _records(path), lambda record, row: [to_rankings(record, row, path.name)])


def _taken_and_odd(path: Path, items: Iterable[Ranking | OddRow]) -> tuple[list[Ranking], list[OddRow]]:
    """Rankings that pass the checks every format shares; the others and the odd rows, by line."""
    taken, odd, seen = [], [], {}
    for item in items:
        reason = _refusal(item, seen) if isinstance(item, Ranking) else None
        if isinstance(item, OddRow) or reason:
            odd.append(item if isinstance(item, OddRow) else OddRow(str(path), item.row, reason))
        else:
            taken.append(item)
    return taken, sorted(odd, key=lambda o: o.row)


def _refusal(ranking: Ranking, seen: dict) -> str | None:
    """Why a ranking cannot be taken, or None. `seen`: each ranking's key -> its row, for repeats."""
    if len(ranking.replies) < 2:
        return "only one response: nothing to compare"
    for reply in ranking.replies:
        if reply.turns[0]["role"] != "assistant":
            return f"{reply.label} starts with a {reply.turns[0]['role']} turn, not the assistant's"
    labels: dict[str, str] = {}  # response key -> the first reply with it
    for reply in ranking.replies:
        key = _response_key(reply.turns)
        if key in labels:
            return f"{labels[key]} and {reply.label} are the same"
        labels[key] = reply.label
    key = (chat.prompt_key(ranking.prompt), ranking.annotator, frozenset(labels))
    if key in seen:  # the same responses ranked twice by one annotator: the first ranking counts
        return f"ranks the same responses as row {seen[key]}"
    seen[key] = ranking.row
    return None


def _response_key(turns: chat.Conversation) -> str:
    """What a response's id is hashed from: one assistant message's text (the id it always had), else its turns."""
    return turns[0]["content"] if len(turns) == 1 else chat.to_json(turns)


def _frames(rankings: list[Ranking], source: str, test_fraction: float) -> tuple[pd.DataFrame, ...]:
    prompts, responses, rows = {}, {}, []
    for ranking in rankings:
        key = chat.prompt_key(ranking.prompt)
        prompt_id = content_id(key)
        messages = chat.to_json(ranking.prompt)
        prompt = (prompt_id, chat.transcript(ranking.prompt), messages, None, split_of(key, test_fraction), source)
        prompts.setdefault(prompt_id, (*prompt, ranking.row))  # the row where the prompt first appears
        ids = [_add_response(responses, prompt_id, source, reply.turns) for reply in ranking.replies]
        ranking_id = content_id(prompt_id, ranking.judge, ranking.annotator, *sorted(ids))
        for response_id, reply in zip(ids, ranking.replies):
            reasons = json.dumps(reply.reasons)
            rows.append(
                (
                    ranking_id,
                    response_id,
                    prompt_id,
                    reply.rank,
                    float(-reply.rank),
                    reasons,
                    ranking.judge,
                    ranking.annotator,
                )
            )
    return (
        pd.DataFrame(list(prompts.values()), columns=PROMPT_COLUMNS).astype({"source_row": "Int64"}),
        pd.DataFrame(list(responses.values()), columns=RESPONSE_COLUMNS),
        pd.DataFrame(rows, columns=RANKING_COLUMNS),
    )


def _add_response(responses: dict, prompt_id: str, source: str, turns: chat.Conversation) -> str:
    """Adds the response row (an import has no rendered prompt: None) and returns its id."""
    response_id = content_id(prompt_id, source, 0, _response_key(turns))
    text = turns[0]["content"] if len(turns) == 1 else chat.transcript(turns)
    responses[response_id] = (response_id, prompt_id, 0, text, chat.to_json(turns), None, source, "{}")
    return response_id


# --- reading rows ---


def _each_row(
    path: Path, records: Iterable[tuple[int, dict | OddRow]], to_rankings: Callable[[dict, int], list[Ranking]]
) -> Iterator[Ranking | OddRow]:
    """Each record's rankings, or an OddRow naming why the record cannot be taken."""
    for row, record in records:
        if isinstance(record, OddRow):
            yield record
            continue
        try:
            yield from to_rankings(record, row)
        except (_Odd, InputError) as reason:
            yield OddRow(str(path), row, str(reason))


def _records(path: Path) -> Iterator[tuple[int, dict | OddRow]]:
    """(row, object) of a JSONL file (gzipped or not) or a Parquet file; a line that is not a JSON
    object is an OddRow, so one broken line does not cost the file."""
    if path.suffix == ".parquet":
        try:
            table = pd.read_parquet(path)
        except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise ImportFileError(f"{path}: not readable as Parquet ({error})") from None
        yield from enumerate(table.to_dict("records"), start=1)
        return
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as failure:
            yield number, OddRow(str(path), number, f"not valid JSON ({failure.msg})")
            continue
        yield number, record if isinstance(record, dict) else OddRow(str(path), number, "not a JSON object")


def _text(path: Path) -> str:
    try:
        return read_text(path)
    except (OSError, UnicodeDecodeError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise ImportFileError(f"{path}: not readable as text ({error})") from None


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))  # Parquet: NaN


def _required(record: dict, *keys: str) -> list:
    missing = [key for key in keys if _missing(record.get(key))]
    if missing:
        raise _Odd(f"missing {', '.join(f'`{key}`' for key in missing)}")
    return [record[key] for key in keys]


def _turns(value: object, label: str) -> chat.Conversation:
    """A response as chat messages: a string is one assistant message."""
    return chat.assistant_turns(value) if isinstance(value, str) else chat.as_conversation(value, label)


def _pair(
    prompt: chat.Conversation, chosen: chat.Conversation, rejected: chat.Conversation, row: int, annotator: str
) -> Ranking:
    replies = [Reply("chosen", chosen, 1, {}), Reply("rejected", rejected, 2, {})]
    return Ranking(prompt, annotator, replies, row)


def split_shared_prompt(chosen: chat.Conversation, rejected: chat.Conversation) -> tuple[chat.Conversation, ...]:
    """(prompt, chosen reply, rejected reply) of two whole dialogues: the prompt is the turns both
    share, cut after the last user turn among them, so each reply starts where they part."""
    if chosen == rejected:
        raise _Odd("chosen and rejected are the same")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    users = [turn for turn in range(shared) if chosen[turn]["role"] == "user"]
    if not users:
        raise _Odd("chosen and rejected share no Human (user) turn to be the prompt")
    cut = users[-1] + 1
    if cut == len(chosen) or cut == len(rejected):
        raise _Odd(f"{'chosen' if cut == len(chosen) else 'rejected'} has no reply after the shared prompt")
    return chosen[:cut], chosen[cut:], rejected[cut:]


# --- HH-RLHF, TRL, UltraFeedback: one row, one ranking ---


def parse_hh_transcript(text: str, label: str) -> chat.Conversation:
    """A dialogue as chat messages: "\\n\\nHuman: a\\n\\nAssistant: b" -> [user a, assistant b], text stripped."""
    pieces = HH_SPEAKER.split(text)
    if pieces[0].strip() or len(pieces) < 3:
        raise _Odd(f"{label} is not an HH-RLHF dialogue (\\n\\nHuman: ...\\n\\nAssistant: ...)")
    return [{"role": HH_ROLES[speaker], "content": said.strip()} for speaker, said in zip(pieces[1::2], pieces[2::2])]


def _hh_ranking(record: dict, row: int, annotator: str) -> Ranking:
    chosen, rejected = _required(record, "chosen", "rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise _Odd("`chosen` and `rejected` must be dialogue strings")
    prompt, chosen_reply, rejected_reply = split_shared_prompt(
        parse_hh_transcript(chosen, "chosen"), parse_hh_transcript(rejected, "rejected")
    )
    return _pair(prompt, chosen_reply, rejected_reply, row, annotator)


def _trl_ranking(record: dict, row: int, annotator: str) -> Ranking:
    chosen, rejected = _required(record, "chosen", "rejected")
    if _missing(record.get("prompt")):  # TRL's implicit prompt: two whole conversations
        if isinstance(chosen, str) or isinstance(rejected, str):
            raise _Odd("no `prompt`: an implicit prompt needs `chosen` and `rejected` as chat messages")
        prompt, *replies = split_shared_prompt(
            chat.as_conversation(chosen, "chosen"), chat.as_conversation(rejected, "rejected")
        )
        return _pair(prompt, *replies, row, annotator)
    prompt = chat.as_conversation(record["prompt"], "prompt")
    chosen_turns, rejected_turns = _turns(chosen, "chosen"), _turns(rejected, "rejected")
    if chosen_turns[: len(prompt)] == prompt and rejected_turns[: len(prompt)] == prompt:
        chosen_turns, rejected_turns = chosen_turns[len(prompt) :], rejected_turns[len(prompt) :]
    if not chosen_turns or not rejected_turns:
        raise _Odd(f"{'chosen' if not chosen_turns else 'rejected'} has no reply after the prompt")
    return _pair(prompt, chosen_turns, rejected_turns, row, annotator)


def _ultrafeedback_ranking(record: dict, row: int, annotator: str) -> Ranking:
    prompt = record.get("instruction")
    if _missing(prompt):
        (prompt,) = _required(record, "prompt")
    completions = record.get("completions")
    completions = completions.tolist() if hasattr(completions, "tolist") else completions  # Parquet: an array
    if not isinstance(completions, list) or not all(isinstance(c, dict) for c in completions):
        raise _Odd("`completions` must be a list of objects")
    ratings = _ratings(completions)
    replies = []
    for number, (completion, rating) in enumerate(zip(completions, ratings), start=1):
        label = f"completion {number}"
        if _missing(completion.get("response")):
            raise _Odd(f"{label} has no `response`")
        rank = 1 + sum(other > rating for other in ratings)  # competition ranking: equal ratings tie
        reasons = {"rating": rating} | ({"model": str(completion["model"])} if completion.get("model") else {})
        replies.append(Reply(label, _turns(completion["response"], label), rank, reasons))
    return Ranking(chat.as_conversation(prompt, "instruction"), annotator, replies, row, judge=AI_RATED_JUDGE)


def _ratings(completions: list[dict]) -> list[float]:
    """Each completion's rating under the first RATING_KEYS key they all carry (one scale per row)."""
    key = next((k for k in RATING_KEYS if completions and all(not _missing(c.get(k)) for c in completions)), None)
    if key is None:
        raise _Odd(f"the completions do not all carry one rating key ({', '.join(RATING_KEYS)})")
    try:
        ratings = [float(completion[key]) for completion in completions]
    except (TypeError, ValueError):
        raise _Odd(f"a completion's `{key}` is not a number") from None
    if not all(math.isfinite(rating) for rating in ratings):
        raise _Odd(f"a completion's `{key}` is not a finite number")
    return ratings


# --- CSV / JSONL rows and Argilla records: several rows or answers, one ranking each ---


def _table_rankings(path: Path, fmt: str, columns: dict[str, str]) -> Iterator[Ranking | OddRow]:
    """Rows of one prompt and annotator form a ranking; a row that cannot join one is an OddRow."""
    rename = {theirs: ours for ours, theirs in columns.items()}
    groups: dict[tuple[str, str], Ranking] = {}
    for row, record in _table_records(path, fmt):
        if isinstance(record, OddRow):
            yield record
            continue
        try:
            prompt, reply, annotator = _table_row({rename.get(k, k): v for k, v in record.items()}, row, path)
        except (_Odd, InputError) as reason:
            yield OddRow(str(path), row, str(reason))
            continue
        group = groups.setdefault((chat.prompt_key(prompt), annotator), Ranking(prompt, annotator, [], row))
        group.replies.append(reply)
    yield from groups.values()


def _table_records(path: Path, fmt: str) -> Iterator[tuple[int, dict | OddRow]]:
    if fmt == "jsonl":
        return _records(path)
    try:
        table = pd.read_csv(path, dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ImportFileError(f"{path}: not readable as CSV ({error})") from None
    return ((number + 2, row) for number, row in enumerate(table.to_dict("records")))  # +2: the header, 1-based


def _table_row(record: dict, row: int, path: Path) -> tuple[chat.Conversation, Reply, str]:
    prompt, response, rank = _required(record, "prompt", "response", "rank")
    try:
        rank = int(rank)
    except (TypeError, ValueError):
        raise _Odd(f"rank must be a whole number (got {rank!r})") from None
    annotator = path.name if _missing(record.get("annotator")) else str(record["annotator"]) or path.name
    reply = Reply(f"the response of row {row}", _turns(response, "response"), rank, {})
    return chat.as_conversation(prompt), reply, annotator


def _argilla_records(path: Path) -> Iterator[tuple[int, dict | OddRow]]:
    text = _text(path)
    if not text.lstrip().startswith("["):  # JSONL
        yield from _records(path)
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:  # a broken JSON list cannot be read past the break
        raise ImportFileError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
    for number, record in enumerate(records, start=1):
        yield number, record if isinstance(record, dict) else OddRow(str(path), number, "not a JSON object")


def _argilla_rankings(record: dict, number: int, file_name: str) -> list[Ranking]:
    fields = record.get("fields")
    if not isinstance(fields, dict) or "prompt" not in fields:
        raise _Odd("expected `fields` with a `prompt`")
    rankings = []
    for answer in record.get("responses") or []:
        if answer.get("status", "submitted") != "submitted":
            continue
        ranking = ((answer.get("values") or {}).get("ranking") or {}).get("value")
        if not isinstance(ranking, list):
            raise _Odd("a response has no `values.ranking.value` list")
        try:
            replies = [
                Reply(item["value"], _turns(str(fields[item["value"]]), "field"), int(item["rank"]), {})
                for item in ranking
            ]
        except (KeyError, TypeError, ValueError):
            raise _Odd("a ranking names a field that is not there") from None
        annotator = str(answer.get("user_id") or file_name)
        rankings.append(Ranking(chat.as_conversation(str(fields["prompt"])), annotator, replies, number))
    return rankings
