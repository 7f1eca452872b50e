"""What DVC shows a user: `dvc exp show`'s headline view fits a terminal, `dvc plots show` draws no
plot of a single point, and its page renders with no network.

The fixture is a git + DVC repository holding this project's dvc.yaml, params and DVC config, the
pipeline's committed outputs (metrics/, plots/, reports/), and DVCLive folders written anew by
rlhf.tracking from the committed step series, so the views are those of the current code.
"""

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.pipeline_repo import GIT_ENV

HEADLINE_METRICS = ["win_rate_vs_start", "win_judge", "kl_to_start", "rm_accuracy"]
TERMINAL_COLUMNS = 20
COPIED = [
    "dvc.yaml",
    "dvc.lock",
    "params.yaml",
    "rounds.yaml",
    ".dvcignore",
    "configs/dvc",
    "metrics",
    "plots",
    "reports",
]


def git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT_ENV})


def dvc(*args, cwd) -> str:
    dvc_bin = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc_bin), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def step_series(live_dir: Path) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} from a DVCLive folder's TSVs (`member0/loss` for a member's)."""
    steps: dict[int, dict[str, float]] = {}
    metrics_dir = live_dir / "plots" / "metrics"
    for tsv in sorted(metrics_dir.rglob("*.tsv")) if metrics_dir.is_dir() else []:
        name = tsv.relative_to(metrics_dir).with_suffix("").as_posix()
        for row in csv.DictReader(io.StringIO(tsv.read_text()), delimiter="\t"):
            steps.setdefault(int(row["step"]), {})[name] = float(row[tsv.stem])
    return steps


def flat(summary: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def relog(source: Path, target: Path) -> None:
    """A DVCLive folder written again by rlhf.tracking from the committed one's series and summary."""
    from rlhf.config import TrackingParams
    from rlhf.tracking import SUMMARY_ONLY, Tracker

    series = step_series(source)
    if series == {0: {"steps": 0.0}}:  # what rlhf.tracking wrote for a stage that trained nothing, until issue 32
        series = {}
    summary_only = {k: v for k, v in flat(json.loads((source / "metrics.json").read_text())).items()}
    summary_only = {k: v for k, v in summary_only.items() if k.rsplit("/", 1)[-1] in SUMMARY_ONLY}
    with Tracker(source.name, TrackingParams(), target) as tracker:
        for step in sorted(series):
            tracker.log_metrics(series[step], step)
        if summary_only:
            tracker.log_metrics(summary_only, max(series, default=0))
    for table in source.glob("*.jsonl"):
        shutil.copy(table, target / table.name)


@pytest.fixture(scope="module")
def views_repo(tmp_path_factory, project_root):
    repo = tmp_path_factory.mktemp("views")
    git("init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    shutil.copy(project_root / ".dvc" / "config", repo / ".dvc" / "config")
    for name in COPIED:
        source = project_root / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy(source, repo / name)
    for live in sorted((project_root / "dvclive").iterdir()):
        relog(live, repo / "dvclive" / live.name)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "outputs", cwd=repo)
    return repo


def test_the_headline_view_of_exp_show_fits_a_terminal_and_names_the_judge(views_repo, project_root):
    script = project_root / "configs" / "dvc" / "exp-show"
    env = {**os.environ, "DVC": str(Path(sys.executable).with_name("dvc"))}
    result = subprocess.run(
        ["sh", str(script), "--csv"], cwd=views_repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    header, *rows = list(csv.reader(io.StringIO(result.stdout)))
    assert len(header) <= TERMINAL_COLUMNS, header
    assert set(HEADLINE_METRICS) <= set(header)
    assert {"seed", "train_policy.algorithm"} <= set(header)
    evaluation = json.loads((views_repo / "metrics" / "eval.json").read_text())
    shown = dict(zip(header, rows[0]))
    assert shown["win_judge"] == evaluation["win_judge"]  # the values, not only the names
    assert float(shown["win_rate_vs_start"]) == pytest.approx(evaluation["win_rate_vs_start"])


def test_dvclive_summaries_are_no_columns_of_exp_show(views_repo):
    """The DVCLive summaries are the last points of step series; each stage's own metrics file holds its figures."""
    shown = json.loads(dvc("exp", "show", "--json", cwd=views_repo))
    metric_files = set(shown[0]["data"]["metrics"])
    assert "metrics/eval.json" in metric_files
    assert not [name for name in metric_files if name.startswith("dvclive/")]


def test_every_declared_plot_is_a_series_and_none_is_a_single_point(views_repo):
    plots = json.loads(dvc("plots", "show", "--json", "-o", str(views_repo.parent / "plots-json"), cwd=views_repo))
    assert not plots.get("errors"), plots.get("errors")
    points = {
        name: len(rendered["content"]["data"]["values"])
        for name, renderers in plots["data"].items()
        for rendered in renderers
        if rendered["type"] == "vega"
    }
    assert points, plots["data"].keys()
    assert {name: n for name, n in points.items() if n < 2} == {}
    assert len(plots["data"]) <= TERMINAL_COLUMNS  # a page to read, not 64 charts
    assert not [name for name in points if re.search(r"(train_runtime|total_flos|epoch|num_tokens)\.tsv$", name)]


def test_the_plots_page_loads_no_script_from_the_network_and_renders_offline(views_repo, tmp_path):
    from selenium.webdriver.common.by import By

    from tests.support.browser import headless_chromium

    out = tmp_path / "plots"
    dvc("plots", "show", "-o", str(out), cwd=views_repo)
    page = (out / "index.html").read_text()
    loaded = re.findall(r"<script[^>]*\bsrc\s*=\s*[\"']?([^\"' >]+)", page, flags=re.IGNORECASE)
    assert [src for src in loaded if re.match(r"(https?:)?//", src)] == []
    charts = re.findall(r"vegaEmbed\('#([^']+)'", page)
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.DOTALL)  # Vega's code holds <img> strings
    images = re.findall(r"<img[^>]*src\s*=\s*\"([^\"]+)\"", markup)
    assert charts and images and all((out / src).is_file() for src in images)  # the reward histograms' PNG
    with headless_chromium(tmp_path / "profile") as browser:
        browser.get((out / "index.html").as_uri())

        def drawn() -> int:
            return sum(
                bool(browser.find_elements(By.CSS_SELECTOR, f"#{chart} svg, #{chart} canvas")) for chart in charts
            )

        deadline = time.monotonic() + 60
        while drawn() < len(charts) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert drawn() == len(charts), f"{drawn()} of {len(charts)} charts drawn"
