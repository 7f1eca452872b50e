"""The evaluate stage: the trained policy against the start policy on held-out prompts, the reward
model against reward-free baselines on held-out pairs, and the markdown report of both.

The measures (win rate under the judge, KL, diversity, reward-model accuracy and baselines) are
also what train_policy's in-loop evaluation counts with. The report leads with the headline
(against the start, the judge named), then each principle, the curves, every figure, and the samples. ROUGE-L is written here (word-level LCS
F-measure, 15 lines) rather than taken from the `rouge-score` package, which would pull nltk and
absl in for one function.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf import chat
from rlhf.config import Params
from rlhf.judges import Judge, make_judge
from rlhf.judges.constitution import RuleJudge, is_unsafe, words
from rlhf.logprobs import response_logits
from rlhf.pretrained import load_policy, load_tokenizer, resolve_device
from rlhf.reward_models.ensemble import load_reward_model
from rlhf.reward_models.pairs import accuracy_on, pair_accuracy
from rlhf.sampling import Generation, batch_generator, sample_from_policy
from rlhf.scoring import score_exchanges


def lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 between two texts, on lower-cased words (Lin 2004)."""
    c, r = words(candidate), words(reference)
    lcs = lcs_length(c, r)
    if not lcs:
        return 0.0
    precision, recall = lcs / len(c), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def baseline_accuracies(pairs: pd.DataFrame) -> dict[str, float]:
    """Accuracy of two reward-free baselines on strict pairs: ROUGE-L against the prompt, and length."""
    rouge_c = [rouge_l(c, p) for c, p in zip(pairs["chosen"], pairs["prompt"])]
    rouge_r = [rouge_l(r, p) for r, p in zip(pairs["rejected"], pairs["prompt"])]
    return {
        "rouge_baseline_accuracy": pair_accuracy(rouge_c, rouge_r),
        "length_baseline_accuracy": pair_accuracy(
            [len(words(c)) for c in pairs["chosen"]], [len(words(r)) for r in pairs["rejected"]]
        ),
    }


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Unique n-grams over all n-grams across the texts (Li et al. 2016): low means collapse."""
    grams = [tuple(ws[i : i + n]) for ws in map(words, texts) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def win_rate(final_scores: list[float], start_scores: list[float]) -> float:
    """Share of paired samples where the final policy's response scores higher; ties count half."""
    return pair_accuracy(final_scores, start_scores)


@torch.no_grad()
def sequence_kl(policy, reference, generation: Generation, temperature: float) -> torch.Tensor:
    """KL(pi || pi_ref) of each whole response (nats), on the policy's own samples.  (B,)

    At each response position the KL between the two next-token distributions is computed exactly
    (a sum over the vocabulary) and summed along the response: by the chain rule its mean over
    sampled responses is an unbiased estimate of the sequence KL, like the sampled-token estimate
    sum_t log pi(a_t) - log pi_ref(a_t), but never negative and of much lower variance (that one
    read -0.36 nats on a policy that had barely moved).
    """
    args = (generation.query_ids, generation.query_mask, generation.response_ids, generation.response_mask)
    logp = torch.log_softmax(response_logits(policy, *args, temperature).float(), dim=-1)
    ref_logp = torch.log_softmax(response_logits(reference, *args, temperature).float(), dim=-1)
    per_position = (logp.exp() * (logp - ref_logp)).sum(-1)  # (B, T)
    return (per_position * generation.response_mask).sum(-1)


def pairwise_wins(judge, prompts: list[chat.Conversation], finals: list[str], starts: list[str]) -> list[float]:
    """1, 0.5 or 0 per prompt: whether a pairwise judge (llm, openai) prefers the final response,
    shown in both orders and averaged, as when it labels (rlhf.judges.pairwise)."""
    queries = [q for p, f, s in zip(prompts, finals, starts) for q in ((p, f, s), (p, s, f))]
    answers = judge.first_preferred(queries)
    preferences = [(answers[2 * i] + 1.0 - answers[2 * i + 1]) / 2.0 for i in range(len(prompts))]
    return [1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in preferences]


