""".ci/run must fail when pip or a README command fails: its output filter may not swallow their exit status."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

CI = Path(__file__).parent.parent / ".ci" / "run"


def _quiet_definition() -> str:
    found = [line for line in CI.read_text().splitlines() if line.startswith("quiet()")]
    assert len(found) == 1, ".ci/run defines no quiet() helper"
    return found[0]


def _run_quiet(command: str) -> subprocess.CompletedProcess:
    script = f"set -euo pipefail\n{_quiet_definition()}\nquiet {command}\necho after"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True)


def test_quiet_keeps_the_commands_exit_status_and_drops_the_pip_warning():
    failed = _run_quiet("bash -c 'echo WARNING: Location x; echo kept; exit 3'")
    assert failed.returncode == 3 and "kept" in failed.stdout and "WARNING" not in failed.stdout
    assert "after" not in failed.stdout  # set -e stopped the script
    silent = _run_quiet("true")  # nothing left to print is no failure
    assert silent.returncode == 0 and silent.stdout == "after\n"


def test_every_pip_and_readme_command_goes_through_quiet():
    text = CI.read_text()
    assert "|| true" not in text.replace(_quiet_definition(), "")
    commands = [l for l in text.splitlines() if re.search(r"pip install -q|-c \"\$(main|test)_cmd\"", l)]
    assert len(commands) == 4 and all(l.startswith("quiet ") for l in commands)
