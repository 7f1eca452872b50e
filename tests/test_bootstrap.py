"""bootstrap_policy on a pretrained model: SFT on demonstrations (TRL SFTTrainer), completion-only
loss, held-out loss, LoRA merged into a plain model, and bad input as one line naming file and row.

The "pretrained" models are tiny random Llama and Qwen2 models built here, with the demo's BPE
trained on a small corpus, once with a small chat template and once without one (plain format).
"""

import json
import random
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml
from datasets import Dataset
from transformers import AutoModelForCausalLM, LlamaForCausalLM, Qwen2ForCausalLM

from rlhf import chat
from rlhf.bootstrap import (
    Demonstration,
    DemonstrationsError,
    finetune_pretrained,
    read_demonstrations,
    sft_trainer,
    split_demonstrations,
)
from rlhf.config import BootstrapSFTParams, parse_params
from rlhf.demo.tokenizer import train_tokenizer
from rlhf.errors import ConfigError, InputError
from rlhf.pretrained import load_tokenizer
from rlhf.stages._stage import write_dir_whole
from tests.support.bootstrap_data import TEMPLATE, demonstration_rows, save_pretrained_model, write_jsonl

pytestmark = pytest.mark.timeout(120)

CPU = torch.device("cpu")


def message_rows() -> list[dict]:
    """The same demonstrations as whole conversations, some with a system turn and an earlier exchange."""
    rows = []
    for n, row in enumerate(demonstration_rows()):
        turns = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
        if n % 3 == 1:
            turns = [{"role": "system", "content": "be kind ."}, *turns]
        if n % 3 == 2:
            turns = [{"role": "user", "content": "hello ."}, {"role": "assistant", "content": "hello ."}, *turns]
        rows.append({"messages": turns})
    return rows


@pytest.fixture(scope="module")
def tokenizer():
    corpus = [r["prompt"] + " " + r["completion"] for r in demonstration_rows()] * 4
    return train_tokenizer(corpus, vocab_size=320)


@pytest.fixture()
def llama_dir(tmp_path, tokenizer):
    return save_pretrained_model(tmp_path / "user-llama", tokenizer)


def params(**overrides) -> BootstrapSFTParams:
    settings = {"epochs": 4, "batch_size": 4, "learning_rate": 1e-2, "max_length": 128, "eval_fraction": 0.25}
    return BootstrapSFTParams(**{**settings, **overrides})


def expected_labels(tokenizer, demonstration: Demonstration) -> tuple[list[int], list[int]]:
    """(input ids, labels) the policy should train on: chat.py's rendering of the exchange, the
    prompt's tokens masked with -100. The plain format ends with EOS, as TRL appends it."""
    special = chat.add_special_tokens_for(tokenizer)
    prompt = chat.render_prompt(tokenizer, demonstration.prompt)
    exchange = chat.render_exchange(tokenizer, demonstration.prompt, demonstration.completion)
    ids = tokenizer(exchange, add_special_tokens=special)["input_ids"]
    if not chat.has_chat_template(tokenizer):
        ids = ids + [tokenizer.eos_token_id]
    prompt_len = len(tokenizer(prompt, add_special_tokens=special)["input_ids"])
    return ids, [-100] * prompt_len + ids[prompt_len:]


@pytest.mark.parametrize("template", [TEMPLATE, None], ids=["chat_template", "plain"])
def test_labels_cover_the_completion_tokens_only(tmp_path, tokenizer, template):
    path = write_jsonl(tmp_path / "demos.jsonl", message_rows())
    demonstrations = read_demonstrations(path)
    model_dir = save_pretrained_model(tmp_path / "user", tokenizer, chat_template=template)
    user_tokenizer = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = sft_trainer(model, user_tokenizer, demonstrations, [], params(), 0, CPU, str(tmp_path / "scratch"))
    rows = list(trainer.train_dataset)
    assert len(rows) == len(demonstrations)
    for row, demonstration in zip(rows, demonstrations, strict=True):
        ids, labels = expected_labels(user_tokenizer, demonstration)
        assert row["input_ids"] == ids
        assert row["labels"] == labels
        assert labels[0] == -100 and labels[-1] == user_tokenizer.eos_token_id
    # The collated batch keeps those labels and masks the padding too.
    batch = trainer.data_collator(rows[:4])
    for i, row in enumerate(rows[:4]):
        n = len(row["labels"])
        assert batch["labels"][i, :n].tolist() == row["labels"]
        assert (batch["labels"][i, n:] == -100).all()


