"""Write the docs that are generated from the code and the benches, or check they are current.

    python tools/generate_docs.py           # write them
    python tools/generate_docs.py --check   # write nothing; exit 1 naming each stale file

Generated: the references (docs/reference/params.md from the params schema, store.md from the
store's DDL comments, cli.md from the command-line parser), the results page and its seed plot from
bench/results/*.jsonl, and README.md's results table. `make docs` runs this, then `mkdocs build
--strict`; tests/test_docs.py does both, so a key without a description, a stale page or a dead
link fails the suite.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import reference_cli
import reference_params
import reference_store
import render_results

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def generated() -> dict[Path, str]:
    """{path: the text it should hold}."""
    benches = render_results.read_lines()
    files = {
        DOCS / "reference" / "params.md": reference_params.render() + "\n",
        DOCS / "reference" / "store.md": reference_store.render() + "\n",
        DOCS / "reference" / "cli.md": reference_cli.render() + "\n",
        DOCS / "results.md": render_results.results_page(benches),
    }
    if "efficacy" in benches:
        files[DOCS / render_results.SEED_PLOT] = render_results.seed_spread_svg(benches["efficacy"][-1])
    readme = ROOT / "README.md"
    files[readme] = render_results.readme_with_table(readme.read_text(), benches)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/generate_docs.py", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale file")
    args = parser.parse_args(argv)
    stale = []
    for path, text in generated().items():
        current = path.read_text() if path.is_file() else None
        if current == text:
            continue
        if args.check:
            stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale, run python tools/generate_docs.py: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
