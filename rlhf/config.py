"""The params.yaml schema: one pydantic model per pipeline stage, validated once.

Every knob of the pipeline lives in params.yaml and is described here, so this file is the
reference for what each key means. A bad value stops with one line naming the key. Each default
lives here only: the shipped params.yaml is written from this schema (`python -m rlhf.params_file`,
each field's docstring as its comment, a test fails when they drift), and a key left out of a
params.yaml means the value written here. Each rule on the values is checked here only: the stages
and the trainer rely on the validated object.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlhf.errors import ConfigError

PARAMS_FILE = "params.yaml"
ROUNDS_FILE = "rounds.yaml"  # the round state, beside params.yaml (RoundParams)


# How a training stage runs (rlhf/launch.py): one process, or several under DDP, ZeRO or FSDP2.
Launcher = Literal["single", "ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"]


def check_processes(launcher: str, num_processes: int) -> None:
    """More than one process needs a launcher that starts them (train_policy's and train_reward's rule)."""
    if launcher == "single" and num_processes != 1:
        raise ValueError("num_processes: needs a multi-process launcher (ddp, deepspeed_zero2, deepspeed_zero3, fsdp)")


class Section(BaseModel):
    # Each field's docstring is the comment params.yaml carries above its key (rlhf/params_file.py
    # reads them from this file's source; pydantic's use_attribute_docstrings would do it on every
    # import, for ~0.1 s of each command's start).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def a_number_is_not_a_boolean(cls, raw: object) -> object:
        """pydantic reads YAML's true as 1 for a number; `batch_size: true` is a slip, not a size.
        (A model validator: a field validator on every field would clash with the discriminators.)"""
        for key, value in raw.items() if isinstance(raw, dict) else ():
            field = cls.model_fields.get(key)
            if isinstance(value, bool) and field is not None and _is_a_number(field.annotation):
                raise ValueError(f"{key}: should be a number, not {str(value).lower()}")
        return raw


def _is_a_number(annotation: object) -> bool:
    """int, float, or one of them or None (a Literal or a model is not a number)."""
    kinds = set(typing.get_args(annotation)) - {type(None)} if typing.get_origin(annotation) else {annotation}
    return bool(kinds) and kinds <= {int, float}


# A key params.yaml writes only where its value is not the default: the settings of a judge or a
# source not in use, and the principles' optional fields. The schema still documents it.
SHOWN_WHEN_SET = {"shown_when_set": True}


class SnapshotScopeParams(Section):
    """Which store rows the comparisons snapshot (store_comparisons) takes: the only way store rows
    reach training. What this scope would take from the store is the file `<store path>.scope.json`,
    which the store rewrites on every write and dvc.yaml lists as a dependency, so an import or
    people's rankings in scope re-run store_comparisons and nothing else does."""

    rankings: Literal["current", "all"] = "current"
    """current: this configuration's rankings (the rankings file rank_responses wrote) and people's
    rankings of responses from this round's policy; the checkout that made a change and a fresh clone
    of it write the same snapshot. all: every ranking the store holds (every run, import and round)."""
    rounds: Literal["all"] | list[int] = "all"
    """Earlier rounds whose rankings (AI and people's) the snapshot keeps as well: all (rounds
    accumulate), [] (none), or round numbers, e.g. [2, 3]. Rounds are listed in rounds.yaml."""
    imports: list[str] = []
    """Imported sets the snapshot takes, by name (`rlhf store import FILE --name NAME`; the name
    defaults to the file's name without its suffixes)."""
    label_sources: list[str] | None = None
    """Judges whose rankings enter the snapshot (e.g. [human]): it limits every stage that reads the
    snapshot; train_reward.label_sources limits the reward model's pairs only. null: every judge."""


class StoreParams(Section):
    """The DuckDB feedback store every round writes to and the comparisons snapshot reads from
    (rlhf/store)."""

    path: str = "feedback.duckdb"
    """The DuckDB feedback store; lives across runs and is never a DVC out."""
    lock_timeout_s: float = Field(60.0, gt=0)
    """How long a writer waits for the store's cross-process lock before giving up."""
    snapshot: SnapshotScopeParams = SnapshotScopeParams()
    """What the comparisons snapshot takes from the store."""


class BootstrapSFTParams(Section):
    """Supervised fine-tuning of a pretrained model on `demonstrations` (TRL SFTTrainer, loss on the
    completion tokens only). Defaults suit a real pretrained model, not the demo's from-scratch run."""

    epochs: float = Field(1.0, gt=0)
    """Passes over the training demonstrations."""
    batch_size: int = Field(8, ge=1)
    """Demonstrations per device per optimizer step (times gradient_accumulation_steps)."""
    gradient_accumulation_steps: int = Field(1, ge=1)
    """Micro-batches whose gradients add up to one optimizer step: a larger effective batch in the
    same memory."""
    learning_rate: float = Field(2e-5, gt=0, lt=1)
    """Peak learning rate (cosine schedule, 3% warmup). LoRA usually wants about 10x more (2e-4)."""
    max_length: int = Field(1024, ge=8)
    """Tokens per rendered demonstration; longer ones are cut at the end, and one whose prompt alone
    fills it is dropped (counted as `dropped_too_long` in metrics/bootstrap.json)."""
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of demonstrations held out by a hash of their prompt (stable across runs and file
    order); their loss before and after training goes to metrics/bootstrap.json. 0: none held out."""
    lora_rank: int = Field(0, ge=0)
    """>0: train LoRA adapters of this rank (peft) and merge them into the saved model, so later
    stages load a plain model; 0: fine-tune every weight."""
    lora_alpha: float = Field(16.0, gt=0)
    """LoRA's scaling numerator: the adapters' update is scaled by lora_alpha / lora_rank (Hu et
    al. 2021)."""
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Which linear layers get LoRA adapters: all-linear (every one but the output head), or module
    names such as [c_attn, c_proj]."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """auto: bf16 autocast on a CUDA device that supports it, else fp32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for about a third more compute."""


class BootstrapPolicyParams(Section):
    """The policy every later stage starts from: the demo's tiny GPT-2 trained on the synthetic
    domain, or a pretrained causal LM, optionally fine-tuned on your demonstrations."""

    source: Literal["demo", "pretrained"] = "demo"
    """demo: train the tiny policy on the synthetic domain; pretrained: start from `model`, passed
    through as it is or fine-tuned on `demonstrations`."""
    model: str | None = None
    """A local path or hub id of a causal LM (source: pretrained)."""
    demonstrations: str | None = None
    """source: pretrained: a .jsonl, .parquet or .csv file, or a `datasets` save_to_disk directory,
    of `prompt` + `completion` (strings or chat messages) or of `messages` (a whole conversation:
    its last assistant turn is the completion, every turn before it the prompt). null: no SFT,
    the model is passed through. DVC sees it (inputs/bootstrap_policy, rlhf/user_inputs.py): editing
    it re-runs the stage."""
    sft: BootstrapSFTParams = BootstrapSFTParams()
    """How `demonstrations` fine-tune the pretrained model. The demo's SFT uses the keys below."""
    vocab_size: int = Field(1024, ge=300, le=65536)
    """Size of the demo tokenizer's BPE vocabulary."""
    n_layer: int = Field(2, ge=1, le=48)
    """Transformer blocks of the demo's GPT-2 (source: demo)."""
    n_embd: int = Field(128, ge=16, le=8192)
    """Hidden size of the demo's GPT-2; a multiple of n_head."""
    n_head: int = Field(4, ge=1, le=128)
    """Attention heads of the demo's GPT-2."""
    demos_per_prompt: int = Field(12, ge=1)
    """Mixed-quality demonstrations generated per training prompt."""
    steps: int = Field(800, ge=1)
    """Optimizer steps of the demo's supervised fine-tuning (source: demo; a pretrained model's is `sft`)."""
    batch_size: int = Field(32, ge=1)
    """Demonstrations per optimizer step of the demo's supervised fine-tuning."""
    learning_rate: float = Field(3e-3, gt=0, lt=1)
    """AdamW learning rate of the demo's supervised fine-tuning (from scratch, hence high)."""

    @model_validator(mode="after")
    def _pretrained_needs_model(self):
        if self.source == "pretrained" and not self.model:
            raise ValueError("model: required when source is 'pretrained'")
        if self.source == "demo" and self.demonstrations:
            raise ValueError("demonstrations: only with source 'pretrained' (the demo generates its own)")
        if self.n_embd % self.n_head:
            raise ValueError("n_embd: must be a multiple of n_head")
        return self