def test_sft_lowers_the_heldout_loss_and_saves_a_loadable_policy(tmp_path, llama_dir):
    path = write_jsonl(tmp_path / "demos.jsonl", message_rows())
    out = tmp_path / "sft"
    metrics = finetune_pretrained(str(llama_dir), path, params(), 0, CPU, out)
    print(json.dumps(metrics))
    assert metrics["format"] == "chat_template"
    assert metrics["train_demonstrations"] + metrics["heldout_demonstrations"] == 48
    assert metrics["heldout_demonstrations"] >= 5 and metrics["train_steps"] >= 20
    assert metrics["heldout_loss"] < 0.5 * metrics["heldout_loss_before"]
    # HF layout: weights, config, generation config, tokenizer with its chat template.
    assert {"config.json", "model.safetensors", "generation_config.json"} <= {p.name for p in out.iterdir()}
    saved = load_tokenizer(out)
    assert saved.chat_template == TEMPLATE
    policy = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(policy, LlamaForCausalLM)
    # The trained policy answers a held-out prompt with the demonstrated shape of answer.
    _, held_out = split_demonstrations(read_demonstrations(path), 0.25)
    query = saved(chat.render_prompt(saved, held_out[0].prompt), add_special_tokens=False, return_tensors="pt")
    generated = policy.generate(**query, max_new_tokens=6, do_sample=False)
    assert saved.decode(generated[0, query["input_ids"].shape[1] :]).startswith("sure")


def test_plain_format_without_chat_template_or_pad_token(tmp_path, tokenizer):
    model_dir = save_pretrained_model(tmp_path / "user-qwen", tokenizer, arch="qwen2", chat_template=None, pad=False)
    assert load_tokenizer(model_dir).pad_token == tokenizer.eos_token  # load_tokenizer's stand-in
    path = write_jsonl(tmp_path / "demos.jsonl", demonstration_rows())
    metrics = finetune_pretrained(str(model_dir), path, params(), 0, CPU, tmp_path / "sft")
    assert metrics["format"] == "plain"
    assert metrics["heldout_loss"] < 0.5 * metrics["heldout_loss_before"]
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "sft"), Qwen2ForCausalLM)


def test_lora_saves_a_plain_model_whose_weights_changed(tmp_path, llama_dir):
    path = write_jsonl(tmp_path / "demos.jsonl", demonstration_rows())
    out = tmp_path / "sft"
    metrics = finetune_pretrained(str(llama_dir), path, params(lora_rank=4, learning_rate=3e-2), 0, CPU, out)
    assert metrics["lora_rank"] == 4 and metrics["heldout_loss"] < metrics["heldout_loss_before"]
    assert not (out / "adapter_config.json").exists()
    original = AutoModelForCausalLM.from_pretrained(llama_dir).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(merged, LlamaForCausalLM)
    trained = merged.state_dict()
    assert trained.keys() == original.keys()  # no lora_A/lora_B or base_layer left
    assert not torch.equal(
        trained["model.layers.0.self_attn.q_proj.weight"], original["model.layers.0.self_attn.q_proj.weight"]
    )
    assert not torch.equal(
        trained["model.layers.1.mlp.down_proj.weight"], original["model.layers.1.mlp.down_proj.weight"]
    )
    assert torch.equal(trained["model.embed_tokens.weight"], original["model.embed_tokens.weight"])  # not a LoRA target


