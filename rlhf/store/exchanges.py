"""A deployed policy's exchanges and the feedback on them (rlhf/serving). Every function here runs
inside the caller's write transaction; the serving endpoint batches several requests' work into one
transaction (rlhf/serving/recorder.py), so a refusal is returned, never raised: raising would roll
back the other requests' rows too. Every read is fetched whole: DuckDB 2.0 refuses `register` (as
ingest registers its frames) on a connection with a result left unfinished.

Feedback becomes labels where it can: an edited better answer (the edit preferred to the answer) and
a choice between two answers shown side by side (the chosen one preferred) are each one ranking of
two responses, judge `deployed`, its version the client's name, in the run `import-deployed`: the
import set `deployed`, which a snapshot takes when params.yaml lists it (store.snapshot.imports:
[deployed]), as it takes any other import. A thumb is also a binary label (rlhf/store/binary.py,
source `deployed`) for KTO and the binary reward model; a rating stays in exchange_feedback. Every
feedback row keeps who gave it and on which checkpoint's answer (through its exchange).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb
import pandas as pd

from rlhf import chat
from rlhf.store import binary, ingest
from rlhf.text import content_id, split_of

DEPLOYED_JUDGE = "deployed"
DEPLOYED_IMPORT = "deployed"  # the import set's name: store.snapshot.imports lists it
DEPLOYED_RUN = {"run_id": f"import-{DEPLOYED_IMPORT}", "stage": "serve policy"}
FEEDBACK_KINDS = ("thumbs", "rating", "edit", "choice")
PAIR_KINDS = ("edit", "choice")

EXCHANGE_COLUMNS = [
    "exchange_id",
    "client",
    "messages",
    "answers",
    "model",
    "policy_checkpoint",
    "sampling",
    "rendered_prompt",
]


@dataclass(frozen=True)
class Refusal:
    """Why a feedback was not taken, with the HTTP status it answers (404 unknown, 409 conflict, 422 invalid)."""

    status: int
    detail: str


def record_exchanges(con: duckdb.DuckDBPyConnection, exchanges: list[dict]) -> int:
    """Add exchanges (dicts of EXCHANGE_COLUMNS); one already stored (same id) is not added again."""
    added = 0
    for row in exchanges:
        values = [row[c] for c in EXCHANGE_COLUMNS]
        added += con.execute(
            f"INSERT INTO exchanges SELECT {', '.join('?' * len(values))}, now() "
            "WHERE NOT EXISTS (SELECT 1 FROM exchanges WHERE exchange_id = ?)",
            [*values, row["exchange_id"]],
        ).fetchall()[0][0]
    return added


def exchange(con: duckdb.DuckDBPyConnection, exchange_id: str) -> dict | None:
    rows = con.execute(
        f"SELECT {', '.join(EXCHANGE_COLUMNS)} FROM exchanges WHERE exchange_id = ?", [exchange_id]
    ).fetchall()
    return dict(zip(EXCHANGE_COLUMNS, rows[0])) if rows else None


def record_feedback(
    con: duckdb.DuckDBPyConnection, client: str, feedback: dict, test_fraction: float = 0.2
) -> dict | Refusal:
    """One feedback: `exchange_id`, `kind` (thumbs, rating, edit, choice), `answer` (the answer it is
    about; for a choice, the chosen one) and the kind's value (`thumbs_up`, `rating`, `edited`), with
    an optional `reason`. Only the exchange's own client may give it (another's reads as unknown: ids
    are not for guessing). The same feedback sent again is taken once (`duplicate`); another of the
    same kind on the same answer (any choice after a choice) is refused: the first stands.
    Returns {"pairs": the preferred pairs it added, "duplicate": bool} or a Refusal."""
    shown = exchange(con, feedback["exchange_id"])
    if shown is None or shown["client"] != client:
        return Refusal(404, f"exchange {feedback['exchange_id'][:80]!r}: no such exchange of yours")
    answers = json.loads(shown["answers"])
    kind, answer = feedback["kind"], feedback.get("answer", 0)
    if not 0 <= answer < len(answers):
        return Refusal(422, f"answer: {answer}, but the exchange showed {len(answers)} answer(s) (0-based)")
    if kind == "choice" and len(answers) != 2:
        return Refusal(422, "choice: the exchange showed one answer; ask with n=2 to choose between two")
    if kind == "edit" and feedback["edited"].strip() == answers[answer].strip():
        return Refusal(422, "edited: the same as the answer; send the better answer you wrote")
    earlier = earlier_feedback(con, feedback["exchange_id"], kind, answer)
    values = {k: feedback.get(k) for k in ("thumbs_up", "rating", "reason", "edited")}
    if earlier is not None:
        if earlier["values"] == values and earlier["answer"] == answer:
            return {"pairs": 0, "duplicate": True}
        return Refusal(
            409, f"you already gave {kind} feedback on this {'exchange' if kind == 'choice' else 'answer'}; that stands"
        )
    ranking_id = None
    pairs = 0
    if kind in PAIR_KINDS:
        ranking_id, pairs = record_preferred_pair(con, client, shown, answers, kind, answer, feedback, test_fraction)
    if kind == "thumbs" and answers[answer].strip():  # a binary label needs a response to label
        record_binary_label(con, client, shown, answers[answer], feedback, test_fraction)
    con.execute(
        "INSERT INTO exchange_feedback VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, now())",
        [feedback["exchange_id"], kind, answer, client, *values.values(), ranking_id],
    )
    return {"pairs": pairs, "duplicate": False}


def earlier_feedback(con: duckdb.DuckDBPyConnection, exchange_id: str, kind: str, answer: int) -> dict | None:
    """The stored feedback of this kind on this answer (a choice: on the exchange), if any."""
    rows = con.execute(
        "SELECT answer, thumbs_up, rating, reason, edited FROM exchange_feedback "
        "WHERE exchange_id = ? AND kind = ? AND (kind = 'choice' OR answer = ?)",
        [exchange_id, kind, answer],
    ).fetchall()
    if not rows:
        return None
    row = rows[0]
    return {"answer": row[0], "values": dict(zip(("thumbs_up", "rating", "reason", "edited"), row[1:]))}


def record_preferred_pair(
    con: duckdb.DuckDBPyConnection,
    client: str,
    shown: dict,
    answers: list[str],
    kind: str,
    answer: int,
    feedback: dict,
    test_fraction: float,
) -> tuple[str, int]:
    """The preferred pair an edit or a choice means, as a ranking of two responses (module docstring),
    through the same ingest as every stage's rankings; returns (ranking_id, pairs added)."""
    conversation = chat.from_json(shown["messages"])
    key = chat.prompt_key(conversation)
    prompt_id = content_id(key)
    prompts = pd.DataFrame(
        [
            {
                "prompt_id": prompt_id,
                "prompt": chat.transcript(conversation),
                "topic": None,
                "split": split_of(key, test_fraction),
                "source": DEPLOYED_JUDGE,
                "messages": shown["messages"],
                "source_row": pd.NA,
            }
        ]
    ).astype({"source_row": "Int64"})
    sampled = [response_row(prompt_id, shown, index, text) for index, text in enumerate(answers)]
    if kind == "edit":
        edit = response_row(prompt_id, shown, 0, feedback["edited"], writer=f"edited:{client}")
        better, worse = edit, sampled[answer]
    else:
        better, worse = sampled[answer], sampled[1 - answer]
    ranking_id = content_id(prompt_id, DEPLOYED_JUDGE, client, kind, shown["exchange_id"], answer)
    reasons = json.dumps({"feedback": kind, "exchange_id": shown["exchange_id"]})
    rankings = pd.DataFrame(
        [
            (ranking_id, response["response_id"], prompt_id, rank, float(-rank), reasons, DEPLOYED_JUDGE, client)
            for rank, response in ((1, better), (2, worse))
        ],
        columns=["ranking_id", "response_id", "prompt_id", "rank", "score", "reasons", "judge", "judge_version"],
    )
    added = ingest.ingest(con, DEPLOYED_RUN, prompts, pd.DataFrame([better, worse]), rankings)
    return ranking_id, added["comparisons"]


