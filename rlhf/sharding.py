"""A stage's independent batches spread over worker processes, each batch's result kept once.

The engine is PyTorch's own elastic launcher, torchrun (torch.distributed.run): it starts the
workers on this machine (`--standalone`) or on several (a rendezvous endpoint, `--nnodes`), gives
each its RANK and WORLD_SIZE, and restarts the whole group when a worker dies (`--max-restarts`).
Chosen over a Dask or Ray task runner because the stages already run under it (train_policy's DDP)
and it needs no new service; over accelerate's split because a worker's death restarts the
group instead of ending the stage.

Worker `rank` takes batches rank, rank + world, ...; each batch's result (one or more named
tables) is written once, whole (a temporary folder, then a rename), to a parts folder shared by
the workers. A restarted worker
skips the batches already on disk, so a killed worker's share is redone and nothing twice. The
folder remembers what its parts were computed from (the fingerprint); parts of other inputs or
settings are discarded, never mixed in. Rank 0 gathers the parts in batch order once every
worker is done, so the result is the one a single process gives when each batch draws from its
own seeded stream (rlhf.sampling.batch_generator).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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

    @classmethod
    def from_environment(cls) -> Worker:
        """This process's place among torchrun's workers (rank 0 of 1 outside torchrun)."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def place(self, device: torch.device) -> torch.device:
        """This worker's device: on CUDA, its own GPU (LOCAL_RANK); on CPU, the CPU."""
        if device.type == "cuda" and self.world > 1:
            import torch  # here: the rules judge's stage runs without torch

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return device

    def join(self) -> None:
        """Join the other workers (gloo: CPU or GPU hosts alike) so that barrier() can wait for them."""
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo")

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def leave(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


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
    """One folder per finished batch, `batch-<index>/<table>.parquet`, in `directory`, beside
    fingerprint.json."""

    def __init__(self, directory: str | Path, fingerprint: dict):
        self.directory = Path(directory)
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))

    def path(self, index: int) -> Path:
        return self.directory / f"batch-{index:06d}"

    def prepare(self) -> int:
        """Keep the parts computed from the same fingerprint, discard any others; returns how many are kept.
        Called by rank 0 alone, before the others start."""
        marker = self.directory / "fingerprint.json"
        if self.directory.exists():
            try:
                same = json.loads(marker.read_text()) == self.fingerprint
            except (OSError, ValueError):
                same = False
            if not same:
                shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not marker.exists():
            marker.write_text(json.dumps(self.fingerprint, sort_keys=True, indent=1))
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
        os.rename(partial, target)  # whole or absent: a worker killed mid-write leaves no part

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
        shutil.rmtree(self.directory, ignore_errors=True)


def run_batches(
    count: int,
    work: Callable[[int], Tables],
    parts: BatchParts,
    worker: Worker,
    progress: Callable[[int, int], None] | None = None,
) -> Tables | None:
    """Batches 0..count-1 of `work`, this worker's share computed unless already on disk; the whole
    result on rank 0 once every worker is done (None on the others). The caller removes the parts
    once it has written the result."""
    worker.join()
    try:
        if worker.rank == 0:
            kept = parts.prepare()
            if kept:
                print(f"{parts.directory}: {kept} of {count} batches already done, kept", flush=True)
        worker.barrier()
        mine = range(worker.rank, count, worker.world)
        for done, index in enumerate(mine, start=1):
            if not parts.done(index):
                parts.write(index, work(index))
            if progress:
                progress(done, len(mine))
        worker.barrier()
        if worker.rank != 0:
            return None
        return parts.gather(count)
    finally:
        worker.leave()
