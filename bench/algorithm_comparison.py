"""PPO, GRPO, RLOO, REINFORCE++ and DPO on the same data, each a `dvc exp run -S` experiment, over seeds.

For each seed, a fresh git + DVC copy of the project (as bench/efficacy.py makes it, `seed: N`) runs
  1. `dvc exp run --name ppo-s<N>`: the whole default pipeline (params.yaml's algorithm is ppo);
  2. `dvc exp run --name <alg>-s<N> -S train_policy.algorithm=<alg>` for grpo, rloo, reinforce_pp
     and dpo, one after another in the same workspace: DVC re-runs only train_policy and evaluate,
     every upstream stage (SFT, prompts, samples, rankings, comparisons, reward and cost models) is
     the one of step 1, so each algorithm starts from the same policy, reward model and comparisons.
     The stages each experiment ran and skipped (from DVC's output) are in its record.
After each experiment its metrics/eval.json and metrics/policy.json are read from the workspace.

The budget. PPO: 40 iterations x batch_size 64 responses = 2560 episodes. GRPO, RLOO, REINFORCE++:
the same 40 x 64 = 2560 episodes (batch_size counts responses: 16 prompts x group_size 4 each
iteration). Each record's `episodes` is policy.json's iterations x params.yaml's batch_size, read
back after the run. DPO is offline: its budget is not episodes but train_policy.dpo.epochs (3)
passes over the comparisons snapshot's pairs (`dpo_pairs_seen` = train_pairs x epochs).
train_wall_s is policy.json's: for the online ones the training loop (models already loaded), for
DPO the DPOTrainer's train(); peak_rss_mb is the train_policy process's peak RSS.

    python bench/algorithm_comparison.py                           # seeds 0 1 2 of this checkout
    python bench/algorithm_comparison.py --rev 6e2088a --keep /tmp/algcmp   # a commit's code; repos kept
    OMP_NUM_THREADS=1 python bench/algorithm_comparison.py --jobs 3         # three seeds at once, a thread each
    python bench/algorithm_comparison.py --keep /tmp/algcmp --algorithms dpo   # again, in the kept repos

Each experiment's figures go to stderr (and, with --keep, to DIR/results/<alg>-s<N>.json) as it
ends; one JSON line per algorithm on stdout once all its seeds are done; at the end one JSON line per
algorithm over every result in DIR/results (so a rerun of one algorithm completes the set):
{"algorithm", "seeds", "rev", <metric>: {"mean", "std"}, ..., "per_seed": {...}}. Each seed repo's
`dvc exp show --json` is written to DIR/exp_show-s<N>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import efficacy
from efficacy import overrides_from, project_at, summarise

from tests.support.pipeline_repo import dvc, make_repo, run

ALGORITHMS = ["ppo", "grpo", "rloo", "reinforce_pp", "dpo"]
UPSTREAM = [
    "bootstrap_policy",
    "collect_prompts",
    "sample_responses",
    "rank_responses",
    "store_comparisons",
    "train_reward",
    "train_cost",
]
EVAL_KEPT = re.compile(
    r"^(unseen_topic_)?(win_rate_vs_start|kl_to_start|share_.+_(start|final)|unsafe_share_(start|final)"
    r"|distinct_2_(start|final)|mean_reward_(start|final))$"
)
POLICY_KEPT = [
    "train_wall_s",
    "peak_rss_mb",
    "iterations",
    "kl",
    "score",
    "gold_score",
    "train_pairs",
    "held_out_accuracy_after",
    "held_out_margin_after",
]


def stages_of(output: str) -> tuple[list[str], list[str]]:
    """(stages run, stages skipped) from `dvc exp run`'s output."""
    ran = re.findall(r"Running stage '([^']+)'", output)
    skipped = re.findall(r"Stage '([^']+)' didn't change, skipping", output)
    skipped += re.findall(r"Stage '([^']+)' is cached - skipping run", output)  # run cache: restored, not run
    return ran, skipped


def record_of(repo: Path, seed: int, algorithm: str, wall: float, output: str) -> dict:
    """The figures of the experiment just run, read from the workspace."""
    import yaml

    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    policy = json.loads((repo / "metrics" / "policy.json").read_text())
    params = yaml.safe_load((repo / "params.yaml").read_text())["train_policy"]
    if policy.get("algorithm") != algorithm or evaluation.get("policy_algorithm") != algorithm:
        raise RuntimeError(f"seed {seed}: {algorithm}: the workspace holds {policy.get('algorithm')}'s metrics")
    record = {k: v for k, v in sorted(evaluation.items()) if EVAL_KEPT.match(k)}
    # The mean final share of every principle but on_topic, on the unseen topics (one column of the table).
    others = [
        v
        for k, v in evaluation.items()
        if re.fullmatch(r"unseen_topic_share_(.+)_final", k) and k != "unseen_topic_share_on_topic_final"
    ]
    if others:
        record["unseen_topic_share_other_principles_final"] = round(statistics.fmean(others), 4)
    record.update({k: policy[k] for k in POLICY_KEPT if k in policy})
    if algorithm == "dpo":
        record["dpo_epochs"] = params["dpo"]["epochs"]
        if "train_pairs" in policy:
            record["dpo_pairs_seen"] = policy["train_pairs"] * params["dpo"]["epochs"]
    else:
        record["episodes"] = policy["iterations"] * params["batch_size"]
        record["group_size"] = params["group_size"] if algorithm != "ppo" else 1
    ran, skipped = stages_of(output)
    record.update(exp_wall_s=round(wall, 1), stages_ran=ran, stages_skipped=skipped)
    return record


