"""One token sequence per conversation in every stage (issue 26), for tiny models of real chat
families (tests/support/chat_families.py): SFT's tokenisation, sampling (prompt_batch, the rollout, the
evaluate stage's sampler), the PPO update's inputs, DPO's (TRL's tokenised dataset), reward and
cost training and scoring (rlhf.scoring.encode of exchange_text, which rlhf.reward_models.train,
kwise and cost all tokenise through), the llm judge and the rating judge see the same ids: one BOS
where the family has one, the turn end where the template writes it, nothing after the generation
prompt; and every sampler stops at any of the model's stop ids."""

import contextlib
import json
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from rlhf import chat, scoring
from rlhf.policy_optimization.dpo import dpo_pairs
from rlhf.sampling import batch_generator, generate, prompt_batch, sample_from_policy, sample_k
from tests.support.chat_families import (
    FAMILIES,
    conversation_for,
    policy_for,
    reward_model_for,
    token_id,
    tokenizer_for,
)

RESPONSE = "cats purr and sleep a lot ."
REJECTED = "no ."
EXPECTED_STOPS = {  # rlhf.chat.stop_token_ids: tokenizer EOS, generation_config, template turn end
    "chatml_eos_im_end": {"<|im_end|>"},
    "chatml_pad_is_eos": {"<|endoftext|>", "<|im_end|>"},
    "llama3": {"<|end_of_text|>", "<|eot_id|>"},
    "gemma": {"<eos>", "<end_of_turn>"},
    "mistral": {"</s>"},
    "base": {"</s>"},
}


def plain_ids(name: str, text: str) -> list[int]:
    """`text` tokenised as the project tokenises a rendering (special tokens only for the plain format)."""
    tokenizer = tokenizer_for(name)
    return tokenizer(text, add_special_tokens=chat.add_special_tokens_for(tokenizer))["input_ids"]


def assert_one_bos(name: str, ids: list[int]) -> None:
    family = FAMILIES[name]
    if family.bos is None:
        assert ids[0] != tokenizer_for(name).eos_token_id
        return
    bos = token_id(name, family.bos)
    assert ids[0] == bos and ids.count(bos) == 1, tokenizer_for(name).convert_ids_to_tokens(ids[:4])


def is_whitespace(name: str, ids: list[int]) -> bool:
    return not tokenizer_for(name).decode(ids).strip()


def comparisons_frame(name: str) -> pd.DataFrame:
    conversation = conversation_for(name)
    row = {
        "prompt_messages": chat.to_json(conversation),
        "chosen": RESPONSE,
        "rejected": REJECTED,
        "tie": False,
        "chosen_messages": chat.to_json(chat.assistant_turns(RESPONSE)),
        "rejected_messages": chat.to_json(chat.assistant_turns(REJECTED)),
    }
    return pd.DataFrame([{**row, "split": "train"}, {**row, "split": "test"}])


def expected_completion(name: str, response: str) -> list[int]:
    """What the policy samples for `response`: the exchange's tokens after the prompt's, up to and
    including the turn end; the plain format's EOS appended."""
    tokenizer, conversation = tokenizer_for(name), conversation_for(name)
    prompt = plain_ids(name, chat.render_prompt(tokenizer, conversation))
    whole = plain_ids(name, chat.render_exchange(tokenizer, conversation, response))
    assert whole[: len(prompt)] == prompt
    completion = whole[len(prompt) :]
    turn_end = token_id(name, FAMILIES[name].turn_end)
    if FAMILIES[name].template is None:
        return completion + [turn_end]
    return completion[: completion.index(turn_end) + 1]


