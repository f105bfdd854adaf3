"""The tiny workflow on a real Slurm cluster (munged + slurmctld + slurmd, fake GPUs) with
profiles/slurm: every non-local job goes through sbatch, GPU rules get a GPU, a cancelled job is
resubmitted, a crashed head process is recovered, an impossible GPU request fails at submission.

The cluster is started by the ``cluster`` fixture (tests/slurm/localslurm.py), which installs
slurm-wlm and munge with apt when they are missing; the tests skip, saying why, where that cannot
be done (not root, no apt-get), and fail, with apt's or the daemons' output, where it goes wrong.
Set WINNOW_SLURM_TESTS=0 to skip them on purpose.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from _slurmtest import (
    FAST_POLL,
    R,
    gpu_rules,
    localrules,
    log_header,
    parse_smk_log,
    requested,
    run_smk,
    site_args,
    smk_cmd,
    smk_env,
    started_cluster,
    tiny_config,
    write_config,
)
from localslurm import LocalSlurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

MODEL = f"{R}/models/random/s0/model/model.safetensors"
STEPS = 150  # long enough (tens of seconds on 2 cores) to interrupt a training job after a checkpoint


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = started_cluster(tmp_path_factory.mktemp("slurm"), gpus=2)
    yield c
    c.down()


def _env(c: LocalSlurm, work: Path) -> dict[str, str]:
    return smk_env(work, c.env)


def _fail(msg: str, c: LocalSlurm, text: str) -> str:
    return f"{msg}\n--- snakemake (tail) ---\n{text[-6000:]}\n--- slurm logs ---\n{c.logs_tail()}"


@pytest.fixture(scope="module")
def finished(cluster, tmp_path_factory):
    """One run of the whole tiny workflow with `--workflow-profile profiles/slurm` and the site's
    partition on the command line (the test partition is not a default one, so every job that
    ran proves the user-side setting reached it)."""
    base = tmp_path_factory.mktemp("slurm-e2e")
    work = base / "work"
    work.mkdir()
    cfg = tiny_config()
    # Micro-batches of 2 let a 4-GPU request pass the parse-time batch check (8 = 2 × 4), so the
    # over-asking test below reaches sbatch.
    cfg["train"]["micro_batch_size"] = 2
    cfg = write_config(base / "tiny.yaml", cfg)
    t0 = time.monotonic()
    rc, text = run_smk(
        work, cfg, *site_args(cluster.partition), *FAST_POLL, env=_env(cluster, work), log=base / "smk.log"
    )
    wall = time.monotonic() - t0
    assert rc == 0, _fail(f"the tiny workflow failed under Slurm (rc {rc})", cluster, text)
    print(f"tiny workflow under Slurm: {wall:.0f} s")
    return work, cfg, text


def _copy(work: Path, dst: Path) -> Path:
    """A copy of a finished run (outputs and Snakemake's metadata) to change without side effects."""
    shutil.copytree(work, dst, symlinks=True)
    return dst


def test_the_tiny_workflow_completes_with_the_slurm_profile(finished):
    work, _, text = finished
    for rel in ("eval/summary.tsv", "eval/compare-pds.tsv", "ablation/correlation.tsv", "scorers/pds/fit.json"):
        assert (work / R / rel).exists(), rel
    assert "steps (100%) done" in text


def test_every_nonlocal_job_went_through_slurm(finished, cluster):
    work, _, text = finished
    jobs = parse_smk_log(text)
    remote = [j for j in jobs.values() if not j.local]
    local = [j for j in jobs.values() if j.local]
    assert len(remote) > 40, sorted(j.rule for j in jobs.values())
    assert {j.rule for j in local} <= localrules()
    assert all(not j.slurm_ids for j in local)
    submitted, records = cluster.submitted_job_ids(), cluster.jobcomp_records()
    seen = set()
    for job in remote:
        assert len(job.slurm_ids) == 1, (job.rule, job.slurm_ids)  # one sbatch each, no retries needed
        sid = job.slurm_ids[0]
        assert sid in submitted, f"{job.rule}: Slurm job {sid} not in slurmctld's log"
        rec = records.get(sid)
        assert rec and rec["JobState"] == "COMPLETED", (job.rule, sid, rec)
        assert rec["Partition"] == cluster.partition
        # The job's own log header names the Slurm job it ran in.
        assert log_header(work / job.log)["SLURM_JOB_ID"] == str(sid), job.rule
        seen.add(sid)
    assert len(seen) == len(remote)


def test_gpu_rules_asked_slurm_for_a_gpu_and_memory_sized_from_the_job(finished, cluster):
    work, cfg, text = finished
    gpu = set(gpu_rules())
    config = yaml.safe_load(cfg.read_text())
    jobs = [j for j in parse_smk_log(text).values() if not j.local]
    gpu_jobs = [j for j in jobs if j.rule in gpu]
    assert {j.rule for j in gpu_jobs} >= {"train_lm", "pds_init", "pds_solve", "fit_scorer", "score_pool", "eval_ppl"}
    for job in jobs:
        sid = job.slurm_ids[0]
        info = cluster.scontrol_job(sid)
        header = log_header(work / job.log)
        if job.rule in gpu:
            assert info.get("TresPerJob") == "gres:gpu:1", (job.rule, info.get("TresPerJob"))
            assert header["CUDA_VISIBLE_DEVICES"] in ("0", "1"), (job.rule, header)
            # The memory and time the rule computed from the config reached sbatch --mem and -t.
            mem, minutes = requested(job.rule, config)
            assert info["MinMemoryNode"] == f"{mem}M", (job.rule, info["MinMemoryNode"])
            assert info["TimeLimit"] == _hhmmss(minutes), (job.rule, info["TimeLimit"])
            assert mem <= cluster.mem_mb, (job.rule, mem, cluster.mem_mb)
        else:
            assert "gpu" not in info.get("TresPerJob", ""), (job.rule, info.get("TresPerJob"))
            assert header["CUDA_VISIBLE_DEVICES"] == "None", (job.rule, header)


def test_each_gpu_job_used_less_memory_than_it_asked_for(finished):
    """Snakemake's benchmark files hold each job's peak resident memory (max_rss, MB): the request
    computed from the config covers it (no cgroups here, so this is the check a real cluster's
    OOM killer would make)."""
    work, cfg, text = finished
    config = yaml.safe_load(cfg.read_text())
    gpu = set(gpu_rules())
    seen = 0
    for job in parse_smk_log(text).values():
        if job.rule not in gpu:
            continue
        bench = _benchmark(work, job)
        if bench is None:
            continue
        peak = float(bench["max_rss"])
        assert peak < requested(job.rule, config)[0], (job.rule, peak)
        seen += 1
    assert seen >= 10


def _benchmark(work: Path, job) -> dict | None:
    """The benchmark row of ``job`` (its benchmark file mirrors its log path), or None."""
    rel = Path(job.log).relative_to(R + "/logs")
    path = work / R / "benchmarks" / rel.with_suffix(".tsv")
    if not path.exists():
        return None
    head, row = path.read_text().splitlines()[:2]
    return dict(zip(head.split("\t"), row.split("\t")))


def _hhmmss(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def test_a_second_run_has_nothing_to_do(finished, cluster):
    work, cfg, _ = finished
    rc, text = run_smk(
        work, cfg, "-n", *site_args(cluster.partition), env=_env(cluster, work), log=work.parent / "again.log"
    )
    assert rc == 0 and "Nothing to be done" in text, text[-3000:]


def test_two_gpus_start_torchrun_with_two_processes(finished, cluster, tmp_path):
    """gpu=2 for train_lm (set by the user on the command line): Slurm gives the job two GPUs, the
    CLI sees CUDA_VISIBLE_DEVICES=0,1 and starts two DDP workers; the model equals the one-GPU one."""
    work = _copy(finished[0], tmp_path / "work")
    cfg = finished[1]
    rc, text = run_smk(
        work,
        cfg,
        MODEL,
        "--forcerun",
        "train_lm",
        "--set-resources",
        "train_lm:gpu=2",
        "train_lm:cpus_per_gpu=1",
        *site_args(cluster.partition),
        *FAST_POLL,
        env=_env(cluster, work),
        log=tmp_path / "smk.log",
    )
    assert rc == 0, _fail("gpu=2 train_lm failed", cluster, text)
    (job,) = [j for j in parse_smk_log(text).values() if j.rule == "train_lm"]
    assert cluster.scontrol_job(job.slurm_ids[0])["TresPerJob"] == "gres:gpu:2"
    log = (work / job.log).read_text()
    assert "CUDA_VISIBLE_DEVICES=0,1" in log
    assert "starting 2 DDP processes under torchrun" in log
    state = json.loads((work / R / "models/random/s0/model/trainer_state.json").read_text())
    assert state["summary"]["world_size"] == 2
    import torch
    from safetensors.torch import load_file

    one, two = load_file(str(finished[0] / MODEL)), load_file(str(work / MODEL))
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5, msg=k)


def _slow_train(finished, tmp_path, steps: int) -> tuple[Path, Path]:
    """A copy of the run whose random-s0 model trains long enough to be interrupted, checkpointing
    often (its old checkpoints removed, so the first new one marks a running job)."""
    work = _copy(finished[0], tmp_path / "work")
    shutil.rmtree(work / R / "models/random/s0/checkpoints", ignore_errors=True)
    cfg = tiny_config()
    cfg["train"].update(steps=steps, ckpt_every=10, keep_checkpoints=2)
    return work, write_config(tmp_path / "slow.yaml", cfg)


def _start(work, cfg, cluster, log: Path, *args) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115 - closed when the process is reaped
    cmd = smk_cmd(work, cfg, MODEL, *args, *site_args(cluster.partition), *FAST_POLL)
    return subprocess.Popen(cmd, env=_env(cluster, work), stdout=out, stderr=subprocess.STDOUT, text=True)


def _wait_for_checkpoint_and_job(work: Path, log: Path, proc, timeout=300) -> int:
    ckpts = work / R / "models/random/s0/checkpoints"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ids = re.findall(r"submitted with SLURM jobid (\d+)", log.read_text())
        if ids and ckpts.exists() and any(ckpts.glob("step-*")):
            return int(ids[-1])
        if proc.poll() is not None:
            raise AssertionError(
                f"snakemake ended ({proc.returncode}) before training started:\n{log.read_text()[-4000:]}"
            )
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no checkpoint within {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture
def heads():
    """Snakemake head processes a test starts; any still running at its end is killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_job_cancelled_with_scancel_is_resubmitted_and_resumes(finished, cluster, tmp_path, heads):
    work, cfg = _slow_train(finished, tmp_path, steps=STEPS)
    log = tmp_path / "smk.log"
    proc = _start(work, cfg, cluster, log)
    heads.append(proc)
    first = _wait_for_checkpoint_and_job(work, log, proc)
    subprocess.run(["scancel", str(first)], env=cluster.env, check=True)
    rc = proc.wait(timeout=600)
    text = log.read_text()
    assert rc == 0, _fail("the cancelled job was not recovered", cluster, text)
    (job,) = [j for j in parse_smk_log(text).values() if j.rule == "train_lm"]
    assert len(job.slurm_ids) == 2 and job.slurm_ids[0] == first, job.slurm_ids
    assert "Trying to restart job" in text
    records = cluster.jobcomp_records()
    assert records[first]["JobState"] == "CANCELLED"
    assert records[job.slurm_ids[1]]["JobState"] == "COMPLETED"
    # The retry is attempt 2: memory and time doubled, and the node (≤ 22 GB) still takes it.
    config = yaml.safe_load(cfg.read_text())
    (mem1, t1), (mem2, t2) = requested("train_lm", config), requested("train_lm", config, attempt=2)
    assert mem2 == 2 * mem1 <= cluster.mem_mb and t2 == 2 * t1
    one, two = cluster.scontrol_job(first), cluster.scontrol_job(job.slurm_ids[1])
    assert (one["MinMemoryNode"], two["MinMemoryNode"]) == (f"{mem1}M", f"{mem2}M")
    assert (one["TimeLimit"], two["TimeLimit"]) == (_hhmmss(t1), _hhmmss(t2))
    # ... and it resumed from the cancelled attempt's checkpoint instead of starting over.
    jlog = (work / job.log).read_text()
    assert "resumed from" in jlog and f"SLURM_JOB_ID={job.slurm_ids[1]}" in jlog
    state = json.loads((work / R / "models/random/s0/model/trainer_state.json").read_text())
    assert state["step"] == STEPS and state["summary"]["resumed_at"] > 0


def test_after_the_head_process_dies_unlock_and_rerun_incomplete_recover(finished, cluster, tmp_path, heads):
    """kill -9 of the head process mid-job (a login node reboot, an OOM kill): the next run is
    refused (stale lock); --unlock, then a plain rerun (the profile sets rerun-incomplete) resumes."""
    work, cfg = _slow_train(finished, tmp_path, steps=STEPS + 20)
    log = tmp_path / "smk.log"
    proc = _start(work, cfg, cluster, log)
    heads.append(proc)
    orphan = _wait_for_checkpoint_and_job(work, log, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The Slurm job outlives its head process; stop it as a user would before restarting.
    subprocess.run(["scancel", str(orphan)], env=cluster.env, check=True)
    env = _env(cluster, work)
    rc, text = run_smk(work, cfg, MODEL, *site_args(cluster.partition), env=env, log=tmp_path / "locked.log")
    assert rc != 0 and "cannot be locked" in text, text[-3000:]
    rc, text = run_smk(
        work, cfg, MODEL, "--unlock", *site_args(cluster.partition), env=env, log=tmp_path / "unlock.log"
    )
    assert rc == 0, text[-3000:]
    rc, text = run_smk(work, cfg, MODEL, *site_args(cluster.partition), *FAST_POLL, env=env, log=tmp_path / "rerun.log")
    assert rc == 0, _fail("rerun after --unlock failed", cluster, text)
    (job,) = [j for j in parse_smk_log(text).values() if j.rule == "train_lm"]
    assert "resumed from" in (work / job.log).read_text()
    assert json.loads((work / R / "models/random/s0/model/trainer_state.json").read_text())["step"] == STEPS + 20


def test_more_gpus_than_the_cluster_has_fails_at_submission_without_an_old_log(finished, cluster, tmp_path):
    work = _copy(finished[0], tmp_path / "work")
    (old,) = [j for j in parse_smk_log(finished[2]).values() if j.log and j.log.endswith("train_lm/random-s0.log")]
    old_log = (work / old.log).read_text()
    assert f"SLURM_JOB_ID={old.slurm_ids[0]}" in old_log
    before = cluster.submitted_job_ids()
    t0 = time.monotonic()
    rc, text = run_smk(
        work,
        finished[1],
        MODEL,
        "--forcerun",
        "train_lm",
        "--set-resources",
        "train_lm:gpu=4",
        *site_args(cluster.partition),
        *FAST_POLL,
        env=_env(cluster, work),
        log=tmp_path / "smk.log",
        timeout=300,
    )
    assert rc != 0
    assert "SLURM sbatch failed" in text and "--gpus=4" in text
    assert "Requested node configuration is not available" in text, text[-3000:]
    assert cluster.submitted_job_ids() == before  # refused by sbatch: nothing was queued
    assert time.monotonic() - t0 < 120
    # The job never ran: the failure shows no log of the earlier, successful run; that one is
    # kept beside the (absent) new log.
    assert f"SLURM_JOB_ID={old.slurm_ids[0]}" not in text
    assert old_log.splitlines()[-1] not in text
    assert (work / (old.log + ".prev")).read_text() == old_log
