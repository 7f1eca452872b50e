"""The store's tables: each version's DDL, the migrations between them, and the one check that runs
when a FeedbackStore first opens its file. The `--` comments are the store's reference
(docs/reference/store.md, written by tools/reference_store.py): on a column's newest definition its
meaning, in the lines right above a table's newest CREATE TABLE the table's."""

from __future__ import annotations

from pathlib import Path

import duckdb

from rlhf.errors import StoreError

SCHEMA_VERSION = 7  # the newest version this code reads and writes; MIGRATIONS lead up to it

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
# runs.dvc_rev and comparisons.weight. Comments here are the column documentation (docs/reference/store.md, tools/reference_store.py).
TABLES_V2 = """
-- One row per pipeline run (or import, or annotation session) that wrote to the store: where every row came from.
CREATE TABLE runs (
    run_id VARCHAR NOT NULL,          -- key. Pipeline run that first wrote rows (Prefect flow run id or local-...)
    stage VARCHAR NOT NULL,           -- the stage (or import, annotate) that opened the run
    git_rev VARCHAR,                  -- commit of the project when the run wrote
    dvc_rev VARCHAR,                  -- sha256 of dvc.lock when the run wrote: its DVC revision
    created_at TIMESTAMP NOT NULL     -- when the run first wrote
);
-- Every prompt collected, sampled from or imported, once.
CREATE TABLE prompts (
    prompt_id VARCHAR NOT NULL,       -- key. sha256 of the prompt text
    prompt VARCHAR NOT NULL,          -- the prompt as text (a transcript for several turns)
    topic VARCHAR,                    -- optional: what an on-topic response must mention
    split VARCHAR NOT NULL,           -- train or test, by a hash of the text
    source VARCHAR NOT NULL,          -- where the prompt came from (demo, a file path, import:<file>)
    run_id VARCHAR NOT NULL           -- the run that wrote the row (runs.run_id)
);
-- Every response a policy sampled (or an import brought), once.
CREATE TABLE responses (
    response_id VARCHAR NOT NULL,     -- key. sha256 of (prompt_id, policy_checkpoint, sample_index, text)
    prompt_id VARCHAR NOT NULL,       -- the prompt it answers (prompts.prompt_id)
    sample_index INTEGER NOT NULL,    -- which of the K samples
    response VARCHAR NOT NULL,        -- the response as text
    policy_checkpoint VARCHAR NOT NULL,  -- content hash of the policy that wrote it (import:<file> if imported)
    sampling VARCHAR NOT NULL,        -- JSON of the sampling parameters
    run_id VARCHAR NOT NULL           -- the run that wrote the row (runs.run_id)
);
-- One row per response per ranking: a judge's (or a person's) order of one prompt's responses.
CREATE TABLE rankings (
    ranking_id VARCHAR NOT NULL,      -- key with response_id. sha256 of (prompt, judge, version, responses)
    response_id VARCHAR NOT NULL,     -- the ranked response (responses.response_id)
    prompt_id VARCHAR NOT NULL,       -- the prompt of the ranked responses
    rank INTEGER NOT NULL,            -- 1 is best; equal ranks are ties
    score DOUBLE NOT NULL,            -- the judge's score (people: minus the rank)
    reasons VARCHAR NOT NULL,         -- JSON: why the judge scored it so (people: unsafe flag)
    judge VARCHAR NOT NULL,           -- rules, llm, openai, reward_model, pairwise, human
    judge_version VARCHAR NOT NULL,   -- version and model of an AI judge; the annotator for human
    run_id VARCHAR NOT NULL           -- the run that wrote the row (runs.run_id)
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
-- Items waiting for people on the ranking page: a prompt and the responses to rank.
CREATE TABLE IF NOT EXISTS annotation_queue (
    item_id VARCHAR NOT NULL,         -- key. sha256 of (prompt_id, the response ids in order)
    prompt_id VARCHAR NOT NULL,       -- the prompt whose responses are ranked
    response_ids VARCHAR NOT NULL,    -- JSON list: the responses a person ranks, in display order
    reason VARCHAR NOT NULL,          -- human (every prompt) or low_confidence (an AI judge was unsure)
    run_id VARCHAR NOT NULL,          -- the run that queued it
    created_at TIMESTAMP NOT NULL     -- when it was queued
);
-- What people did on the ranking page, one row per action: the audit trail of human labels.
CREATE TABLE IF NOT EXISTS annotation_events (
    item_id VARCHAR NOT NULL,         -- the queue item (annotation_queue.item_id)
    annotator VARCHAR NOT NULL,       -- who acted (annotators.annotator)
    action VARCHAR NOT NULL,          -- ranked, skipped or flagged_unsafe
    response_id VARCHAR,              -- the flagged response (flagged_unsafe only)
    created_at TIMESTAMP NOT NULL     -- when
);
-- The people (and imported raters) whose labels the store holds.
CREATE TABLE annotators (
    annotator VARCHAR NOT NULL,       -- key. The name a person ranks under (the ranking page, an import)
    source VARCHAR NOT NULL,          -- where the name first came from: annotate or import
    first_seen TIMESTAMP NOT NULL     -- when the name was first seen
);
"""

