"""The sample_responses stage with 1 worker and with N (torchrun), alternating, on the same inputs.

    python bench/sampling_workers.py [--repeats 3] [--workers 2] [--prompts 96]

Writes one fixture (the demo's tokenizer, a random GPT-2 of the demo policy's size, the demo's
prompts), then runs the stage as a process, 1 worker then N, `repeats` times. Prints one JSON line
per worker count: responses per second over the stage's whole wall time (start-up and the
launcher included, as a user waits for it), median with min and max, the ratio against one
worker, whether every run wrote the same bytes, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from bench.algorithms import spread
from rlhf.machine import machine


def write_fixture(directory: Path, prompt_count: int) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf.config import BootstrapPolicyParams
    from rlhf.demo import domain
    from rlhf.demo.tokenizer import train_tokenizer
    from rlhf.prompts import demo_prompts, finalize

    demo = BootstrapPolicyParams()
    tokenizer = train_tokenizer(domain.corpus(seed=0, size=300), vocab_size=400)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=demo.n_embd,
        n_layer=demo.n_layer,
        n_head=demo.n_head,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory / "policy")
    tokenizer.save_pretrained(directory / "policy")
    finalize(demo_prompts().head(prompt_count), 0.0, None).to_parquet(directory / "prompts.parquet")


def run_once(directory: Path, workers: int) -> tuple[float, bytes]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["workers"]["sample_responses"] = workers
    run = directory / f"workers-{workers}"
    run.mkdir(exist_ok=True)
    (run / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "rlhf.stages.sample_responses", "--params", str(run / "params.yaml")]
    command += ["--policy_dir", str(directory / "policy"), "--prompts", str(directory / "prompts.parquet")]
    command += ["--responses", str(run / "responses.parquet"), "--parts_dir", str(run / "parts")]
    environment = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{workers} workers: the stage failed:\n{done.stderr[-3000:]}")
    return wall, (run / "responses.parquet").read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=96)
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())["sample_responses"]
    responses = args.prompts * params["k"]
    walls: dict[int, list[float]] = {1: [], args.workers: []}
    outputs: set[bytes] = set()
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        write_fixture(directory, args.prompts)
        for _ in range(args.repeats):
            for workers in walls:  # alternating, so load on the machine falls on both
                wall, output = run_once(directory, workers)
                walls[workers].append(wall)
                outputs.add(output)
    about = {"machine": machine(), "load_average": os.getloadavg(), "responses": responses, "sampling": params}
    one = spread([responses / wall for wall in walls[1]])
    for workers, times in walls.items():
        rate = spread([responses / wall for wall in times])
        line = {
            "bench": "sampling_workers",
            "workers": workers,
            "repeats": len(times),
            "responses_per_second": rate,
            "ratio_to_one_worker": round(rate["median"] / one["median"], 3),
            "identical_outputs": len(outputs) == 1,
            **about,
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
