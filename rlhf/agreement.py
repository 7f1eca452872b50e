"""Agreement between judges on the pairs they both labelled: AI vs people, and person vs person.

A pair's label is +1 (the response with the smaller id is better), -1 (the other), or 0 (a tie).
Accuracy is the share of equal labels; Cohen's kappa corrects it for the agreement that the two
raters' label frequencies alone would give (Cohen 1960): (p_o - p_e) / (1 - p_e).

Over the items that several people ranked, Krippendorff's alpha (ordinal) compares the ranks
themselves: each (item, response) is a unit, each person's rank of it a value, and rank 1 vs 3
counts as a bigger disagreement than 1 vs 2 (Krippendorff 2004, via the `krippendorff` package).

Each annotator is compared with the consensus of the others: for each pair they labelled, the
majority label of the other people who labelled it (a pair whose vote ties is left out). Leaving
the annotator out keeps them from agreeing with themselves; with two people, the consensus of each
is the other. Annotators whose kappa with that consensus is under LOW_AGREEMENT_KAPPA, over at
least MIN_CONSENSUS_PAIRS pairs, are listed as low-agreement.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from rlhf.cli_choices import LOW_AGREEMENT_KAPPA

HUMAN = "human"
MIN_CONSENSUS_PAIRS = 5  # fewer pairs say too little to call anyone out


def cohen_kappa(first: list[int], second: list[int]) -> float:
    n = len(first)
    if n == 0:
        return float("nan")
    observed = sum(a == b for a, b in zip(first, second)) / n
    counts_first, counts_second = Counter(first), Counter(second)
    expected = sum(counts_first[k] * counts_second[k] for k in counts_first) / n**2
    return 1.0 if expected == 1.0 else (observed - expected) / (1.0 - expected)


def _agreement(merged: pd.DataFrame) -> dict:
    first, second = list(merged["label_x"]), list(merged["label_y"])
    return {
        "pairs": len(merged),
        "accuracy": round(sum(a == b for a, b in zip(first, second)) / len(merged), 4) if len(merged) else None,
        "kappa": round(cohen_kappa(first, second), 4) if len(merged) else None,
    }


def krippendorff_alpha(ranks: pd.DataFrame) -> dict | None:
    """Ordinal alpha over the items that two or more people ranked, from (item, response_id,
    annotator, rank) rows; None when no item has two people or every rank given is the same."""
    import krippendorff

    people_per_item = ranks.groupby("item")["annotator"].nunique()
    shared = ranks[ranks["item"].isin(people_per_item[people_per_item >= 2].index)]
    if shared.empty or shared["rank"].nunique() < 2:
        return None
    table = shared.pivot_table(index="annotator", columns=["item", "response_id"], values="rank", aggfunc="first")
    alpha = krippendorff.alpha(reliability_data=table.to_numpy(dtype=float), level_of_measurement="ordinal")
    return {"items": int(shared["item"].nunique()), "alpha": round(float(alpha), 4)}


def consensus_labels(human: pd.DataFrame, annotator: str) -> pd.DataFrame:
    """(a, b, label): the majority label of everyone but `annotator` on each pair, ties in the vote left out."""
    others = human[human["judge_version"] != annotator]
    votes = others.groupby(["a", "b", "label"]).size().rename("votes").reset_index()
    top = votes.groupby(["a", "b"])["votes"].transform("max")
    winners = votes[votes["votes"] == top]
    unique = winners.groupby(["a", "b"])["label"].transform("size") == 1
    return winners[unique][["a", "b", "label"]]


def annotator_report(labels: pd.DataFrame) -> dict:
    """Per annotator: pairs labelled, agreement with the others' consensus, and with each AI judge."""
    human = labels[labels["judge"] == HUMAN]
    ai = labels[labels["judge"] != HUMAN]
    report = {}
    for name, own in human.groupby("judge_version", sort=True):
        own = own.drop_duplicates(["a", "b"])  # one label per pair (a pair may sit in two queue items)
        with_consensus = own.merge(consensus_labels(human, name), on=["a", "b"])
        report[name] = {
            "pairs": len(own),
            "consensus": _agreement(with_consensus) if len(with_consensus) else None,
            "ai": {
                judge: _agreement(merged)
                for judge, judged in ai.groupby("judge", sort=True)
                if len(merged := own.merge(judged, on=["a", "b"]))
            },
        }
    return report


def low_agreement(annotators: dict, kappa_below: float, min_pairs: int) -> list[str]:
    return [
        name
        for name, figures in annotators.items()
        if (consensus := figures["consensus"]) and consensus["pairs"] >= min_pairs and consensus["kappa"] < kappa_below
    ]


def agreement_report(
    labels: pd.DataFrame,
    ranks: pd.DataFrame | None = None,
    kappa_below: float = LOW_AGREEMENT_KAPPA,
    min_pairs: int = MIN_CONSENSUS_PAIRS,
) -> dict:
    """From the store's pair labels (a, b, judge, judge_version, label): AI-vs-human agreement per AI
    judge, and inter-annotator agreement over every two people who labelled the same pair. With
    the people's ranks (FeedbackStore.human_ranks) also Krippendorff's alpha, each annotator's
    agreement with the consensus and with the AI judges, and who agrees little."""
    human = labels[labels["judge"] == HUMAN]
    report: dict = {"ai_vs_human": {}, "inter_annotator": None}
    for judge, ai in labels[labels["judge"] != HUMAN].groupby("judge", sort=True):
        merged = ai.merge(human, on=["a", "b"])
        if len(merged):
            report["ai_vs_human"][judge] = _agreement(merged)
    people = human.merge(human, on=["a", "b"])
    people = people[people["judge_version_x"] < people["judge_version_y"]]
    if len(people):
        report["inter_annotator"] = _agreement(people)
    if ranks is None:
        return report
    alpha = krippendorff_alpha(ranks)
    if report["inter_annotator"] is not None and alpha is not None:
        report["inter_annotator"].update(items=alpha["items"], krippendorff_alpha=alpha["alpha"])
    report["annotators"] = annotator_report(labels)
    report["low_agreement"] = {
        "kappa_below": kappa_below,
        "min_pairs": min_pairs,
        "annotators": low_agreement(report["annotators"], kappa_below, min_pairs),
    }
    return report
