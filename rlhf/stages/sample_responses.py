"""Stage sample_responses: K responses per prompt from the current policy.

With `workers.sample_responses` above 1 the stage runs itself again as that many processes under
torchrun, each sampling its share of the batches (rlhf.sharding); the responses are those one
process samples, and a run killed part-way keeps the batches it finished (--parts_dir).
"""

import pandas as pd
import torch

from rlhf.frames import RESPONSE_COLUMNS
from rlhf.pretrained import checkpoint_hash, load_policy, load_tokenizer, resolve_device
from rlhf.sampling import ResponseSampler
from rlhf.sharding import BatchParts, run_batches, start_workers
from rlhf.stages._stage import log_progress, params_from, parse_paths, run_stage, write_parquet
from rlhf.text import content_id

STAGE = "sample_responses"


def main() -> None:
    args = parse_paths(STAGE, ["policy_dir", "prompts"], ["responses", "parts_dir"])
    params = params_from(args)
    section = params.sample_responses
    worker = start_workers(STAGE, params.workers.sample_responses)
    prompts = pd.read_parquet(args.prompts)
    tokenizer = load_tokenizer(args.policy_dir)
    policy = load_policy(args.policy_dir, worker.place(resolve_device(params.device))).eval()
    policy_checkpoint = checkpoint_hash(args.policy_dir)
    sampler = ResponseSampler(
        policy,
        tokenizer,
        prompts,
        k=section.k,
        max_new_tokens=section.max_new_tokens,
        temperature=section.temperature,
        top_p=section.top_p,
        batch_size=section.batch_size,
        policy_checkpoint=policy_checkpoint,
        seed=params.seed,
    )
    # What the parts were sampled from: a part of another policy, prompt set or setting is discarded.
    fingerprint = {
        "seed": params.seed,
        "sample_responses": section.model_dump(mode="json"),
        "policy_checkpoint": policy_checkpoint,
        "prompts": content_id(*prompts["prompt_id"], *prompts["messages"]),
        "torch": torch.__version__,
    }
    parts = BatchParts(args.parts_dir, fingerprint)

    def sample(index: int) -> dict:
        return {"responses": sampler.sample_batch(index)}

    sampled = run_batches(len(sampler.batches), sample, parts, worker, log_progress(f"{worker.label(STAGE)}: batches"))
    if sampled is None:  # not rank 0: rank 0 writes
        return
    write_parquet(sampled.get("responses", pd.DataFrame(columns=RESPONSE_COLUMNS)), args.responses)
    parts.remove()


if __name__ == "__main__":
    run_stage(STAGE, main)
