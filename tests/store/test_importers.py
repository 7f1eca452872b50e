"""Rankings made elsewhere: each format into a real store, odd rows listed, and exports that give them back."""

import gzip
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from rlhf import chat
from rlhf.cli import main
from rlhf.importers import ImportFileError, read_rankings
from rlhf.store import FeedbackStore

SHARED_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"
needs_shared_sample = pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason=f"{SHARED_SAMPLE} is not here")

HH = [
    {
        "chosen": "\n\nHuman: how do owls hunt?\n\nAssistant: At night, by sound.",
        "rejected": "\n\nHuman: how do owls hunt?\n\nAssistant: Dunno.",
    },
    {"chosen": "\n\nHuman: hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: hi\n\nAssistant: Hello!"},
]
ARGILLA = [
    {
        "fields": {
            "prompt": "tell me about cats",
            "response-1": "cats purr",
            "response-2": "whatever",
            "response-3": "cats sleep a lot",
        },
        "responses": [
            {
                "user_id": "ann",
                "status": "submitted",
                "values": {
                    "ranking": {
                        "value": [
                            {"value": "response-1", "rank": 1},
                            {"value": "response-2", "rank": 3},
                            {"value": "response-3", "rank": 1},
                        ]
                    }
                },
            },
            {"user_id": "ben", "status": "discarded", "values": {}},
        ],
    }
]