def record_binary_label(
    con: duckdb.DuckDBPyConnection, client: str, shown: dict, text: str, feedback: dict, test_fraction: float
) -> None:
    label = {
        "prompt": chat.from_json(shown["messages"]),
        "response": text,
        "desirable": feedback["thumbs_up"],
        "annotator": client,
        "reason": feedback.get("reason"),
        "policy_checkpoint": shown["policy_checkpoint"],
    }
    binary.add_binary_labels(con, pd.DataFrame([label]), DEPLOYED_JUDGE, DEPLOYED_RUN, test_fraction)


def response_row(prompt_id: str, shown: dict, index: int, text: str, writer: str | None = None) -> dict:
    """A responses row for an answer the policy gave (`writer` None: its checkpoint) or one a client wrote."""
    checkpoint = writer or shown["policy_checkpoint"]
    return {
        "response_id": content_id(prompt_id, checkpoint, index, text),
        "prompt_id": prompt_id,
        "sample_index": index,
        "response": text,
        "policy_checkpoint": checkpoint,
        "sampling": "{}" if writer else shown["sampling"],
        "messages": chat.to_json(chat.assistant_turns(text)),
        "rendered_prompt": None if writer else shown["rendered_prompt"],
    }


def counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Exchanges, and feedback by kind."""
    found = {"exchanges": con.execute("SELECT count(*) FROM exchanges").fetchall()[0][0]}
    for kind, n in con.execute("SELECT kind, count(*) FROM exchange_feedback GROUP BY kind").fetchall():
        found[kind] = n
    return found
