"""The shape of the code, for issue 29's before/after: the longest functions, the classes with the
most methods, the formatter's skip markers, test files per feature folder, and the library's module count.
Prints one JSON line. Usage: python bench/code_shape.py [ROOT]   (ROOT: a checkout, default this one)
"""

import ast
import json
import sys
from collections import Counter
from pathlib import Path

SKIP = "# fmt" + ": skip"  # split so this file does not count itself


def functions_and_classes(root: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    functions, classes = [], []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if relative.startswith((".venv", "tests/", "bench/")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append((f"{relative}:{node.name}", node.end_lineno - node.lineno + 1))
            elif isinstance(node, ast.ClassDef):
                methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
                classes.append((f"{relative}:{node.name}", len(methods)))
    return functions, classes


def test_files_per_folder(root: Path) -> dict[str, int]:
    return dict(
        sorted(
            Counter(path.parent.relative_to(root).as_posix() for path in (root / "tests").rglob("test_*.py")).items()
        )
    )


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
    functions, classes = functions_and_classes(root)
    sources = [p for p in root.rglob("*.py") if not p.relative_to(root).as_posix().startswith(".venv")]
    library = [p for p in (root / "rlhf").rglob("*.py")]
    print(
        json.dumps(
            {
                "longest_functions": sorted(functions, key=lambda f: -f[1])[:8],
                "most_methods": sorted(classes, key=lambda c: -c[1])[:5],
                "fmt_skip_markers": sum(p.read_text().count(SKIP) for p in sources),
                "test_files_per_folder": test_files_per_folder(root),
                "library_modules": len(library),
                "library_lines": sum(len(p.read_text().splitlines()) for p in library),
                "largest_modules": sorted(
                    ((p.relative_to(root).as_posix(), len(p.read_text().splitlines())) for p in library),
                    key=lambda m: -m[1],
                )[:6],
            }
        )
    )


if __name__ == "__main__":
    main()
