"""sample_responses over workers (rlhf/sharding.py): torchrun's processes share the batches; the
responses are one process's, byte for byte, and a worker killed mid-run has its share redone
without a response sampled twice."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import psutil
import pytest
import yaml

from rlhf.prompts import demo_prompts, finalize

# 24 prompts x k 4 in batches of 4: 24 batches, enough to kill a worker part-way.
SAMPLING = {"k": 4, "max_new_tokens": 24, "temperature": 1.0, "top_p": 1.0, "batch_size": 4}


@pytest.fixture
def sampling_stage(tmp_path, tiny_checkpoints, project_root):
    """The stage's command on the toy prompts and a saved tiny policy, at a given worker count."""
    policy_dir, _ = tiny_checkpoints
    prompts = finalize(demo_prompts().head(24), 0.0, None)
    prompts.to_parquet(tmp_path / "prompts.parquet")
    base = yaml.safe_load((project_root / "params.yaml").read_text())

    def command(name: str, workers: int, **changes) -> tuple[list[str], os.PathLike]:
        params = {
            **base,
            "sample_responses": {**base["sample_responses"], **SAMPLING, **changes},
            "workers": {**base["workers"], "sample_responses": workers},
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(params))
        out = tmp_path / f"{name}.parquet"
        return [
            sys.executable,
            "-m",
            "rlhf.stages.sample_responses",
            "--params",
            str(tmp_path / f"{name}.yaml"),
            "--policy_dir",
            str(policy_dir),
            "--prompts",
            str(tmp_path / "prompts.parquet"),
            "--responses",
            str(out),
            "--parts_dir",
            str(tmp_path / f"{name}.parts"),
        ], out

    return command


def run(command, project_root):
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=project_root, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_two_workers_sample_exactly_what_one_process_samples(sampling_stage, project_root, tmp_path):
    single, single_out = sampling_stage("single", 1)
    run(single, project_root)
    pair, pair_out = sampling_stage("pair", 2)
    output = run(pair, project_root)
    assert "launching 2 workers" in output.stdout
    assert "worker 1 of 2" in output.stderr + output.stdout  # both processes sampled
    assert single_out.read_bytes() == pair_out.read_bytes()
    responses = pd.read_parquet(single_out)
    assert len(responses) == 24 * SAMPLING["k"] and responses["response_id"].is_unique
    assert responses["response"].nunique() > len(responses) // 2  # draws, not one text repeated
    assert not (tmp_path / "pair.parts").exists() and not (tmp_path / "single.parts").exists()
    # each batch has its own seeded stream: another seed gives other responses
    other, other_out = sampling_stage("other-seed", 1)
    params = yaml.safe_load((tmp_path / "other-seed.yaml").read_text())
    (tmp_path / "other-seed.yaml").write_text(yaml.safe_dump({**params, "seed": params["seed"] + 1}))
    run(other, project_root)
    assert list(pd.read_parquet(other_out)["response"]) != list(responses["response"])


