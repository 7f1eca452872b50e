"""Where a training stage's step metrics go: DVCLive always, and the trackers of `tracking.report_to`.

One hook for every trainer. Our own loops (PPO, K-wise reward models, the cost model) call
`Tracker.log_metrics`; TRL's and transformers' trainers (SFT, pairwise reward, DPO) get
`Tracker.trainer_callback()`, which forwards their `on_log` to the same place. So a metric goes to
DVCLive, TensorBoard, MLflow and W&B through one code path, whoever trains, and the Trainer's own
`report_to` integrations stay off (each would open its own run, named its own way).

DVCLive writes `dvclive/<stage>/`: plots/metrics/*.tsv, one step series per metric that moves
(dvc.yaml's top-level `plots:` draws them), and metrics.json, the last value of each series plus
the figures logged once (`SUMMARY_ONLY`: the Trainer's end-of-training runtime and loss, progress
counters), which would otherwise be plots of a single point. dvc.yaml keeps the folder as an
output of the stage, so DVC versions it with the run, without making its ~60 summary values
columns of `dvc exp show` (each stage's own metrics file holds its figures). Tables (PPO's
samples) go to `dvclive/<stage>/<name>.jsonl`, one row per line with its step, and to the trackers
that have tables. TensorBoard, MLflow and W&B get every value at its step, as they always did.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Self

from rlhf.config import TrackingParams
from rlhf.errors import ConfigError

if TYPE_CHECKING:
    from transformers import TrainerCallback


def _numbers(metrics: dict) -> dict[str, float]:
    """The loggable entries: finite numbers (bools and strings such as a resumed checkpoint's path stay out)."""
    return {
        name: float(value)
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


# Logged as one figure each (DVCLive's summary, metrics.json), never as a step series: a plot of
# one point says nothing, and a counter that only restates the step is no curve either.
SUMMARY_ONLY = frozenset(
    {
        # what transformers' Trainer logs once, when training ends
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "total_flos",
        "train_loss",
        # progress counters: the Trainer's epoch and tokens seen, our loop's iteration (= its step)
        "epoch",
        "num_tokens",
        "iteration",
    }
)


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    """A nested params section as `a.b.c` keys: MLflow and W&B take flat parameters."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _optional(module: str, tracker: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"params.yaml: tracking.report_to: {tracker} needs `{module.split('.')[0]}` (pip install -e '.[trackers]')"
        ) from None


class Tracker:
    """One stage's run in each tracker. `config` is what the run is logged with (its params sections)."""

    def __init__(
        self,
        stage: str,
        params: TrackingParams,
        directory: str | Path,
        config: dict | None = None,
        main_process: bool = True,
        tables: tuple[str, ...] = (),
    ):
        """`directory`: DVCLive's (dvc.yaml passes `dvclive/<stage>` as the stage's --live_dir).
        `tables`: the names of the tables this stage logs, each `<directory>/<name>.jsonl`."""
        self.stage = stage
        self.prefix = ""
        self.logged_any = False
        self.tables: dict[str, TableFile] = {}
        self.live = self.tensorboard = self.mlflow = self.wandb_run = None
        if not main_process:  # the other ranks of a multi-process run log nothing
            return
        config = _flat(config or {})
        from dvclive import Live

        # dvcyaml=False: dvc.yaml already declares these files; save_dvc_exp=False: inside `dvc repro`
        # or `dvc exp run` DVC records the experiment itself.
        self.live = Live(dir=str(directory), dvcyaml=False, save_dvc_exp=False, report=None)
        self.tables = {name: TableFile(Path(self.live.dir) / f"{name}.jsonl") for name in tables}
        if "tensorboard" in params.report_to:
            summary = _optional("torch.utils.tensorboard", "tensorboard")
            self.tensorboard = summary.SummaryWriter(log_dir=str(Path(params.tensorboard_dir) / stage))
        if "mlflow" in params.report_to:
            self.mlflow = _optional("mlflow", "mlflow")
            # MLflow 3 keeps the plain-file backend in maintenance mode: the local default is a SQLite file.
            self.mlflow.set_tracking_uri(params.mlflow_tracking_uri or "sqlite:///mlflow.db")
            self.mlflow.set_experiment(params.mlflow_experiment)
            self.mlflow.start_run(run_name=stage)
            self.mlflow.log_params({k: str(v)[:500] for k, v in config.items()})
        if "wandb" in params.report_to:
            wandb = _optional("wandb", "wandb")
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"  # offline: `wandb sync` later
            self.wandb_run = wandb.init(
                project=params.wandb_project, name=stage, config=config, mode=mode, reinit="finish_previous"
            )

    def with_prefix(self, prefix: str) -> Tracker:
        """The same runs, each metric name prefixed (an ensemble's members: `member1/loss`)."""
        view = copy.copy(self)
        view.prefix = prefix
        return view

    def log_metrics(self, metrics: dict, step: int) -> None:
        values = {f"{self.prefix}{name}": value for name, value in _numbers(metrics).items()}
        if not values:
            return
        self.logged_any = True
        if self.live is not None:
            self.live.step = step
            for name, value in values.items():
                if name.rsplit("/", 1)[-1] in SUMMARY_ONLY:
                    _set_nested(self.live.summary, name.split("/"), value)  # as log_metric nests `member0/x`
                else:
                    self.live.log_metric(name, value)
            self.live.make_summary()
        if self.tensorboard is not None:
            for name, value in values.items():
                self.tensorboard.add_scalar(f"{self.stage}/{name}", value, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({name.replace("@", "_at_"): v for name, v in values.items()}, step=step)
        if self.wandb_run is not None:
            self.wandb_run.log(values, step=step)

    def log_table(self, name: str, rows: list[dict], step: int) -> None:
        """Rows of one table (e.g. PPO's samples at an iteration), kept per step."""
        if not rows:
            return
        if name in self.tables:  # DVCLive has no table of its own: JSON lines beside its metrics
            self.tables[name].append(step, rows)
        if self.tensorboard is not None:
            header = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
            body = "".join("| " + " | ".join(str(v).replace("|", "\\|") for v in row.values()) + " |\n" for row in rows)
            self.tensorboard.add_text(f"{self.stage}/{name}", header + body, step)
        if self.mlflow is not None:
            columns = {key: [row.get(key) for row in rows] for key in rows[0]}
            self.mlflow.log_table(columns, artifact_file=f"{name}/step_{step:06d}.json")
        if self.wandb_run is not None:
            import wandb

            table = wandb.Table(columns=list(rows[0]), data=[list(row.values()) for row in rows])
            self.wandb_run.log({name: table}, step=step)

    def resumed_after(self, step: int, history: list[dict], step_key: str = "iteration") -> None:
        """A run resumed from a checkpoint at `step`: DVCLive started its files anew, so the rows
        logged before the checkpoint go in again (the series then equals an uninterrupted run's), and
        each table drops the rows after the checkpoint, which the run logs again."""
        for row in history:
            if row[step_key] <= step:
                self.log_metrics(row, row[step_key])
        for table in self.tables.values():
            table.keep_up_to(step)

    def trainer_callback(self, resumed: bool = False) -> TrainerCallback:
        """For a transformers/TRL Trainer (with `report_to=[]`): its logs, at its global step, go here.
        `resumed`: the Trainer resumes from a checkpoint, whose logs go in again first."""
        return _trainer_logs_class()(self, resumed)

    def close_trackers(self) -> None:
        """The other trackers' runs, ended (DVCLive's files are left as they are)."""
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
        if self.wandb_run is not None:
            self.wandb_run.finish()

    def close(self) -> None:
        if self.live is not None:
            if not self.logged_any:  # dvc.yaml declares the directory: its summary says nothing trained
                self.live.step = 0  # the summary carries its step (0), as DVCLive writes every summary
                self.live.summary["steps"] = 0
                self.live.make_summary()
            # dvc.yaml plots every series in this folder; with none (nothing trained, or only a
            # summary) it is empty, and an empty folder is no plot rather than a missing one.
            (Path(self.live.plots_dir) / "metrics").mkdir(parents=True, exist_ok=True)
            for table in self.tables.values():
                table.path.touch()  # declared too, even when no table was due (log_samples_every: 0, DPO)
            self.live.end()
        self.close_trackers()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is not None and not self.logged_any and self.live is not None:
            # Bad input stopped the stage before its first step: leave no half-written out behind.
            # (A run that fails later keeps what it logged: the curve up to a NaN is worth reading.)
            self.close_trackers()
            shutil.rmtree(self.live.dir, ignore_errors=True)
            return
        self.close()


class TableFile:
    """One table as JSON lines, each row with its step. A fresh run starts the file anew on its
    first rows; a resumed one keeps the rows up to its checkpoint (`keep_up_to`) and appends."""

    def __init__(self, path: Path):
        self.path, self.started = path, False

    def keep_up_to(self, step: int) -> None:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        kept = [line for line in lines if (logged := _step_of(line)) is not None and logged <= step]
        self.path.write_text("".join(line + "\n" for line in kept))
        self.started = True

    def append(self, step: int, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a" if self.started else "w") as file:
            file.writelines(json.dumps({"step": step, **row}) + "\n" for row in rows)
        self.started = True


def _set_nested(summary: dict, keys: list[str], value: float) -> None:
    for key in keys[:-1]:
        summary = summary.setdefault(key, {})
    summary[keys[-1]] = value


def _step_of(line: str) -> int | None:
    try:
        return json.loads(line)["step"]
    except ValueError:  # the last line, torn by a kill mid-write
        return None


@functools.cache
def _trainer_logs_class() -> type[TrainerCallback]:
    """The Trainer callback's class, built on first use: importing transformers' Trainer module costs
    seconds (it pulls in peft), and a stage that never trains with a Trainer should not pay them."""
    from transformers import TrainerCallback

    class TrainerLogs(TrainerCallback):
        def __init__(self, tracker: Tracker, resumed: bool = False):
            self.tracker, self.replay_pending = tracker, resumed

        def replay(self, state) -> None:
            """Resumed from a checkpoint: DVCLive started its files anew, so the rows the Trainer
            logged before it (its log_history, loaded once training starts) go in again first."""
            if self.replay_pending and state.is_world_process_zero:
                for row in state.log_history:
                    self.tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, row["step"])
            self.replay_pending = False

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.replay(state)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.replay(state)
            if state.is_world_process_zero and logs:
                self.tracker.log_metrics(logs, state.global_step)

    return TrainerLogs
