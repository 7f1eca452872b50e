"""Prompt collection: formats, sources (files, HF datasets, SQL), dedup, limits, stable splits,
and one-line errors for bad sources."""

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from rlhf import chat
from rlhf.config import CollectPromptsParams
from rlhf.errors import PromptSourceError
from rlhf.prompts import collect, demo_prompts, file_prompts, finalize, split_of
from rlhf.store import FeedbackStore
from rlhf.text import content_id

pytestmark = pytest.mark.timeout(60)


def test_split_is_stable_and_near_the_fraction():
    prompts = demo_prompts()
    splits = [split_of(p, 0.2) for p in prompts["prompt"]]
    assert splits == [split_of(p, 0.2) for p in prompts["prompt"]]
    assert 0.1 < splits.count("test") / len(splits) < 0.3


def test_jsonl_is_deduplicated_and_stripped(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": " hello "}\n{"prompt": "hello"}\n\n{"prompt": "bye"}\n')
    prompts = finalize(file_prompts(path), 0.0, None)
    assert sorted(prompts["prompt"]) == ["bye", "hello"] and set(prompts["split"]) == {"train"}


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    with pytest.raises(PromptSourceError, match=r"p.jsonl:2: not valid JSON"):
        file_prompts(path)


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(PromptSourceError, match=r"p.csv: missing column 'prompt'"):
        file_prompts(path)


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "   "}\n')
    with pytest.raises(PromptSourceError, match="no prompts left"):
        finalize(file_prompts(path), 0.2, None)


# --- sources: files with chat messages, HF datasets, SQL; dedup, limits, one-line errors ---


MULTI_TURN = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "name a bird"},
    {"role": "assistant", "content": "an owl"},
    {"role": "user", "content": "another one?"},
]


def sources(*items, **section):
    """The collect_prompts section as params.yaml would give it."""
    return CollectPromptsParams.model_validate({"sources": list(items), **section})


def run(section):
    return collect(section.sources, section.test_fraction, section.max_prompts)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_demo_source_keeps_the_ids_string_prompts_always_had_and_holds_out_unseen_topics():
    prompts, counts = run(sources({"kind": "demo"}))
    from rlhf.demo import domain

    texts = [p for p, _ in domain.all_prompts()]
    assert sorted(prompts["prompt_id"]) == sorted(content_id(t) for t in texts)  # the ids before conversations
    by_text = prompts.set_index("prompt")
    held_out = {p for p, t in domain.all_prompts() if domain.is_held_out(p, t)}
    assert len(held_out) == 4 * 8 + 28  # four whole topics, one whole template
    assert all(by_text.loc[t, "split"] == ("test" if t in held_out else split_of(t, 0.2)) for t in texts)
    train_topics = set(prompts.loc[prompts["split"] == "train", "topic"])
    assert train_topics.isdisjoint(domain.UNSEEN_TOPICS) and len(train_topics) == 28
    assert json.loads(by_text.loc[texts[0], "messages"]) == [{"role": "user", "content": texts[0]}]
    assert by_text.loc[texts[0], "source"] == "demo" and by_text.loc[texts[0], "source_row"] == 1
    assert counts[0].prompts == len(texts) and counts[0].duplicates == 0


def test_a_multi_turn_messages_prompt_keeps_every_turn(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl",
        [{"messages": MULTI_TURN, "topic": "birds"}, {"messages": [{"role": "user", "content": " owls? "}]}],
    )
    prompts, _ = run(sources({"kind": "file", "path": path}, test_fraction=0.0))
    multi = prompts[prompts["topic"] == "birds"].iloc[0]
    assert json.loads(multi["messages"]) == MULTI_TURN
    assert multi["prompt_id"] == content_id(chat.to_json(MULTI_TURN)) and multi["source_row"] == 1
    assert multi["prompt"] == chat.transcript(MULTI_TURN) and multi["prompt"].count("Human:") == 2
    single = prompts[prompts["topic"].isna()].iloc[0]
    assert single["prompt"] == "owls?" and single["prompt_id"] == content_id("owls?")  # as the string prompt's id


