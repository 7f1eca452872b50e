"""The layers of docs/architecture.md, checked against the code's imports: the library never imports
the orchestration (prefect, dvc) or the layers above it, the stages never import the flows, and the
flows never load model code."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]

# layer (a folder of the project) -> modules it must never import (directly, anywhere in the layer);
# the library is rlhf/ without its two orchestration packages, rlhf/stages/ and rlhf/flows/
LAYERS = {"library": "rlhf", "stages": "rlhf/stages", "flows": "rlhf/flows"}
INSIDE_LIBRARY_BUT_NOT_IT = ("rlhf/stages", "rlhf/flows")
FORBIDDEN = {
    "library": {"prefect", "dvc", "rlhf.flows", "rlhf.stages", "bench", "tests"},
    "stages": {"prefect", "dvc", "rlhf.flows", "bench", "tests"},
    "flows": {"rlhf.stages", "bench", "tests", "torch", "transformers", "trl", "accelerate", "peft"},
}


def names_any(module: str, forbidden: set[str]) -> bool:
    """Whether `module` is one of `forbidden` or inside one of them."""
    return any(module == name or module.startswith(name + ".") for name in forbidden)


def layer_files(layer: str) -> list[Path]:
    paths = sorted((ROOT / LAYERS[layer]).rglob("*.py"))
    if layer == "library":
        paths = [p for p in paths if not str(p.relative_to(ROOT)).startswith(INSIDE_LIBRARY_BUT_NOT_IT)]
    return paths


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names (relative imports excluded)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_it_must_not(layer):
    found = []
    for path in layer_files(layer):
        for module in imported_modules(path):
            if names_any(module, FORBIDDEN[layer]):
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not found, "\n".join(found)


def test_the_flow_process_never_loads_model_code():
    """The flow runs stages in subprocesses: its own process stays free of torch (memory, start time)."""
    probe = "import sys, rlhf.flows.pipeline, rlhf.flows.ui; print(sorted({'torch', 'transformers', 'trl'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_architecture_page_names_every_package_of_the_library():
    page = (ROOT / "docs" / "architecture.md").read_text()
    packages = sorted(p.parent.name for p in (ROOT / "rlhf").glob("*/__init__.py"))
    missing = [name for name in packages if f"`{name}/`" not in page]
    assert not missing, f"docs/architecture.md does not mention {missing}"


def test_the_command_line_loads_no_model_code_until_a_command_needs_it():
    """`rlhf --help` answers without torch, pandas or DuckDB (8 s of CPU for a help text once; 0.35 s now),
    the modules a command uses load when it runs."""
    probe = (
        "import sys, rlhf.cli; rlhf.cli.build_parser(); print(sorted({'torch', 'pandas', 'duckdb'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_distribution_installs_one_top_level_package():
    """`pip install rlhf-pipeline` puts everything under `rlhf` (stages and flows included), not generic
    top-level names such as `tasks` and `flows` that another project could own."""
    import tomllib

    from setuptools import find_packages

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(ROOT, include=include)
    assert {"rlhf.stages", "rlhf.flows"} <= set(packages)
    assert {name.split(".")[0] for name in packages} == {"rlhf"}, packages
