"""TRL 1.16 as an oracle: our reward loss, RLOO advantages and GRPO losses against TRL's trainers'
own code, on identical inputs (the same weights, the same batch, the log-probs from TRL's own
`_get_per_token_logps_and_entropies`). Where TRL's defaults compute something else, the test
switches it off and says why; where the difference is the point, a test pins it.

Reward and cost models also train as TRL's RewardTrainer does in one more respect: dropout off.
"""

import pytest
import torch
from datasets import Dataset
from transformers import GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf.policy_optimization import core, estimators
from rlhf.reward_models.kwise import Ranking, RankingCollator, ranking_loss, train_on_rankings
from rlhf.scoring import encode
from tests.support.tiny import tiny_gpt2_config

TRAINER = {"report_to": [], "use_cpu": True, "bf16": False, "save_strategy": "no"}
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
PROMPT = "tell me about owls . answer :"


# --- Reward models -------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [None, [0.0, 1.0, 2.5]])
def test_pairwise_reward_loss_is_reward_trainers(tiny_tokenizer, tmp_path, margin):
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1, **NO_DROPOUT)).eval()
    eos = tiny_tokenizer.eos_token
    pairs = [
        (f"{PROMPT} glad you asked . owls hunt at night .{eos}", f"{PROMPT} no .{eos}"),
        (f"{PROMPT} sure . owls are birds .{eos}", f"{PROMPT} owls owls owls owls owls .{eos}"),
        (f"{PROMPT} owls fly .{eos}", f"{PROMPT} i do not know about owls at all .{eos}"),
    ]
    margins = None if margin is None else torch.tensor(margin)
    # ours: each pair a ranking of two (kwise.as_pairs' layout), rlhf.scoring's ids
    batch = RankingCollator(tiny_tokenizer, max_length=64)([Ranking(pair, ((0, 1),)) for pair in pairs])
    with torch.no_grad():
        rewards = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, 0]
    ours = ranking_loss(rewards, batch, margins)
    # TRL's: its collator over the same ids, its compute_loss
    rows = [
        {
            "chosen_ids": encode(tiny_tokenizer, [c])[0],
            "rejected_ids": encode(tiny_tokenizer, [r])[0],
            **({} if margin is None else {"margin": m}),
        }
        for (c, r), m in zip(pairs, margin or [None] * len(pairs))
    ]
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(output_dir=str(tmp_path), max_length=None, **TRAINER),
        train_dataset=Dataset.from_list(rows),
        processing_class=tiny_tokenizer,
    )
    with torch.no_grad():
        theirs = trainer.compute_loss(model, trainer.data_collator(rows))
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    if margin is not None:  # and the margin moved both: it is not the plain loss
        assert ours.item() != pytest.approx(ranking_loss(rewards, batch).item(), abs=1e-3)


def dropout_watch(model: torch.nn.Module) -> list[float]:
    """Record, for every forward pass in training mode, how far its output is from the same
    forward in eval mode (0 when dropout is off)."""
    gaps, busy = [], []

    def hook(module, args, kwargs, output):
        if not module.training or busy:
            return
        busy.append(True)
        module.eval()
        with torch.no_grad():
            again = module(*args, **kwargs).logits
        module.train()
        busy.clear()
        gaps.append((output.logits.detach() - again).abs().max().item())

    model.register_forward_hook(hook, with_kwargs=True)
    return gaps


