"""winnow.workflow_script: the glue of the script rules (workflow/scripts/)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from winnow.commands import COMMANDS
from winnow.provenance import command_hash
from winnow.workflow_script import run_command, script_hash

ROOT = Path(__file__).resolve().parents[2]


def test_run_command_writes_the_commands_output_to_the_jobs_log(tmp_path: Path):
    log = tmp_path / "job.log"
    job = SimpleNamespace(log=[str(log)])
    with pytest.raises(SystemExit) as stop:
        run_command(job, "eval table", ["--help"])
    assert stop.value.code == 0
    assert "usage: winnow eval table" in log.read_text()


def test_run_command_logs_the_failure_it_raises(tmp_path: Path):
    log = tmp_path / "job.log"
    with pytest.raises(ValueError):
        run_command(SimpleNamespace(log=[str(log)]), "eval table", ["--evals", tmp_path / "no.json", "--out", "x"])
    assert "ValueError" in log.read_text()


def test_script_hash_covers_the_script_and_the_command(tmp_path: Path):
    script = tmp_path / "s.py"
    script.write_text("x = 1\n")
    first = script_hash(script, "eval table")
    assert len(first) == 16 and first == script_hash(script, "eval table")
    assert script_hash(script, "report plots") != first  # another command's modules
    script.write_text("x = 2\n")
    assert script_hash(script, "eval table") != first
    assert first != command_hash("eval table")


def test_every_script_runs_a_winnow_command():
    scripts = sorted((ROOT / "workflow" / "scripts").glob("*.py"))
    assert scripts
    for script in scripts:
        text = script.read_text()
        assert text.startswith(f"# Rule {script.stem}:"), f"{script.name}: first line names its rule"
        command = re.search(r'run_command\(sm, "([a-z-]+ [a-z-]+)"', text)
        assert command and command.group(1) in COMMANDS, script.name