def test_our_own_prompts_parquet_reads_back_as_a_source_with_the_same_ids(tmp_path):
    path = write_jsonl(
        tmp_path / "chat.jsonl", [{"messages": MULTI_TURN}, {"messages": [{"role": "user", "content": "owls?"}]}]
    )
    first, _ = run(sources({"kind": "file", "path": path}))
    first.to_parquet(tmp_path / "prompts.parquet")
    again, _ = run(sources({"kind": "file", "path": str(tmp_path / "prompts.parquet")}))
    assert again[["prompt_id", "prompt", "messages", "split"]].equals(
        first[["prompt_id", "prompt", "messages", "split"]]
    )


def test_csv_messages_are_json_text_and_columns_map_other_names(tmp_path):
    chat_csv = tmp_path / "chat.csv"
    pd.DataFrame({"messages": [json.dumps(MULTI_TURN)]}).to_csv(chat_csv, index=False)
    plain_csv = tmp_path / "plain.csv"
    pd.DataFrame({"question": ["NA", "why?"], "subject": ["", "sky"]}).to_csv(plain_csv, index=False)
    prompts, _ = run(
        sources(
            {"kind": "file", "path": str(chat_csv)},
            {"kind": "file", "path": str(plain_csv), "columns": {"prompt": "question", "topic": "subject"}},
        )
    )
    assert json.loads(prompts.set_index("source").loc[str(chat_csv), "messages"]) == MULTI_TURN
    plain = prompts[prompts["source"] == str(plain_csv)].set_index("prompt")
    assert plain.loc["NA", "source_row"] == 1 and pd.isna(plain.loc["NA", "topic"])  # "NA" is a prompt, not null
    assert plain.loc["why?", "topic"] == "sky"


