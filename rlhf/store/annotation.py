"""The human annotation queue: what each person is served, their rankings and skips, the overlap
setting, and progress. The ranking page (rlhf/annotation) is a thin shell over these; each runs on
a connection the caller opened (FeedbackStore: a read-only one for reads, a transaction for writes).

Assignment with overlap. Unset (None, the default and the behaviour before version 5): every person
sees every item, and an item stops waiting once anyone ranked or skipped it. Set to N: an item is
served to people until N of them ranked it, then it leaves the queue; a skip hides it from that
person only. Nobody is served an item they ranked or skipped. Two people who open the last open
slot at once may both rank it: an extra label, never a lost one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import duckdb

from rlhf import chat
from rlhf.errors import StoreError
from rlhf.store.ingest import PAIRS_FROM_RANKINGS, insert_annotators, insert_run
from rlhf.store.schema import EVENT_COLUMNS, HUMAN_JUDGE
from rlhf.text import content_id

if TYPE_CHECKING:  # pandas loads where a frame is built (record_human_ranking) or read (.df())
    import pandas as pd

# Each queue item with how many people ranked it (`people`) and how close a call it was for the AI
# judge (`closest`: the smallest |score margin| the judge gave any two of the item's responses; a
# hybrid pair's own margin; NULL where no AI judge labelled it). People get the closest calls
# first, where their label tells the reward model most; unlabelled items follow, oldest first.
QUEUE_ORDER = f"""
SELECT q.item_id, q.prompt_id, q.response_ids, q.created_at,
       coalesce(people.ranked, 0) AS people, closeness.closest
FROM annotation_queue q
LEFT JOIN (SELECT item_id, count(DISTINCT annotator) AS ranked FROM annotation_events
           WHERE action = 'ranked' GROUP BY item_id) people USING (item_id)
LEFT JOIN (SELECT q2.item_id, min(abs(c.margin)) AS closest
           FROM annotation_queue q2 JOIN comparisons c ON c.prompt_id = q2.prompt_id AND c.judge <> '{HUMAN_JUDGE}'
           WHERE list_contains(from_json(q2.response_ids, '["VARCHAR"]'), c.chosen_id)
             AND list_contains(from_json(q2.response_ids, '["VARCHAR"]'), c.rejected_id)
           GROUP BY q2.item_id) closeness USING (item_id)
"""

# Items still open to `annotator` (NULL: to anyone) under the overlap setting; parameters
# (annotator, overlap, overlap).
OPEN_TO = f"""
SELECT * FROM ({QUEUE_ORDER}) q
WHERE q.item_id NOT IN (SELECT item_id FROM annotation_events
                        WHERE annotator = ? AND action IN ('ranked', 'skipped'))
  AND (CAST(? AS INTEGER) IS NULL OR q.people < ?)