def run_seed(
    project: Path, scratch: Path, seed: int, algorithms: list[str], assignments: list[str], results: Path, done
) -> None:
    """Every algorithm's experiment in seed `seed`'s repository (made unless it is there from a --keep)."""
    repo = scratch / f"seed-{seed}"
    if not (repo / ".dvc").is_dir():
        make_repo(repo, project, overrides_from(assignments, seed), shrink=False)
    for algorithm in algorithms:
        name = f"{algorithm}-s{seed}"
        run([sys.executable, "-m", "dvc", "exp", "remove", name], repo, check=False)  # a rerun's name is free
        command = ["exp", "run", "--name", name]
        if algorithm != "ppo":
            command += ["-S", f"train_policy.algorithm={algorithm}"]
        elif (repo / "dvc.lock").exists():  # a rerun of ppo in a kept repo: set it back from the last -S
            command += ["-S", "train_policy.algorithm=ppo"]
        started = time.perf_counter()
        try:
            result = dvc(*command, cwd=repo)
        except AssertionError as error:
            (results / f"{name}.error.txt").write_text(str(error))
            print(f"FAILED {name}: {str(error)[-3000:]}", file=sys.stderr, flush=True)
            continue
        wall = time.perf_counter() - started
        (results / f"{name}.log").write_text(result.stdout + result.stderr)
        try:
            record = record_of(repo, seed, algorithm, wall, result.stdout + result.stderr)
        except Exception as error:
            print(f"FAILED reading {name}: {error!r}", file=sys.stderr, flush=True)
            continue
        (results / f"{name}.json").write_text(json.dumps(record, indent=1))
        print(f"{name}: {json.dumps(record)}", file=sys.stderr, flush=True)
        done(algorithm, seed, record)
    shown = dvc("exp", "show", "--json", cwd=repo).stdout
    (scratch / f"exp_show-s{seed}.json").write_text(shown)


def line_of(algorithm: str, per_seed: dict[int, dict], rev: str, assignments: list[str]) -> dict:
    seeds = sorted(per_seed)
    runs = [per_seed[s] for s in seeds]
    return {
        "algorithm": algorithm,
        "seeds": seeds,
        "rev": rev,
        "set": assignments,
        **summarise(runs),
        "per_seed": {str(s): per_seed[s] for s in seeds},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--algorithms",
        nargs="+",
        default=ALGORITHMS,
        choices=ALGORITHMS,
        help="in this order in each seed repo; ppo first makes the upstream stages",
    )
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--rev", default=None, help="a git revision to measure instead of this checkout")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (OMP_NUM_THREADS=1 each is kinder)")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="a directory to keep the seed repos, results and `dvc exp show` in; a second "
        "run with it reuses the repos there",
    )
    args = parser.parse_args()
    rev = args.rev or "checkout"
    with tempfile.TemporaryDirectory(prefix="algcmp-") as temporary:
        scratch = args.keep or Path(temporary)
        scratch.mkdir(parents=True, exist_ok=True)
        results = scratch / "results"
        results.mkdir(exist_ok=True)
        project = scratch / f"project-{args.rev}"
        if args.rev is None:
            project = efficacy.ROOT
        elif not project.is_dir():
            project = project_at(args.rev, scratch)
        lock, finished = threading.Lock(), {a: {} for a in args.algorithms}

        def done(algorithm: str, seed: int, record: dict) -> None:
            with lock:
                finished[algorithm][seed] = record
                if len(finished[algorithm]) == len(args.seeds):  # every seed of it: its line now
                    print(json.dumps(line_of(algorithm, finished[algorithm], rev, args.assignments)), flush=True)

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [
                pool.submit(run_seed, project, scratch, seed, args.algorithms, args.assignments, results, done)
                for seed in args.seeds
            ]
            for future in futures:
                future.result()
        print(f"all experiments: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        # The final lines: every result in DIR/results (this run's and any earlier run's in a kept DIR).
        for algorithm in ALGORITHMS:
            per_seed = {}
            for seed in args.seeds:
                path = results / f"{algorithm}-s{seed}.json"
                if path.exists():
                    per_seed[seed] = json.loads(path.read_text())
            if per_seed:
                print(json.dumps({"final": True, **line_of(algorithm, per_seed, rev, args.assignments)}), flush=True)


if __name__ == "__main__":
    main()
