"""The ``pyslab`` command as a whole: the registry, listings, ``--help``, and exit statuses."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import pyslab
import pyslab.lab
from pyslab.cli import build_parser, main
from pyslab.cli.commands import COMMANDS

NAMES = ("compare", "replay", "trace", "policies", "workloads")


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_registered_command_has_a_parser_and_a_runner() -> None:
    assert set(NAMES) <= set(_subcommands(build_parser()))
    for command in COMMANDS:
        assert callable(command.add_parser) and callable(command.run)


@pytest.mark.parametrize(
    "argv",
    [[], *([name] for name in NAMES), ["trace", "convert"], ["trace", "record"]],
)
def test_help_on_every_command(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    status, out, _ = _run(capsys, *argv, "--help")
    assert status == 0
    assert out.startswith(f"usage: {' '.join(['pyslab', *argv])}")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(capsys, "--version")
    assert status == 0 and out.strip() == f"pyslab {pyslab.__version__}"


def _listing(text: str) -> dict[str, str]:
    """``pyslab policies``/``workloads`` output as ``{name: text}``, wrapped lines joined and
    a ``; takes: ...`` tail left out (and the ``default:`` line after the policies)."""
    listed: dict[str, str] = {}
    name = ""
    listing, _, _ = text.partition("\ndefault: ")
    for line in listing.splitlines():
        if line.startswith(" "):
            listed[name] += " " + line.strip()
        else:
            name, _, rest = line.partition(" ")
            listed[name] = rest.strip()
    return {key: value.split("; takes: ")[0] for key, value in listed.items()}


def test_policies_lists_every_policy_with_its_description_and_parameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = _run(capsys, "policies")
    assert status == 0
    assert _listing(out) == pyslab.policies()
    assert "reclaim " in out and "takes: keep=4" in " ".join(out.split())
    assert out.endswith(f"\ndefault: {pyslab.policy.DEFAULT_POLICY}\n")


def test_listings_fit_80_columns_when_piped(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("policies", "workloads"):
        status, out, _ = _run(capsys, command)
        assert status == 0
        assert max(map(len, out.splitlines())) <= 80
        assert not any(line != line.rstrip() for line in out.splitlines())


def test_workloads_lists_every_workload_with_its_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = _run(capsys, "workloads")
    assert status == 0
    assert _listing(out) == pyslab.lab.workloads()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["compare", "--colour"], "unrecognized arguments: --colour"),
        (["compare", "--ops", "0"], "expected a positive integer, not 0"),
        (["compare", "--ops", "many"], "expected a positive integer, not 'many'"),
        (["compare", "--seed", "x"], "invalid int value: 'x'"),
        (["compare", "--policy", "nope"], "unknown policy 'nope'; known policies: "),
        (["compare", "--policy", "dict-lookup+nope"], "unknown policy 'nope'"),
        (["compare", "--workload", "nope"], "unknown workload 'nope'; known workloads: "),
        (["replay"], "the following arguments are required: TRACE"),
        (["replay", "t", "--allocators", "both"], "invalid choice: 'both'"),
        (["trace"], "the following arguments are required: ACTION"),
        (["trace", "record", "nope", "out"], "unknown workload 'nope'"),
    ],
)
def test_usage_errors_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str,
) -> None:
    status, out, err = _run(capsys, *argv)
    assert status == 2
    assert message in err and out == ""


def test_failures_exit_1_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = _run(capsys, "replay", "/nonexistent/trace")
    assert status == 1
    assert err.startswith("pyslab replay: error: no such trace file")


def test_the_core_and_the_parser_import_no_command_line_library() -> None:
    code = (
        "import sys, pyslab, pyslab.cli\n"
        "pyslab.cli.build_parser()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'rich', 'matplotlib', 'memray', 'pyslab_plugins'}))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout.strip() == "[]"


# --- policy specs on the command line -----------------------------------------------------------


@pytest.mark.parametrize("spec", ["dict-lookup+", "+", "", "reclaim(keep=4"])
@pytest.mark.parametrize(
    "command", [["compare"], ["replay", "trace.txt"], ["map"], ["animate", "frames"]]
)
def test_a_malformed_spec_is_one_error_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], command: list[str], spec: str,
) -> None:
    status, out, err = _run(capsys, *command, "-p", spec)
    assert status == 2 and out == ""
    errors = [line for line in err.splitlines() if "error" in line]
    assert errors == [err.splitlines()[-1]]
    assert errors[0].startswith(f"pyslab {command[0]}: error: argument -p/--policy: ")
    assert f"policy spec {spec!r}" in errors[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("reclaim(keep=-1)", "policy 'reclaim' refuses keep=-1: keep must be at least 0"),
        ("reclaim(spare=1)", "policy 'reclaim' does not take parameter 'spare'; it takes: keep=4"),
        ("reclaim(4)", "4 is given to 'reclaim' by position"),
        ("nope(keep=1)", "unknown policy 'nope'; known policies: "),
    ],
)
def test_a_spec_that_does_not_build_is_a_usage_error_naming_the_parameter(
    capsys: pytest.CaptureFixture[str], spec: str, message: str,
) -> None:
    status, out, err = _run(capsys, "compare", "-p", spec)
    assert status == 2 and out == ""
    assert message in err.splitlines()[-1]


def test_compare_passes_spec_parameters_and_labels_runs_with_the_spec(
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    path = tmp_path / "runs.json"
    status, _, err = _run(
        capsys, "compare", "-w", "ramp", "--ops", "2000", "-p", " reclaim( keep = 0 ) ",
        "-p", "reclaim(keep=1_000)+dict-lookup", "--json", str(path),
    )
    assert status == 0, err
    data = json.loads(path.read_text())
    labels = ["reclaim(keep=0)", "reclaim(keep=1_000)+dict-lookup"]
    assert data["meta"]["configurations"] == labels
    runs = {run["configuration"]: run for run in data["runs"]}
    assert list(runs) == labels
    assert runs[labels[0]]["slabs_reclaimed"] == runs[labels[0]]["slabs_created"] > 0
    assert runs[labels[1]]["slabs_reclaimed"] == 0
    assert "ramp under reclaim(keep=0)" in err


def test_map_takes_a_spec_with_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = _run(capsys, "map", "-p", "fullest-first+reclaim(keep=0)", "--ops", "300")
    assert status == 0, err
    assert "policy fullest-first+reclaim" in out


# --- a third-party plugin that fails to load ------------------------------------------------------

_PLUGINS = '''
import pyslab
import pyslab.lab


class Extra(pyslab.Policy):
    name = "extra"
    description = "a third-party policy that loads"


class Steps(pyslab.lab.Workload):
    name = "steps"
    description = "a third-party workload that loads"

    def run(self, heap, ops, seed):
        for _ in range(ops // 2):
            heap.free(heap.alloc(32))


class NotAPlugin:
    pass
'''

_ENTRY_POINTS = """\
[pyslab.policies]
extra = fine_plugins:Extra
broken = broken_plugin:Thing
crashing = crashing_plugin:Thing
not-a-policy = fine_plugins:NotAPlugin

