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
from _slurmtest import PROFILE, ROOT, gpu_rules, profile, smk_cmd, smk_env

SITE_KEYS = ("slurm_partition", "slurm_account", "gpu_model", "constraint", "qos", "slurm_extra", "gres")


def test_every_gpu_rule_has_gpu_resources_in_the_profile():
    rules = gpu_rules()
    assert {"train_lm", "pds_init", "pds_solve", "fit_scorer", "score_pool", "eval_ppl", "eval_harness"} <= set(rules)
    sets = profile()["set-resources"]
    missing = sorted(set(rules) - set(sets))
    assert not missing, f"GPU rules without an entry in profiles/slurm set-resources: {missing}"
    for rule in rules:
        res = sets[rule]
        assert int(res["gpu"]) >= 1, rule
        assert res["cpus_per_gpu"] == "threads", rule
        for key in ("mem_mb", "runtime"):  # grow on the retry: expressions of `attempt`
            one, two = (eval(str(res[key]), {"attempt": a}) for a in (1, 2))  # noqa: S307 - our own profile
            assert two > one > 0, (rule, key, res[key])


def test_no_rule_hard_codes_site_facts():
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for key in SITE_KEYS:
            assert not re.search(rf"\b{key}\s*=", path.read_text()), f"{path.name} sets {key}"


def test_site_facts_are_commented_placeholders():
    text = (PROFILE / "config.yaml").read_text()
    for key in ("slurm_account", "slurm_partition", "gpu_model"):
        assert re.search(rf"^\s*# {key}: CHANGE_ME", text, re.M), key
    prof = profile()
    live = [prof["default-resources"], *prof["set-resources"].values()]
    assert not any(key in res for res in live for key in SITE_KEYS), "a site fact is set, not a placeholder"
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
    assert "train_lm" in both["set_resources"]
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


@pytest.mark.parametrize("flag", ["--profile", "--workflow-profile"])
def test_preflight_dry_run_shows_gpu_rules_with_their_gpu_requests(default_config, flag, tmp_path):
    work, cfg = default_config
    env = smk_env(work)
    env.pop("SLURM_CONF", None)
    env["PATH"] = _no_slurm_path(tmp_path)  # the dry run needs no sbatch
    proc = subprocess.run(
        smk_cmd(work, cfg, "-n", profile_flag=flag), env=env, capture_output=True, text=True, timeout=600
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    resources = {}
    for m in re.finditer(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out, re.M):
        resources.setdefault(m.group(1), m.group(2))
    sets = profile()["set-resources"]
    gpu = [r for r in gpu_rules() if r in resources]
    assert {"train_lm", "pds_solve", "fit_scorer", "score_pool", "eval_ppl"} <= set(gpu), sorted(resources)
    for rule in gpu:
        res = dict(kv.split("=", 1) for kv in resources[rule].split(", "))
        mem = eval(str(sets[rule]["mem_mb"]), {"attempt": 1})  # noqa: S307 - our own profile
        assert res["gpu"] == "1" and res["mem_mb"] == str(mem), (rule, res)
        assert int(res["cpus_per_gpu"]) >= 1 and "slurm_partition" not in res, (rule, res)
    for rule in set(resources) - set(gpu_rules()):
        assert "gpu=" not in resources[rule], rule