def hh(*turns: str) -> str:
    """An HH-RLHF dialogue from its turns, Human first."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {text}" for i, text in enumerate(turns))


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def shared_rows(n: int) -> list[dict]:
    with gzip.open(SHARED_SAMPLE, "rt") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


def store_at(tmp_path: Path) -> FeedbackStore:
    return FeedbackStore(tmp_path / "feedback.duckdb")


def import_cli(store: FeedbackStore, path: Path, fmt: str, *extra: str) -> int:
    return main(["store", "--path", str(store.path), "import", str(path), "--format", fmt, *extra])


def export_cli(store: FeedbackStore, out: Path, fmt: str) -> list[dict]:
    """The exported records without their margin (tests/store/test_exports_trl.py checks it)."""
    assert main(["store", "--path", str(store.path), "export", str(out), "--format", fmt]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("margin" in record for record in records)
    return [{k: v for k, v in record.items() if k != "margin"} for record in records]


def as_standard(records: list[dict]) -> list[dict]:
    """TRL standard records as the export writes them: each response after its one space (the
    plain format: TRL's prompt + chosen is then the exchange; see rlhf.exporters)."""
    return [{**r, "chosen": " " + r["chosen"], "rejected": " " + r["rejected"]} for r in records]


def as_set(records: list[dict]) -> set[str]:
    """Export order is the store's (by ranking id): compare records as a set."""
    return {json.dumps(record, sort_keys=True) for record in records}


def test_hh_rlhf_lines_become_pairs_and_an_identical_pair_is_an_odd_row(tmp_path):
    imported = read_rankings(write_jsonl(tmp_path / "hh.jsonl", HH), "hh-rlhf")
    prompts, responses, rankings = imported.frames()
    assert list(prompts["prompt"]) == ["how do owls hunt?"]  # one user message: its text, as a string prompt
    assert [str(odd) for odd in imported.odd_rows] == [f"{tmp_path / 'hh.jsonl'}:2: chosen and rejected are the same"]
    ranks = dict(zip(responses.set_index("response_id").loc[rankings["response_id"], "response"], rankings["rank"]))
    assert ranks == {"At night, by sound.": 1, "Dunno.": 2}
    store = store_at(tmp_path)
    added = store.ingest({"run_id": "r", "stage": "import"}, *imported.frames())
    assert added["comparisons"] == 1
    pair = store.query(
        "SELECT ch.response AS chosen, p.source_row FROM comparisons c JOIN responses ch ON ch.response_id = c.chosen_id "
        "JOIN prompts p ON p.prompt_id = c.prompt_id"
    )
    assert pair.to_dict("records") == [{"chosen": "At night, by sound.", "source_row": 1}]


@needs_shared_sample
def test_odd_hh_rlhf_rows_are_listed_with_line_and_reason_and_the_others_imported(tmp_path, capsys):
    real = shared_rows(5)
    rows = [
        real[0],
        {"chosen": real[1]["chosen"], "rejected": real[1]["chosen"]},  # 2
        real[2],
        "{not json",  # 4
        {"chosen": "no speakers at all", "rejected": real[3]["rejected"]},  # 5
        {"chosen": hh("a", "b"), "rejected": hh("c", "d")},  # 6: no shared Human turn
        real[3],
        {"chosen": real[4]["chosen"]},  # 8
        real[0],  # 9: a repeat of line 1
        real[4],
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    store = store_at(tmp_path)
    assert import_cli(store, path, "hh-rlhf") == 0
    out, err = capsys.readouterr()
    assert "4 rankings, 6 odd rows skipped" in out
    assert err.splitlines() == [
        f"rlhf: skipped {path}:2: chosen and rejected are the same",
        f"rlhf: skipped {path}:4: not valid JSON (Expecting property name enclosed in double quotes)",
        rf"rlhf: skipped {path}:5: chosen is not an HH-RLHF dialogue (\n\nHuman: ...\n\nAssistant: ...)",
        f"rlhf: skipped {path}:6: chosen and rejected share no Human (user) turn to be the prompt",
        f"rlhf: skipped {path}:8: missing `rejected`",
        f"rlhf: skipped {path}:9: ranks the same responses as row 1",
    ]
    assert store.counts()["comparisons"] == 4
    assert sorted(store.query("SELECT source_row FROM prompts")["source_row"]) == [1, 3, 7, 10]


@needs_shared_sample
def test_fail_mode_refuses_the_file_naming_the_first_odd_line_and_writes_nothing(tmp_path, capsys):
    real = shared_rows(3)
    path = write_jsonl(tmp_path / "hh.jsonl", [real[0], real[1], {"chosen": real[2]["chosen"]}, "[1, 2]"])
    store = store_at(tmp_path)
    assert import_cli(store, path, "hh-rlhf", "--on-bad-row", "fail") == 2
    error = capsys.readouterr().err.strip()
    assert error == f"rlhf: error: {path}:3: missing `rejected` (nothing imported; 2 odd rows in the file)"
    assert not store.path.exists()
    assert import_cli(store, path, "hh-rlhf") == 0  # the default takes the two good rows
    assert store.counts()["comparisons"] == 2


def test_dialogues_that_part_early_keep_every_turn_of_prompt_and_replies(tmp_path):
    rows = [
        # a multi-turn prompt: they part at the last assistant turn
        {
            "chosen": hh("plan a trip", "Where to?", "Rome", "Fly, then walk."),
            "rejected": hh("plan a trip", "Where to?", "Rome", "No."),
        },
        # they part before the last assistant turn: chosen goes on for two more turns
        {
            "chosen": hh("how do owls hunt?", "By sound.", "at night?", "Yes, mostly."),
            "rejected": hh("how do owls hunt?", "Ask someone else."),
        },
    ]
    store = store_at(tmp_path)
    assert import_cli(store, write_jsonl(tmp_path / "hh.jsonl", rows), "hh-rlhf") == 0
    prompts = store.query("SELECT prompt, messages FROM prompts ORDER BY source_row")
    assert [chat.from_json(m) for m in prompts["messages"]] == [
        [user("plan a trip"), assistant("Where to?"), user("Rome")],
        [user("how do owls hunt?")],
    ]
    assert prompts["prompt"][0] == "Human: plan a trip\n\nAssistant: Where to?\n\nHuman: Rome"
    replies = store.query("SELECT response, messages FROM responses ORDER BY response")
    assert dict(zip(replies["response"], replies["messages"].map(chat.from_json))) == {
        "Ask someone else.": [assistant("Ask someone else.")],
        "Assistant: By sound.\n\nHuman: at night?\n\nAssistant: Yes, mostly.": [
            assistant("By sound."),
            user("at night?"),
            assistant("Yes, mostly."),
        ],
        "Fly, then walk.": [assistant("Fly, then walk.")],
        "No.": [assistant("No.")],
    }
    pairs = export_cli(store, tmp_path / "chat.jsonl", "trl-conversational")
    assert {
        "prompt": [user("how do owls hunt?")],
        "chosen": [assistant("By sound."), user("at night?"), assistant("Yes, mostly.")],
        "rejected": [assistant("Ask someone else.")],
    } in pairs


TRL_STANDARD = [
    {"prompt": "how do owls hunt?", "chosen": "At night, by sound.", "rejected": "Dunno."},
    {"prompt": "name a colour", "chosen": "Blue.", "rejected": "Seven."},
]
TRL_CONVERSATIONAL = [
    {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            user("plan a trip"),
            assistant("Where to?"),
            user("Rome"),
        ],
        "chosen": [assistant("Fly, then walk.")],
        "rejected": [assistant("No.")],
    },
    {"prompt": [user("hi")], "chosen": [assistant("Hello! How can I help?")], "rejected": [assistant("What.")]},
]


def test_trl_standard_and_conversational_files_round_trip_through_import_and_export(tmp_path):
    store = store_at(tmp_path)
    assert import_cli(store, write_jsonl(tmp_path / "standard.jsonl", TRL_STANDARD), "trl") == 0
    assert as_set(export_cli(store, tmp_path / "out.jsonl", "trl")) == as_set(as_standard(TRL_STANDARD))

    chats = store_at(tmp_path / "chats")
    assert import_cli(chats, write_jsonl(tmp_path / "chat.jsonl", TRL_CONVERSATIONAL), "trl") == 0
    assert as_set(export_cli(chats, tmp_path / "chat-out.jsonl", "trl-conversational")) == as_set(TRL_CONVERSATIONAL)
    standard = export_cli(chats, tmp_path / "chat-standard.jsonl", "trl")
    assert {r["prompt"] for r in standard} == {
        "hi",
        "\n\nSystem: Be brief.\n\nHuman: plan a trip\n\nAssistant: Where to?\n\nHuman: Rome\n\nAssistant:",
    }


def test_trl_parquet_implicit_prompts_and_replies_that_repeat_the_prompt(tmp_path):
    rows = [
        {"prompt": None, "chosen": [user("hi"), assistant("Hello!")], "rejected": [user("hi"), assistant("Go away.")]},
        # ultrafeedback_binarized's shape: a string prompt, replies that start with it
        {
            "prompt": "name a colour",
            "chosen": [user("name a colour"), assistant("Blue.")],
            "rejected": [user("name a colour"), assistant("Seven.")],
        },
        {"prompt": "q", "chosen": [user("q"), assistant("a")], "rejected": [assistant("b")]},  # 3: user-first reply
    ]
    path = tmp_path / "prefs.parquet"
    pd.DataFrame(rows).to_parquet(path)
    imported = read_rankings(path, "trl")
    assert [str(o) for o in imported.odd_rows] == [f"{path}:3: chosen starts with a user turn, not the assistant's"]
    store = store_at(tmp_path)
    store.ingest({"run_id": "r", "stage": "import"}, *imported.frames())
    assert as_set(export_cli(store, tmp_path / "out.jsonl", "trl-conversational")) == as_set(
        [
            {"prompt": [user("hi")], "chosen": [assistant("Hello!")], "rejected": [assistant("Go away.")]},
            {"prompt": [user("name a colour")], "chosen": [assistant("Blue.")], "rejected": [assistant("Seven.")]},
        ]
    )


ULTRAFEEDBACK = [
    {
        "source": "evol",
        "instruction": "write a haiku about owls",
        "completions": [
            # overall_score disagrees on purpose: fine-grained_score is the one read
            {"model": "a", "response": "Silent wings at dusk", "fine-grained_score": 4.5, "overall_score": 2},
            {"model": "b", "response": "owls are birds", "fine-grained_score": 3.0, "overall_score": 10},
            {"model": "c", "response": "Hoot hoot", "fine-grained_score": 3.0, "overall_score": 7},
            {"model": "d", "response": "I cannot help", "fine-grained_score": 1.0, "overall_score": 9},
        ],
    },
    {
        "prompt": [user("name a colour")],
        "completions": [{"response": "Blue.", "rating": "5"}, {"response": "Seven.", "rating": 1}],
    },
    {
        "instruction": "mixed scales",
        "completions": [{"response": "x", "fine-grained_score": 4}, {"response": "y", "overall_score": 3}],
    },
]


def test_ultrafeedback_ratings_become_rankings_with_ties_that_export_as_pairs(tmp_path, capsys):
    path = write_jsonl(tmp_path / "uf.jsonl", ULTRAFEEDBACK)
    imported = read_rankings(path, "ultrafeedback")
    texts = imported.responses.set_index("response_id")["response"]
    ranks = {texts[r]: k for r, k in zip(imported.rankings["response_id"], imported.rankings["rank"])}
    assert ranks == {
        "Silent wings at dusk": 1,
        "owls are birds": 2,
        "Hoot hoot": 2,
        "I cannot help": 4,
        "Blue.": 1,
        "Seven.": 2,
    }
    reasons = [json.loads(r) for r in imported.rankings["reasons"]]
    assert reasons[0] == {"rating": 4.5, "model": "a"}
    assert set(imported.rankings["judge"]) == {"ultrafeedback"}  # GPT-4's ratings, not people's
    assert [str(o) for o in imported.odd_rows] == [
        f"{path}:3: the completions do not all carry one rating key (fine-grained_score, overall_score, rating)"
    ]
    store = store_at(tmp_path)
    assert import_cli(store, path, "ultrafeedback") == 0
    assert "comparisons +7" in capsys.readouterr().out  # C(4,2) = 6 pairs, one a tie, and 1
    exported = export_cli(store, tmp_path / "out.jsonl", "trl")
    better = ["Silent wings at dusk", "owls are birds", "Hoot hoot", "I cannot help"]
    expected = [
        {"prompt": "write a haiku about owls", "chosen": a, "rejected": b}
        for i, a in enumerate(better)
        for b in better[i + 1 :]
        if {a, b} != {"owls are birds", "Hoot hoot"}
    ]
    colour = {"prompt": "name a colour", "chosen": "Blue.", "rejected": "Seven."}
    assert as_set(exported) == as_set(as_standard([*expected, colour]))


@needs_shared_sample
def test_the_shared_hh_rlhf_sample_imports_whole(tmp_path):
    imported = read_rankings(SHARED_SAMPLE, "hh-rlhf")
    assert (imported.taken, imported.odd_rows) == (1200, [])
    store = store_at(tmp_path)
    added = store.ingest({"run_id": "r", "stage": "import"}, *imported.frames())
    assert (added["prompts"], added["responses"], added["comparisons"]) == (1200, 2400, 1200)
    turns = store.query("SELECT json_array_length(messages) AS n FROM prompts")["n"]
    assert turns.max() > 1 and (turns % 2 == 1).mean() > 0.99  # multi-turn prompts kept, ending on a Human turn


def test_argilla_export_keeps_submitted_rankings_with_ties_and_their_annotator(tmp_path):
    path = tmp_path / "argilla.json"
    path.write_text(json.dumps(ARGILLA))
    _, responses, rankings = read_rankings(path, "argilla").frames()
    assert set(rankings["judge_version"]) == {"ann"}
    texts = responses.set_index("response_id")["response"]
    assert {texts[r]: k for r, k in zip(rankings["response_id"], rankings["rank"])} == {
        "cats purr": 1,
        "cats sleep a lot": 1,
        "whatever": 3,
    }


def test_csv_rows_of_a_prompt_and_annotator_form_a_ranking_through_the_cli(tmp_path, capsys):
    path = tmp_path / "ranks.csv"
    path.write_text("prompt,response,rank,annotator\nq,a,1,x\nq,b,2,x\nq,c,2,x\nq,a,2,y\nq,b,1,y\n")
    store = tmp_path / "feedback.duckdb"
    assert main(["store", "--path", str(store), "import", str(path), "--format", "csv"]) == 0
    assert "comparisons +4" in capsys.readouterr().out  # x: 3 pairs (one tie), y: 1
    assert main(["store", "--path", str(store), "agreement"]) == 0
    assert "person vs person" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("csv", "prompt,response\nq,a\n", "bad.csv:2: missing `rank`"),
        (
            "csv",
            "prompt,response,rank\nq,a,first\nq,b,2\n",
            "bad.csv:2: rank must be a whole number, 1 or more (got 'first')",
        ),
        ("jsonl", '{"prompt": "q", "response": "a", "rank": 1}\n{oops\n', "bad.jsonl:1: only one response"),
        ("hh-rlhf", '{"chosen": "no turns here", "rejected": "x"}\n', "bad.hh-rlhf:1: chosen is not an HH-RLHF"),
        ("argilla", '[{"fields": {}}]', "bad.argilla:1: expected `fields` with a `prompt`"),
        ("trl", '{"prompt": "q", "chosen": "a"}\n', "bad.trl:1: missing `rejected`"),
        ("trl", '{"chosen": "a", "rejected": "b"}\n', "bad.trl:1: no `prompt`: an implicit prompt needs"),
        (
            "ultrafeedback",
            '{"instruction": "q", "completions": [{"response": "a", "overall_score": 2}]}\n',
            "bad.ultrafeedback:1: only one response",
        ),
    ],
)
def test_a_file_of_odd_rows_is_one_clear_error_and_the_store_is_untouched(tmp_path, capsys, fmt, content, message):
    path = tmp_path / f"bad.{fmt}"
    path.write_text(content)
    with pytest.raises(ImportFileError, match=re.escape(message)):
        read_rankings(path, fmt, on_bad_row="fail")
    with pytest.raises(ImportFileError, match=re.escape(f"{path}: no rankings in the file")):
        read_rankings(path, fmt)
    store = tmp_path / "feedback.duckdb"
    assert main(["store", "--path", str(store), "import", str(path), "--format", fmt]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"rlhf: error: {path}") and len(error.splitlines()) == 1
    assert not store.exists()


