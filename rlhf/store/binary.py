"""Thumbs up/down: one response judged alone, desirable or not (schema version 6, `binary_labels`).

Where the labels come from: the ranking page's binary mode (source `page`), the users of a deployed
policy (`deployed`), an imported set (`import:<name>`). A row keeps its prompt and response texts
and messages, since a deployed response is in no other table, and its provenance: annotator, the
policy that wrote the response, the queue item, the run.

The snapshot is TRL's unpaired preference format (`prompt`, `completion`, `label`), the dataset
KTOTrainer reads as it is (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization"), with the chat messages, the split and the provenance as further columns. Every
function here runs on a connection the caller opened (FeedbackStore).
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd

from rlhf import chat
from rlhf.errors import InputError
from rlhf.store.ingest import insert_run
from rlhf.store.schema import EVENT_COLUMNS
from rlhf.store.scope import BINARY_LABELS_IN_SCOPE, binary_scope_arguments
from rlhf.text import content_id, split_of

# The columns a caller passes: prompt and response (strings or chat messages), desirable, annotator;
# the optional ones may be absent or None.
REQUIRED_COLUMNS = ("prompt", "response", "desirable", "annotator")
OPTIONAL_COLUMNS = ("response_id", "reason", "policy_checkpoint", "item_id", "split")

# The snapshot's columns: TRL's unpaired preference format first, then what our stages read
# (messages for rlhf.scoring, the split for held-out reports) and the provenance.
SNAPSHOT_COLUMNS = """
prompt, response AS completion, desirable AS label, prompt_messages, response_messages AS completion_messages,
split, label_id, prompt_id, response_id, reason, source, annotator, policy_checkpoint
"""


def label_rows(labels: pd.DataFrame, source: str, test_fraction: float) -> pd.DataFrame:
    """The caller's labels as binary_labels' columns (less split from the store, run and time):
    ids, texts and canonical messages. InputError naming the column or row of a bad one."""
    missing = [c for c in REQUIRED_COLUMNS if c not in labels]
    if missing:
        raise InputError(f"binary labels: missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_COLUMNS)})")
    if not source:
        raise InputError("binary labels: the source must be named (page, deployed, import:<name>, ...)")
    rows = []
    for row, label in enumerate(labels.to_dict(orient="records"), 1):
        where = f"binary labels, row {row}"
        prompt = chat.as_conversation(label["prompt"], f"{where}: prompt")
        response = _response_turns(label["response"], where)
        if not any(m["content"].strip() for m in response):
            raise InputError(f"{where}: response is empty")
        if not isinstance(label["desirable"], bool) and str(label["desirable"]) not in ("True", "False"):
            raise InputError(f"{where}: desirable must be true or false, not {label['desirable']!r}")
        if not isinstance(label["annotator"], str) or not label["annotator"].strip():
            raise InputError(f"{where}: annotator must be named")
        optional = {c: _present(label.get(c)) for c in OPTIONAL_COLUMNS}
        if optional["split"] not in (None, "train", "test"):
            raise InputError(f"{where}: split must be train or test, not {optional['split']!r}")
        key = chat.prompt_key(prompt)
        prompt_id = content_id(key)
        response_key = optional["response_id"] or chat.to_json(response)
        rows.append(
            {
                "label_id": content_id(prompt_id, response_key, source, label["annotator"]),
                "prompt_id": prompt_id,
                "prompt": chat.transcript(prompt),
                "prompt_messages": chat.to_json(prompt),
                "response_id": optional["response_id"],
                "response": response[0]["content"] if len(response) == 1 else chat.transcript(response),
                "response_messages": chat.to_json(response),
                "desirable": str(label["desirable"]) == "True",
                "reason": optional["reason"],
                "source": source,
                "annotator": label["annotator"],
                "policy_checkpoint": optional["policy_checkpoint"],
                "item_id": optional["item_id"],
                "given_split": optional["split"],
                "hashed_split": split_of(key, test_fraction),
            }
        )
    # one label per key: a person who changed their mind within one batch keeps the last
    return pd.DataFrame(rows, columns=[*_ROW_COLUMNS, "given_split", "hashed_split"]).drop_duplicates(
        "label_id", keep="last"
    )


_ROW_COLUMNS = [
    "label_id",
    "prompt_id",
    "prompt",
    "prompt_messages",
    "response_id",
    "response",
    "response_messages",
    "desirable",
    "reason",
    "source",
    "annotator",
    "policy_checkpoint",
    "item_id",
]


def _response_turns(response: object, where: str) -> chat.Conversation:
    """A response as the turns after the prompt: a string is one assistant turn, a list its messages."""
    if isinstance(response, str):
        return chat.assistant_turns(response)
    return chat.as_conversation(response, f"{where}: response")


def _present(value: object) -> str | None:
    """An optional text: None for absent, None, NaN or blank."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    text = str(value).strip()
    return text or None