def dropout_heavy_classifier(tokenizer) -> GPT2ForSequenceClassification:
    torch.manual_seed(0)
    return GPT2ForSequenceClassification(
        tiny_gpt2_config(tokenizer, num_labels=1, resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    )


def test_kwise_and_cost_training_turn_dropout_off_as_the_pairwise_path_does(tiny_tokenizer, tmp_path, monkeypatch):
    """Huang et al. 2024, detail 1; the pairwise path is TRL's RewardTrainer, whose disable_dropout is on."""
    import pandas as pd
    from trl import RewardConfig

    from rlhf.config import TrainCostParams
    from rlhf.reward_models import cost

    assert RewardConfig(output_dir=str(tmp_path / "rm"), use_cpu=True, bf16=False).disable_dropout
    eos = tiny_tokenizer.eos_token
    rankings = [
        Ranking((f"{PROMPT} owls hunt .{eos}", f"{PROMPT} no .{eos}", f"{PROMPT} birds .{eos}"), ((0, 1), (0, 2))),
        Ranking((f"{PROMPT} sure .{eos}", f"{PROMPT} what .{eos}"), ((0, 1),)),
    ]
    model = dropout_heavy_classifier(tiny_tokenizer)
    gaps = dropout_watch(model)
    train_on_rankings(
        model, tiny_tokenizer, rankings, epochs=2, batch_size=1, learning_rate=1e-3, max_length=32, seed=0
    )
    assert len(gaps) == 4 and max(gaps) < 1e-6, gaps

    model = dropout_heavy_classifier(tiny_tokenizer)
    gaps = dropout_watch(model)
    monkeypatch.setattr(cost, "load_scalar_head_model", lambda *args: model)
    tiny_tokenizer.save_pretrained(tmp_path / "init")
    labels = pd.DataFrame(
        [
            {"response_id": str(i), "prompt": PROMPT, "split": "train", "response": text, "unsafe": flag}
            for i, (text, flag) in enumerate([("set fire to owls .", True), ("owls hunt .", False)] * 2)
        ]
    )
    cost.train_cost_model(
        labels,
        tmp_path / "init",
        TrainCostParams(epochs=1, batch_size=2, learning_rate=1e-3),
        0,
        torch.device("cpu"),
        tmp_path / "cost",
    )
    assert len(gaps) == 2 and max(gaps) < 1e-6, gaps


# --- Critic-free policy optimisation --------------------------------------------------------------


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tiny_tokenizer):
    """A saved tiny policy: TRL's RLOO and GRPO trainers load the policy and its reference from a path."""
    directory = tmp_path_factory.mktemp("policy")
    torch.manual_seed(0)
    GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer, **NO_DROPOUT)).save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