def test_an_unreadable_file_is_refused_whole(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"fields": {"prompt": "q"}},\n{oops')
    with pytest.raises(ImportFileError, match="broken.json: line 2: not valid JSON"):
        read_rankings(broken, "argilla")
    not_parquet = tmp_path / "prefs.parquet"
    not_parquet.write_text("prompt,chosen,rejected\n")
    with pytest.raises(ImportFileError, match="prefs.parquet: not readable as Parquet"):
        read_rankings(not_parquet, "trl")


def ranks_by_prompt(imported) -> dict[tuple[str, str], int]:
    """(prompt, response) -> rank of an import's rankings."""
    prompts = imported.prompts.set_index("prompt_id")["prompt"]
    responses = imported.responses.set_index("response_id")
    return {
        (prompts[responses.loc[response_id, "prompt_id"]], responses.loc[response_id, "response"]): rank
        for response_id, rank in zip(imported.rankings["response_id"], imported.rankings["rank"])
    }


JSON_LINE_FORMATS = {
    "trl": TRL_STANDARD,
    "hh-rlhf": [HH[0], {"chosen": hh("hi", "Hello!"), "rejected": hh("hi", "Go away.")}],
    "ultrafeedback": ULTRAFEEDBACK[:2],
    "jsonl": [{"prompt": "q", "response": "a", "rank": 1}, {"prompt": "q", "response": "b", "rank": 2}],
    "argilla": ARGILLA,
}


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("fmt", list(JSON_LINE_FORMATS))
def test_a_line_that_is_not_utf8_is_an_odd_row_and_the_other_lines_import(tmp_path, capsys, fmt, suffix):
    rows = [json.dumps(row).encode() for row in JSON_LINE_FORMATS[fmt]]
    latin1 = '{"prompt": "café"}'.encode("latin-1")  # é as the one byte 0xe9, which UTF-8 cannot start a character with
    data = b"\n".join([rows[0], latin1, *rows[1:]]) + b"\n"
    path = tmp_path / f"rows{suffix}"
    path.write_bytes(gzip.compress(data) if suffix == ".jsonl.gz" else data)
    imported = read_rankings(path, fmt)
    clean = read_rankings(write_jsonl(tmp_path / "clean.jsonl", JSON_LINE_FORMATS[fmt]), fmt)
    assert ranks_by_prompt(imported) == ranks_by_prompt(clean)
    reason = "not UTF-8 ('utf-8' codec can't decode byte 0xe9 in position 15: invalid continuation byte)"
    assert [str(odd) for odd in imported.odd_rows] == [f"{path}:2: {reason}"]
    assert import_cli(store_at(tmp_path), path, fmt) == 0
    assert capsys.readouterr().err.splitlines() == [f"rlhf: skipped {path}:2: {reason}"]


def test_csv_rows_with_a_field_too_many_or_a_quote_left_open_are_odd_rows_on_their_file_lines(tmp_path, capsys):
    path = tmp_path / "ranks.csv"
    path.write_text(
        "prompt,response,rank\n"
        "q,a,1,extra\n"  # 2: an unquoted comma
        'q,"b\nand more",1\n'  # 3-4: a quoted newline, one row
        "q,c,2\n"  # 5
        'r,"a,1\n'  # 6: a quote left open swallows the lines up to the quote on line 9
        "r,b,1\n"  # 7
        "r,c,2\n"  # 8
        's,"x,1\n'  # 9: a quote left open to the end of the file
    )
    imported = read_rankings(path, "csv")
    assert ranks_by_prompt(imported) == {("q", "b\nand more"): 1, ("q", "c"): 2, ("r", "b"): 1, ("r", "c"): 2}
    assert [str(odd) for odd in imported.odd_rows] == [
        f"{path}:2: 4 fields where the header has 3",
        f"{path}:6: not valid CSV (',' expected after '\"'): a quote left open?; line 7 on is read again",
        f"{path}:9: not valid CSV (unexpected end of data): a quote left open?",
    ]
    store = store_at(tmp_path)
    assert import_cli(store, path, "csv", "--on-bad-row", "fail") == 2
    error = capsys.readouterr().err.strip()
    assert error == f"rlhf: error: {path}:2: 4 fields where the header has 3 (nothing imported; 3 odd rows in the file)"
    assert import_cli(store, path, "csv") == 0
    assert "2 rankings, 3 odd rows skipped" in capsys.readouterr().out
    assert store.counts()["comparisons"] == 2


def test_csv_read_as_pandas_read_it_where_strict_mode_refuses_a_space(tmp_path):
    """A space after a closing quote (a spreadsheet's export), on one line or after a quoted newline."""
    path = tmp_path / "ranks.csv"
    path.write_text(
        'prompt,response,rank\n"Explain\nrecursion" ,good answer,1\n"Explain\nrecursion" ,bad answer,2\n'
        'q,"a" ,1\nq,b,2\n'
    )
    imported = read_rankings(path, "csv")
    assert not imported.odd_rows
    assert ranks_by_prompt(imported) == {
        ("Explain\nrecursion ", "good answer"): 1,
        ("Explain\nrecursion ", "bad answer"): 2,
        ("q", "a "): 1,
        ("q", "b"): 2,
    }


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    path = tmp_path / "ranks.csv"
    path.write_text("prompt,response,rank,response\nq,a,1,b\n")
    with pytest.raises(ImportFileError, match="line 1: the header names 'response' twice"):
        read_rankings(path, "csv")


def test_a_long_csv_field_and_a_jsonl_file_opening_with_a_list_keep_their_rows(tmp_path):
    long = "x" * 200_000  # past the csv module's default 128 KiB field limit
    path = tmp_path / "ranks.csv"
    path.write_text(f"prompt,response,rank\nq,{long},1\nq,b,2\n")
    assert ranks_by_prompt(read_rankings(path, "csv")) == {("q", long): 1, ("q", "b"): 2}
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '["junk"]\n{"prompt": "p", "response": "a", "rank": 1}\n{"prompt": "p", "response": "b", "rank": 2}\n'
    )
    imported = read_rankings(rows, "jsonl")
    assert [(odd.row, odd.reason) for odd in imported.odd_rows] == [(1, "not a JSON object")]
    assert ranks_by_prompt(imported) == {("p", "a"): 1, ("p", "b"): 2}


