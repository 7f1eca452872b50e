"""A reward model ensemble: N reward models trained alike but for their seed, scored by their mean.

The members differ in the new head's initialisation and the order they see the pairs in. Their
mean is a lower-variance reward (Coste et al., 2023, "Reward Model Ensembles Help Mitigate
Overoptimization"); PPO, evaluate and the reward-model judge read it as one model.

On disk: member 0 is the directory itself (so anything that loads one reward model, such as
PPO's critic initialisation, still works), members 1..N-1 are `member-<i>/` inside it, and
ENSEMBLE_FILE lists them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput

from rlhf.pretrained import load_scalar_head_model
from rlhf.scoring import exchange_texts, score_texts

ENSEMBLE_FILE = "ensemble.json"


class RewardEnsemble(torch.nn.Module):
    """Called like a sequence-classification model; its logits are the members' mean."""

    def __init__(self, members: list[PreTrainedModel]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, **batch) -> SequenceClassifierOutput:
        return SequenceClassifierOutput(logits=torch.stack([m(**batch).logits for m in self.members]).mean(0))


def save_reward_models(members: list[PreTrainedModel], tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ["."] + [f"member-{i}" for i in range(1, len(members))]
    for member, name in zip(members, names):
        member.save_pretrained(out_dir / name)
        tokenizer.save_pretrained(out_dir / name)
    if len(members) > 1:
        (out_dir / ENSEMBLE_FILE).write_text(json.dumps({"members": names}))


def load_reward_model(directory: str | Path, device: torch.device, pad_token_id: int) -> torch.nn.Module:
    """The reward model in `directory`: one model, or the ensemble its ENSEMBLE_FILE lists."""
    directory = Path(directory)
    if not (directory / ENSEMBLE_FILE).exists():
        return load_scalar_head_model(directory, device, pad_token_id)
    names = json.loads((directory / ENSEMBLE_FILE).read_text())["members"]
    return RewardEnsemble([load_scalar_head_model(directory / name, device, pad_token_id) for name in names])


@torch.no_grad()
def member_scores(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, conversations, responses) -> torch.Tensor:
    """Each member's reward for each (conversation, response), for the members' disagreement
    (rlhf.selection); a single model is one member.  (M, N)"""
    members = list(model.members) if isinstance(model, RewardEnsemble) else [model]
    texts = exchange_texts(tokenizer, conversations, responses)
    return torch.stack([score_texts(member, tokenizer, texts) for member in members])
