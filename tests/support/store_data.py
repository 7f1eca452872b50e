"""Small ranking and comparison frames for the store, reward-model and tracking tests."""

import pandas as pd

from rlhf.ranking import RANKING_COLUMNS
from rlhf.text import content_id


def ranking_frames(ranks_by_response):
    """Prompts, responses and rankings frames for one prompt whose responses got the given ranks."""
    prompt_id = content_id("p")
    prompts = pd.DataFrame([{"prompt_id": prompt_id, "prompt": "p", "topic": None, "split": "train", "source": "t"}])
    responses = pd.DataFrame(
        [
            {
                "response_id": rid,
                "prompt_id": prompt_id,
                "sample_index": i,
                "response": f"text {rid}",
                "policy_checkpoint": "c",
                "sampling": "{}",
            }
            for i, rid in enumerate(ranks_by_response)
        ]
    )
    rankings = pd.DataFrame(
        [
            {
                "ranking_id": "r1",
                "response_id": rid,
                "prompt_id": prompt_id,
                "rank": rank,
                "score": -float(rank),
                "reasons": "{}",
                "judge": "rules",
                "judge_version": "1",
            }
            for rid, rank in ranks_by_response.items()
        ]
    )
    return prompts, responses, rankings


def small_comparisons() -> pd.DataFrame:
    """12 prompts x 3 responses ranked by how often they say thanks; every fourth prompt held out."""
    rows = []
    for p in range(12):
        split = "test" if p % 4 == 0 else "train"
        texts = {f"r{p}-{i}": ("thanks , " * (3 - i)) + f"answer {p}" for i in range(3)}
        for a, b in [(0, 1), (0, 2), (1, 2)]:
            rows.append(
                (
                    f"k{p}",
                    f"p{p}",
                    f"r{p}-{a}",
                    f"r{p}-{b}",
                    f"prompt {p}",
                    texts[f"r{p}-{a}"],
                    texts[f"r{p}-{b}"],
                    float(b - a),
                    False,
                    split,
                    "rules",
                )
            )
    return pd.DataFrame(
        rows,
        columns=[
            "ranking_id",
            "prompt_id",
            "chosen_id",
            "rejected_id",
            "prompt",
            "chosen",
            "rejected",
            "margin",
            "tie",
            "split",
            "judge",
        ],
    )


K = 3  # responses per prompt in `frames`

# Rows as code before conversations wrote them: the store gives them their messages (schema 4).
PLAIN_RESPONSE_COLUMNS = ["response_id", "prompt_id", "sample_index", "response", "policy_checkpoint", "sampling"]


def frames(prefix: str, prompts: int, k: int = K):
    """prompts, responses and one AI ranking per prompt, with ids that start with `prefix`."""
    prompt_rows = [(f"{prefix}p{i}", f"prompt {prefix}{i}", None, "train", "test") for i in range(prompts)]
    responses, rankings = [], []
    for i in range(prompts):
        for j in range(k):
            response_id = f"{prefix}p{i}r{j}"
            responses.append((response_id, f"{prefix}p{i}", j, f"response {j}", "ckpt", "{}"))
            rankings.append((f"{prefix}k{i}", response_id, f"{prefix}p{i}", j + 1, float(-j), "{}", "rules", "1"))
    return (
        pd.DataFrame(prompt_rows, columns=["prompt_id", "prompt", "topic", "split", "source"]),
        pd.DataFrame(responses, columns=PLAIN_RESPONSE_COLUMNS),
        pd.DataFrame(rankings, columns=RANKING_COLUMNS),
    )