def test_a_csv_byte_that_is_not_utf8_costs_its_row(tmp_path):
    path = tmp_path / "ranks.csv"
    path.write_bytes("prompt,response,rank\nq,a,1\nq,café,2\nq,c,2\n".encode("latin-1"))
    imported = read_rankings(path, "csv")
    assert ranks_by_prompt(imported) == {("q", "a"): 1, ("q", "c"): 2}
    assert [str(odd) for odd in imported.odd_rows] == [f"{path}:3: not UTF-8 (a byte in `response`)"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "hh-rlhf", "argilla"])
def test_a_directory_is_refused_in_one_line_in_every_format(tmp_path, capsys, fmt):
    folder = tmp_path / "dumps"
    folder.mkdir()
    store = store_at(tmp_path)
    assert import_cli(store, folder, fmt) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"rlhf: error: {folder}: not readable ([Errno 21] Is a directory: '{folder}')"
    ]
    assert not store.path.exists()


@pytest.mark.parametrize("rank", ["1e400", "1.7", "true", "0", "-2", '"1_0"', '"+2"'])
def test_a_rank_that_is_not_a_whole_number_from_1_is_an_odd_row(tmp_path, capsys, rank):
    path = write_jsonl(
        tmp_path / "ranks.jsonl",
        [
            f'{{"prompt": "q", "response": "a", "rank": {rank}}}',
            {"prompt": "q", "response": "b", "rank": "2"},  # a string of digits, as CSV gives
            {"prompt": "q", "response": "c", "rank": 1.0},  # a whole float
        ],
    )
    imported = read_rankings(path, "jsonl")
    assert ranks_by_prompt(imported) == {("q", "b"): 2, ("q", "c"): 1}
    reason = f"rank must be a whole number, 1 or more (got {json.loads(rank)!r})"
    assert [str(odd) for odd in imported.odd_rows] == [f"{path}:1: {reason}"]
    assert import_cli(store_at(tmp_path), path, "jsonl") == 0
    assert capsys.readouterr().err.splitlines() == [f"rlhf: skipped {path}:1: {reason}"]


