"""An AI judge from any local causal LM (a path or hub id), read from its log-probabilities.

As in RLAIF (Lee et al. 2023): a preamble stating the principles, the prompt and two responses,
then the preference taken from the probabilities of the two choice tokens ("1", "2") at the next
position, normalised over the two. Both orders are scored (see pairwise.py). With
`chain_of_thought`, the model first writes a rationale (greedy) and the choice is read after it.

The comparison is one user message rendered with the judge's own chat template (rlhf.chat; the
plain format without one), and the judge's answer is prefilled with the cue, so an instruct model
reads the question the way it was trained to. The choice is read from the exact encoding the
text ends with: where " 1" is encoded as a space and then "1" (tokenizers that split digits), the
space is appended to the input and P("1") is read after it, not one position early.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf import chat
from rlhf.errors import InputError
from rlhf.judges.pairwise import CHOICE_CUE, RATIONALE_CUE, PairwiseJudge, comparison_text
from rlhf.pretrained import position_ids_from_mask


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

    @torch.no_grad()
    def first_preferred(self, queries: list[tuple[list[dict], str, str]]) -> list[float]:
        texts = [self._question(comparison_text(self.preamble, *query)) for query in queries]
        preferences = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            if self.chain_of_thought:
                chunk = self._with_rationales(chunk)
            preferences += self._choice_probabilities([t + CHOICE_CUE for t in chunk])
        return preferences

    def _question(self, comparison: str) -> str:
        """The comparison as a user turn of the judge's chat template, the answer about to start."""
        return chat.render_prompt(self.tokenizer, [{"role": "user", "content": comparison}])

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
        """P("1") / (P("1") + P("2")) after each text, each choice's probability that of all its tokens."""
        logprobs = ending_logprobs(self.model, self.tokenizer, texts, (" 1", " 2"), self._check_context)
        return logprobs.log_softmax(-1)[:, 0].exp().tolist()  # normalised over "1" and "2"

    def _encode(self, texts: list[str]):
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=chat.add_special_tokens_for(self.tokenizer),
        ).to(device)
        self._check_context(batch["input_ids"].shape[1] + self.rationale_tokens * self.chain_of_thought)
        return batch

    def _check_context(self, tokens: int) -> None:
        check_context(self.model, tokens, "rank_responses.llm: a comparison (with the rationale, if any)")


def prefilled(tokenizer: PreTrainedTokenizerBase, question: str, cue: str) -> str:
    """`question` as one user turn of the judge's chat template (rlhf.chat.render_prompt), then
    the start of the judge's answer, `cue`. Where the rendering ends inside the user's text (the
    plain format, a template without a generation prompt), a newline parts the question from the
    answer."""
    text = chat.render_prompt(tokenizer, [{"role": "user", "content": question}])
    newline = cue and text.endswith(question) and not question[-1:].isspace()
    return text + ("\n" if newline else "") + cue


def check_context(model: PreTrainedModel, tokens: int, what: str) -> None:
    """One InputError when `tokens` exceed the model's context; `what` names the params key and the text."""
    context = getattr(model.config, "max_position_embeddings", None)
    if context and tokens > context:
        raise InputError(f"{what} needs {tokens} tokens, more than the judge model's {context}-token context")


def choice_endings(
    tokenizer: PreTrainedTokenizerBase, text: str, choices: Sequence[str] = (" 1", " 2")
) -> tuple[list[int], list[list[int]]]:
    """(ids of `text`, [the tokens each choice adds]), read from the encoding of the whole text so
    the boundary tokenises as it does in context: where " 1" is a space then "1", the space is part
    of the ending and P("1") is read after it."""
    special = chat.add_special_tokens_for(tokenizer)
    base = tokenizer(text, add_special_tokens=special)["input_ids"]
    endings = []
    for choice in choices:
        full = tokenizer(text + choice, add_special_tokens=special)["input_ids"]
        if full[: len(base)] != base:  # the text's last token merged with the choice: take the choice alone
            full = base + tokenizer(choice, add_special_tokens=False)["input_ids"]
        endings.append(full[len(base) :])
    return base, endings


@torch.no_grad()
def ending_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    choices: Sequence[str],
    check_context: Callable[[int], None] = lambda tokens: None,
) -> torch.Tensor:
    """log P(choice | text) for every text and choice, a choice's probability that of all its
    tokens (choice_endings), all rows in one left-padded forward.  (B, C)"""
    readings = [choice_endings(tokenizer, text, choices) for text in texts]
    rows = [base + ending for base, endings in readings for ending in endings]  # text + each choice
    ending_lengths = [len(ending) for _, endings in readings for ending in endings]
    device = next(model.parameters()).device
    batch = left_padded(rows, tokenizer.pad_token_id, device)
    check_context(batch["input_ids"].shape[1])
    positions = position_ids_from_mask(batch["attention_mask"])  # left padding must not shift positions
    keep = max(ending_lengths) + 1
    logprobs = torch.log_softmax(
        model(**batch, position_ids=positions, logits_to_keep=keep).logits.float(), dim=-1
    )  # (B C, keep, V): the last positions, which predict each ending's tokens
    choice_logprobs = []
    for row, length in enumerate(ending_lengths):
        targets = batch["input_ids"][row, -length:]
        predicted = logprobs[row, -length - 1 : -1].gather(-1, targets[:, None])  # (length, 1)
        choice_logprobs.append(predicted.sum())
    return torch.stack(choice_logprobs).view(len(texts), len(choices))


def left_padded(rows: list[list[int]], pad_token_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of token-id lists, padded on the left.  (B, T), (B, T)"""
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[pad_token_id] * (width - len(row)) + row for row in rows], device=device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], device=device)
    return {"input_ids": input_ids, "attention_mask": mask}