def test_stop_token_ids_of_each_family():
    for name, expected in EXPECTED_STOPS.items():
        tokenizer = tokenizer_for(name)
        stops = chat.stop_token_ids(tokenizer, policy_for(name))
        assert set(tokenizer.convert_ids_to_tokens(stops)) == expected, name
        assert stops[0] == tokenizer.eos_token_id and len(stops) == len(set(stops))
    with pytest.raises(Exception, match="System role not supported"):  # Gemma's template has no system role
        chat.render_prompt(tokenizer_for("gemma"), [{"role": "system", "content": "x"}, *conversation_for("gemma")])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_stage_sees_one_token_sequence(name, tmp_path):
    from rlhf.bootstrap import Demonstration, sft_trainer
    from rlhf.config import BootstrapSFTParams, DPOParams
    from rlhf.judges.llm import LLMJudge, choice_endings
    from rlhf.judges.pairwise import CHOICE_CUE, comparison_text
    from rlhf.policy_optimization.dpo import dpo_trainer

    tokenizer, conversation, family = tokenizer_for(name), conversation_for(name), FAMILIES[name]
    rendered = chat.render_prompt(tokenizer, conversation)
    # Sampling's prompt (PPO's rollout and evaluate render and batch it the same way): one BOS,
    # nothing after the generation prompt.
    prompt = prompt_batch(tokenizer, [rendered], torch.device("cpu"))["input_ids"][0].tolist()
    assert_one_bos(name, prompt)
    added_bos = family.bos if family.bos_by_tokenizer and not family.template else ""  # the plain format's
    assert tokenizer.decode(prompt) == added_bos + rendered
    completion = expected_completion(name, RESPONSE)
    turn_end = token_id(name, family.turn_end)
    assert completion[-1] == turn_end and completion.count(turn_end) == 1

    # DPO: TRL's tokenised dataset holds exactly the prompt the policy saw and what it samples after it.
    policy = policy_for(name)
    params = DPOParams(beta=0.1, epochs=1, batch_size=2, learning_rate=1e-4, max_length=256, log_every=1)
    trainer, _, _ = dpo_trainer(policy, policy_for(name), tokenizer, comparisons_frame(name), params, seed=0)
    example = trainer.train_dataset[0]
    assert example["prompt_ids"] == prompt
    assert example["chosen_ids"] == completion
    assert example["rejected_ids"] == expected_completion(name, REJECTED)

    # SFT (rlhf.bootstrap's SFTTrainer): the same prompt, a completion that starts with what the policy
    # samples (ChatML and Gemma's templates add a newline after the turn end, which SFT also trains on).
    sft = sft_trainer(
        policy,
        tokenizer,
        [Demonstration(conversation, chat.assistant_turns(RESPONSE))],
        [],
        BootstrapSFTParams(max_length=256),
        0,
        torch.device("cpu"),
        str(tmp_path),
    )
    row = sft.train_dataset[0]
    start = next(i for i, label in enumerate(row["labels"]) if label != -100)  # the first trained token
    assert row["input_ids"][:start] == prompt
    assert row["input_ids"][start : start + len(completion)] == completion
    assert is_whitespace(name, row["input_ids"][start + len(completion) :])

    # Reward and cost training and scoring: the whole exchange, the same prompt and turn, one BOS.
    text = scoring.exchange_text(tokenizer, conversation, RESPONSE)
    ids = scoring.encode(tokenizer, [text])[0]
    assert ids[: len(prompt) + len(completion)] == prompt + completion
    assert is_whitespace(name, ids[len(prompt) + len(completion) :])
    assert_one_bos(name, ids)

    # The llm judge reads its question through its own template: one BOS, the text as rendered.
    judge = LLMJudge(policy, tokenizer, "Pick the better response.")
    question = judge._question(comparison_text(judge.preamble, conversation, RESPONSE, REJECTED)) + CHOICE_CUE
    base, _ = choice_endings(tokenizer, question)
    assert_one_bos(name, base)
    assert tokenizer.decode(base).endswith(question)


def forced_stop(model, stop_id: int, step: int, forbidden: list[int]):
    """A forward hook on the LM head: no stop token before response token `step`, `stop_id` certain at it."""
    calls = {"n": 0}

    def hook(module, args, output):
        output = output.clone()
        if calls["n"] == step:
            output[..., :] = -1e4
            output[..., stop_id] = 1e4
        else:
            output[..., forbidden] = -1e4
        calls["n"] += 1
        return output

    return model.lm_head.register_forward_hook(hook), calls


def check_stopped(name, response_ids, mask, ended, stop_id, step):
    pad = tokenizer_for(name).pad_token_id
    assert ended.all() and mask.sum(-1).tolist() == [step + 1] * len(mask)
    assert (response_ids[:, step] == stop_id).all() and (response_ids[:, step + 1 :] == pad).all()