def test_a_save_to_disk_dataset_and_a_dataset_dicts_split(tmp_path):
    import datasets

    rows = [{"prompt": [{"role": "user", "content": "hi"}], "topic": "greeting"}, {"prompt": MULTI_TURN, "topic": None}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    prompts, _ = run(sources({"kind": "hf_dataset", "path": str(tmp_path / "one")}))
    assert set(prompts["source"]) == {f"hf:{tmp_path / 'one'}"}
    assert sorted(prompts["prompt_id"]) == sorted([content_id("hi"), content_id(chat.to_json(MULTI_TURN))])
    splits = {"train": [{"question": "a"}, {"question": "b"}], "test": [{"question": "c"}]}
    datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(
        str(tmp_path / "dict")
    )
    prompts, _ = run(
        sources({"kind": "hf_dataset", "path": str(tmp_path / "dict"), "split": "test", "column": "question"})
    )
    assert prompts["prompt"].tolist() == ["c"] and prompts["source_row"].tolist() == [1]
    with pytest.raises(
        PromptSourceError, match=r"^hf dataset '.*dict': several splits: set split \(splits: train, test\)$"
    ):
        run(sources({"kind": "hf_dataset", "path": str(tmp_path / "dict"), "column": "question"}))


def feedback_store(path):
    """A real store: two prompts (one multi-turn), two responses each, one human ranking each."""
    conversations = {"owl": [{"role": "user", "content": "tell me about owls"}], "chat": MULTI_TURN}
    prompts = pd.DataFrame(
        [
            (content_id(chat.prompt_key(c)), chat.transcript(c), chat.to_json(c), name, "train", "demo", None)
            for name, c in conversations.items()
        ],
        columns=["prompt_id", "prompt", "messages", "topic", "split", "source", "source_row"],
    )
    responses = pd.DataFrame(
        [(f"{pid}-{i}", pid, i, f"answer {i}", "ckpt", "{}") for pid in prompts["prompt_id"] for i in range(2)],
        columns=["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"],
    )
    rankings = pd.DataFrame(
        [
            (f"rank-{pid}", f"{pid}-{i}", pid, i + 1, float(-i), "{}", "human", "alice")
            for pid in prompts["prompt_id"]
            for i in range(2)
        ],
        columns=["ranking_id", "response_id", "prompt_id", "rank", "score", "reasons", "judge", "judge_version"],
    )
    FeedbackStore(path).ingest({"run_id": "run-1", "stage": "test"}, prompts, responses, rankings)
    return prompts


def test_sql_over_a_real_feedback_store_reads_its_messages_back_to_the_same_ids(tmp_path):
    path = tmp_path / "feedback.duckdb"
    stored = feedback_store(path)
    query = (
        "SELECT DISTINCT p.messages, p.topic, p.prompt_id FROM prompts p JOIN comparisons c USING (prompt_id) "
        "WHERE c.judge = 'human' ORDER BY p.prompt_id"
    )
    prompts, counts = run(sources({"kind": "sql", "query": query, "database": str(path)}))
    assert sorted(prompts["prompt_id"]) == sorted(stored["prompt_id"])
    assert json.loads(prompts.set_index("topic").loc["chat", "messages"]) == MULTI_TURN
    assert set(prompts["source"]) == {f"sql:{path}"} and counts[0].rows == 2


def test_sql_over_a_parquet_file_in_memory(tmp_path):
    parquet = tmp_path / "questions.parquet"
    pd.DataFrame({"text": ["q1", "q2", "q3"], "n": [3, 1, 2]}).to_parquet(parquet)
    query = f"SELECT text AS prompt FROM read_parquet('{parquet}') WHERE n > 1 ORDER BY n"
    prompts, _ = run(sources({"kind": "sql", "query": query}))
    assert prompts.set_index("prompt")["source_row"].to_dict() == {"q3": 1, "q1": 2}
    assert set(prompts["source"]) == {"sql:memory"}


def test_a_prompt_two_sources_give_is_kept_once_from_the_first(tmp_path):
    from rlhf.demo import domain

    demo_text = domain.all_prompts()[3][0]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": demo_text}, {"prompt": "new one"}, {"prompt": "new one"}])
    prompts, counts = run(sources({"kind": "demo"}, {"kind": "file", "path": path}))
    assert prompts.set_index("prompt").loc[demo_text, "source"] == "demo"
    assert prompts.set_index("prompt").loc["new one", "source_row"] == 2
    assert (counts[1].rows, counts[1].duplicates, counts[1].prompts) == (3, 2, 1)
    assert len(prompts) == len(domain.all_prompts()) + 1


def test_a_source_limit_counts_the_new_prompts_it_gives_and_max_prompts_caps_all(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"prompt": p} for p in "abc"])
    second = write_jsonl(tmp_path / "b.jsonl", [{"prompt": p} for p in "bdef"])
    prompts, counts = run(
        sources({"kind": "file", "path": first, "limit": 2}, {"kind": "file", "path": second, "limit": 2})
    )
    assert sorted(prompts["prompt"]) == ["a", "b", "d", "e"]
    assert (counts[0].beyond_limit, counts[1].duplicates, counts[1].beyond_limit) == (1, 1, 1)
    capped, _ = run(sources({"kind": "file", "path": first}, {"kind": "file", "path": second}, max_prompts=4))
    assert sorted(capped["prompt"]) == ["a", "b", "c", "d"]  # the first four in the sources' order


def test_a_mapped_column_the_file_lacks_is_one_line_naming_file_and_column(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hi"}])
    with pytest.raises(PromptSourceError) as caught:
        run(sources({"kind": "file", "path": path, "columns": {"prompt": "question"}}))
    assert str(caught.value) == f"{path}: missing column 'question' (columns.prompt; found ['text'])"


def test_a_malformed_messages_value_names_the_row_and_column(tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"messages": MULTI_TURN}, {"messages": [{"role": "bot", "content": "x"}]}]
    )
    with pytest.raises(
        PromptSourceError, match=r"^.*p.jsonl: row 2: column 'messages': message 1: role must be one of"
    ):
        run(sources({"kind": "file", "path": path}))
    csv = tmp_path / "p.csv"
    csv.write_text('messages\n"[{""role"": ""user""}"\n')  # valid CSV, its cell not valid JSON
    with pytest.raises(PromptSourceError, match=r"p.csv: row 1: column 'messages': not valid JSON"):
        run(sources({"kind": "file", "path": str(csv)}))


