"""Rankings made elsewhere, read into the store's shape: CSV/JSONL, Argilla, HH-RLHF, TRL, UltraFeedback.

`read_rankings` returns the (prompts, responses, rankings) frames that `FeedbackStore.ingest`
takes, with judge `human` and the annotator (or the file's name) as judge version, so imported
labels carry their source like labels from the ranking page. Prompts and responses are
conversations (rlhf.chat): a prompt keeps its turns as chat messages, a response the turns that
follow the prompt (several when one dialogue goes on longer than the other).

- csv / jsonl: one row per response: `prompt`, `response`, `rank` (a whole number, 1 best; equal
  ranks tie), and optionally `annotator`. Rows of the same prompt and annotator are one ranking.
  `columns` maps these names to the file's own (e.g. {"prompt": "question"}). In JSONL, `prompt`
  and `response` may also be chat-message lists. A CSV field left empty is missing.
- argilla: a JSON list (or JSONL) of Argilla FeedbackDataset records: `fields` holding the prompt
  and responses, `responses` holding each annotator's submitted `ranking` value: Argilla 1.x's
  list of answers (`values.ranking.value` = `[{"value": <field name>, "rank": n}, ...]`), or 2.x's
  `Record.to_dict` answers by question (`{"ranking": [{"value": [<field name>, ...]}]}`, best first:
  2.x's SDK drops the rank numbers, so its ties come out as the order it lists them in).
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
Human turn, a missing key, a line that is not JSON or not UTF-8, a CSV row with a field too many,
a prompt with one response). Each becomes an OddRow (file, line or record, reason).
`on_bad_row="skip"` (the default) leaves them out and lists them: one bad row in 160,000 should
not cost the other 159,999, and the list says what was left.
`"fail"` refuses the file, naming its first odd row. A file that cannot be read at all, or has no
row to take, is always refused. Either way the rows taken are written in one transaction, all or
nothing.

Every JSON format reads JSON lines or one JSON list of records (a dataset's `to_json(lines=False)`,
Argilla's export). Text files are UTF-8, with or without a byte-order mark. JSONL is decoded line by line and CSV row
by row, so a stray Latin-1 byte costs its row. A CSV quote that is never closed swallows the lines
after it; the csv module refuses that row, and reading starts again on the line after it.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import math
import re
import zlib
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
from rlhf.jsonl import read_bytes
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
    _refuse_unknown_columns(fmt, columns or {})
    rankings, odd = _taken_and_odd(path, _read(path, fmt, columns or {}))
    if odd and on_bad_row == "fail":
        raise ImportFileError(f"{odd[0]} (nothing imported; {_count(odd, 'odd row')} in the file)")
    if not rankings:
        first = f"; {_count(odd, 'odd row')}, the first: {odd[0]}" if odd else ""
        raise ImportFileError(f"{path}: no rankings in the file{first}")
    frames = _frames(rankings, f"import:{path.name}", test_fraction)
    return ImportedRankings(*frames, odd_rows=odd, taken=len(rankings))


# The names a csv or jsonl row has, which `columns` (--map) may rename.
TABLE_COLUMNS = ("prompt", "response", "rank", "annotator")


def _refuse_unknown_columns(fmt: str, columns: dict[str, str]) -> None:
    """A misspelt name (promt=question) would otherwise only show as every row missing `prompt`."""
    if not columns:
        return
    if fmt not in ("csv", "jsonl"):
        raise ImportFileError(f"columns (--map): only csv and jsonl rows are renamed; {fmt} has its own fields")
    unknown = sorted(set(columns) - set(TABLE_COLUMNS))
    if unknown:
        raise ImportFileError(
            f"columns (--map): {', '.join(map(repr, unknown))} is not one of {', '.join(TABLE_COLUMNS)}"
        )


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _read(path: Path, fmt: str, columns: dict[str, str]) -> Iterator[Ranking | OddRow]:
    if fmt in ("csv", "jsonl"):
        return _table_rankings(path, fmt, columns)
    if fmt == "argilla":
        return _each_row(path, _records(path), lambda record, row: _argilla_rankings(record, row, path.name))
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
    """(row, object) of a JSONL file or a JSON list (gzipped or not), or a Parquet file."""
    if path.suffix == ".parquet":
        try:
            table = pd.read_parquet(path)
        except (ValueError, OSError) as error:  # pyarrow's ArrowInvalid is a ValueError
            raise ImportFileError(f"{path}: not readable as Parquet ({error})") from None
        yield from enumerate(table.to_dict("records"), start=1)
        return
    data = _bytes(path)
    if not data.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):  # JSONL
        yield from _json_lines(path, data)
        return
    # One JSON list (Argilla's export, a dataset's to_json(lines=False)): its records are numbered.
    try:
        records = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as error:  # one JSON list: a bad byte cannot be left out like a JSONL line
        raise ImportFileError(f"{path}: not UTF-8 ({error})") from None
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # JSON lines whose first line is a list: that line is odd, not the file
            yield from _json_lines(path, data)
            return
        # a broken JSON list cannot be read past the break
        raise ImportFileError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
    for number, record in enumerate(records, start=1):
        yield number, record if isinstance(record, dict) else OddRow(str(path), number, "not a JSON object")


def _json_lines(path: Path, data: bytes) -> Iterator[tuple[int, dict | OddRow]]:
    """(line, object) of each non-blank line. Each line is decoded alone, so a line that is not
    UTF-8, not JSON or not an object is an OddRow and does not cost the file."""
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8-sig" if number == 1 else "utf-8"))  # -sig: a BOM opens line 1
        except UnicodeDecodeError as failure:
            yield number, OddRow(str(path), number, f"not UTF-8 ({failure})")
            continue
        except json.JSONDecodeError as failure:
            yield number, OddRow(str(path), number, f"not valid JSON ({failure.msg})")
            continue
        yield number, record if isinstance(record, dict) else OddRow(str(path), number, "not a JSON object")


def _bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz; decoding is left to the reader, per line or row."""
    try:
        return read_bytes(path)
    except (OSError, EOFError, zlib.error) as error:  # a directory, a bad or cut-off gzip file
        raise ImportFileError(f"{path}: not readable ({error})") from None


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
    return _records(path) if fmt == "jsonl" else _csv_records(path)


