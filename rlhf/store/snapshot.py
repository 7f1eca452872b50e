"""Which pairs are labels, and the snapshot of them that training reads: three Parquet files (pairs,
prompts, responses) in a fixed order, byte-identical for the same store and scope, so DVC skips
what follows when nothing changed. rlhf/snapshot.py reads a snapshot back."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from rlhf.store.scope import SCOPE_SOURCES, STORE_SIDE_RANKINGS, scope_arguments

if TYPE_CHECKING:
    import pandas as pd

# An AI judge's version names its configuration (model, principles, unsafe words), so a changed
# judge that ranks the same responses again writes a new ranking beside the old one. One ranking
# of a (judge, prompt, response set) counts: the one in the rankings file being stored now (the
# `current_rankings` relation: a judge changed back and forth counts as it is now), else the newest
# run's. The others stay in the store as history. People are never superseded: each annotator's
# ranking is a label of its own. Only (judge, prompt) groups ranked under two or more versions are
# examined, and only for judges with two or more versions at all: a store with one version per judge
# pays one aggregate over a handful of groups (a quarter of the per-prompt one's time at 1M pairs).
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
          SEMI JOIN (SELECT judge, prompt_id FROM rankings
                     WHERE judge IN (SELECT judge FROM rankings WHERE judge <> 'human'
                                     GROUP BY judge HAVING count(DISTINCT judge_version) > 1)
                     GROUP BY judge, prompt_id HAVING count(DISTINCT judge_version) > 1) revised
            ON revised.judge = r.judge AND revised.prompt_id = r.prompt_id
          LEFT JOIN runs u ON u.run_id = r.run_id
          GROUP BY r.ranking_id, r.judge, r.prompt_id))
WHERE preferred > 1
"""

