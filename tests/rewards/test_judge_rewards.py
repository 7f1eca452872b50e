"""Direct RLAIF: an AI judge's expected 1-10 rating as train_policy's online reward, from a real
(tiny) local LM and from an OpenAI-compatible endpoint on 127.0.0.1 that misbehaves; the
endpoint's ratings drive GRPO; the stage wires both and reports what the judge cost."""

import copy
import json
import math
import re
import threading
from http.server import ThreadingHTTPServer
from typing import ClassVar

import pandas as pd
import pytest
import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel

from rlhf.config import OpenAIJudgeParams, RewardTerm, WordCount, parse_params
from rlhf.errors import ConfigError, JudgeEndpointError
from rlhf.rewards.judge_rating import (
    LLMRatingReward,
    OpenAIRatingReward,
    rating_preamble,
    ratings_from_logprobs,
    reward_from_distribution,
)
from rlhf.rewards.terms import online_reward
from tests.support.judge_api import SECRET, ScriptedAPI, digit_splitting_tokenizer
from tests.support.policy_runs import PROMPTS, SMALL_RUN, gain, run_stage, train
from tests.support.tiny import tiny_gpt2_config

# The tiny model gains nothing from a second thread (the fixture says why).
pytestmark = pytest.mark.usefixtures("one_thread")


# --- the local judge --------------------------------------------------------------------------------


def constant_judge(tokenizer, logits: dict[str, float]) -> GPT2LMHeadModel:
    """A real GPT-2 with no blocks whose next-token logits are the same at every position: the
    tokens named in `logits` get those values, every other token 0."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=0,
        n_embd=1,
        n_head=1,
        n_positions=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)  # the final hidden state is 1 everywhere
        model.lm_head.weight.zero_()
        for token, logit in logits.items():
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(token)] = logit
    return model


def test_the_local_judges_reward_is_its_expected_rating_rescaled():
    """Digits are single tokens here, so "10" is "1" then "0". The model's next-token distribution q
    is the same everywhere, so P(" k/10") = q(space) q(k) q(/) q(1) q(0) and P(" 10/10") carries one
    more q(1) q(0): normalised over the ten ratings, rating k weighs q(k) and rating 10 q(1) q(0)."""
    tokenizer = digit_splitting_tokenizer()
    logits = {"7": 6.0, "1": 2.0, "0": 1.0, "/": 1.0, "Ġ": 1.0}
    model = constant_judge(tokenizer, logits)
    q = torch.softmax(model.lm_head.weight[:, 0].detach().double(), dim=0)  # logits = W * 1

    def digit(d):
        return q[tokenizer.convert_tokens_to_ids(d)].item()

    weights = {k: digit(str(k)) for k in range(1, 10)} | {10: digit("1") * digit("0")}
    expected = sum(k * w for k, w in weights.items()) / sum(weights.values())
    reward = LLMRatingReward(model, tokenizer, "be polite", batch_size=2)
    scores = reward(
        ["tell me about owls .", "hi"] * 2 + ["a longer prompt about owls and tea ."], ["owls", "a", "b", "c d", "e"]
    )
    assert scores.shape == (5,)
    assert scores.tolist() == pytest.approx([(expected - 5.5) / 4.5] * 5, abs=1e-5)
    assert 0.2 < scores[0] < 1.0  # mostly 7: (7 - 5.5) / 4.5 = 0.33, pulled up a little by ten


def chain_judge(tokenizer, chain: dict[str, str]) -> GPT2LMHeadModel:
    """A real GPT-2 with no blocks whose next token depends on the current one only: after each
    token of `chain` it all but surely writes the token it maps to. The hidden state is the
    layer-normed one-hot of the current token h(s), and h(s) . h(s) = n while h(s) . h(t) = -n / (n - 1)."""
    n = len(tokenizer)
    config = GPT2Config(
        vocab_size=n,
        n_layer=0,
        n_embd=n,
        n_head=1,
        n_positions=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        model.transformer.wpe.weight.zero_()
        model.transformer.wte.weight.copy_(torch.eye(n))
        model.transformer.ln_f.weight.fill_(1.0)
        model.transformer.ln_f.bias.zero_()
        normed = torch.nn.functional.layer_norm(torch.eye(n), (n,), eps=model.config.layer_norm_epsilon)
        model.lm_head.weight.zero_()
        for current, following in chain.items():
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(following)] += (
                12.0 / n * normed[tokenizer.convert_tokens_to_ids(current)]
            )
    return model


def test_ten_is_read_whole_not_as_a_one_that_goes_on():
    """This judge answers " 10/10": after the space "1", after "1" "0", after "0" "/", after "/" "1".
    Read as bare " 1" and " 10", rating 1 (P(1 | space)) would weigh as much as rating 10
    (P(1 | space) P(0 | 1)) and the reward would sit near the midpoint, 0; read whole, " 1/10"
    needs "/" after "1", which this judge never writes."""
    tokenizer = digit_splitting_tokenizer()
    model = chain_judge(tokenizer, {"Ġ": "1", "1": "0", "0": "/", "/": "1"})
    [score] = LLMRatingReward(model, tokenizer, "be polite")(["tell me about owls ."], ["owls"]).tolist()
    assert score > 0.95


def test_the_local_judge_refuses_a_rating_past_its_context_in_one_line():
    from rlhf.errors import InputError

    tokenizer = digit_splitting_tokenizer()
    model = constant_judge(tokenizer, {})
    model.config.max_position_embeddings = 16
    with pytest.raises(InputError, match=r"^train_policy.reward: rating a response needs \d+ tokens"):
        LLMRatingReward(model, tokenizer, "be polite")(["tell me about owls ."], ["owls hunt at night"])


def test_ratings_from_the_first_tokens_log_probs_and_the_rescaling():
    logprobs = {
        "content": [
            {
                "token": "8",
                "logprob": math.log(0.6),
                "top_logprobs": [
                    {"token": "8", "logprob": math.log(0.6)},
                    {"token": " 10", "logprob": math.log(0.3)},
                    {"token": "ten", "logprob": math.log(0.05)},
                    {"token": "0", "logprob": math.log(0.05)},
                ],
            }
        ]
    }
    ratings = ratings_from_logprobs(logprobs)
    assert ratings == pytest.approx({8: 0.6, 10: 0.3})  # "ten" and "0" are no ratings
    assert reward_from_distribution(ratings) == pytest.approx(((8 * 0.6 + 10 * 0.3) / 0.9 - 5.5) / 4.5)
    assert reward_from_distribution({1: 1.0}) == -1.0 and reward_from_distribution({10: 1.0}) == 1.0
    assert reward_from_distribution({}) is None


# --- the endpoint -----------------------------------------------------------------------------------


class RatingAPI(ScriptedAPI):
    """Rates a response of 1-3 words 9 (P 0.8, else 3), a longer one 2 (P 0.9, else 5), in log-probs;
    or, with the action "text", in the answer's text alone; the pairwise judge's scripted API
    (ScriptedAPI.do_POST) plays the script's timeouts, 429s and 503s."""

    script: ClassVar[list[str]] = []
    seen: ClassVar[list[dict]] = []
    lock = threading.Lock()

    def answer(self, body: dict, action: str) -> None:
        response = re.search(r"\nResponse:(.*)\nRate the response", body["messages"][-1]["content"], re.DOTALL).group(1)
        short = len(response.split()) <= 3
        top = [("9", 0.8), ("3", 0.2)] if short else [("2", 0.9), ("5", 0.1)]
        logprobs = {
            "content": [
                {
                    "token": top[0][0],
                    "logprob": math.log(top[0][1]),
                    "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in top],
                }
            ]
        }
        choice = {"message": {"role": "assistant", "content": top[0][0] + "/10"}}
        if action != "text":
            choice["logprobs"] = logprobs
        self._send(200, {"choices": [choice], "usage": {"prompt_tokens": 40, "completion_tokens": 1}})


