"""The tiny workflow on a Slurm cluster without GPUs: the checked-in profile, the site's partition
and the one switch `--config 'cluster={gpu: false}'` run every GPU rule as a CPU job.

Without the switch sbatch refuses the first GPU job ("Invalid generic resource (gres)
specification"); with it no job asks for a GPU, each gets its threads as CPUs and the memory
computed for a CPU process. Same fixture rules as test_slurm_cluster.py (root, apt; skipped with
the reason where Slurm cannot be had, WINNOW_SLURM_TESTS=0 skips on purpose).
"""

from __future__ import annotations

import re

import pytest
import yaml
from _slurmtest import (
    FAST_POLL,
    R,
    gpu_rules,
    log_header,
    parse_smk_log,
    requested,
    run_smk,
    site_args,
    smk_env,
    started_cluster,
    tiny_config,
    write_config,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CPU_ONLY = ["--config", "cluster={gpu: false}"]


@pytest.fixture(scope="module")
def cpu_cluster(tmp_path_factory):
    c = started_cluster(tmp_path_factory.mktemp("slurm-cpu"), gpus=0, partition="cpuonly")
    yield c
    c.down()


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return write_config(tmp_path_factory.mktemp("slurm-cpu-cfg") / "tiny.yaml", tiny_config())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """One working directory for the module: the refused run's finished CPU jobs (ingest,
    tokenize, subsets) are reused by the CPU-only run, which also works from scratch."""
    return tmp_path_factory.mktemp("slurm-cpu-work")


def test_without_the_switch_a_gpu_job_is_refused_at_submission(cpu_cluster, config, work, tmp_path):
    rc, text = run_smk(
        work,
        config,
        f"{R}/pds/init/model/model.safetensors",
        *site_args(cpu_cluster.partition),
        *FAST_POLL,
        env=smk_env(work, cpu_cluster.env),
        log=tmp_path / "smk.log",
        timeout=900,
    )
    assert rc != 0 and "SLURM sbatch failed" in text and "--gpus=1" in text, text[-3000:]
    assert "Invalid generic resource" in text, text[-3000:]


def test_the_cpu_only_switch_runs_the_tiny_workflow(cpu_cluster, config, work, tmp_path):
    rc, text = run_smk(
        work,
        config,
        *CPU_ONLY,
        *site_args(cpu_cluster.partition),
        *FAST_POLL,
        env=smk_env(work, cpu_cluster.env),
        log=tmp_path / "smk.log",
    )
    assert rc == 0, f"{text[-6000:]}\n--- slurm logs ---\n{cpu_cluster.logs_tail()}"
    assert "steps (100%) done" in text
    for rel in ("eval/summary.tsv", "eval/compare-pds.tsv", "ablation/correlation.tsv"):
        assert (work / R / rel).exists(), rel
    cfg = yaml.safe_load(config.read_text())
    cfg["cluster"] = {"gpu": False}
    gpu = set(gpu_rules())
    remote = [j for j in parse_smk_log(text).values() if not j.local]
    assert {j.rule for j in remote} >= {"train_lm", "pds_solve", "fit_scorer", "eval_ppl"}
    for job in remote:
        info = cpu_cluster.scontrol_job(job.slurm_ids[0])
        assert "gpu" not in info.get("TresPerJob", ""), (job.rule, info)
        assert log_header(work / job.log)["CUDA_VISIBLE_DEVICES"] == "None"
        if job.rule in gpu:
            mem, minutes = requested(job.rule, cfg, gpu=False)
            assert info["MinMemoryNode"] == f"{mem}M", (job.rule, info["MinMemoryNode"])
            # --cpus-per-task = the rule's threads (what the job's torch uses).
            assert info["NumCPUs"] == str(_threads(text, job.jobid)), (job.rule, info["NumCPUs"])


def _threads(text: str, jobid: int) -> int:
    """The threads Snakemake printed for job ``jobid`` (it prints none for one thread)."""
    block = re.search(rf"^    jobid: {jobid}\n((?:    .*\n)*)", text, re.M)
    assert block, f"no job {jobid} in the log"
    m = re.search(r"^    threads: (\d+)$", block.group(1), re.M)
    return int(m.group(1)) if m else 1
