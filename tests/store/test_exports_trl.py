"""What other tools read from what we hand them: the store's exports as TRL 1.16's trainers
tokenise them, and saved tokenizers as plain transformers truncates with them.

Each export is loaded with `datasets` and run through TRL's own dataset preparation (DPOTrainer's
and RewardTrainer's `_prepare_dataset`); the ids TRL builds must be the ids our stages read: the
prompt as rlhf.sampling.prompt_batch tokenises it, the whole exchange as rlhf.scoring encodes it.
"""

import json
from pathlib import Path

import pytest
import torch
from datasets import load_dataset, load_from_disk
from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf import chat, scoring
from rlhf.cli import main
from rlhf.errors import InputError
from rlhf.exporters import export_pairs
from rlhf.pretrained import load_tokenizer
from rlhf.sampling import prompt_batch
from rlhf.store import FeedbackStore
from tests.support.tiny import tiny_gpt2_config

OWLS, BEES = "tell me about owls . answer :", "tell me about bees . answer :"
RANKS = [
    (OWLS, "glad you asked . owls hunt at night .", 1),
    (OWLS, "owls are birds .", 2),
    (OWLS, "i do not know .", 3),
    (BEES, "bees make honey .", 1),
    (BEES, "bees .", 2),
    (BEES, "no .", 2),  # a tie with "bees .": no TRL row
]
CHAT = {  # a prompt of several turns, and a chosen reply that goes on for three
    "prompt": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "plan a trip"},
        {"role": "assistant", "content": "Where to?"},
        {"role": "user", "content": "Rome"},
    ],
    "chosen": [
        {"role": "assistant", "content": "Fly, then walk."},
        {"role": "user", "content": "ok?"},
        {"role": "assistant", "content": "Yes."},
    ],
    "rejected": [{"role": "assistant", "content": "No."}],
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FeedbackStore:
    root = tmp_path_factory.mktemp("export-store")
    ranks = root / "ranks.csv"
    ranks.write_text("prompt,response,rank\n" + "".join(f"{p},{r},{k}\n" for p, r, k in RANKS))
    chats = root / "chat.jsonl"
    chats.write_text(json.dumps(CHAT) + "\n")
    path = str(root / "feedback.duckdb")
    assert main(["store", "--path", path, "import", str(ranks), "--format", "csv"]) == 0
    assert main(["store", "--path", path, "import", str(chats), "--format", "trl"]) == 0
    return FeedbackStore(path)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory, tiny_tokenizer) -> dict:
    """The demo's tokenizer (its chat template) and a template-less copy (the plain format), each
    saved as a model directory would hold it."""
    root = tmp_path_factory.mktemp("tokenizers")
    tiny_tokenizer.save_pretrained(root / "demo")
    plain = AutoTokenizer.from_pretrained(root / "demo")
    plain.chat_template = None
    plain.save_pretrained(root / "plain")
    return {name: (load_tokenizer(root / name), root / name) for name in ("demo", "plain")}