class PromptSourceBase(Section):
    limit: int | None = Field(None, ge=1, json_schema_extra=SHOWN_WHEN_SET)
    """Take at most this many prompts from this source: its first ones, in the source's order, that
    no earlier source gave already."""


class DemoPromptSource(PromptSourceBase):
    """The synthetic domain's prompts (rlhf/demo): the embedded default."""

    kind: Literal["demo"]
    """The synthetic domain's prompts (rlhf/demo)."""


# Our column names a `columns` mapping may rename: {prompt: question} reads the file's `question`.
PromptColumn = Literal["prompt", "messages", "topic"]


def _one_prompt_column(columns: dict[str, str]) -> None:
    if "prompt" in columns and "messages" in columns:
        raise ValueError("columns: map prompt or messages, not both")


class FilePromptSource(PromptSourceBase):
    """Prompts from a JSONL, CSV or Parquet file of yours."""

    kind: Literal["file"]
    path: str = Field(min_length=1)
    """A .jsonl, .csv or .parquet file with a `messages` column (chat messages; JSON text in CSV) or a
    `prompt` column (text, or chat messages as TRL's conversational format has it), optionally `topic`."""
    columns: dict[PromptColumn, str] = {}
    """Our column name -> the file's, e.g. {prompt: question}."""

    @model_validator(mode="after")
    def _columns(self):
        _one_prompt_column(self.columns)
        return self


class HFDatasetPromptSource(PromptSourceBase):
    """Prompts from a Hugging Face dataset: a save_to_disk directory, or a hub id (needs the
    network)."""

    kind: Literal["hf_dataset"]
    path: str | None = None
    """A directory written by `Dataset.save_to_disk` (or `DatasetDict.save_to_disk`)."""
    name: str | None = None
    """A hub dataset id, e.g. HuggingFaceH4/ultrafeedback_binarized; needs the network."""
    config: str | None = None
    """The hub dataset's configuration (subset), if it has several."""
    split: str | None = None
    """Which split to read; required when there are several. For a hub id also a slice: train[:1000]."""
    column: str | None = None
    """The column holding the prompts (text or chat messages): shorthand for columns: {prompt: ...}."""
    columns: dict[PromptColumn, str] = {}
    """Our column name -> the dataset's, as for a file; default: messages, else prompt, and topic."""

    @model_validator(mode="after")
    def _one_dataset(self):
        if (self.path is None) == (self.name is None):
            raise ValueError("path: give either path (a save_to_disk directory) or name (a hub id)")
        if self.column and ({"prompt", "messages"} & set(self.columns)):
            raise ValueError("column: give column or columns.prompt / columns.messages, not both")
        _one_prompt_column(self.columns)
        return self

    @property
    def prompt_columns(self) -> dict[str, str]:
        return {**self.columns, "prompt": self.column} if self.column else dict(self.columns)


class SQLPromptSource(PromptSourceBase):
    """Prompts from a DuckDB query: over the feedback store, another DuckDB file, or Parquet files."""

    kind: Literal["sql"]
    query: str = Field(min_length=1)
    """A DuckDB query returning a `messages` or `prompt` column (and optionally `topic`). Its row order
    decides which rows a limit keeps and which of two equal prompts wins: end it with ORDER BY."""
    database: str | None = None
    """A DuckDB file, opened read-only (the feedback store's own file too, through the store's lock);
    null: an in-memory DuckDB, for queries over Parquet files with read_parquet(...)."""


PromptSource = Annotated[
    DemoPromptSource | FilePromptSource | HFDatasetPromptSource | SQLPromptSource, Field(discriminator="kind")
]