def move_off_the_reference(model: torch.nn.Module) -> None:
    """The policy a few steps into training: its log-probs differ from the reference's."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


def completions(tokenizer, count: int) -> list[list[int]]:
    """Responses of different lengths, some ending with EOS, some cut at the budget."""
    texts = ["owls hunt at night .", "no", "sure . owls are birds that fly", "owls", "i do not know .", "birds"]
    ids = [tokenizer(" " + texts[i % len(texts)], add_special_tokens=False)["input_ids"][:6] for i in range(count)]
    return [row + [tokenizer.eos_token_id] if i % 2 == 0 and len(row) < 6 else row for i, row in enumerate(ids)]


def test_rloo_advantages_are_rloo_trainers(tiny_tokenizer, policy_dir, tmp_path):
    """TRL computes RLOO's advantages inside `_generate_and_score_completions`; the test calls that
    method with generation replaced by fixed completions and a python reward returning fixed scores.

    Defaults that would differ, and why they do not here: `normalize_advantages` (False: RLOO's
    paper does not whiten; we do not); unscorable (NaN) rewards, which TRL leaves out of the
    baseline (our rewards are never NaN); the gather across processes (one process)."""
    from trl import RLOOConfig, RLOOTrainer

    group, scores = 3, [1.0, 0.0, 0.5, 2.0, -1.0, 0.25]  # two prompts' groups, prompt-major
    dataset = Dataset.from_list([{"prompt": PROMPT, "score": s} for s in scores])
    args = RLOOConfig(
        output_dir=str(tmp_path),
        num_generations=group,
        per_device_train_batch_size=len(scores),
        per_device_eval_batch_size=len(scores),
        beta=0.05,
        max_completion_length=6,
        normalize_advantages=False,
        disable_dropout=True,
        **TRAINER,
    )
    trainer = RLOOTrainer(
        model=str(policy_dir),
        reward_funcs=lambda prompts, completions, score, **_: list(score),
        args=args,
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
    )
    move_off_the_reference(trainer.model)
    prompt_ids = [tiny_tokenizer(PROMPT)["input_ids"]] * len(scores)
    completion_ids = completions(tiny_tokenizer, len(scores))
    texts = tiny_tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    trainer._generate = lambda prompts: (prompt_ids, completion_ids, texts)
    out = trainer._generate_and_score_completions(list(dataset))

    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
    # a float mask, as our rollout's (estimators.per_token casts the advantages to the mask's dtype)
    mask, width = out["completion_mask"].float(), out["completion_ids"].shape[1]
    with torch.no_grad():
        logprobs = trainer._get_per_token_logps_and_entropies(trainer.model, ids, attention, width)[0]
        ref_logprobs = trainer._get_per_token_logps_and_entropies(trainer.ref_model, ids, attention, width)[0]
    assert ((logprobs - ref_logprobs) * mask).abs().sum() > 0.1  # the KL penalty is in play
    penalised = estimators.kl_penalised_scores(torch.tensor(scores), logprobs, ref_logprobs, mask, args.beta)
    ours = estimators.rloo_advantages(penalised, mask, group)  # (B, T)
    torch.testing.assert_close(ours, out["advantages"][:, None] * mask, atol=1e-6, rtol=1e-6)


@pytest.fixture(scope="module")
def grpo_trainer(tiny_tokenizer, policy_dir, tmp_path_factory):
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("grpo")),
        num_generations=2,
        per_device_train_batch_size=4,
        beta=0.04,
        epsilon=0.2,
        epsilon_high=0.28,
        max_completion_length=8,
        disable_dropout=True,
        **TRAINER,
    )
    trainer = GRPOTrainer(
        model=str(policy_dir),
        reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_list([{"prompt": PROMPT}] * 4),
        processing_class=tiny_tokenizer,
    )
    trainer.model.eval()  # eval mode: TRL then divides by no gradient-accumulation count (ours reduces the whole batch)
    return trainer


def grpo_batch(trainer, tokenizer) -> dict:
    """A rollout as GRPOTrainer hands it to its loss: prompt and completion ids and masks, group
    advantages, and the log-probs of the sampling policy (off by up to ~0.3 nats, so some ratios
    clip at 1 - 0.2 and some at 1 + 0.28) and of the reference."""
    from trl.trainer.utils import pad

    prompts = [torch.tensor(tokenizer(p)["input_ids"]) for p in [PROMPT, PROMPT, "tell me about bees . answer :"] * 2]
    rows = [torch.tensor(row) for row in completions(tokenizer, len(prompts))]
    batch = {
        "prompt_ids": pad(prompts, padding_value=tokenizer.pad_token_id, padding_side="left"),
        "prompt_mask": pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left"),
        "completion_ids": pad(rows, padding_value=tokenizer.pad_token_id, padding_side="right"),
        "completion_mask": pad([torch.ones_like(r) for r in rows], padding_value=0, padding_side="right"),
        "advantages": torch.tensor([0.7, -0.7, 1.2, -1.2, 0.0, 0.4]),
    }
    logprobs = policy_logprobs(trainer, batch).detach()
    generator = torch.Generator().manual_seed(2)
    batch["old_per_token_logps"] = logprobs + 0.3 * torch.randn(logprobs.shape, generator=generator)
    batch["ref_per_token_logps"] = logprobs + 0.3 * torch.randn(logprobs.shape, generator=generator)
    batch["num_items_in_batch"] = batch["completion_mask"].sum()  # "dapo": the whole batch's tokens
    return batch


def policy_logprobs(trainer, batch: dict) -> torch.Tensor:
    """log pi(a_t|s_t) of the completions by TRL's own function (with the graph).  (B, T)"""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    width = batch["completion_ids"].shape[1]
    return trainer._get_per_token_logps_and_entropies(trainer.model, ids, attention, width)[0]


def our_grpo_loss(trainer, batch: dict, mode: str, old_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """estimators' GRPO loss: the clipped surrogate aggregated, plus beta times k3 aggregated alike."""
    logprobs, mask = policy_logprobs(trainer, batch), batch["completion_mask"].float()  # as our rollout's
    old = batch["old_per_token_logps"] if old_logprobs is None else old_logprobs
    advantages = estimators.per_token(batch["advantages"], mask)
    budget = trainer.args.max_completion_length
    surrogate, _ = core.clipped_surrogate(logprobs - old, advantages, trainer.args.epsilon, trainer.args.epsilon_high)
    kl = estimators.k3_kl_loss(logprobs, batch["ref_per_token_logps"], mask, mode, budget)
    return estimators.aggregate(surrogate, mask, mode, budget) + trainer.args.beta * kl


def gradients(loss: torch.Tensor, model: torch.nn.Module) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad]))


