"""The default pipeline over several seeds: the mean and std of every evaluation metric, as one JSON line.

Each seed runs the whole pipeline (`dvc repro`, every stage) in a fresh git + DVC copy of the
project with `seed: N` (and any `--set section.key=value`), one after another. What one seed gives
is one draw: the demo's figures move with the seed (SFT's data order and weights, the responses
sampled, PPO's prompts) and, for the same seed, with the machine's float rounding. The README
quotes this line, not one run.

    python bench/efficacy.py                       # seeds 0 1 2 of the code in this checkout
    python bench/efficacy.py --rev f4f0288         # the same for a past commit (git archive of it)
    python bench/efficacy.py --set train_policy.iterations=60 --seeds 0 1 2 3
    python bench/efficacy.py --rev HEAD --keep /tmp/seeds   # committed code only; the seed repos kept
    OMP_NUM_THREADS=1 python bench/efficacy.py --jobs 3     # the three seeds at once, a thread each
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf.machine import machine
from tests.support.pipeline_repo import dvc, make_repo


def overrides_from(assignments: list[str], seed: int) -> dict:
    """`section.key=value` pairs (value as YAML) into make_repo's per-section overrides, plus the seed."""
    import yaml

    sections: dict = {}
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        section, _, name = key.partition(".")
        sections.setdefault(section, {})[name] = yaml.safe_load(value)
    return {**sections, "seed": seed}


def project_at(rev: str | None, scratch: Path) -> Path:
    """This checkout, or the files of commit `rev` unpacked into `scratch`."""
    if rev is None:
        return ROOT
    target = scratch / f"project-{rev}"
    target.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def run_seed(project: Path, scratch: Path, seed: int, assignments: list[str]) -> tuple[dict, float]:
    """(metrics/eval.json, wall seconds of dvc repro) of the whole pipeline for one seed."""
    repo = make_repo(scratch / f"seed-{seed}", project, overrides_from(assignments, seed), shrink=False)
    started = time.perf_counter()
    dvc("repro", cwd=repo)
    wall = time.perf_counter() - started
    return json.loads((repo / "metrics" / "eval.json").read_text()), wall


def summarise(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and sample std of each numeric metric over the runs (std 0 for one run)."""
    names = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    summary = {}
    for name in names:
        values = [float(run[name]) for run in runs if run.get(name) is not None]
        if values:
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[name] = {"mean": round(statistics.fmean(values), 4), "std": round(std, 4)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--rev", default=None, help="a git revision to measure instead of this checkout")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once (OMP_NUM_THREADS=1 each is kinder)")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="an empty directory to keep each seed's repository in (for `dvc exp run` on it after)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="efficacy-") as temporary:
        scratch = args.keep or Path(temporary)
        project = project_at(args.rev, scratch)
        runs, walls = [], []
        # --jobs N: N seeds at once (each its own `dvc repro`); their walls then overlap and say little.
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            done = pool.map(lambda seed: run_seed(project, scratch, seed, args.assignments), args.seeds)
            for seed, (metrics, wall) in zip(args.seeds, done):
                runs.append(metrics)
                walls.append(round(wall, 1))
                print(f"seed {seed}: {wall:.0f} s, win rate {metrics.get('win_rate_vs_start')}", file=sys.stderr)
    line = {
        "bench": "efficacy",
        "rev": args.rev or "checkout",
        "seeds": args.seeds,
        "set": args.assignments,
        # Another CPU rounds floats differently, so a seed's figures hold for the machine that made them.
        "machine": machine(),
        "pipeline_wall_s": walls,
        "metrics": summarise(runs),
        # Each seed's figures too: a bad draw shows as itself, not only as a wide std.
        "per_seed": {str(seed): run for seed, run in zip(args.seeds, runs)},
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
