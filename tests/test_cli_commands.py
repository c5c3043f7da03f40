"""The ``pyslab`` command as a whole: the registry, listings, ``--help``, and exit statuses."""

from __future__ import annotations

import argparse
import subprocess
import sys

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


def test_policies_lists_every_policy_with_its_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = _run(capsys, "policies")
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == len(pyslab.policies())
    for line, (name, description) in zip(lines, pyslab.policies().items(), strict=True):
        assert line.split()[0] == name and line.endswith(description)


def test_workloads_lists_every_workload_with_its_description(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, _ = _run(capsys, "workloads")
    assert status == 0
    listed = dict(line.split(None, 1) for line in out.splitlines())
    assert listed == pyslab.lab.workloads()


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
