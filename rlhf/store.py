"""The DuckDB feedback store: every prompt, response, ranking and comparison, with provenance.

All SQL of the project lives here. The concurrency rule (ARCHITECTURE.md): no process keeps
the file open between operations; each write is one short transaction under a cross-process
file lock, retried while another process (the DuckDB CLI, say) holds DuckDB's own lock.
Rows are keyed by content hashes, so writing the same rows twice adds nothing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import duckdb
import pandas as pd
from filelock import FileLock

from rlhf import chat
from rlhf.errors import StoreError
from rlhf.text import content_id

SCHEMA_VERSION = 5  # the newest version this code reads and writes; MIGRATIONS lead up to it

# Version 1: the tables of the first release. A new store is created at version 1 and migrated
# forward like any old one, so every store goes through the same steps.
SCHEMA_V1 = """
CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY,       -- pipeline run that first wrote rows (Prefect flow run id or local-...)
    stage VARCHAR NOT NULL,           -- the stage that opened the run
    git_rev VARCHAR,                  -- commit of the project when the run wrote
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE prompts (
    prompt_id VARCHAR PRIMARY KEY,    -- sha256 of the prompt text
    prompt VARCHAR NOT NULL,
    topic VARCHAR,                    -- optional: what an on-topic response must mention
    split VARCHAR NOT NULL,           -- train | test
    source VARCHAR NOT NULL,          -- where the prompt came from (demo, a file path, ...)
    run_id VARCHAR NOT NULL
);
CREATE TABLE responses (
    response_id VARCHAR PRIMARY KEY,  -- sha256 of (prompt_id, policy_checkpoint, sample_index, text)
    prompt_id VARCHAR NOT NULL,
    sample_index INTEGER NOT NULL,    -- which of the K samples
    response VARCHAR NOT NULL,
    policy_checkpoint VARCHAR NOT NULL,  -- content hash of the policy that wrote it
    sampling VARCHAR NOT NULL,        -- JSON of the sampling parameters
    run_id VARCHAR NOT NULL
);
CREATE TABLE rankings (
    ranking_id VARCHAR NOT NULL,      -- sha256 of (prompt_id, judge, judge_version, response ids)
    response_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    rank INTEGER NOT NULL,            -- 1 is best; equal ranks are ties
    score DOUBLE NOT NULL,            -- the judge's score
    reasons VARCHAR NOT NULL,         -- JSON: why the judge scored it so
    judge VARCHAR NOT NULL,
    judge_version VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    PRIMARY KEY (ranking_id, response_id)
);
CREATE TABLE comparisons (
    ranking_id VARCHAR NOT NULL,
    chosen_id VARCHAR NOT NULL,       -- the better response (for a tie: the smaller id)
    rejected_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    margin DOUBLE NOT NULL,           -- score(chosen) - score(rejected); 0 for a tie
    tie BOOLEAN NOT NULL,
    run_id VARCHAR NOT NULL,
    PRIMARY KEY (ranking_id, chosen_id, rejected_id)
);
"""

# Version 2: no primary-key indexes (inserting into DuckDB's ART indexes was 70% of a 1M-pair
# ingest); every key stays unique because each write runs alone under the store's lock and adds
# only rows whose key is not there yet (anti-joins below). Adds the annotation tables, annotators,
# runs.dvc_rev and comparisons.weight. Comments here are the column documentation (docs/store.md).
TABLES_V2 = """
CREATE TABLE runs (
    run_id VARCHAR NOT NULL,          -- key. Pipeline run that first wrote rows (Prefect flow run id or local-...)
    stage VARCHAR NOT NULL,           -- the stage (or import, annotate) that opened the run
    git_rev VARCHAR,                  -- commit of the project when the run wrote
    dvc_rev VARCHAR,                  -- sha256 of dvc.lock when the run wrote: its DVC revision
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE prompts (
    prompt_id VARCHAR NOT NULL,       -- key. sha256 of the prompt text
    prompt VARCHAR NOT NULL,
    topic VARCHAR,                    -- optional: what an on-topic response must mention
    split VARCHAR NOT NULL,           -- train or test, by a hash of the text
    source VARCHAR NOT NULL,          -- where the prompt came from (demo, a file path, import:<file>)
    run_id VARCHAR NOT NULL
);
CREATE TABLE responses (
    response_id VARCHAR NOT NULL,     -- key. sha256 of (prompt_id, policy_checkpoint, sample_index, text)
    prompt_id VARCHAR NOT NULL,
    sample_index INTEGER NOT NULL,    -- which of the K samples
    response VARCHAR NOT NULL,
    policy_checkpoint VARCHAR NOT NULL,  -- content hash of the policy that wrote it (import:<file> if imported)
    sampling VARCHAR NOT NULL,        -- JSON of the sampling parameters
    run_id VARCHAR NOT NULL
);
CREATE TABLE rankings (
    ranking_id VARCHAR NOT NULL,      -- key with response_id. sha256 of (prompt, judge, version, responses)
    response_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    rank INTEGER NOT NULL,            -- 1 is best; equal ranks are ties
    score DOUBLE NOT NULL,            -- the judge's score (people: minus the rank)
    reasons VARCHAR NOT NULL,         -- JSON: why the judge scored it so (people: unsafe flag)
    judge VARCHAR NOT NULL,           -- rules, llm, openai, reward_model, pairwise, human
    judge_version VARCHAR NOT NULL,   -- version and model of an AI judge; the annotator for human
    run_id VARCHAR NOT NULL
);
CREATE TABLE comparisons (
    ranking_id VARCHAR NOT NULL,      -- key with chosen_id and rejected_id
    chosen_id VARCHAR NOT NULL,       -- the better response (for a tie: the smaller id)
    rejected_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    margin DOUBLE NOT NULL,           -- score(chosen) - score(rejected); 0 for a tie
    tie BOOLEAN NOT NULL,
    run_id VARCHAR NOT NULL,
    weight DOUBLE NOT NULL            -- 1 / pairs of its ranking: each ranking's pairs sum to 1
);
CREATE TABLE IF NOT EXISTS annotation_queue (
    item_id VARCHAR NOT NULL,         -- key. sha256 of (prompt_id, the response ids in order)
    prompt_id VARCHAR NOT NULL,
    response_ids VARCHAR NOT NULL,    -- JSON list: the responses a person ranks, in display order
    reason VARCHAR NOT NULL,          -- human (every prompt) or low_confidence (an AI judge was unsure)
    run_id VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS annotation_events (
    item_id VARCHAR NOT NULL,
    annotator VARCHAR NOT NULL,
    action VARCHAR NOT NULL,          -- ranked, skipped or flagged_unsafe
    response_id VARCHAR,              -- the flagged response (flagged_unsafe only)
    created_at TIMESTAMP NOT NULL
);
CREATE TABLE annotators (
    annotator VARCHAR NOT NULL,       -- key. The name a person ranks under (the ranking page, an import)
    source VARCHAR NOT NULL,          -- where the name first came from: annotate or import
    first_seen TIMESTAMP NOT NULL
);
"""

COMPARISONS_V3 = """
CREATE TABLE comparisons (
    ranking_id VARCHAR NOT NULL,      -- key with chosen_id and rejected_id
    chosen_id VARCHAR NOT NULL,       -- the better response (for a tie: the smaller id)
    rejected_id VARCHAR NOT NULL,
    prompt_id VARCHAR NOT NULL,
    margin DOUBLE NOT NULL,           -- score(chosen) - score(rejected); 0 for a tie
    tie BOOLEAN NOT NULL,
    run_id VARCHAR NOT NULL,
    weight DOUBLE NOT NULL,           -- 1 / pairs of its ranking: each ranking's pairs sum to 1
    judge VARCHAR NOT NULL,           -- the judge of its ranking (as in rankings)
    judge_version VARCHAR NOT NULL    -- the judge's version and model; the annotator for human
);
"""

_V1_TABLES = ["runs", "prompts", "responses", "rankings", "comparisons"]

# MIGRATIONS[n] takes a store from version n - 1 to n, in the same transaction as the version bump.
MIGRATIONS = {
    2: "".join(f"ALTER TABLE {t} RENAME TO {t}_v1;\n" for t in _V1_TABLES)
    + TABLES_V2
    + """
INSERT INTO runs SELECT run_id, stage, git_rev, NULL, created_at FROM runs_v1;
INSERT INTO prompts SELECT * FROM prompts_v1;
INSERT INTO responses SELECT * FROM responses_v1;
INSERT INTO rankings SELECT * FROM rankings_v1;
INSERT INTO comparisons SELECT *, 1.0 / count(*) OVER (PARTITION BY ranking_id) FROM comparisons_v1;
"""
    + "".join(f"DROP TABLE {t}_v1;\n" for t in _V1_TABLES),
    # Version 3: each pair carries the judge of its ranking, so the snapshot and the agreement
    # report read who labelled a pair without joining 1M pairs to the rankings. The table is
    # rebuilt rather than altered: DuckDB refuses SET NOT NULL after an UPDATE in one transaction.
    3: "ALTER TABLE comparisons RENAME TO comparisons_v2;\n"
    + COMPARISONS_V3
    + """
INSERT INTO comparisons
SELECT c.*, coalesce(r.judge, 'unknown'), coalesce(r.judge_version, 'unknown')
FROM comparisons_v2 c
LEFT JOIN rankings r ON r.ranking_id = c.ranking_id AND r.response_id = c.chosen_id;
DROP TABLE comparisons_v2;
""",
    # Version 4: conversations (rlhf.chat). A prompt keeps its chat messages and where in its
    # source it was found; a response keeps its turns and the exact text the policy continued
    # (its chat template's rendering). Older rows were plain strings: one user message, one
    # assistant message; the rendered prompt of an old response is not known (NULL).
    4: """
ALTER TABLE prompts ADD COLUMN messages VARCHAR;    -- JSON chat messages of the prompt (rlhf.chat)
ALTER TABLE prompts ADD COLUMN source_row BIGINT;   -- row of the prompt in its source (1-based), if it has rows
ALTER TABLE responses ADD COLUMN messages VARCHAR;  -- JSON chat messages of the response: the turns after the prompt
ALTER TABLE responses ADD COLUMN rendered_prompt VARCHAR;  -- the text the policy continued (NULL if imported)
UPDATE prompts SET messages = json_array(json_object('role', 'user', 'content', prompt));
UPDATE responses SET messages = json_array(json_object('role', 'assistant', 'content', response));
""",
    # Version 5: annotation at team scale (rlhf/annotation). Tokens live in the store, hashed, and
    # can be revoked; a store-wide overlap setting says how many people rank each queue item; a
    # ranked event says whether the order started from the AI judge's suggestion and which mode
    # (the list or pairwise choices) made it. The page before version 5 had neither.
    5: """
CREATE TABLE annotator_tokens (
    token_sha256 VARCHAR NOT NULL,    -- key. sha256 (hex) of the token; the token itself is never stored
    annotator VARCHAR NOT NULL,       -- the name the token signs in as
    source VARCHAR NOT NULL,          -- add-annotator, or tokens-file:<path> (a token taken from a JSON file)
    created_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP              -- NULL while the token is accepted; a revoked token stays refused
);
CREATE TABLE annotation_settings (
    name VARCHAR NOT NULL,            -- key. overlap: how many people rank each queue item
    value VARCHAR NOT NULL
);
ALTER TABLE annotation_events ADD COLUMN from_suggestion BOOLEAN;  -- ranked: the order started from the AI judge's
ALTER TABLE annotation_events ADD COLUMN mode VARCHAR;  -- ranked: rank (the list) or pairwise (two at a time)
UPDATE annotation_events SET from_suggestion = false, mode = 'rank' WHERE action = 'ranked';
""",
}

HUMAN_JUDGE = "human"

# annotation_events' columns, named: version 5 added two after created_at.
EVENT_COLUMNS = "item_id, annotator, action, response_id, created_at, from_suggestion, mode"

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

# A K-way ranking becomes its C(K,2) pairs: one row per unordered pair of the ranking, each pair
# weighted 1 / C(K,2) so that every ranking (one prompt, one judge) counts the same (InstructGPT).
# `new_rankings` holds only rankings not yet in the store, whole (a ranking is written in one go).
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
       1.0 / count(*) OVER (PARTITION BY a.ranking_id) AS weight,
       a.judge,
       a.judge_version
FROM new_rankings a JOIN new_rankings b
  ON a.ranking_id = b.ranking_id
 AND (a.rank < b.rank OR (a.rank = b.rank AND a.response_id < b.response_id))
"""

# An AI judge's version names its configuration (model, principles, unsafe words), so a changed
# judge that ranks the same responses again writes a new ranking beside the old one. One ranking
# of a (judge, prompt, response set) counts: the one in the rankings file being stored now (the
# `current_rankings` relation: a judge changed back and forth counts as it is now), else the newest
# run's. The others stay in the store as history. People are never superseded: each annotator's
# ranking is a label of its own. Only (judge, prompt) groups ranked under two or more versions are
# examined, so a store with one version per judge pays one aggregate for this.
SUPERSEDED_RANKINGS = """
SELECT ranking_id FROM (
    SELECT ranking_id,
           row_number() OVER (PARTITION BY judge, prompt_id, response_set
                              ORDER BY is_current DESC, ranked_at DESC NULLS LAST, ranking_id DESC) AS preferred
    FROM (SELECT r.ranking_id, r.judge, r.prompt_id,
                 string_agg(r.response_id, ',' ORDER BY r.response_id) AS response_set,
                 max(u.created_at) AS ranked_at,
                 r.ranking_id IN (SELECT ranking_id FROM current_rankings) AS is_current
          FROM rankings r
          SEMI JOIN (SELECT judge, prompt_id FROM rankings WHERE judge <> 'human'
                     GROUP BY judge, prompt_id HAVING count(DISTINCT judge_version) > 1) revised
            ON revised.judge = r.judge AND revised.prompt_id = r.prompt_id
          LEFT JOIN runs u ON u.run_id = r.run_id
          GROUP BY r.ranking_id, r.judge, r.prompt_id))
WHERE preferred > 1
"""

# The pairs that are labels. An AI label of a pair that hybrid routing sent to people is not a
# label: the people's is. Such queue items hold the pair's two ids in order.
LABELLED_PAIRS = f"""
SELECT c.* FROM comparisons c
ANTI JOIN (SELECT response_ids->>'$[0]' AS low, response_ids->>'$[1]' AS high FROM annotation_queue
           WHERE reason = 'low_confidence' AND json_array_length(response_ids) = 2) routed
  ON c.judge <> 'human'
 AND routed.low = least(c.chosen_id, c.rejected_id) AND routed.high = greatest(c.chosen_id, c.rejected_id)
ANTI JOIN ({SUPERSEDED_RANKINGS}) superseded ON superseded.ranking_id = c.ranking_id
"""

# Several people's rankings of one item (the same prompt and responses) merge by weight: each of
# the n rankings' pairs weighs 1 / (n C(K,2)), so the item counts once, as one AI ranking does,
# however many people ranked it; where they disagree both orders of a pair stay in at their share
# (a soft label: two of three people preferring a to b give "a > b" 2/3 of the pair's weight).
# Only `weight` changes; each pair keeps its annotator (judge_version), so no label is lost.
HUMAN_RATERS = """
SELECT ranking_id, count(*) OVER (PARTITION BY prompt_id, response_set) AS raters
FROM (SELECT ranking_id, prompt_id, string_agg(response_id, ',' ORDER BY response_id) AS response_set
      FROM rankings WHERE judge = 'human' GROUP BY ranking_id, prompt_id)
"""

MERGED_PAIRS = f"""
SELECT l.* REPLACE (l.weight / coalesce(h.raters, 1) AS weight)
FROM ({LABELLED_PAIRS}) l LEFT JOIN ({HUMAN_RATERS}) h USING (ranking_id)
"""

# A LIKE, not a JSON parse: reasons are written by json.dumps, and this runs over every ranking row.
# The snapshot's rankings are those of the `in_scope` relation (snapshot_comparisons).
UNSAFE_LABELS = f"""
SELECT response_id, bool_or(reasons LIKE '%"unsafe": true%') AS unsafe
FROM rankings ANTI JOIN ({SUPERSEDED_RANKINGS}) superseded USING (ranking_id)
WHERE reasons LIKE '%"unsafe": %' AND ranking_id IN (SELECT ranking_id FROM in_scope) GROUP BY response_id
"""
SCOPED_RANKINGS = "(SELECT prompt_id, response_id FROM rankings WHERE ranking_id IN (SELECT ranking_id FROM in_scope))"

# The snapshot is three files, each row once: the labelled pairs of the rankings in scope, and their
# prompts and responses (with a scope, a fourth: scope.json, what it took).
# Texts are not repeated per pair (a response is in K - 1 pairs): the files stay small and a
# 1M-pair snapshot takes under 2 s. `rlhf.snapshot.read_comparisons` joins them back. Each file
# has its own COPY options: the pairs' hash ids gain nothing from Parquet's dictionary encoding.
SNAPSHOT_FILES = {
    "pairs": (
        f"""SELECT ranking_id, prompt_id, chosen_id, rejected_id, margin, tie, weight, judge, judge_version
            FROM ({MERGED_PAIRS}) WHERE ranking_id IN (SELECT ranking_id FROM in_scope)
            ORDER BY ranking_id, chosen_id, rejected_id""",
        "FORMAT parquet, DICTIONARY_SIZE_LIMIT 1",
    ),
    "prompts": (
        f"""SELECT prompt_id, prompt, messages, topic, split FROM prompts
            WHERE prompt_id IN (SELECT prompt_id FROM {SCOPED_RANKINGS}) ORDER BY prompt_id""",
        "FORMAT parquet",
    ),
    # unsafe: the harmlessness label (Safe RLHF's cost model): true if any ranking of the response
    # flagged it, false if rankings say and none did, NULL if no ranking carries the label.
    "responses": (
        f"""SELECT r.response_id, r.prompt_id, r.response, r.messages, r.policy_checkpoint, s.unsafe
            FROM responses r LEFT JOIN ({UNSAFE_LABELS}) s USING (response_id)
            WHERE response_id IN (SELECT response_id FROM {SCOPED_RANKINGS}) ORDER BY response_id""",
        "FORMAT parquet",
    ),
}

# The store's side of a snapshot scope (rlhf.config.SnapshotScopeParams; `scope` below): the rankings
# it takes beyond this configuration's own, which arrive with the rankings file DVC already tracks.
# Parameters: every ranking?, import run ids, policies whose people's rankings count, policies of
# earlier rounds whose every ranking counts, judges (NULL: every judge).
STORE_SIDE_RANKINGS = """
SELECT DISTINCT r.ranking_id FROM rankings r LEFT JOIN responses s USING (response_id)
WHERE (CAST(? AS BOOLEAN)
       OR list_contains(CAST(? AS VARCHAR[]), r.run_id)
       OR (r.judge = 'human' AND list_contains(CAST(? AS VARCHAR[]), s.policy_checkpoint))
       OR list_contains(CAST(? AS VARCHAR[]), s.policy_checkpoint))
  AND (CAST(? AS VARCHAR[]) IS NULL OR list_contains(CAST(? AS VARCHAR[]), r.judge))
"""

# What DVC sees of the store: a count and an order-free digest of every row of the rankings a scope
# takes from the store (a person re-ranking, an unsafe flag or a new import changes it).
SCOPE_DIGEST = f"""
SELECT count(*), coalesce(bit_xor(hash(ranking_id, response_id, rank, score, reasons, judge, judge_version)), 0)
FROM rankings WHERE ranking_id IN ({STORE_SIDE_RANKINGS})
"""

# Which rankings a snapshot took, by source (the snapshot's scope.json): this configuration's are
# counted, not named (their run ids differ between checkouts); store-side ones by run.
SCOPE_SOURCES = """
SELECT CASE WHEN ranking_id IN (SELECT ranking_id FROM current_rankings) THEN 'this configuration'
            WHEN run_id LIKE 'import-%' THEN 'import ' || substr(run_id, 8)
            WHEN judge = 'human' THEN 'people'
            ELSE 'store' END AS source,
       CASE WHEN ranking_id IN (SELECT ranking_id FROM current_rankings) THEN NULL ELSE run_id END AS run_id,
       count(DISTINCT ranking_id) AS rankings
FROM rankings WHERE ranking_id IN (SELECT ranking_id FROM in_scope)
GROUP BY ALL ORDER BY source, run_id
"""

# Every labelled pair with its texts, in the snapshot's order (exports and the DataFrame API).
COMPARISONS_QUERY = f"""
SELECT c.ranking_id, c.prompt_id, c.chosen_id, c.rejected_id,
       p.prompt, p.messages AS prompt_messages, p.topic, p.split,
       ch.response AS chosen, rj.response AS rejected,
       ch.messages AS chosen_messages, rj.messages AS rejected_messages,
       c.margin, c.tie, c.weight,
       c.judge, c.judge_version, ch.policy_checkpoint
FROM ({MERGED_PAIRS}) c
JOIN prompts p USING (prompt_id)
JOIN responses ch ON ch.response_id = c.chosen_id
JOIN responses rj ON rj.response_id = c.rejected_id
ORDER BY c.ranking_id, c.chosen_id, c.rejected_id
"""


class FeedbackStore:
    """Opens `path` for one operation at a time; never holds it between calls."""

    def __init__(self, path: str | Path, lock_timeout_s: float = 60.0, retries: int = 20, create: bool = True):
        """`create`: False for a reader, which refuses a missing store (StoreError) and creates nothing."""
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout_s)
        self.retries = retries
        self.create = create
        self.scope_file = scope_file(self.path)

    @contextlib.contextmanager
    def _connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if not self.create and not self.path.is_file():
            raise StoreError(f"{self.path}: no store here (nothing was created; check the path, or run the pipeline)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            for attempt in range(self.retries):
                try:
                    con = duckdb.connect(str(self.path), read_only=read_only and self.path.exists())
                    break
                except duckdb.IOException as error:  # another process holds DuckDB's own file lock
                    if attempt == self.retries - 1:
                        raise StoreError(f"{self.path}: cannot open the store: {error}") from None
                    time.sleep(min(0.05 * 2**attempt, 2.0))
            try:
                yield con
            finally:
                con.close()

    @contextlib.contextmanager
    def transaction(self, scope: dict | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """One all-or-nothing write: committed on success, rolled back on any error.

        Each commit brings the scope file (`scope_file`) up to date, under the same lock: what the
        recorded snapshot scope (or `scope`, the one a snapshot records now) would take from the store.
        """
        with self._connect() as con:
            self._migrate(con)
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                scope = scope if scope is not None else recorded_scope(self.path)
                fingerprint = scope_fingerprint(con, scope) if scope is not None else None
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            if fingerprint is not None:
                write_scope_file(self.path, fingerprint)

    def _migrate(self, con: duckdb.DuckDBPyConnection) -> None:
        """Bring the file to SCHEMA_VERSION: version 1 into an empty file, then each migration in turn,
        all in one transaction, so a store is at one version or the next, never between."""
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this code reads ({SCHEMA_VERSION}); "
                    "upgrade the project"
                )
            if version == 0:
                con.execute(SCHEMA_V1)
            for target in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                con.execute(MIGRATIONS[target])
            if version != SCHEMA_VERSION:
                con.execute("DELETE FROM schema_version")
                con.execute("INSERT INTO schema_version VALUES (?)", [SCHEMA_VERSION])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        with self.transaction() as con:
            return con.execute("SELECT version FROM schema_version").fetchone()[0]

    def ingest(
        self,
        run: dict,
        prompts: pd.DataFrame,
        responses: pd.DataFrame,
        rankings: pd.DataFrame,
        queue: pd.DataFrame | None = None,
    ) -> dict[str, int]:
        """Write one stage's prompts, responses, rankings and queue items, and the pairs they imply, at once.

        Returns how many rows each table gained: zero everywhere when the same data is re-ingested.
        """
        with self.transaction() as con:
            before = self._counts(con)
            self._insert_run(con, run)
            prompts, responses = with_messages(prompts, responses)
            con.register("incoming_prompts", prompts.assign(run_id=run["run_id"]))
            con.execute(
                "INSERT INTO prompts SELECT DISTINCT ON (prompt_id) prompt_id, prompt, topic, split, source, run_id, "
                "messages, source_row FROM incoming_prompts n "
                "WHERE NOT EXISTS (SELECT 1 FROM prompts p WHERE p.prompt_id = n.prompt_id)"
            )
            con.register("incoming_responses", responses.assign(run_id=run["run_id"]))
            con.execute(
                "INSERT INTO responses SELECT DISTINCT ON (response_id) response_id, prompt_id, sample_index, "
                "response, policy_checkpoint, sampling, run_id, messages, rendered_prompt FROM incoming_responses n "
                "WHERE NOT EXISTS (SELECT 1 FROM responses r WHERE r.response_id = n.response_id)"
            )
            con.register("incoming_rankings", rankings.assign(run_id=run["run_id"]))
            con.execute(
                "CREATE OR REPLACE TEMP TABLE new_rankings AS SELECT DISTINCT ON (ranking_id, response_id) "
                "ranking_id, response_id, prompt_id, rank, score, reasons, judge, judge_version, run_id "
                "FROM incoming_rankings n WHERE NOT EXISTS "
                "(SELECT 1 FROM rankings k WHERE k.ranking_id = n.ranking_id AND k.response_id = n.response_id)"
            )
            con.execute("INSERT INTO rankings SELECT * FROM new_rankings")
            con.execute(PAIRS_FROM_RANKINGS)
            self._insert_annotators(con, run["stage"])
            if queue is not None and len(queue):
                self._insert_queue(con, run, queue)
            after = self._counts(con)
        return {table: after[table] - before[table] for table in after}

    @staticmethod
    def _counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
        tables = ["runs", "prompts", "responses", "rankings", "comparisons", "annotation_queue", "annotators"]
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}

    def counts(self) -> dict[str, int]:
        with self.transaction() as con:
            return self._counts(con)

    # --- the human annotation queue (the ranking page is a thin shell over these) ---

    def enqueue(self, run: dict, items: pd.DataFrame) -> int:
        """Add items (item_id, prompt_id, response_ids JSON, reason) to the queue; returns how many were new."""
        with self.transaction() as con:
            before = con.execute("SELECT count(*) FROM annotation_queue").fetchone()[0]
            self._insert_run(con, run)
            self._insert_queue(con, run, items)
            return con.execute("SELECT count(*) FROM annotation_queue").fetchone()[0] - before

    # Each helper adds only rows whose key is not in the table yet: with every write serialised by
    # the store's lock, that keeps keys unique without index maintenance (see TABLES_V2).

    @staticmethod
    def _insert_run(con: duckdb.DuckDBPyConnection, run: dict) -> None:
        con.execute(
            "INSERT INTO runs SELECT ?, ?, ?, ?, now() WHERE NOT EXISTS (SELECT 1 FROM runs WHERE run_id = ?)",
            [run["run_id"], run["stage"], run.get("git_rev"), run.get("dvc_rev"), run["run_id"]],
        )

    @staticmethod
    def _insert_queue(con: duckdb.DuckDBPyConnection, run: dict, items: pd.DataFrame) -> None:
        con.register("incoming_items", items.assign(run_id=run["run_id"]))
        con.execute(
            "INSERT INTO annotation_queue SELECT DISTINCT ON (item_id) item_id, prompt_id, response_ids, reason, "
            "run_id, now() FROM incoming_items n "
            "WHERE NOT EXISTS (SELECT 1 FROM annotation_queue q WHERE q.item_id = n.item_id)"
        )

    @staticmethod
    def _insert_annotators(con: duckdb.DuckDBPyConnection, source: str) -> None:
        """People who ranked in `new_rankings` (judge human; the version is the annotator)."""
        con.execute(
            "INSERT INTO annotators SELECT DISTINCT judge_version, ?, now() FROM new_rankings n WHERE judge = ? "
            "AND NOT EXISTS (SELECT 1 FROM annotators a WHERE a.annotator = n.judge_version)",
            [source, HUMAN_JUDGE],
        )

    # Assignment with overlap. Unset (None, the default and the behaviour before version 5): every
    # person sees every item, and an item stops waiting once anyone ranked or skipped it. Set to N:
    # an item is served to people until N of them ranked it, then it leaves the queue; a skip hides
    # it from that person only. Nobody is served an item they ranked or skipped. Two people who open
    # the last open slot at once may both rank it: an extra label, never a lost one.

    def set_overlap(self, people: int | None) -> None:
        """How many people rank each queue item (None: everyone, as before). Kept until changed."""
        if people is not None and people < 1:
            raise StoreError(f"annotation: overlap must be 1 or more, not {people}")
        with self.transaction() as con:
            con.execute("DELETE FROM annotation_settings WHERE name = 'overlap'")
            if people is not None:
                con.execute("INSERT INTO annotation_settings VALUES ('overlap', ?)", [str(people)])

    def overlap(self) -> int | None:
        with self.transaction() as con:
            return self._overlap(con)

    @staticmethod
    def _overlap(con: duckdb.DuckDBPyConnection) -> int | None:
        row = con.execute("SELECT value FROM annotation_settings WHERE name = 'overlap'").fetchone()
        return int(row[0]) if row else None

    def next_item(self, annotator: str, suggest: bool = False) -> dict | None:
        """The next item for this annotator: one still open (see set_overlap) that they have neither
        ranked nor skipped, the AI judge's closest call first (QUEUE_ORDER), with its texts and chat
        messages (the prompt's turns; each response's turns after the prompt). A row without messages
        (NULL) reads as one user turn, or one assistant turn, of its text. With `suggest`, the item
        carries the AI judge's ranking of its responses where one ranked them all."""
        with self.transaction() as con:
            rows, texts = self._open_items(con, self._overlap(con), 1, annotator)
            if not rows:
                return None
            item = self._item(rows[0], texts)
            if suggest:
                item["suggestion"] = self._suggestion(con, item["prompt_id"], json.loads(rows[0][4]))
        return item

    def open_queue(self, limit: int = 5000) -> dict:
        """What the ranking page serves from while a stage holds the store (rlhf/annotation/journal.py):
        `items`, the first `limit` still open in next_item's order and shape (without suggestions),
        each with `people` (how many ranked it); `done`, the (annotator, item_id) pairs ranked or
        skipped; `overlap`; `complete`, False when `limit` cut the queue."""
        with self.transaction() as con:
            overlap = self._overlap(con)
            rows, texts = self._open_items(con, overlap, limit + 1)
            done = set(
                con.execute(
                    "SELECT DISTINCT annotator, item_id FROM annotation_events WHERE action IN ('ranked', 'skipped')"
                ).fetchall()
            )
        items = [{**self._item(row, texts), "people": row[5]} for row in rows[:limit]]
        return {"items": items, "done": done, "overlap": overlap, "complete": len(rows) <= limit}

    @staticmethod
    def _open_items(
        con: duckdb.DuckDBPyConnection, overlap: int | None, limit: int, annotator: str | None = None
    ) -> tuple[list[tuple], dict[str, tuple]]:
        """The first `limit` items still open, in QUEUE_ORDER's order (with `annotator`, only those they
        have neither ranked nor skipped): rows (item_id, prompt_id, prompt, messages, response_ids,
        people), and {response_id: (text, messages)} of their responses."""
        rows = con.execute(
            f"""SELECT q.item_id, q.prompt_id, p.prompt, p.messages, q.response_ids, q.people
                FROM ({QUEUE_ORDER}) q JOIN prompts p USING (prompt_id)
                WHERE q.item_id NOT IN (SELECT item_id FROM annotation_events
                                        WHERE annotator = ? AND action IN ('ranked', 'skipped'))
                  AND (CAST(? AS INTEGER) IS NULL OR q.people < ?)
                ORDER BY q.closest ASC NULLS LAST, q.created_at, q.item_id LIMIT ?""",
            [annotator, overlap, overlap, limit],
        ).fetchall()
        ids = sorted({i for row in rows for i in json.loads(row[4])})
        texts = con.execute(
            "SELECT response_id, response, messages FROM responses WHERE list_contains(?, response_id)", [ids]
        ).fetchall()
        return rows, {response_id: (text, messages) for response_id, text, messages in texts}

    @staticmethod
    def _item(row: tuple, texts: dict[str, tuple]) -> dict:
        """A row of _open_items as next_item's item (without a suggestion), its texts from `texts`."""
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

    @staticmethod
    def _suggestion(con: duckdb.DuckDBPyConnection, prompt_id: str, ids: list[str]) -> dict | None:
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

    def waiting_items(self) -> int:
        """Queued items that still wait for people: fewer than `overlap` people ranked them, or
        (overlap unset) nobody ranked or skipped them yet."""
        with self.transaction() as con:
            return self._waiting(con)

    def _waiting(self, con: duckdb.DuckDBPyConnection) -> int:
        overlap = self._overlap(con)
        if overlap is None:
            return con.execute(
                "SELECT count(*) FROM annotation_queue q WHERE NOT EXISTS (SELECT 1 FROM annotation_events e "
                "WHERE e.item_id = q.item_id AND e.action IN ('ranked', 'skipped'))"
            ).fetchone()[0]
        return con.execute(f"SELECT count(*) FROM ({QUEUE_ORDER}) WHERE people < ?", [overlap]).fetchone()[0]

    def annotation_progress(self, annotator: str) -> dict[str, int]:
        """This annotator's progress, `done` of `total` (what they did plus what is still open to
        them), and the queue's: `queue_items`, of which `queue_waiting` still wait for people."""
        with self.transaction() as con:
            overlap = self._overlap(con)
            total = con.execute("SELECT count(*) FROM annotation_queue").fetchone()[0]
            done = con.execute(
                "SELECT count(DISTINCT item_id) FROM annotation_events WHERE annotator = ? "
                "AND action IN ('ranked', 'skipped') AND item_id IN (SELECT item_id FROM annotation_queue)",
                [annotator],
            ).fetchone()[0]
            open_to_them = con.execute(
                f"""SELECT count(*) FROM ({QUEUE_ORDER}) q
                    WHERE q.item_id NOT IN (SELECT item_id FROM annotation_events
                                            WHERE annotator = ? AND action IN ('ranked', 'skipped'))
                      AND (CAST(? AS INTEGER) IS NULL OR q.people < ?)""",
                [annotator, overlap, overlap],
            ).fetchone()[0]
            waiting = self._waiting(con)
        return {"done": done, "total": done + open_to_them, "queue_items": total, "queue_waiting": waiting}

    def annotator_progress(self) -> pd.DataFrame:
        """Per annotator (every name with a token or an event): ranked, skipped, active and revoked tokens."""
        with self.transaction() as con:
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

    def record_human_ranking(
        self,
        annotator: str,
        item_id: str,
        ranks: dict[str, int],
        unsafe: list[str],
        run_id: str,
        from_suggestion: bool = False,
        mode: str = "rank",
    ) -> int:
        """One person's ranking of a queued item: ranking rows, their pairs and the events, at once.

        `ranks` maps every response of the item to its rank (1 best; equal ranks tie). The ranked
        event keeps whether the order started from the AI judge's suggestion and the page's mode
        (rank or pairwise). Returns the number of pairs written. Refuses a ranking that does not
        cover exactly the item's responses.
        """
        with self.transaction() as con:
            return self._record_human_ranking(con, annotator, item_id, ranks, unsafe, run_id, from_suggestion, mode)

    def _record_human_ranking(
        self,
        con: duckdb.DuckDBPyConnection,
        annotator: str,
        item_id: str,
        ranks: dict[str, int],
        unsafe: list[str],
        run_id: str,
        from_suggestion: bool = False,
        mode: str = "rank",
    ) -> int:
        """record_human_ranking inside the caller's transaction."""
        row = con.execute(
            "SELECT prompt_id, response_ids FROM annotation_queue WHERE item_id = ?", [item_id]
        ).fetchone()
        if row is None:
            raise StoreError(f"annotation: no queued item {item_id!r}")
        prompt_id, response_ids = row[0], json.loads(row[1])
        if sorted(ranks) != sorted(response_ids) or not set(unsafe) <= set(response_ids):
            raise StoreError(f"annotation: the ranking of {item_id!r} must rank exactly its responses")
        ranking_id = content_id(item_id, HUMAN_JUDGE, annotator)
        self._insert_run(con, {"run_id": run_id, "stage": "annotate"})
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
        self._insert_annotators(con, "annotate")
        events = [(item_id, annotator, "ranked", None, bool(from_suggestion), mode)] + [
            (item_id, annotator, "flagged_unsafe", r, None, None) for r in unsafe
        ]
        con.executemany(f"INSERT INTO annotation_events ({EVENT_COLUMNS}) VALUES (?, ?, ?, ?, now(), ?, ?)", events)
        return con.execute("SELECT count(*) FROM comparisons WHERE ranking_id = ?", [ranking_id]).fetchone()[0]

    def skip_item(self, annotator: str, item_id: str) -> None:
        with self.transaction() as con:
            self._skip_item(con, annotator, item_id)

    @staticmethod
    def _skip_item(con: duckdb.DuckDBPyConnection, annotator: str, item_id: str) -> None:
        con.execute(
            f"INSERT INTO annotation_events ({EVENT_COLUMNS}) VALUES (?, ?, 'skipped', NULL, now(), NULL, NULL)",
            [item_id, annotator],
        )

    def record_page_submissions(self, submissions: list[tuple[str, str, str, dict]], run_id: str) -> list:
        """The ranking page's journal rows, (annotator, item_id, action, body) with action ranked (body:
        record_human_ranking's ranks, unsafe, from_suggestion, mode) or skipped, written in one transaction
        (one open of the file for the lot, not one each). Per row: the pairs of a ranking, None for a skip,
        or the StoreError's text of one refused. A row whose event is in the store already (written before
        a kill took the journal's mark) is not written again."""
        outcomes = []
        with self.transaction() as con:
            for annotator, item_id, action, body in submissions:
                done = con.execute(
                    "SELECT count(*) FROM annotation_events WHERE annotator = ? AND item_id = ? AND action = ?",
                    [annotator, item_id, action],
                ).fetchone()[0]
                if action == "skipped":
                    if not done:
                        self._skip_item(con, annotator, item_id)
                    outcomes.append(None)
                elif done:
                    ranking_id = content_id(item_id, HUMAN_JUDGE, annotator)
                    outcomes.append(
                        con.execute("SELECT count(*) FROM comparisons WHERE ranking_id = ?", [ranking_id]).fetchone()[0]
                    )
                else:
                    try:  # its checks come before its writes: a refused row writes nothing
                        outcomes.append(
                            self._record_human_ranking(
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

    def add_token(self, annotator: str, token_sha256: str, source: str) -> bool:
        """Store a token's hash for `annotator`; False (and nothing written) if the hash is known
        already, revoked or not: a revoked token stays refused even if a tokens file still lists it."""
        with self.transaction() as con:
            if con.execute("SELECT 1 FROM annotator_tokens WHERE token_sha256 = ?", [token_sha256]).fetchone():
                return False
            con.execute("INSERT INTO annotator_tokens VALUES (?, ?, ?, now(), NULL)", [token_sha256, annotator, source])
            con.execute(
                "INSERT INTO annotators SELECT ?, 'annotate', now() "
                "WHERE NOT EXISTS (SELECT 1 FROM annotators WHERE annotator = ?)",
                [annotator, annotator],
            )
            return True

    def token_annotator(self, token_sha256: str) -> tuple[str, bool] | None:
        """(annotator, revoked) of a token's hash; None for a token the store never held."""
        with self.transaction() as con:
            row = con.execute(
                "SELECT annotator, revoked_at IS NOT NULL FROM annotator_tokens WHERE token_sha256 = ?", [token_sha256]
            ).fetchone()
        return (row[0], bool(row[1])) if row else None

    def active_tokens(self, annotator: str) -> int:
        with self.transaction() as con:
            return con.execute(
                "SELECT count(*) FROM annotator_tokens WHERE annotator = ? AND revoked_at IS NULL", [annotator]
            ).fetchone()[0]

    def revoke_tokens(self, annotator: str) -> int:
        """Revoke every accepted token of `annotator`; returns how many were revoked."""
        with self.transaction() as con:
            revoked = con.execute(
                "SELECT count(*) FROM annotator_tokens WHERE annotator = ? AND revoked_at IS NULL", [annotator]
            ).fetchone()[0]
            con.execute(
                "UPDATE annotator_tokens SET revoked_at = now() WHERE annotator = ? AND revoked_at IS NULL", [annotator]
            )
            return revoked

    def human_ranks(self) -> pd.DataFrame:
        """Every person's rank of every response they ranked, as (item, response_id, annotator, rank);
        an item is a prompt and the set of responses ranked together (one queue item, or one
        imported ranking), so rankings of the same item by several people line up (agreement)."""
        with self.transaction() as con:
            return con.execute(
                """WITH human AS (SELECT ranking_id, prompt_id, response_id, rank, judge_version AS annotator
                                  FROM rankings WHERE judge = ?),
                        items AS (SELECT ranking_id,
                                         prompt_id || ':' || string_agg(response_id, ',' ORDER BY response_id) AS item
                                  FROM human GROUP BY ranking_id, prompt_id)
                   SELECT i.item, h.response_id, h.annotator, h.rank
                   FROM human h JOIN items i USING (ranking_id) ORDER BY i.item, h.response_id, h.annotator""",
                [HUMAN_JUDGE],
            ).df()

    def pair_labels(self) -> pd.DataFrame:
        """Every labelled pair as (a, b, judge, judge_version, label): a < b are response ids; label
        +1 means a is better, -1 b, 0 a tie. Routed AI pairs are included: agreement needs them."""
        with self.transaction() as con:
            return con.execute(
                """SELECT least(chosen_id, rejected_id) AS a, greatest(chosen_id, rejected_id) AS b,
                          judge, judge_version,
                          CASE WHEN tie THEN 0 WHEN chosen_id < rejected_id THEN 1 ELSE -1 END AS label
                   FROM comparisons ORDER BY a, b, judge, judge_version"""
            ).df()

    def query(self, sql: str, params: list | None = None, external_access: bool = True) -> pd.DataFrame:
        """Read-only SQL. external_access=False (`rlhf store query`): no file or network outside the
        store either (COPY TO, ATTACH, INSTALL, LOAD, EXPORT, read_csv are refused), locked for the query."""
        with self._connect(read_only=True) as con:
            if not external_access:
                con.execute("SET enable_external_access = false")
                con.execute("SET lock_configuration = true")
            return con.execute(sql, params or []).df()

    def comparisons(self) -> pd.DataFrame:
        """Every labelled pair with its prompt and response texts, in a fixed order."""
        with self.transaction() as con:  # a transaction brings an older store to this schema first
            _register_current(con, ())
            return con.execute(COMPARISONS_QUERY).df()

    def absent_sources(self, scope: dict) -> list[str]:
        """What a scope names that the store does not hold: imports by name, earlier rounds by policy."""
        with self.transaction() as con:
            imports = "SELECT DISTINCT run_id FROM rankings WHERE run_id LIKE 'import-%'"
            runs = {r for (r,) in con.execute(imports).fetchall()}
            policies = {
                p
                for (p,) in con.execute(
                    "SELECT DISTINCT s.policy_checkpoint FROM rankings r JOIN responses s USING (response_id)"
                ).fetchall()
            }
        return [f"import {name}" for name in scope["imports"] if f"import-{name}" not in runs] + [
            f"the rankings of policy {policy}" for policy in scope["earlier_policies"] if policy not in policies
        ]

    def snapshot_comparisons(
        self, out_dir: str | Path, current_ranking_ids: Iterable[str] = (), scope: dict | None = None
    ) -> int:
        """Write the labelled pairs, the prompts and the responses to `out_dir` as Parquet files in a
        fixed order; returns the number of pairs. `current_ranking_ids`: the rankings the stage is
        storing now, preferred over other versions of their judge (see SUPERSEDED_RANKINGS).

        `scope` (see `snapshot_scope`): the current rankings plus what it names from the store; the
        snapshot's scope.json says which runs and imports it took, and the scope is recorded in the
        scope file for later writes to keep up to date. None: every ranking the store holds.
        The same store gives byte-identical files, so DVC sees no change and skips what follows.
        The directory appears whole or not at all: it is written beside its place, then renamed
        (a crash between removing the old one and the rename leaves none, and the stage runs again).
        """
        out_dir = Path(out_dir)
        partial = out_dir.with_name(out_dir.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with self.transaction(scope) as con:
            _register_current(con, current_ranking_ids)
            if scope is None:
                con.execute("CREATE OR REPLACE TEMP TABLE in_scope AS SELECT DISTINCT ranking_id FROM rankings")
            else:
                judges = scope["label_sources"]
                con.execute(
                    f"""CREATE OR REPLACE TEMP TABLE in_scope AS
                        SELECT ranking_id FROM (SELECT ranking_id FROM current_rankings UNION {STORE_SIDE_RANKINGS})
                        WHERE CAST(? AS VARCHAR[]) IS NULL OR ranking_id IN
                              (SELECT ranking_id FROM rankings WHERE list_contains(CAST(? AS VARCHAR[]), judge))""",
                    _scope_arguments(scope) + [judges, judges],
                )
            for name, (query, options) in SNAPSHOT_FILES.items():
                target = str(partial / f"{name}.parquet").replace("'", "''")  # COPY binds no target
                con.execute(f"COPY ({query}) TO '{target}' ({options})")
            rows = con.execute("SELECT count(*) FROM read_parquet(?)", [str(partial / "pairs.parquet")]).fetchone()[0]
            if scope is not None:
                taken = con.execute(SCOPE_SOURCES).df().astype(object).where(lambda f: f.notna(), None)
                record = {"scope": scope, "taken": taken.to_dict(orient="records")}
                (partial / "scope.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if out_dir.is_dir():
            shutil.rmtree(out_dir)
        elif out_dir.exists():
            out_dir.unlink()  # a single-file snapshot of an older version
        partial.rename(out_dir)
        return rows


def with_messages(prompts: pd.DataFrame, responses: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Frames written before conversations (plain strings) get the columns of schema version 4."""
    if "messages" not in prompts:
        prompts = prompts.assign(messages=[chat.to_json(chat.as_conversation(p)) for p in prompts["prompt"]])
    if "source_row" not in prompts:
        prompts = prompts.assign(source_row=pd.Series(pd.NA, index=prompts.index, dtype="Int64"))
    if "messages" not in responses:
        responses = responses.assign(messages=[chat.to_json(chat.assistant_turns(r)) for r in responses["response"]])
    if "rendered_prompt" not in responses:
        responses = responses.assign(rendered_prompt=pd.Series(None, index=responses.index, dtype=object))
    return prompts, responses


def _register_current(con: duckdb.DuckDBPyConnection, ranking_ids: Iterable[str]) -> None:
    """The `current_rankings` relation that SUPERSEDED_RANKINGS reads."""
    con.register("current_rankings", pd.DataFrame({"ranking_id": pd.Series(sorted(set(ranking_ids)), dtype=str)}))


# --- the snapshot's scope, as DVC sees it: <store>.scope.json ---


def scope_file(store_path: str | Path) -> Path:
    """The file dvc.yaml lists as store_comparisons' dependency: `${store.path}.scope.json`."""
    return Path(str(store_path) + ".scope.json")


def snapshot_scope(
    rankings: str,
    imports: Iterable[str],
    policies: Iterable[str],
    earlier_policies: Iterable[str],
    label_sources: Iterable[str] | None,
) -> dict:
    """A snapshot scope (rlhf.config.SnapshotScopeParams resolved against the rounds): `rankings`
    current | all; import names; the policies (content hashes) whose people's rankings count; the
    earlier rounds' policies, whose every ranking counts; the judges (None: every judge)."""
    return {
        "rankings": rankings,
        "imports": sorted(set(imports)),
        "policies": sorted(set(policies)),
        "earlier_policies": sorted(set(earlier_policies)),
        "label_sources": None if label_sources is None else sorted(set(label_sources)),
    }


def _scope_arguments(scope: dict) -> list:
    judges = scope["label_sources"]
    runs = [f"import-{name}" for name in scope["imports"]]
    return [scope["rankings"] == "all", runs, scope["policies"], scope["earlier_policies"], judges, judges]


def scope_fingerprint(con: duckdb.DuckDBPyConnection, scope: dict) -> dict:
    rows, digest = con.execute(SCOPE_DIGEST, _scope_arguments(scope)).fetchone()
    return {"scope": scope, "store_rows": int(rows), "digest": f"{int(digest):016x}"}


def recorded_scope(store_path: str | Path) -> dict | None:
    """The scope the last snapshot recorded; None before any (or in a file from elsewhere)."""
    try:
        return json.loads(scope_file(store_path).read_text()).get("scope")
    except (OSError, ValueError, AttributeError):
        return None


def write_scope_file(store_path: str | Path, fingerprint: dict) -> None:
    """Rewritten only when it changes (DVC hashes it); whole or not at all."""
    path = scope_file(store_path)
    text = json.dumps(fingerprint, indent=2, sort_keys=True) + "\n"
    if path.exists() and path.read_text() == text:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)