def wins_over_start(
    judge, prompts: list[chat.Conversation], topics: list, finals: list[str], starts: list[str], win_judge=None
) -> list[float]:
    """1, 0.5 or 0 per prompt: whether the final response beats the start's, by the rule judge's
    scores (`judge`) or by a pairwise judge (`win_judge`: llm, openai). The evaluate stage and
    PPO's in-loop evaluation both count wins here."""
    if win_judge is not None:
        return pairwise_wins(win_judge, prompts, finals, starts)
    asked = [chat.last_user_content(conversation) for conversation in prompts]  # what the rules read
    final_scores = [judge.score(p, t, r)[0] for p, t, r in zip(asked, topics, finals)]
    start_scores = [judge.score(p, t, r)[0] for p, t, r in zip(asked, topics, starts)]
    return [1.0 if f > s else 0.5 if f == s else 0.0 for f, s in zip(final_scores, start_scores)]


# What every batch of PolicyComparison holds per sample (with share_* and unsafe_share_* columns)
SAMPLE_COLUMNS = ["start_text", "final_text", "kl", "reward_start", "reward_final", "win"]


@dataclass
class PolicyComparison:
    """Both policies answer the same prompts, sampled as in training, and are compared; with
    `unsafe_words`, also whether each response is unsafe (the harmlessness check). In batches of
    `batch_size` prompts that can run in any process: batch i samples the start policy from
    batch_generator(seed, i, 1) and the trained one from batch_generator(seed, i, 2), so the
    samples are the same wherever and in whatever order the batches run.

    The win is the rule judge's (`judge`), or a pairwise judge's (`win_judge`: llm, openai),
    independent of whoever labelled the training data."""

    start: PreTrainedModel
    final: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    reward_model: PreTrainedModel
    reward_tokenizer: PreTrainedTokenizerBase
    judge: RuleJudge
    prompts: list  # conversations (a plain string is one user turn)
    topics: list
    max_new_tokens: int
    temperature: float
    unsafe_words: list[str] | None = None
    win_judge: Judge | None = None
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        self.prompts = [chat.as_conversation(prompt) for prompt in self.prompts]
        self.batches = [
            range(i, min(i + self.batch_size, len(self.prompts))) for i in range(0, len(self.prompts), self.batch_size)
        ]

    @torch.no_grad()
    def compare_batch(self, index: int) -> dict[str, pd.DataFrame]:
        """Batch `index`'s samples: both responses, and per sample the KL, both rewards, the win and
        each principle met (share_<name>_start / _final) and, with unsafe words, unsafe_share_*."""
        rows = self.batches[index]
        prompts, topics = [self.prompts[i] for i in rows], [self.topics[i] for i in rows]
        rendered = [chat.render_prompt(self.tokenizer, conversation) for conversation in prompts]
        device = next(self.start.parameters()).device
        draw = {
            "start": batch_generator(self.seed, index, device, 1),
            "final": batch_generator(self.seed, index, device, 2),
        }
        sample = {
            when: sample_from_policy(
                model, self.tokenizer, rendered, self.max_new_tokens, self.temperature, generator=draw[when]
            )
            for when, model in (("start", self.start), ("final", self.final))
        }
        start_gen, final_gen = sample["start"], sample["final"]
        asked = [chat.last_user_content(conversation) for conversation in prompts]  # what the rules read
        columns = {
            "start_text": start_gen.texts,
            "final_text": final_gen.texts,
            "kl": sequence_kl(self.final, self.start, final_gen, self.temperature).tolist(),
            "reward_start": score_exchanges(
                self.reward_model, self.reward_tokenizer, prompts, start_gen.texts
            ).tolist(),
            "reward_final": score_exchanges(
                self.reward_model, self.reward_tokenizer, prompts, final_gen.texts
            ).tolist(),
            "win": wins_over_start(self.judge, prompts, topics, final_gen.texts, start_gen.texts, self.win_judge),
        }
        for when, gen in sample.items():
            for n, (response, prompt, topic) in enumerate(zip(gen.texts, asked, topics)):
                for name, met in self.judge.check(prompt, topic, response).items():
                    columns.setdefault(f"share_{name}_{when}", [0.0] * len(asked))[n] = float(met)
            if self.unsafe_words:
                columns[f"unsafe_share_{when}"] = [float(is_unsafe(r, self.unsafe_words)) for r in gen.texts]
        return {"samples": pd.DataFrame(columns)}


