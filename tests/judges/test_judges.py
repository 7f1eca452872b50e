"""AI judges: order-swap debiasing on a real (tiny) local LM, an OpenAI-compatible endpoint on
127.0.0.1 that misbehaves, and the reward-model judge."""

import json
import math
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
import torch
from transformers import GPT2LMHeadModel

from rlhf.config import ConfigError, parse_params
from rlhf.errors import JudgeEndpointError
from rlhf.judges.llm import LLMJudge
from rlhf.judges.openai_compatible import OpenAICompatibleJudge
from rlhf.judges.pairwise import PairwiseJudge, comparison_text
from rlhf.judges.reward_model import RewardModelJudge
from tests.support.heavy_imports import heavy_modules_loaded_by
from tests.support.judge_api import (
    NOT_A_CHAT_COMPLETION,
    PROMPT,
    RESPONSES,
    SECRET,
    ScriptedAPI,
    digit_splitting_tokenizer,
)
from tests.support.tiny import tiny_gpt2_config


def first_position_lover(tokenizer, p_first: float = 0.9) -> GPT2LMHeadModel:
    """A real GPT-2 whose next-token distribution ignores its input and favours the choice "1".

    The final layer norm outputs a constant vector h, so the logits W h are the same everywhere;
    the "1" and "2" rows of W are set so that P("1") / (P("1") + P("2")) = p_first.
    """
    torch.manual_seed(0)
    model = GPT2LMHeadModel(tiny_gpt2_config(tokenizer, tie_word_embeddings=False, n_positions=512)).eval()
    one = tokenizer(" 1", add_special_tokens=False)["input_ids"][-1]
    two = tokenizer(" 2", add_special_tokens=False)["input_ids"][-1]
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.ones_like(model.transformer.ln_f.bias))
        width = model.lm_head.weight.shape[1]
        model.lm_head.weight[one] = math.log(p_first / (1 - p_first)) / width
        model.lm_head.weight[two] = 0.0
    return model


@pytest.mark.parametrize("chain_of_thought", [False, True])
def test_llm_judge_order_swap_turns_a_first_position_bias_into_symmetric_preferences(tiny_tokenizer, chain_of_thought):
    judge = LLMJudge(first_position_lover(tiny_tokenizer), tiny_tokenizer, "be polite", chain_of_thought, 4)
    raw = judge.first_preferred([(PROMPT, RESPONSES[0], RESPONSES[1]), (PROMPT, RESPONSES[1], RESPONSES[0])])
    assert raw == pytest.approx([0.9, 0.9], abs=1e-4)  # it picks whatever is shown first
    [judgement] = judge.rank_batch([(PROMPT, None, RESPONSES)])
    assert all(p == pytest.approx(0.5, abs=1e-4) for p in judgement.preferences.values())
    assert len(judgement.preferences) == 6  # C(4, 2)
    assert judgement.ranks == [1, 1, 1, 1]  # no real preference left: all tie
    assert judge.stats.position_bias_rate == 1.0
    assert all(judgement.confidence(i, j) < 1e-3 for i, j in judgement.preferences)


class PoliteFirstJudge(PairwiseJudge):
    """A consistent judge (no position bias) that prefers responses saying thanks."""

    def first_preferred(self, queries):
        return [0.5 + 0.4 * (("thanks" in first) - ("thanks" in second)) for _, first, second in queries]


def test_pairwise_preferences_become_a_k_way_ranking_with_ties_and_confidences():
    [judgement] = PoliteFirstJudge().rank_batch([(PROMPT, None, RESPONSES)])
    assert judgement.ranks == [1, 3, 3, 1]
    assert judgement.preferences[(0, 1)] == pytest.approx(0.9)
    assert judgement.confidence(0, 1) == pytest.approx(0.8)
    assert judgement.confidence(1, 2) == pytest.approx(0.0)
    assert judgement.reasons[0]["p_beats"] == {"1": 0.9, "2": 0.9, "3": 0.5}


