"""Stage evaluate: the final policy against the bootstrap policy on held-out prompts."""

import json
import os
from pathlib import Path

import pandas as pd
import torch

from rlhf import chat
from rlhf.evaluation import compare_policies, reward_model_vs_baselines
from rlhf.judges import RuleJudge, make_judge
from rlhf.models import load_policy, load_tokenizer, resolve_device
from rlhf.report import markdown_report
from rlhf.reward_models.ensemble import load_reward_model
from rlhf.snapshot import read_comparisons
from rlhf.stages._stage import params_from, parse_paths, run_stage, write_json

STAGE = "evaluate"


def feedback_quality(rank: dict, feedback: dict) -> dict:
    """The judge's position bias and how far judges agree, flattened for metrics/eval.json."""
    agreement = feedback.get("agreement", {})
    quality = {"judge_position_bias_rate": rank.get("position_bias_rate")}
    for judge, figures in agreement.get("ai_vs_human", {}).items():
        quality.update({f"ai_vs_human_{judge}_{k}": v for k, v in figures.items()})
    for key, value in (agreement.get("inter_annotator") or {}).items():
        quality[f"inter_annotator_{key}"] = value
    return quality


def main() -> None:
    args = parse_paths(
        STAGE,
        [
            "prompts",
            "comparisons",
            "rank_metrics",
            "feedback_metrics",
            "policy_metrics",
            "start_dir",
            "policy_dir",
            "reward_dir",
            "ppo_curve_png",
            "gold_png",
            "reward_distribution_png",
        ],
        ["metrics", "report"],
    )
    params = params_from(args)
    device = resolve_device(params.device)
    section = params.evaluate
    prompts = pd.read_parquet(args.prompts)
    held_out = prompts[prompts["split"] == "test"].sort_values("prompt_id")
    rows = held_out.loc[held_out.index.repeat(section.samples_per_prompt)]
    texts, topics = list(rows["prompt"]), [None if pd.isna(t) else t for t in rows["topic"]]
    conversations = chat.conversations_of(rows)

    train_topics = set(prompts.loc[prompts["split"] == "train", "topic"].dropna())
    groups = {  # held-out prompts on a topic no training prompt has, and the others
        "unseen_topic": [t is not None and t not in train_topics for t in topics],
        "seen_topic": [t is None or t in train_topics for t in topics],
    }
    win_judge = None
    if section.judge != "rules":
        judge_params = params.rank_responses.model_copy(update={"llm": section.llm, "openai": section.openai})
        win_judge = make_judge(judge_params, device, kind=section.judge)
    tokenizer = load_tokenizer(args.start_dir)
    reward_tokenizer = load_tokenizer(args.reward_dir)
    reward_model = load_reward_model(args.reward_dir, device, reward_tokenizer.pad_token_id).eval()
    torch.manual_seed(params.seed)
    with torch.no_grad():
        policy_metrics, before, after = compare_policies(
            load_policy(args.start_dir, device).eval(),
            load_policy(args.policy_dir, device).eval(),
            tokenizer,
            reward_model,
            reward_tokenizer,
            RuleJudge(params.rank_responses.principles),
            conversations,
            topics,
            params.train_policy.max_new_tokens,
            params.train_policy.temperature,
            params.rank_responses.unsafe_words,
            win_judge=win_judge,
            groups=groups,
        )
        comparisons = read_comparisons(args.comparisons)
        rm_metrics = reward_model_vs_baselines(
            reward_model, reward_tokenizer, comparisons[comparisons["split"] == "test"]
        )
    trained = json.loads(Path(args.policy_metrics).read_text())
    metrics = {
        # Which algorithm made the policy and how long it trained: `dvc exp show` puts a PPO and a DPO
        # experiment side by side on the same held-out prompts.
        "policy_algorithm": trained.get("algorithm", "ppo"),
        "policy_train_wall_s": trained.get("train_wall_s"),
        "held_out_prompts": len(held_out),
        "win_judge": section.judge if win_judge is None else f"{section.judge}:{win_judge.version}",
        **policy_metrics,
        **rm_metrics,
        **feedback_quality(
            json.loads(Path(args.rank_metrics).read_text()), json.loads(Path(args.feedback_metrics).read_text())
        ),
    }
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    write_json(args.metrics, metrics)
    figures = [
        (caption, os.path.relpath(path, Path(args.report).parent))  # relative: the report renders where it lies
        for caption, path in [
            ("Policy training: reward and KL per iteration", args.ppo_curve_png),
            ("Gold (rules) versus proxy (reward model) score against sqrt(KL)", args.gold_png),
            ("Reward model: held-out score distributions", args.reward_distribution_png),
        ]
        if Path(path).exists()  # a stage run by hand may come without them
    ]
    report = markdown_report(metrics, texts, before, after, section.report_samples, section.samples_per_prompt, figures)
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(report)
    print(f"{STAGE}: {metrics}")


if __name__ == "__main__":
    run_stage(STAGE, main)