@pytest.mark.parametrize(
    ("name", "fmt", "text"),
    [
        ("prefs.jsonl", "trl", "\n".join(json.dumps(row) for row in TRL_STANDARD)),
        ("ranks.csv", "csv", "prompt,response,rank\nq,a,1\nq,b,2\n"),
        ("records.json", "argilla", json.dumps(ARGILLA)),
        ("records.jsonl", "argilla", json.dumps(ARGILLA[0])),
    ],
)
def test_a_byte_order_mark_opening_the_file_is_read_past(tmp_path, name, fmt, text):
    with_mark, plain = tmp_path / name, tmp_path / f"plain-{name}"
    with_mark.write_text(text, encoding="utf-8-sig")
    plain.write_text(text, encoding="utf-8")
    imported = read_rankings(with_mark, fmt)
    assert imported.odd_rows == []
    assert ranks_by_prompt(imported) == ranks_by_prompt(read_rankings(plain, fmt))


ANOTHER_ARGILLA_RECORD = {"fields": {**ARGILLA[0]["fields"], "prompt": "tell me about dogs"}}


@pytest.mark.parametrize(
    ("responses", "reason"),
    [
        ("ann ranked it", "`responses` must be a list of answer objects (got a string)"),
        (["ann"], "`responses` must be a list of answer objects (answer 1 is a string)"),
        ([{"user_id": "ann", "values": "response-1"}], "a response's `values` must be an object (got a string)"),
        ({"rating": [{"user_id": "ann", "value": 4}]}, "`responses` has no `ranking` question (it has 'rating')"),
        ({"ranking": "response-1"}, "`responses.ranking` must be a list of answer objects (got a string)"),
        (
            {"ranking": [{"user_id": "ann", "value": "response-1"}]},
            "a response's ranking must be a list (got a string)",
        ),
        (
            [{"values": {"ranking": {"value": [{"value": "response-1", "rank": 1.5}]}}}],
            "rank must be a whole number, 1 or more (got 1.5)",
        ),
    ],
)
def test_an_argilla_record_of_another_shape_is_an_odd_row_saying_what_is_wrong(tmp_path, capsys, responses, reason):
    path = tmp_path / "argilla.json"
    path.write_text(json.dumps([{**ANOTHER_ARGILLA_RECORD, "responses": responses}, *ARGILLA]))
    imported = read_rankings(path, "argilla")
    assert [str(odd) for odd in imported.odd_rows] == [f"{path}:1: {reason}"]
    assert imported.taken == 1
    assert import_cli(store_at(tmp_path), path, "argilla") == 0
    assert capsys.readouterr().err.splitlines() == [f"rlhf: skipped {path}:1: {reason}"]