def test_reward_model_judge_ranks_by_score(tiny_tokenizer, tiny_checkpoints):
    from rlhf.pretrained import load_scalar_head_model

    _, reward_dir = tiny_checkpoints
    model = load_scalar_head_model(reward_dir, torch.device("cpu"), tiny_tokenizer.pad_token_id)
    [judgement] = RewardModelJudge(model, tiny_tokenizer, "v").rank_batch([(PROMPT, None, RESPONSES)])
    order = sorted(range(4), key=lambda i: -judgement.scores[i])
    assert [judgement.ranks[i] for i in order] == sorted(judgement.ranks)
    p01 = 1 / (1 + math.exp(judgement.scores[1] - judgement.scores[0]))
    assert judgement.preferences[(0, 1)] == pytest.approx(p01)


def test_ai_judge_needs_its_section_in_params(project_root):
    import yaml

    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    raw["rank_responses"]["judge"] = "openai"
    with pytest.raises(ConfigError, match=r"^params.yaml: rank_responses.openai: required when the judge is 'openai'$"):
        parse_params(raw)


# --- an OpenAI-compatible server on 127.0.0.1 that times out once and rate-limits once ---


@pytest.fixture
def api(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    ScriptedAPI.seen = []
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def test_openai_judge_survives_a_timeout_and_a_429_and_counts_tokens(api):
    ScriptedAPI.script = ["sleep", "429"]
    judge = OpenAICompatibleJudge(
        api,
        "judge-model",
        "be polite",
        api_key_env="JUDGE_TEST_KEY",
        max_concurrency=1,
        timeout_s=0.3,
        backoff_s=0.01,
        price_per_1k_prompt_tokens=1.0,
        price_per_1k_completion_tokens=2.0,
    )
    [judgement] = judge.rank_batch([(PROMPT, None, RESPONSES)])
    assert judgement.ranks == [1, 3, 3, 1]
    assert judgement.preferences[(0, 1)] == pytest.approx(0.9)
    assert judge.usage["retries"] == 2
    assert judge.usage["requests"] == 12  # 6 pairs, both orders
    assert judge.usage["prompt_tokens"] == 600 and judge.cost == pytest.approx(0.6 + 0.024)
    assert all(seen["auth"] == f"Bearer {SECRET}" for seen in ScriptedAPI.seen)
    assert [seen["action"] for seen in ScriptedAPI.seen[:3]] == ["sleep", "429", "answer"]
    assert SECRET not in json.dumps(judgement.reasons)


def test_openai_judge_gives_one_clear_error_when_the_endpoint_keeps_failing(api):
    ScriptedAPI.script = ["429"] * 10
    judge = OpenAICompatibleJudge(api, "m", "p", api_key_env="JUDGE_TEST_KEY", max_retries=2, backoff_s=0.0)
    with pytest.raises(JudgeEndpointError) as failure:
        judge.rank_batch([(PROMPT, None, RESPONSES[:2])])
    message = str(failure.value)
    assert message.startswith(f"rank_responses.openai: {api}/chat/completions did not answer after 3 attempt(s)")
    assert "HTTP 429" in message and SECRET not in message and "***" in message


@pytest.mark.parametrize("answer", sorted(NOT_A_CHAT_COMPLETION))
def test_a_200_that_is_not_a_chat_completion_is_one_clear_error(api, answer):
    ScriptedAPI.script = [answer]
    judge = OpenAICompatibleJudge(api, "m", "p", api_key_env="JUDGE_TEST_KEY", max_retries=2, backoff_s=0.0)
    with pytest.raises(JudgeEndpointError) as failure:
        judge.rank_batch([(PROMPT, None, RESPONSES[:2])])
    message = str(failure.value)
    assert message.startswith(f"rank_responses.openai: {api}/chat/completions answered 200 ")
    assert ("nginx" if answer == "html" else "model not found" if answer == "error" else "[]") in message
    assert judge.usage["retries"] == 0  # not retried: the same URL answers the same


def test_a_base_url_without_a_scheme_is_refused_at_once():
    judge = OpenAICompatibleJudge("127.0.0.1:9/v1", "m", "p", max_retries=5, backoff_s=10.0)
    started = time.monotonic()
    with pytest.raises(JudgeEndpointError, match=r"rank_responses.openai.base_url: .* is not an http\(s\) URL"):
        judge.rank_batch([(PROMPT, None, RESPONSES[:2])])
    assert judge.usage["retries"] == 0 and time.monotonic() - started < 30  # five backed-off retries: 190 s


def test_hybrid_routing_sends_exactly_the_low_confidence_pairs_to_people(tmp_path):
    import pandas as pd

    from rlhf.ranking import rank_all
    from rlhf.snapshot import read_comparisons
    from rlhf.store import FeedbackStore

    prompts = pd.DataFrame(
        [("p1", PROMPT, "owls", "train", "test")], columns=["prompt_id", "prompt", "topic", "split", "source"]
    )
    ids = [f"r{i}" for i in range(4)]
    responses = pd.DataFrame(
        {
            "response_id": ids,
            "prompt_id": "p1",
            "sample_index": range(4),
            "response": RESPONSES,
            "policy_checkpoint": "c",
            "sampling": "{}",
        }
    )
    judge = PoliteFirstJudge()
    rankings, queue = rank_all(judge, prompts, responses, route_below=0.5)
    [judgement] = judge.rank_batch([(PROMPT, None, RESPONSES)])
    unsure = {(ids[i], ids[j]) for i, j in judgement.preferences if judgement.confidence(i, j) < 0.5}
    assert unsure == {("r0", "r3"), ("r1", "r2")}  # polite vs polite, rude vs rude
    assert {tuple(json.loads(r)) for r in queue["response_ids"]} == unsure
    assert set(queue["reason"]) == {"low_confidence"}

    store = FeedbackStore(tmp_path / "feedback.duckdb")
    store.ingest({"run_id": "run-1", "stage": "test"}, prompts, responses, rankings, queue)
    snapshot = tmp_path / "comparisons"
    store.snapshot_comparisons(snapshot)
    labelled = read_comparisons(snapshot)
    assert len(labelled) == 4  # the AI's 6 pairs less the 2 it was unsure of
    assert not {tuple(sorted(p)) for p in zip(labelled["chosen_id"], labelled["rejected_id"])} & unsure

    item = queue.iloc[0]
    first, second = json.loads(item["response_ids"])
    store.record_human_ranking("alice", item["item_id"], {first: 1, second: 2}, [], "annotate-run")
    store.snapshot_comparisons(snapshot)
    labelled = read_comparisons(snapshot)
    assert len(labelled) == 5
    human = labelled[labelled["judge"] == "human"]
    assert list(zip(human["chosen_id"], human["rejected_id"])) == [(first, second)]
    assert set(labelled["judge"]) == {"pairwise", "human"}  # each label says where it came from


def test_params_pick_the_llm_judge_with_a_local_model_path(project_root, tiny_checkpoints, tiny_tokenizer, tmp_path):
    import yaml

    from rlhf.errors import InputError
    from rlhf.judges import make_judge

    short_context_dir, _ = tiny_checkpoints  # 128 positions: too short for a comparison
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    raw["rank_responses"].update(judge="llm", llm={"model": str(short_context_dir), "batch_size": 4})
    with pytest.raises(InputError, match="more than the judge model's 128-token context"):
        make_judge(parse_params(raw).rank_responses, torch.device("cpu")).rank_batch([(PROMPT, None, RESPONSES[:2])])

    policy_dir = tmp_path / "judge-model"
    GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer, n_positions=512)).save_pretrained(policy_dir)
    tiny_tokenizer.save_pretrained(policy_dir)
    raw["rank_responses"]["llm"]["model"] = str(policy_dir)
    judge = make_judge(parse_params(raw).rank_responses, torch.device("cpu"))
    assert isinstance(judge, LLMJudge) and judge.version.startswith(f"1+{policy_dir}+")
    raw["rank_responses"]["preamble"] = "Prefer the shorter response."
    assert make_judge(parse_params(raw).rank_responses, torch.device("cpu")).version != judge.version  # its prompt
    del raw["rank_responses"]["preamble"]
    assert "A better response is: on topic; polite" in judge.preamble
    [judgement] = judge.rank_batch([("tell me about owls", None, ["owls fly", "whatever"])])
    forward, backward = judge.first_preferred(
        [("tell me about owls", "owls fly", "whatever"), ("tell me about owls", "whatever", "owls fly")]
    )
    preference = (forward + 1.0 - backward) / 2.0  # both orders, averaged
    assert judgement.preferences[(0, 1)] == pytest.approx(preference, abs=1e-6)
    expected = [1, 2] if preference > 0.5 else [2, 1] if preference < 0.5 else [1, 1]
    assert judgement.ranks == expected  # the ranking follows the judge's own preference


