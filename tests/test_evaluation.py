"""Evaluation measures against hand-computed values."""

import math
import re

import pandas as pd
import pytest
import torch
from transformers import GPT2LMHeadModel

from rlhf.demo import domain
from rlhf.evaluation import baseline_accuracies, distinct_n, rouge_l, sequence_kl, win_rate
from rlhf.logprobs import response_logits
from rlhf.sampling import generate
from tests.support.tiny import tiny_gpt2_config


def test_rouge_l_from_longest_common_subsequence():
    # LCS of "a b c d" and "a c d e" is "a c d": P = R = 3/4, F = 3/4.
    assert math.isclose(rouge_l("a b c d", "a c d e"), 0.75)
    assert rouge_l("x y", "a b") == 0.0
    assert rouge_l("Same Words", "same words") == 1.0


def test_distinct_2_exposes_repetition():
    assert distinct_n(["a b c", "a b c"]) == 0.5  # 2 unique bigrams out of 4
    assert distinct_n(["a b c", "d e f"]) == 1.0


def test_win_rate_counts_ties_half():
    assert win_rate([2, 1, 3, 0], [1, 1, 4, 0]) == (1 + 0.5 + 0 + 0.5) / 4


def test_baselines_prefer_overlap_with_prompt_and_length():
    pairs = pd.DataFrame(
        {
            "prompt": ["tell me about owls", "tell me about owls"],
            "chosen": ["owls are wise", "short"],
            "rejected": ["cats sleep a lot every day", "a much longer answer here"],
        }
    )
    assert baseline_accuracies(pairs) == {"rouge_baseline_accuracy": 0.75, "length_baseline_accuracy": 0.0}


def test_sequence_kl_is_exact_per_position_zero_for_the_same_policy_and_positive_when_moved(tiny_tokenizer):
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer)).eval()
    policy = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer)).eval()
    policy.load_state_dict(reference.state_dict())
    prompts = [p for p, _ in domain.all_prompts()[:6]]
    same = generate(policy, tiny_tokenizer, prompts, 8, 1.0)
    assert sequence_kl(policy, reference, same, 1.0).abs().max().item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.5 * torch.randn_like(policy.lm_head.weight))  # ties wte: moves every logit
    moved = generate(policy, tiny_tokenizer, prompts, 8, 1.0)
    args = (moved.query_ids, moved.query_mask, moved.response_ids, moved.response_mask)
    with torch.no_grad():
        p = torch.softmax(response_logits(policy, *args, 1.0), -1)
        q = torch.softmax(response_logits(reference, *args, 1.0), -1)
    # by hand: sum over the vocabulary of p log(p / q), summed over each response's positions
    by_hand = ((p * (p / q).log()).sum(-1) * moved.response_mask).sum(-1).mean().item()
    kl = sequence_kl(policy, reference, moved, 1.0)  # (B,) one KL per response
    assert kl.mean().item() == pytest.approx(by_hand, rel=1e-4) and by_hand > 0.01


def test_evaluation_samples_from_exactly_the_policy_whatever_its_generation_config(tiny_tokenizer):
    """A user's model may ship a repetition penalty (or top-k) in its generation config: `generate`
    applies it, so KL and win rate would be measured under another distribution than the one PPO
    trains. The evaluation sampler draws from softmax(logits / T) only: here the first token's
    draws put the policy's own probability on the prompt's tokens, which the penalty suppresses."""
    from rlhf.sampling import sample_from_policy

    torch.manual_seed(0)
    policy = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer)).eval()
    with torch.no_grad():  # sharpen the random model so the prompt's tokens carry real mass
        policy.lm_head.weight.mul_(8.0)
    policy.generation_config.repetition_penalty = 50.0
    prompt = domain.all_prompts()[0][0]
    prompt_ids = set(tiny_tokenizer(prompt)["input_ids"])
    query = tiny_tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        first = torch.softmax(policy(**query).logits[0, -1], -1)
    mass = first[sorted(prompt_ids)].sum().item()  # P(first token is one of the prompt's)
    draws = 3000

    def share_on_prompt_tokens(generation) -> float:
        return sum(int(t) in prompt_ids for t in generation.response_ids[:, 0]) / draws

    exact = share_on_prompt_tokens(sample_from_policy(policy, tiny_tokenizer, [prompt] * draws, 1, 1.0))
    penalised = share_on_prompt_tokens(generate(policy, tiny_tokenizer, [prompt] * draws, 1, 1.0))
    tolerance = 4 * (mass * (1 - mass) / draws) ** 0.5
    assert mass > 0.05 and abs(exact - mass) < tolerance, (exact, mass)
    assert penalised < mass - tolerance  # what evaluate measured under before


def test_an_independent_pairwise_judge_decides_wins_in_both_orders():
    from rlhf.evaluation import pairwise_wins
    from rlhf.judges.pairwise import PairwiseJudge

    class ThanksLover(PairwiseJudge):  # prefers the response saying thanks, and the first position a little
        def first_preferred(self, queries):
            return [0.55 + 0.4 * (("thanks" in a) - ("thanks" in b)) for _, a, b in queries]

    prompts = [[{"role": "user", "content": "hi"}]] * 3
    wins = pairwise_wins(ThanksLover(), prompts, ["thanks !", "ok", "ok"], ["ok", "thanks !", "fine"])
    assert wins == [1.0, 0.0, 0.5]  # the position preference cancels: a tie where neither says thanks


