"""Fixtures shared by the whole suite; helpers shared by several modules live in tests/support/.
Imports of torch and the library stay inside the fixtures: a test that needs none loads none."""

import os
import sys
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's real server, started once for the session (about 8 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where CUDA is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """The demo's byte-level BPE, trained in a second on a small corpus."""
    from rlhf.demo import domain
    from rlhf.demo.tokenizer import train_tokenizer

    return train_tokenizer(domain.corpus(seed=0, size=300), vocab_size=400)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_tokenizer):
    """Saved random tiny models, as the bootstrap and reward stages would leave them: (policy dir, reward dir)."""
    import torch
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    from tests.support.tiny import tiny_gpt2_config

    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer)).save_pretrained(root / "policy")
    GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1)).save_pretrained(root / "reward")
    for name in ("policy", "reward"):
        tiny_tokenizer.save_pretrained(root / name)
    return root / "policy", root / "reward"


@pytest.fixture
def stage_workspace(tmp_path, tiny_checkpoints, project_root):
    """Inputs of train_policy as dvc.yaml passes them, and a function that runs the stage on them."""
    import pandas as pd

    from tests.support.tiny import HELD_OUT, PROMPTS, TOPICS

    policy_dir, reward_dir = tiny_checkpoints
    pd.DataFrame(
        {
            "prompt": PROMPTS + [prompt for prompt, _ in HELD_OUT],
            "topic": TOPICS + [topic for _, topic in HELD_OUT],
            "split": ["train"] * len(PROMPTS) + ["test"] * len(HELD_OUT),
        }
    ).to_parquet(tmp_path / "prompts.parquet")
    base = yaml.safe_load((project_root / "params.yaml").read_text())

    def command(**train_policy):
        params = {**base, "train_policy": {**base["train_policy"], **train_policy}}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        return [
            sys.executable,
            "-m",
            "rlhf.stages.train_policy",
            "--params",
            str(tmp_path / "params.yaml"),
            "--prompts",
            str(tmp_path / "prompts.parquet"),
            "--policy_dir",
            str(policy_dir),
            "--reference_dir",
            str(policy_dir),
            "--reward_dir",
            str(reward_dir),
            "--model_dir",
            str(tmp_path / "policy"),
            # PPO reads neither the comparisons (DPO does) nor a cost model (PPO-Lagrangian does)
            "--comparisons",
            str(tmp_path / "unused"),
            "--cost_dir",
            str(tmp_path / "unused"),
            "--metrics",
            str(tmp_path / "policy.json"),
            "--curve",
            str(tmp_path / "policy.csv"),
            "--curve_png",
            str(tmp_path / "policy.png"),
            "--gold_png",
            str(tmp_path / "gold.png"),
            "--checkpoint_dir",
            str(tmp_path / "ckpt"),
            "--live_dir",
            str(tmp_path / "dvclive"),
        ]

    return tmp_path, command


@pytest.fixture
def one_thread():
    """The tiny model gains nothing from a second thread, and on a shared 2-core machine two threads
    per process contend: a run of a few seconds alone took 90 s under load."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
