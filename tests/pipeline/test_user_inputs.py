"""The files params.yaml names are dependencies DVC sees (issue 27): editing one re-runs exactly the
stages that read it, on a real git + DVC repository running the real stages."""

import json
import os
from pathlib import Path

import pytest
import yaml

from rlhf.config import parse_params
from rlhf.demo.tokenizer import train_tokenizer
from rlhf.user_inputs import LINKS_FILE, UserInput, stage_inputs, sync_links
from tests.support.bootstrap_data import demonstration_rows, save_pretrained_model, write_jsonl
from tests.support.pipeline_repo import dvc, make_repo, run

pytestmark = pytest.mark.timeout(300)


def test_links_follow_params_and_mirror_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("demos.jsonl").write_text("{}\n")
    Path("dataset/data").mkdir(parents=True)
    Path("dataset/state.json").write_text("{}")
    Path("dataset/data/part-0.arrow").write_bytes(b"arrow")
    links = Path("inputs/stage")
    sync_links(links, [UserInput("a.demos", "demos.jsonl"), UserInput("b.dataset", "dataset")])
    assert json.loads((links / LINKS_FILE).read_text()) == {"a.demos": "demos.jsonl", "b.dataset": "dataset"}
    assert os.readlink(links / "a.demos") == "../../demos.jsonl"  # relative: a clone elsewhere resolves it
    assert (links / "b.dataset").is_dir() and not (links / "b.dataset").is_symlink()  # DVC would not descend
    assert (links / "b.dataset/data/part-0.arrow").read_bytes() == b"arrow"
    before = os.lstat(links / "a.demos").st_mtime_ns, (links / LINKS_FILE).stat().st_mtime_ns
    sync_links(links, [UserInput("a.demos", "demos.jsonl"), UserInput("b.dataset", "dataset")])
    assert (os.lstat(links / "a.demos").st_mtime_ns, (links / LINKS_FILE).stat().st_mtime_ns) == before  # untouched
    sync_links(links, [UserInput("b.dataset", "dataset")])  # a key dropped from params.yaml loses its link
    assert {p.name for p in links.iterdir()} == {LINKS_FILE, "b.dataset"}
    with pytest.raises(FileNotFoundError, match=r"params.yaml: a.demos: no such file or directory: gone.jsonl"):
        sync_links(links, [UserInput("a.demos", "gone.jsonl")])


def test_every_path_params_yaml_names_belongs_to_the_stages_that_read_it(tmp_path, monkeypatch, project_root):
    monkeypatch.chdir(tmp_path)
    for name in ("model", "demos.jsonl", "prompts.csv", "saved", "prompts.duckdb", "judge", "backbone", "ensemble"):
        Path(name).mkdir() if "." not in name else Path(name).write_text("x")
    raw = yaml.safe_load((project_root / "params.yaml").read_text())
    raw["bootstrap_policy"].update(source="pretrained", model="model", demonstrations="demos.jsonl")
    raw["collect_prompts"]["sources"] = [
        {"kind": "demo"},
        {"kind": "file", "path": "prompts.csv"},
        {"kind": "hf_dataset", "path": "saved"},
        {"kind": "hf_dataset", "name": "org/hub-dataset"},  # a hub id: nothing on disk to see
        {"kind": "sql", "query": "SELECT 'x' AS prompt", "database": "prompts.duckdb"},
    ]
    raw["train_reward"]["backbone"] = "backbone"
    raw["rank_responses"]["human"] = {"reward_model": "ensemble"}
    raw["evaluate"].update(judge="llm", llm={"model": "judge"})
    params = parse_params(raw, "params.yaml")
    keys = {
        stage: [item.key for item in stage_inputs(params, stage)]
        for stage in (
            "bootstrap_policy",
            "collect_prompts",
            "sample_responses",
            "rank_responses",
            "train_reward",
            "train_policy",
            "evaluate",
        )
    }
    assert keys == {
        "bootstrap_policy": ["bootstrap_policy.model", "bootstrap_policy.demonstrations"],
        "collect_prompts": [
            "collect_prompts.sources.1.path",
            "collect_prompts.sources.2.path",
            "collect_prompts.sources.4.database",
        ],
        "sample_responses": [],
        "rank_responses": ["rank_responses.human.reward_model"],
        "train_reward": ["train_reward.backbone"],
        "train_policy": ["evaluate.llm.model"],  # the in-loop evaluation's judge
        "evaluate": ["evaluate.llm.model"],
    }


def changed_stages(root: Path) -> set[str]:
    return set(json.loads(dvc("status", "--json", cwd=root).stdout or "{}"))


@pytest.mark.slow
def test_editing_a_file_params_names_reruns_exactly_the_stages_that_read_it(tmp_path, project_root):
    user = tmp_path / "user"
    user.mkdir()
    demos = write_jsonl(user / "demos.jsonl", demonstration_rows())
    prompts = user / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"tell me about {t} ."}) + "\n" for t in ("cats", "owls", "tea")))
    corpus = [r["prompt"] + " " + r["completion"] for r in demonstration_rows()] * 4
    model = save_pretrained_model(user / "llama", train_tokenizer(corpus, vocab_size=320))
    root = make_repo(
        tmp_path / "repo",
        project_root,
        {
            "bootstrap_policy": {
                "source": "pretrained",
                "model": str(model),
                "demonstrations": str(demos),
                "sft": {"epochs": 1.0, "batch_size": 16, "max_length": 64, "eval_fraction": 0.0},
            },
            "collect_prompts": {"sources": [{"kind": "file", "path": str(prompts)}], "max_prompts": None},
        },
    )
    dvc("repro", "--quiet", "bootstrap_policy", "collect_prompts", cwd=root)
    links = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["bootstrap_policy"]["deps"]
    [recorded] = [d for d in links if d["path"] == "inputs/bootstrap_policy"]
    assert recorded["nfiles"] >= 3  # links.json, the demonstrations, the model's files
    assert not changed_stages(root) & {"bootstrap_policy", "collect_prompts"}

    with demos.open("a") as file:  # a person adds a demonstration
        file.write(json.dumps({"prompt": "tell me about kites .", "completion": "sure . kites are lovely ."}) + "\n")
    changed = changed_stages(root)
    assert "bootstrap_policy" in changed and "collect_prompts" not in changed
    dvc("repro", "--quiet", "bootstrap_policy", cwd=root)
    assert "bootstrap_policy" not in changed_stages(root)

    prompts.write_text(prompts.read_text() + json.dumps({"prompt": "tell me about bees ."}) + "\n")
    changed = changed_stages(root)
    assert "collect_prompts" in changed and "bootstrap_policy" not in changed

    # Pointing params.yaml at another file: the stage re-runs and records the new file's links.
    other = user / "more_prompts.jsonl"
    other.write_text(prompts.read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["collect_prompts"]["sources"][0]["path"] = str(other)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc("repro", "--quiet", "collect_prompts", cwd=root)
    assert json.loads((root / "inputs/collect_prompts" / LINKS_FILE).read_text()) == {
        "collect_prompts.sources.0.path": str(other)
    }
    assert "collect_prompts" not in changed_stages(root)
    run(["git", "add", "-A"], root)  # the links are committed with dvc.lock (git keeps symbolic links)
    assert "inputs/collect_prompts/collect_prompts.sources.0.path" in run(["git", "ls-files"], root).stdout