"""


# --- settings ---


def set_overlap(con: duckdb.DuckDBPyConnection, people: int | None) -> None:
    con.execute("DELETE FROM annotation_settings WHERE name = 'overlap'")
    if people is not None:
        con.execute("INSERT INTO annotation_settings VALUES ('overlap', ?)", [str(people)])


def check_overlap(people: int | None) -> None:
    if people is not None and people < 1:
        raise StoreError(f"annotation: overlap must be 1 or more, not {people}")


def overlap(con: duckdb.DuckDBPyConnection) -> int | None:
    row = con.execute("SELECT value FROM annotation_settings WHERE name = 'overlap'").fetchone()
    return int(row[0]) if row else None


# --- serving items ---


def next_item(con: duckdb.DuckDBPyConnection, annotator: str, suggest: bool) -> dict | None:
    """FeedbackStore.next_item on `con`."""
    rows, texts = open_items(con, overlap(con), 1, annotator)
    if not rows:
        return None
    item = as_item(rows[0], texts)
    if suggest:
        item["suggestion"] = suggestion(con, item["prompt_id"], json.loads(rows[0][4]))
    return item


def open_queue(con: duckdb.DuckDBPyConnection, limit: int) -> dict:
    """FeedbackStore.open_queue on `con`."""
    setting = overlap(con)
    rows, texts = open_items(con, setting, limit + 1)
    done = set(
        con.execute(
            "SELECT DISTINCT annotator, item_id FROM annotation_events WHERE action IN ('ranked', 'skipped')"
        ).fetchall()
    )
    items = [{**as_item(row, texts), "people": row[5]} for row in rows[:limit]]
    return {"items": items, "done": done, "overlap": setting, "complete": len(rows) <= limit}


def open_items(
    con: duckdb.DuckDBPyConnection, overlap: int | None, limit: int, annotator: str | None = None
) -> tuple[list[tuple], dict[str, tuple]]:
    """The first `limit` items still open, in QUEUE_ORDER's order (with `annotator`, only those they
    have neither ranked nor skipped): rows (item_id, prompt_id, prompt, messages, response_ids,
    people), and {response_id: (text, messages)} of their responses."""
    rows = con.execute(
        f"""SELECT q.item_id, q.prompt_id, p.prompt, p.messages, q.response_ids, q.people
            FROM ({OPEN_TO}) q JOIN prompts p USING (prompt_id)
            ORDER BY q.closest ASC NULLS LAST, q.created_at, q.item_id LIMIT ?""",
        [annotator, overlap, overlap, limit],
    ).fetchall()
    ids = sorted({i for row in rows for i in json.loads(row[4])})
    texts = con.execute(
        "SELECT response_id, response, messages FROM responses WHERE list_contains(?, response_id)", [ids]
    ).fetchall()
    return rows, {response_id: (text, messages) for response_id, text, messages in texts}


def as_item(row: tuple, texts: dict[str, tuple]) -> dict:
    """A row of open_items as next_item's item (without a suggestion), its texts from `texts`."""
    item_id, prompt_id, prompt, prompt_messages, response_ids = row[:5]
    responses = [
        {
            "response_id": i,
            "text": texts[i][0],
            "messages": chat.from_json(texts[i][1]) if texts[i][1] else chat.assistant_turns(texts[i][0]),
        }
        for i in json.loads(response_ids)
    ]
    return {
        "item_id": item_id,
        "prompt_id": prompt_id,
        "prompt": prompt,
        "messages": chat.from_json(prompt_messages) if prompt_messages else chat.as_conversation(prompt),
        "responses": responses,
    }


def suggestion(con: duckdb.DuckDBPyConnection, prompt_id: str, ids: list[str]) -> dict | None:
    """The newest AI ranking that ranks every one of `ids`, as a best-first order with ties."""
    rows = con.execute(
        """SELECT r.response_id, r.rank, r.judge FROM rankings r
           WHERE r.ranking_id = (
               SELECT k.ranking_id FROM rankings k LEFT JOIN runs u USING (run_id)
               WHERE k.prompt_id = ? AND k.judge <> ? AND list_contains(?, k.response_id)
               GROUP BY k.ranking_id HAVING count(DISTINCT k.response_id) = ?
               ORDER BY max(u.created_at) DESC NULLS LAST, k.ranking_id LIMIT 1)
             AND list_contains(?, r.response_id)
           ORDER BY r.rank, list_position(?, r.response_id)""",
        [prompt_id, HUMAN_JUDGE, ids, len(ids), ids, ids],
    ).fetchall()
    if not rows:
        return None
    return {
        "judge": rows[0][2],
        "order": [response_id for response_id, _, _ in rows],
        "tied_with_above": [n > 0 and rank == rows[n - 1][1] for n, (_, rank, _) in enumerate(rows)],
    }


# --- progress ---


