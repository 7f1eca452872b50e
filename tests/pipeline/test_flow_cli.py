"""The flows' command lines take every parameter the Prefect UI's form takes, with the same descriptions.

The form of a deployment is the parameter schema Prefect reads from the flow's entrypoint
(`parameter_schema_from_entrypoint`, what `prefect deploy` stores); each command line here is checked
against that schema, and a value given on the command line is checked to reach the flow run.
"""

import importlib
import pkgutil
import re
import shutil
import subprocess

import pytest
import yaml

import rlhf.flows

COMMANDS = {"rlhf.flows.pipeline": "rlhf_pipeline", "rlhf.flows.human_ranking": "human_ranking"}


def flows_in_package() -> dict[str, object]:
    """Every Prefect flow defined in rlhf/flows, by 'module:function'."""
    from prefect import Flow

    found = {}
    for module_info in pkgutil.iter_modules(rlhf.flows.__path__, "rlhf.flows."):
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if isinstance(value, Flow) and value.fn.__module__ == module.__name__:
                found[f"{module.__name__}:{name}"] = value
    return found


def deployed_forms(project_root) -> dict[str, dict]:
    """The UI form's schema of each flow prefect.yaml deploys, as `prefect deploy` reads it."""
    from prefect.utilities.callables import parameter_schema_from_entrypoint

    deployments = yaml.safe_load((project_root / "prefect.yaml").read_text())["deployments"]
    entrypoints = {deployment["entrypoint"] for deployment in deployments}
    return {
        entry: parameter_schema_from_entrypoint(str(project_root / entry)).model_dump()["properties"]
        for entry in entrypoints
    }


def help_text(module, capsys) -> str:
    """`python -m <module> --help`, as one line of words (argparse wraps at the terminal's width)."""
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_every_flow_with_a_main_is_covered_and_every_flow_parameter_is_described():
    flows = flows_in_package()
    with_main = {key.split(":")[0] for key in flows if hasattr(importlib.import_module(key.split(":")[0]), "main")}
    assert with_main == set(COMMANDS), "a flow module gained or lost its command line: update COMMANDS"
    from prefect.utilities.callables import parameter_schema

    for key, flow in flows.items():
        fields = parameter_schema(flow.fn).model_dump()["properties"]
        undescribed = [name for name, field in fields.items() if not field.get("description")]
        assert not undescribed, f"{key}: no description in the docstring's Args for {undescribed}"


@pytest.mark.parametrize("module_name", sorted(COMMANDS))
def test_help_lists_every_parameter_of_the_ui_form_with_its_description(module_name, project_root, capsys):
    module = importlib.import_module(module_name)
    entry = f"{module_name.replace('.', '/')}.py:{COMMANDS[module_name]}"
    form = deployed_forms(project_root).get(entry)
    if form is None:  # a flow without a deployment: its form is the one `flow.serve()` would register
        from prefect.utilities.callables import parameter_schema

        form = parameter_schema(getattr(module, COMMANDS[module_name]).fn).model_dump()["properties"]
    shown = help_text(module, capsys)
    for name, field in form.items():
        option = name if name == "root" else "--" + name.replace("_", "-")
        description = " ".join(field["description"].split())
        assert re.search(rf"(^|\s){re.escape(option)}\b", shown), f"{module_name} --help lacks {option}"
        assert description in shown, f"{module_name} --help lacks the description of {name}: {description!r}"


def non_default_arguments(flow, root: str) -> tuple[list[str], dict]:
    """A command line giving every parameter a value other than its default, and the values the flow should get."""
    from prefect.utilities.callables import parameter_schema

    argv, expected = [root], {"root": root}
    for name, field in parameter_schema(flow.fn).model_dump()["properties"].items():
        if name == "root":
            continue
        option = "--" + name.replace("_", "-")
        default = field.get("default")
        kinds = {field.get("type")} | {choice.get("type") for choice in field.get("anyOf", [])}
        if "boolean" in kinds:
            value = not default
            argv.append(option if value else "--no-" + name.replace("_", "-"))
        elif "integer" in kinds:
            value = (default or 0) + 7
            argv += [option, str(value)]
        elif "number" in kinds:
            value = (default or 0) + 0.25
            argv += [option, str(value)]
        else:
            value = f"{name}-given"
            argv += [option, value]
        expected[name] = value
    return argv, expected


@pytest.mark.parametrize("module_name", sorted(COMMANDS))
def test_every_value_on_the_command_line_becomes_the_flows_keyword_argument(module_name, tmp_path):
    from rlhf.flows.command_line import flow_arguments, flow_parser

    flow = getattr(importlib.import_module(module_name), COMMANDS[module_name])
    argv, expected = non_default_arguments(flow, str(tmp_path))
    arguments = flow_arguments(flow, flow_parser(flow, "test", positional=("root",)), argv)
    assert arguments == expected
    assert all(type(arguments[name]) is type(value) for name, value in expected.items())  # cast, not strings
    assert flow_arguments(flow, flow_parser(flow, "test", positional=("root",)), []) == {}  # defaults: the flow's


def test_a_bad_value_is_one_error_naming_its_option(capsys):
    from rlhf.flows.pipeline import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--rounds", "two", "--stage-timeout-s", "soon"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("python -m rlhf.flows.pipeline: error: --rounds: Input should be a valid integer")
    assert "--stage-timeout-s: Input should be a valid number" in error


def test_the_command_lines_values_are_the_flow_runs_parameters(prefect_harness, project_root, tmp_path):
    """`python -m rlhf.flows.pipeline` with every option set starts a flow run whose parameters (what
    the UI shows for the run) are those values. The directory has a valid params.yaml in a git
    repository but no dvc.yaml, so the run gets past the command line's checks and fails at once."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId
    from prefect.client.schemas.sorting import FlowRunSort

    from rlhf.flows.pipeline import main, rlhf_pipeline

    shutil.copy(project_root / "params.yaml", tmp_path)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    argv, expected = non_default_arguments(rlhf_pipeline, str(tmp_path))
    with pytest.raises(Exception, match="not inside of a DVC repository"):
        main(argv)
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(is_null_=True)),
            sort=FlowRunSort.START_TIME_DESC,
            limit=20,
        )
    [run] = [run for run in runs if run.parameters.get("root") == str(tmp_path)]
    assert run.parameters == expected
    assert run.state.is_failed()


@pytest.mark.parametrize("problem", ["rounds", "params", "commit_rounds"])
def test_what_stops_a_run_before_its_first_stage_is_one_line_and_no_flow_run(project_root, tmp_path, capsys, problem):
    """A typo in params.yaml, --rounds 0, --commit-rounds outside git: one line naming it, exit 2, and
    no flow run whose failure logs a traceback."""
    from rlhf.flows.pipeline import main

    params = (project_root / "params.yaml").read_text()
    if problem == "params":
        params = params.replace("algorithm: ppo\n", "algorithm: ppoo\n", 1)
    (tmp_path / "params.yaml").write_text(params)
    argv = {"rounds": ["--rounds", "0"], "params": [], "commit_rounds": ["--commit-rounds"]}[problem]
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), *argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1, error
    assert {
        "rounds": "rounds: must be at least 1 (got 0)",
        "params": "train_policy.algorithm: Input should be",
        "commit_rounds": "commit_rounds needs a git repository",
    }[problem] in error
