"""Writing a stage's rows: runs, prompts, responses, rankings, the pairs they imply, annotators and
queue items. Every function here runs inside the caller's write transaction.

Each insert adds only rows whose key is not in the table yet: with every write serialised by the
store's lock, that keeps keys unique without index maintenance (see schema.TABLES_V2), and writing
the same rows twice adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from json.encoder import encode_basestring
from typing import TYPE_CHECKING

import duckdb

from rlhf import chat
from rlhf.store.schema import HUMAN_JUDGE

if TYPE_CHECKING:  # the caller's frames; pandas loads where one is built (with_messages)
    import pandas as pd

COUNTED_TABLES = ["runs", "prompts", "responses", "rankings", "comparisons", "annotation_queue", "annotators"]

# A K-way ranking becomes its C(K,2) pairs: one row per unordered pair of the ranking, each pair
# weighted 1 / C(K,2) so that every ranking (one prompt, one judge) counts the same (InstructGPT).
# `new_rankings` holds only rankings not yet in the store, whole (a ranking is written in one go),
# each response once, so the join below gives exactly C(K,2) pairs per ranking: K comes from a
# GROUP BY, half the time of a window count over the pairs at 1M pairs. The pairs go in in the
# snapshot's order (snapshot.SNAPSHOT_FILES): the table then holds one sorted run per write, which
# DuckDB's sort orders faster than rows in join order at every snapshot (15% less CPU for a 1M-pair
# snapshot; more where ids are hashes in random order), for about as much CPU once here.
PAIRS_FROM_RANKINGS = """
INSERT INTO comparisons (ranking_id, chosen_id, rejected_id, prompt_id, margin, tie, run_id, weight,
                         judge, judge_version)
SELECT a.ranking_id,
       a.response_id AS chosen_id,
       b.response_id AS rejected_id,
       a.prompt_id,
       a.score - b.score AS margin,
       a.rank = b.rank AS tie,
       a.run_id,
       1.0 / (n.k * (n.k - 1) // 2) AS weight,
       a.judge,
       a.judge_version
FROM new_rankings a JOIN new_rankings b
  ON a.ranking_id = b.ranking_id
 AND (a.rank < b.rank OR (a.rank = b.rank AND a.response_id < b.response_id))
JOIN (SELECT ranking_id, count(*) AS k FROM new_rankings GROUP BY ranking_id) n ON n.ranking_id = a.ranking_id
ORDER BY a.ranking_id, chosen_id, rejected_id
"""


def counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED_TABLES}


def ingest(
    con: duckdb.DuckDBPyConnection,
    run: dict,
    prompts: pd.DataFrame,
    responses: pd.DataFrame,
    rankings: pd.DataFrame,
    queue: pd.DataFrame | None = None,
) -> dict[str, int]:
    """FeedbackStore.ingest inside the caller's transaction: how many rows each table gained."""
    before = counts(con)
    insert_run(con, run)
    prompts, responses = with_messages(prompts, responses)
    con.register("incoming_prompts", each_key_once(prompts.assign(run_id=run["run_id"]), ["prompt_id"]))
    con.execute(
        "INSERT INTO prompts SELECT prompt_id, prompt, topic, split, source, run_id, messages, source_row "
        "FROM incoming_prompts n WHERE NOT EXISTS (SELECT 1 FROM prompts p WHERE p.prompt_id = n.prompt_id)"
    )
    con.register("incoming_responses", each_key_once(responses.assign(run_id=run["run_id"]), ["response_id"]))
    con.execute(
        "INSERT INTO responses SELECT response_id, prompt_id, sample_index, response, policy_checkpoint, sampling, "
        "run_id, messages, rendered_prompt FROM incoming_responses n "
        "WHERE NOT EXISTS (SELECT 1 FROM responses r WHERE r.response_id = n.response_id)"
    )
    key = ["ranking_id", "response_id"]
    con.register("incoming_rankings", each_key_once(rankings.assign(run_id=run["run_id"]), key))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE new_rankings AS "
        "SELECT ranking_id, response_id, prompt_id, rank, score, reasons, judge, judge_version, run_id "
        "FROM incoming_rankings n WHERE NOT EXISTS "
        "(SELECT 1 FROM rankings k WHERE k.ranking_id = n.ranking_id AND k.response_id = n.response_id)"
    )
    con.execute("INSERT INTO rankings SELECT * FROM new_rankings")
    con.execute(PAIRS_FROM_RANKINGS)
    insert_annotators(con, run["stage"])
    if queue is not None and len(queue):
        insert_queue(con, run, queue)
    after = counts(con)
    return {table: after[table] - before[table] for table in after}