SHORT = ((9 * 0.8 + 3 * 0.2) - 5.5) / 4.5  # 0.511
LONG = ((2 * 0.9 + 5 * 0.1) - 5.5) / 4.5  # -0.711


@pytest.fixture
def api(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), RatingAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("RATING_TEST_KEY", SECRET)
    RatingAPI.seen, RatingAPI.script = [], []
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def endpoint(api: str, **settings) -> OpenAIJudgeParams:
    return OpenAIJudgeParams(base_url=api, model="judge-model", api_key_env="RATING_TEST_KEY", **settings)


def test_the_endpoint_judge_survives_a_timeout_and_a_429_and_counts_tokens_and_cost(api):
    RatingAPI.script = ["sleep", "429", "answer", "text"]
    config = endpoint(
        api,
        max_concurrency=1,
        timeout_s=0.3,
        backoff_s=0.01,
        price_per_1k_prompt_tokens=1.0,
        price_per_1k_completion_tokens=2.0,
    )
    reward = OpenAIRatingReward(config, "be brief")
    scores = reward(PROMPTS[:3], ["owls hunt", "owls hunt at night in the woods", "tea"])
    # the second response's answer came as text alone: its "2/10" read as certain
    assert scores.tolist() == pytest.approx([SHORT, (2 - 5.5) / 4.5, SHORT], abs=1e-6)
    assert [seen["action"] for seen in RatingAPI.seen] == ["sleep", "429", "answer", "text", "answer"]
    assert reward.usage["requests"] == 3 and reward.usage["retries"] == 2 and reward.usage["unparsed"] == 0
    assert reward.cost == pytest.approx((3 * 40 * 1.0 + 3 * 1 * 2.0) / 1000)
    asked = RatingAPI.seen[-1]["body"]
    assert asked["messages"][0] == {"role": "system", "content": "be brief"} and asked["top_logprobs"] == 20
    assert all(seen["auth"] == f"Bearer {SECRET}" for seen in RatingAPI.seen)