def waiting(con: duckdb.DuckDBPyConnection) -> int:
    """FeedbackStore.waiting_items on `con`."""
    setting = overlap(con)
    if setting is None:
        return con.execute(
            "SELECT count(*) FROM annotation_queue q WHERE NOT EXISTS (SELECT 1 FROM annotation_events e "
            "WHERE e.item_id = q.item_id AND e.action IN ('ranked', 'skipped'))"
        ).fetchone()[0]
    return con.execute(f"SELECT count(*) FROM ({QUEUE_ORDER}) WHERE people < ?", [setting]).fetchone()[0]


def progress(con: duckdb.DuckDBPyConnection, annotator: str) -> dict[str, int]:
    """FeedbackStore.annotation_progress on `con`."""
    setting = overlap(con)
    total = con.execute("SELECT count(*) FROM annotation_queue").fetchone()[0]
    done = con.execute(
        "SELECT count(DISTINCT item_id) FROM annotation_events WHERE annotator = ? "
        "AND action IN ('ranked', 'skipped') AND item_id IN (SELECT item_id FROM annotation_queue)",
        [annotator],
    ).fetchone()[0]
    open_to_them = con.execute(f"SELECT count(*) FROM ({OPEN_TO})", [annotator, setting, setting]).fetchone()[0]
    return {"done": done, "total": done + open_to_them, "queue_items": total, "queue_waiting": waiting(con)}