@pytest.mark.parametrize(
    "name, stop", [(name, stop) for name, stops in sorted(EXPECTED_STOPS.items()) for stop in sorted(stops)]
)
def test_every_sampler_stops_at_any_stop_id(name, stop):
    from rlhf.logprobs import joined_inputs
    from rlhf.policy_optimization.rollout import sample_responses

    tokenizer, model, step = tokenizer_for(name), policy_for(name), 3
    stop_id, stops = token_id(name, stop), chat.stop_token_ids(tokenizer, policy_for(name))
    conversation = conversation_for(name)
    rendered = [chat.render_prompt(tokenizer, conversation)] * 2

    def sampled(run):
        handle, _ = forced_stop(model, stop_id, step, stops)
        try:
            torch.manual_seed(0)
            return run()
        finally:
            handle.remove()

    # evaluate's and in-loop evaluation's sampler
    generation = sampled(lambda: sample_from_policy(model, tokenizer, rendered, 8, 1.0))
    check_stopped(name, generation.response_ids, generation.response_mask, generation.ended, stop_id, step)
    # model.generate (a user's own call) stops there too
    generation = sampled(lambda: generate(model, tokenizer, rendered, 8, 1.0))
    check_stopped(name, generation.response_ids, generation.response_mask, generation.ended, stop_id, step)
    # PPO's rollout: the policy's stop ids, the update's inputs are the prompt then the response up to the stop
    models = SimpleNamespace(
        trained=SimpleNamespace(policy=model), compiled_sampler=None, generation_context=contextlib.nullcontext
    )
    sample = sampled(
        lambda: sample_responses(
            models, tokenizer, [conversation] * 2, SimpleNamespace(max_new_tokens=8, temperature=1.0)
        )
    )
    check_stopped(name, sample.response_ids, sample.mask, sample.ended, stop_id, step)
    input_ids, attention_mask, _ = joined_inputs(sample.query_ids, sample.query_mask, sample.response_ids, sample.mask)
    prompt = prompt_batch(tokenizer, rendered[:1], torch.device("cpu"))["input_ids"][0].tolist()
    assert input_ids[0][attention_mask[0].bool()].tolist() == prompt + sample.response_ids[0, : step + 1].tolist()
    # sample_k (the comparison data): the same draws as sample_from_policy's with generate's
    # multinomial, from the first batch's own stream
    prompts = pd.DataFrame({"prompt_id": ["p"], "messages": [chat.to_json(conversation)]})
    frame = sampled(lambda: sample_k(model, tokenizer, prompts, 2, 8, 1.0, 1.0, 2, "ckpt", seed=3))
    drawn = sampled(
        lambda: sample_from_policy(
            model, tokenizer, rendered, 8, 1.0, multinomial=True, generator=batch_generator(3, 0)
        )
    )
    assert list(frame["response"]) == drawn.texts
    assert json.loads(frame["sampling"][0])["stop_token_ids"] == stops


def test_sample_k_draws_from_softmax_not_the_models_generation_config():
    """A model whose generation config ships a huge repetition penalty: sample_k ignores it (its
    logits make one token certain, so every response repeats it) and records what it used."""
    name = "chatml_eos_im_end"
    tokenizer, model = tokenizer_for(name), policy_for(name)
    word = tokenizer(" owls", add_special_tokens=False)["input_ids"][0]
    repeated = tokenizer.decode([word] * 5).strip()
    model.generation_config.repetition_penalty = 1e9

    def certain(module, args, output):
        output = torch.full_like(output, -1e4)
        output[..., word] = 1e4
        return output

    prompts = pd.DataFrame({"prompt_id": ["p"], "messages": [chat.to_json(conversation_for(name))]})
    handle = model.lm_head.register_forward_hook(certain)
    try:
        frame = sample_k(model, tokenizer, prompts, 2, 5, 0.7, 0.9, 2, "ckpt")
    finally:
        handle.remove()
    assert list(frame["response"]) == [repeated] * 2
    sampling = json.loads(frame["sampling"][0])
    assert sampling["top_p"] == 0.9 and sampling["temperature"] == 0.7 and "nucleus" in sampling["sampler"]
    assert sampling["stop_token_ids"] == [tokenizer.eos_token_id]


def test_nucleus_keeps_what_transformers_top_p_keeps():
    from transformers.generation.logits_process import TopPLogitsWarper

    from rlhf.sampling import nucleus

    torch.manual_seed(0)
    logits = torch.randn(8, 50) * 3
    for top_p in (0.3, 0.8, 0.95):
        ours = nucleus(torch.log_softmax(logits, -1), top_p)
        theirs = torch.log_softmax(TopPLogitsWarper(top_p)(None, logits.clone()), -1)
        assert torch.equal(ours.isinf(), theirs.isinf())
        assert torch.allclose(ours.exp(), theirs.exp(), atol=1e-6)


def test_rating_instruction_is_in_the_user_turn(monkeypatch):
    """The 1-10 instruction is the user's; the judge's answer is prefilled with "Rating:" alone.
    The plain format (no template) reads as it always did."""
    from rlhf.rewards import judge_rating

    seen = []

    def capture(model, tokenizer, texts, endings, check_context):
        seen.extend(texts)
        return torch.zeros(len(texts), len(endings))

    monkeypatch.setattr(judge_rating, "ending_logprobs", capture)
    for name in ("chatml_eos_im_end", "base"):
        tokenizer = tokenizer_for(name)
        judge_rating.LLMRatingReward(policy_for(name), tokenizer, "Rate it.")([conversation_for(name)], [RESPONSE])
    chatml, plain = seen
    user_turn, answer = chatml.rsplit("<|im_start|>assistant\n", 1)
    assert answer == "Rating:" and user_turn.endswith("written as N/10.<|im_end|>\n")
    expected = judge_rating.rating_text("Rate it.", conversation_for("base"), RESPONSE)
    assert plain == expected + "Rate the response from 1 (worst) to 10 (best), written as N/10.\nRating:"


