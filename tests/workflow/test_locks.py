"""Locks hold for the whole life of a run while other runs in the directory come and go.

Snakemake 9.27.1 removes the whole ``.snakemake/locks`` folder whenever a locking run exits, so a
short run (an audit, a small target) used to take a long run's locks with it and a third run could
start the long run's job a second time. ``winnow.workflow_env.keep_other_runs_locks`` (called by
the Snakefile) makes each run remove only its own lock files.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import NONET, ROOT, smk, tiny_config, write_config

pytestmark = pytest.mark.slow
TARGET = "results/tiny/models/random/s0/model/model.safetensors"


def _start(work: Path, cfg: Path, *targets: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HOME"] = str(work / ".hf")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NONET), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work)]
    cmd += ["--configfile", str(cfg), "--replace-workflow-config", "--cores", "1", *targets]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _locks(work: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((work / ".snakemake" / "locks").glob("*.lock"))}


@pytest.fixture
def long_run(tmp_path):
    """A run whose training job lasts until it is stopped (a huge step count), in its job."""
    work = tmp_path / "work"
    work.mkdir()
    cfg = tiny_config()
    cfg["methods"], cfg["seeds"] = ["random"], [0]
    cfg["train"].update(steps=1_000_000, ckpt_every=1_000_000)
    path = write_config(tmp_path / "long.yaml", cfg)
    proc = _start(work, path, TARGET)
    log = work / "results/tiny/logs/train_lm/random-s0.log"
    try:
        deadline = time.monotonic() + 600
        while not (log.exists() and log.stat().st_size > 0):
            if proc.poll() is not None:
                raise AssertionError(f"the long run ended early:\n{proc.stdout.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("the long run's training job never started")
            time.sleep(1)
        yield work, path, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_short_runs_and_an_audit_leave_a_running_jobs_locks(long_run):
    work, cfg, proc = long_run
    held = _locks(work)
    assert held and any(TARGET in text for text in held.values()), held
    # Runs that lock, build and exit while the long one trains (the audit has no inputs, so it
    # does not overlap the long run's DAG; any target that does is refused, as it should be).
    smk(work, cfg, "audit")
    smk(work, cfg, "audit")
    assert (work / "results/tiny/audit/audit.json").exists()
    assert proc.poll() is None, "the long run stopped"
    assert {k: v for k, v in _locks(work).items() if k in held} == held  # still there, unchanged
    # A third run that would build the running job's output is refused, not started twice.
    third = smk(work, cfg, TARGET, check=False)
    assert third.returncode != 0
    assert "cannot be locked" in third.stdout + third.stderr
    assert proc.poll() is None


def test_unlock_still_removes_every_lock(long_run):
    work, cfg, proc = long_run
    os.killpg(proc.pid, signal.SIGKILL)  # a head process killed hard leaves its locks behind
    proc.wait()
    assert _locks(work)
    refused = smk(work, cfg, TARGET, check=False)
    assert refused.returncode != 0 and "cannot be locked" in refused.stdout + refused.stderr
    smk(work, cfg, "--unlock")
    assert _locks(work) == {}