def _csv_records(path: Path) -> Iterator[tuple[int, dict | OddRow]]:
    """(file line where the row starts, row) of each row under the header; a row the csv module
    refuses, with another number of fields than the header, or with bytes that are not UTF-8 is an
    OddRow. An empty field is missing (None), as a key left out of a JSONL row is."""
    # surrogateescape keeps a byte that is not UTF-8 in its field, so it costs its row, not the file
    text = _bytes(path).decode("utf-8-sig", errors="surrogateescape")
    rows = ((line, fields) for line, fields in _csv_rows(path, text) if fields != [])  # []: a blank line
    header_line, header = next(rows, (1, None))
    if not isinstance(header, list) or not all(map(_is_utf8, header)):
        raise ImportFileError(f"{path}: line {header_line}: not readable as CSV (no header of UTF-8 column names)")
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:  # a row would keep only the last of the two columns
        raise ImportFileError(f"{path}: line {header_line}: the header names {', '.join(map(repr, twice))} twice")
    for line, fields in rows:
        if isinstance(fields, OddRow):
            yield line, fields
        elif len(fields) != len(header):
            yield line, OddRow(str(path), line, f"{_count(fields, 'field')} where the header has {len(header)}")
        elif not all(map(_is_utf8, fields)):
            column = next(name for name, value in zip(header, fields) if not _is_utf8(value))
            yield line, OddRow(str(path), line, f"not UTF-8 (a byte in `{column}`)")
        else:
            yield line, {name: value or None for name, value in zip(header, fields)}


# What the csv module says of a quote never closed: it read to the end of the file, or past the
# field size limit. Any other refusal is a stray character beside a quoted field ("Explain" ,...).
OPEN_QUOTE_ERRORS = ("unexpected end of data", "field larger than field limit")
# A closing quote with spaces before the next comma or line end, which strict mode refuses and
# pandas read: the one stray character a quoted field spanning lines is read past for.
SPACE_AFTER_A_QUOTE = re.compile(r'"[ \t]+(?=,|\r?\n|$)')
# A field may hold a long response: pandas read any size; the csv module stops at 128 KiB by default.
CSV_FIELD_LIMIT = 16 * 1024 * 1024


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, list[str] | OddRow]]:
    """(file line where it starts, fields) of each CSV row, or an OddRow. A one-line row refused for
    a stray character beside a quoted field, or a row spanning lines whose quote is followed by
    spaces, is read again leniently, as pandas read it. Otherwise a row spanning lines is a quote
    never closed that swallowed the lines after it: an OddRow, and reading starts again on its
    second line."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    lines = io.StringIO(text, newline="").readlines()  # newline="": the csv module reads \r\n itself
    start = 0  # the index in `lines` where the reader starts
    while start < len(lines):
        reader = csv.reader(itertools.islice(lines, start, None), strict=True)
        while True:
            first = start + reader.line_num + 1  # the 1-based line the next row starts on
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                last = start + reader.line_num
                row_text = "".join(lines[first - 1 : last])
                stray_space = last == first or SPACE_AFTER_A_QUOTE.search(row_text)
                if stray_space and not any(words in str(error) for words in OPEN_QUOTE_ERRORS):
                    yield from _lenient_rows(lines[first - 1 : last], first)
                    start = last
                else:  # the quote that ended this row opened another one: this row's was left open
                    again = f"; line {first + 1} on is read again" if last > first else ""
                    yield first, OddRow(str(path), first, f"not valid CSV ({error}): a quote left open?{again}")
                    start = first  # 0-based: the line after `first`
                break
            yield first, fields


def _lenient_rows(lines: list[str], first: int) -> Iterator[tuple[int, list[str]]]:
    """The rows of `lines` (from file line `first`) as the csv module reads them without strict mode."""
    reader = csv.reader(lines)
    line = first
    for fields in reader:
        yield line, fields
        line = first + reader.line_num


def _is_utf8(text: str) -> bool:
    """False where decoding with surrogateescape kept a byte that is not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _table_row(record: dict, row: int, path: Path) -> tuple[chat.Conversation, Reply, str]:
    prompt, response, rank = _required(record, "prompt", "response", "rank")
    annotator = path.name if _missing(record.get("annotator")) else _annotator(record["annotator"]) or path.name
    reply = Reply(f"the response of row {row}", _turns(response, "response"), _rank(rank), {})
    return chat.as_conversation(prompt), reply, annotator


