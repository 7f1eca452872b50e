"""The store under real concurrent processes, and a writer killed with SIGKILL mid-batch."""

import json
import multiprocessing
import signal
import subprocess
import sys
import time

import pandas as pd

from rlhf.ranking import QUEUE_COLUMNS, RANKING_COLUMNS, queue_item
from rlhf.store import FeedbackStore
from tests.support.store_data import K, frames

ANNOTATORS, ITEMS = 8, 6
PIPELINE_BATCHES, PROMPTS_PER_BATCH = 4, 25


def annotate_everything(path: str, name: str) -> None:
    store = FeedbackStore(path, lock_timeout_s=300)
    while (item := store.next_item(name)) is not None:
        ids = [r["response_id"] for r in item["responses"]]
        store.record_human_ranking(name, item["item_id"], {rid: n + 1 for n, rid in enumerate(ids)}, [], f"run-{name}")


def pipeline_writer(path: str) -> None:
    store = FeedbackStore(path, lock_timeout_s=300)
    for batch in range(PIPELINE_BATCHES):
        store.ingest(
            {"run_id": f"pipeline-{batch}", "stage": "store_comparisons"}, *frames(f"b{batch}", PROMPTS_PER_BATCH)
        )


def test_pipeline_writer_and_eight_annotators_at_once_every_write_lands_once(tmp_path):
    path = str(tmp_path / "feedback.duckdb")
    store = FeedbackStore(path)
    prompts, responses, _ = frames("q", ITEMS)
    queue = pd.DataFrame(
        [queue_item(f"qp{i}", [f"qp{i}r{j}" for j in range(K)], "human") for i in range(ITEMS)], columns=QUEUE_COLUMNS
    )
    store.ingest({"run_id": "setup", "stage": "test"}, prompts, responses, pd.DataFrame(columns=RANKING_COLUMNS), queue)

    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=pipeline_writer, args=(path,))]
    workers += [context.Process(target=annotate_everything, args=(path, f"annotator-{n}")) for n in range(ANNOTATORS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
        assert worker.exitcode == 0

    counts = store.counts()
    pairs_per_ranking = K * (K - 1) // 2
    human_rankings = ANNOTATORS * ITEMS
    pipeline_rankings = PIPELINE_BATCHES * PROMPTS_PER_BATCH
    assert counts["rankings"] == (human_rankings + pipeline_rankings) * K
    assert counts["comparisons"] == (human_rankings + pipeline_rankings) * pairs_per_ranking
    assert counts["annotators"] == ANNOTATORS
    events = store.query("SELECT annotator, count(*) AS n FROM annotation_events GROUP BY 1")
    assert sorted(events["n"]) == [ITEMS] * ANNOTATORS  # each person ranked each item exactly once
    duplicates = store.query(
        "SELECT count(*) AS n FROM (SELECT ranking_id, response_id FROM rankings GROUP BY 1, 2 HAVING count(*) > 1)"
    )
    assert duplicates["n"][0] == 0


WRITER = """
import sys
sys.path.insert(0, {root!r})
from tests.support.store_data import frames
from rlhf.store import FeedbackStore

store = FeedbackStore({path!r})
batch = frames("big", {prompts})
print("writing", flush=True)
print(store.ingest({{"run_id": "big-batch", "stage": "test"}}, *batch), flush=True)
"""


def test_a_writer_killed_mid_batch_leaves_the_store_as_before_and_the_next_run_completes(tmp_path, project_root):
    path = tmp_path / "feedback.duckdb"
    store = FeedbackStore(path)
    store.ingest({"run_id": "first", "stage": "test"}, *frames("small", 5))
    before = store.counts()
    script = WRITER.format(root=str(project_root), path=str(path), prompts=200_000)

    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    time.sleep(0.8)  # inside the transaction: frames are built, the inserts are running
    assert writer.poll() is None, "the batch finished before it could be killed; make it bigger"
    writer.send_signal(signal.SIGKILL)
    writer.wait()

    assert store.counts() == before  # all or nothing: the killed batch left no row
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    added = json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert added["comparisons"] == 200_000 * K * (K - 1) // 2 and added["rankings"] == 200_000 * K
    assert store.counts()["comparisons"] == before["comparisons"] + added["comparisons"]
