"""K-wise reward batching (InstructGPT) against plain pairs, and the held-out report's figures."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from rlhf.demo.tokenizer import train_tokenizer
from rlhf.reward_models.kwise import (
    Ranking,
    RankingBatch,
    RankingCollator,
    as_pairs,
    pair_layout,
    ranking_loss,
    rankings_from_comparisons,
)
from rlhf.reward_models.report import accuracy, expected_calibration_error, reward_report
from tests.support.store_data import small_comparisons


def test_collator_lays_out_texts_pairs_and_weights(tiny_tokenizer):
    eos = tiny_tokenizer.eos_token  # texts arrive rendered (rlhf.scoring): the template wrote EOS
    texts = [f"{t}{eos}" for t in ("a b", "b", "c c c", "x", "y y")]
    rankings = [Ranking(tuple(texts[:3]), ((0, 1), (0, 2), (1, 2))), Ranking(tuple(texts[3:]), ((1, 0),))]
    batch = RankingCollator(tiny_tokenizer, max_length=16)(rankings)
    assert batch.input_ids.shape[0] == 5  # every text once, rankings one after another
    assert batch.winners.tolist() == [0, 0, 1, 4] and batch.losers.tolist() == [1, 2, 2, 3]
    assert batch.pair_weights.tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])  # each ranking weighs 1/2
    lengths = batch.attention_mask.sum(dim=1)
    last_tokens = batch.input_ids[torch.arange(5), lengths - 1]
    assert (last_tokens == tiny_tokenizer.eos_token_id).all()  # EOS kept, not doubled; padding on the right
    assert batch.attention_mask[:, 0].all()


def test_kwise_and_pairwise_losses_agree_on_a_single_pair_and_kwise_averages_a_ranking():
    rewards = torch.tensor([1.5, -0.25, 0.5])
    one_pair = Ranking(("a", "b"), ((0, 1),))
    batch = _layout([one_pair])
    expected = -F.logsigmoid(torch.tensor(1.5 - -0.25))
    assert ranking_loss(rewards[:2], batch).item() == pytest.approx(expected.item())
    three = Ranking(("a", "b", "c"), ((0, 1), (0, 2), (2, 1)))
    kwise = ranking_loss(rewards, _layout([three])).item()
    pair_losses = [-F.logsigmoid(rewards[w] - rewards[loser]).item() for w, loser in three.pairs]
    assert kwise == pytest.approx(sum(pair_losses) / 3)
    pairwise = as_pairs([three])
    assert [r.pairs for r in pairwise] == [((0, 1),)] * 3
    assert [r.texts for r in pairwise] == [("a", "b"), ("a", "c"), ("c", "b")]


def _layout(rankings):
    """A batch of the rankings' pair layout alone: the rewards are given, nothing is tokenised."""
    empty = torch.zeros(0)
    return RankingBatch(empty, empty, *pair_layout(rankings))


def test_rankings_are_rebuilt_from_the_snapshots_pairs_without_ties():
    frame = pd.DataFrame(
        [
            ("k1", "p", "r1", "r2", "good", "bad", False),
            ("k1", "p", "r1", "r3", "good", "meh", False),
            ("k1", "p", "r3", "r2", "meh", "bad", True),  # a tie: no preference
            ("k2", "q", "s2", "s1", "yes", "no", False),
        ],
        columns=["ranking_id", "prompt", "chosen_id", "rejected_id", "chosen", "rejected", "tie"],
    )
    tokenizer = train_tokenizer(["p good bad meh q yes no"], vocab_size=300)  # the demo's chat template
    first, second = rankings_from_comparisons(frame, tokenizer)
    eos = tokenizer.eos_token
    assert first.texts == (f"p good{eos}", f"p bad{eos}", f"p meh{eos}") and first.pairs == ((0, 1), (0, 2))
    assert second.texts == (f"q no{eos}", f"q yes{eos}") and second.pairs == ((1, 0),)