def test_a_bf16_checkpoint_is_saved_in_bf16_after_sft(tmp_path, tokenizer):
    model_dir = save_pretrained_model(tmp_path / "user", tokenizer, dtype=torch.bfloat16)
    path = write_jsonl(tmp_path / "demos.jsonl", demonstration_rows())
    metrics = finetune_pretrained(
        str(model_dir), path, params(epochs=2, mixed_precision="no"), 0, CPU, tmp_path / "sft"
    )
    assert metrics["heldout_loss"] < metrics["heldout_loss_before"]
    original = AutoModelForCausalLM.from_pretrained(model_dir)
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    assert trained.dtype == original.dtype == torch.bfloat16
    name = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(trained.state_dict()[name], original.state_dict()[name])


@pytest.mark.gpu
@pytest.mark.parametrize("lora_rank", [0, 4])
def test_sft_on_cuda_in_bf16_autocast(tmp_path, tokenizer, lora_rank):
    model_dir = save_pretrained_model(tmp_path / "user", tokenizer, dtype=torch.bfloat16)
    path = write_jsonl(tmp_path / "demos.jsonl", message_rows())
    settings = params(lora_rank=lora_rank, learning_rate=3e-2 if lora_rank else 1e-2, mixed_precision="auto")
    metrics = finetune_pretrained(str(model_dir), path, settings, 0, torch.device("cuda"), tmp_path / "sft")
    assert metrics["heldout_loss"] < metrics["heldout_loss_before"]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "sft").dtype == torch.bfloat16


def test_a_messages_row_trains_on_its_last_assistant_turn(tmp_path):
    turns = [
        {"role": "system", "content": "be brief ."},
        {"role": "user", "content": "hi ."},
        {"role": "assistant", "content": "hello ."},
        {"role": "user", "content": "tell me about owls ."},
        {"role": "assistant", "content": "owls hoot ."},
    ]
    [demonstration] = read_demonstrations(write_jsonl(tmp_path / "demos.jsonl", [{"messages": turns}]))
    assert demonstration.prompt == turns[:-1]
    assert demonstration.completion == turns[-1:]


def test_every_format_reads_the_same_demonstrations(tmp_path):
    rows = demonstration_rows()[:6]
    expected = read_demonstrations(write_jsonl(tmp_path / "demos.jsonl", rows))
    assert expected[0] == Demonstration(
        [{"role": "user", "content": rows[0]["prompt"]}], [{"role": "assistant", "content": rows[0]["completion"]}]
    )
    pd.DataFrame(rows).to_csv(tmp_path / "demos.csv", index=False)
    as_messages = [{"prompt": d.prompt, "completion": d.completion} for d in expected]
    pd.DataFrame(as_messages).to_parquet(tmp_path / "demos.parquet")  # list-of-struct columns
    Dataset.from_list([{"messages": d.prompt + d.completion} for d in expected]).save_to_disk(tmp_path / "demos-ds")
    for name in ("demos.csv", "demos.parquet", "demos-ds"):
        assert read_demonstrations(tmp_path / name) == expected, name