def summarize_comparison(samples: pd.DataFrame, groups: dict[str, list[bool]] | None = None) -> dict[str, float]:
    """The means of PolicyComparison's samples (win rate, KL, rewards, shares) and distinct-2 of both
    policies' responses; `groups` (name -> which samples) repeats every measure on those samples,
    prefixed with the name (e.g. unseen_topic_win_rate_vs_start)."""
    measures = [name for name in samples.columns if not name.endswith("_text")]

    def summary(rows: list[int]) -> dict[str, float]:
        mean = {name: float(samples[name].iloc[rows].sum()) / max(len(rows), 1) for name in measures}
        return {
            "win_rate_vs_start": mean.pop("win"),
            "kl_to_start": mean.pop("kl"),
            "mean_reward_start": mean.pop("reward_start"),
            "mean_reward_final": mean.pop("reward_final"),
            "distinct_2_start": distinct_n([samples["start_text"].iloc[i] for i in rows]),
            "distinct_2_final": distinct_n([samples["final_text"].iloc[i] for i in rows]),
            **mean,
        }

    metrics = summary(list(range(len(samples))))
    for group, members in (groups or {}).items():
        rows = [i for i, member in enumerate(members) if member]
        metrics[f"{group}_prompts"] = len(rows)
        if rows:
            metrics.update({f"{group}_{name}": value for name, value in summary(rows).items()})
    return metrics


