"""FeedbackStore: the store's one public class. Each method opens the file for one operation, a
reader or a writer (rlhf.store.connection), and calls one function of a concern module on it; the
SQL lives in those modules. The first operation brings the file to the current schema (once per
FeedbackStore, not once per call)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
from filelock import FileLock

from rlhf.errors import StoreError
from rlhf.store import annotation, ingest, reads, snapshot
from rlhf.store.connection import open_reader, open_writer
from rlhf.store.schema import SCHEMA_VERSION, migrate, refuse_newer, stored_version
from rlhf.store.scope import absent_sources, recorded_scope, scope_file, scope_fingerprint, write_scope_file

if TYPE_CHECKING:  # frames come in from callers and out of DuckDB's .df(), which loads pandas itself
    import pandas as pd


class FeedbackStore:
    """Opens `path` for one operation at a time; never holds it between calls. Writes queue under
    the store's file lock; reads take no lock and wait only while a write is open (connection.py)."""

    def __init__(self, path: str | Path, lock_timeout_s: float = 60.0, retries: int = 20, create: bool = True):
        """`create`: False for a reader, which refuses a missing store (StoreError) and creates nothing.
        `lock_timeout_s`: how long a write waits for the store's lock, and a read for the writes before
        it to end; `retries`: how often a write retries DuckDB's own lock."""
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout_s)
        self.retries = retries
        self.create = create
        self.lock_timeout_s = lock_timeout_s
        self.scope_file = scope_file(self.path)
        self.in_memory = str(path) == ":memory:"  # every operation opens a new, empty database
        self._schema_current = False

    # --- opening the file ---

    def _refuse_missing(self) -> None:
        if not self.create and not self.path.is_file():
            raise StoreError(f"{self.path}: no store here (nothing was created; check the path, or run the pipeline)")

    @contextlib.contextmanager
    def _writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection at the current schema (created or migrated on the first open)."""
        self._refuse_missing()
        check_schema = not self._schema_current or not self.path.is_file()  # a removed file starts over
        with open_writer(self.path, self.lock, self.retries) as con:
            if check_schema:
                migrate(con, self.path)
                self._schema_current = not self.in_memory
            yield con

    @contextlib.contextmanager
    def transaction(self, scope: dict | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """One all-or-nothing write: committed on success, rolled back on any error.

        Each commit brings the scope file (`scope_file`) up to date, under the same lock: what the
        recorded snapshot scope (or `scope`, the one a snapshot records now) would take from the store.
        """
        with self._writer() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                recorded = scope if scope is not None else recorded_scope(self.path)
                fingerprint = scope_fingerprint(con, recorded) if recorded is not None else None
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            if fingerprint is not None:
                write_scope_file(self.path, fingerprint)

    @contextlib.contextmanager
    def reader(self, check_schema: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection, without the writers' lock unless a write is open: then it waits
        for its turn at most `lock_timeout_s`, then StoreError naming the writer. A store not yet at this schema is migrated first, once;
        `check_schema` False reads the file as it is (`query`: any DuckDB file, a store or not)."""
        self._refuse_missing()
        if self.in_memory or not self.path.is_file():
            with self._writer() as con:  # nothing to read yet: create it (an in-memory store each time)
                yield con
            return
        with open_reader(self.path, self.lock, self.lock_timeout_s) as con:
            current = self._schema_current or not check_schema or self._check_version(con)
            if current:
                yield con
                return
        with self._writer():  # an older store: migrate it under the lock, then read
            pass
        with open_reader(self.path, self.lock, self.lock_timeout_s) as con:
            yield con

    def _check_version(self, con: duckdb.DuckDBPyConnection) -> bool:
        """Whether the file is at SCHEMA_VERSION (remembered); StoreError if it is newer."""
        version = stored_version(con)
        refuse_newer(self.path, version)
        self._schema_current = version == SCHEMA_VERSION
        return self._schema_current

    def schema_version(self) -> int:
        with self.reader() as con:
            return stored_version(con)

    # --- ingest and snapshot ---

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
            return ingest.ingest(con, run, prompts, responses, rankings, queue)

    def counts(self) -> dict[str, int]:
        with self.reader() as con:
            return ingest.counts(con)

    def snapshot_comparisons(
        self, out_dir: str | Path, current_ranking_ids: Iterable[str] = (), scope: dict | None = None
    ) -> int:
        """Write the labelled pairs, the prompts and the responses to `out_dir` as Parquet files in a
        fixed order; returns the number of pairs. `current_ranking_ids`: the rankings the stage is
        storing now, preferred over other versions of their judge (see snapshot.SUPERSEDED_RANKINGS).

        `scope` (see `snapshot_scope`): the current rankings plus what it names from the store; the
        snapshot's scope.json says which runs and imports it took, and the scope is recorded in the
        scope file for later writes to keep up to date. None: every ranking the store holds.
        The same store gives byte-identical files, so DVC sees no change and skips what follows.
        The directory appears whole or not at all: it is written beside its place, then renamed.
        """
        with snapshot.replacing(Path(out_dir)) as partial, self.transaction(scope) as con:
            return snapshot.write(con, partial, current_ranking_ids, scope)

    def absent_sources(self, scope: dict) -> list[str]:
        """What a scope names that the store does not hold: imports by name, earlier rounds by policy."""
        with self.reader() as con:
            return absent_sources(con, scope)

    def comparisons(self) -> pd.DataFrame:
        """Every labelled pair with its prompt and response texts, in a fixed order."""
        with self.reader() as con:
            return snapshot.comparisons(con)

    # --- thumbs up/down: one response judged alone (rlhf/store/binary.py) ---

    def add_binary_labels(
        self, labels: pd.DataFrame, source: str, run_id: str, test_fraction: float | None = None
    ) -> int:
        """Write binary labels at once; returns how many were new or changed (0 for the same labels again).

        `labels`: columns prompt and response (strings or chat messages), desirable (bool),
        annotator; optional response_id (a row of responses: it lends its policy checkpoint),
        reason, policy_checkpoint, item_id. `source`: page, deployed, import:<name>, ... One label
        per (prompt, response, source, annotator): a new one replaces the old. A prompt the store
        does not hold is split by a hash of its text at `test_fraction` (None: collect_prompts'
        default). A bad row is refused with InputError naming it, and nothing is written."""
        if test_fraction is None:
            from rlhf.config import CollectPromptsParams

            test_fraction = CollectPromptsParams.model_fields["test_fraction"].default
        from rlhf.store import binary  # pandas at its top: loaded only for binary labels

        with self.transaction() as con:
            return binary.add_binary_labels(con, labels, source, {"run_id": run_id, "stage": source}, test_fraction)

    def binary_labels(self, source: str | None = None) -> pd.DataFrame:
        """Every binary label (of one source, if named) with its texts and provenance, by label_id."""
        from rlhf.store import binary  # pandas at its top: loaded only for binary labels

        with self.reader() as con:
            return binary.binary_labels(con, source)

    def record_page_labels(self, submissions: list[tuple[str, str, dict]], run_id: str) -> list:
        """The ranking page's binary-mode journal rows, (annotator, item_id, body: response_id,
        desirable, reason), in one transaction: each a binary label (source page, the item's
        prompt and response from the store) and a ranked event of mode binary, so the queue counts
        it. Per row: 1, or the StoreError's text of one refused (an item that is not that one response)."""
        from rlhf.store import binary  # pandas at its top: loaded only for binary labels

        with self.transaction() as con:
            return binary.record_page_labels(con, submissions, run_id)

    def snapshot_binary_labels(self, path: str | Path, scope: dict | None = None) -> int:
        """Write the binary labels `scope` takes (snapshot_scope; None: every label) to the Parquet
        file `path` in TRL's unpaired preference format (prompt, completion, label; KTOTrainer reads
        it as is) plus messages, split and provenance; byte-identical for the same store and scope.
        Returns the number of labels."""
        from rlhf.store import binary  # pandas at its top: loaded only for binary labels

        with self.reader() as con:
            return binary.snapshot_binary_labels(con, Path(path), scope)

    # --- the human annotation queue (the ranking page is a thin shell over these) ---

    def enqueue(self, run: dict, items: pd.DataFrame) -> int:
        """Add items (item_id, prompt_id, response_ids JSON, reason) to the queue; returns how many were new."""
        with self.transaction() as con:
            return ingest.enqueue(con, run, items)

    def set_overlap(self, people: int | None) -> None:
        """How many people rank each queue item (None: everyone, as before). Kept until changed."""
        annotation.check_overlap(people)
        with self.transaction() as con:
            annotation.set_overlap(con, people)

    def overlap(self) -> int | None:
        with self.reader() as con:
            return annotation.overlap(con)

    def next_item(self, annotator: str, suggest: bool = False) -> dict | None:
        """The next item for this annotator: one still open (see set_overlap) that they have neither
        ranked nor skipped, the AI judge's closest call first (annotation.QUEUE_ORDER), with its texts and
        chat messages (the prompt's turns; each response's turns after the prompt). A row without messages
        (NULL) reads as one user turn, or one assistant turn, of its text. With `suggest`, the item
        carries the AI judge's ranking of its responses where one ranked them all."""
        with self.reader() as con:
            return annotation.next_item(con, annotator, suggest)

    def open_queue(self, limit: int = 5000) -> dict:
        """What the ranking page serves from while a stage holds the store (rlhf/annotation/journal.py):
        `items`, the first `limit` still open in next_item's order and shape (without suggestions),
        each with `people` (how many ranked it); `done`, the (annotator, item_id) pairs ranked or
        skipped; `overlap`; `complete`, False when `limit` cut the queue."""
        with self.reader() as con:
            return annotation.open_queue(con, limit)

    def waiting_items(self) -> int:
        """Queued items that still wait for people: fewer than `overlap` people ranked them, or
        (overlap unset) nobody ranked or skipped them yet."""
        with self.reader() as con:
            return annotation.waiting(con)

    def annotation_progress(self, annotator: str) -> dict[str, int]:
        """This annotator's progress, `done` of `total` (what they did plus what is still open to
        them), and the queue's: `queue_items`, of which `queue_waiting` still wait for people."""
        with self.reader() as con:
            return annotation.progress(con, annotator)

    def annotator_progress(self) -> pd.DataFrame:
        """Per annotator (every name with a token or an event): ranked, skipped, active and revoked tokens."""
        with self.reader() as con:
            return annotation.annotator_progress(con)

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
            return annotation.record_human_ranking(
                con, annotator, item_id, ranks, unsafe, run_id, from_suggestion, mode
            )

    def skip_item(self, annotator: str, item_id: str) -> None:
        with self.transaction() as con:
            annotation.skip_item(con, annotator, item_id)

    def record_page_submissions(self, submissions: list[tuple[str, str, str, dict]], run_id: str) -> list:
        """The ranking page's journal rows, (annotator, item_id, action, body) with action ranked (body:
        record_human_ranking's ranks, unsafe, from_suggestion, mode) or skipped, written in one transaction
        (one open of the file for the lot, not one each). Per row: the pairs of a ranking, None for a skip,
        or the StoreError's text of one refused. A row whose event is in the store already (written before
        a kill took the journal's mark) is not written again."""
        with self.transaction() as con:
            return annotation.record_page_submissions(con, submissions, run_id)

    # --- annotators' tokens: only their sha256 is stored (rlhf/annotation/annotators.py makes them) ---

    def add_token(self, annotator: str, token_sha256: str, source: str) -> bool:
        """Store a token's hash for `annotator`; False (and nothing written) if the hash is known
        already, revoked or not: a revoked token stays refused even if a tokens file still lists it."""
        with self.transaction() as con:
            return annotation.add_token(con, annotator, token_sha256, source)

    def token_annotator(self, token_sha256: str) -> tuple[str, bool] | None:
        """(annotator, revoked) of a token's hash; None for a token the store never held."""
        with self.reader() as con:
            return annotation.token_annotator(con, token_sha256)

    def active_tokens(self, annotator: str) -> int:
        with self.reader() as con:
            return annotation.active_tokens(con, annotator)

    def revoke_tokens(self, annotator: str) -> int:
        """Revoke every accepted token of `annotator`; returns how many were revoked."""
        with self.transaction() as con:
            return annotation.revoke_tokens(con, annotator)

    # --- reads for reports and people ---

    def human_ranks(self) -> pd.DataFrame:
        """Every person's rank of every response they ranked, as (item, response_id, annotator, rank);
        an item is a prompt and the set of responses ranked together (one queue item, or one
        imported ranking), so rankings of the same item by several people line up (agreement)."""
        with self.reader() as con:
            return reads.human_ranks(con)

    def pair_labels(self) -> pd.DataFrame:
        """Every labelled pair as (a, b, judge, judge_version, label): a < b are response ids; label
        +1 means a is better, -1 b, 0 a tie. Routed AI pairs are included: agreement needs them."""
        with self.reader() as con:
            return reads.pair_labels(con)

    def query(self, sql: str, params: list | None = None, external_access: bool = True) -> pd.DataFrame:
        """Read-only SQL. external_access=False (`rlhf store query`): no file or network outside the
        store either (COPY TO, ATTACH, INSTALL, LOAD, EXPORT, read_csv are refused), locked for the query.
        The file is read as it is: any DuckDB file, migrated or not."""
        with self.reader(check_schema=False) as con:
            return reads.query(con, sql, params, external_access)
