"""The scoring convention (rlhf/scoring.py): training and scoring read the same tokens."""

import copy

import pandas as pd
import pytest
import torch
from transformers import GPT2ForSequenceClassification

from rlhf import chat
from rlhf.reward_models.kwise import Ranking, RankingCollator
from rlhf.reward_models.train import tokenized_pairs
from rlhf.scoring import encode, exchange_text, score_texts, trained_max_length
from tests.support.tiny import tiny_gpt2_config

LONG = "tell me about owls . answer :"
RESPONSE = "sure , happy to help . owls can be calm and useful . many people find owls warm ."


def test_a_long_exchange_is_cut_from_the_left_the_same_way_for_training_and_scoring(tiny_tokenizer):
    text = exchange_text(tiny_tokenizer, chat.as_conversation(LONG), RESPONSE)
    full = encode(tiny_tokenizer, [text])[0]
    assert full[-1] == tiny_tokenizer.eos_token_id and len(full) > 12  # the demo template wrote EOS
    cut = encode(tiny_tokenizer, [text], max_length=12)[0]
    assert cut == full[-12:]  # the end stays: the score is read there
    pairs = pd.DataFrame({"chosen": [text], "rejected": [text]})
    assert tokenized_pairs(pairs, tiny_tokenizer, 12)["chosen_ids"][0] == cut  # TRL's pairwise input
    batch = RankingCollator(tiny_tokenizer, 12)([Ranking((text, text), ((0, 1),))])
    assert batch.input_ids[0].tolist() == cut  # the K-wise input


def test_scoring_cuts_where_the_model_was_trained_to(tiny_tokenizer):
    """Before, training cut long texts and scoring read them whole: another input than trained on."""
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1)).eval()
    text = exchange_text(tiny_tokenizer, chat.as_conversation(LONG), RESPONSE)
    whole = score_texts(model, tiny_tokenizer, [text])
    model.config.scoring_max_length = 10  # as rlhf.reward_models.train saves it
    assert trained_max_length(model) == 10
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([encode(tiny_tokenizer, [text])[0][-10:]])).logits[0, 0]
    assert score_texts(model, tiny_tokenizer, [text])[0].item() == pytest.approx(expected.item(), abs=1e-5)
    assert not torch.allclose(score_texts(model, tiny_tokenizer, [text]), whole)


def test_where_padding_is_eos_the_score_is_read_at_the_last_text_token_in_both(tiny_tokenizer):
    """Most pretrained causal LMs pad with EOS: a trailing EOS then counts as padding, and the
    classifier reads the token before it. Training and scoring share that reading."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.pad_token = tokenizer.eos_token  # as rlhf.pretrained.load_tokenizer does for a model without one
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(tiny_gpt2_config(tokenizer, num_labels=1)).eval()
    model.config.pad_token_id = tokenizer.pad_token_id  # as rlhf.pretrained.load_scalar_head_model does
    text = exchange_text(tokenizer, chat.as_conversation(LONG), RESPONSE)  # ends with EOS
    ids = encode(tokenizer, [text])[0]
    with torch.no_grad():
        at_last_text_token = model(input_ids=torch.tensor([ids[:-1]])).logits[0, 0]
    with_eos = score_texts(model, tokenizer, [text, text + " owls"])[0]  # padded in a batch
    assert with_eos.item() == pytest.approx(at_last_text_token.item(), abs=1e-5)


def test_batched_scoring_gives_each_text_its_own_score_in_the_given_order(tiny_tokenizer):
    """score_texts scores each distinct text once, in batches sorted by length: the result must
    still be, text for text and in the caller's order, what the model gives that text alone."""
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(tiny_gpt2_config(tiny_tokenizer, num_labels=1)).eval()
    endings = ["owls .", RESPONSE, "sure .", RESPONSE + " owls can be calm .", "ok ."]
    distinct = [exchange_text(tiny_tokenizer, chat.as_conversation(LONG), e) for e in endings]
    texts = [distinct[i] for i in (3, 0, 1, 0, 4, 2, 1, 3)]  # repeats, lengths out of order
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([encode(tiny_tokenizer, [t])[0]])).logits[0, 0].item() for t in texts]
        scores = score_texts(model, tiny_tokenizer, texts, batch_size=2)
    assert scores.shape == (len(texts),)
    assert scores.tolist() == pytest.approx(alone, abs=1e-5)
    assert len(set(alone)) == len(distinct)  # the texts do score differently: an order mix-up would show