def test_argilla_2_records_list_their_answers_by_question_best_first(tmp_path):
    record = {
        "id": "r-1",
        **ANOTHER_ARGILLA_RECORD,
        "metadata": {},
        "suggestions": {},
        "responses": {"ranking": [{"value": ["response-3", "response-1", "response-2"], "user_id": "cy"}]},
        "vectors": {},
    }
    path = tmp_path / "argilla.json"
    path.write_text(json.dumps([record, *ARGILLA]))
    imported = read_rankings(path, "argilla")
    assert imported.odd_rows == [] and set(imported.rankings["judge_version"]) == {"ann", "cy"}
    assert ranks_by_prompt(imported) == {
        ("tell me about dogs", "cats sleep a lot"): 1,
        ("tell me about dogs", "cats purr"): 2,
        ("tell me about dogs", "whatever"): 3,
        ("tell me about cats", "cats purr"): 1,
        ("tell me about cats", "cats sleep a lot"): 1,
        ("tell me about cats", "whatever"): 3,
    }


def test_hh_rlhf_gz_and_column_mapping(tmp_path):
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps(HH[0]) + "\n")
    assert len(read_rankings(path, "hh-rlhf").rankings) == 2
    mapped = tmp_path / "mapped.jsonl"
    mapped.write_text('{"q": "hi", "a": "hello", "pos": 1}\n{"q": "hi", "a": "yo", "pos": 2}\n')
    imported = read_rankings(mapped, "jsonl", columns={"prompt": "q", "response": "a", "rank": "pos"})
    assert sorted(imported.responses["response"]) == ["hello", "yo"] and sorted(imported.rankings["rank"]) == [1, 2]


