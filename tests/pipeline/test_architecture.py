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

# layer -> top-level modules it must never import (directly, anywhere in the layer)
FORBIDDEN = {
    "rlhf": {"prefect", "dvc", "flows", "tasks", "bench", "tests"},
    "tasks": {"prefect", "dvc", "flows", "bench", "tests"},
    "flows": {"tasks", "bench", "tests", "torch", "transformers", "trl", "accelerate", "peft"},
}


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
    for path in sorted((ROOT / layer).rglob("*.py")):
        for module in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[layer]:
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not found, "\n".join(found)


def test_the_flow_process_never_loads_model_code():
    """The flow runs stages in subprocesses: its own process stays free of torch (memory, start time)."""
    probe = "import sys, flows.pipeline, flows.ui; print(sorted({'torch', 'transformers', 'trl'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_architecture_page_names_every_package_of_the_library():
    page = (ROOT / "docs" / "architecture.md").read_text()
    packages = sorted(p.parent.name for p in (ROOT / "rlhf").glob("*/__init__.py"))
    missing = [name for name in packages if f"`{name}/`" not in page]
    assert not missing, f"docs/architecture.md does not mention {missing}"


def test_the_command_line_loads_no_model_code_until_a_command_needs_it():
    """`rlhf --help` and the store commands answer without torch (it took 8 s of CPU to load for a help text)."""
    probe = "import sys, rlhf.cli; print(sorted({'torch', 'transformers', 'trl'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