def test_the_endpoint_judge_gives_one_clear_error_after_the_last_retry(api):
    RatingAPI.script = ["503"] * 10
    reward = OpenAIRatingReward(endpoint(api, max_retries=2, backoff_s=0.0), "be brief")
    with pytest.raises(JudgeEndpointError) as failure:
        reward(PROMPTS[:1], ["owls"])
    message = str(failure.value)
    assert message.startswith(f"train_policy.reward.openai: {api}/chat/completions did not answer after 3 attempt(s)")
    assert "HTTP 503" in message and SECRET not in message and "***" in message


def test_the_endpoint_judges_ratings_drive_grpo(api, tiny_tokenizer):
    """Direct RLAIF end to end: every rollout's responses rated over HTTP; short ones rate 9, so
    GRPO learns to answer in a few words."""
    term = RewardTerm(source="openai", openai=endpoint(api, max_concurrency=8))
    reward = online_reward([term], lambda: pytest.fail("no reward model wanted"), [], {}, tiny_tokenizer)
    history = train(tiny_tokenizer, reward, algorithm="grpo")
    assert len(RatingAPI.seen) == 32 * len(history) and all(seen["action"] == "answer" for seen in RatingAPI.seen)
    assert gain(history) > 0.3, [row["score"] for row in history]  # the score runs from LONG (-0.71) to SHORT (0.51)
    assert all(row["reward_openai"] == row["raw_score"] for row in history)


def test_the_stage_rates_with_a_local_and_an_endpoint_judge_and_reports_the_cost(
    stage_workspace, project_root, api, tiny_tokenizer
):
    root, command = stage_workspace
    judge_dir = root / "judge"  # a local judge model, as a user's path or hub id: a GPT-2 with room for the request
    GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer, n_positions=512)).save_pretrained(judge_dir)
    tiny_tokenizer.save_pretrained(judge_dir)
    reward = [
        {"source": "llm", "llm": {"model": str(judge_dir), "batch_size": 4}, "weight": 0.5},
        {"source": "openai", "openai": endpoint(api, price_per_1k_prompt_tokens=0.5).model_dump()},
    ]
    settings = {**SMALL_RUN, "algorithm": "rloo", "group_size": 4, "iterations": 2, "reward": reward}
    done = run_stage(command(**settings), project_root)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((root / "policy.json").read_text())
    # calibration (one batch of 8) and two rollouts of 8, one request each
    assert metrics["reward_usage"]["openai"]["requests"] == 24 == len(RatingAPI.seen)
    assert metrics["reward_usage"]["openai"]["cost"] == pytest.approx(24 * 40 * 0.5 / 1000)
    assert "train_policy: reward openai: " in done.stdout
    curve = pd.read_csv(root / "policy.csv")
    assert len(curve) == 2
    live = root / "dvclive" / "plots" / "metrics"
    llm_means = [float(line.split("\t")[1]) for line in (live / "reward_llm.tsv").read_text().splitlines()[1:]]
    assert len(llm_means) == 2 and all(-1.0 <= m <= 1.0 for m in llm_means)
    assert (live / "reward_openai.tsv").exists()


@pytest.fixture
def raw(project_root):
    return yaml.safe_load((project_root / "params.yaml").read_text())


@pytest.mark.parametrize(
    "term, expected",
    [
        ({"source": "llm"}, "train_policy.reward.0.llm: required with source llm"),
        ({"source": "rules", "llm": {"model": "m"}}, "train_policy.reward.0.llm: required with source llm"),
        (
            {
                "source": "openai",
                "openai": {"base_url": "http://127.0.0.1:1/v1", "model": "m", "chain_of_thought": True},
            },
            "train_policy.reward.0.openai.chain_of_thought: a rating reward",
        ),
        ({"source": "openai", "openai": {"model": "m"}}, "train_policy.reward.0.openai.base_url: Field required"),
    ],
)
def test_a_judge_reward_without_its_section_is_refused_in_one_line(raw, term, expected):
    bad = copy.deepcopy(raw)
    bad["train_policy"].update(algorithm="grpo", reward=[term])
    with pytest.raises(ConfigError) as caught:
        parse_params(bad)
    message = str(caught.value)
    assert message.startswith(f"params.yaml: {expected}") and "\n" not in message, message


def test_the_judge_is_told_the_principles():
    principles = [WordCount(kind="word_count", name="short", min=1, max=3, description="short and to the point")]
    assert (
        rating_preamble(principles) == "You rate a response to a prompt. A better response is: short and to the point."
    )
