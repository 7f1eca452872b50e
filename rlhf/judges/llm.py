"""An AI judge from any local causal LM (a path or hub id), read from its log-probabilities.

As in RLAIF (Lee et al. 2023): a preamble stating the principles, the prompt and two responses,
then the preference taken from the probabilities of the two choice tokens ("1", "2") at the next
position, normalised over the two. Both orders are scored (see pairwise.py). With
`chain_of_thought`, the model first writes a rationale (greedy) and the choice is read after it.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf.errors import InputError
from rlhf.judges.pairwise import CHOICE_CUE, RATIONALE_CUE, PairwiseJudge, comparison_text
from rlhf.models import position_ids_from_mask


class LLMJudge(PairwiseJudge):
    name = "llm"
    version = "1"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        preamble: str,
        chain_of_thought: bool = False,
        rationale_tokens: int = 64,
        batch_size: int = 16,
    ):
        super().__init__()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.preamble, self.chain_of_thought = preamble, chain_of_thought
        self.rationale_tokens, self.batch_size = rationale_tokens, batch_size
        self.choice_ids = [self._single_token(" 1"), self._single_token(" 2")]

    def _single_token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[-1]  # " 1" may split into a space and "1": the digit is what the model chooses

    @torch.no_grad()
    def first_preferred(self, queries: list[tuple[list[dict], str, str]]) -> list[float]:
        texts = [comparison_text(self.preamble, *query) for query in queries]
        preferences = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            if self.chain_of_thought:
                chunk = self._with_rationales(chunk)
            preferences += self._choice_probabilities([t + CHOICE_CUE for t in chunk])
        return preferences

    def _with_rationales(self, texts: list[str]) -> list[str]:
        cued = [t + RATIONALE_CUE for t in texts]
        batch = self._encode(cued)
        out = self.model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=self.rationale_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        rationales = self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return [c + r.strip() + "\n" for c, r in zip(cued, rationales)]

    def _choice_probabilities(self, texts: list[str]) -> list[float]:
        batch = self._encode(texts)
        positions = position_ids_from_mask(batch["attention_mask"])  # left padding must not shift positions
        logits = self.model(**batch, position_ids=positions, logits_to_keep=1).logits[:, -1].float()  # (B, V)
        pair = torch.log_softmax(logits[:, self.choice_ids], dim=-1)  # normalised over "1" and "2"
        return pair[:, 0].exp().tolist()

    def _encode(self, texts: list[str]):
        device = next(self.model.parameters()).device
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, padding_side="left").to(device)
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context and batch["input_ids"].shape[1] + self.rationale_tokens * self.chain_of_thought > context:
            raise InputError(
                f"rank_responses.llm: a comparison needs {batch['input_ids'].shape[1]} tokens (plus the rationale), "
                f"more than the judge model's {context}-token context"
            )
        return batch
