"""Helpers that drive the real Snakemake CLI on the tiny config in a temporary directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "configs" / "tiny.yaml"
NONET = Path(__file__).resolve().parent / "nonet"


def tiny_config(**overrides) -> dict:
    """The tiny config with input paths made absolute; ``overrides`` are (block, key) → value."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["corpus"]["inputs"] = [str(ROOT / p) for p in cfg["corpus"]["inputs"]]
    for (block, key), value in overrides.items():
        cfg[block][key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def smk(
    workdir: Path, config: Path, *args: str, check: bool = True, timeout: int = 900, snakefile: Path | None = None
) -> subprocess.CompletedProcess:
    """Run ``snakemake`` on the repository's Snakefile (or ``snakefile``) in ``workdir`` with only ``config``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HOME"] = str(workdir / ".hf")
    # Every process of the run (Snakemake and each job) imports nonet/sitecustomize.py: no network.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NONET), env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(snakefile or ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--replace-workflow-config",
        "--cores",
        "2",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}; {} when nothing is to be done."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+(\d+)", text, re.S)
    if not m:
        raise AssertionError(f"no job stats in output:\n{text}")
    jobs = {}
    for line in m.group(1).splitlines():
        name, count = line.split()
        jobs[name] = int(count)
    assert sum(jobs.values()) == int(m.group(2))
    return jobs


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Path, Path]:
    """(workdir, config path) for a fresh tiny run."""
    work = tmp_path / "work"
    work.mkdir()
    return work, write_config(tmp_path / "tiny.yaml", tiny_config())


@pytest.fixture(scope="session")
def tiny_finished(tmp_path_factory) -> tuple[Path, Path]:
    """(workdir, config) of one real run of the whole tiny workflow, shared by test_e2e and
    test_wf_ablation (their tests only read it and dry-run edited configs against it)."""
    base = tmp_path_factory.mktemp("e2e")
    work = base / "work"
    work.mkdir()
    cfg = write_config(base / "tiny.yaml", tiny_config())
    smk(work, cfg)
    return work, cfg


def all_methods_config() -> dict:
    """The tiny config with every method, the bake-off and two seeds (the report's full shape)."""
    cfg = tiny_config()
    cfg["methods"] = ["random", "pds", "ablation", "mates", "less", "bakeoff"]
    cfg["seeds"] = [0, 1]
    cfg["bakeoff"] = {"n_probe": 16}
    for arm, direction, temperature in (("mates_pool", "lower", 0.5), ("less_pool", "higher", 0.0)):
        cfg["select"][arm] = {
            "direction": direction,
            "ratio": cfg["select"]["pds"]["ratio"],
            "temperature": temperature,
        }
    return cfg


@pytest.fixture(scope="session")
def tiny_all_finished(tmp_path_factory) -> tuple[Path, Path]:
    """(workdir, config) of one real tiny run of every method with the bake-off over two seeds,
    shared by the bake-off, report and rendered-report tests (they only read it)."""
    base = tmp_path_factory.mktemp("all")
    work = base / "work"
    work.mkdir()
    cfg = write_config(base / "tiny-all.yaml", all_methods_config())
    smk(work, cfg, timeout=1800)
    return work, cfg