def test_calibration_error_and_report_by_judge_and_margin():
    assert expected_calibration_error(np.array([0.9, 0.9, 0.9, 0.9])) == pytest.approx(0.1)  # 90% sure, all right
    assert expected_calibration_error(np.array([0.75, 0.25])) == pytest.approx(0.25)  # 75% sure, half right
    assert accuracy(np.array([1.0, -1.0, 0.0, 2.0])) == pytest.approx(0.625)
    pairs = pd.DataFrame({"judge": ["human", "rules", "rules"], "margin": [0.5, 1.5, 3.0]})
    report = reward_report(pairs, np.array([1.0, 0.0, 2.0]), np.array([0.0, 1.0, 1.0]))
    assert report["test_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["accuracy_human"] == 1.0 and report["accuracy_rules"] == 0.5
    assert (report["accuracy_margin_0_1"], report["accuracy_margin_1_2"], report["accuracy_margin_2_up"]) == (
        1.0,
        0.0,
        1.0,
    )
    assert report["test_ece"] == pytest.approx(abs(1 / (1 + math.exp(-1)) - 2 / 3), abs=1e-4)


def test_lora_reward_model_trains_adapters_and_saves_a_plain_merged_model(tiny_checkpoints, tmp_path):
    from rlhf.config import TrainRewardParams
    from rlhf.pretrained import load_scalar_head_model
    from rlhf.reward_models.train import train_reward_model

    policy_dir, _ = tiny_checkpoints
    comparisons = small_comparisons()
    params = TrainRewardParams(batching="kwise", epochs=2, batch_size=3, learning_rate=1e-3, max_length=32, lora_rank=2)
    metrics = train_reward_model(comparisons, policy_dir, params, 0, torch.device("cpu"), tmp_path / "rm")
    assert metrics["test_pairs"] == 9 and metrics["test_accuracy"] > 0.5  # "thanks" counts: above chance
    saved = load_scalar_head_model(tmp_path / "rm", torch.device("cpu"), 0)
    start = load_scalar_head_model(policy_dir, torch.device("cpu"), 0)
    assert not any("lora" in name for name, _ in saved.named_parameters())  # merged: a plain model
    # LoRA leaves the embeddings alone and changes the linear layers by a low-rank delta.
    assert torch.equal(saved.transformer.wte.weight, start.transformer.wte.weight)
    delta = saved.transformer.h[0].attn.c_attn.weight - start.transformer.h[0].attn.c_attn.weight
    assert 0 < torch.linalg.matrix_rank(delta).item() <= 2


def test_reward_ensemble_scores_with_the_mean_of_its_members(tiny_checkpoints, tmp_path):
    from rlhf.config import TrainRewardParams
    from rlhf.pretrained import load_scalar_head_model, load_tokenizer
    from rlhf.reward_models.ensemble import RewardEnsemble, load_reward_model
    from rlhf.reward_models.train import train_reward_model
    from rlhf.scoring import score_texts

    policy_dir, _ = tiny_checkpoints
    params = TrainRewardParams(batching="kwise", epochs=2, batch_size=3, learning_rate=1e-3, max_length=32, ensemble=3)
    metrics = train_reward_model(small_comparisons(), policy_dir, params, 0, torch.device("cpu"), tmp_path / "rm")
    assert metrics["ensemble"] == 3 and metrics["member_test_accuracy_mean"] > 0.5  # above chance
    assert sorted(p.name for p in (tmp_path / "rm").iterdir() if p.is_dir()) == ["member-1", "member-2"]
    tokenizer = load_tokenizer(tmp_path / "rm")
    ensemble = load_reward_model(tmp_path / "rm", torch.device("cpu"), tokenizer.pad_token_id)
    assert isinstance(ensemble, RewardEnsemble) and len(ensemble.members) == 3
    texts = ["prompt 1 thanks , answer 1", "prompt 1 answer 1"]
    members = [
        score_texts(
            load_scalar_head_model(tmp_path / "rm" / name, torch.device("cpu"), tokenizer.pad_token_id),
            tokenizer,
            texts,
        )
        for name in (".", "member-1", "member-2")
    ]
    assert not torch.allclose(members[0], members[1])  # different seeds: different models
    assert torch.allclose(score_texts(ensemble, tokenizer, texts), torch.stack(members).mean(0), atol=1e-6)
    # one model stays one model
    single = train_reward_model(
        small_comparisons(),
        policy_dir,
        params.model_copy(update={"ensemble": 1}),
        0,
        torch.device("cpu"),
        tmp_path / "one",
    )
    assert "ensemble" not in single
    assert not isinstance(
        load_reward_model(tmp_path / "one", torch.device("cpu"), tokenizer.pad_token_id), RewardEnsemble
    )