def each_key_once(frame: pd.DataFrame, key: list[str]) -> pd.DataFrame:
    """The frame with one row per key (any one, as SQL's DISTINCT ON gives). Checked in pandas:
    DuckDB's DISTINCT ON over wide rows was a third of a 1M-pair ingest's inserts."""
    return frame.drop_duplicates(key) if frame.duplicated(key).any() else frame


def with_messages(prompts: pd.DataFrame, responses: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Frames written before conversations (plain strings) get the columns of schema version 4."""
    import pandas as pd

    if "messages" not in prompts:
        prompts = prompts.assign(messages=one_turn_json("user", prompts["prompt"], chat.as_conversation))
    if "source_row" not in prompts:
        prompts = prompts.assign(source_row=pd.Series(pd.NA, index=prompts.index, dtype="Int64"))
    if "messages" not in responses:
        responses = responses.assign(messages=one_turn_json("assistant", responses["response"], chat.assistant_turns))
    if "rendered_prompt" not in responses:
        responses = responses.assign(rendered_prompt=pd.Series(None, index=responses.index, dtype=object))
    return prompts, responses


def one_turn_json(role: str, texts: Iterable, as_messages: Callable[[object], chat.Conversation]) -> list[str]:
    """chat.to_json(as_messages(text)) of each text, the same string: a plain text is one `role` turn,
    written here with the string encoder json.dumps itself uses (ensure_ascii=False), 10x faster than
    json.dumps per row (3 of a 1M-pair ingest's 6.5 s went there). Anything else takes chat's path."""
    head = '[{"role":' + encode_basestring(role) + ',"content":'
    return [
        head + encode_basestring(text) + "}]" if isinstance(text, str) else chat.to_json(as_messages(text))
        for text in texts
    ]


def insert_run(con: duckdb.DuckDBPyConnection, run: dict) -> None:
    con.execute(
        "INSERT INTO runs SELECT ?, ?, ?, ?, now() WHERE NOT EXISTS (SELECT 1 FROM runs WHERE run_id = ?)",
        [run["run_id"], run["stage"], run.get("git_rev"), run.get("dvc_rev"), run["run_id"]],
    )


def insert_queue(con: duckdb.DuckDBPyConnection, run: dict, items: pd.DataFrame) -> None:
    con.register("incoming_items", each_key_once(items.assign(run_id=run["run_id"]), ["item_id"]))
    con.execute(
        "INSERT INTO annotation_queue SELECT item_id, prompt_id, response_ids, reason, run_id, now() FROM incoming_items n "
        "WHERE NOT EXISTS (SELECT 1 FROM annotation_queue q WHERE q.item_id = n.item_id)"
    )


def insert_annotators(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """People who ranked in `new_rankings` (judge human; the version is the annotator)."""
    con.execute(
        "INSERT INTO annotators SELECT DISTINCT judge_version, ?, now() FROM new_rankings n WHERE judge = ? "
        "AND NOT EXISTS (SELECT 1 FROM annotators a WHERE a.annotator = n.judge_version)",
        [source, HUMAN_JUDGE],
    )


def enqueue(con: duckdb.DuckDBPyConnection, run: dict, items: pd.DataFrame) -> int:
    """Queue items (item_id, prompt_id, response_ids JSON, reason); how many were new."""
    before = con.execute("SELECT count(*) FROM annotation_queue").fetchone()[0]
    insert_run(con, run)
    insert_queue(con, run, items)
    return con.execute("SELECT count(*) FROM annotation_queue").fetchone()[0] - before
