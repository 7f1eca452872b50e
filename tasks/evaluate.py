"""Stage evaluate: the final policy against the bootstrap policy on held-out prompts."""

from pathlib import Path

import pandas as pd
import torch

from rlhf.evaluation import (
    baseline_accuracies,
    distinct_n,
    pair_accuracy,
    principle_shares,
    sequence_kl,
    win_rate,
)
from rlhf.judges import RuleJudge
from rlhf.models import load_policy, load_scalar_head_model, load_tokenizer, resolve_device
from rlhf.report import markdown_report
from rlhf.reward import preference_pairs, score_texts
from rlhf.sampling import generate
from rlhf.text import join
from tasks._stage import params_from, parse_paths, run_stage, write_json

STAGE = "evaluate"


def main() -> None:
    args = parse_paths(
        STAGE, ["prompts", "comparisons", "start_dir", "policy_dir", "reward_dir"], ["metrics", "report"]
    )
    params = params_from(args)
    device = resolve_device(params.device)
    section, ppo = params.evaluate, params.train_policy
    prompts = pd.read_parquet(args.prompts)
    held_out = prompts[prompts["split"] == "test"].sort_values("prompt_id")
    rows = held_out.loc[held_out.index.repeat(section.samples_per_prompt)]
    texts, topics = list(rows["prompt"]), [None if pd.isna(t) else t for t in rows["topic"]]

    tokenizer = load_tokenizer(args.start_dir)
    start = load_policy(args.start_dir, device).eval()
    final = load_policy(args.policy_dir, device).eval()
    reward_tokenizer = load_tokenizer(args.reward_dir)
    reward_model = load_scalar_head_model(args.reward_dir, device, reward_tokenizer.pad_token_id).eval()
    judge = RuleJudge(params.rank_responses.principles)

    # 1. Both policies answer the same held-out prompts, sampled as in training.
    torch.manual_seed(params.seed)
    start_gen = generate(start, tokenizer, texts, ppo.max_new_tokens, ppo.temperature)
    final_gen = generate(final, tokenizer, texts, ppo.max_new_tokens, ppo.temperature)

    def judged(responses):
        return [judge.score(p, t, r)[0] for p, t, r in zip(texts, topics, responses)]

    def rewarded(responses):
        return score_texts(reward_model, reward_tokenizer, [join(p, r) for p, r in zip(texts, responses)]).tolist()

    start_rewards, final_rewards = rewarded(start_gen.texts), rewarded(final_gen.texts)
    metrics = {
        "held_out_prompts": len(held_out),
        "win_rate_vs_start": win_rate(judged(final_gen.texts), judged(start_gen.texts)),
        "mean_reward_start": sum(start_rewards) / len(start_rewards),
        "mean_reward_final": sum(final_rewards) / len(final_rewards),
        "kl_to_start": sequence_kl(final, start, final_gen, ppo.temperature),
        "distinct_2_start": distinct_n(start_gen.texts),
        "distinct_2_final": distinct_n(final_gen.texts),
    }
    for name, share in principle_shares(judge, texts, topics, start_gen.texts).items():
        metrics[f"share_{name}_start"] = share
    for name, share in principle_shares(judge, texts, topics, final_gen.texts).items():
        metrics[f"share_{name}_final"] = share

    # 2. The reward model against two reward-free baselines on held-out comparisons.
    comparisons = pd.read_parquet(args.comparisons)
    strict = comparisons[(comparisons["split"] == "test") & ~comparisons["tie"]]
    pairs = preference_pairs(strict)
    metrics["rm_test_pairs"] = len(pairs)
    metrics["rm_accuracy"] = pair_accuracy(
        score_texts(reward_model, reward_tokenizer, list(pairs["chosen"])).tolist(),
        score_texts(reward_model, reward_tokenizer, list(pairs["rejected"])).tolist(),
    )
    metrics.update(baseline_accuracies(strict))
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    write_json(args.metrics, metrics)

    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(
        markdown_report(metrics, texts, start_gen.texts, final_gen.texts, section.report_samples, section.samples_per_prompt)
    )
    print(f"{STAGE}: {metrics}")


if __name__ == "__main__":
    run_stage(STAGE, main)