def test_a_column_map_naming_no_known_column_or_written_wrong_is_one_error(tmp_path, capsys):
    mapped = tmp_path / "mapped.jsonl"
    mapped.write_text('{"q": "hi", "a": "hello", "pos": 1}\n{"q": "hi", "a": "yo", "pos": 2}\n')
    with pytest.raises(ImportFileError, match=r"columns \(--map\): 'promt' is not one of prompt, response"):
        read_rankings(mapped, "jsonl", columns={"promt": "q", "response": "a", "rank": "pos"})
    with pytest.raises(ImportFileError, match="only csv and jsonl rows are renamed; hh-rlhf"):
        read_rankings(mapped, "hh-rlhf", columns={"prompt": "q"})
    store = str(tmp_path / "feedback.duckdb")
    for bad in ("prompt=q,response", "prompt=", "=q"):
        assert main(["store", "--path", store, "import", str(mapped), "--format", "jsonl", "--map", bad]) == 2
        assert "write ours=theirs" in capsys.readouterr().err
    command = ["store", "--path", store, "import", str(mapped), "--format", "jsonl"]
    assert main([*command, "--map", " prompt=q, response=a ,rank=pos,"]) == 0  # spaces and a trailing comma
    assert not capsys.readouterr().err


def test_a_whole_float_annotator_id_is_its_number_and_another_float_is_odd(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"prompt": prompt, "response": response, "rank": rank, "annotator": annotator}) + "\n"
            for prompt, annotator in (("hi", 3.0), ("hey", 1.5))
            for response, rank in (("a", 1), ("b", 2))
        )
    )
    imported = read_rankings(rows, "jsonl")
    assert set(imported.rankings["judge_version"]) == {"3"}  # Parquet's float id column with gaps
    assert {odd.reason for odd in imported.odd_rows} == {"annotator must be a name or a whole-number id (got 1.5)"}