def space_then_one_lover(tokenizer) -> GPT2LMHeadModel:
    """A real GPT-2 with no blocks whose next token depends on the current one only: after the
    space token it strongly prefers "1" over "2", after any other token "2" over "1"."""
    from transformers import GPT2Config

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=0,
        n_embd=2,
        n_head=1,
        n_positions=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    space = tokenizer.convert_tokens_to_ids("Ġ")
    one, two = tokenizer.convert_tokens_to_ids("1"), tokenizer.convert_tokens_to_ids("2")
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight[:] = torch.tensor([-1.0, 1.0])
        model.transformer.wte.weight[space] = torch.tensor([1.0, -1.0])
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.zero_()
        model.lm_head.weight.zero_()
        model.lm_head.weight[one] = torch.tensor([2.0, -2.0])  # logit +4 after the space, -4 elsewhere
    assert two != one
    return model


def test_llm_judge_reads_the_digit_after_the_space_where_the_tokenizer_splits_digits():
    """' 1' is a space then '1' here: the choice is read after the space. Read one position
    early (where the model predicts the space), P('1') would come out 0.02 instead of 0.98."""
    tokenizer = digit_splitting_tokenizer()
    assert tokenizer.convert_ids_to_tokens(tokenizer(" 1")["input_ids"]) == ["Ġ", "1"]
    judge = LLMJudge(space_then_one_lover(tokenizer), tokenizer, "be polite")
    raw = judge.first_preferred([(PROMPT, RESPONSES[0], RESPONSES[1]), (PROMPT, RESPONSES[1], RESPONSES[0])])
    assert raw == pytest.approx([torch.sigmoid(torch.tensor(4.0)).item()] * 2, abs=1e-3)


