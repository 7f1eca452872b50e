"""Feedback store throughput: ingest of K-way rankings into pairs, and the Parquet snapshot.

    python bench/store.py [--pairs 1000000] [--k 4] [--repeats 3] [--hashed-ids]

Builds rankings that expand to `--pairs` comparisons, ingests them in one batch (prompts,
responses, rankings, and the SQL self-join into pairs, all under the store's lock and
transaction), then snapshots the store to Parquet (pairs, prompts, responses). The baseline
writes the same pairs as JSON Lines with the standard library, in the same process, after each
store's snapshot. Each repeat is a fresh store. Prints one JSON line (median, min and max over the
repeats), with the 1-minute load average before and after: the machine's other work moves the
figures (the snapshot took 1.3 s at load 0.3 and 4-5 s at load 6 on one 2-core machine).

The ids are sequential hex numbers by default, as the figures quoted in the issue were measured;
the store's own ids are sha256 hashes, in no order: --hashed-ids builds those, whose sorts (ingest's
and the snapshot's) cost more and whose Parquet files are larger.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd

from rlhf.machine import machine
from rlhf.snapshot import read_comparisons
from rlhf.store import FeedbackStore


def rankings_for(pairs: int, k: int, hashed_ids: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    prompts = -(-pairs // (k * (k - 1) // 2))
    prompt_ids = [f"{i:032x}" for i in range(prompts)]
    if hashed_ids:
        prompt_ids = [hashlib.sha256(p.encode()).hexdigest() for p in prompt_ids]
    prompt_frame = pd.DataFrame(
        {
            "prompt_id": prompt_ids,
            "prompt": [f"prompt {i}" for i in range(prompts)],
            "topic": None,
            "split": "train",
            "source": "bench",
        }
    )
    response_ids = [f"{p}-{j}" for p in prompt_ids for j in range(k)]
    if hashed_ids:
        response_ids = [hashlib.sha256(r.encode()).hexdigest() for r in response_ids]
    response_frame = pd.DataFrame(
        {
            "response_id": response_ids,
            "prompt_id": [p for p in prompt_ids for _ in range(k)],
            "sample_index": list(range(k)) * prompts,
            "response": [f"response {r}" for r in response_ids],
            "policy_checkpoint": "bench",
            "sampling": "{}",
        }
    )
    ranking_frame = pd.DataFrame(
        {
            "ranking_id": [p for p in prompt_ids for _ in range(k)],
            "response_id": response_ids,
            "prompt_id": [p for p in prompt_ids for _ in range(k)],
            "rank": list(range(1, k + 1)) * prompts,
            "score": [float(-j) for j in range(k)] * prompts,
            "reasons": "{}",
            "judge": "bench",
            "judge_version": "1",
        }
    )
    return prompt_frame, response_frame, ranking_frame


def jsonl_baseline(pairs: pd.DataFrame, path: Path) -> float:
    """Seconds to write the same pairs as JSON Lines with json.dumps, the way a script would."""
    started = time.perf_counter()
    with path.open("w") as handle:
        for row in pairs.itertuples(index=False):
            handle.write(
                json.dumps({"prompt": row.prompt, "chosen": row.chosen, "rejected": row.rejected, "margin": row.margin})
                + "\n"
            )
    return time.perf_counter() - started


def measure_once(frames, directory: Path) -> dict[str, float]:
    """One fresh store: ingest, snapshot, then the JSONL baseline on the same pairs."""
    directory.mkdir()
    store = FeedbackStore(directory / "feedback.duckdb")
    store.counts()  # create the schema outside the timing
    started = time.perf_counter()
    added = store.ingest({"run_id": "bench", "stage": "bench"}, *frames)
    ingest_s = time.perf_counter() - started
    started = time.perf_counter()
    rows = store.snapshot_comparisons(directory / "comparisons")
    snapshot_s = time.perf_counter() - started
    pairs = read_comparisons(directory / "comparisons")
    baseline_s = jsonl_baseline(pairs, directory / "pairs.jsonl")
    return {
        "pairs": added["comparisons"],
        "ingest": added["comparisons"] / ingest_s,
        "baseline": rows / baseline_s,
        "snapshot_s": snapshot_s,
    }


def spread(values: list[float], digits: int) -> dict:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="fresh stores measured one after another")
    parser.add_argument("--hashed-ids", action="store_true", help="sha256 ids, as the store's own, in no order")
    args = parser.parse_args()
    frames = rankings_for(args.pairs, args.k, args.hashed_ids)
    load_before = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            runs.append(measure_once(frames, Path(tmp) / f"run-{repeat}"))
    ingest = [run["ingest"] for run in runs]
    baseline = [run["baseline"] for run in runs]
    snapshot_key = f"snapshot_{args.pairs // 1_000_000}m_pairs_s" if args.pairs >= 1_000_000 else "snapshot_s"
    print(
        json.dumps(
            {
                "bench": "store",
                "machine": machine(),
                "pairs": runs[0]["pairs"],
                "k": args.k,
                "ids": "sha256" if args.hashed_ids else "sequential",
                "repeats": args.repeats,
                "ingest_pairs_per_s": spread(ingest, 0),
                "jsonl_baseline_pairs_per_s": spread(baseline, 0),
                "ratio": round(statistics.median(ingest) / statistics.median(baseline), 2),
                snapshot_key: spread([run["snapshot_s"] for run in runs], 3),
                "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
        )
    )


if __name__ == "__main__":
    main()
