"""KTO (rlhf/policy_optimization/kto.py): the weights for unbalanced labels, the labels a ranking's
pairs give, bad settings refused by key, binary labels from a real store's snapshot, and a tiny real
KTOTrainer run that raises the policy's share of probability on the desirable response, on prompts
it never trained on."""

import pandas as pd
import pytest
import torch
from transformers import GPT2LMHeadModel

from rlhf import chat
from rlhf.config import KTOParams, parse_params
from rlhf.errors import ConfigError, InputError
from rlhf.policy_optimization.kto import (
    BINARY_LABELS,
    kto_examples,
    kto_weights,
    labelled_responses,
    train_kto,
    unpaired_from_comparisons,
)
from rlhf.store import FeedbackStore
from tests.support.tiny import HELD_OUT, PROMPTS, tiny_gpt2_config

# The known rule: a response is desirable when it starts gladly. One desirable and two undesirable
# responses per prompt, so the labels are unbalanced 1:2; the demo's words, each response 10 tokens
# long, so that a policy without a preference gives each the same probability.
DESIRABLE = ["glad you asked ."]
UNDESIRABLE = ["well . dunno .", "some say it is simple ."]


def is_desirable(response: str) -> bool:
    return response.strip().startswith("glad")


def test_auto_weights_balance_unbalanced_labels_as_the_kto_paper_recommends():
    auto = KTOParams()
    # 1 desirable to 3 undesirable: lambda_D n_D / (lambda_U n_U) in [1, 4/3] (eq. 8); ours is 1.
    desirable, undesirable = kto_weights(auto, n_desirable=100, n_undesirable=300)
    assert (desirable, undesirable) == (3.0, 1.0)
    assert 1 <= desirable * 100 / (undesirable * 300) <= 4 / 3
    # The other way round: the rarer undesirable side rises.
    assert kto_weights(auto, n_desirable=400, n_undesirable=100) == (1.0, 4.0)
    assert kto_weights(auto, n_desirable=50, n_undesirable=50) == (1.0, 1.0)
    # One number given: the auto one is solved for the ratio 1; both given: used as they are.
    assert kto_weights(KTOParams(undesirable_weight=2.0), 100, 300) == (6.0, 2.0)
    assert kto_weights(KTOParams(desirable_weight=1.5), 300, 100) == (1.5, 4.5)
    assert kto_weights(KTOParams(desirable_weight=1.33, undesirable_weight=1.0), 1, 9) == (1.33, 1.0)
    assert kto_weights(auto, n_desirable=0, n_undesirable=7) == (1.0, 1.0)  # nothing to balance


@pytest.mark.parametrize(
    "settings, expected",
    [
        ({"desirable_weight": -1}, "train_policy.kto.desirable_weight: must be a number > 0 or auto (got -1)"),
        ({"undesirable_weight": "heavy"}, "train_policy.kto.undesirable_weight: must be a number > 0 or auto"),
        ({"desirable_weight": 0}, "train_policy.kto.desirable_weight: must be a number > 0 or auto"),
        ({"batch_size": 1}, "train_policy.kto.batch_size: Input should be greater than or equal to 2"),
        ({"beta": 0}, "train_policy.kto.beta: Input should be greater than 0"),
        ({"labels": "thumbs"}, "train_policy.kto.labels: Input should be 'comparisons' or 'binary'"),
    ],
)
def test_bad_kto_settings_are_refused_naming_the_key(settings, expected):
    with pytest.raises(ConfigError) as caught:
        parse_params({"train_policy": {"algorithm": "kto", "kto": settings}})
    assert expected in str(caught.value)


def test_kto_refuses_what_only_online_algorithms_have():
    with pytest.raises(ConfigError, match="train_policy.keep: best needs the in-loop evaluation"):
        parse_params({"train_policy": {"algorithm": "kto", "keep": "best"}})
    with pytest.raises(ConfigError, match="train_policy.reward: kto learns from the comparisons snapshot"):
        parse_params({"train_policy": {"algorithm": "kto", "reward": [{"source": "rules"}]}})


def pair(prompt: str, chosen: tuple[str, str], rejected: tuple[str, str], tie: bool = False, split="train") -> dict:
    """One comparisons-snapshot row; chosen and rejected are (response id, text)."""
    return {
        "prompt": prompt,
        "prompt_messages": chat.to_json(chat.as_conversation(prompt)),
        "chosen_id": chosen[0],
        "rejected_id": rejected[0],
        "chosen": chosen[1],
        "rejected": rejected[1],
        "chosen_messages": chat.to_json(chat.assistant_turns(chosen[1])),
        "rejected_messages": chat.to_json(chat.assistant_turns(rejected[1])),
        "tie": tie,
        "split": split,
    }


def test_a_rankings_pairs_label_each_response_once_by_its_wins_and_losses():
    a, b, c, d = ("a", "best ."), ("b", "good ."), ("c", "poor ."), ("d", "same as c .")
    # One 3-way ranking a > b > c (its three pairs), and a tie c = d that carries no preference.
    comparisons = pd.DataFrame([pair("q", a, b), pair("q", a, c), pair("q", b, c), pair("q", c, d, tie=True)])
    unpaired = unpaired_from_comparisons(comparisons)
    labels = dict(zip(unpaired["completion"], unpaired["label"]))
    # a wins both pairs: desirable; c loses both: undesirable; b wins one, loses one: left out.
    assert labels == {"best .": True, "poor .": False}
    assert list(unpaired["split"]) == ["train", "train"]
    assert chat.from_json(unpaired["completion_messages"][0]) == chat.assistant_turns("best .")


