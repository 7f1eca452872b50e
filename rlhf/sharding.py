"""A stage's independent batches spread over worker processes, each batch's result kept once.

The engine is PyTorch's own elastic launcher, torchrun (torch.distributed.run): it starts the
workers on this machine (`--standalone`) or on several (a rendezvous endpoint, `--nnodes`), gives
each its RANK and WORLD_SIZE, and restarts the whole group when a worker dies (`--max-restarts`).
Chosen over a Dask or Ray task runner because the stages already run under it (train_policy's DDP)
and it needs no new service; over accelerate's split because a worker's death restarts the
group instead of ending the stage.

Worker `rank` takes batches rank, rank + world, ...; each batch's result (one or more named
tables) is written once, whole (a temporary folder, then a rename), to a parts folder the workers
share, under the digest of what the parts are computed from (the fingerprint), so parts of other
inputs or settings are never mixed in. A restarted worker skips the batches already on disk, so a
killed worker's share is redone and nothing twice. The workers need no process group: the parts
folder is their only meeting point. Rank 0 waits until every batch is on disk and every worker
has marked its share finished, and gathers them in batch order, so the result is the one a single
process gives when each batch draws from its own seeded stream (rlhf.sampling.batch_generator).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    import torch

# How often torchrun restarts the group after a worker dies before the stage fails.
MAX_RESTARTS = 3
LAUNCHED = "RLHF_WORKERS_LAUNCHED"


@dataclass(frozen=True)
class Worker:
    rank: int
    world: int
    attempt: int = 0  # torchrun's restarts of the group so far

    @classmethod
    def from_environment(cls) -> Worker:
        """This process's place among torchrun's workers (rank 0 of 1 outside torchrun)."""
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
        )

    def place(self, device: torch.device) -> torch.device:
        """This worker's device: on CUDA, its own GPU (LOCAL_RANK); on CPU, the CPU."""
        if device.type == "cuda" and self.world > 1:
            import torch  # here: the rules judge's stage runs without torch

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return device

    def label(self, stage: str) -> str:
        """How this worker names itself in progress lines."""
        return f"{stage} (worker {self.rank} of {self.world})" if self.world > 1 else stage


def start_workers(stage: str, workers: int) -> Worker:
    """This process's Worker; asked for more than one and not yet among them, the stage
    (`rlhf.stages.<stage>`) starts again as `workers` processes instead and this process exits."""
    worker = Worker.from_environment()
    if workers > 1 and worker.world == 1:
        relaunch_as_workers(f"rlhf.stages.{stage}", workers)
    return worker


def relaunch_as_workers(module: str, workers: int) -> None:
    """Run `python -m module` with this process's arguments as `workers` processes under torchrun,
    and exit with its status."""
    if os.environ.get(LAUNCHED):
        raise RuntimeError(f"{module}: torchrun started a process without WORLD_SIZE")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(workers)]
    command += ["--max-restarts", str(MAX_RESTARTS), "-m", module, *sys.argv[1:]]
    print(f"{module}: launching {workers} workers (torchrun)", flush=True)
    done = subprocess.run(command, env={**os.environ, LAUNCHED: "1"}, check=False)
    sys.exit(done.returncode)


Tables = dict[str, pd.DataFrame]  # a batch's result: named tables (a stage's outputs, or parts of them)


class BatchParts:
    """One folder per finished batch, `<root>/<fingerprint digest>/batch-<index>/<table>.parquet`,
    beside fingerprint.json (what they were computed from, for people to read)."""

    def __init__(self, root: str | Path, fingerprint: dict):
        self.root = Path(root)
        self.fingerprint = json.dumps(fingerprint, sort_keys=True, default=str)
        self.directory = self.root / hashlib.sha256(self.fingerprint.encode()).hexdigest()[:16]

    def path(self, index: int) -> Path:
        return self.directory / f"batch-{index:06d}"

    def prepare(self) -> int:
        """Make the folder (any worker may, at once); returns how many batches it already holds."""
        self.directory.mkdir(parents=True, exist_ok=True)
        marker = self.directory / "fingerprint.json"
        if not marker.exists():
            partial = marker.with_name(f".fingerprint.{os.getpid()}.partial")
            partial.write_text(self.fingerprint)
            os.replace(partial, marker)
        return len(list(self.directory.glob("batch-*[0-9]")))

    def done(self, index: int) -> bool:
        return self.path(index).exists()

    def write(self, index: int, tables: Tables) -> None:
        target = self.path(index)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # left by a worker of this pid killed mid-write
        partial.mkdir()
        for name, frame in tables.items():
            frame.to_parquet(partial / f"{name}.parquet", index=False)
        try:
            os.rename(partial, target)  # whole or absent: a worker killed mid-write leaves no part
        except OSError:
            if not target.exists():
                raise
            shutil.rmtree(partial)  # another worker wrote the same batch first (a restarted group)

    def finish(self, worker: Worker) -> None:
        """Mark this worker's share done: after this it touches the folder no more."""
        (self.directory / f".finished-{worker.attempt}-{worker.rank}").touch()

    def wait_for(self, count: int, worker: Worker, poll_s: float = 0.2) -> None:
        """Until every batch is on disk and every worker of this attempt has finished; torchrun
        ends the wait by restarting the group if one of them dies. Waiting for the batches alone
        is not enough: a worker with no batch left to do, still starting, would make the folder
        again after rank 0 removed it."""
        finished = [self.directory / f".finished-{worker.attempt}-{rank}" for rank in range(worker.world)]
        while not (all(self.done(index) for index in range(count)) and all(f.exists() for f in finished)):
            time.sleep(poll_s)

    def gather(self, count: int) -> Tables:
        missing = [index for index in range(count) if not self.done(index)]
        if missing:
            raise RuntimeError(f"{self.directory}: batches {missing[:10]} are missing after every worker finished")
        names = sorted(path.stem for path in self.path(0).glob("*.parquet")) if count else []
        return {
            name: pd.concat(
                [pd.read_parquet(self.path(i) / f"{name}.parquet") for i in range(count)], ignore_index=True
            )
            for name in names
        }

    def remove(self) -> None:
        """Every part under the root, this fingerprint's and any older ones'."""
        shutil.rmtree(self.root, ignore_errors=True)


def run_batches(
    count: int,
    work: Callable[[int], Tables],
    parts: BatchParts,
    worker: Worker,
    progress: Callable[[int, int], None] | None = None,
) -> Tables | None:
    """Batches 0..count-1 of `work`, this worker's share computed unless already on disk; the whole
    result on rank 0 once every batch is on disk (None on the others). The caller removes the parts
    once it has written the result."""
    kept = parts.prepare()
    if kept and worker.rank == 0:
        print(f"{parts.directory}: {kept} of {count} batches already done, kept", flush=True)
    mine = range(worker.rank, count, worker.world)
    for done, index in enumerate(mine, start=1):
        if not parts.done(index):
            parts.write(index, work(index))
        if progress:
            progress(done, len(mine))
    parts.finish(worker)
    if worker.rank != 0:
        return None
    parts.wait_for(count, worker)
    return parts.gather(count)
