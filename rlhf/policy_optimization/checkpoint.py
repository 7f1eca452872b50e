"""Resumable training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is accelerate's `save_state` (trained weights, optimizer, RNG states of every process:
python, numpy, torch, CUDA) plus the objects registered with it (trainer state: iteration, history,
KL controller, score normaliser, prompt sampler, shuffle generator; the LR scheduler). Each is
written under `iteration-N.partial/` and renamed when whole, so a SIGKILL mid-save leaves the
previous checkpoint in place. `fingerprint.json` names the configuration and inputs a checkpoint
belongs to; a checkpoint from anything else is never resumed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

_NAME = re.compile(r"^iteration-(\d+)$")


class Checkpoints:
    def __init__(self, directory: str | Path, fingerprint: dict, accelerator: Accelerator):
        self.directory, self.fingerprint, self.accelerator = Path(directory), fingerprint, accelerator

    def latest(self) -> Path | None:
        """The newest whole checkpoint of this configuration, if any."""
        stamp = self.directory / "fingerprint.json"
        if not stamp.exists() or json.loads(stamp.read_text()) != self.fingerprint:
            return None
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
        return max(found)[1] if found else None

    def start_fresh(self) -> None:
        """Clear checkpoints of another configuration and stamp the directory with this one."""
        # Every process has read the directory (latest()) before the main one rewrites it: without
        # this, a slower process could read a half-written fingerprint.json or a directory being
        # removed, and crash while the others wait at the barrier below.
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if self.directory.exists():
                shutil.rmtree(self.directory)
            self.directory.mkdir(parents=True)
            (self.directory / "fingerprint.json").write_text(json.dumps(self.fingerprint, indent=2, sort_keys=True))
        self.accelerator.wait_for_everyone()

    def save(self, iteration: int) -> Path:
        final = self.directory / f"iteration-{iteration:06d}"
        partial = final.with_name(final.name + ".partial")
        if self.accelerator.is_main_process and partial.exists():
            shutil.rmtree(partial)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            partial.rename(final)
            for old in self.directory.iterdir():
                if old != final and (_NAME.match(old.name) or old.name.endswith(".partial")):
                    shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def remove(self) -> None:
        if self.accelerator.is_main_process and self.directory.exists():
            shutil.rmtree(self.directory)
