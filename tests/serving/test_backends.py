"""The local backend batches the requests that wait for the model, and each request gets its own answers."""

import threading
import time

import pytest

from rlhf import chat
from rlhf.serving.backends import Sampling

pytestmark = pytest.mark.timeout(120)

PROMPTS = ["tell me about owls . answer :", "tell me about cats . answer :", "what is rain ? answer :", "hi"]


def test_requests_waiting_for_the_model_are_drawn_in_one_batch_and_each_gets_its_own_answer(local_policy):
    greedy = Sampling(temperature=0.0, max_tokens=8)
    alone = {p: local_policy.complete(chat.as_conversation(p), greedy).answers for p in PROMPTS}
    answers, started = {}, local_policy.batches

    def ask(index: int) -> None:
        prompt = PROMPTS[index % len(PROMPTS)]
        answers[index] = (prompt, local_policy.complete(chat.as_conversation(prompt), greedy).answers)

    with local_policy.lock:  # the model is busy while eight requests arrive
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        deadline = time.time() + 30
        while len(local_policy.waiting) < 8:
            assert time.time() < deadline, "the requests did not queue"
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=60)
    assert local_policy.batches - started == 1  # all eight in the batch the first of them ran
    assert len(answers) == 8
    for prompt, texts in answers.values():  # greedy: each its own prompt's answer, as when drawn alone
        assert texts == alone[prompt], prompt
    assert len(set(tuple(a) for a in alone.values())) > 1  # the prompts' answers differ: the check can fail


def test_a_request_for_two_answers_gets_two_drawn_apart(local_policy):
    completion = local_policy.complete(chat.as_conversation(PROMPTS[0]), Sampling(temperature=1.0, max_tokens=8, n=2))
    assert len(completion.answers) == len(completion.finish_reasons) == 2
    assert completion.sampling["n"] == 2 and completion.usage["completion_tokens"] >= 2
