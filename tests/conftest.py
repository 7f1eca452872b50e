import os
from pathlib import Path

import pytest

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


def tiny_gpt2_config(tokenizer, **extra):
    from transformers import GPT2Config

    settings = {
        "vocab_size": len(tokenizer),
        "n_positions": 128,
        "n_embd": 32,
        "n_layer": 1,
        "n_head": 2,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    return GPT2Config(**{**settings, **extra})


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory, tiny_tokenizer):
    """Saved random tiny models, as the bootstrap and reward stages would leave them: (policy dir, reward dir)."""
    import torch
    from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer)).save_pretrained(root / "policy")
    GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1)).save_pretrained(root / "reward")
    for name in ("policy", "reward"):
        tiny_tokenizer.save_pretrained(root / name)
    return root / "policy", root / "reward"
