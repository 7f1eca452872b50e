"""params.yaml validation: a bad value stops with one line naming the key."""

import copy
import subprocess
import sys

import pytest
import yaml

from rlhf.config import load_params, parse_params
from rlhf.errors import ConfigError


@pytest.fixture()
def raw(project_root):
    return yaml.safe_load((project_root / "params.yaml").read_text())


def test_shipped_params_are_valid(project_root):
    params = load_params(project_root / "params.yaml")
    assert params.sample_responses.k >= 2 and params.rank_responses.principles


def test_the_shipped_params_are_the_schema_written_out(project_root):
    """One set of defaults: params.yaml is what `python -m rlhf.params_file` writes from rlhf/config.py."""
    from rlhf.params_file import render

    assert (project_root / "params.yaml").read_text() == render(), "run python -m rlhf.params_file"


def test_the_written_params_read_back_as_the_schema_defaults_with_the_keys_dvc_names(project_root):
    """Every default comes back from the text, and a key marked SHOWN_WHEN_SET is left out at its
    default but written once it is set (dvc.yaml reads the whole rank_responses section)."""
    from rlhf.config import Params, RankResponsesParams
    from rlhf.params_file import render

    written = yaml.safe_load(render())
    assert parse_params(written) == Params()
    assert "ai_judge" not in written["rank_responses"] and "round" not in written
    assert written["evaluate"]["llm"] is None  # dvc.yaml names evaluate.llm: written even when null
    hybrid = Params(rank_responses=RankResponsesParams(judge="hybrid", ai_judge="rules"))
    assert yaml.safe_load(render(hybrid))["rank_responses"]["ai_judge"] == "rules"


def test_the_params_file_command_checks_and_writes(tmp_path, project_root):
    from rlhf.params_file import main, render

    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\n")
    assert main(["--check", str(path)]) == 1 and path.read_text() == "seed: 0\n"
    assert main([str(path)]) == 0 and path.read_text() == render()
    assert main(["--check", str(path)]) == 0


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        (
            "train_policy",
            "kl_coef",
            -1,
            "params.yaml: train_policy.kl_coef: Input should be greater than or equal to 0",
        ),
        ("train_policy", "klcoef", 0.1, "params.yaml: train_policy.klcoef: Extra inputs are not permitted"),
        ("sample_responses", "k", "four", "params.yaml: sample_responses.k: Input should be a valid integer"),
        ("train_reward", "batch_size", True, "params.yaml: train_reward.batch_size: should be a number, not true"),
        ("train_reward", "ensemble", False, "params.yaml: train_reward.ensemble: should be a number, not false"),
        ("train_reward", "epochs", float("inf"), "params.yaml: train_reward.epochs: Input should be a finite number"),
        ("train_policy", "kl_coef", float("nan"), "params.yaml: train_policy.kl_coef: Input should be a finite number"),
        ("", "seed", -1, "params.yaml: seed: Input should be greater than or equal to 0"),
        (
            "train_policy",
            "minibatch_size",
            7,
            "params.yaml: train_policy.minibatch_size: must divide batch_size / num_processes",
        ),
    ],
)
def test_bad_value_names_the_key(raw, section, key, value, expected):
    bad = copy.deepcopy(raw)
    (bad[section] if section else bad)[key] = value
    with pytest.raises(ConfigError) as caught:
        parse_params(bad)
    message = str(caught.value)
    assert message.startswith(expected) and "\n" not in message


def test_a_boolean_is_still_a_boolean_and_a_number_may_be_null(raw):
    good = copy.deepcopy(raw)
    good["train_reward"].update(train=False, backbone="models/reward")  # a bool field
    good["train_policy"]["micro_batch_size"] = None  # an int | None field
    parsed = parse_params(good)
    assert parsed.train_reward.train is False and parsed.train_policy.micro_batch_size is None
    good["train_policy"]["micro_batch_size"] = True
    with pytest.raises(ConfigError, match="train_policy.micro_batch_size: should be a number, not true"):
        parse_params(good)


def test_a_key_written_twice_names_its_line(tmp_path, project_root):
    """yaml.safe_load keeps the last of two equal keys: a second section would drop the first's settings."""
    path = tmp_path / "params.yaml"
    text = (project_root / "params.yaml").read_text()
    path.write_text(text + "train_reward:\n  epochs: 2.0\n")
    line = len(text.splitlines()) + 1
    with pytest.raises(
        ConfigError, match=rf"params.yaml: line {line} not valid YAML \(column 1: 'train_reward' is set twice\)"
    ):
        load_params(path)
    path.write_text("seed: 0\nseed: 1\n")
    with pytest.raises(ConfigError, match="line 2 not valid YAML .*'seed' is set twice"):
        load_params(path)


def test_compiled_generation_is_refused_under_zero3_naming_both_keys(raw):
    bad = copy.deepcopy(raw)
    bad["train_policy"].update(compile_generation=True, launcher="deepspeed_zero3", num_processes=2)
    with pytest.raises(ConfigError, match=r"^params.yaml: train_policy.compile_generation: .*deepspeed_zero3"):
        parse_params(bad)


def test_keep_best_is_refused_under_a_sharded_launcher(raw):
    bad = copy.deepcopy(raw)
    bad["train_policy"].update(keep="best", launcher="fsdp", num_processes=2)
    with pytest.raises(ConfigError) as caught:
        parse_params(bad)
    assert str(caught.value) == "params.yaml: train_policy.keep: best is not supported under fsdp (sharded weights)"


@pytest.mark.parametrize(
    "changes, expected",
    [
        ({"num_processes": 2}, "train_reward.num_processes: needs a multi-process launcher"),
        ({"launcher": "ddp", "num_processes": 3}, "train_reward.batch_size: must be a multiple of num_processes"),
        ({"launcher": "fsdp", "num_processes": 2, "batching": "kwise"}, "train_reward.batching: kwise trains in one"),
        ({"launcher": "ddp", "num_processes": 2, "lora_rank": 8}, "train_reward.lora_rank: LoRA trains in one"),
        ({"launcher": "ddp", "num_processes": 2, "ensemble": 3}, "train_reward.ensemble: members train one after"),
    ],
)
def test_reward_training_over_processes_refuses_what_it_cannot_share(raw, changes, expected):
    bad = copy.deepcopy(raw)
    bad["train_reward"].update(changes)
    with pytest.raises(ConfigError, match=rf"^params.yaml: {expected}"):
        parse_params(bad)


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ntrain_policy:\n  kl_coef: [1,\n")
    with pytest.raises(ConfigError, match=r"params.yaml: line \d+ not valid YAML"):
        load_params(path)


def test_stage_exits_2_with_one_line_and_writes_nothing(raw, tmp_path, project_root):
    bad = copy.deepcopy(raw)
    bad["collect_prompts"]["test_fraction"] = 1.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    out = tmp_path / "prompts.parquet"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.stages.collect_prompts",
            "--params",
            str(tmp_path / "params.yaml"),
            "--prompts",
            str(out),
        ],
        cwd=project_root,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"collect_prompts: error: {tmp_path / 'params.yaml'}: collect_prompts.test_fraction: "
        "Input should be less than 1 (got 1.5)"
    ]
    assert not out.exists()


def test_the_real_model_recipe_is_a_valid_params_file(project_root):
    """configs/real-model/params.yaml (README: "Your model, your data") must not drift from the schema."""
    from rlhf.config import load_params

    params = load_params(project_root / "configs" / "real-model" / "params.yaml")
    assert params.bootstrap_policy.source == "pretrained" and params.bootstrap_policy.demonstrations
    assert params.train_reward.backbone and params.rank_responses.judge == "openai"