[pyslab.workloads]
steps = fine_plugins:Steps
broken = broken_plugin:Thing
crashing = crashing_plugin:Thing
not-a-workload = fine_plugins:NotAPlugin
"""

_MISSING = "ModuleNotFoundError: No module named 'pyslab_test_no_such_module'"


def _install_broken_plugins(root: Path) -> dict[str, str]:
    """A real distribution (dist-info on PYTHONPATH) whose entry points include a module that
    fails to import, one that raises while importing, and one that is not a plugin class."""
    (root / "fine_plugins.py").write_text(_PLUGINS)
    (root / "broken_plugin.py").write_text("import pyslab_test_no_such_module\n")
    (root / "crashing_plugin.py").write_text("raise RuntimeError('plugin set-up failed')\n")
    info = root / "pyslab_test_plugins-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: pyslab-test-plugins\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(_ENTRY_POINTS)
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def _python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("command", "kind", "built_in", "working", "base"),
    [
        ("policies", "policy", pyslab.policies, "extra", "pyslab.policy.Policy"),
        ("workloads", "workload", pyslab.lab.workloads, "steps", "pyslab.lab.Workload"),
    ],
)
def test_a_plugin_that_fails_to_load_is_listed_as_broken_and_the_rest_as_usual(
    tmp_path: Path, command: str, kind: str, built_in: Callable[[], dict[str, str]],
    working: str, base: str,
) -> None:
    listed = _python(_install_broken_plugins(tmp_path), "-m", "pyslab", command)
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    lines = _listing(listed.stdout)
    assert lines["broken"] == f"(broken: {_MISSING})"
    assert lines["crashing"] == "(broken: RuntimeError: plugin set-up failed)"
    assert lines[f"not-a-{kind}"] == (
        f"(broken: TypeError: fine_plugins:NotAPlugin is not a {base} subclass)"
    )
    assert lines[working] == f"a third-party {kind} that loads"
    for name, description in built_in().items():
        assert lines[name] == description
    assert list(lines) == sorted(lines)


def test_making_a_broken_plugin_names_it_and_chains_the_import_error(tmp_path: Path) -> None:
    code = """\
