"""The docs: the generated pages are current, the site builds strictly, the README stays short, and
the built site's front page renders in a real browser."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.support.browser import headless_chromium

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import reference_params  # noqa: E402
import render_results  # noqa: E402


def test_the_generated_pages_are_current():
    """docs/reference/*, docs/results.md and README's table are what tools/generate_docs.py writes."""
    result = subprocess.run(
        [sys.executable, "tools/generate_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr


def test_a_key_without_a_description_stops_the_reference():
    class Bare(BaseModel):
        described: int = 1
        """Has one."""
        bare: int = 2

    missing: list[str] = []
    text = "\n".join(reference_params.rows(Bare, "section.", missing))
    assert missing == ["Bare.bare"]
    assert "| `section.described` | int | `1` | Has one. |" in text


def test_a_bench_line_without_its_machine_is_refused(tmp_path, monkeypatch):
    (tmp_path / "store.jsonl").write_text('{"bench": "store", "pairs_per_s": 1}\n')
    monkeypatch.setattr(render_results, "RESULTS", tmp_path)
    monkeypatch.setattr(render_results, "ROOT", tmp_path.parent)
    with pytest.raises(ValueError, match=r"store.jsonl:1: no `machine`"):
        render_results.read_lines()


def test_columns_that_read_alike_are_told_apart_by_a_switch_not_a_figure():
    machine = {"cpu": "x", "cores": 2}
    base = {"bench": "b", "machine": machine, "phase": "validation", "candidate": "long", "max_length": 256}
    lines = [
        {**base, "accuracy": {"mean": 0.63, "per_seed": [0.63]}},
        {**base, "accuracy": {"mean": 0.61, "per_seed": [0.61]}, "folds": 5},
        {**base, "candidate": "short", "max_length": 128, "accuracy": {"mean": 0.6, "per_seed": [0.6]}},
        {**base, "phase": "test", "accuracy": {"mean": 0.64, "per_seed": [0.64]}},
    ]
    header = render_results.lines_table(lines)[0]
    assert header.split(" | ")[1:] == [
        "phase validation, candidate long, max_length 256",
        "phase validation, candidate long, max_length 256, folds 5",  # not the accuracy, which differs too
        "phase validation, candidate short, max_length 128",
        "phase test, candidate long, max_length 256 |",
    ]


def test_the_readme_reads_in_five_minutes():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[1].startswith("## Your model, your data"), headings


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built with --strict: a dead link, an anchor that is not there or a page outside the
    nav fails the build."""
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


def test_the_site_builds_every_page(site):
    pages = {str(page.relative_to(site)) for page in site.rglob("index.html")}
    for page in ("index.html", "reference/params/index.html", "reference/store/index.html", "results/index.html"):
        assert page in pages
    assert len(pages) >= 15, sorted(pages)


def test_the_front_page_renders_offline_in_a_browser(site, tmp_path):
    with headless_chromium(tmp_path / "profile") as driver:
        driver.set_window_size(1400, 1000)  # a desktop's: narrower, the theme folds the navigation into a drawer
        driver.get((site / "index.html").as_uri())
        assert driver.title.startswith("rlhf-pipeline")
        links = {link.text.strip() for link in driver.find_elements("css selector", "nav a") if link.text.strip()}
        assert {"params.yaml", "Results", "The demo, walked through"} <= links, links
        # The theme's own files, no web font: the page loads nothing from the network.
        sources = [tag.get_attribute("src") or "" for tag in driver.find_elements("css selector", "script[src]")]
        assert sources and all(src.startswith("file:") for src in sources), sources