COMPARISONS_V3 = """
-- The pairs every ranking implies: a ranking of K responses gives C(K,2) of them, each weighted 1 / C(K,2).
CREATE TABLE comparisons (
    ranking_id VARCHAR NOT NULL,      -- key with chosen_id and rejected_id
    chosen_id VARCHAR NOT NULL,       -- the better response (for a tie: the smaller id)
    rejected_id VARCHAR NOT NULL,     -- the worse response (for a tie: the larger id)
    prompt_id VARCHAR NOT NULL,       -- the prompt both responses answer
    margin DOUBLE NOT NULL,           -- score(chosen) - score(rejected); 0 for a tie
    tie BOOLEAN NOT NULL,             -- true when the ranking put both at the same rank
    run_id VARCHAR NOT NULL,          -- the run that wrote the row (runs.run_id)
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
-- The ranking page's sign-in tokens, hashed: `rlhf annotate add-annotator NAME` prints a token once; `rlhf annotate revoke NAME` revokes them.
CREATE TABLE annotator_tokens (
    token_sha256 VARCHAR NOT NULL,    -- key. sha256 (hex) of the token; the token itself is never stored
    annotator VARCHAR NOT NULL,       -- the name the token signs in as
    source VARCHAR NOT NULL,          -- add-annotator, or tokens-file:<path> (a token taken from a JSON file)
    created_at TIMESTAMP NOT NULL,    -- when the token was issued or taken
    revoked_at TIMESTAMP              -- NULL while the token is accepted; a revoked token stays refused
);
-- Store-wide annotation settings (`rlhf annotate serve --overlap N`).
CREATE TABLE annotation_settings (
    name VARCHAR NOT NULL,            -- key. overlap: how many people rank each queue item
    value VARCHAR NOT NULL            -- the setting's value, as text
);
ALTER TABLE annotation_events ADD COLUMN from_suggestion BOOLEAN;  -- ranked: the order started from the AI judge's
ALTER TABLE annotation_events ADD COLUMN mode VARCHAR;  -- ranked: rank (the list), pairwise (two at a time) or binary (one response's thumbs up or down, in binary_labels)
UPDATE annotation_events SET from_suggestion = false, mode = 'rank' WHERE action = 'ranked';
""",
    # Version 6: thumbs up/down (rlhf/store/binary.py). One response judged alone, desirable or not:
    # the ranking page's binary mode, feedback on a deployed policy, imported sets. Texts are kept
    # in the row (a deployed response is in no other table); KTO and the binary reward model train
    # on them.
    6: """
-- Thumbs up/down: one response judged alone, desirable or not, with who judged it and where (the ranking page's binary mode, a deployed policy's users, imports).
CREATE TABLE binary_labels (
    label_id VARCHAR NOT NULL,        -- key. sha256 of (prompt_id, response_id or response text, source, annotator): a person's new label of a response replaces their old one
    prompt_id VARCHAR NOT NULL,       -- sha256 of the prompt (as prompts.prompt_id), whether or not the prompts table holds it
    prompt VARCHAR NOT NULL,          -- the prompt as text (a transcript for several turns)
    prompt_messages VARCHAR NOT NULL, -- JSON chat messages of the prompt (rlhf.chat)
    response_id VARCHAR,              -- the labelled row of responses; NULL for a response no stage sampled (deployed, imported)
    response VARCHAR NOT NULL,        -- the labelled response as text
    response_messages VARCHAR NOT NULL,  -- JSON chat messages of the response: the turns after the prompt
    desirable BOOLEAN NOT NULL,       -- thumbs up (true) or down (false)
    reason VARCHAR,                   -- why, in the annotator's words (optional)
    source VARCHAR NOT NULL,          -- page (the ranking page's binary mode), deployed (a served policy's users), import:<name>, ...
    annotator VARCHAR NOT NULL,       -- who labelled it: a person's name on the page, a user of a deployment, an import's rater
    policy_checkpoint VARCHAR,        -- content hash of the policy that wrote the response, where known
    item_id VARCHAR,                  -- the annotation queue item it answers (page only)
    split VARCHAR NOT NULL,           -- train or test: the prompt's split where the store holds it, else by a hash of the prompt
    run_id VARCHAR NOT NULL,          -- the run that wrote (or last changed) the label
    created_at TIMESTAMP NOT NULL     -- when the label was written or last changed
);
""",
    # Version 7: a deployed policy's exchanges and the feedback on them (rlhf/serving,
    # rlhf/store/exchanges.py). Each exchange is stored before the client gets its answer; an edited
    # better answer or a choice between two answers shown side by side also becomes a ranking (judge
    # deployed) in the import set `deployed`, which store.snapshot.imports takes like any other.
    7: """
-- A deployed policy's exchanges (`rlhf serve policy`): the request, the answers shown, and the checkpoint and sampling that wrote them.
CREATE TABLE exchanges (
    exchange_id VARCHAR NOT NULL,     -- key. The id the client got (the chat completion's `id`)
    client VARCHAR NOT NULL,          -- who asked: the name their token signs in as
    messages VARCHAR NOT NULL,        -- JSON chat messages of the request (rlhf.chat)
    answers VARCHAR NOT NULL,         -- JSON list of the answers shown (two: side by side, for a choice)
    model VARCHAR NOT NULL,           -- the model name the answer carried
    policy_checkpoint VARCHAR NOT NULL,  -- content hash of the served checkpoint, or upstream:<url>#<model>
    sampling VARCHAR NOT NULL,        -- JSON of the sampling parameters (temperature, top_p, max_tokens, n, ...)
    rendered_prompt VARCHAR,          -- the text the policy continued (its chat template's); NULL behind an upstream
    created_at TIMESTAMP NOT NULL     -- when the exchange was stored (before the client got its answer)
);
-- Feedback on an exchange: thumbs, a rating, an edited better answer or a choice between two answers.
CREATE TABLE exchange_feedback (
    exchange_id VARCHAR NOT NULL,     -- key with kind and answer (a choice: with kind alone)
    kind VARCHAR NOT NULL,            -- thumbs, rating, edit or choice
    answer INTEGER NOT NULL,          -- the answer it is about (0; 1 for the second of two); a choice: the chosen one
    client VARCHAR NOT NULL,          -- who gave it: the exchange's own client
    thumbs_up BOOLEAN,                -- thumbs: up (true) or down (false)
    rating INTEGER,                   -- rating: 1 (worst) to 5 (best)
    reason VARCHAR,                   -- thumbs, rating: why, in the client's words (optional)
    edited VARCHAR,                   -- edit: the better answer the client wrote
    ranking_id VARCHAR,               -- edit, choice: the ranking (judge deployed) its preferred pair became
    created_at TIMESTAMP NOT NULL     -- when the feedback was stored
);
""",
}

HUMAN_JUDGE = "human"

# annotation_events' columns, named: version 5 added two after created_at.
EVENT_COLUMNS = "item_id, annotator, action, response_id, created_at, from_suggestion, mode"


def stored_version(con: duckdb.DuckDBPyConnection) -> int:
    """The file's schema version; 0 for an empty file (no schema_version table yet). Results are
    fetched whole: DuckDB 2.0 refuses `register` on a connection with a result left unfinished."""
    tables = con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name = 'schema_version'").fetchall()
    return (con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0] or 0) if tables else 0


def refuse_newer(path: str | Path, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path}: schema version {version} is newer than this code reads ({SCHEMA_VERSION}); upgrade the project"
        )


def migrate(con: duckdb.DuckDBPyConnection, path: str | Path) -> None:
    """Bring the file to SCHEMA_VERSION: version 1 into an empty file, then each migration in turn,
    all in one transaction, so a store is at one version or the next, never between."""
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = con.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0
        refuse_newer(path, version)
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