def test_a_bad_query_and_an_empty_result_are_one_line_naming_the_query(tmp_path):
    path = tmp_path / "feedback.duckdb"
    feedback_store(path)
    with pytest.raises(PromptSourceError) as caught:
        run(sources({"kind": "sql", "query": "SELECT messages FROM no_such_table", "database": str(path)}))
    message = str(caught.value)
    assert message.startswith(f"sql query on {path} ('SELECT messages FROM no_such_table'): Catalog Error")
    assert "\n" not in message
    with pytest.raises(PromptSourceError, match=r"^sql query on in-memory DuckDB \('SELECT 1 AS x'\): missing column"):
        run(sources({"kind": "sql", "query": "SELECT 1 AS x"}))
    with pytest.raises(
        PromptSourceError, match=r"^sql query on .*\('SELECT messages FROM prompts WHERE false'\): no rows$"
    ):
        run(sources({"kind": "sql", "query": "SELECT messages FROM prompts WHERE false", "database": str(path)}))
    with pytest.raises(PromptSourceError, match=r"missing.duckdb not found$"):
        run(sources({"kind": "sql", "query": "SELECT 1", "database": str(tmp_path / "missing.duckdb")}))


def test_the_older_source_file_shorthand_still_reads(tmp_path):
    section = CollectPromptsParams.model_validate({"source": "file", "path": "p.jsonl", "test_fraction": 0.1})
    assert [(s.kind, s.path) for s in section.sources] == [("file", "p.jsonl")]
    assert CollectPromptsParams.model_validate({"source": "demo", "path": None}).sources[0].kind == "demo"


def run_stage(project_root, tmp_path, section, env=None):
    params = yaml.safe_load((project_root / "params.yaml").read_text())
    params["collect_prompts"] = section
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "rlhf.stages.collect_prompts", "--params", str(tmp_path / "params.yaml")]
    out = tmp_path / "prompts.parquet"
    result = subprocess.run(
        command + ["--prompts", str(out)],
        cwd=project_root,
        capture_output=True,
        text=True,
        env=env,
        timeout=100,
        check=False,
    )
    return result, out


def test_the_stage_prints_what_each_source_gave(project_root, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "tell me about owls . answer :"}, {"prompt": "hello"}])
    result, out = run_stage(project_root, tmp_path, {"sources": [{"kind": "demo"}, {"kind": "file", "path": path}]})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "collect_prompts: demo: 256 prompts of 256 rows (0 duplicates, 0 empty, 0 beyond its limit)" in lines
    assert f"collect_prompts: {path}: 1 prompts of 2 rows (1 duplicates, 0 empty, 0 beyond its limit)" in lines
    assert len(pd.read_parquet(out)) == 257


def closed_loopback_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.timeout(150)
def test_a_hub_id_that_cannot_be_reached_is_one_line_naming_the_dataset(project_root, tmp_path):
    """The hub at a closed loopback port: the client retries (~25 s), then the stage says so in one line."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_loopback_port()}", HF_HOME=str(tmp_path / "hf"))
    section = {"sources": [{"kind": "hf_dataset", "name": "nobody/no-such-prompts", "split": "train"}]}
    result, out = run_stage(project_root, tmp_path, section, env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        (
            "collect_prompts: error: hf dataset 'nobody/no-such-prompts': "
            "the Hugging Face hub could not be reached to load 'nobody/no-such-prompts'"
        )
    ]
    assert not out.exists()