def test_a_killed_worker_is_restarted_and_its_share_redone_without_duplicates(sampling_stage, project_root, tmp_path):
    single, single_out = sampling_stage("single", 1, max_new_tokens=40)
    run(single, project_root)
    pair, pair_out = sampling_stage("pair", 2, max_new_tokens=40)
    parts = tmp_path / "pair.parts"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    launcher = subprocess.Popen(
        pair, cwd=project_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 300
        while len(list(parts.glob("*/batch-*[0-9]"))) < 4 and launcher.poll() is None:
            assert time.monotonic() < deadline, "no batch written in 300 s"
            time.sleep(0.05)
        done_before_kill = {path.name: path.stat().st_mtime_ns for path in parts.glob("*/batch-*[0-9]")}
        workers = [
            process
            for process in psutil.Process(launcher.pid).children(recursive=True)
            if "rlhf.stages.sample_responses" in command_line_of(process) and "RANK=1" in environ_of(process)
        ]
        assert workers, "rank 1 not found"
        os.kill(workers[0].pid, signal.SIGKILL)
        stdout, stderr = launcher.communicate(timeout=600)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 0, stderr[-4000:]
    assert "already done, kept" in stdout + stderr  # the restarted group kept the finished batches
    assert pair_out.read_bytes() == single_out.read_bytes()
    assert pd.read_parquet(pair_out)["response_id"].is_unique
    assert 4 <= len(done_before_kill) < 24  # killed part-way


def command_line_of(process: psutil.Process) -> str:
    """A child that ended since it was listed (a short-lived helper) has no command line to read."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def environ_of(process: psutil.Process) -> str:
    try:
        return " ".join(f"{key}={value}" for key, value in process.environ().items() if key == "RANK")
    except psutil.Error:
        return ""


def test_two_workers_judge_exactly_what_one_process_judges(sampling_stage, project_root, tmp_path, tiny_tokenizer):
    """A hybrid ranking by an LLM judge (a tiny random GPT-2 reads the comparisons): rankings, the
    queue for people and the judge's counts (pairs judged, position bias) as one process gives them."""
    import torch
    from transformers import GPT2LMHeadModel

    from tests.support.tiny import tiny_gpt2_config

    sample, responses = sampling_stage("sampled", 1)
    run(sample, project_root)
    torch.manual_seed(0)
    judge_dir = tmp_path / "judge"
    GPT2LMHeadModel(tiny_gpt2_config(tiny_tokenizer, n_positions=512)).save_pretrained(judge_dir)
    tiny_tokenizer.save_pretrained(judge_dir)
    base = yaml.safe_load((project_root / "params.yaml").read_text())
    outputs = {}
    for workers in (1, 2):
        name = f"rank-{workers}"
        params = {
            **base,
            "rank_responses": {
                **base["rank_responses"],
                "judge": "hybrid",
                "ai_judge": "llm",
                "llm": {"model": str(judge_dir), "batch_size": 8},
                "batch_prompts": 4,
            },
            "workers": {**base["workers"], "rank_responses": workers},
        }
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(params))
        files = {kind: tmp_path / f"{name}.{kind}" for kind in ("rankings", "queue", "metrics")}
        command = [sys.executable, "-m", "rlhf.stages.rank_responses", "--params", str(tmp_path / f"{name}.yaml")]
        command += ["--prompts", str(tmp_path / "prompts.parquet"), "--responses", str(responses)]
        command += ["--rankings", str(files["rankings"]), "--queue", str(files["queue"])]
        command += ["--metrics", str(files["metrics"]), "--parts_dir", str(tmp_path / f"{name}.parts")]
        output = run(command, project_root)
        assert ("launching 2 workers" in output.stdout) == (workers == 2)
        outputs[workers] = {kind: path.read_bytes() for kind, path in files.items()}
        assert not (tmp_path / f"{name}.parts").exists()
    assert outputs[1] == outputs[2]
    metrics = json.loads(outputs[2]["metrics"])
    assert metrics["judge"] == "llm" and metrics["prompts"] == 24
    assert metrics["pairs_judged"] == 24 * 6  # every pair of 4 responses, once, summed over the workers
    assert len(pd.read_parquet(tmp_path / "rank-2.rankings")) == 24 * SAMPLING["k"]


@pytest.mark.timeout(60)
def test_rank_0_gathers_only_once_every_worker_has_finished_so_none_makes_the_parts_again(tmp_path):
    """A worker with no batch left to do (more workers than batches, or its share kept on disk) may
    still be starting when rank 0 has every batch: were rank 0 to gather, write and remove the parts
    then, that worker would make the folder again. Rank 0 waits for every worker's finish mark."""
    import threading

    from rlhf.sharding import BatchParts, Worker, run_batches

    def work(index: int):
        return {"rows": pd.DataFrame({"batch": [index]})}

    root, fingerprint = tmp_path / "x.parts", {"inputs": "the same"}
    gathered = {}
    rank_0 = threading.Thread(
        target=lambda: gathered.update(tables=run_batches(1, work, BatchParts(root, fingerprint), Worker(0, 2)))
    )
    rank_0.start()
    rank_0.join(timeout=1.0)
    assert rank_0.is_alive() and not gathered  # batch 0 is on disk; worker 1 has not finished
    assert run_batches(1, work, BatchParts(root, fingerprint), Worker(1, 2)) is None  # nothing to do
    rank_0.join(timeout=10)
    assert not rank_0.is_alive() and list(gathered["tables"]["rows"]["batch"]) == [0]
    BatchParts(root, fingerprint).remove()
    assert not root.exists()
