"""DPO against an oracle: on the same weights and the same pairs, the sigmoid DPO loss computed from
our own sequence log-probs (rlhf.logprobs, the functions PPO and evaluation use, over our own
prompt and completion ids from rlhf.policy_optimization.dpo.dpo_pairs) equals TRL DPOTrainer's
loss on the batch its dataloader collates, and so do the gradients w.r.t. every policy parameter.

    loss = -mean log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

Ours left-pads the prompt and right-pads the completion (as a rollout is laid out) with position
ids from the mask; TRL right-pads prompt + completion together. With the positions the same, the
two are the same computation up to float rounding, which is all the tolerance allows for.
"""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rlhf import chat
from rlhf.config import DPOParams
from rlhf.judges.llm import left_padded
from rlhf.logprobs import response_logits, token_logprobs
from rlhf.policy_optimization.dpo import dpo_trainer
from tests.support.chat_families import conversation_for, policy_for, tokenizer_for

BETA = 0.3


def comparisons(name: str) -> pd.DataFrame:
    """Two pairs of unequal lengths (so both sides pad), on one multi-turn conversation and one single turn."""
    single = [{"role": "user", "content": "tell me about owls . answer :"}]
    rows = [
        (conversation_for(name), "cats purr and sleep a lot .", "no ."),
        (single, "sure .", "owls hoot at night and sleep in the day ."),
    ]
    return pd.DataFrame(
        [
            {
                "prompt_messages": chat.to_json(c),
                "chosen": w,
                "rejected": lose,
                "tie": False,
                "split": "train",
                "chosen_messages": chat.to_json(chat.assistant_turns(w)),
                "rejected_messages": chat.to_json(chat.assistant_turns(lose)),
            }
            for c, w, lose in rows
        ]
    )


def sequence_logprobs(model, pad_id: int, prompts: list[list[int]], completions: list[list[int]]) -> torch.Tensor:
    """sum_t log model(y_t | x, y_<t) of each completion after its prompt, via rlhf.logprobs.  (B,)"""
    query = left_padded(prompts, pad_id, torch.device("cpu"))
    width = max(len(c) for c in completions)
    response_ids = torch.tensor([c + [pad_id] * (width - len(c)) for c in completions])
    mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in completions])
    logits = response_logits(model, query["input_ids"], query["attention_mask"], response_ids, mask, 1.0)
    return (token_logprobs(logits, response_ids) * mask).sum(-1)


def our_loss(policy, reference, pad_id: int, pairs: pd.DataFrame) -> torch.Tensor:
    prompts, chosen, rejected = list(pairs["prompt_ids"]), list(pairs["chosen_ids"]), list(pairs["rejected_ids"])
    with torch.no_grad():
        ref_chosen = sequence_logprobs(reference, pad_id, prompts, chosen)
        ref_rejected = sequence_logprobs(reference, pad_id, prompts, rejected)
    margin = (sequence_logprobs(policy, pad_id, prompts, chosen) - ref_chosen) - (
        sequence_logprobs(policy, pad_id, prompts, rejected) - ref_rejected
    )
    return -F.logsigmoid(BETA * margin).mean()


@pytest.mark.parametrize("name", ["llama3", "chatml_eos_im_end"])
def test_our_dpo_loss_and_gradients_equal_trls(name):
    tokenizer = tokenizer_for(name)
    policy, reference = policy_for(name, seed=0), policy_for(name, seed=1)  # other weights: the ratios are not 0
    params = DPOParams(beta=BETA, epochs=1, batch_size=2, learning_rate=1e-4, max_length=256, log_every=1)
    trainer, pairs, _ = dpo_trainer(policy, reference, tokenizer, comparisons(name), params, seed=0)
    batch = next(iter(trainer.get_train_dataloader()))  # TRL's collated batch: [chosen..., rejected...]
    assert len(batch["input_ids"]) == 4
    policy.train()  # as in training (dropout is 0 in these configs, so train and eval agree)

    policy.zero_grad()
    theirs = trainer.compute_loss(policy, batch)
    theirs.backward()
    their_grads = {n: p.grad.clone() for n, p in policy.named_parameters()}

    policy.zero_grad()
    ours = our_loss(policy, reference, tokenizer.pad_token_id, pairs)
    ours.backward()

    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
    assert ours.item() != pytest.approx(0.6931, abs=1e-3)  # not log 2: the margin is not 0
    for n, p in policy.named_parameters():
        torch.testing.assert_close(p.grad, their_grads[n], rtol=1e-4, atol=1e-6, msg=n)
