"""dvc.yaml against the code: one name per stage, and every stage depends on the code it runs."""

import ast
from pathlib import Path

import yaml

# Changes to these never change a stage's outputs by themselves: params.yaml values are tracked
# per stage, errors only decide how bad input is reported, and user_inputs only links the files
# params.yaml names so DVC sees them (the stages read those files by their own paths).
NOT_DEPS = {"rlhf/config.py", "rlhf/errors.py", "rlhf/__init__.py", "rlhf/user_inputs.py"}


def imported_files(path: Path, root: Path, seen: set[str]) -> set[str]:
    """The project files a module imports, followed through rlhf."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.ImportFrom) and node.module == "rlhf":  # `from rlhf import chat`
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        for name in names:
            if not name.startswith("rlhf"):
                continue
            module = root / name.replace(".", "/")
            target = module / "__init__.py" if module.is_dir() else module.with_suffix(".py")
            if not target.exists():  # `from rlhf import X` where X is not a module of its own
                continue
            relative = target.relative_to(root).as_posix()
            if relative not in seen:
                seen.add(relative)
                imported_files(target, root, seen)
    return seen


def test_stage_names_match_task_modules(project_root):
    stages = yaml.safe_load((project_root / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert stage["cmd"].startswith(f"bin/python -m rlhf.stages.{name} "), (
            name
        )  # the project's interpreter, any shell
        assert (project_root / "rlhf" / "stages" / f"{name}.py").exists(), name


def test_every_stage_lists_the_code_it_imports(project_root):
    stages = yaml.safe_load((project_root / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        deps = [d for d in stage["deps"] if not d.startswith("${")]
        needed = imported_files(project_root / "rlhf" / "stages" / f"{name}.py", project_root, set()) - NOT_DEPS
        needed.add(f"rlhf/stages/{name}.py")
        missing = {f for f in needed if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)}
        assert not missing, f"{name}: dvc.yaml deps miss {sorted(missing)}"
