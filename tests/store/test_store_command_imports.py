"""`rlhf store` commands that need no DataFrame answer without loading pandas or model code: the
store package imports pandas only where it builds or reads a frame (pandas is a third of a second
of a command's start on this machine; torch and transformers are seconds)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.store import FeedbackStore
from tests.store.test_snapshot_scope import frames

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("pandas", "torch", "transformers", "trl")


def run_command_in_fresh_python(argv: list[str]) -> tuple[int, list[str]]:
    """rlhf.cli.main(argv) in a new interpreter: its exit status and the HEAVY modules it loaded."""
    probe = (
        "import json, sys\nfrom rlhf.cli import main\n"
        f"status = main({argv!r})\n"
        f"print(json.dumps([status, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=100, check=True
    )
    status, loaded = json.loads(result.stdout.strip().splitlines()[-1])
    return status, loaded


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "feedback.duckdb"
    FeedbackStore(path).ingest({"run_id": "run-1", "stage": "store_comparisons"}, *frames("k3", "sft", 3))
    return path


@pytest.mark.parametrize(
    "argv, status",
    [
        (["store", "stats"], 0),
        (["store", "query", "SELEC 1"], 2),  # DuckDB refuses it before any frame is made
        (["store", "query", "SELECT * FROM no_such_table"], 2),
        (["store", "query", ""], 2),  # no statement at all
        (["store", "query", "-- a comment"], 2),
    ],
)
def test_a_store_command_that_makes_no_frame_loads_no_pandas(store_path, argv, status):
    assert run_command_in_fresh_python([*argv, "--store", str(store_path)]) == (status, [])


def test_a_missing_store_is_refused_without_loading_pandas(tmp_path):
    for action in (["stats"], ["query", "SELECT 1"], ["agreement"], ["export", str(tmp_path / "x"), "--format", "csv"]):
        argv = ["store", *action, "--store", str(tmp_path / "none.duckdb")]
        assert run_command_in_fresh_python(argv) == (2, []), action
    assert not (tmp_path / "none.duckdb").exists()


def test_query_still_prints_its_frame(store_path):
    """The one store command here that needs pandas loads it when it prints (the check above can fail)."""
    assert run_command_in_fresh_python(["store", "query", "SELECT 1 AS one", "--store", str(store_path)]) == (
        0,
        ["pandas"],
    )
