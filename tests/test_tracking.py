"""Step metrics through one hook: DVCLive always, TensorBoard and MLflow when asked, from our loops and TRL's."""

import json

import pytest
import torch

from tests.support.store_data import small_comparisons


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the trackers write relative to the working directory, as a stage's do
    return tmp_path


def dvclive_series(root, stage, metric):
    """(step, value) rows of one DVCLive TSV."""
    lines = (root / "dvclive" / stage / "plots" / "metrics" / f"{metric}.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    return [(int(row["step"]), float(row[metric.split("/")[-1]])) for row in rows]


def test_metrics_and_tables_reach_dvclive_tensorboard_and_mlflow(in_tmp):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rlhf.config import TrackingParams
    from rlhf.tracking import Tracker

    params = TrackingParams(report_to=["tensorboard", "mlflow"])
    live = in_tmp / "dvclive" / "train_policy"
    with Tracker("train_policy", params, live, {"train_policy": {"kl_coef": 0.1}}, tables=("samples",)) as tracker:
        for step in (1, 2, 3):
            tracker.log_metrics({"score": step / 10, "kl": 2.0 * step, "note": "not a number", "ok": True}, step)
        tracker.log_table("samples", [{"prompt": "p", "response": "r | s", "reward": 1.5, "kl": 0.2}], 2)

    assert dvclive_series(in_tmp, "train_policy", "score") == [(1, 0.1), (2, 0.2), (3, 0.3)]
    summary = json.loads((in_tmp / "dvclive" / "train_policy" / "metrics.json").read_text())
    assert summary["kl"] == 6.0 and summary["step"] == 3 and "note" not in summary and "ok" not in summary
    table = [json.loads(line) for line in (in_tmp / "dvclive" / "train_policy" / "samples.jsonl").open()]
    assert table == [{"step": 2, "prompt": "p", "response": "r | s", "reward": 1.5, "kl": 0.2}]

    events = EventAccumulator(str(in_tmp / "runs" / "train_policy"))
    events.Reload()
    assert [(e.step, round(e.value, 4)) for e in events.Scalars("train_policy/kl")] == [(1, 2.0), (2, 4.0), (3, 6.0)]

    client = MlflowClient("sqlite:///mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("rlhf-pipeline").experiment_id])
    assert run.info.run_name == "train_policy" and run.data.params["train_policy.kl_coef"] == "0.1"
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "score")] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
    ]
    assert "samples" in [artifact.path for artifact in client.list_artifacts(run.info.run_id)]


def test_trl_and_our_own_loops_report_through_the_same_hook(in_tmp, tiny_checkpoints):
    """The pairwise reward model (TRL's RewardTrainer) and the K-wise one (our loop) both log their
    loss per step; an ensemble's members log apart."""
    from rlhf.config import TrackingParams, TrainRewardParams
    from rlhf.reward_models.train import train_reward_model
    from rlhf.tracking import Tracker

    policy_dir, _ = tiny_checkpoints
    cpu = torch.device("cpu")
    pairwise = TrainRewardParams(batching="pairwise", epochs=2, batch_size=4, learning_rate=1e-3, max_length=32)
    with Tracker("pairwise", TrackingParams(), "dvclive/pairwise") as tracker:
        train_reward_model(small_comparisons(), policy_dir, pairwise, 0, cpu, in_tmp / "rm-pairwise", tracker=tracker)
    trl_loss = dvclive_series(in_tmp, "pairwise", "loss")
    assert trl_loss and all(step > 0 for step, _ in trl_loss)  # TRL's logging steps, at its global step

    kwise = pairwise.model_copy(update={"batching": "kwise", "batch_size": 3, "ensemble": 2})
    with Tracker("kwise", TrackingParams(), "dvclive/kwise") as tracker:
        train_reward_model(small_comparisons(), policy_dir, kwise, 0, cpu, in_tmp / "rm-kwise", tracker=tracker)
    plots = in_tmp / "dvclive" / "kwise" / "plots" / "metrics"
    assert {p.name for p in (plots / "member0").iterdir()} == {"loss.tsv", "grad_norm.tsv", "learning_rate.tsv"}
    assert [step for step, _ in dvclive_series(in_tmp, "kwise", "member1/loss")][:3] == [1, 2, 3]  # every step


def test_a_tracker_that_is_not_installed_is_one_clear_error(in_tmp):
    import importlib.util

    from rlhf.config import TrackingParams
    from rlhf.errors import ConfigError
    from rlhf.tracking import Tracker

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here (the dev extra leaves it out)")
    with pytest.raises(
        ConfigError, match=r"tracking.report_to: wandb needs `wandb` \(pip install -e '.\[trackers\]'\)"
    ):
        Tracker("train_reward", TrackingParams(report_to=["wandb"]), "dvclive/train_reward")