@pytest.fixture(scope="module")
def trl_trainers(tmp_path_factory, tiny_tokenizer):
    """A tiny DPOTrainer and RewardTrainer, for their `_prepare_dataset` alone."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    root = tmp_path_factory.mktemp("trl")
    row = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
    common = {"report_to": [], "use_cpu": True, "bf16": False, "save_strategy": "no"}
    config = tiny_gpt2_config(tiny_tokenizer, n_embd=8, n_head=1)
    dpo = DPOTrainer(
        model=GPT2LMHeadModel(config),
        ref_model=GPT2LMHeadModel(config),
        args=DPOConfig(output_dir=str(root / "dpo"), **common),
        train_dataset=row,
        processing_class=tiny_tokenizer,
    )
    reward_model = GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, n_embd=8, n_head=1, num_labels=1))
    reward = RewardTrainer(
        model=reward_model,
        args=RewardConfig(output_dir=str(root / "rm"), max_length=None, **common),
        train_dataset=row,
        processing_class=tiny_tokenizer,
    )
    return dpo, reward


def export(store: FeedbackStore, out: Path, fmt: str, tokenizer_dir: Path | None):
    """Export through the CLI and load the result as TRL users do."""
    extra = ["--tokenizer", str(tokenizer_dir)] if tokenizer_dir else []
    assert main(["store", "--path", str(store.path), "export", str(out), "--format", fmt, *extra]) == 0
    if fmt == "hf-dataset":
        return load_from_disk(str(out))
    return load_dataset("json", data_files=str(out), split="train")


def our_ids(tokenizer, pairs) -> list[dict]:
    """Per strict pair: the prompt's ids as sampling feeds the policy, each exchange's as scoring encodes it."""
    rows = []
    for row in pairs.itertuples():
        conversation = chat.from_json(row.prompt_messages)
        batch = prompt_batch(tokenizer, [chat.render_prompt(tokenizer, conversation)], torch.device("cpu"))
        exchange = {
            side: scoring.encode(tokenizer, [scoring.exchange_text(tokenizer, conversation, chat.from_json(turns))])[0]
            for side, turns in (("chosen", row.chosen_messages), ("rejected", row.rejected_messages))
        }
        rows.append({"prompt": batch["input_ids"][batch["attention_mask"] == 1].tolist(), **exchange})
    return rows


@pytest.mark.parametrize(
    "tokenizer_name, fmt, with_tokenizer",
    [
        ("demo", "trl", True),
        ("demo", "hf-dataset", True),
        ("demo", "trl-conversational", False),  # TRL renders the messages with the template itself
        ("plain", "trl", False),  # no --tokenizer: the plain format
        ("plain", "hf-dataset", True),
    ],
)
def test_trl_tokenises_every_export_into_the_ids_our_stages_read(
    store, tokenizers, trl_trainers, tmp_path, tokenizer_name, fmt, with_tokenizer
):
    tokenizer, directory = tokenizers[tokenizer_name]
    dataset = export(store, tmp_path / "export", fmt, directory if with_tokenizer else None)
    pairs = store.comparisons()
    pairs = pairs[~pairs["tie"]]
    assert len(dataset) == len(pairs) == 6  # 3 + 2 strict pairs of the csv, 1 of the chat file
    assert dataset["margin"] == pytest.approx(list(pairs["margin"]))
    ours = our_ids(tokenizer, pairs)

    dpo, reward = trl_trainers
    for theirs, mine in zip(dpo._prepare_dataset(dataset, tokenizer, dpo.args, "export"), ours):
        assert theirs["prompt_ids"] == mine["prompt"]  # the text the policy continued, token for token
        assert theirs["prompt_ids"] + theirs["chosen_ids"] == mine["chosen"]  # and what it sampled after it
        assert theirs["prompt_ids"] + theirs["rejected_ids"] == mine["rejected"]
    prepared = reward._prepare_dataset(dataset, tokenizer, reward.args, "export")
    assert [row["chosen_ids"] for row in prepared] == [m["chosen"] for m in ours]
    assert [row["rejected_ids"] for row in prepared] == [m["rejected"] for m in ours]
    assert prepared["margin"] == pytest.approx(list(pairs["margin"]))  # RewardTrainer's collator reads it


def test_the_standard_format_is_what_the_policy_saw_with_its_one_space(store, tokenizers, tmp_path):
    demo, directory = tokenizers["demo"]
    rows = {(r["chosen"], r["rejected"]): r for r in export(store, tmp_path / "pairs.jsonl", "trl", directory)}
    eos = demo.eos_token
    owls = rows[(f" glad you asked . owls hunt at night .{eos}", f" owls are birds .{eos}")]
    assert owls["prompt"] == OWLS and owls["margin"] == 1.0  # ranks 1 and 2: people's margin is the rank difference
    plain = list(export(store, tmp_path / "plain.jsonl", "trl", None))
    # the plain format leaves EOS to TRL, which appends it as rlhf.scoring does
    assert " glad you asked . owls hunt at night ." in {r["chosen"] for r in plain}
    several = next(r for r in plain if r["rejected"] == " No.")
    assert several["prompt"].endswith("\n\nHuman: Rome\n\nAssistant:")
    assert several["chosen"] == " Fly, then walk.\n\nHuman: ok?\n\nAssistant: Yes."


def test_a_template_whose_turn_does_not_end_with_eos_is_sent_to_the_conversational_format(store, tokenizers):
    chatml = AutoTokenizer.from_pretrained(tokenizers["plain"][1])
    chatml.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(InputError, match="not the tokenizer's EOS .*export --format trl-conversational"):
        export_pairs(store.comparisons(), Path("/nonexistent/never-written.jsonl"), "trl", tokenizer=chatml)


# --- An export replaces an earlier export, and nothing else ------------------------------------


def export_command(store: FeedbackStore, out: Path, fmt: str) -> list[str]:
    return ["store", "--path", str(store.path), "export", str(out), "--format", fmt]


@pytest.mark.parametrize("fmt", ["trl", "csv", "hf-dataset"])
def test_an_export_never_replaces_a_directory_of_other_files(store, tmp_path, capsys, fmt):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "f.txt").write_text("keep me")
    assert main(export_command(store, data, fmt)) == 2
    error = capsys.readouterr().err
    assert f"{data}: is a directory" in error and "Traceback" not in error
    assert (data / "sub" / "f.txt").read_text() == "keep me"
    assert [path.name for path in tmp_path.iterdir()] == ["data"]  # no .partial left beside it


def test_an_export_never_writes_over_the_store(store, capsys):
    before = store.counts()
    assert main(export_command(store, store.path, "csv")) == 2
    assert "the feedback store itself" in capsys.readouterr().err
    assert store.counts() == before


def test_an_export_replaces_an_earlier_export_of_its_format(store, tmp_path, capsys):
    dataset, pairs = tmp_path / "hf", tmp_path / "pairs.jsonl"
    for _ in range(2):  # the second replaces the first, whole
        assert main(export_command(store, dataset, "hf-dataset")) == 0
        assert main(export_command(store, pairs, "trl")) == 0
    assert len(load_from_disk(str(dataset))) == len(pairs.read_text().splitlines()) == 6
    assert main(export_command(store, pairs, "hf-dataset")) == 2  # a file where a directory would go
    assert "is a file" in capsys.readouterr().err and pairs.is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["hf", "pairs.jsonl"]


def test_an_unwritable_export_path_is_one_error_naming_it(store, capsys):
    assert main(export_command(store, Path("/proc/pairs.csv"), "csv")) == 2
    error = capsys.readouterr().err
    assert "/proc/pairs.csv: cannot write the export" in error and "Traceback" not in error


# --- Saved tokenizers state the model's context -----------------------------------------------


def test_a_saved_tokenizer_states_the_models_positions_and_truncation_then_fits_the_model(tiny_tokenizer, tmp_path):
    assert tiny_tokenizer.model_max_length == 256  # the demo policy's n_positions (rlhf.bootstrap)
    positions = 32
    policy_dir, reward_dir = tmp_path / "policy", tmp_path / "reward"
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer, n_positions=positions)).eval()
    reward = GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, n_positions=positions, num_labels=1))
    unlimited = AutoTokenizer.from_pretrained(_saved(tiny_tokenizer, tmp_path / "as-shipped"))
    unlimited.model_max_length = int(1e30)  # what a tokenizer built from scratch, or many on the hub, say
    for model, directory in ((policy, policy_dir), (reward.eval(), reward_dir)):
        model.save_pretrained(directory)
        unlimited.save_pretrained(directory)
        # a stage loads it (rlhf.pretrained) and saves it with its model, as every stage does
        load_tokenizer(directory).save_pretrained(tmp_path / "resaved" / directory.name)
    long_text = "tell me about owls . answer : " * 40
    for name, model in (("policy", policy), ("reward", reward)):
        # plain transformers, as a user of the saved model would load it
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "resaved" / name)
        assert tokenizer.model_max_length == positions
        batch = tokenizer(long_text, truncation=True, return_tensors="pt")
        assert batch["input_ids"].shape[1] == positions
        with torch.no_grad():
            model(**batch)  # past its positions this is an index error
    room = tokenizer(long_text, truncation=True, max_length=tokenizer.model_max_length - 4, return_tensors="pt")
    generated = policy.generate(
        **room, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    assert generated.shape[1] == positions


def _saved(tokenizer, directory: Path) -> Path:
    tokenizer.save_pretrained(directory)
    return directory
