"""The store's labelled pairs, written for other tools.

TRL joins an explicit prompt and its completion by plain concatenation (prompt + chosen, then
tokenised as one text, EOS appended where the text does not end with it). So a string export must
put every character of the exchange in one of the two: `prompt` is the exact text the policy
continued, `chosen` and `rejected` the exact text that follows it. Each format, and why:

- trl: JSONL in TRL's standard preference format, {"prompt", "chosen", "rejected", "margin"} per
  line, each text a string. `prompt` is `rlhf.chat.render_prompt` of the prompt's conversation and
  `chosen`/`rejected` are `rlhf.chat.render_exchange` with that prompt cut off the front, both
  rendered with `tokenizer` (the policy's: `rlhf store export --tokenizer models/sft`):
    - without a tokenizer, or with one that has no chat template: the plain format, so a prompt of
      one user message is its text and a longer one the HH transcript ending "\\n\\nAssistant:",
      and a response starts with its one space: {"prompt": "tell me about owls . answer :",
      "chosen": " glad you asked ..."}. TRL appends EOS, as rlhf.scoring does for the plain format.
    - with a chat template (the demo's): the template's text, turn ends included; the demo's
      single-turn exchanges render the same as the plain format, with EOS already written.
  TRL then reads the token ids our stages read: the prompt's are rlhf.sampling.prompt_batch's, the
  prompt and chosen together rlhf.scoring's (tests/store/test_exports_trl.py). Where it cannot, the
  export refuses and names trl-conversational: a template whose assistant turn does not end with
  the tokenizer's EOS (ChatML's "<|im_end|>\\n": TRL would append another token), a tokenizer that
  adds special tokens to plain text while its template writes them too (Llama's BOS, twice), or a
  template that does not render the prompt as the start of the exchange.
- trl-conversational: the same pairs as chat messages, from the store's `messages` columns: the
  prompt's turns as they were imported or sampled, chosen and rejected as the turns after the
  prompt, and margin. TRL renders them with the trainer's own tokenizer's chat template, exactly
  as rlhf.chat does, so this is the format for any model with a template (it needs one).
  Importing such a file (`rlhf store import --format trl`) and exporting it gives it back (in the
  store's order, ties left out, margin added); an implicit-prompt file comes back with its prompt
  explicit.
- hf-dataset: the trl format's rows as a Hugging Face `datasets` dataset saved to disk
  (`load_from_disk`), columns prompt, chosen, rejected, margin.
- csv: every column of the comparisons snapshot, ties, weights and provenance included: a table to
  analyse, not a TRL format (its prompt and responses are the store's texts, not rendered).

margin: the judge's score of chosen minus that of rejected (people's rankings: the difference in
rank). TRL's RewardTrainer reads a `margin` column and subtracts it inside the sigmoid,
-log sigmoid(r_c - r_r - margin) (Llama 2's margin loss); our train_reward is plain Bradley-Terry,
so for the same loss drop the column (`dataset.remove_columns("margin")`).

TRL formats leave ties out (they state no preference). Each output appears whole or not at all.
An export replaces a file at `out`, or an earlier hf-dataset export there; a directory that is not
a saved dataset, or the store itself, is refused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from rlhf import chat
from rlhf.cli_choices import EXPORT_FORMATS as FORMATS
from rlhf.errors import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


# What `datasets.Dataset.save_to_disk` writes beside its Arrow files: how an earlier hf-dataset
# export is told from any other directory.
SAVED_DATASET_FILES = ("dataset_info.json", "state.json")


def export_pairs(
    pairs: pd.DataFrame,
    out: str | Path,
    fmt: str,
    split: str = "all",
    tokenizer: PreTrainedTokenizerBase | None = None,
    store_path: str | Path | None = None,
) -> int:
    """Write `pairs` (the comparisons snapshot's columns) to `out`; returns how many rows were written.
    `tokenizer` renders the trl and hf-dataset formats (None: the plain format); see the module doc.
    `store_path`: the store the pairs come from, which `out` must not name."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (one of {', '.join(FORMATS)})")
    refuse_unless_replaceable(out, fmt, store_path)
    if split != "all":
        pairs = pairs[pairs["split"] == split]
    if fmt != "csv":
        pairs = pairs[~pairs["tie"]]
    records = [] if fmt == "csv" else trl_records(pairs, tokenizer, fmt == "trl-conversational")
    partial = out.with_name(out.name + ".partial")
    try:
        remove(partial)  # a crashed export's leftover
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            pairs.to_csv(partial, index=False)
        elif fmt == "hf-dataset":
            from datasets import Dataset

            columns = ["prompt", "chosen", "rejected", "margin"]
            Dataset.from_dict({c: [r[c] for r in records] for c in columns}).save_to_disk(str(partial))
        else:
            with partial.open("w") as handle:
                handle.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
        if out.is_dir():  # an earlier hf-dataset export (refuse_unless_replaceable); a file is replaced atomically
            remove(out)
        partial.replace(out)
    except OSError as error:
        raise InputError(f"{out}: cannot write the export ({error.strerror or error})") from None
    finally:
        remove(partial)  # whatever stopped the write (gone once it was renamed to out)
    return len(pairs)