@pytest.mark.parametrize(
    "loss_type, mode",
    [("grpo", "sequence_mean"), ("bnpo", "token_mean"), ("dapo", "token_mean"), ("dr_grpo", "constant_length")],
)
def test_grpo_loss_under_each_aggregation_is_grpo_trainers(grpo_trainer, tiny_tokenizer, monkeypatch, loss_type, mode):
    """Value and gradient of our loss against GRPOTrainer._compute_loss with that loss_type.

    Where TRL's definitions and ours coincide, and what is switched off to get there:
      - use_bias_correction_kl (TRL's default True) multiplies the k3 term by the importance ratio
        pi/pi_old (DeepSeek-V3.2); ours is GRPO's unweighted k3 (Shao et al. eq. 4). Off here;
        the next test pins the difference.
      - TRL adds beta * KL to each token's loss, then aggregates; we aggregate the surrogate and
        the KL apart and add: the same, as every aggregation is linear.
      - "dapo" divides by `num_items_in_batch`, the generation batch's tokens over processes and
        accumulation steps; on one process, for the whole batch, that is our token_mean. "bnpo"
        divides by this batch's tokens: token_mean too.
      - "grpo" averages over every row, ours over the responses with a token in the loss: the same
        here, where no response is empty.
      - in train mode TRL also divides by the gradient-accumulation steps; the trainer is in eval
        mode, and our functions reduce one whole batch (micro-batching is the trainer's).
      - importance_sampling_level "token" (TRL's default, GSPO's "sequence" is not ours), delta
        (two-sided clipping) None, no vLLM so no truncated IS (vllm_importance_sampling_correction
        acts only with use_vllm), entropy bonus, entropy mask and off-policy mask off (defaults).
    """
    monkeypatch.setattr(grpo_trainer, "loss_type", loss_type)
    monkeypatch.setattr(grpo_trainer.args, "use_bias_correction_kl", False)
    batch = grpo_batch(grpo_trainer, tiny_tokenizer)
    ratio = (policy_logprobs(grpo_trainer, batch) - batch["old_per_token_logps"]).exp()[batch["completion_mask"] == 1]
    assert (ratio < 0.8).any() and (ratio > 1.28).any()  # both clips are exercised
    ours = our_grpo_loss(grpo_trainer, batch, mode)
    theirs = grpo_trainer._compute_loss(grpo_trainer.model, batch)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)
    for mine, trl in zip(gradients(ours, grpo_trainer.model), gradients(theirs, grpo_trainer.model)):
        torch.testing.assert_close(mine, trl, rtol=1e-4, atol=1e-7)


def test_trls_default_kl_correction_changes_the_gradient_even_on_policy(grpo_trainer, tiny_tokenizer, monkeypatch):
    """TRL 1.16's default use_bias_correction_kl=True weights k3 by pi/pi_old. On policy the weight
    is 1 (the loss values agree), but it is differentiated, so the KL gradient is another one: TRL's
    is the unbiased gradient of KL(pi || pi_ref); our k3 loss's is that of KL(pi_ref || pi) (see
    estimators.k3_kl_loss). A named difference, not a bug in either."""
    monkeypatch.setattr(grpo_trainer, "loss_type", "bnpo")
    monkeypatch.setattr(grpo_trainer.args, "use_bias_correction_kl", True)
    batch = grpo_batch(grpo_trainer, tiny_tokenizer)
    del batch["old_per_token_logps"]  # on policy: TRL takes pi_old = pi, detached
    batch["advantages"] = torch.zeros(6)  # the KL term alone
    ours = our_grpo_loss(grpo_trainer, batch, "token_mean", old_logprobs=policy_logprobs(grpo_trainer, batch).detach())
    theirs = grpo_trainer._compute_loss(grpo_trainer.model, batch)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    mine, trl = gradients(ours, grpo_trainer.model), gradients(theirs, grpo_trainer.model)
    assert max((a - b).abs().max().item() for a, b in zip(mine, trl)) > 1e-4
