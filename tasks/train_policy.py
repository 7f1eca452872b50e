"""Stage train_policy: PPO from the bootstrap policy against the reward model."""

import pandas as pd

from rlhf.models import load_policy, load_scalar_head_model, load_tokenizer, resolve_device
from rlhf.ppo.trainer import RewardScorer, train_ppo
from tasks._stage import params_from, parse_paths, run_stage, write_json, write_whole

STAGE = "train_policy"


def main() -> None:
    args = parse_paths(STAGE, ["prompts", "policy_dir", "reward_dir"], ["model_dir", "metrics", "curve"])
    params = params_from(args)
    device = resolve_device(params.device)
    prompts = pd.read_parquet(args.prompts)
    train_prompts = sorted(prompts.loc[prompts["split"] == "train", "prompt"])
    tokenizer = load_tokenizer(args.policy_dir)
    reward_tokenizer = load_tokenizer(args.reward_dir)
    policy = load_policy(args.policy_dir, device)
    reference = load_policy(args.policy_dir, device)
    critic = load_scalar_head_model(args.reward_dir, device, reward_tokenizer.pad_token_id)
    reward_model = load_scalar_head_model(args.reward_dir, device, reward_tokenizer.pad_token_id)
    scorer = RewardScorer(reward_model, reward_tokenizer)

    def log(row: dict) -> None:
        print(
            f"{STAGE}: iteration {row['iteration']}/{params.train_policy.iterations} "
            f"score {row['score']:+.3f} kl {row['kl']:.3f} length {row['response_length']:.1f} "
            f"entropy {row['entropy']:.3f} clip {row['clip_fraction']:.3f}",
            flush=True,
        )

    history = train_ppo(
        policy, reference, critic, scorer, tokenizer, train_prompts, params.train_policy, params.seed, log
    )
    policy.save_pretrained(args.model_dir)
    tokenizer.save_pretrained(args.model_dir)
    write_whole(args.curve, lambda path: pd.DataFrame(history).to_csv(path, index=False))
    last = history[-1]
    write_json(args.metrics, {k: last[k] for k in ("score", "kl", "response_length", "entropy", "ended_share")})


if __name__ == "__main__":
    run_stage(STAGE, main)
