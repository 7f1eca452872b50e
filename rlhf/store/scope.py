"""The snapshot's scope, as DVC sees it: which rankings and thumbs up/down a snapshot takes from the
store beyond this configuration's own, and the scope file `<store>.scope.json` (a dependency of
store_comparisons) that every write keeps up to date with a digest of those rows."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import duckdb

# The store's side of a snapshot scope (rlhf.config.SnapshotScopeParams; `snapshot_scope`): the rankings
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

# The binary labels (thumbs up/down, rlhf.store.binary) a scope takes. Every one is a person's (a
# page's annotator, a deployment's user, an import's rater), so the scope's label_sources keep them
# where they name `human`. Parameters: binary_scope_arguments(scope).
BINARY_LABELS_IN_SCOPE = """
SELECT * FROM binary_labels
WHERE (CAST(? AS BOOLEAN)
       OR list_contains(CAST(? AS VARCHAR[]), source)
       OR list_contains(CAST(? AS VARCHAR[]), policy_checkpoint)
       OR list_contains(CAST(? AS VARCHAR[]), policy_checkpoint))
  AND (CAST(? AS VARCHAR[]) IS NULL OR list_contains(CAST(? AS VARCHAR[]), 'human'))
"""

# What DVC sees of those labels: a count and an order-free digest (a new label, a turned thumb or
# a new reason changes it), so a thumb given after the last snapshot makes store_comparisons run.
BINARY_SCOPE_DIGEST = f"""
SELECT count(*), coalesce(bit_xor(hash(label_id, desirable, reason)), 0) FROM ({BINARY_LABELS_IN_SCOPE})
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


def _arguments(scope: dict, imports: list[str]) -> list:
    """The parameters both scope queries take: everything?, the imports (as each table names
    them), this round's policies, the earlier rounds' policies, the judges (twice)."""
    judges = scope["label_sources"]
    return [scope["rankings"] == "all", imports, scope["policies"], scope["earlier_policies"], judges, judges]


def scope_arguments(scope: dict) -> list:
    """STORE_SIDE_RANKINGS' parameters for `scope`: an import's rankings are those of its run."""
    return _arguments(scope, [f"import-{name}" for name in scope["imports"]])


def binary_scope_arguments(scope: dict) -> list:
    """BINARY_LABELS_IN_SCOPE's parameters for `scope`. An import set's labels are the source
    import:<name>; a deployed policy's thumbs are the source `deployed`, which a scope names as
    its pairs' import set (rlhf.store.exchanges)."""
    names = scope["imports"]
    return _arguments(scope, [f"import:{name}" for name in names] + [n for n in names if n == "deployed"])


def scope_fingerprint(con: duckdb.DuckDBPyConnection, scope: dict) -> dict:
    """What the scope file records: the scope, and the count and digest of the rankings and of
    the binary labels it takes from the store."""
    rows, digest = con.execute(SCOPE_DIGEST, scope_arguments(scope)).fetchone()
    labels, label_digest = con.execute(BINARY_SCOPE_DIGEST, binary_scope_arguments(scope)).fetchone()
    return {
        "scope": scope,
        "store_rows": int(rows),
        "digest": f"{int(digest):016x}",
        "binary_labels": int(labels),
        "binary_digest": f"{int(label_digest):016x}",
    }


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


def absent_sources(con: duckdb.DuckDBPyConnection, scope: dict) -> list[str]:
    """What a scope names that the store does not hold: imports by name, earlier rounds by policy."""
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