def compare_policies(
    start: PreTrainedModel,
    final: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward_model: PreTrainedModel,
    reward_tokenizer: PreTrainedTokenizerBase,
    judge: RuleJudge,
    prompts: list[chat.Conversation],
    topics: list,
    max_new_tokens: int,
    temperature: float,
    unsafe_words: list[str] | None = None,
    win_judge=None,
    groups: dict[str, list[bool]] | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> tuple[dict[str, float], list[str], list[str]]:
    """PolicyComparison's every batch in this process, summarized (summarize_comparison).
    Returns (metrics, start responses, final responses)."""
    comparison = PolicyComparison(
        start,
        final,
        tokenizer,
        reward_model,
        reward_tokenizer,
        judge,
        prompts,
        topics,
        max_new_tokens,
        temperature,
        unsafe_words,
        win_judge,
        batch_size,
        seed,
    )
    samples = pd.concat(
        [comparison.compare_batch(i)["samples"] for i in range(len(comparison.batches))], ignore_index=True
    )
    return summarize_comparison(samples, groups), list(samples["start_text"]), list(samples["final_text"])


def reward_model_vs_baselines(
    reward_model: PreTrainedModel, reward_tokenizer: PreTrainedTokenizerBase, comparisons: pd.DataFrame
) -> dict[str, float]:
    """On the given comparisons' strict pairs: the reward model's accuracy beside ROUGE-L and length."""
    strict = comparisons[~comparisons["tie"]]
    accuracy, pairs = accuracy_on(reward_model, reward_tokenizer, strict)
    return {"rm_accuracy": accuracy, "rm_test_pairs": pairs, **baseline_accuracies(strict)}


def win_judge_of(params: Params, device: torch.device) -> Judge | None:
    """The pairwise judge `evaluate.judge` names (llm, openai), told rank_responses' principles;
    None for the rules, whose scores decide the wins."""
    section = params.evaluate
    if section.judge == "rules":
        return None
    judge_params = params.rank_responses.model_copy(update={"llm": section.llm, "openai": section.openai})
    return make_judge(judge_params, device, kind=section.judge)


def feedback_quality(rank: dict, feedback: dict) -> dict:
    """The judge's position bias and how far judges agree, flattened for metrics/eval.json."""
    agreement = feedback.get("agreement", {})
    quality = {"judge_position_bias_rate": rank.get("position_bias_rate")}
    for judge, figures in agreement.get("ai_vs_human", {}).items():
        quality.update({f"ai_vs_human_{judge}_{k}": v for k, v in figures.items()})
    for key, value in (agreement.get("inter_annotator") or {}).items():
        quality[f"inter_annotator_{key}"] = value
    return quality


@dataclass
class Evaluation:
    """What the evaluate stage measured: metrics/eval.json's figures and the samples the report shows."""

    metrics: dict
    prompts: list[str]  # the held-out prompts' texts, each evaluate.samples_per_prompt times in a row
    before: list[str]  # the start policy's response to each
    after: list[str]  # the trained policy's


@dataclass
class HeldOut:
    """The held-out prompts an evaluation answers: each test-split prompt samples_per_prompt times in
    a row, by prompt_id, with the groups its measures repeat on."""

    texts: list[str]
    conversations: list
    topics: list
    groups: dict[str, list[bool]]  # unseen_topic: a topic no training prompt has; seen_topic: the others
    prompt_count: int

    @classmethod
    def of(cls, prompts: pd.DataFrame, samples_per_prompt: int) -> HeldOut:
        held_out = prompts[prompts["split"] == "test"].sort_values("prompt_id")
        rows = held_out.loc[held_out.index.repeat(samples_per_prompt)]
        topics = [None if pd.isna(t) else t for t in rows["topic"]]
        train_topics = set(prompts.loc[prompts["split"] == "train", "topic"].dropna())
        groups = {
            "unseen_topic": [t is not None and t not in train_topics for t in topics],
            "seen_topic": [t is None or t in train_topics for t in topics],
        }
        return cls(list(rows["prompt"]), chat.conversations_of(rows), topics, groups, len(held_out))


def policy_comparison(
    params: Params,
    held_out: HeldOut,
    start_dir: str | Path,
    policy_dir: str | Path,
    reward_dir: str | Path,
    device: torch.device,
) -> PolicyComparison:
    """The trained policy (`policy_dir`) against the start (`start_dir`) on `held_out`, scored by the
    reward model (`reward_dir`) and judged by evaluate.judge."""
    reward_tokenizer = load_tokenizer(reward_dir)
    return PolicyComparison(
        load_policy(start_dir, device).eval(),
        load_policy(policy_dir, device).eval(),
        load_tokenizer(start_dir),
        load_reward_model(reward_dir, device, reward_tokenizer.pad_token_id).eval(),
        reward_tokenizer,
        RuleJudge(params.rank_responses.principles),
        held_out.conversations,
        held_out.topics,
        params.train_policy.max_new_tokens,
        params.train_policy.temperature,
        params.rank_responses.unsafe_words,
        win_judge=win_judge_of(params, device),
        batch_size=params.evaluate.batch_size,
        seed=params.seed,
    )


def finish_evaluation(
    params: Params,
    held_out: HeldOut,
    comparison: PolicyComparison,
    samples: pd.DataFrame,
    comparisons: pd.DataFrame,
    trained: dict,
    rank_metrics: dict,
    feedback_metrics: dict,
) -> Evaluation:
    """metrics/eval.json's figures from the comparison's samples (every batch's), the reward model
    against ROUGE-L and length on the test split of `comparisons`, and what train_policy,
    rank_responses and store_comparisons measured (`trained`, `rank_metrics`, `feedback_metrics`)."""
    with torch.no_grad():
        rm_metrics = reward_model_vs_baselines(
            comparison.reward_model, comparison.reward_tokenizer, comparisons[comparisons["split"] == "test"]
        )
    win_judge = comparison.win_judge
    metrics = {
        # Which algorithm made the policy and how long it trained: `dvc exp show` puts a PPO and a DPO
        # experiment side by side on the same held-out prompts.
        "policy_algorithm": trained.get("algorithm", "ppo"),
        "policy_train_wall_s": trained.get("train_wall_s"),
        "held_out_prompts": held_out.prompt_count,
        "win_judge": params.evaluate.judge if win_judge is None else f"{params.evaluate.judge}:{win_judge.version}",
        **summarize_comparison(samples, held_out.groups),
        **rm_metrics,
        **feedback_quality(rank_metrics, feedback_metrics),
    }
    metrics = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    return Evaluation(metrics, held_out.texts, list(samples["start_text"]), list(samples["final_text"]))


def evaluate(
    params: Params,
    prompts: pd.DataFrame,
    comparisons: pd.DataFrame,
    start_dir: str | Path,
    policy_dir: str | Path,
    reward_dir: str | Path,
    trained: dict,
    rank_metrics: dict,
    feedback_metrics: dict,
) -> Evaluation:
    """The trained policy (`policy_dir`) against the start (`start_dir`) on the test split of
    `prompts`, scored by the reward model (`reward_dir`) and judged by evaluate.judge, with the
    held-out prompts on topics no training prompt has counted apart (unseen_topic_*); the reward
    model against ROUGE-L and length on the test split of `comparisons`, every batch in this
    process. `trained`, `rank_metrics` and `feedback_metrics` are the metrics files of
    train_policy, rank_responses and store_comparisons."""
    held_out = HeldOut.of(prompts, params.evaluate.samples_per_prompt)
    comparison = policy_comparison(params, held_out, start_dir, policy_dir, reward_dir, resolve_device(params.device))
    batches = [comparison.compare_batch(i)["samples"] for i in range(len(comparison.batches))]
    samples = pd.concat(batches, ignore_index=True) if batches else pd.DataFrame(columns=SAMPLE_COLUMNS)
    return finish_evaluation(
        params, held_out, comparison, samples, comparisons, trained, rank_metrics, feedback_metrics
    )


def _cell(text: str) -> str:
    # Model text is shown as text: escape HTML and the table's own separator.
    return html.escape(text).replace("|", "\\|").replace("\n", " ") or "(empty)"


def _figure(value) -> str:
    return "n/a" if value is None else str(value)


def principle_names(metrics: dict) -> list[str]:
    """The constitution's principles the rules checked: each has share_<name>_start and _final."""
    return sorted(
        match.group(1)
        for key in metrics
        if (match := re.fullmatch(r"share_(.+)_start", key)) and f"share_{match.group(1)}_final" in metrics
    )


def headline_section(metrics: dict) -> list[str]:
    """The figures to read first: the trained policy against the start, under the named judge, and
    the reward model against reward-free baselines."""
    judge = metrics.get("win_judge", "rules")
    trained = f"{metrics.get('policy_algorithm', 'the trained policy')}"
    if metrics.get("policy_train_wall_s") is not None:
        trained += f", {metrics['policy_train_wall_s']} s of training"
    responses = (metrics.get("unseen_topic_prompts") or 0) + (metrics.get("seen_topic_prompts") or 0)
    lines = [
        "## Headline",
        "",
        f"The trained policy ({trained}) against the start policy on {_figure(metrics.get('held_out_prompts'))} "
        "held-out prompts" + (f" ({responses} responses from each)" if responses else "") + ", "
        f"the win rate judged by **{judge}**. The start is its own baseline: it ties with itself "
        "(win rate 0.5) at KL 0.",
        "",
        "| measure | start | trained |",
        "| --- | --- | --- |",
        f"| win rate against the start (judge: {judge}) | 0.5 | {_figure(metrics.get('win_rate_vs_start'))} |",
    ]
    if metrics.get("unseen_topic_prompts"):
        lines.append(
            f"| win rate on topics no training prompt has ({metrics['unseen_topic_prompts']} responses) | 0.5 "
            f"| {_figure(metrics.get('unseen_topic_win_rate_vs_start'))} |"
        )
    lines += [
        f"| KL to the start (nats per response) | 0 | {_figure(metrics.get('kl_to_start'))} |",
        f"| mean reward-model score | {_figure(metrics.get('mean_reward_start'))} "
        f"| {_figure(metrics.get('mean_reward_final'))} |",
    ]
    if "unsafe_share_start" in metrics:
        lines.append(
            f"| share of unsafe responses | {metrics['unsafe_share_start']} | {_figure(metrics.get('unsafe_share_final'))} |"
        )
    lines += [
        f"| distinct-2 (diversity) | {_figure(metrics.get('distinct_2_start'))} "
        f"| {_figure(metrics.get('distinct_2_final'))} |",
        "",
        f"| reward model, on {_figure(metrics.get('rm_test_pairs'))} held-out pairs | accuracy |",
        "| --- | --- |",
        f"| reward-model accuracy | {_figure(metrics.get('rm_accuracy'))} |",
        f"| baseline: ROUGE-L with the prompt | {_figure(metrics.get('rouge_baseline_accuracy'))} |",
        f"| baseline: the longer response | {_figure(metrics.get('length_baseline_accuracy'))} |",
        "",
    ]
    return lines


def principle_section(metrics: dict) -> list[str]:
    """Each principle's share of responses that meet it, before and after, overall and by topic group."""
    names = principle_names(metrics)
    if not names:
        return []
    groups = [g for g in ("unseen_topic", "seen_topic") if metrics.get(f"{g}_prompts")]
    header = "| principle | start | trained |" + "".join(f" {g.replace('_', ' ')}s: start | trained |" for g in groups)
    lines = [
        "## Per principle",
        "",
        "Share of the held-out responses that meet each principle of the constitution, by the rules.",
        "",
        header,
        "| --- " * (3 + 2 * len(groups)) + "|",
    ]
    for name in names:
        cells = [metrics[f"share_{name}_start"], metrics[f"share_{name}_final"]]
        for group in groups:
            cells += [metrics.get(f"{group}_share_{name}_start"), metrics.get(f"{group}_share_{name}_final")]
        lines.append(f"| {name} | " + " | ".join(_figure(c) for c in cells) + " |")
    return [*lines, ""]


def markdown_report(
    metrics: dict,
    prompts: list[str],
    before: list[str],
    after: list[str],
    samples: int,
    stride: int,
    figures: list[tuple[str, str]] = (),
) -> str:
    """The evaluation report, most read first: the headline (win rate under the named judge, KL and
    reward against the start, the reward model's accuracy), each principle, the curves (`figures`:
    caption, image path relative to the report), every figure of metrics/eval.json, and last
    `samples` held-out prompts (every `stride`-th row) with the responses before and after."""
    lines = ["# Evaluation report", "", *headline_section(metrics), *principle_section(metrics)]
    if figures:
        lines += ["## Curves", ""]
        for caption, path in figures:
            lines += [f"![{caption}]({path})", "", f"_{caption}_", ""]
    lines += ["## Every figure (metrics/eval.json)", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {key} | {_figure(value)} |" for key, value in sorted(metrics.items())]
    lines += ["", "## Held-out prompts: the start policy before, the trained policy after", ""]
    lines += ["| prompt | before | after |", "| --- | --- | --- |"]
    for i in range(0, min(len(prompts), samples * stride), stride):
        lines.append(f"| {_cell(prompts[i])} | {_cell(before[i])} | {_cell(after[i])} |")
    return "\n".join(lines) + "\n"


def write_report(
    path: str | Path, evaluation: Evaluation, samples: int, stride: int, pictures: list[tuple[str, Path]]
) -> None:
    """The report as markdown at `path`, its pictures (caption, PNG) linked relative to it so the
    page renders where it lies; a picture that is not there (a stage run by hand) is left out."""
    path = Path(path)
    figures = [
        (caption, os.path.relpath(picture, path.parent)) for caption, picture in pictures if Path(picture).is_file()
    ]
    report = markdown_report(
        evaluation.metrics, evaluation.prompts, evaluation.before, evaluation.after, samples, stride, figures
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