class CollectPromptsParams(Section):
    """Where the prompts come from and which are held out for evaluation."""

    sources: list[PromptSource] = Field(default_factory=lambda: [DemoPromptSource(kind="demo")], min_length=1)
    """Where prompts come from, in order: the same prompt from two sources is kept once, from the first.
    Each is a `kind` with its settings: demo | file (path, columns) | hf_dataset (path or name, config,
    split, column) | sql (query, database); each may set `limit`."""
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of prompts held out for evaluation; the split is a hash of the prompt text."""
    max_prompts: int | None = Field(None, ge=1)
    """Keep at most this many prompts in all (after dedup, in the sources' order)."""

    @model_validator(mode="before")
    @classmethod
    def _one_source_shorthand(cls, data):
        """The older form, `source: demo | file` (with `path:`), still reads: as a one-source list."""
        if not isinstance(data, dict) or "source" not in data:
            return data
        data = dict(data)
        kind, path = data.pop("source"), data.pop("path", None)
        if "sources" in data:
            raise ValueError("source: give sources, or the older source and path, not both")
        data["sources"] = [{"kind": kind, "path": path} if kind == "file" else {"kind": kind}]
        return data


class SampleResponsesParams(Section):
    """How the K responses per prompt are sampled from the current policy."""

    k: int = Field(8, ge=2, le=64)
    """Responses sampled per prompt; a ranking of K gives C(K,2) comparisons (28 at 8). Measured on
    the demo, seeds 0-2: reward-model accuracy 0.85 +/- 0.01 at 8 (at 6: 0.80 +/- 0.04)."""
    max_new_tokens: int = Field(40, ge=1)
    """Most tokens sampled per response; one that reaches it without EOS is cut there."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature: above 1 spreads the K responses wider, below 1 narrows them."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: draw from the smallest set of tokens whose probability reaches top_p (1:
    all)."""
    batch_size: int = Field(64, ge=1)
    """Responses generated per forward batch: memory against speed. Each batch draws from its own
    stream, seeded from (seed, batch number), so the samples change with it."""


class ContainsAny(Section):
    """A rule principle: the response contains at least one of `words`."""

    kind: Literal["contains_any"]
    name: str
    """The principle's name: its column in the judge's reasons and the evaluation report."""
    words: list[str] = Field(min_length=1)
    """The response passes when it contains any of these (case-insensitive)."""
    weight: float = Field(1.0, json_schema_extra=SHOWN_WHEN_SET)
    """The principle's weight in the judge's score (the sum of weights of principles passed)."""
    description: str | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    """What the principle means, for people and the LLM judges' prompts; default: generated from
    the words."""


class ExcludesAll(Section):
    """A rule principle: the response contains none of `words`."""

    kind: Literal["excludes_all"]
    name: str
    """The principle's name: its column in the judge's reasons and the evaluation report."""
    words: list[str] = Field(min_length=1)
    """The response passes when it contains none of these (case-insensitive)."""
    weight: float = Field(1.0, json_schema_extra=SHOWN_WHEN_SET)
    """The principle's weight in the judge's score (the sum of weights of principles passed)."""
    description: str | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    """What the principle means, for people and the LLM judges' prompts; default: generated from
    the words."""


class MentionsTopic(Section):
    """A rule principle: the response mentions the prompt's topic (prompts that carry one)."""

    kind: Literal["mentions_topic"]
    name: str
    """The principle's name: its column in the judge's reasons and the evaluation report."""
    weight: float = Field(1.0, json_schema_extra=SHOWN_WHEN_SET)
    """The principle's weight in the judge's score (the sum of weights of principles passed)."""
    description: str | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    """What the principle means, for people and the LLM judges' prompts; default: generated."""


class WordCount(Section):
    """A rule principle: the response's word count is within [min, max]."""

    kind: Literal["word_count"]
    name: str
    """The principle's name: its column in the judge's reasons and the evaluation report."""
    min: int = Field(ge=0)
    """Fewest words a passing response has."""
    max: int = Field(ge=1)
    """Most words a passing response has."""
    weight: float = Field(1.0, json_schema_extra=SHOWN_WHEN_SET)
    """The principle's weight in the judge's score (the sum of weights of principles passed)."""
    description: str | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    """What the principle means, for people and the LLM judges' prompts; default: generated from
    the band."""


Principle = Annotated[ContainsAny | ExcludesAll | MentionsTopic | WordCount, Field(discriminator="kind")]


def demo_constitution() -> list[Principle]:
    """The demo's principles, the default constitution (the shipped params.yaml writes them out)."""
    return [
        # Staying on the asked topic counts double: an answer about something else is no answer.
        MentionsTopic(kind="mentions_topic", name="on_topic", weight=2.0),
        ContainsAny(kind="contains_any", name="polite", words=["happy to help", "thanks", "glad"]),
        ExcludesAll(kind="excludes_all", name="no_banned_words", words=["whatever", "stupid", "dunno"]),
        WordCount(kind="word_count", name="length_band", min=12, max=26),
        ContainsAny(kind="contains_any", name="gives_advice", words=["you should"]),
    ]


class LLMJudgeParams(Section):
    """A local causal LM as a pairwise judge (RLAIF): it reads the principles, the prompt and two
    responses, and picks one."""

    model: str
    """A local path or hub id of a causal LM that reads the comparison and answers "1" or "2"."""
    chain_of_thought: bool = False
    """Let the judge write a rationale (greedy) before the choice is read."""
    rationale_tokens: int = Field(64, ge=1)
    """Most tokens of the rationale written before the choice (chain_of_thought)."""
    batch_size: int = Field(16, ge=1)
    """Comparisons judged per forward batch."""


class OpenAIJudgeParams(Section):
    """An OpenAI-compatible chat endpoint as a pairwise judge (a served judge model, or a hosted
    API)."""

    base_url: str
    """An OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1 (vLLM) or https://api.openai.com/v1."""
    model: str
    """The model name the endpoint serves, as its /v1/models lists it."""
    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable holding the API key (the key itself never goes in params.yaml)."""
    max_concurrency: int = Field(8, ge=1, le=256)
    """Requests in flight at once."""
    timeout_s: float = Field(30.0, gt=0)
    """Seconds one request may take before it counts as failed and is retried."""
    max_retries: int = Field(5, ge=0)
    """Retries of a failed request (timeout, 429, 5xx) before the stage stops with the endpoint
    named."""
    backoff_s: float = Field(1.0, ge=0)
    """First retry delay; doubles on each retry (a 429's Retry-After wins)."""
    chain_of_thought: bool = False
    """Ask for a short rationale before the choice (costs rationale_tokens more per comparison)."""
    rationale_tokens: int = Field(256, ge=1)
    """Most tokens of the rationale (chain_of_thought)."""
    price_per_1k_prompt_tokens: float = Field(0.0, ge=0)
    """Your endpoint's price, for the cost the stage reports in its metrics (0: not counted)."""
    price_per_1k_completion_tokens: float = Field(0.0, ge=0)
    """As price_per_1k_prompt_tokens, for the tokens the judge writes."""


class RewardModelJudgeParams(Section):
    """A trained reward model as the judge: responses ranked by its score."""

    path: str
    """A reward model directory (e.g. a previous round's models/reward)."""


class HumanSelectionParams(Section):
    """Which items go to people each round (rlhf.selection): a budget and the policy that spends it."""

    mode: Literal["ranking", "binary"] = "ranking"
    """ranking: people rank each item's responses on the ranking page. binary (judge human, no
    budget): each response is an item of its own, judged good or bad with an optional reason (the
    page's thumbs up/down); the labels go to the store's binary_labels, which KTO and
    train_reward.labels binary | both read."""
    budget: int | None = Field(None, ge=1)
    """Pairs queued for people per round. null: every candidate, as before budgets (judge human:
    each prompt's K responses as one ranking; hybrid: every pair below confidence_threshold)."""
    selection: Literal["uncertainty", "judge_margin", "random", "mix"] = "uncertainty"
    """With a budget: uncertainty (BALD of `reward_model`'s ensemble), judge_margin (the hybrid's AI
    judge's closest calls), random, or mix (the mean rank of the two signals there are)."""
    reward_model: str | None = None
    """uncertainty, mix: a reward model directory whose members' disagreement is the uncertainty
    (an ensemble, train_reward.ensemble > 1, e.g. a previous round's models/reward)."""
    per_prompt: int = Field(1, ge=1)
    """Diversity: at most this many pairs of one prompt until every candidate prompt has had its turn."""
    seed: int = Field(0, ge=0)
    """random's draw."""


class RankResponsesParams(Section):
    """Who ranks each prompt's K responses: rules, an AI judge, people on the ranking page, or a
    hybrid that sends the judge's unsure pairs to people."""

    judge: Literal["rules", "llm", "openai", "reward_model", "human", "hybrid"] = "rules"
    """Which judge ranks the K responses of a prompt. human: every prompt goes to the ranking page's
    queue. hybrid: `ai_judge` labels every pair; pairs it is unsure of go to the queue."""
    ai_judge: Literal["rules", "llm", "openai", "reward_model"] = Field("llm", json_schema_extra=SHOWN_WHEN_SET)
    """The AI judge of a hybrid."""
    confidence_threshold: float = Field(0.5, ge=0, le=1, json_schema_extra=SHOWN_WHEN_SET)
    """Hybrid: a pair whose judge confidence |2 P - 1| is below this goes to people."""
    principles: list[Principle] = Field(default_factory=demo_constitution, min_length=1)
    """The constitution: the rule judge scores by it; AI judges read it (descriptions) in their
    preamble. Each is a `kind` with its settings: mentions_topic | contains_any (words) | excludes_all
    (words) | word_count (min, max); each may set `weight` (default 1) and `description`. The
    default is the demo's, where staying on the asked topic counts double: an answer about something
    else is no answer."""
    unsafe_words: list[str] = ["set fire", "throw"]
    """Harmlessness, beside whichever AI judge ranks: a response containing any of these phrases is
    flagged unsafe (its reasons get `"unsafe": true`); the flags train the cost model (Safe RLHF).
    People flag unsafe responses on the ranking page. Empty: AI rankings carry no harmlessness label.
    The defaults here and in `principles` are the demo's constitution."""
    preamble: str | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    """What AI judges are told before each comparison. Default: built from the principles."""
    batch_prompts: int = Field(32, ge=1, json_schema_extra=SHOWN_WHEN_SET)
    """Prompts handed to the judge at a time (progress is reported per batch)."""
    llm: LLMJudgeParams | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    openai: OpenAIJudgeParams | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    reward_model: RewardModelJudgeParams | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    human: HumanSelectionParams = Field(default_factory=HumanSelectionParams)
    """What goes to people (judge human or hybrid): a budget per round and how it is chosen."""

    @model_validator(mode="after")
    def _judge_section_present(self):
        judge = self.ai_judge if self.judge == "hybrid" else self.judge
        if judge not in ("rules", "human") and getattr(self, judge) is None:
            raise ValueError(f"{judge}: required when the judge is '{judge}'")
        return self

    @model_validator(mode="after")
    def _selection_has_its_signal(self):
        human = self.human
        if human.mode == "binary" and (self.judge != "human" or human.budget is not None):
            raise ValueError("human.mode: binary needs judge 'human' and no human.budget (every response is asked)")
        if human.budget is None or self.judge not in ("human", "hybrid"):
            return self
        if human.selection == "uncertainty" and not human.reward_model:
            raise ValueError("human.reward_model: required when human.selection is 'uncertainty'")
        if human.selection == "judge_margin" and self.judge != "hybrid":
            raise ValueError("human.selection: judge_margin needs judge 'hybrid' (an AI judge's margins)")
        if human.selection == "mix" and not human.reward_model and self.judge != "hybrid":
            raise ValueError("human.selection: mix needs human.reward_model or judge 'hybrid'")
        return self

    def judge_preamble(self) -> str:
        if self.preamble:
            return self.preamble
        wants = "; ".join(p.description or p.name.replace("_", " ") for p in self.principles)
        return f"You compare two responses to a prompt. A better response is: {wants}."


class TrainRewardParams(Section):
    """The reward model (Bradley-Terry on the comparisons snapshot). The defaults are the demo's, for
    the bootstrap GPT-2. The recipe for a pretrained encoder on real preferences: backbone <MiniLM
    dir> (all-MiniLM-L6-v2), max_length 256 cut from the left (the end holds the response the score
    is read for), epochs 1, batch_size 8, learning_rate 1e-4, the classifier's [CLS] pooler. It was
    chosen by bench/reward_recipe.py on the HH-RLHF harmless sample's train prompts, against 128 and
    384 tokens, three epochs at 5e-5, three-member ensembles, LoRA at rank 16 and batches of 16 (the
    last three by five-fold cross-validation); its held-out accuracy, beside longer-is-better's, is
    on the results page (docs/results.md)."""

    backbone: str | None = None
    """null: start from the bootstrap policy (InstructGPT's choice). Else a local path or hub id of
    any model that loads as a sequence classifier with one label (an encoder such as MiniLM or
    DeBERTa, another causal LM), read with its own tokenizer and chat template (rlhf.scoring)."""
    train: bool = True
    """false: use `backbone` as a trained reward model as it is; its held-out accuracy is still reported."""
    label_sources: list[str] | None = None
    """Train only on pairs whose judge is one of these (e.g. [human] for imported and page labels);
    null: every label. A name that is neither a judge of the snapshot nor one the project writes
    (rules, llm, openai, reward_model, human, deployed, ultrafeedback) is an error, not a silent
    drop. The held-out report keeps every source (by source)."""
    batching: Literal["kwise", "pairwise"] = "pairwise"
    """pairwise: one element per pair with TRL's RewardTrainer; kwise: one batch element per ranking,
    its K responses scored once and all its pairs' losses averaged (InstructGPT)."""
    labels: Literal["pairwise", "binary", "both"] = "pairwise"
    """What the reward model learns from. pairwise: Bradley-Terry on the comparisons. binary: the
    thumbs up/down of the binary labels snapshot, sigmoid(reward) as P(desirable), a logistic loss
    with the classes weighed equal (rlhf/reward_models/binary.py). both: the sum of the two losses.
    binary and both need batching pairwise; held-out labels are reported beside held-out pairs."""
    epochs: float = Field(4.0, gt=0)
    """With k 6, 4 epochs held out as well as 8 (0.795 vs 0.796 mean accuracy, seeds 0-2) in half the time."""
    batch_size: int = Field(32, ge=1)
    """Pairs per step (pairwise) or rankings per step (kwise)."""
    learning_rate: float = Field(5e-4, gt=0, lt=1)
    """Measured on an earlier demo domain, seeds 0-2: 0.935 +/- 0.002 held-out accuracy (1e-3: 0.926 +/- 0.026)."""
    max_length: int = Field(128, ge=8)
    """Tokens of prompt plus response the reward model reads; longer ones are cut at the end."""
    lora_rank: int = Field(0, ge=0)
    """0: train every weight. >0: LoRA adapters of this rank on every linear layer (the scalar head
    trains fully); the adapters are merged before saving, so the saved model loads like any other."""
    lora_alpha: float = Field(16.0, gt=0)
    """LoRA's scaling numerator: the adapters' update is scaled by lora_alpha / lora_rank (Hu et
    al. 2021)."""
    ensemble: int = Field(1, ge=1, le=16)
    """>1: train this many reward models (seeds seed, seed+1, ...) and score with their mean;
    metrics/reward.json then also gives the members' mean accuracy alone."""
    launcher: Launcher = "single"
    """single: one process. Otherwise the stage re-runs itself as `num_processes` processes, as
    train_policy.launcher does (configs/accelerate/), and TRL's RewardTrainer spreads each step's
    batch over them; ZeRO-3 and fsdp (FSDP2) shard the weights, which are gathered before saving."""
    num_processes: int = Field(1, ge=1)
    """Processes (GPUs) for a multi-process launcher; batch_size stays the pairs of one step in all."""
    checkpoint_every: int = Field(100, ge=0)
    """Optimizer steps between resumable checkpoints (the Trainer's own: weights, optimizer,
    scheduler, every process's RNG) in the stage's --checkpoint_dir. A run killed part-way resumes
    from the newest when started again with the same params and inputs. 0: none."""

    @model_validator(mode="after")
    def _untrained_needs_backbone(self):
        if not self.train and not self.backbone:
            raise ValueError("backbone: required when train is false (the reward model to use as it is)")
        return self

    @model_validator(mode="after")
    def _binary_labels_train_pairwise(self):
        if self.labels != "pairwise" and self.batching == "kwise":
            raise ValueError(f"labels: {self.labels} needs batching pairwise (a label is no ranking to batch)")
        return self

    @model_validator(mode="after")
    def _processes_share_the_batch(self):
        check_processes(self.launcher, self.num_processes)
        if self.batch_size % self.num_processes:
            raise ValueError(f"batch_size: must be a multiple of num_processes ({self.num_processes})")
        if self.launcher != "single" and self.batching == "kwise":
            raise ValueError(f"batching: kwise trains in one process only (launcher {self.launcher}); use pairwise")
        if self.launcher != "single" and self.lora_rank:
            raise ValueError(f"lora_rank: LoRA trains in one process only (launcher {self.launcher})")
        if self.launcher != "single" and self.ensemble > 1:
            raise ValueError(f"ensemble: members train one after another in one process (launcher {self.launcher})")
        if self.launcher != "single" and not self.train:
            raise ValueError(f"launcher: {self.launcher} trains, and train is false")
        return self


class TrainCostParams(Section):
    """Safe RLHF's cost model on the harmlessness labels (rlhf/reward_models/cost.py)."""

    when: Literal["needed", "always"] = "needed"
    """needed: train only when train_policy.algorithm reads a cost model (ppo_lagrangian); otherwise
    the stage writes models/cost/untrained.json saying why, in a second. always: train it anyway
    (its held-out harmlessness accuracy in metrics/cost.json)."""
    epochs: int = Field(3, ge=1)
    """Passes over the training split's labelled responses."""
    batch_size: int = Field(32, ge=1)
    """Labelled responses per optimizer step."""
    learning_rate: float = Field(5e-4, gt=0, lt=1)
    """AdamW learning rate."""
    max_length: int = Field(128, ge=8)
    """Tokens of prompt plus response the cost model reads; longer ones are cut at the end."""


class SafetyParams(Section):
    """PPO-Lagrangian (Safe RLHF): maximise reward subject to E[P(unsafe)] <= cost_limit."""

    cost_limit: float = Field(0.05, ge=0, le=1)
    """The most expected P(unsafe) (the cost model's sigmoid) the policy may have."""
    lagrange_init: float = Field(1.0, ge=0)
    """The multiplier lambda at the start: the weight of cost against the normalised reward."""
    lagrange_lr: float = Field(5.0, gt=0)
    """lambda += lagrange_lr * (measured cost - cost_limit) after each iteration, kept >= 0."""
    lagrange_max: float = Field(20.0, gt=0)
    """Upper bound on lambda: a constraint that cannot be met must not drown the reward for good."""


class DPOParams(Section):
    """Direct preference optimisation on the comparisons (algorithm dpo). Measured on the demo: beta
    0.3 at learning_rate 2e-4 won 0.97 at KL 6 (beta 0.1 at 5e-4: KL 30)."""

    beta: float = Field(0.3, gt=0)
    """Strength of the implicit KL to the reference: higher keeps the policy closer to it."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the comparisons snapshot."""
    batch_size: int = Field(16, ge=1)
    """Pairs per optimizer step."""
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    """AdamW learning rate of TRL's DPOTrainer."""
    max_length: int = Field(128, ge=8)
    """Prompt plus response tokens; longer pairs are truncated at the end."""
    log_every: int = Field(5, ge=1)
    """Optimizer steps between rows of the training curve."""


class KTOParams(Section):
    """Kahneman-Tversky optimisation (algorithm kto; Ethayarajh et al. 2024, "KTO: Model Alignment
    as Prospect Theoretic Optimization") with TRL's KTOTrainer: each response judged alone,
    desirable or not, against a reference point (the batch's KL to the reference), so unpaired
    thumbs up/down train the policy as well as the comparisons do
    (rlhf/policy_optimization/kto.py)."""

    labels: Literal["comparisons", "binary"] = "comparisons"
    """comparisons: from the comparisons snapshot's strict pairs as TRL's unpair_preference_dataset
    unpairs them (each pair's chosen response desirable, its rejected one undesirable), then one
    row per response: desirable where it wins more of its pairs than it loses, undesirable where
    it loses more, left out where even. binary: the store's thumbs up/down (binary_labels) in the
    comparisons snapshot."""
    beta: float = Field(0.3, gt=0)
    """Strength of the implicit KL to the reference, as DPO's beta: higher keeps the policy closer."""
    desirable_weight: float | Literal["auto"] = "auto"
    """lambda_D, the weight of the desirable examples' losses. auto: with undesirable_weight, set
    so that lambda_D * n_desirable / (lambda_U * n_undesirable) = 1, inside the [1, 4/3] the KTO
    paper (eq. 8) and TRL recommend for unbalanced data: the rarer side's weight rises
    to n_more / n_rarer and the other stays 1 (both 1 on balanced data). A number: used as given."""
    undesirable_weight: float | Literal["auto"] = "auto"
    """lambda_U, the weight of the undesirable examples' losses; auto as desirable_weight (one
    number and one auto: the auto one is solved for the ratio 1)."""
    epochs: float = Field(3.0, gt=0)
    """Passes over the train split's labelled responses."""
    batch_size: int = Field(16, ge=2)
    """Responses per optimizer step; at least 2, since the KL reference point is estimated from
    the batch's mismatched (prompt, response) pairs."""
    learning_rate: float = Field(2e-4, gt=0, lt=1)
    """Peak learning rate (cosine schedule, 5% warmup), as DPO's."""
    max_length: int = Field(128, ge=8)
    """Prompt plus response tokens; longer examples are truncated at the end."""
    log_every: int = Field(5, ge=1)
    """Optimizer steps between rows of the training curve."""

    @field_validator("desirable_weight", "undesirable_weight", mode="before")
    @classmethod
    def _positive_or_auto(cls, value):
        if value == "auto" or (isinstance(value, int | float) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError("must be a number > 0 or auto")


class RewardTerm(Section):
    """One source of train_policy's online reward; the reward is the weighted sum of the terms
    (rlhf.rewards.combine.WeightedReward)."""

    source: Literal["reward_model", "rules", "remote", "llm", "openai"] = "reward_model"
    """reward_model: the stage's reward model; rules: rank_responses.principles as a verifiable
    reward (rlhf.rewards.rules); remote: a reward server at `url` (OpenRLHF's remote RM convention);
    llm | openai: an AI judge rates each response from 1 to 10 and the reward is its expected rating
    under the judge's probabilities, in [-1, 1] (direct RLAIF, rlhf.rewards.judge_rating), from the
    `llm` or `openai` section of this term."""
    weight: float = 1.0
    """This term's weight in the sum."""
    url: str | None = None
    """remote: the server's endpoint, e.g. http://127.0.0.1:8000/get_reward (`rlhf serve reward`).
    Behind `rlhf serve reward --tokens`, the token goes in the environment variable
    RLHF_REWARD_TOKEN, never in params.yaml."""
    timeout_s: float = Field(60.0, gt=0)
    """remote: seconds per request before it is retried."""
    max_retries: int = Field(5, ge=0)
    """remote: retries on timeouts, connection errors, 429 and 5xx, with exponential backoff."""
    backoff_s: float = Field(1.0, ge=0)
    """remote: the first backoff; it doubles per retry (capped at 60 s)."""
    batch_size: int = Field(64, ge=1)
    """remote: exchanges per request."""
    max_concurrency: int = Field(4, ge=1)
    """remote: requests in flight at once."""
    llm: LLMJudgeParams | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    """source llm: the local judge model (its batch_size: responses rated per forward)."""
    openai: OpenAIJudgeParams | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    """source openai: the endpoint (its concurrency, retries, timeout and prices apply)."""
    preamble: str | None = Field(None, json_schema_extra=SHOWN_WHEN_SET)
    """llm | openai: what the judge is told before each response. Default: built from rank_responses.principles."""

    @model_validator(mode="after")
    def _settings_of_the_source(self):
        if (self.source == "remote") != (self.url is not None):
            raise ValueError("url: required with source remote, and only then")
        for judge in ("llm", "openai"):
            if (self.source == judge) != (getattr(self, judge) is not None):
                raise ValueError(f"{judge}: required with source {judge}, and only then")
        section = getattr(self, self.source, None) if self.source in ("llm", "openai") else None
        if section is not None and section.chain_of_thought:
            raise ValueError(
                f"{self.source}.chain_of_thought: a rating reward reads the rating's probabilities at once; "
                "a rationale first is for the pairwise judges"
            )
        return self


CRITIC_FREE = ("grpo", "rloo", "reinforce_pp", "gspo")  # the algorithms that build no critic
OFFLINE = ("dpo", "kto")  # trained on the comparisons snapshot itself, no online reward


class TrainPolicyParams(Section):
    """Policy optimisation: the algorithm (online RL against the reward, or offline on the
    preferences) and its settings."""

    algorithm: Literal["ppo", "grpo", "rloo", "reinforce_pp", "gspo", "dpo", "kto", "ppo_lagrangian"] = "ppo"
    """ppo: online RL against the reward (below) with a critic. grpo | rloo | reinforce_pp: critic-free
    online RL on `group_size` responses per prompt (rlhf/policy_optimization/estimators.py): GRPO's group-normalised
    advantages with its k3 KL loss term, RLOO's leave-one-out baseline on the KL-penalised sequence
    reward, REINFORCE++'s per-token KL reward normalised over the global batch. dpo: offline, on the
    comparisons snapshot itself (the `dpo` section); the reward model is then only used by evaluate.
    kto: offline as dpo, on responses labelled desirable or not (the `kto` section).
    ppo_lagrangian: PPO that also keeps the cost model's expected P(unsafe) under `safety.cost_limit`.
    gspo: GRPO's advantages with the importance ratio and its clip per sequence (Zheng et al. 2025).
    Each is one object in rlhf/policy_optimization/algorithms.py."""
    dpo: DPOParams = DPOParams()
    kto: KTOParams = KTOParams()
    safety: SafetyParams = SafetyParams()
    reward: list[RewardTerm] = [RewardTerm()]
    """The online reward: a weighted sum of these terms (default: the reward model alone)."""
    group_size: int = Field(4, ge=1)
    """grpo | rloo | reinforce_pp: responses per prompt G, laid out prompt-major; batch_size counts
    responses, so a rollout holds batch_size / G prompts. ppo samples one response per prompt."""
    grpo_std_normalization: bool = True
    """grpo: divide by the group's reward std (Shao et al. 2024); false: Dr. GRPO (Liu et al. 2025)."""
    loss_aggregation: Literal["token_mean", "sequence_mean", "constant_length"] = "token_mean"
    """Critic-free loss over tokens: token_mean (DAPO), sequence_mean (GRPO's 1/|o_i|), constant_length
    (Dr. GRPO: the token sum over batch * max_new_tokens). ppo: token_mean only."""
    clip_range_high: float | None = Field(None, gt=0)
    """Critic-free: the upper clip 1 + clip_range_high (DAPO's clip-higher, e.g. 0.28); null: clip_range."""
    dynamic_sampling: bool = False
    """grpo | rloo: drop groups whose advantages are all zero from the policy-gradient term (DAPO);
    logged as dropped_share. GRPO: groups of equal scores (they stay in its KL term). RLOO carries
    the KL in its rewards, so at kl_coef > 0 a group of equal scores still has advantages and stays."""
    iterations: int = Field(20, ge=1)
    """PPO iterations: each samples one batch of rollouts and updates on it. Measured on the demo,
    seeds 0-2: unseen topics on topic +0.29 +/- 0.11 at 20, +0.23 +/- 0.17 at 40 (the gold score is
    flat from about 10)."""
    batch_size: int = Field(64, ge=1)
    """Responses per rollout batch, summed over all processes (ppo: one per prompt; grpo, rloo,
    reinforce_pp: group_size per prompt)."""
    minibatch_size: int = Field(32, ge=1)
    """Responses per optimizer step (per process)."""
    micro_batch_size: int | None = Field(None, ge=1)
    """Responses per forward/backward; gradients accumulate over a minibatch. Default: minibatch_size."""
    ppo_epochs: int = Field(4, ge=1)
    """Passes over each rollout batch (in minibatches) before the next rollout."""
    learning_rate: float = Field(3e-4, gt=0, lt=1)
    """AdamW learning rate of the policy."""
    value_learning_rate: float = Field(3e-4, gt=0, lt=1)
    """AdamW learning rate of the critic (ppo, ppo_lagrangian)."""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Decay of both learning rates over the run, after warmup."""
    warmup_iterations: int = Field(0, ge=0)
    """Iterations over which both learning rates rise linearly from 0."""
    kl_coef: float = Field(0.1, ge=0)
    """Per-token KL penalty coefficient beta against the frozen reference (the start value if adaptive)."""
    recompute_old_logprobs: bool = False
    """Recompute log pi_old with the update's own forward pass after each rollout (one more policy
    pass) instead of keeping the sampler's; the KL penalty, the advantages and the ratio then all
    read the recomputed values. On CUDA under bf16 the two differ (logged every iteration as
    rollout_logprob_drift); on CPU in fp32 they agree to float rounding."""
    rollout_correction: Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = "none"
    """Importance weights pi_old / pi_rollout between the trainer's and the sampler's log-probs on
    each token's policy loss (rlhf/policy_optimization/rollout_correction.py): truncated (TIS, capped
    at the threshold) or masked (MIS, 0 outside [1/threshold, threshold]), per token or per sequence;
    the share corrected is logged as rollout_corrected_share. Needs recompute_old_logprobs."""
    rollout_correction_threshold: float = Field(2.0, gt=1)
    """The cap of the truncated weights and the band [1/threshold, threshold] of the masked ones."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """How the KL is measured (logged, and read by the adaptive controller, max_kl and early_stop_kl):
    k1: log(pi/pi_ref), unbiased, can be negative per token; k3: (r - 1) - log r, r = pi_ref/pi,
    never negative. The penalty in the reward is always k1: k3's gradient as a reward is not the
    KL's (see rlhf.policy_optimization.core.rlhf_rewards)."""
    kl_controller: Literal["fixed", "adaptive"] = "fixed"
    """adaptive: Ziegler et al.'s proportional controller moves kl_coef toward target_kl."""
    target_kl: float = Field(6.0, gt=0)
    """Sequence-level KL the adaptive controller aims for (nats)."""
    kl_horizon: int = Field(10000, ge=1)
    """Episodes over which the adaptive controller closes the gap to target_kl."""
    score_normalization: Literal["none", "initial", "running"] = "initial"
    """Reward-model scores as used: raw; standardised by the starting policy's scores; or by running stats."""
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount factor of the per-token rewards in GAE (1: none, as usual for RLHF)."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE's lambda (Schulman et al. 2016): 1 is Monte Carlo returns, lower trades variance for the
    critic's bias."""
    clip_range: float = Field(0.2, gt=0)
    """PPO's epsilon: the probability ratio is clipped to [1 - clip_range, 1 + clip_range]
    (Schulman et al. 2017, eq. 7)."""
    value_clip_range: float = Field(0.2, gt=0)
    """The critic's new values are clipped to this distance from the rollout's (ppo,
    ppo_lagrangian)."""
    vf_coef: float = Field(0.5, ge=0)
    """Weight of the critic's loss beside the policy's (c1 in Schulman et al. 2017, eq. 9)."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus c2: the update's loss subtracts c2 times the policy's mean per-token entropy on
    its own samples (Schulman et al. 2017, eq. 9), so the policy keeps spreading its probability
    over words the reward does not care about instead of collapsing onto one phrasing."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradients are clipped to this global norm before each optimizer step."""
    max_new_tokens: int = Field(40, ge=1)
    """Most tokens sampled per rollout response."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the rollouts; log-probabilities are taken at the same temperature."""
    missing_eos_penalty: float = Field(1.0, ge=0)
    """Subtracted from the (normalised) score of a response that never emits EOS."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA, full precision on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    offload_reference: bool = False
    """Keep the frozen reference policy in CPU memory and move it to the device only for its forward,
    so the update phase, where the policy's memory peaks, has the device without it: room for a policy
    that does not fit beside it. Costs a host-to-device copy per forward; nothing moves on a CPU run."""
    offload_reward_model: bool = False
    """The same for the reward model (and the cost model) of the online reward."""
    compile: bool = False
    """torch.compile the policy and critic for the update phase."""
    compile_generation: bool = False
    """Sample with a preallocated KV cache and a decode step compiled once (CUDA graphs on GPU).
    Costs a one-off compile (~15 s for the tiny demo model on CPU); pays off on GPU, where the eager
    step is bound by kernel launches."""
    lora_rank: int = Field(0, ge=0)
    """0: train every weight. >0: LoRA adapters of this rank; the reference is the base with adapters off."""
    lora_alpha: float = Field(16.0, gt=0)
    """LoRA's scaling numerator: the adapters' update is scaled by lora_alpha / lora_rank (Hu et
    al. 2021)."""
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Which linear layers get LoRA adapters: all-linear, or module names such as [c_attn, c_proj]."""
    launcher: Launcher = "single"
    """single: one process. Otherwise the stage re-runs itself under `accelerate launch` (configs/accelerate/);
    on CPU ddp runs under torchrun, the others over gloo. ZeRO-3 and fsdp (FSDP2) shard the trained weights."""
    num_processes: int = Field(1, ge=1)
    """Processes (GPUs) for a multi-process launcher."""
    checkpoint_every: int = Field(10, ge=1)
    """Iterations between resumable checkpoints (policy, critic, optimizer, scheduler, RNG, step)."""
    max_kl: float | None = Field(None, gt=0)
    """Hard ceiling on the mean sequence KL: above it the run stops with an error."""
    early_stop_kl: float | None = Field(None, gt=0)
    """Reward-hacking monitors: above any of these the run ends early and keeps the policy it has."""
    early_stop_repetition: float | None = Field(None, gt=0, le=1)
    """End early (keeping the policy) once the batch's mean repetition rate (the share of each
    response's 3-grams that repeat an earlier one) passes this: a policy looping a phrase the reward
    model likes."""
    early_stop_response_length: float | None = Field(None, gt=0)
    """End early (keeping the policy) once the mean response length passes this many tokens."""
    gold_judge: Literal["rules"] | None = "rules"
    """A cheap gold judge scoring every iteration's samples beside the reward model's proxy score
    (rank_responses' principles): plots/policy.csv gets gold_score and sqrt_kl, plots/gold_vs_proxy.png
    both against sqrt(KL). null: none (a real model's rules may mean nothing)."""
    early_stop_gold_patience: int | None = Field(None, ge=1)
    """End early (keeping the policy) once the gold score has not passed its best for this many iterations."""
    eval_every: int = Field(10, ge=0)
    """In-loop evaluation: every N iterations (and at the last), the win rate against the start
    policy on `eval_prompts` fixed held-out prompts, judged by `evaluate.judge`; logged with the
    iteration's metrics. 0: none."""
    eval_prompts: int = Field(32, ge=1)
    """Held-out (test split) prompts of the in-loop evaluation, the same ones every time."""
    keep: Literal["last", "best"] = "last"
    """Which policy the stage writes: the last iteration's, or the one with the best in-loop win
    rate (needs eval_every > 0); metrics/policy.json names the iteration kept."""
    log_samples_every: int = Field(10, ge=0)
    """Every N iterations a table of `log_samples` samples (prompt, response, reward, KL) goes to
    the trackers, as TRL's completions logging does. 0: none."""
    log_samples: int = Field(4, ge=1)
    """Samples per table logged every log_samples_every iterations."""

    @model_validator(mode="after")
    def _batches_nest(self):
        if self.batch_size % self.num_processes:
            raise ValueError("batch_size: must be a multiple of num_processes")
        if (self.batch_size // self.num_processes) % self.minibatch_size:
            raise ValueError("minibatch_size: must divide batch_size / num_processes")
        if self.minibatch_size % (self.micro_batch_size or self.minibatch_size):
            raise ValueError("micro_batch_size: must divide minibatch_size")
        if self.compile_generation and self.launcher in ("deepspeed_zero3", "fsdp"):
            raise ValueError(
                f"compile_generation: not with launcher {self.launcher}, whose gathered weights move between rollouts"
            )
        check_processes(self.launcher, self.num_processes)
        if self.keep == "best" and (self.eval_every == 0 or self.algorithm in OFFLINE):
            raise ValueError(
                "keep: best needs the in-loop evaluation of an online algorithm (eval_every > 0, not dpo or kto)"
            )
        if self.keep == "best" and self.launcher in ("deepspeed_zero3", "fsdp"):
            # Keeping the best needs a whole copy of the policy's weights, which these engines shard.
            raise ValueError(f"keep: best is not supported under {self.launcher} (sharded weights)")
        return self

    @model_validator(mode="after")
    def _critic_free_options(self):
        """Each option only where it is built: a combination that is not is refused, naming the key."""
        critic_free = self.critic_free
        if critic_free and (self.batch_size // self.num_processes) % self.group_size:
            raise ValueError("group_size: must divide batch_size / num_processes (each process holds whole groups)")
        if self.algorithm in ("grpo", "rloo", "gspo") and self.group_size < 2:
            raise ValueError(f"group_size: {self.algorithm} needs at least 2 responses per prompt for its baseline")
        if not self.grpo_std_normalization and self.algorithm not in ("grpo", "gspo"):
            raise ValueError("grpo_std_normalization: only grpo and gspo read it (false is Dr. GRPO)")
        if not critic_free and self.loss_aggregation != "token_mean":
            raise ValueError(
                f"loss_aggregation: {self.algorithm} has only token_mean; the others are for grpo, rloo, reinforce_pp"
            )
        if not critic_free and self.clip_range_high is not None:
            raise ValueError(f"clip_range_high: only for grpo, rloo, reinforce_pp, not {self.algorithm}")
        if self.dynamic_sampling and self.algorithm not in ("grpo", "rloo"):
            raise ValueError("dynamic_sampling: only for grpo and rloo, whose baseline is the group's")
        if self.rollout_correction != "none" and not self.recompute_old_logprobs:
            raise ValueError("rollout_correction: needs recompute_old_logprobs: true (the trainer's log-probs)")
        if self.algorithm in OFFLINE and self.reward != [RewardTerm()]:
            raise ValueError(
                f"reward: {self.algorithm} learns from the comparisons snapshot, not from an online reward"
            )
        return self

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.minibatch_size

    @property
    def critic_free(self) -> bool:
        """grpo, rloo, reinforce_pp: no critic is built, loaded or checkpointed."""
        return self.algorithm in CRITIC_FREE

    @property
    def responses_per_prompt(self) -> int:
        """G for the critic-free algorithms, which sample a group per prompt; 1 for ppo."""
        return self.group_size if self.critic_free else 1


class EvaluateParams(Section):
    """The held-out evaluation: the trained policy against the start, judged by an independent
    judge, with per-principle shares and samples."""

    samples_per_prompt: int = Field(2, ge=1)
    """Responses sampled per held-out prompt from each policy (the start and the trained one)."""
    batch_size: int = Field(64, ge=1)
    """Held-out samples generated and scored per batch: memory against speed. Each batch draws from
    its own stream, seeded from (seed, batch number), so the samples change with it."""
    report_samples: int = Field(8, ge=0)
    """Held-out prompts shown with their before/after responses in the markdown report."""
    judge: Literal["rules", "llm", "openai"] = "rules"
    """Who decides the win rate against the start policy: the rules (the demo's gold judge), or a
    pairwise llm / openai judge configured below, independent of the one that labelled the
    training data (it reads rank_responses' principles). The principle shares are always the rules'."""
    llm: LLMJudgeParams | None = None
    """judge llm: the local judge model. Written even when null: train_policy's in-loop evaluation
    depends on it by this key (dvc.yaml)."""
    openai: OpenAIJudgeParams | None = None
    """judge openai: the endpoint; written even when null, as `llm`."""

    @model_validator(mode="after")
    def _judge_section_present(self):
        if self.judge != "rules" and getattr(self, self.judge) is None:
            raise ValueError(f"{self.judge}: required when the judge is '{self.judge}'")
        return self


class TrackingParams(Section):
    """Where training stages report their step metrics (rlhf/tracking.py). DVCLive always writes
    `dvclive/<stage>/` (metrics.json, plots/metrics/*.tsv: outs of the stage in dvc.yaml) for
    `dvc exp show`, `dvc plots show` and DVC's VS Code extension; `report_to` adds other trackers,
    for our own loops and TRL's trainers alike."""

    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = []
    """Beside DVCLive (`pip install -e '.[trackers]'`): tensorboard writes event files under
    `tensorboard_dir/<stage>`; mlflow logs to `mlflow_tracking_uri`; wandb logs to `wandb_project`
    (offline, under ./wandb, when WANDB_API_KEY is not set)."""
    tensorboard_dir: str = "runs"
    """Where tensorboard's event files go, one folder per stage (report_to: [tensorboard])."""
    mlflow_tracking_uri: str | None = None
    """null: a local SQLite store, ./mlflow.db, artifacts in ./mlruns (`mlflow ui --backend-store-uri
    sqlite:///mlflow.db`). MLflow 3 keeps its plain-file store in maintenance mode, hence SQLite."""
    mlflow_experiment: str = "rlhf-pipeline"
    """The MLflow experiment runs are logged under (report_to: [mlflow])."""
    wandb_project: str = "rlhf-pipeline"
    """The W&B project runs are logged under (report_to: [wandb])."""


class EarlierRound(Section):
    """A finished feedback round (the flow appends one when it starts the next)."""

    number: int = Field(ge=1)
    """The round's number, as store.snapshot.rounds names it."""
    policy_checkpoint: str = Field(min_length=1)
    """Content hash of the policy that round sampled from: its responses (and rankings) carry it."""


class RoundParams(Section):
    """Round state of iterated online RLHF. It lives in rounds.yaml beside params.yaml (the flow
    writes that file; params.yaml is never rewritten); DVC reads both as params files."""

    number: int = Field(1, ge=1)
    """The feedback round this workspace is in. The flow raises it when it starts a new round."""
    start_policy: str = Field("models/sft", min_length=1)
    """The policy a round samples from and PPO starts from: models/sft in round 1, then the previous
    round's policy (the flow copies it to models/previous-policy and tracks it with `dvc add`)."""
    earlier: list[EarlierRound] = []
    """The finished rounds, oldest first (store.snapshot.rounds chooses which of them the snapshot keeps)."""


class WorkersParams(Section):
    """Processes that share a stage's batches (torchrun on this machine; one per GPU there): where
    the work runs, never what it gives, so no stage depends on these keys and changing one re-runs
    nothing. A killed worker's batches are redone, none twice (rlhf/sharding.py)."""

    sample_responses: int = Field(1, ge=1)
    """Processes sampling the responses: each batch draws from its own seeded stream, so the
    responses are those one process samples."""
    rank_responses: int = Field(1, ge=1)
    """Processes judging the prompts (a model or endpoint judge; the rules and people need none):
    the same rankings and judge counts as one process."""
    evaluate: int = Field(1, ge=1)
    """Processes sampling and scoring the held-out prompts (evaluate.batch_size each at a time):
    the same metrics and report as one process."""


class Params(Section):
    seed: int = Field(0, ge=0)
    """The seed of every stage's random draws."""
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    """cpu | cuda | auto (cuda when a CUDA device is visible, else cpu)."""
    workers: WorkersParams = WorkersParams()
    store: StoreParams = StoreParams()
    bootstrap_policy: BootstrapPolicyParams = BootstrapPolicyParams()
    collect_prompts: CollectPromptsParams = CollectPromptsParams()
    sample_responses: SampleResponsesParams = SampleResponsesParams()
    rank_responses: RankResponsesParams = RankResponsesParams()
    train_reward: TrainRewardParams = TrainRewardParams()
    train_cost: TrainCostParams = TrainCostParams()
    train_policy: TrainPolicyParams = TrainPolicyParams()
    evaluate: EvaluateParams = EvaluateParams()
    tracking: TrackingParams = TrackingParams()
    round: RoundParams = Field(RoundParams(), json_schema_extra=SHOWN_WHEN_SET)
    """The round state: it lives in rounds.yaml, never in params.yaml."""


_UNION_TAGS = ("contains_any", "excludes_all", "mentions_topic", "word_count")


def _one_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    parts = [str(part) for part in first["loc"] if part not in _UNION_TAGS]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "value_error" and isinstance(first.get("input"), dict):
        # A cross-field check of a section: its message starts with the key it is about.
        key, _, message = message.partition(": ")
        parts.append(key)
    elif "input" in first and first["type"] != "missing":
        message += f" (got {first['input']!r})"
    extra = f" (+{len(error.errors()) - 1} more)" if len(error.errors()) > 1 else ""
    return f"{source}: {'.'.join(parts) or '(top level)'}: {message}{extra}"


def parse_params(raw: object, source: str = PARAMS_FILE) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_one_line(error, source)) from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    try:
        raw = load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_line(path, error)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    rounds = path.with_name(ROUNDS_FILE)
    if rounds.exists():  # the round state: its own file, so no command rewrites params.yaml
        if "round" in raw:
            raise ConfigError(f"{path}: round: lives in {rounds} (the flow writes it); remove it from {path.name}")
        raw = {**raw, "round": _read_yaml(rounds).get("round") or {}}
    return parse_params(raw, str(path))


def yaml_error_line(path: str | Path, error: yaml.YAMLError) -> str:
    """One line naming the file, line and column of a YAML syntax error, and what is wrong there."""
    mark = getattr(error, "problem_mark", None)
    problem = " ".join(str(getattr(error, "problem", None) or error).split())
    if mark is None:
        return f"{path}: not valid YAML ({problem})"
    return f"{path}: line {mark.line + 1} not valid YAML (column {mark.column + 1}: {problem})"


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, refusing a key written twice in one mapping: safe_load keeps the last, so a
    second `train_reward:` section would silently drop the first one's settings."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat keys on purpose
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):  # super() refuses it with its line
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is set twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> object:
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: no arbitrary objects


def check_yaml_syntax(*paths: str | Path) -> None:
    """A ConfigError in one line (yaml_error_line) for the first of `paths` that exists and is not
    valid YAML: for callers that hand the files to DVC, whose own error is a long trace."""
    for path in paths:
        if Path(path).is_file():
            try:
                load_yaml(Path(path).read_text())
            except yaml.YAMLError as error:
                raise ConfigError(yaml_error_line(path, error)) from None


def _read_yaml(path: Path) -> dict:
    try:
        raw = load_yaml(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_line(path, error)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw
