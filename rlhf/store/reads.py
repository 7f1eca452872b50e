"""Reads for reports and people: agreement's labels, ad-hoc SQL. Each runs on a read-only
connection (FeedbackStore opens one without the writers' lock), or on DuckDB in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import duckdb

from rlhf.store.schema import HUMAN_JUDGE

if TYPE_CHECKING:  # the frames come from DuckDB's .df(), which loads pandas when a read needs it
    import pandas as pd

# What a caller catches for a query that DuckDB refused (a syntax error, a missing table or file).
QueryError = duckdb.Error


def human_ranks(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """FeedbackStore.human_ranks on `con`."""
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


def pair_labels(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """FeedbackStore.pair_labels on `con`."""
    return con.execute(
        """SELECT least(chosen_id, rejected_id) AS a, greatest(chosen_id, rejected_id) AS b,
                  judge, judge_version,
                  CASE WHEN tie THEN 0 WHEN chosen_id < rejected_id THEN 1 ELSE -1 END AS label
           FROM comparisons ORDER BY a, b, judge, judge_version"""
    ).df()


def query(con: duckdb.DuckDBPyConnection, sql: str, params: list | None, external_access: bool) -> pd.DataFrame:
    """FeedbackStore.query on `con`."""
    if not external_access:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    result = con.execute(sql, params or [])
    if result is None:  # DuckDB's answer to a text with no statement in it (empty, a comment)
        raise duckdb.InvalidInputException("no statement to run (the SQL is empty or only a comment)")
    return result.df()


def query_in_memory(sql: str) -> pd.DataFrame:
    """A query over no store: DuckDB in memory, which reads Parquet, CSV or JSON files by name
    (the `sql` prompt source without a database). QueryError if DuckDB refuses it."""
    with duckdb.connect() as con:
        return con.execute(sql).df()
