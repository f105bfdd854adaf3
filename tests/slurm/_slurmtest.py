"""Helpers for the Slurm tests: run Snakemake with profiles/slurm, read what it and Slurm logged.

Imported as ``from _slurmtest import ...`` (pytest's prepend import mode puts tests/slurm on
sys.path). The tiny config comes from tests/workflow/conftest.py, loaded by path under another
module name so that it never shadows that directory's own ``conftest``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "profiles" / "slurm"
RULES = sorted((ROOT / "rules").glob("*.smk"))

_spec = importlib.util.spec_from_file_location("winnow_workflow_conftest", ROOT / "tests" / "workflow" / "conftest.py")
workflow_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workflow_conftest)
tiny_config = workflow_conftest.tiny_config
write_config = workflow_conftest.write_config
NONET = workflow_conftest.NONET


def profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def gpu_rule_kinds() -> dict[str, str]:
    """Rules whose `resources:` are sized by ``job_resources(KIND)`` (a GPU unless cluster.gpu is
    false), from rules/*.smk: rule -> kind."""
    kinds, bases = {}, {}
    for path in RULES:
        for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:|use rule \w+ as \w+ with:)", path.read_text()):
            m = re.match(r"(?:rule|checkpoint) (\w+):|use rule (\w+) as (\w+) with:", block)
            res = re.search(r"\n    resources:\n((?:        .*\n?)+)", block)
            kind = re.search(r'job_resources\("(\w+)"\)', res.group(1)) if res else None
            if m and kind:
                kinds[m.group(1) or m.group(3)] = kind.group(1)
            elif m and m.group(2):  # `use rule BASE as NAME with:` keeps BASE's resources
                bases[m.group(3)] = m.group(2)

    def base_kind(name: str) -> str | None:  # a chain of `use rule`s ends at a rule with resources
        while name not in kinds and name in bases:
            name = bases[name]
        return kinds.get(name)

    return kinds | {name: kind for name in bases if (kind := base_kind(name))}


def gpu_rules() -> list[str]:
    return sorted(gpu_rule_kinds())


def requested(rule: str, config: dict, attempt: int = 1, gpu: bool = True) -> tuple[int, int]:
    """(mem_mb, runtime) that ``rule`` asks for under ``config`` (a loaded, defaulted config),
    computed by winnow.resources outside Snakemake (the schema's defaults filled in, as at parse time)."""
    import copy

    from snakemake.utils import validate

    from winnow.resources import job_sizes, memory_mb, runtime_min

    config = copy.deepcopy(config)
    validate(config, str(ROOT / "workflow/schemas/config.schema.yaml"))
    kind = gpu_rule_kinds()[rule]
    shape, sizes, tokens = job_sizes(config)[kind]
    cl = config.get("cluster") or {}
    cap_mb, cap_min = cl.get("max_mem_mb", 128000), cl.get("max_runtime", 2880)
    return memory_mb(kind, shape, sizes, attempt, gpu, cap_mb), runtime_min(kind, shape, tokens, attempt, gpu, cap_min)


def localrules() -> set[str]:
    """The rules the Snakefile (and rules/*.smk) declare as `localrules:` (run by the head process)."""
    names: set[str] = set()
    for path in [ROOT / "Snakefile", *RULES]:
        for block in re.findall(r"^localrules:\s*\n((?:[ \t]+\S.*\n?)+)", path.read_text(), re.M):
            names |= {n.strip() for n in block.replace("\n", ",").split(",") if n.strip()}
        for line in re.findall(r"^localrules:[ \t]*(\S.*)$", path.read_text(), re.M):
            names |= {n.strip() for n in line.split(",") if n.strip()}
    return names


def site_args(partition: str) -> list[str]:
    """What a user adds on the command line for their site, without editing profiles/slurm:
    the partition, plus the profile's own default mem_mb/runtime (a --default-resources on the
    command line replaces the profile's list as a whole)."""
    defaults = {k: v for k, v in profile()["default-resources"].items()}
    defaults["slurm_partition"] = partition
    return ["--default-resources", *(f"{k}={v}" for k, v in defaults.items())]


def smk_env(workdir: Path, base: dict | None = None) -> dict[str, str]:
    env = dict(base if base is not None else os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HOME"] = str(workdir / ".hf")
    # Every process of the run, Slurm jobs included (sbatch --export=ALL), imports the no-network guard.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NONET), env.get("PYTHONPATH")) if p)
    return env


def smk_cmd(workdir: Path, config: Path, *args: str, profile_flag: str = "--workflow-profile") -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config),
        "--replace-workflow-config",
        profile_flag,
        str(PROFILE),
        *args,
    ]


def run_smk(workdir, config, *args, env, log: Path, timeout=1800, profile_flag="--workflow-profile"):
    """Run Snakemake to the end; its whole output goes to ``log`` (and is returned)."""
    with open(log, "w") as out:
        proc = subprocess.run(
            smk_cmd(workdir, config, *args, profile_flag=profile_flag),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    return proc.returncode, log.read_text()


@dataclass
class SmkJob:
    rule: str
    jobid: int
    local: bool
    log: str | None = None
    slurm_ids: list[int] = field(default_factory=list)


def parse_smk_log(text: str) -> dict[int, SmkJob]:
    """Snakemake's jobs (``rule``/``localrule`` blocks) with their log files and Slurm job ids."""
    jobs: dict[int, SmkJob] = {}
    for m in re.finditer(r"^(local)?rule (\w+):\n((?:    .*\n)+)", text, re.M):
        body = m.group(3)
        jid = re.search(r"^    jobid: (\d+)", body, re.M)
        if not jid:
            continue
        logm = re.search(r"^    log: (.*)$", body, re.M)
        job = jobs.setdefault(int(jid.group(1)), SmkJob(m.group(2), int(jid.group(1)), bool(m.group(1))))
        job.log = logm.group(1).split(", ")[0].strip() if logm else job.log
    for m in re.finditer(r"Job (\d+) has been submitted with SLURM jobid (\d+)", text):
        jobs[int(m.group(1))].slurm_ids.append(int(m.group(2)))
    return jobs


def log_header(path: Path) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES and SLURM_JOB_ID from a winnow job log's header line."""
    text = path.read_text(errors="replace")
    m = re.search(r"CUDA_VISIBLE_DEVICES=(\S*) \| SLURM_JOB_ID=(\S*)", text)
    if not m:
        raise AssertionError(f"no CUDA_VISIBLE_DEVICES/SLURM_JOB_ID header in {path}:\n{text[:2000]}")
    return {"CUDA_VISIBLE_DEVICES": m.group(1), "SLURM_JOB_ID": m.group(2)}


R = "results/tiny"
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "2"]  # the plugin's default (40 s) is for real clusters


def started_cluster(root: Path, **kwargs):
    """A LocalSlurm under ``root`` (``kwargs``: gpus, partition, ...), up, for a module fixture to
    yield and stop; skips with the reason where Slurm cannot be had here."""
    import pytest
    from localslurm import LocalSlurm, SlurmUnavailable

    if os.environ.get("WINNOW_SLURM_TESTS") == "0":
        pytest.skip("WINNOW_SLURM_TESTS=0")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("the Slurm tests start slurmd, which needs root (and apt-get to install slurm-wlm if missing)")
    messages: list[str] = []
    c = LocalSlurm(root, log=messages.append, **kwargs)
    try:
        c.up()
    except SlurmUnavailable as err:
        pytest.skip(f"no Slurm here: {err}")
    print("\n".join(messages))
    return c