def test_a_stage_that_logged_nothing_still_leaves_the_outs_dvc_declares(in_tmp):
    from rlhf.config import TrackingParams
    from rlhf.tracking import Tracker

    with Tracker("train_cost", TrackingParams(), "dvclive/train_cost", tables=("samples",)):
        pass  # e.g. a cost model with no harmlessness labels to learn from
    assert json.loads((in_tmp / "dvclive" / "train_cost" / "metrics.json").read_text()) == {"steps": 0, "step": 0}
    plots = in_tmp / "dvclive" / "train_cost" / "plots" / "metrics"
    assert plots.is_dir() and list(plots.iterdir()) == []  # no series, so `dvc plots show` draws nothing of one point
    assert (in_tmp / "dvclive" / "train_cost" / "samples.jsonl").read_text() == ""


def test_bad_input_before_the_first_step_leaves_no_dvclive_directory(in_tmp):
    from rlhf.config import TrackingParams
    from rlhf.tracking import Tracker

    with pytest.raises(ValueError), Tracker("bootstrap_policy", TrackingParams(), "dvclive/bootstrap_policy"):
        raise ValueError("demonstrations.jsonl: line 1: no completion")
    assert not (in_tmp / "dvclive" / "bootstrap_policy").exists()


def test_a_resumed_run_logs_the_rows_before_its_checkpoint_again_and_drops_the_tables_after(in_tmp):
    from rlhf.config import TrackingParams
    from rlhf.tracking import Tracker

    live = in_tmp / "dvclive" / "train_policy"
    history = [{"iteration": i, "score": i / 10} for i in (1, 2, 3, 4)]
    with Tracker("train_policy", TrackingParams(), live, tables=("samples",)) as first:
        for row in history:
            first.log_metrics(row, row["iteration"])
            first.log_table("samples", [{"response": f"r{row['iteration']}"}], row["iteration"])
    # killed after iteration 4, resumed from the checkpoint of iteration 2
    with Tracker("train_policy", TrackingParams(), live, tables=("samples",)) as second:
        second.resumed_after(2, history[:2])
        for row in history[2:]:
            second.log_metrics(row, row["iteration"])
            second.log_table("samples", [{"response": f"r{row['iteration']}"}], row["iteration"])
    assert dvclive_series(in_tmp, "train_policy", "score") == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    steps = [json.loads(line)["step"] for line in (live / "samples.jsonl").open()]
    assert steps == [1, 2, 3, 4]


def test_figures_logged_once_go_to_the_summary_not_to_a_plot_of_one_point(in_tmp):
    """The Trainer's end-of-training log (runtime, throughput, FLOPs, mean loss) and its progress
    counters are figures, not curves: they reach metrics.json, and only what moves gets a TSV."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from rlhf.config import TrackingParams
    from rlhf.tracking import Tracker

    live = in_tmp / "dvclive" / "bootstrap_policy"
    with Tracker("bootstrap_policy", TrackingParams(), live) as tracker:
        callback = tracker.trainer_callback()
        args, control = TrainingArguments(output_dir=str(in_tmp / "out"), report_to=[]), TrainerControl()
        for step, loss in ((10, 2.0), (20, 1.5)):
            state = TrainerState(global_step=step)
            callback.on_log(args, state, control, logs={"loss": loss, "epoch": step / 20, "num_tokens": 64.0 * step})
        end = {"train_runtime": 3.5, "train_samples_per_second": 9.1, "total_flos": 1e9, "train_loss": 1.75}
        callback.on_log(args, TrainerState(global_step=20), control, logs={**end, "epoch": 1.0})

    series = {path.stem for path in (live / "plots" / "metrics").iterdir()}
    assert series == {"loss"}
    assert dvclive_series(in_tmp, "bootstrap_policy", "loss") == [(10, 2.0), (20, 1.5)]
    summary = json.loads((live / "metrics.json").read_text())
    assert {key: summary[key] for key in end} == end
    assert summary["epoch"] == 1.0 and summary["num_tokens"] == 1280.0 and summary["loss"] == 1.5


def test_an_ensemble_members_summary_figures_nest_as_its_series_do(in_tmp):
    from rlhf.config import TrackingParams
    from rlhf.tracking import Tracker

    live = in_tmp / "dvclive" / "train_reward"
    with Tracker("train_reward", TrackingParams(), live) as tracker:
        member = tracker.with_prefix("member1/")
        member.log_metrics({"loss": 0.5, "epoch": 0.5}, 1)
        member.log_metrics({"loss": 0.25, "epoch": 1.0, "train_runtime": 2.0}, 2)
    summary = json.loads((live / "metrics.json").read_text())
    assert summary["member1"] == {"loss": 0.25, "epoch": 1.0, "train_runtime": 2.0}
    assert [p.name for p in (live / "plots" / "metrics" / "member1").iterdir()] == ["loss.tsv"]