def test_heldout_split_is_by_prompt_and_ignores_file_order(tmp_path):
    rows = demonstration_rows() + [{"prompt": r["prompt"], "completion": "ok ."} for r in demonstration_rows()]
    demonstrations = read_demonstrations(write_jsonl(tmp_path / "demos.jsonl", rows))
    shuffled = demonstrations[:]
    random.Random(1).shuffle(shuffled)
    train, held_out = split_demonstrations(demonstrations, 0.25)
    _, held_out_shuffled = split_demonstrations(shuffled, 0.25)
    keys = {chat.prompt_key(d.prompt) for d in held_out}
    assert keys == {chat.prompt_key(d.prompt) for d in held_out_shuffled}
    assert not keys & {chat.prompt_key(d.prompt) for d in train}  # a prompt's demonstrations stay together
    assert 0.1 < len(held_out) / len(demonstrations) < 0.4


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("demos.jsonl", '{"prompt": "hi ."}\n', "{path}: missing column 'completion' (needs prompt and completion"),
        ("demos.jsonl", '{"text": "hi ."}\n', "{path}: missing column 'prompt' (needs prompt and completion"),
        ("demos.csv", "prompt,answer\nhi .,hello .\n", "{path}: missing column 'completion'"),
        ("demos.jsonl", "", "{path}: no demonstrations"),
        ("demos.csv", "prompt,completion\n", "{path}: no demonstrations"),
        (
            "demos.jsonl",
            '{"prompt": "hi .", "completion": "hello ."}\n{"prompt": "hi .", "completion": 3}\n',
            "{path}:2: 'completion': expected a string or a non-empty list of chat messages, got int",
        ),
        ("demos.jsonl", '{"prompt": "hi .", "completion": "hello ."}\n{"prompt": "hi ."\n', "{path}:2: not valid JSON"),
        (
            "demos.jsonl",
            '{"prompt": "hi .", "completion": "hello ."}\n{"prompt": "yo ."}\n',
            "{path}:2: 'completion': missing",
        ),
        ("demos.csv", "prompt,completion\nhi .,hello .\nhi .,\n", "{path}: row 2: the completion is empty"),
        (
            "demos.jsonl",
            '{"messages": [{"role": "user", "content": "hi ."}]}\n',
            "{path}:1: 'messages' must end with an assistant turn",
        ),
        (
            "demos.jsonl",
            '{"messages": [{"role": "user", "content": "hi ."}, {"role": "robot", "content": "beep"}]}\n',
            "{path}:1: 'messages': message 2: role must be one of",
        ),
        ("demos.txt", "hi .\n", "{path}: unsupported format"),
        ("absent.jsonl", None, "{path}: not found"),
    ],
)
def test_bad_demonstrations_are_one_line_naming_the_file_and_row(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DemonstrationsError) as caught:
        read_demonstrations(path)
    text = str(caught.value)
    assert isinstance(caught.value, InputError)
    assert text.startswith(message.format(path=path)) and "\n" not in text


def test_stage_refuses_bad_demonstrations_with_one_line_and_writes_nothing(tmp_path, project_root):
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    demos = tmp_path / "demos.jsonl"
    demos.write_text('{"prompt": "hi ."}\n')
    raw["bootstrap_policy"].update(source="pretrained", model=str(tmp_path / "never-loaded"), demonstrations=str(demos))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out, metrics = tmp_path / "models" / "sft", tmp_path / "metrics" / "bootstrap.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.stages.bootstrap_policy",
            "--params",
            str(tmp_path / "params.yaml"),
            "--model_dir",
            str(out),
            "--metrics",
            str(metrics),
            "--live_dir",
            str(tmp_path / "dvclive" / "bootstrap_policy"),
        ],
        cwd=project_root,
        capture_output=True,
        check=False,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"bootstrap_policy: error: {demos}: missing column 'completion'")
    assert not out.exists() and not out.with_name("sft.partial").exists() and not metrics.exists()
    assert not (tmp_path / "dvclive" / "bootstrap_policy").exists()  # nor a DVCLive directory with nothing in it


def test_the_model_directory_appears_whole_or_not_at_all(tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    (out / "old.txt").write_text("previous run")

    def fails(partial):
        partial.mkdir()
        (partial / "config.json").write_text("{}")
        raise DemonstrationsError("bad row")

    with pytest.raises(DemonstrationsError):
        write_dir_whole(out, fails)
    assert [p.name for p in out.iterdir()] == ["old.txt"] and not (tmp_path / "sft.partial").exists()

    def writes(partial):
        partial.mkdir()
        (partial / "config.json").write_text("{}")
        return {"ok": 1}

    assert write_dir_whole(out, writes) == {"ok": 1}
    assert [p.name for p in out.iterdir()] == ["config.json"]


@pytest.mark.parametrize(
    "section, expected",
    [
        ({"demonstrations": "demos.jsonl"}, "bootstrap_policy.demonstrations: only with source 'pretrained'"),
        (
            {"source": "pretrained", "model": "m", "sft": {"lora_rank": -1}},
            "bootstrap_policy.sft.lora_rank: Input should be greater than or equal to 0",
        ),
        (
            {"source": "pretrained", "model": "m", "sft": {"eval_fraction": 1.0}},
            "bootstrap_policy.sft.eval_fraction: Input should be less than 1",
        ),
    ],
)
def test_bad_bootstrap_params_name_the_key(project_root, section, expected):
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    raw["bootstrap_policy"].update(section)
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert str(caught.value).startswith(f"params.yaml: {expected}")
