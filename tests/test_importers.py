"""Rankings made elsewhere: each format into a real store, and one clear line for a broken file."""

import json
import re

import pandas as pd
import pytest

from rlhf.cli import main
from rlhf.importers import ImportFileError, read_rankings
from rlhf.store import FeedbackStore

HH = [
    {"chosen": "\n\nHuman: how do owls hunt?\n\nAssistant: At night, by sound.",
     "rejected": "\n\nHuman: how do owls hunt?\n\nAssistant: Dunno."},
    {"chosen": "\n\nHuman: hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: hi\n\nAssistant: Hello!"},
]  # fmt: skip
ARGILLA = [
    {
        "fields": {"prompt": "tell me about cats", "response-1": "cats purr", "response-2": "whatever",
                   "response-3": "cats sleep a lot"},
        "responses": [
            {"user_id": "ann", "status": "submitted", "values": {"ranking": {"value": [
                {"value": "response-1", "rank": 1}, {"value": "response-2", "rank": 3},
                {"value": "response-3", "rank": 1}]}}},
            {"user_id": "ben", "status": "discarded", "values": {}},
        ],
    }
]  # fmt: skip


def test_hh_rlhf_lines_become_pairs_and_identical_pairs_are_dropped(tmp_path):
    path = tmp_path / "hh.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in HH))
    prompts, responses, rankings = read_rankings(path, "hh-rlhf")
    assert list(prompts["prompt"]) == ["Human: how do owls hunt?\n\nAssistant:"]
    ranks = dict(zip(responses.set_index("response_id").loc[rankings["response_id"], "response"], rankings["rank"]))
    assert ranks == {"At night, by sound.": 1, "Dunno.": 2}
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    added = store.ingest({"run_id": "r", "stage": "import"}, prompts, responses, rankings)
    assert added["comparisons"] == 1
    pair = store.query(
        "SELECT ch.response AS chosen FROM comparisons c JOIN responses ch ON ch.response_id = c.chosen_id"
    )
    assert list(pair["chosen"]) == ["At night, by sound."]


def test_argilla_export_keeps_submitted_rankings_with_ties_and_their_annotator(tmp_path):
    path = tmp_path / "argilla.json"
    path.write_text(json.dumps(ARGILLA))
    _, responses, rankings = read_rankings(path, "argilla")
    assert set(rankings["judge_version"]) == {"ann"}
    texts = responses.set_index("response_id")["response"]
    assert {texts[r]: k for r, k in zip(rankings["response_id"], rankings["rank"])} == {
        "cats purr": 1, "cats sleep a lot": 1, "whatever": 3,
    }  # fmt: skip


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
        ("csv", "prompt,response\nq,a\n", "line 2: missing rank"),
        ("csv", "prompt,response,rank\nq,a,first\nq,b,2\n", "line 2: rank must be a whole number (got 'first')"),
        ("jsonl", '{"prompt": "q", "response": "a", "rank": 1}\n{oops\n', "bad.jsonl:2: not valid JSON"),
        ("hh-rlhf", '{"chosen": "no turns here", "rejected": "x"}\n', "line 1: chosen and rejected do not share"),
        ("argilla", '[{"fields": {}}]', "record 1: expected `fields` with a `prompt`"),
    ],
)
def test_a_malformed_file_is_one_clear_error_and_the_store_is_untouched(tmp_path, capsys, fmt, content, message):
    path = tmp_path / f"bad.{fmt}"
    path.write_text(content)
    with pytest.raises(ImportFileError, match=re.escape(message)):
        read_rankings(path, fmt)
    store = tmp_path / "feedback.duckdb"
    assert main(["store", "--path", str(store), "import", str(path), "--format", fmt]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"rlhf: error: {path}") and len(error.splitlines()) == 1
    assert not store.exists()


def test_hh_rlhf_gz_and_column_mapping(tmp_path):
    import gzip

    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps(HH[0]) + "\n")
    _, _, rankings = read_rankings(path, "hh-rlhf")
    assert len(rankings) == 2
    mapped = tmp_path / "mapped.jsonl"
    mapped.write_text('{"q": "hi", "a": "hello", "pos": 1}\n{"q": "hi", "a": "yo", "pos": 2}\n')
    _, responses, rankings = read_rankings(mapped, "jsonl", columns={"prompt": "q", "response": "a", "rank": "pos"})
    assert sorted(responses["response"]) == ["hello", "yo"] and sorted(rankings["rank"]) == [1, 2]


def test_export_trl_standard_conversational_hf_dataset_and_csv(tmp_path, capsys):
    from datasets import load_from_disk

    source = tmp_path / "ranks.csv"
    source.write_text("prompt,response,rank\nq,good,1\nq,ok,2\nq,also ok,2\n")
    store = str(tmp_path / "feedback.duckdb")
    assert main(["store", "--path", store, "import", str(source), "--format", "csv"]) == 0
    out = tmp_path / "out"
    assert main(["store", "--path", store, "export", str(out / "pairs.jsonl"), "--format", "trl"]) == 0
    lines = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(line["chosen"] == "good" and line["prompt"] == "q" for line in lines)  # tie left out
    assert main(["store", "--path", store, "export", str(out / "chat.jsonl"), "--format", "trl-conversational"]) == 0
    first = json.loads((out / "chat.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == [{"role": "user", "content": "q"}] and first["chosen"][0]["role"] == "assistant"
    assert main(["store", "--path", store, "export", str(out / "hf"), "--format", "hf-dataset"]) == 0
    dataset = load_from_disk(str(out / "hf"))
    assert dataset.column_names == ["prompt", "chosen", "rejected"] and len(dataset) == 2
    assert main(["store", "--path", store, "export", str(out / "all.csv"), "--format", "csv"]) == 0
    table = pd.read_csv(out / "all.csv")
    assert len(table) == 3 and table["tie"].sum() == 1 and table["weight"].sum() == pytest.approx(1.0)
    assert not list(out.glob("*.partial"))


def test_every_store_command_has_help_with_an_example(capsys):
    for command in (["store", "stats"], ["store", "query"], ["store", "agreement"], ["store", "import"],
                    ["store", "export"], ["annotate", "serve"]):  # fmt: skip
        with pytest.raises(SystemExit) as done:
            main([*command, "--help"])
        assert done.value.code == 0
        assert "Example: rlhf " in capsys.readouterr().out