# The pairs that are labels. An AI label of a pair that hybrid routing sent to people is not a
# label: the people's is. Such queue items hold the pair's two ids in order. `superseded` is the
# temp table of SUPERSEDED_RANKINGS (note_superseded), which the snapshot reads twice.
LABELLED_PAIRS = """
SELECT c.* FROM comparisons c
ANTI JOIN (SELECT response_ids->>'$[0]' AS low, response_ids->>'$[1]' AS high FROM annotation_queue
           WHERE reason = 'low_confidence' AND json_array_length(response_ids) = 2) routed
  ON c.judge <> 'human'
 AND routed.low = least(c.chosen_id, c.rejected_id) AND routed.high = greatest(c.chosen_id, c.rejected_id)
ANTI JOIN superseded ON superseded.ranking_id = c.ranking_id
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
# `{rankings_in_scope}`: the ranking rows the snapshot takes (see IN_SCOPE).
UNSAFE_LABELS = """
SELECT response_id, bool_or(reasons LIKE '%"unsafe": true%') AS unsafe
FROM {rankings_in_scope} ANTI JOIN superseded USING (ranking_id)
WHERE reasons LIKE '%"unsafe": %' GROUP BY response_id
"""
# The prompt and response of every ranking row in scope, kept as the temp table `scoped`: the
# prompts and the responses file both select by it.
SCOPED = "SELECT prompt_id, response_id FROM rankings WHERE ranking_id IN (SELECT ranking_id FROM in_scope)"
# Each file's query reads the rankings in scope through these relations: with a scope, the temp
# tables `in_scope` (ranking ids) and `scoped`; with every ranking in scope, the rankings table
# itself, which saves building both (a tenth of a 1M-pair snapshot). Every labelled pair comes
# from a ranking, so then the pairs need no filter at all.
IN_SCOPE = {
    "pairs_in_scope": "WHERE ranking_id IN (SELECT ranking_id FROM in_scope)",
    "rankings_in_scope": "(SELECT * FROM rankings WHERE ranking_id IN (SELECT ranking_id FROM in_scope))",
    "scoped": "scoped",
}
EVERY_RANKING = {"pairs_in_scope": "", "rankings_in_scope": "rankings", "scoped": "rankings"}

# The snapshot is three files, each row once: the labelled pairs of the rankings in scope, and their
# prompts and responses (with a scope, a fourth: scope.json, what it took).
# Texts are not repeated per pair (a response is in K - 1 pairs): the files stay small and a
# 1M-pair snapshot takes about a second on 2 cores. `rlhf.snapshot.read_comparisons` joins them back. Each file
# has its own COPY options: ids and texts that are each one row's own gain nothing from Parquet's
# dictionary encoding, and trying it costs a tenth of the responses file's write.
SNAPSHOT_FILES = {
    "pairs": (
        f"""SELECT ranking_id, prompt_id, chosen_id, rejected_id, margin, tie, weight, judge, judge_version
            FROM ({MERGED_PAIRS}) {{pairs_in_scope}}
            ORDER BY ranking_id, chosen_id, rejected_id""",
        "FORMAT parquet, DICTIONARY_SIZE_LIMIT 1",
    ),
    "prompts": (
        """SELECT prompt_id, prompt, messages, topic, split FROM prompts
            WHERE prompt_id IN (SELECT prompt_id FROM {scoped}) ORDER BY prompt_id""",
        "FORMAT parquet",
    ),
    # unsafe: the harmlessness label (Safe RLHF's cost model): true if any ranking of the response
    # flagged it, false if rankings say and none did, NULL if no ranking carries the label.
    "responses": (
        f"""SELECT r.response_id, r.prompt_id, r.response, r.messages, r.policy_checkpoint, s.unsafe
            FROM responses r LEFT JOIN ({UNSAFE_LABELS}) s USING (response_id)
            WHERE response_id IN (SELECT response_id FROM {{scoped}}) ORDER BY response_id""",
        "FORMAT parquet, DICTIONARY_SIZE_LIMIT 1",
    ),
}
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


def register_current(con: duckdb.DuckDBPyConnection, ranking_ids: Iterable[str]) -> None:
    """The temp table `current_rankings` that SUPERSEDED_RANKINGS reads, each id once. DuckDB reads
    the ids in place as a pandas column (the stage's rankings file has one per response: 666k at 1M
    pairs, where Python's sorted(set()) took 0.5 s) and drops the repeats itself."""
    import pandas as pd  # loaded already where ids are given: the stage read them with it

    given = ranking_ids if isinstance(ranking_ids, pd.Series) else pd.Series(list(ranking_ids), dtype=object)
    con.register("given_rankings", pd.DataFrame({"ranking_id": given}))
    con.execute(
        "CREATE OR REPLACE TEMP TABLE current_rankings AS "
        "SELECT DISTINCT CAST(ranking_id AS VARCHAR) AS ranking_id FROM given_rankings"
    )
    con.unregister("given_rankings")


def note_superseded(con: duckdb.DuckDBPyConnection, current_ranking_ids: Iterable[str]) -> None:
    """The temp table `superseded` (SUPERSEDED_RANKINGS) with the rankings stored now preferred."""
    register_current(con, current_ranking_ids)
    con.execute(f"CREATE OR REPLACE TEMP TABLE superseded AS {SUPERSEDED_RANKINGS}")


def comparisons(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """Every labelled pair with its prompt and response texts, in the snapshot's order."""
    note_superseded(con, ())
    return con.execute(COMPARISONS_QUERY).df()


@contextlib.contextmanager
def replacing(out_dir: Path) -> Iterator[Path]:
    """A directory to write beside `out_dir`, renamed to it once the block succeeds: the snapshot
    appears whole or not at all (a crash between removing the old one and the rename leaves none,
    and the stage runs again)."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    if out_dir.is_dir():
        shutil.rmtree(out_dir)
    elif out_dir.exists():
        out_dir.unlink()  # a single-file snapshot of an older version
    partial.rename(out_dir)


def write(con: duckdb.DuckDBPyConnection, out_dir: Path, current_ranking_ids: Iterable[str], scope: dict | None) -> int:
    """Write the snapshot's files into `out_dir` (see FeedbackStore.snapshot_comparisons); the number of pairs."""
    note_superseded(con, current_ranking_ids)
    if scope is not None:
        judges = scope["label_sources"]
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE in_scope AS
                SELECT ranking_id FROM (SELECT ranking_id FROM current_rankings UNION {STORE_SIDE_RANKINGS})
                WHERE CAST(? AS VARCHAR[]) IS NULL OR ranking_id IN
                      (SELECT ranking_id FROM rankings WHERE list_contains(CAST(? AS VARCHAR[]), judge))""",
            scope_arguments(scope) + [judges, judges],
        )
        con.execute(f"CREATE OR REPLACE TEMP TABLE scoped AS {SCOPED}")
    relations = EVERY_RANKING if scope is None else IN_SCOPE
    for name, (query, options) in SNAPSHOT_FILES.items():
        target = str(out_dir / f"{name}.parquet").replace("'", "''")  # COPY binds no target
        for placeholder, relation in relations.items():
            query = query.replace(f"{{{placeholder}}}", relation)
        con.execute(f"COPY ({query}) TO '{target}' ({options})")
    rows = con.execute("SELECT count(*) FROM read_parquet(?)", [str(out_dir / "pairs.parquet")]).fetchone()[0]
    if scope is not None:
        sources = con.execute(SCOPE_SOURCES)
        columns = [column[0] for column in sources.description]
        record = {"scope": scope, "taken": [dict(zip(columns, row, strict=True)) for row in sources.fetchall()]}
        (out_dir / "scope.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return rows