def test_a_pair_at_exactly_one_half_in_one_order_is_not_position_biased():
    class HalfThenFirst(PairwiseJudge):
        def first_preferred(self, queries):
            return [0.5 if n % 2 == 0 else 0.3 for n in range(len(queries))]  # forward 0.5, backward 0.3

    judge = HalfThenFirst()
    judge.rank_batch([(PROMPT, None, RESPONSES[:2])])
    assert judge.stats.pairs == 1 and judge.stats.position_bias_rate == 0.0


def test_the_llm_judge_sees_a_multi_turn_conversation_through_its_chat_template(tiny_tokenizer):
    conversation = [
        {"role": "user", "content": "hi ."},
        {"role": "assistant", "content": "hello ."},
        {"role": "user", "content": PROMPT},
    ]
    text = comparison_text("be polite", conversation, RESPONSES[0], RESPONSES[1])
    assert "Human: hi .\n\nAssistant: hello .\n\nHuman: " + PROMPT in text
    judge = LLMJudge(first_position_lover(tiny_tokenizer), tiny_tokenizer, "be polite")
    assert judge._question(text) == tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )


def test_ranking_by_the_rules_starts_without_torch(project_root):
    """The rules judge's stage imports neither torch nor transformers: on the demo the stage spent
    ~8 of its 12 s importing them, and under 1 s ranking."""
    script = (
        "import rlhf.stages.rank_responses\n"
        "from rlhf.config import load_params\n"
        "from rlhf.judges import make_judge\n"
        "judge = make_judge(load_params('params.yaml').rank_responses, 'auto')\n"
        "judge.rank_batch([('tell me about owls . answer :', 'owls', ['owls fly', 'whatever'])])"
    )
    assert heavy_modules_loaded_by(script, project_root) == []