def refuse_unless_replaceable(out: Path, fmt: str, store_path: str | Path | None) -> None:
    """An InputError unless writing `out` can replace at most an earlier export: never the store,
    never a directory of other files (a typo such as `data/` must not cost its contents)."""
    if not out.name or out.name in (".", ".."):
        raise InputError(f"{out}: name a file to export to (a directory for hf-dataset), not {str(out)!r}")
    if store_path is not None:
        store = Path(store_path).resolve()
        if out.resolve() in (store, store.with_name(store.name + ".wal")):
            raise InputError(f"{out}: that is the feedback store itself; export to another path")
    if out.is_dir() and fmt != "hf-dataset":
        raise InputError(f"{out}: is a directory; --format {fmt} writes one file, name it")
    if out.is_dir() and not all((out / name).is_file() for name in SAVED_DATASET_FILES):
        raise InputError(f"{out}: is a directory; it is not an earlier hf-dataset export, so it is left as it is")
    if out.exists() and not out.is_dir() and fmt == "hf-dataset":
        raise InputError(f"{out}: is a file; --format hf-dataset writes a directory, name a new one")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def trl_records(pairs: pd.DataFrame, tokenizer: PreTrainedTokenizerBase | None, conversational: bool) -> list[dict]:
    """One TRL preference record per pair: chat messages, or the standard format's strings."""
    if not conversational:
        refuse_unless_standard_format_fits(tokenizer)
    records = []
    for row in pairs.itertuples():
        prompt = chat.from_json(row.prompt_messages)
        chosen, rejected = chat.from_json(row.chosen_messages), chat.from_json(row.rejected_messages)
        if conversational:
            record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        else:
            text, chosen_text = standard_texts(tokenizer, prompt, chosen)
            record = {"prompt": text, "chosen": chosen_text, "rejected": standard_texts(tokenizer, prompt, rejected)[1]}
        records.append({**record, "margin": float(row.margin)})
    return records


def standard_texts(
    tokenizer: PreTrainedTokenizerBase | None, prompt: chat.Conversation, response: chat.Conversation
) -> tuple[str, str]:
    """(prompt, completion) of TRL's standard format: the text the policy continued and the exact
    text after it in the rendered exchange, so that prompt + completion is the exchange itself."""
    prompt_text, completion = chat.split_exchange(
        tokenizer, prompt, response, "export --format trl (use --format trl-conversational)"
    )
    eos = getattr(tokenizer, "eos_token", None)
    if chat.has_chat_template(tokenizer) and not (eos and completion.endswith(eos)):
        raise InputError(
            f"export --format trl: the chat template ends an assistant turn with {completion[-12:]!r}, not the "
            f"tokenizer's EOS {eos!r}; TRL appends EOS to a string completion, a token the policy "
            "never reads there; export --format trl-conversational"
        )
    return prompt_text, completion


def refuse_unless_standard_format_fits(tokenizer: PreTrainedTokenizerBase | None) -> None:
    """TRL tokenises a string prompt with the tokenizer's special tokens; a chat template has
    written them already (rlhf.chat.add_special_tokens_for), so they would come twice."""
    if tokenizer is None or not chat.has_chat_template(tokenizer):
        return
    if tokenizer("x")["input_ids"] != tokenizer("x", add_special_tokens=False)["input_ids"]:
        raise InputError(
            "export --format trl: this tokenizer adds special tokens (a BOS) to plain text and its chat template "
            "writes them too: TRL would read them twice; export --format trl-conversational"
        )