def add_binary_labels(
    con: duckdb.DuckDBPyConnection, labels: pd.DataFrame, source: str, run: dict, test_fraction: float
) -> int:
    """FeedbackStore.add_binary_labels inside the caller's transaction: how many labels were new or changed.

    Checks come before writes, so a refused batch writes nothing. A response the store holds
    (`response_id`) lends its policy checkpoint where none is given. The split: the label's own
    (`split`), else the prompt's where the store holds it, else by a hash of the prompt's text at
    `test_fraction`, as collect_prompts splits."""
    rows = label_rows(labels, source, test_fraction)
    if rows.empty:
        return 0
    insert_run(con, run)
    con.register("incoming_binary_labels", rows)
    con.execute(
        """CREATE OR REPLACE TEMP TABLE new_binary_labels AS
           SELECT n.label_id, n.prompt_id, n.prompt, n.prompt_messages, CAST(n.response_id AS VARCHAR) AS response_id,
                  n.response, n.response_messages, CAST(n.desirable AS BOOLEAN) AS desirable,
                  CAST(n.reason AS VARCHAR) AS reason, n.source, n.annotator,
                  coalesce(CAST(n.policy_checkpoint AS VARCHAR), s.policy_checkpoint) AS policy_checkpoint,
                  CAST(n.item_id AS VARCHAR) AS item_id, coalesce(CAST(n.given_split AS VARCHAR), p.split, n.hashed_split) AS split,
                  CAST(? AS VARCHAR) AS run_id, now()::TIMESTAMP AS created_at
           FROM incoming_binary_labels n
           LEFT JOIN prompts p ON p.prompt_id = n.prompt_id
           LEFT JOIN responses s ON s.response_id = CAST(n.response_id AS VARCHAR)""",
        [run["run_id"]],
    )
    con.unregister("incoming_binary_labels")
    # A label already there counts again only if it changed (a person turned a thumb, or gave a reason).
    changed = """SELECT n.label_id FROM new_binary_labels n JOIN binary_labels b USING (label_id)
                 WHERE b.desirable IS DISTINCT FROM n.desirable OR b.reason IS DISTINCT FROM n.reason"""
    before = con.execute("SELECT count(*) FROM binary_labels").fetchone()[0]
    replaced = con.execute(f"SELECT count(*) FROM ({changed})").fetchone()[0]
    con.execute(f"DELETE FROM binary_labels WHERE label_id IN ({changed})")
    con.execute(
        "INSERT INTO binary_labels SELECT * FROM new_binary_labels n "
        "WHERE NOT EXISTS (SELECT 1 FROM binary_labels b WHERE b.label_id = n.label_id)"
    )
    return con.execute("SELECT count(*) FROM binary_labels").fetchone()[0] - before + replaced


def binary_labels(con: duckdb.DuckDBPyConnection, source: str | None = None) -> pd.DataFrame:
    """Every binary label (of one source, if named), every column, ordered by label_id."""
    return con.execute(
        "SELECT * FROM binary_labels WHERE CAST(? AS VARCHAR) IS NULL OR source = ? ORDER BY label_id",
        [source, source],
    ).df()


def _scoped(scope: dict | None) -> tuple[str, list]:
    """The labels `scope` takes, as SQL and its parameters; None: every label."""
    if scope is None:
        return "SELECT * FROM binary_labels", []
    return BINARY_LABELS_IN_SCOPE, binary_scope_arguments(scope)


def snapshot_binary_labels(con: duckdb.DuckDBPyConnection, path: Path, scope: dict | None) -> int:
    """Write the labels `scope` takes to the Parquet file `path`, ordered by label_id: the same
    store and scope give a byte-identical file. The file appears whole or not at all (written
    beside its place, then renamed). Returns the number of labels."""
    query, arguments = _scoped(scope)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    target = str(partial).replace("'", "''")  # COPY binds no target
    con.execute(
        f"COPY (SELECT {SNAPSHOT_COLUMNS} FROM ({query}) ORDER BY label_id) TO '{target}' (FORMAT parquet)",
        arguments,
    )
    partial.replace(path)
    return con.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone()[0]


# --- the ranking page's binary mode: a queue item of one response, labelled good or bad ---

# The page records a label's event as the ranking of an item (action ranked, mode binary), so the
# queue's order, overlap, progress and the flow's wait count it as they count a ranking.
PAGE_SOURCE = "page"
BINARY_MODE = "binary"

PAGE_ITEM = """
SELECT q.response_ids, p.prompt, p.messages, p.split, r.response, r.messages
FROM annotation_queue q JOIN prompts p USING (prompt_id) LEFT JOIN responses r ON r.response_id = ?
WHERE q.item_id = ?
"""


def record_page_labels(con: duckdb.DuckDBPyConnection, submissions: list[tuple[str, str, dict]], run_id: str) -> list:
    """FeedbackStore.record_page_labels inside the caller's transaction: per (annotator, item_id,
    body with response_id, desirable, reason), 1 for the label written (or there already: a row
    the journal drains twice is written once), or the StoreError's text of one refused."""
    outcomes = []
    for annotator, item_id, body in submissions:
        done = con.execute(
            "SELECT count(*) FROM annotation_events WHERE annotator = ? AND item_id = ? AND action = 'ranked'",
            [annotator, item_id],
        ).fetchone()[0]
        if done:
            outcomes.append(1)
            continue
        row = con.execute(PAGE_ITEM, [body["response_id"], item_id]).fetchone()
        if row is None:
            outcomes.append(f"StoreError: annotation: no queued item {item_id!r}")
            continue
        response_ids, prompt, prompt_messages, split, response, response_messages = row
        if json.loads(response_ids) != [body["response_id"]] or response is None:
            outcomes.append(f"StoreError: annotation: item {item_id!r} does not ask for a label of that response")
            continue
        label = {
            "prompt": chat.from_json(prompt_messages) if prompt_messages else prompt,
            "response": chat.from_json(response_messages) if response_messages else response,
            "response_id": body["response_id"],
            "desirable": bool(body["desirable"]),
            "reason": body.get("reason"),
            "annotator": annotator,
            "item_id": item_id,
            "split": split,
        }
        add_binary_labels(con, pd.DataFrame([label]), PAGE_SOURCE, {"run_id": run_id, "stage": "annotate"}, 0.0)
        con.execute(
            f"INSERT INTO annotation_events ({EVENT_COLUMNS}) VALUES (?, ?, 'ranked', NULL, now(), false, ?)",
            [item_id, annotator, BINARY_MODE],
        )
        outcomes.append(1)
    return outcomes
