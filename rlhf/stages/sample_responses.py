"""Stage sample_responses: K responses per prompt from the current policy."""

import pandas as pd
import torch

from rlhf.pretrained import checkpoint_hash, load_policy, load_tokenizer, resolve_device
from rlhf.sampling import sample_k
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_parquet

STAGE = "sample_responses"


def main() -> None:
    args = parse_paths(STAGE, ["policy_dir", "prompts"], ["responses"])
    params = params_from(args)
    section = params.sample_responses
    prompts = pd.read_parquet(args.prompts)
    tokenizer = load_tokenizer(args.policy_dir)
    policy = load_policy(args.policy_dir, resolve_device(params.device)).eval()
    torch.manual_seed(params.seed)
    responses = sample_k(
        policy,
        tokenizer,
        prompts,
        k=section.k,
        max_new_tokens=section.max_new_tokens,
        temperature=section.temperature,
        top_p=section.top_p,
        batch_size=section.batch_size,
        policy_checkpoint=checkpoint_hash(args.policy_dir),
        progress=log_progress(STAGE),
    )
    write_parquet(responses, args.responses)


if __name__ == "__main__":
    run_stage(STAGE, main)
