"""A scripted OpenAI-compatible judge endpoint and a digit-splitting tokenizer."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import ClassVar

SECRET = "sk-test-not-a-real-key-1234567890"


# What a wrong URL or a broken server answers with 200: a page, an error object, no choices.
NOT_A_CHAT_COMPLETION = {
    "html": "<html><body>Welcome to nginx!</body></html>",
    "error": {"error": {"message": "model not found"}},
    "no-choices": {"choices": [], "usage": None},
}


class ScriptedAPI(BaseHTTPRequestHandler):
    script: ClassVar[list[str]] = []  # what to do with each request, in order: "sleep", "429", then "answer"
    seen: ClassVar[list[dict]] = []
    lock = threading.Lock()

    def do_POST(self):
        """The script's failures ("sleep" past the client's timeout, "429", "503", each echoing the
        key so that scrubbing is tested), else `answer`."""
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with self.lock:
            action = self.script.pop(0) if self.script else "answer"
            self.seen.append({"auth": self.headers.get("authorization"), "body": body, "action": action})
        if action == "sleep":
            time.sleep(1.0)  # past the client's timeout
            return self._send(500, {"error": "too late"})
        if action in ("429", "503"):
            return self._send(int(action), {"error": {"message": f"slow down, {SECRET}"}}, {"Retry-After": "0"})
        if action in NOT_A_CHAT_COMPLETION:  # 200, but not what a chat API answers
            return self._send(200, NOT_A_CHAT_COMPLETION[action])
        self.answer(body, action)

    def answer(self, body: dict, action: str) -> None:
        """A pairwise judge's answer: P(first) = 0.5 + 0.4 (thanks in first - thanks in second)."""
        text = body["messages"][-1]["content"]
        first = text.split("Response 1:")[1].split("Response 2:")[0]
        second = text.split("Response 2:")[1]
        p_first = 0.5 + 0.4 * (("thanks" in first) - ("thanks" in second))
        top = [{"token": "1", "logprob": math.log(p_first)}, {"token": "2", "logprob": math.log(1 - p_first)}]
        answer = {
            "choices": [
                {
                    "message": {"role": "assistant", "content": "1" if p_first >= 0.5 else "2"},
                    "logprobs": {"content": [{"token": "1", "logprob": top[0]["logprob"], "top_logprobs": top}]},
                }
            ],
            "usage": {"prompt_tokens": 50, "completion_tokens": 1},
        }
        self._send(200, answer)

    def _send(self, status, payload, headers=None):
        data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
        try:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on a request it timed out

    def log_message(self, *args):
        pass


def digit_splitting_tokenizer():
    """A byte-level BPE that puts every digit in a token of its own, so " 1" is a space token then "1"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([PROMPT, *RESPONSES, "Preferred response (1 or 2): 1 2"] * 5, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )


PROMPT = "tell me about owls . answer :"


RESPONSES = ["owls hunt at night , thanks", "whatever", "owls are birds", "thanks , owls fly"]
