"""docs/reference/store.md: every table and column of the feedback store, from the schema's own
DDL (rlhf/store/schema.py). The tables and types are read from a store the code creates; each
column's meaning is the `--` comment on its newest definition (a CREATE TABLE line or an ALTER
TABLE ... ADD COLUMN), each table's the `--` lines right above its newest CREATE TABLE. A table
or column without one stops the build."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import duckdb

from rlhf.store.schema import MIGRATIONS, SCHEMA_V1, SCHEMA_VERSION, migrate

CREATE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+) \(")
COLUMN = re.compile(r"^\s+(\w+) [A-Z]+[^-]*?(?:--\s*(.*))?$")
ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+) [^;]*;\s*(?:--\s*(.*))?$")


class MissingComment(Exception):
    """A table or column the schema does not describe."""


def schema_comments() -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """({table: description}, {(table, column): description}) from the DDL, version by version, so
    each entry is its newest definition's."""
    tables: dict[str, str] = {}
    columns: dict[tuple[str, str], str] = {}
    for ddl in [SCHEMA_V1, *(MIGRATIONS[v] for v in range(2, SCHEMA_VERSION + 1))]:
        table, above = None, []
        for line in ddl.splitlines():
            stripped = line.strip()
            if stripped.startswith("--"):
                above.append(stripped.removeprefix("--").strip())
                continue
            if created := CREATE.search(line):
                table = created.group(1)
                tables[table] = " ".join(above)
            elif added := ADD_COLUMN.search(line):
                columns[(added.group(1), added.group(2))] = (added.group(3) or "").strip()
            elif stripped.startswith(")"):
                table = None
            elif table and (column := COLUMN.match(line)):
                columns[(table, column.group(1))] = (column.group(2) or "").strip()
            above = []
    return tables, columns


def store_columns() -> dict[str, list[tuple[str, str]]]:
    """{table: [(column, type)]} of a store the code creates at SCHEMA_VERSION, in column order."""
    with tempfile.TemporaryDirectory() as scratch:
        con = duckdb.connect(str(Path(scratch) / "reference.duckdb"))
        migrate(con, "reference.duckdb")
        rows = con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE table_oid IN (SELECT table_oid FROM duckdb_tables() WHERE NOT internal) "
            "AND table_name <> 'schema_version' ORDER BY table_oid, column_index"
        ).fetchall()
        con.close()
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in rows:
        tables.setdefault(table, []).append((column, data_type))
    return tables


def render() -> str:
    table_docs, column_docs = schema_comments()
    missing = []
    body = []
    for table, columns in store_columns().items():
        if not table_docs.get(table):
            missing.append(table)
        body += [
            f"## `{table}`",
            "",
            table_docs.get(table, ""),
            "",
            "| column | type | meaning |",
            "| --- | --- | --- |",
        ]
        for column, data_type in columns:
            doc = column_docs.get((table, column), "")
            if not doc:
                missing.append(f"{table}.{column}")
            cell = doc.replace("|", "\\|")
            body.append(f"| `{column}` | {data_type} | {cell} |")
        body.append("")
    if missing:
        raise MissingComment("store tables/columns without a comment in rlhf/store/schema.py: " + ", ".join(missing))
    header = [
        "# Feedback store reference",
        "",
        f"The tables of `feedback.duckdb` at schema version {SCHEMA_VERSION}, generated from",
        "`rlhf/store/schema.py` (`make docs`): the types from a store the code creates, the meanings from",
        "the comments of the schema's DDL. Keys are content hashes and run ids, marked *key*: they are",
        "unique without an index, because every write runs alone under the store's lock and adds only rows",
        "whose key is not there yet. Older stores are migrated forward in place the first time the code",
        "opens them. How to read it: [the feedback store](../how-to/feedback-store.md).",
        "",
    ]
    return "\n".join(header + body)


if __name__ == "__main__":
    print(render())
