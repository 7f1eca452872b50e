"""docs/results.md and README.md's results table, rendered from the benches' own JSON lines.

Each bench prints one JSON line per figure, naming its machine; the lines kept are in
bench/results/<bench>.jsonl (append one with `python bench/X.py ... >> bench/results/X.jsonl`).
This renders every file there, so a figure is written once, by the bench that measured it, and the
README and the results page cannot disagree. The efficacy bench's seeds are also drawn, one dot per
seed, in docs/results/seed_spread.svg.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SEED_PLOT = "results/seed_spread.svg"  # relative to docs/

# What each bench measures and how it is run; a bench not listed is rendered with its name only.
ABOUT = {
    "efficacy": (
        "The default pipeline over seeds",
        "The whole pipeline (`dvc repro`) once per seed in a fresh copy: every evaluation metric's mean "
        "and standard deviation over the seeds.",
        "python bench/efficacy.py --rev HEAD",
    ),
    "store": (
        "The feedback store",
        "Ingest speed against appending JSONL, and the time to snapshot a million pairs.",
        "python bench/store.py --repeats 5",
    ),
    "serve_policy": (
        "Serving a policy",
        "`rlhf serve policy`: requests per second and latency with the store recording each exchange, "
        "against the same server with recording off.",
        "python bench/serve_policy.py",
    ),
    "engines": (
        "Engines",
        "The train_policy stage on one tiny PPO run under each launcher, two CPU processes over gloo for all "
        "but single, alternating: episodes per second of the training loop and each process's peak resident "
        "memory. On a CPU the processes share its cores: the figures say what each engine's communication and "
        "sharding cost on one tiny model, not how it scales over GPUs.",
        "python bench/engines.py --repeats 3",
    ),
    "reward_engines": (
        "Engines for the reward model",
        "The train_reward stage (TRL's RewardTrainer) on one tiny run under each launcher, two CPU processes "
        "over gloo for all but single, alternating: preference pairs per second of training (model load, "
        "engine set-up and steps) and each process's peak resident memory.",
        "python bench/engines.py --stage train_reward --repeats 3",
    ),
    "sampling_workers": (
        "Sampling over workers",
        "The sample_responses stage with one worker and with two under torchrun, alternating, on the same "
        "inputs: responses per second over the stage's whole wall time (start-up included), and whether "
        "every run wrote the same bytes.",
        "python bench/sampling_workers.py --prompts 384",
    ),
    "reward_recipe": (
        "The reward-model recipe for an encoder",
        "all-MiniLM-L6-v2 through train_reward_model on every HH-RLHF harmless sample pair (exchanges cut "
        "from the left): each candidate recipe scored on a validation split of the train prompts (seed 0), "
        "the best one then on the test split over seeds, beside longer-is-better on the same pairs. The "
        "lines with `folds` 5 score every train pair once, by five trainings that each hold out a fifth "
        "of the train prompts (`python bench/reward_recipe.py --folds 5 --seeds 0 --candidates "
        "long_256,long_256_lora16,long_256_bs16,long_256_ensemble_3`, two candidates at a time, one "
        "thread each; the line with `seeds` 1 is long_256 again at seed 1, `--first-seed 1`).",
        "python bench/reward_recipe.py --candidates base_128,gentle_3ep,ensemble_3,long_256,long_384,long_256_ensemble_3,long_256_2ep,long_256_lr2e4",
    ),
    "kto_vs_dpo": (
        "KTO against DPO",
        "Both offline algorithms on the demo at the same label budget, over seeds.",
        "python bench/kto_vs_dpo.py",
    ),
}

# The README's table: (label, the trained policy's metric, the start's metric or the baselines).
HEADLINE = [
    ("win rate against the start policy (the rules judge, ties half)", "win_rate_vs_start", None),
    ("the same on the held-out topics", "unseen_topic_win_rate_vs_start", None),
    ("KL to the start policy, nats per response", "kl_to_start", None),
    (
        "reward-model accuracy on held-out pairs",
        "rm_accuracy",
        {"ROUGE-L": "rouge_baseline_accuracy", "longer-is-better": "length_baseline_accuracy"},
    ),
    ("share on topic", "share_on_topic_final", "share_on_topic_start"),
    ("share on topic, unseen topics", "unseen_topic_share_on_topic_final", "unseen_topic_share_on_topic_start"),
    ("share polite", "share_polite_final", "share_polite_start"),
    ("share with no banned words", "share_no_banned_words_final", "share_no_banned_words_start"),
    ("share in the length band", "share_length_band_final", "share_length_band_start"),
    ("share giving advice", "share_gives_advice_final", "share_gives_advice_start"),
    ("share unsafe (harmful tips)", "unsafe_share_final", "unsafe_share_start"),
    ("distinct-2 (diversity)", "distinct_2_final", "distinct_2_start"),
]


def read_lines() -> dict[str, list[dict]]:
    """{bench: its lines, oldest first} from bench/results/*.jsonl; a bad line stops with its place."""
    benches = {}
    for path in sorted(RESULTS.glob("*.jsonl")):
        lines = []
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if not text.strip():
                continue
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path.relative_to(ROOT)}:{number}: not a JSON line ({error.msg})") from None
            if "machine" not in lines[-1]:
                raise ValueError(f"{path.relative_to(ROOT)}:{number}: no `machine`: a figure must name where it ran")
        benches[path.stem] = lines
    return benches


def machine_text(machine: dict) -> str:
    parts = [machine.get("cpu") or machine.get("gpu") or "unknown machine"]
    if machine.get("cores"):
        parts.append(f"{machine['cores']} cores")
    if machine.get("torch_cpu_capability"):
        parts.append(machine["torch_cpu_capability"])
    return ", ".join(str(part) for part in parts)


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _mean_std(metrics: dict, name: str | None) -> str:
    if not name or name not in metrics:
        return ""
    stat = metrics[name]
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _start_cell(metrics: dict, start: str | dict | None) -> str:
    """The start policy's figure, or the baselines' (named) where the row compares with baselines."""
    if isinstance(start, dict):
        return ", ".join(f"{label} {_mean_std(metrics, name)}" for label, name in start.items() if name in metrics)
    return _mean_std(metrics, start)


def headline_table(line: dict) -> list[str]:
    """The efficacy line's headline as a markdown table, with its seeds and machine under it."""
    metrics = line["metrics"]
    seeds = ", ".join(map(str, line["seeds"]))
    rows = [f"| held-out prompts, seeds {seeds} (mean ± std) | start policy or baseline | trained (PPO) |"]
    rows.append("| --- | --- | --- |")
    for label, final, start in HEADLINE:
        if final in metrics:
            rows.append(f"| {label} | {_start_cell(metrics, start)} | {_mean_std(metrics, final)} |")
    rows += ["", f"Measured on {machine_text(line['machine'])}, at {line['rev']}, by `bench/efficacy.py`."]
    return rows


def seed_spread_svg(line: dict) -> str:
    """One dot per seed for each headline share, start and trained side by side."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "rlhf-results"  # stable ids: the file changes only with its data
    pairs = [
        (label, final, start)
        for label, final, start in HEADLINE
        if not isinstance(start, dict) and final.startswith(("share", "unseen", "unsafe", "win"))
    ]
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(pairs) + 1))
    for row, (_label, final, start) in enumerate(pairs):
        for name, colour in ((start, "tab:gray"), (final, "tab:blue")):
            if not name:
                continue
            values = [run[name] for run in line["per_seed"].values() if run.get(name) is not None]
            axis.scatter(values, [row] * len(values), color=colour, s=22, zorder=3)
    axis.set_yticks(range(len(pairs)), [label.split(" (")[0] for label, _, _ in pairs])
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.grid(axis="x", alpha=0.3)
    axis.set_xlabel(f"each dot one seed ({', '.join(map(str, line['seeds']))}); grey: start policy, blue: trained")
    figure.tight_layout()
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(figure)
    return buffer.getvalue()


def flat(line: dict, prefix: str = "") -> dict[str, object]:
    """A line's scalar figures by dotted name (lists of numbers joined), its machine left out."""
    out: dict[str, object] = {}
    for key, value in line.items():
        if key in ("machine", "bench", "per_seed"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict) and set(value) == {"mean", "std"}:
            out[name] = f"{_number(value['mean'])} ± {_number(value['std'])}"
        elif isinstance(value, dict):
            out.update(flat(value, f"{name}."))
        elif (
            isinstance(value, list) and all(isinstance(item, int | float | str) for item in value) and len(value) <= 12
        ):
            out[name] = ", ".join(_number(item) for item in value)
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value) and len(value) <= 8:
            for index, item in enumerate(value):  # one per process, say
                out.update(flat(item, f"{name}.{index}."))
        elif not isinstance(value, list):
            out[name] = _number(value)
    return out


def column_headers(figures: list[dict[str, object]], settings: list[str]) -> list[str]:
    """Each line's header: its first three settings, then, while two lines read the same, the later
    setting that tells some of them apart with the fewest values (a switch such as `folds` before a
    figure); a setting a line lacks is left out."""

    def header(figure: dict[str, object], keys: list[str]) -> str:
        return ", ".join(f"{key.rsplit('.', 1)[-1]} {figure[key]}" for key in keys if figure.get(key) not in (None, ""))

    def distinct(keys: list[str]) -> int:
        return len({header(figure, keys) for figure in figures})

    keys, rest = settings[:3], settings[3:]
    while distinct(keys) < len(figures):
        telling = [key for key in rest if distinct([*keys, key]) > distinct(keys)]
        if not telling:
            break
        key = min(telling, key=lambda key: len({str(figure.get(key)) for figure in figures}))
        keys.append(key)
        rest.remove(key)
    return [header(figure, keys) or f"line {i + 1}" for i, figure in enumerate(figures)]


def lines_table(lines: list[dict]) -> list[str]:
    """A bench's lines side by side: a column per line, headed by what sets it apart from the
    others, a row per figure; the machine under the table (or a row, where the lines differ)."""
    figures = [flat(line) for line in lines]
    names = list(dict.fromkeys(name for figure in figures for name in figure))
    differing = [name for name in names if len({str(figure.get(name)) for figure in figures}) > 1]
    settings = [name for name in differing if not any("±" in str(figure.get(name, "")) for figure in figures)]
    headers = column_headers(figures, settings)
    rows = ["| figure | " + " | ".join(headers) + " |", "|" + " --- |" * (len(lines) + 1)]
    rows += [f"| `{name}` | " + " | ".join(str(figure.get(name, "")) for figure in figures) + " |" for name in names]
    machines = {machine_text(line["machine"]) for line in lines}
    if len(machines) == 1:
        rows += ["", f"On {machines.pop()}."]
    else:
        rows.append("| machine | " + " | ".join(machine_text(line["machine"]) for line in lines) + " |")
    return [*rows, ""]


def bench_section(bench: str, lines: list[dict]) -> list[str]:
    title, what, command = ABOUT.get(bench, (bench, "", f"python bench/{bench}.py"))
    out = [f"## {title}", "", what, "", f"`{command}`", ""] if what else [f"## {title}", ""]
    if bench == "efficacy":
        out += headline_table(lines[-1]) + ["", f"![Each seed's shares, start and trained]({SEED_PLOT})", ""]
        return out
    out += lines_table(lines)
    return out


def results_page(benches: dict[str, list[dict]]) -> str:
    lines = [
        "# Results",
        "",
        "What the benches measured, rendered from their JSON lines in `bench/results/` by",
        "`tools/render_results.py` (`make docs`); each names the machine it ran on. Efficacy figures are",
        "over several seeds; speed figures are ratios against a baseline run in the same invocation.",
        "",
    ]
    order = sorted(
        benches, key=lambda bench: (bench not in ABOUT, list(ABOUT).index(bench) if bench in ABOUT else 0, bench)
    )
    for bench in order:
        lines += bench_section(bench, benches[bench])
    return "\n".join(lines).rstrip() + "\n"


README_START = "<!-- results: written by tools/render_results.py from bench/results/efficacy.jsonl -->"
README_END = "<!-- /results -->"


def readme_with_table(readme: str, benches: dict[str, list[dict]]) -> str:
    """README.md with the efficacy headline between its markers (unchanged where it has none)."""
    if README_START not in readme or "efficacy" not in benches:
        return readme
    before, rest = readme.split(README_START, 1)
    _, after = rest.split(README_END, 1)
    table = "\n".join(headline_table(benches["efficacy"][-1]))
    return f"{before}{README_START}\n{table}\n{README_END}{after}"