import warnings
import pyslab, pyslab.lab
for make, error in ((pyslab.make_policy, pyslab.PolicyError),
                    (pyslab.lab.make_workload, pyslab.lab.WorkloadError)):
    try:
        make("broken")
    except error as caught:
        print(type(caught).__name__, "|", caught, "|", type(caught.__cause__).__name__)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    listed = pyslab.policies()
print(sorted(set(listed) & {"broken", "crashing", "not-a-policy", "extra", "reclaim"}))
print(sorted(str(w.message).split(" (")[0] for w in caught))
print({type(w.message).__name__ for w in caught})
"""
    run = _python(_install_broken_plugins(tmp_path), "-c", code)
    assert run.returncode == 0, run.stderr
    policy, workload, names, warned, kinds = run.stdout.splitlines()
    assert policy == (
        "PolicyError | policy entry point 'broken' (broken_plugin:Thing) cannot be loaded: "
        f"{_MISSING} | ModuleNotFoundError"
    )
    assert workload.startswith("WorkloadError | workload entry point 'broken' ")
    assert workload.endswith(f"{_MISSING} | ModuleNotFoundError")
    # pyslab.policies() leaves the broken ones out, with a warning naming each.
    assert names == "['extra', 'reclaim']"
    assert warned == (
        "[\"policy plugin 'broken'\", \"policy plugin 'crashing'\", "
        "\"policy plugin 'not-a-policy'\"]"
    )
    assert kinds == "{'PyslabWarning'}"


def test_a_broken_plugin_named_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    env = _install_broken_plugins(tmp_path)
    for option in ("-p", "-w"):
        run = _python(env, "-m", "pyslab", "compare", option, "broken", "--ops", "100")
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
        assert "entry point 'broken' (broken_plugin:Thing) cannot be loaded: " in run.stderr
    # Everything that loads still runs, the third-party plugins included.
    run = _python(env, "-m", "pyslab", "compare", "-w", "steps", "-p", "extra+reclaim(keep=0)",
                  "--ops", "200")
    assert run.returncode == 0, run.stderr
    assert "steps" in run.stdout and "extra+reclaim(keep=0)" in run.stdout


def test_compare_runs_every_workload_that_loads_and_warns_of_the_broken_ones(
    tmp_path: Path,
) -> None:
    run = _python(_install_broken_plugins(tmp_path), "-m", "pyslab", "compare", "--ops", "100",
                  "-p", "first-fit")
    assert run.returncode == 0, run.stderr
    warned = [line for line in run.stderr.splitlines() if "warning" in line]
    assert warned == [
        "pyslab compare: warning: workload plugin 'broken' (broken_plugin:Thing) is left out: "
        + _MISSING,
        "pyslab compare: warning: workload plugin 'crashing' (crashing_plugin:Thing) is left "
        "out: RuntimeError: plugin set-up failed",
        "pyslab compare: warning: workload plugin 'not-a-workload' (fine_plugins:NotAPlugin) "
        "is left out: TypeError: fine_plugins:NotAPlugin is not a pyslab.lab.Workload subclass",
    ]
    assert "steps under first-fit" in run.stderr and "uniform under first-fit" in run.stderr