def test_a_json_list_of_records_reads_as_its_lines_do(tmp_path):
    pairs = [{"prompt": "hi", "chosen": " hello", "rejected": " go away"}, {"prompt": "q", "chosen": " a"}]
    as_list, as_lines = tmp_path / "pairs.json", tmp_path / "pairs.jsonl"
    as_list.write_text(json.dumps(pairs, indent=2))
    as_lines.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    from_list, from_lines = read_rankings(as_list, "trl"), read_rankings(as_lines, "trl")
    texts = [list(imported.responses["response"]) for imported in (from_list, from_lines)]
    assert texts[0] == texts[1] and sorted(texts[0]) == [" go away", " hello"]
    assert [(odd.row, odd.reason) for odd in from_list.odd_rows] == [(2, "missing `rejected`")]


def test_an_annotator_that_is_not_a_name_is_an_odd_row(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"prompt": "hi", "response": "a", "rank": 1, "annotator": ["u"]}\n'
        '{"prompt": "hi", "response": "b", "rank": 2, "annotator": ["u"]}\n'
        '{"prompt": "hey", "response": "c", "rank": 1, "annotator": 7}\n'
        '{"prompt": "hey", "response": "d", "rank": 2, "annotator": 7}\n'
    )
    imported = read_rankings(rows, "jsonl")
    assert [(odd.row, odd.reason) for odd in imported.odd_rows] == [
        (1, "annotator must be a name or a whole-number id (got a list)"),
        (2, "annotator must be a name or a whole-number id (got a list)"),
    ]
    assert set(imported.rankings["judge_version"]) == {"7"}  # the annotator is the human judge's version


def test_export_trl_standard_conversational_hf_dataset_and_csv(tmp_path, capsys):
    from datasets import load_from_disk

    source = tmp_path / "ranks.csv"
    source.write_text("prompt,response,rank\nq,good,1\nq,ok,2\nq,also ok,2\n")
    store = str(tmp_path / "feedback.duckdb")
    assert main(["store", "--path", store, "import", str(source), "--format", "csv"]) == 0
    out = tmp_path / "out"
    assert main(["store", "--path", store, "export", str(out / "pairs.jsonl"), "--format", "trl"]) == 0
    lines = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    # the tie left out; the response after its one space (rlhf.exporters)
    assert len(lines) == 2 and all(line["chosen"] == " good" and line["prompt"] == "q" for line in lines)
    assert main(["store", "--path", store, "export", str(out / "chat.jsonl"), "--format", "trl-conversational"]) == 0
    first = json.loads((out / "chat.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == [{"role": "user", "content": "q"}] and first["chosen"][0]["role"] == "assistant"
    assert main(["store", "--path", store, "export", str(out / "hf"), "--format", "hf-dataset"]) == 0
    dataset = load_from_disk(str(out / "hf"))
    assert dataset.column_names == ["prompt", "chosen", "rejected", "margin"] and len(dataset) == 2
    assert main(["store", "--path", store, "export", str(out / "all.csv"), "--format", "csv"]) == 0
    table = pd.read_csv(out / "all.csv")
    assert len(table) == 3 and table["tie"].sum() == 1 and table["weight"].sum() == pytest.approx(1.0)
    assert not list(out.glob("*.partial"))


def test_every_store_command_has_help_with_an_example(capsys):
    for command in (
        ["store", "stats"],
        ["store", "query"],
        ["store", "agreement"],
        ["store", "import"],
        ["store", "export"],
        ["annotate", "serve"],
    ):
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0
        assert "Example: rlhf " in capsys.readouterr().out
