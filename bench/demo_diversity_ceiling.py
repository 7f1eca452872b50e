"""How much distinct-2 the demo's own responses keep once they meet the principles: one JSON line.

evaluate reports distinct-2 (Li et al. 2016: unique bigrams over all bigrams, pooled over the
responses) on the unseen-topic prompts, for the start policy and the final one. The start policy
imitates the demonstrations, whose quality axes are drawn independently (rlhf/demo/domain.py):
polite or plain opener, on the topic or another, banned word or not, a tip or not, 1-5 facts. A
policy that met every principle with exactly the demonstrations' variety would sample those same
responses restricted to the ones the rules pass. This script draws both from the domain's own
generator, as many responses a prompt as evaluate samples (evaluate.samples_per_prompt), for many
draws, and prints the mean and std of each one's distinct-2 and their ratio: the ceiling the
domain puts on "distinct-2 within x% of the start" for a policy that meets every principle.

    python bench/demo_diversity_ceiling.py [--draws 20] [--params params.yaml]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf.config import load_params
from rlhf.demo import domain
from rlhf.evaluation import distinct_n
from rlhf.judges.constitution import RuleJudge, is_unsafe

MAX_DRAWS = 10_000  # per kept response; the demo's strictest restriction keeps 1 in 33 (0.030)
Keep = Callable[[dict[str, bool], bool], bool]  # (principles met, unsafe) -> keep the response


def draw_responses(
    rng: random.Random, judge: RuleJudge, unsafe_words: list[str], per_prompt: int, keep: Keep
) -> list[str]:
    """`per_prompt` demonstration-distribution responses for each unseen-topic prompt, redrawn until `keep`."""
    responses = []
    for prompt, topic in domain.all_prompts():
        if topic not in domain.UNSEEN_TOPICS:
            continue
        for _ in range(per_prompt):
            for _attempt in range(MAX_DRAWS):
                response = domain.sample_response(topic, rng)
                if keep(judge.check(prompt, topic, response), is_unsafe(response, unsafe_words)):
                    responses.append(response)
                    break
            else:  # principles no demonstration meets (edited params.yaml): say so rather than spin
                sys.exit(f"no demonstration for {prompt!r} passed the restriction in {MAX_DRAWS} draws")
    return responses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    judge = RuleJudge(params.rank_responses.principles)
    per_prompt = params.evaluate.samples_per_prompt
    unsafe_words = params.rank_responses.unsafe_words
    restrictions: dict[str, Keep] = {
        "demonstrations": lambda met, unsafe: True,
        "every_principle": lambda met, unsafe: all(met.values()),
        "every_principle_but_on_topic": lambda met, unsafe: all(v for k, v in met.items() if k != "on_topic"),
        "every_principle_and_safe": lambda met, unsafe: all(met.values()) and not unsafe,
    }
    line: dict = {"bench": "demo_diversity_ceiling", "draws": args.draws, "responses_per_prompt": per_prompt}
    for name, keep in restrictions.items():
        values = [
            distinct_n(draw_responses(random.Random(d), judge, unsafe_words, per_prompt, keep))
            for d in range(args.draws)
        ]
        line[name] = {"mean": round(statistics.fmean(values), 4), "std": round(statistics.stdev(values), 4)}
    base = line["demonstrations"]["mean"]
    line["ratio_to_demonstrations"] = {name: round(line[name]["mean"] / base, 3) for name in restrictions}
    print(json.dumps(line))


if __name__ == "__main__":
    main()
