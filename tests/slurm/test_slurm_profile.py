"""profiles/slurm without a cluster: GPU requests for every GPU rule, no site facts in rules, and
the pre-flight dry run (`snakemake -n` with the profile) on the default config, which needs no
sbatch. Fast; runs everywhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _slurmtest import PROFILE, ROOT, RULES, gpu_rule_kinds, gpu_rules, profile, requested, smk_cmd, smk_env

SITE_KEYS = ("slurm_partition", "slurm_account", "gpu_model", "constraint", "qos", "slurm_extra", "gres")


def test_every_gpu_rule_sizes_its_own_request_and_the_profile_overrides_none():
    from winnow.resources import KINDS

    kinds = gpu_rule_kinds()
    assert {"train_lm", "pds_init", "pds_solve", "fit_scorer", "score_pool", "eval_ppl", "eval_harness"} <= set(kinds)
    assert set(kinds.values()) <= set(KINDS), kinds
    # A per-rule table in the profile would replace the computed requests (and a --set-resources
    # on the command line would replace the whole table): the profile has none.
    assert not profile().get("set-resources"), "profiles/slurm must not set per-rule resources"
    for path in RULES:
        text = path.read_text()
        assert not re.search(r"^\s+gpu\s*=\s*\d", text, re.M), f"{path.name}: a GPU request outside job_resources()"


def test_no_rule_hard_codes_site_facts():
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for key in SITE_KEYS:
            assert not re.search(rf"\b{key}\s*=", path.read_text()), f"{path.name} sets {key}"


def test_site_facts_are_commented_placeholders():
    text = (PROFILE / "config.yaml").read_text()
    for key in ("slurm_account", "slurm_partition"):
        assert re.search(rf"^\s*# {key}: CHANGE_ME", text, re.M), key
    # GPU model and partition are the config's cluster block, unset by default.
    cluster = yaml.safe_load((ROOT / "config/config.yaml").read_text())["cluster"]
    assert cluster["gpu_model"] is None and cluster["gpu_partition"] is None and cluster["gpu"] is True
    prof = profile()
    assert not any(key in prof["default-resources"] for key in SITE_KEYS), "a site fact is set, not a placeholder"
    assert prof["executor"] == "slurm" and prof["retries"] >= 1 and prof["rerun-incomplete"] is True
    assert prof["latency-wait"] >= 30 and prof["slurm-status-command"] == "squeue"


def test_default_profile_stays_local_and_local_gpu_runs_gpu_jobs_one_at_a_time():
    default = yaml.safe_load((ROOT / "profiles/default/config.yaml").read_text())
    assert "executor" not in default and not any(k.startswith("slurm") for k in default)
    assert yaml.safe_load((ROOT / "profiles/local-gpu/config.yaml").read_text())["resources"] == {"gpu": 1}


def _parse(*argv: str) -> dict:
    """Snakemake's view of the options after its profiles are merged (run in a child: it prints)."""
    code = (
        "import json, sys; from snakemake.cli import parse_args;"
        "_, a = parse_args(sys.argv[1:]);"
        "print(json.dumps({k: str(v) for k, v in vars(a).items()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, "--snakefile", str(ROOT / "Snakefile"), *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return yaml.safe_load(out.stdout.strip().splitlines()[-1])


def test_workflow_profile_replaces_the_default_profile():
    """`--workflow-profile profiles/slurm` (what the README says) gets every key of the slurm
    profile; `--profile profiles/slurm` also loads profiles/default, which wins where both set a
    key (cores): still the GPU requests and the 60 s latency wait (profiles/default leaves
    latency-wait unset for this reason), but the head node's cores."""
    wf = _parse("--workflow-profile", "profiles/slurm")
    assert (wf["executor"], wf["latency_wait"], wf["cores"], wf["retries"]) == ("slurm", "60", "256", "1")
    both = _parse("--profile", "profiles/slurm")
    assert both["executor"] == "slurm" and both["latency_wait"] == "60"
    assert both["set_resources"] in ("None", "{}")  # the rules size their requests
    # The small-cluster preset adds a short first poll to the workflow profile's keys.
    small = _parse("--workflow-profile", "profiles/slurm", "--profile", "profiles/slurm-small")
    assert small["executor"] == "slurm" and small["latency_wait"] == "60"
    assert small["slurm_init_seconds_before_status_checks"] == "5", small
    local = _parse("--profile", "profiles/local-gpu")
    assert "gpu" in local["resources"] and local["executor"] == "None"


@pytest.fixture(scope="module")
def default_config(tmp_path_factory) -> tuple[Path, Path]:
    """The default config/config.yaml with its corpus path made absolute, and an empty workdir."""
    d = tmp_path_factory.mktemp("slurm-dry")
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["corpus"]["inputs"] = [
        str(ROOT / p) if isinstance(p, str) else {**p, "path": str(ROOT / p["path"])} for p in cfg["corpus"]["inputs"]
    ]
    path = d / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (d / "work").mkdir()
    return d / "work", path


def _no_slurm_path(tmp: Path) -> str:
    """A PATH with the tools Snakemake uses and no Slurm client: a laptop or CI runner."""
    bindir = tmp / "bin"
    bindir.mkdir(exist_ok=True)
    for tool in ("which", "sh", "bash", "git", "uname", "env"):
        found = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if found and not (bindir / tool).exists():
            (bindir / tool).symlink_to(found)
    return os.pathsep.join([str(Path(sys.executable).parent), str(bindir)])


CASES = {
    "workflow-profile": ("--workflow-profile", []),
    "profile": ("--profile", []),
    # A cluster without GPUs and nodes of 3.2 GB (the oracle's 3,500 MB is capped): every GPU rule a CPU job, no request above the cap.
    "cpu-only": ("--workflow-profile", ["--config", "cluster={gpu: false, max_mem_mb: 3200}"]),
    # One rule's memory changed on the command line: the other rules keep their computed requests.
    "set-resources": ("--workflow-profile", ["--set-resources", "pds_solve:mem_mb=20000"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_preflight_dry_run_shows_each_job_with_its_sized_request(default_config, case, tmp_path):
    flag, extra = CASES[case]
    work, cfg = default_config
    env = smk_env(work)
    env.pop("SLURM_CONF", None)
    env["PATH"] = _no_slurm_path(tmp_path)  # the dry run needs no sbatch
    proc = subprocess.run(
        smk_cmd(work, cfg, "-n", *extra, profile_flag=flag), env=env, capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    resources = {}
    for m in re.finditer(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, re.M):
        resources.setdefault(m.group(1), dict(kv.split("=", 1) for kv in m.group(2).split(", ")))
    config = yaml.safe_load(cfg.read_text())
    gpu = case != "cpu-only"
    if not gpu:
        config["cluster"] = {"gpu": False, "max_mem_mb": 3200}
    sized = [r for r in gpu_rules() if r in resources]
    assert {"train_lm", "pds_solve", "fit_scorer", "score_pool", "eval_ppl", "mates_oracle"} <= set(sized)
    for rule in sized:
        res = resources[rule]
        mem, runtime = requested(rule, config, gpu=gpu)
        if case == "set-resources" and rule == "pds_solve":
            mem = 20000
        assert (res["mem_mb"], res["runtime"]) == (str(mem), str(runtime)), (rule, res)
        assert res["gpu"] == ("1" if gpu else "0"), (rule, res)
        assert ("cpus_per_gpu" in res) == gpu and "slurm_partition" not in res, (rule, res)
        if not gpu:
            assert int(res["cpus_per_task"]) >= 1 and int(res["mem_mb"]) <= 3200, (rule, res)
    if not gpu:  # on CPU the requests differ by what each job holds: the solver, the oracle most
        mem = {r: int(resources[r]["mem_mb"]) for r in ("train_lm", "pds_solve", "mates_oracle")}
        assert mem["mates_oracle"] > mem["pds_solve"] > mem["train_lm"], mem
    for rule in set(resources) - set(gpu_rules()):
        assert "gpu" not in resources[rule], rule