def test_compare_policies_repeats_every_measure_on_each_group_of_prompts(tiny_tokenizer):
    from transformers import GPT2ForSequenceClassification

    from rlhf.config import load_params
    from rlhf.evaluation import compare_policies
    from rlhf.judges import RuleJudge

    torch.manual_seed(0)
    start = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer)).eval()
    final = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer)).eval()
    reward = GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1)).eval()
    judge = RuleJudge(load_params().rank_responses.principles)
    rows = domain.all_prompts()[:6]
    unseen = [True, False, True, False, False, False]
    metrics, _, _ = compare_policies(
        start,
        final,
        tiny_tokenizer,
        reward,
        tiny_tokenizer,
        judge,
        [p for p, _ in rows],
        [t for _, t in rows],
        8,
        1.0,
        groups={"unseen_topic": unseen, "seen_topic": [not u for u in unseen]},
    )
    assert metrics["unseen_topic_prompts"] == 2 and metrics["seen_topic_prompts"] == 4
    for name in ("win_rate_vs_start", "kl_to_start", "share_on_topic_final"):
        mixed = (2 * metrics[f"unseen_topic_{name}"] + 4 * metrics[f"seen_topic_{name}"]) / 6
        assert metrics[name] == pytest.approx(mixed)  # each group is a part of the whole


def report_sections(report: str) -> dict[str, str]:
    """The report's `## ` sections in order, by heading."""
    parts = re.split(r"^## (.+)$", report, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2]))


def test_the_report_leads_with_the_headline_then_principles_and_ends_with_samples(tiny_checkpoints, tmp_path):
    """The evaluate stage's report on tiny policies: the first section names the judge and holds the
    win rate, KL, reward and reward-model accuracy beside the start's; the principles follow; the
    samples come last; every picture it shows is a file beside it."""
    from rlhf.config import load_params
    from rlhf.evaluation import evaluate, write_report
    from rlhf.plots import render_curve
    from tests.support.store_data import small_comparisons

    policy_dir, reward_dir = tiny_checkpoints
    rows = domain.all_prompts()[:48]
    unseen = rows[40][1]  # a held-out topic no training prompt has
    train = [(p, t) for p, t in rows[:40] if t != unseen]
    prompts = pd.DataFrame(
        {
            "prompt_id": [f"p{i:02d}" for i in range(len(train) + 8)],
            "prompt": [p for p, _ in train + rows[40:48]],
            "topic": [t for _, t in train + rows[40:48]],
            "split": ["train"] * len(train) + ["test"] * 8,
        }
    )
    params = load_params()
    params = params.model_copy(
        update={"train_policy": params.train_policy.model_copy(update={"max_new_tokens": 6})}, deep=True
    )
    evaluation = evaluate(params, prompts, small_comparisons(), policy_dir, policy_dir, reward_dir, {}, {}, {})
    metrics = evaluation.metrics
    curve = pd.DataFrame({"iteration": [1, 2, 3], "score": [0.1, 0.4, 0.5], "kl": [0.0, 0.2, 0.3]})
    (tmp_path / "plots").mkdir()
    render_curve(curve, ["score", "kl"], tmp_path / "plots" / "policy.png")
    pictures = [("Policy curve", tmp_path / "plots" / "policy.png"), ("Not drawn", tmp_path / "plots" / "none.png")]
    write_report(tmp_path / "reports" / "eval.md", evaluation, 3, params.evaluate.samples_per_prompt, pictures)
    report = (tmp_path / "reports" / "eval.md").read_text()

    sections = report_sections(report)
    headings = list(sections)
    assert headings[:2] == ["Headline", "Per principle"]
    assert headings[-1].startswith("Held-out prompts") and "| prompt | before | after |" in sections[headings[-1]]
    headline = sections["Headline"]
    assert f"judged by **{metrics['win_judge']}**" in headline and metrics["win_judge"] == "rules"
    for figure in ("win_rate_vs_start", "kl_to_start", "rm_accuracy", "mean_reward_start", "mean_reward_final"):
        assert f"| {metrics[figure]} |" in headline, figure
    assert re.search(
        rf"\| win rate against the start \(judge: rules\) \| 0\.5 \| {metrics['win_rate_vs_start']} \|", headline
    )
    assert metrics["unseen_topic_prompts"] > 0 and f"| {metrics['unseen_topic_win_rate_vs_start']} |" in headline

    principles = sections["Per principle"]
    for principle in params.rank_responses.principles:
        name = principle.name
        row = f"| {name} | {metrics[f'share_{name}_start']} | {metrics[f'share_{name}_final']} | "
        assert row in principles, (name, principles)
    assert report.index("## Per principle") < report.index("## Curves") < report.index("## Held-out prompts")

    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert linked == ["../plots/policy.png"]  # relative to the report; the picture not drawn is left out
    assert (tmp_path / "reports" / linked[0]).resolve().read_bytes()[:4] == b"\x89PNG"
    assert (
        len(re.findall(r"^\| .* \| .* \| .* \|$", sections[headings[-1]], flags=re.MULTILINE)) == 2 + 3
    )  # header, rule, 3 samples
