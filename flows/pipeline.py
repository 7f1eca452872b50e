"""The RLHF pipeline as a Prefect flow over the DVC graph.

dvc.yaml is the pipeline; this flow adds orchestration around it. It reads the stage graph from
DVC, and runs one Prefect task per stage, named after it, in DVC's topological order. Each task
runs `dvc repro --single-item <stage>`, so DVC decides what is up to date, updates dvc.lock and
skips unchanged stages; Prefect's own cache is off (NO_CACHE) so the two never disagree. Stage
output streams into the Prefect logs; the evaluation report and metrics become artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import networkx as nx
from dvc.repo import Repo
from dvc.stage import PipelineStage
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

SKIPPED_MARK = "didn't change, skipping"


def pipeline_stages(root: str | Path) -> list[PipelineStage]:
    """The stages of dvc.yaml in an order that runs every stage after the stages it depends on.

    Among stages free to run, dvc.yaml's own order decides, so the order is stable.
    """
    repo = Repo(str(root))
    try:
        graph = repo.index.graph  # an edge points from a stage to a stage it depends on
        stages = [s for s in graph.nodes if isinstance(s, PipelineStage)]
        position = {stage.name: i for i, stage in enumerate(repo.index.stages) if isinstance(stage, PipelineStage)}
        dependency_first = graph.subgraph(stages).reverse(copy=True)
        return list(nx.lexicographical_topological_sort(dependency_first, key=lambda s: f"{position[s.name]:06d}"))
    finally:
        repo.close()


def stage_environment() -> dict[str, str]:
    """The stage subprocess's environment: this interpreter's tools first, quiet progress bars."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("TQDM_DISABLE", "1")  # carriage-return progress bars would flood the Prefect log
    env.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    run_id = flow_run.get_id()
    if run_id:
        env["RLHF_RUN_ID"] = f"prefect-{run_id}"
    return env


@task(cache_policy=NO_CACHE)
def reproduce_stage(root: str, stage: str) -> str:
    """`dvc repro --single-item <stage>`, its output streamed into this task's log. Returns ran | skipped."""
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    process = subprocess.Popen(
        command, cwd=root, env=stage_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    skipped = False
    for line in process.stdout:
        line = line.rstrip()
        if line:
            logger.info(line)
            skipped = skipped or SKIPPED_MARK in line
    if process.wait() != 0:
        raise RuntimeError(f"stage {stage} failed (dvc repro exit {process.returncode}); its log is above")
    return "skipped" if skipped else "ran"


def publish_artifacts(root: Path, stages: list[PipelineStage]) -> list[dict]:
    """Every stage's metrics as one table, and the markdown report, as Prefect artifacts.

    Returns the table's rows (stage, metric, value).
    """
    rows = []
    for stage in stages:
        for out in stage.outs:
            path = root / str(out.def_path)
            if out.metric and path.exists():
                metrics = json.loads(path.read_text())
                rows += [{"stage": stage.name, "metric": k, "value": v} for k, v in sorted(metrics.items())]
            elif str(out.def_path).endswith(".md") and path.exists():
                create_markdown_artifact(key=f"{stage.name.replace('_', '-')}-report", markdown=path.read_text())
    if rows:
        create_table_artifact(key="rlhf-metrics", table=rows, description="Metrics of every stage")
    return rows


@flow(name="rlhf-pipeline")
def rlhf_pipeline(root: str = ".") -> dict:
    """Run every stage of dvc.yaml through DVC.

    Returns {"stages": {stage: "ran" | "skipped"}, "metrics": [{stage, metric, value}, ...]}.
    """
    root_path = Path(root).resolve()
    stages = pipeline_stages(root_path)
    outcomes = {}
    for stage in stages:
        outcomes[stage.name] = reproduce_stage.with_options(name=stage.name)(str(root_path), stage.name)
    get_run_logger().info("stage outcomes: %s", outcomes)
    return {"stages": outcomes, "metrics": publish_artifacts(root_path, stages)}


def summary(result: dict) -> str:
    lines = ["", "stage               outcome"]
    lines += [f"{stage:19} {outcome}" for stage, outcome in result["stages"].items()]
    lines += ["", "metric                                    value"]
    lines += [f"{row['stage'] + '.' + row['metric']:41} {row['value']}" for row in result["metrics"]]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(rlhf_pipeline(sys.argv[1] if len(sys.argv) > 1 else ".")))