def annotator_progress(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Per annotator (every name with a token or an event): ranked, skipped, active and revoked tokens."""
    return con.execute(
        """WITH names AS (SELECT annotator FROM annotator_tokens UNION SELECT annotator FROM annotation_events)
           SELECT n.annotator,
                  (SELECT count(DISTINCT item_id) FROM annotation_events e
                   WHERE e.annotator = n.annotator AND action = 'ranked') AS ranked,
                  (SELECT count(DISTINCT item_id) FROM annotation_events e
                   WHERE e.annotator = n.annotator AND action = 'skipped') AS skipped,
                  (SELECT count(*) FROM annotator_tokens t
                   WHERE t.annotator = n.annotator AND revoked_at IS NULL) AS active_tokens,
                  (SELECT count(*) FROM annotator_tokens t
                   WHERE t.annotator = n.annotator AND revoked_at IS NOT NULL) AS revoked_tokens
           FROM names n ORDER BY n.annotator"""
    ).df()


# --- what people did: rankings, skips, the page's journal ---


def record_human_ranking(
    con: duckdb.DuckDBPyConnection,
    annotator: str,
    item_id: str,
    ranks: dict[str, int],
    unsafe: list[str],
    run_id: str,
    from_suggestion: bool = False,
    mode: str = "rank",
) -> int:
    """FeedbackStore.record_human_ranking inside the caller's transaction: its checks come before
    its writes, so a refused ranking writes nothing."""
    import pandas as pd

    row = con.execute("SELECT prompt_id, response_ids FROM annotation_queue WHERE item_id = ?", [item_id]).fetchone()
    if row is None:
        raise StoreError(f"annotation: no queued item {item_id!r}")
    prompt_id, response_ids = row[0], json.loads(row[1])
    if sorted(ranks) != sorted(response_ids) or not set(unsafe) <= set(response_ids):
        raise StoreError(f"annotation: the ranking of {item_id!r} must rank exactly its responses")
    ranking_id = content_id(item_id, HUMAN_JUDGE, annotator)
    insert_run(con, {"run_id": run_id, "stage": "annotate"})
    rows = pd.DataFrame(
        {
            "ranking_id": ranking_id,
            "response_id": list(ranks),
            "prompt_id": prompt_id,
            "rank": [int(r) for r in ranks.values()],
            "score": [float(-r) for r in ranks.values()],
            "reasons": [json.dumps({"unsafe": rid in unsafe}) for rid in ranks],
            "judge": HUMAN_JUDGE,
            "judge_version": annotator,
            "run_id": run_id,
        }
    )
    con.register("new_rankings", rows)
    con.execute("DELETE FROM comparisons WHERE ranking_id = ?", [ranking_id])  # a person may re-rank
    con.execute("DELETE FROM rankings WHERE ranking_id = ?", [ranking_id])
    con.execute("INSERT INTO rankings SELECT * FROM new_rankings")
    con.execute(PAIRS_FROM_RANKINGS)
    insert_annotators(con, "annotate")
    events = [(item_id, annotator, "ranked", None, bool(from_suggestion), mode)] + [
        (item_id, annotator, "flagged_unsafe", r, None, None) for r in unsafe
    ]
    con.executemany(f"INSERT INTO annotation_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, now(), ?, ?)", events)
    return pairs_of(con, ranking_id)


def pairs_of(con: duckdb.DuckDBPyConnection, ranking_id: str) -> int:
    return con.execute("SELECT count(*) FROM comparisons WHERE ranking_id = ?", [ranking_id]).fetchone()[0]


def skip_item(con: duckdb.DuckDBPyConnection, annotator: str, item_id: str) -> None:
    con.execute(
        f"INSERT INTO annotation_events ({EVENT_COLUMNS}) VALUES (?, ?, 'skipped', NULL, now(), NULL, NULL)",
        [item_id, annotator],
    )


def record_page_submissions(
    con: duckdb.DuckDBPyConnection, submissions: list[tuple[str, str, str, dict]], run_id: str
) -> list:
    """FeedbackStore.record_page_submissions inside the caller's transaction."""
    outcomes = []
    for annotator, item_id, action, body in submissions:
        done = con.execute(
            "SELECT count(*) FROM annotation_events WHERE annotator = ? AND item_id = ? AND action = ?",
            [annotator, item_id, action],
        ).fetchone()[0]
        if action == "skipped":
            if not done:
                skip_item(con, annotator, item_id)
            outcomes.append(None)
        elif done:
            outcomes.append(pairs_of(con, content_id(item_id, HUMAN_JUDGE, annotator)))
        else:
            try:  # its checks come before its writes: a refused row writes nothing
                outcomes.append(
                    record_human_ranking(
                        con,
                        annotator,
                        item_id,
                        body["ranks"],
                        body["unsafe"],
                        run_id,
                        from_suggestion=body["from_suggestion"],
                        mode=body["mode"],
                    )
                )
            except StoreError as error:
                outcomes.append(f"StoreError: {error}")
    return outcomes


# --- annotators' tokens: only their sha256 is stored (rlhf/annotation/annotators.py makes them) ---


def add_token(con: duckdb.DuckDBPyConnection, annotator: str, token_sha256: str, source: str) -> bool:
    """FeedbackStore.add_token inside the caller's transaction."""
    if con.execute("SELECT 1 FROM annotator_tokens WHERE token_sha256 = ?", [token_sha256]).fetchone():
        return False
    con.execute("INSERT INTO annotator_tokens VALUES (?, ?, ?, now(), NULL)", [token_sha256, annotator, source])
    con.execute(
        "INSERT INTO annotators SELECT ?, 'annotate', now() "
        "WHERE NOT EXISTS (SELECT 1 FROM annotators WHERE annotator = ?)",
        [annotator, annotator],
    )
    return True


def token_annotator(con: duckdb.DuckDBPyConnection, token_sha256: str) -> tuple[str, bool] | None:
    row = con.execute(
        "SELECT annotator, revoked_at IS NOT NULL FROM annotator_tokens WHERE token_sha256 = ?", [token_sha256]
    ).fetchone()
    return (row[0], bool(row[1])) if row else None


def active_tokens(con: duckdb.DuckDBPyConnection, annotator: str) -> int:
    return con.execute(
        "SELECT count(*) FROM annotator_tokens WHERE annotator = ? AND revoked_at IS NULL", [annotator]
    ).fetchone()[0]


def revoke_tokens(con: duckdb.DuckDBPyConnection, annotator: str) -> int:
    revoked = active_tokens(con, annotator)
    con.execute(
        "UPDATE annotator_tokens SET revoked_at = now() WHERE annotator = ? AND revoked_at IS NULL", [annotator]
    )
    return revoked
