"""KTO against DPO on the demo at the same label budget, over seeds: one JSON line per algorithm.

Both algorithms train from the same start (the demo's SFT policy, which is also their reference)
on the same comparisons snapshot, the labels of the same rankings: DPO on its strict pairs, KTO on
the labels those pairs give each response (rlhf/policy_optimization/kto.py: desirable where a
response wins more of its pairs than it loses). Each run is the train_policy stage's own library
call (from_inputs.train_offline for DPO, kto.train_from_inputs for KTO) with params.yaml's
settings, `seed: N` and `train_policy.algorithm`, then the evaluate stage's `rlhf.evaluation
.evaluate`: win rate against the start on the held-out prompts (judged by the rules, the demo's
gold judge), KL to the start, the unseen topics' win rate. The two algorithms alternate, and which
goes first alternates with the seed.

The inputs are the outputs of a `dvc repro` of the demo (default: this checkout's workspace:
data/prompts.parquet, data/comparisons/, models/sft, models/reward, metrics/rank.json,
metrics/feedback.json), copied to a scratch directory first so that a stage re-run meanwhile does
not change them. What a seed changes: the trainers' data order and the evaluation's samples; the
SFT policy and the comparisons are the one pipeline run's (bench/efficacy.py varies those too).

    python bench/kto_vs_dpo.py                                   # seeds 0 1 2, the whole snapshot
    python bench/kto_vs_dpo.py --train_prompts 48 --test_prompts 16 --set evaluate.samples_per_prompt=1
                                                   # a smaller label budget (both sides), a quicker run
    python bench/kto_vs_dpo.py --algorithms kto --set train_policy.kto.epochs=9   # KTO alone, other settings
    OMP_NUM_THREADS=1 python bench/kto_vs_dpo.py ...              # a thread each: kinder on a shared machine

One line per algorithm on stdout, once all its seeds are done:
{"bench": "kto_vs_dpo", "algorithm", "seeds", "label_budget", <metric>: {"mean", "std"}, ...,
"per_seed": {...}, "settings", "machine"}; each run's figures go to stderr as it ends.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml
from efficacy import summarise

from rlhf.config import Params, load_params
from rlhf.machine import machine

ALGORITHMS = ["dpo", "kto"]
INPUTS = {
    "prompts": "data/prompts.parquet",
    "comparisons": "data/comparisons",
    "sft": "models/sft",
    "reward": "models/reward",
    "rank_metrics": "metrics/rank.json",
    "feedback_metrics": "metrics/feedback.json",
}
KEPT = [
    "win_rate_vs_start",
    "kl_to_start",
    "unseen_topic_win_rate_vs_start",
    "seen_topic_win_rate_vs_start",
    "mean_reward_final",
    "distinct_2_final",
]
TRAINED_KEPT = ["train_wall_s", "train_pairs", "train_examples", "train_desirable", "train_undesirable"]


def copy_inputs(workspace: Path, scratch: Path, train_prompts: int | None, test_prompts: int | None) -> dict[str, Path]:
    """The demo's outputs copied to `scratch`; with `train_prompts`, the comparisons snapshot keeps
    the pairs of only the first that many train prompts (by prompt_id), for both algorithms; with
    `test_prompts`, those of only that many test prompts (the trainers' held-out margins and the
    reward model's accuracy read them; the win rate's held-out prompts are prompts.parquet's)."""
    copied = {}
    for name, relative in INPUTS.items():
        source, target = workspace / relative, scratch / "inputs" / relative
        if not source.exists():
            raise SystemExit(f"{source}: missing; run the demo (`dvc repro`) in {workspace} first")
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
        copied[name] = target
    snapshot = copied["comparisons"]
    pairs = pd.read_parquet(snapshot / "pairs.parquet")
    prompts = pd.read_parquet(snapshot / "prompts.parquet")
    train_ids = sorted(prompts.loc[prompts["split"] == "train", "prompt_id"])[:train_prompts]
    test_ids = sorted(prompts.loc[prompts["split"] == "test", "prompt_id"])[:test_prompts]
    pairs[pairs["prompt_id"].isin(set(train_ids) | set(test_ids))].to_parquet(snapshot / "pairs.parquet", index=False)
    return copied


def label_budget(comparisons_dir: Path) -> dict:
    from rlhf.snapshot import read_comparisons

    comparisons = read_comparisons(comparisons_dir)
    train = comparisons[comparisons["split"] == "train"]
    return {
        "train_rankings": int(train["ranking_id"].nunique()),
        "train_pairs": len(train),
        "train_strict_pairs": int((~train["tie"]).sum()),
    }


def params_for(base: dict, algorithm: str, seed: int) -> Params:
    from rlhf.config import parse_params

    raw = json.loads(json.dumps(base))  # a deep copy
    raw["seed"] = seed
    raw.setdefault("train_policy", {})["algorithm"] = algorithm
    raw.setdefault("evaluate", {})["report_samples"] = 0
    return parse_params(raw, "bench settings")


def run_one(params: Params, algorithm: str, inputs: dict[str, Path], out: Path) -> dict:
    """Train (as the train_policy stage does) and evaluate (as the evaluate stage does) one run."""
    from rlhf.evaluation import evaluate
    from rlhf.policy_optimization.from_inputs import PolicyInputs, train_offline
    from rlhf.policy_optimization.kto import train_from_inputs
    from rlhf.snapshot import read_comparisons

    stage_inputs = PolicyInputs(
        prompts=str(inputs["prompts"]),
        comparisons=str(inputs["comparisons"]),
        policy_dir=str(inputs["sft"]),
        reference_dir=str(inputs["sft"]),
        reward_dir=str(inputs["reward"]),
        cost_dir="",  # read by ppo_lagrangian only
    )
    train = train_offline if algorithm == "dpo" else train_from_inputs
    started = time.perf_counter()
    outcome = train(params, stage_inputs, str(out / "policy"), str(out / "live"), lambda done, total: None)
    evaluation = evaluate(
        params,
        pd.read_parquet(inputs["prompts"]),
        read_comparisons(inputs["comparisons"]),
        inputs["sft"],
        out / "policy",
        inputs["reward"],
        outcome.metrics,
        json.loads(inputs["rank_metrics"].read_text()),
        json.loads(inputs["feedback_metrics"].read_text()),
    )
    record = {k: evaluation.metrics[k] for k in KEPT if k in evaluation.metrics}
    record.update({k: outcome.metrics[k] for k in TRAINED_KEPT if k in outcome.metrics})
    if algorithm == "kto":
        record.update(desirable_weight=outcome.metrics["desirable_weight"])
        record.update(undesirable_weight=outcome.metrics["undesirable_weight"])
    record["run_wall_s"] = round(time.perf_counter() - started, 1)
    shutil.rmtree(out / "policy", ignore_errors=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workspace", type=Path, default=ROOT, help="where `dvc repro` left the demo's outputs")
    parser.add_argument("--train_prompts", type=int, default=None, help="label budget: first N train prompts' pairs")
    parser.add_argument("--test_prompts", type=int, default=None, help="held-out pairs: first N test prompts'")
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=ALGORITHMS, help="one side again")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()

    base = load_params(args.workspace / "params.yaml").model_dump(mode="json")
    base.pop("round", None)  # the round state lives in rounds.yaml
    for assignment in args.assignments:  # section.key=value or section.sub.key=value, the value as YAML
        key, _, value = assignment.partition("=")
        *path, last = key.split(".")
        target = base
        for part in path:
            target = target[part]
        target[last] = yaml.safe_load(value)
    results: dict[str, dict[int, dict]] = {algorithm: {} for algorithm in args.algorithms}
    with tempfile.TemporaryDirectory(prefix="kto-vs-dpo-") as temporary:
        scratch = Path(temporary)
        inputs = copy_inputs(args.workspace, scratch, args.train_prompts, args.test_prompts)
        budget = {"train_prompts_limit": args.train_prompts, "test_prompts_limit": args.test_prompts}
        budget.update(label_budget(inputs["comparisons"]))
        for index, seed in enumerate(args.seeds):
            order = args.algorithms if index % 2 == 0 else args.algorithms[::-1]  # both sides alternate
            for algorithm in order:
                record = run_one(params_for(base, algorithm, seed), algorithm, inputs, scratch / f"{algorithm}-s{seed}")
                results[algorithm][seed] = record
                print(json.dumps({"algorithm": algorithm, "seed": seed, **record}), file=sys.stderr, flush=True)
    for algorithm in args.algorithms:
        runs = [results[algorithm][seed] for seed in args.seeds]
        settings = base["train_policy"][algorithm]
        line = {
            "bench": "kto_vs_dpo",
            "algorithm": algorithm,
            "seeds": args.seeds,
            "label_budget": budget,
            **summarise(runs),
            "per_seed": {str(seed): results[algorithm][seed] for seed in args.seeds},
            "settings": {algorithm: settings, "set": args.assignments},
            "machine": machine(),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
