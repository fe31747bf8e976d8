"""The device scripts in scripts/h100/ must stay runnable: valid bash, and every gpuprof command line in them
parses against the real CLI (a renamed option would otherwise only fail on a lent GPU, costing its time)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import click
import pytest

from gpuprof.cli import main

SCRIPTS = sorted((Path(__file__).parent.parent / "scripts" / "h100").glob("*.sh"))
# Shell variables in the scripts, replaced by values of the right kind for parsing.
VARIABLES = {"$G": "traces/x", "$I": "triton,cuda", "$B": "1,8", "$m": "opt-1.3b",
             "${nk%x*}": "4096", "${nk#*x}": "4096", "$nk": "4096x4096"}


def gpuprof_commands(script: Path) -> list[list[str]]:
    """Argument lists of every `gpuprof ...` call in the script (nested ones after `--` included)."""
    commands = []
    for line in script.read_text().splitlines():
        line = line.split("#", 1)[0] if not line.lstrip().startswith("#") else ""
        for var, value in VARIABLES.items():
            line = line.replace(var, value)
        words = shlex.split(line) if "gpuprof " in line else []
        starts = [i for i, w in enumerate(words) if w == "gpuprof" and i + 1 < len(words) and words[i + 1][0] != "-"]
        # a nested `gpuprof profile ... -- gpuprof bench ...` yields both commands, each parsed whole
        commands += [words[start + 1:] for start in starts]
    return commands


def test_there_are_scripts():
    assert len(SCRIPTS) >= 4


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.name != "setup.sh"], ids=lambda p: p.name)
def test_every_gpuprof_call_parses(script):
    commands = gpuprof_commands(script)
    assert commands, f"{script.name} calls no gpuprof command"
    for args in commands:
        name, rest = args[0], args[1:]
        command = main.get_command(click.Context(main), name)
        assert command is not None, f"{script.name}: gpuprof has no command {name!r}"
        try:
            command.make_context(name, list(rest))
        except click.UsageError as e:  # unknown option, bad value, missing argument
            pytest.fail(f"{script.name}: `gpuprof {shlex.join(args)}` does not parse: {e.format_message()}")
