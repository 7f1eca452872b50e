"""Stage collect_prompts: prompts from the demo domain or a file, deduplicated and split."""

from rlhf.prompts import demo_prompts, file_prompts, finalize
from tasks._stage import params_from, parse_paths, run_stage, write_parquet

STAGE = "collect_prompts"


def main() -> None:
    args = parse_paths(STAGE, [], ["prompts"])
    section = params_from(args).collect_prompts
    raw = demo_prompts() if section.source == "demo" else file_prompts(section.path)
    prompts = finalize(raw, section.test_fraction, section.max_prompts)
    write_parquet(prompts, args.prompts)
    counts = prompts["split"].value_counts().to_dict()
    print(f"{STAGE}: {len(prompts)} prompts ({counts.get('train', 0)} train, {counts.get('test', 0)} test)")


if __name__ == "__main__":
    run_stage(STAGE, main)