def test_query_only_reward_request_reads_the_text_as_training_does():
    """An OpenRLHF trainer's query is the rendered exchange; training appends EOS to the plain
    format, so the server does too (and does not double it)."""
    from rlhf.rewards.server import RewardRequest, request_scores

    name = "base"
    tokenizer, model, conversation = tokenizer_for(name), reward_model_for(name), conversation_for(name)
    responses = [RESPONSE, REJECTED]
    trained_way = scoring.score_exchanges(model, tokenizer, [conversation] * 2, responses)
    rendered = [chat.render_exchange(tokenizer, conversation, r) for r in responses]
    for query in (rendered, [text + tokenizer.eos_token for text in rendered]):
        scores = request_scores(model, tokenizer, RewardRequest(query=query), batch_size=2)
        assert torch.allclose(scores, trained_way, atol=1e-5)


def test_the_demo_dpo_ids_are_what_trl_read_before(tiny_tokenizer):
    """On the demo's tokenizer (its template writes no BOS and no generation prompt; the policy's
    first token after "answer :" carries the space) our ids equal what TRL made of the old plain
    text path (prompt, " " + response, EOS appended): the demo's DPO is unchanged."""
    conversation = [{"role": "user", "content": "tell me about owls . answer :"}]
    frame = pd.DataFrame(
        [
            {
                "prompt_messages": chat.to_json(conversation),
                "chosen": RESPONSE,
                "rejected": REJECTED,
                "tie": False,
                "chosen_messages": chat.to_json(chat.assistant_turns(RESPONSE)),
                "rejected_messages": chat.to_json(chat.assistant_turns(REJECTED)),
            }
        ]
    )
    pair = dpo_pairs(frame, tiny_tokenizer).iloc[0]
    prompt = chat.render_prompt(tiny_tokenizer, conversation)
    old_prompt = tiny_tokenizer(prompt)["input_ids"]
    assert pair["prompt_ids"] == old_prompt
    for ids, text in ((pair["chosen_ids"], RESPONSE), (pair["rejected_ids"], REJECTED)):
        assert ids == tiny_tokenizer(prompt + " " + text + tiny_tokenizer.eos_token)["input_ids"][len(old_prompt) :]
        assert tiny_tokenizer.convert_ids_to_tokens(ids[0]).startswith("Ġ")


def test_train_dpo_trains_and_measures_on_our_ids():
    """The whole DPO stage over the pre-tokenised pairs: TRL trains on them and evaluates the held-out ones."""
    from rlhf.config import DPOParams
    from rlhf.policy_optimization.dpo import train_dpo

    name = "llama3"
    policy = policy_for(name)
    before = [p.detach().clone() for p in policy.parameters()]
    params = DPOParams(beta=0.1, epochs=2, batch_size=2, learning_rate=1e-3, max_length=256, log_every=1)
    result = train_dpo(policy, policy_for(name), tokenizer_for(name), comparisons_frame(name), params, seed=0)
    assert result.metrics["train_pairs"] == 1 and result.metrics["held_out_pairs"] == 1
    assert result.metrics["held_out_margin_after"] > result.metrics["held_out_margin_before"]
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters()))


def test_sample_k_draws_what_generate_drew_for_the_same_seed(tiny_tokenizer):
    """sample_from_policy(multinomial=True), sample_k's sampler, draws as generate does
    (torch.multinomial on the softmax): from the same stream, the same responses."""
    from transformers import GPT2LMHeadModel

    from tests.support.tiny import tiny_gpt2_config

    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer)).eval()
    rendered = [
        chat.render_prompt(tiny_tokenizer, [{"role": "user", "content": f"how do I water plant {i}?"}])
        for i in range(4)
        for _ in range(3)
    ]
    torch.manual_seed(7)
    ours = sample_from_policy(model, tiny_tokenizer, rendered, 12, 1.0, multinomial=True).texts
    torch.manual_seed(7)
    batch = prompt_batch(tiny_tokenizer, rendered, torch.device("cpu"))
    with torch.no_grad():
        sequences = model.generate(
            **batch,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=12,
            pad_token_id=tiny_tokenizer.pad_token_id,
            eos_token_id=tiny_tokenizer.eos_token_id,
        )
    theirs = [
        t.strip()
        for t in tiny_tokenizer.batch_decode(sequences[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    ]
    assert ours == theirs
    torch.manual_seed(7)
    assert sample_from_policy(model, tiny_tokenizer, rendered, 12, 1.0).texts != theirs  # the inverse CDF draws others
