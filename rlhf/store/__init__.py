"""The DuckDB feedback store: every prompt, response, ranking and comparison, with provenance.

All SQL of the project lives in this package, one module per concern:

- `schema`: the tables of each version and the migrations, run once when a FeedbackStore first
  opens its file;
- `connection`: opening the file, a writer under the cross-process lock or a reader without it;
- `ingest`: a stage's rows and the pairs they imply;
- `snapshot` and `scope`: which pairs are labels, the Parquet snapshot training reads, and what DVC
  sees of the store (`<store>.scope.json`);
- `annotation`: the queue people rank from, their rankings and skips, overlap, tokens;
- `binary`: thumbs up/down, one response judged alone, and their snapshot (TRL's unpaired format);
- `reads`: agreement's labels and ad-hoc SQL;
- `feedback_store`: FeedbackStore, whose methods each open the file once and call one of the above.

The concurrency rule (docs/architecture.md): no process keeps the file open between operations;
each write is one short transaction under a cross-process file lock, retried while another
process (the DuckDB CLI, say) holds DuckDB's own lock. Reads open the file read-only, without that
lock unless a write is open (then they take their turn between writes). Rows are keyed by content
hashes, so writing the same rows twice adds nothing.
"""

from rlhf.store.feedback_store import FeedbackStore
from rlhf.store.ingest import with_messages
from rlhf.store.reads import QueryError, query_in_memory
from rlhf.store.schema import EVENT_COLUMNS, HUMAN_JUDGE, MIGRATIONS, SCHEMA_V1, SCHEMA_VERSION
from rlhf.store.scope import recorded_scope, scope_file, scope_fingerprint, snapshot_scope, write_scope_file

__all__ = [
    "EVENT_COLUMNS",
    "HUMAN_JUDGE",
    "MIGRATIONS",
    "SCHEMA_V1",
    "SCHEMA_VERSION",
    "FeedbackStore",
    "QueryError",
    "query_in_memory",
    "recorded_scope",
    "scope_file",
    "scope_fingerprint",
    "snapshot_scope",
    "with_messages",
    "write_scope_file",
]