def test_binary_labels_from_a_real_store_snapshot_are_kto_examples_as_they_are(tmp_path, tiny_tokenizer):
    params = parse_params({"train_policy": {"algorithm": "kto", "kto": {"labels": "binary"}}})
    with pytest.raises(InputError, match=r"comparisons/binary_labels.parquet: no binary labels snapshot"):
        labelled_responses(params, tmp_path / "comparisons")
    rows = [
        {"prompt": p, "response": r, "desirable": is_desirable(r), "annotator": "rater", "split": "train"}
        for p in PROMPTS[:3]
        for r in DESIRABLE + UNDESIRABLE
    ]
    store = FeedbackStore(tmp_path / "feedback.duckdb")
    store.add_binary_labels(pd.DataFrame(rows), "import:rule", "import-rule")
    store.snapshot_binary_labels(tmp_path / "comparisons" / BINARY_LABELS)
    unpaired = labelled_responses(params, tmp_path / "comparisons")
    examples = kto_examples(unpaired, tiny_tokenizer)
    assert sorted(examples["label"]) == [False] * 6 + [True] * 3
    # The same ids the policy would read and sample for the same texts given directly.
    direct = kto_examples(labelled(PROMPTS[:3], "train"), tiny_tokenizer)
    assert ids_and_labels(examples) == ids_and_labels(direct)


def ids_and_labels(examples: pd.DataFrame) -> list[tuple]:
    return sorted(zip(examples["prompt_ids"].map(tuple), examples["completion_ids"].map(tuple), examples["label"]))


def labelled(prompts: list[str], split: str) -> pd.DataFrame:
    rows = [
        {"prompt": p, "completion": r, "label": is_desirable(r), "split": split}
        for p in prompts
        for r in DESIRABLE + UNDESIRABLE
    ]
    return pd.DataFrame(rows)


def sequence_logprobs(model, examples: pd.DataFrame) -> torch.Tensor:
    """sum log model(completion | prompt) of each example.  (N,)"""
    values = []
    with torch.no_grad():
        for prompt, completion in zip(examples["prompt_ids"], examples["completion_ids"]):
            ids = torch.tensor([prompt + completion])
            logp = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
            values.append(logp[len(prompt) - 1 :].gather(-1, ids[0, len(prompt) :, None]).sum())
    return torch.stack(values)


def desirable_share(model, examples: pd.DataFrame, per_prompt: int) -> float:
    """The policy's probability of the desirable response among each prompt's candidates, renormalised
    over them, averaged over the prompts: 1 / per_prompt for a policy without a preference."""
    logprobs = sequence_logprobs(model, examples).view(-1, per_prompt)  # (prompts, candidates)
    desirable = torch.tensor(list(examples["label"])).view(-1, per_prompt)
    return (torch.softmax(logprobs, dim=-1) * desirable).sum(-1).mean().item()


def test_a_tiny_kto_run_raises_the_desirable_share_on_held_out_prompts(tiny_tokenizer):
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer))
    reference = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer))
    reference.load_state_dict(policy.state_dict())
    held_out_prompts = [prompt for prompt, _ in HELD_OUT]
    unpaired = pd.concat([labelled(PROMPTS[:24], "train"), labelled(held_out_prompts, "test")], ignore_index=True)
    held_out = kto_examples(unpaired[unpaired["split"] == "test"], tiny_tokenizer)
    assert held_out["completion_ids"].map(len).nunique() == 1  # the candidates are equally long
    candidates = len(DESIRABLE + UNDESIRABLE)
    share_before = desirable_share(policy, held_out, candidates)
    logprobs_before = sequence_logprobs(policy, held_out)

    params = KTOParams(beta=0.1, epochs=3, batch_size=8, learning_rate=5e-3, max_length=64, log_every=2)
    result = train_kto(policy, reference, tiny_tokenizer, unpaired, params, seed=0)

    # The unbalanced 1:2 labels were weighed 2:1.
    metrics = result.metrics
    assert (metrics["train_desirable"], metrics["train_undesirable"]) == (24, 48)
    assert (metrics["desirable_weight"], metrics["undesirable_weight"]) == (2.0, 1.0)
    # On prompts it never trained on, the desirable response gained log-probability and the
    # undesirable ones lost it, so the policy's share of the desirable one among the candidates rose.
    gained = sequence_logprobs(policy, held_out) - logprobs_before
    labels = torch.tensor(list(held_out["label"]))
    assert gained[labels].min() > 5.0 and gained[~labels].max() < 0.0
    share_after = desirable_share(policy, held_out, candidates)
    assert share_before < 0.5 and share_after > 0.9, (share_before, share_after)
    assert metrics["held_out_margin_after"] > metrics["held_out_margin_before"] + 1.0
    # The curve has TRL's logged figures under our names.
    assert result.history and {"loss", "kl", "reward_margin"} <= set(result.history[-1])
