"""Resumable reward-model training: the Trainer's own checkpoints, kept where a restart finds them.

TRL's RewardTrainer (a transformers Trainer) writes `checkpoint-<step>/` every `checkpoint_every`
steps: the weights, the optimizer and scheduler (each process's shard under DeepSpeed and FSDP),
every process's RNG state and the trainer state, and resumes from one exactly. What it does not
say is whether a checkpoint is whole: it writes the files in place, so a SIGKILL mid-save leaves a
half one. A callback here marks each checkpoint whole once every process has written its share,
and only a marked checkpoint is resumed. `fingerprint.json` names the settings and inputs the
checkpoints belong to; those of anything else are cleared, never resumed.

Layout: `<directory>/fingerprint.json`, `<directory>/member-<k>/checkpoint-<step>/` (one folder per
ensemble member).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

WHOLE = "whole"  # the marker file in a checkpoint every process has finished writing
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class RewardCheckpoints:
    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def prepare(self, fingerprint: dict) -> None:
        """Keep the whole checkpoints of the configuration `fingerprint` names, clear anything else;
        called once, before the training processes start (so no two processes rewrite the folder at
        once, and only one hashes the inputs)."""
        stamp = self.directory / "fingerprint.json"
        if stamp.exists() and json.loads(stamp.read_text()) == fingerprint:
            for member in self.directory.glob("member-*"):
                for checkpoint in member.iterdir():
                    if _CHECKPOINT.match(checkpoint.name) and not (checkpoint / WHOLE).exists():
                        shutil.rmtree(checkpoint)
            return
        if self.directory.exists():
            shutil.rmtree(self.directory)
        self.directory.mkdir(parents=True)
        stamp.write_text(json.dumps(fingerprint, indent=2, sort_keys=True))

    def member_dir(self, member: int) -> Path:
        return self.directory / f"member-{member}"

    def newest(self, member: int) -> Path | None:
        """The newest whole checkpoint of ensemble member `member`, if any."""
        folder = self.member_dir(member)
        found = [
            (int(m.group(1)), path)
            for path in (folder.iterdir() if folder.is_dir() else [])
            if (m := _CHECKPOINT.match(path.name)) and (path / WHOLE).exists()
        ]
        return max(found)[1] if found else None

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class MarkWholeCheckpoints(TrainerCallback):
    """After each save: once every process has written its share, the main one marks the checkpoint whole."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            (Path(args.output_dir) / f"checkpoint-{state.global_step}" / WHOLE).touch()