def _annotator(value: object) -> str:
    """A name, or a whole-number id (Parquet makes an id column with gaps floats: 3.0 is "3");
    str() would store a list as "['u']"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    shown = repr(value) if isinstance(value, float) else _json_type(value)
    raise _Odd(f"annotator must be a name or a whole-number id (got {shown})")


def _rank(value: object) -> int:
    """A rank: a whole number, 1 or more. CSV's "2" and JSON's 2.0 are taken; 1.7, true and 1e400
    are not (int() would make them 1, 1 and an OverflowError)."""
    rank = value
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):  # not int()'s "1_0" or "+2"
        rank = int(value)
    elif isinstance(value, float) and value.is_integer():  # is_integer: False for inf and nan
        rank = int(value)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise _Odd(f"rank must be a whole number, 1 or more (got {value!r})")
    return rank


def _argilla_rankings(record: dict, number: int, file_name: str) -> list[Ranking]:
    fields = record.get("fields")
    if not isinstance(fields, dict) or "prompt" not in fields:
        raise _Odd("expected `fields` with a `prompt`")
    prompt = chat.as_conversation(str(fields["prompt"]))
    return [
        Ranking(prompt, str(user_id or file_name), _argilla_replies(ranking, fields), number)
        for user_id, ranking in _submitted_answers(record.get("responses"))
    ]


def _submitted_answers(responses: object) -> Iterator[tuple[object, object]]:
    """(user id, ranking) of each submitted answer; a draft's ranking is not read (it may be half
    made). Argilla 1.x lists a record's answers, each with its values by question; 2.x's
    Record.to_dict lists the answers by question, without a status:
        1.x: [{"user_id": u, "status": "submitted", "values": {"ranking": {"value": [...]}}}, ...]
        2.x: {"ranking": [{"user_id": u, "value": [...]}, ...]}"""
    by_question = isinstance(responses, dict) and bool(responses)  # Argilla 2.x
    if by_question and "ranking" not in responses:
        raise _Odd(f"`responses` has no `ranking` question (it has {', '.join(map(repr, responses))})")
    answers = responses["ranking"] if by_question else responses
    if not answers:  # no one has answered yet
        return
    where = "`responses.ranking`" if by_question else "`responses`"
    if not isinstance(answers, list):
        raise _Odd(f"{where} must be a list of answer objects (got {_json_type(answers)})")
    for number, answer in enumerate(answers, start=1):
        if not isinstance(answer, dict):
            raise _Odd(f"{where} must be a list of answer objects (answer {number} is {_json_type(answer)})")
        if answer.get("status", "submitted") == "submitted":
            yield answer.get("user_id"), answer.get("value") if by_question else _values_ranking(answer)


def _values_ranking(answer: dict) -> object:
    """An Argilla 1.x answer's `values.ranking.value`."""
    values = answer.get("values")
    if not isinstance(values, dict):
        raise _Odd(f"a response's `values` must be an object (got {_json_type(values)})")
    ranking = values.get("ranking")
    return ranking.get("value") if isinstance(ranking, dict) else None


def _argilla_replies(ranking: object, fields: dict) -> list[Reply]:
    """1.x ranks as [{"value": <field name>, "rank": n}, ...]; 2.x as field names, best first."""
    if not isinstance(ranking, list):
        raise _Odd(f"a response's ranking must be a list (got {_json_type(ranking)})")
    replies = []
    for position, item in enumerate(ranking, start=1):
        if not isinstance(item, (str, dict)):
            raise _Odd(f"a ranking's items must be field names or objects (got {_json_type(item)})")
        name = item if isinstance(item, str) else item.get("value")
        if not isinstance(name, str) or name not in fields:
            raise _Odd(f"a ranking names a field that is not there ({name!r})")
        rank = position if isinstance(item, str) else _rank(item.get("rank"))
        replies.append(Reply(name, _turns(str(fields[name]), "field"), rank, {}))
    return replies


JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _json_type(value: object) -> str:
    """What a value is, for a reason, without the value itself (it may be long)."""
    return "null" if value is None else JSON_TYPES.get(type(value), type(value).__name__)
