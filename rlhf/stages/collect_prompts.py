"""Stage collect_prompts: prompts from the demo domain, files, HF datasets or SQL, deduplicated and split."""

from rlhf.prompts import collect
from rlhf.stages._stage import params_from, parse_paths, run_stage, write_parquet

STAGE = "collect_prompts"


def main() -> None:
    args = parse_paths(STAGE, [], ["prompts"])
    section = params_from(args).collect_prompts
    prompts, counts = collect(section.sources, section.test_fraction, section.max_prompts)
    for count in counts:
        print(f"{STAGE}: {count}")
    write_parquet(prompts, args.prompts)
    splits = prompts["split"].value_counts().to_dict()
    capped = sum(c.prompts for c in counts) - len(prompts)
    note = f", {capped} over max_prompts" if capped else ""
    print(f"{STAGE}: {len(prompts)} prompts ({splits.get('train', 0)} train, {splits.get('test', 0)} test{note})")


if __name__ == "__main__":
    run_stage(STAGE, main)
