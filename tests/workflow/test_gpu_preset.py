"""Issue 21: the GPU preset (config/presets/gpu.yaml) plans every method's jobs on a CPU machine,
and every job of a GPU rule carries its GPU request. The large corpus is not built in CI, so the
preset's corpus is swapped for the bundled one; everything else is the preset as shipped."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from conftest import ROOT, planned_jobs, smk, write_config


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _gpu_rules() -> set[str]:
    """Rules whose resources come from job_resources(...): the heavy (GPU) jobs."""
    names, bases = set(), {}
    for smk_file in (ROOT / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule |use rule )", smk_file.read_text()):
            m = re.match(r"rule (\w+)|use rule (\w+) as (\w+)", block)
            if m and "job_resources(" in block:
                names.add(m.group(1) or m.group(3))
            elif m and m.group(2):  # `use rule BASE as NAME with:` keeps BASE's resources
                bases[m.group(3)] = m.group(2)
    return names | {name for name, base in bases.items() if base in names}


def test_gpu_preset_plans_every_method_with_gpu_requests(tmp_path: Path):
    cfg = _merged(
        yaml.safe_load((ROOT / "config" / "config.yaml").read_text()),
        yaml.safe_load((ROOT / "config" / "presets" / "gpu.yaml").read_text()),
    )
    assert cfg["model"]["hidden_size"] == 512 and cfg["tokenize"]["seq_len"] >= 512
    cfg["corpus"]["inputs"] = [str(ROOT / "data" / "default_corpus" / "corpus.parquet")]
    config = write_config(tmp_path / "gpu.yaml", cfg)
    proc = smk(tmp_path, config, "-n", "--profile", str(ROOT / "profiles" / "local-gpu"))
    jobs = planned_jobs(proc)
    for rule in ("train_lm", "pds_solve", "score_pool", "mates_oracle", "less_features", "ablation_component"):
        assert jobs.get(rule, 0) > 0, f"{rule} not planned: {jobs}"
    gpu_rules = _gpu_rules()
    assert {"train_lm", "pds_solve", "less_features"} <= gpu_rules
    blocks = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", proc.stdout, flags=re.M)
    checked = 0
    for rule, body in blocks:
        if rule in gpu_rules:
            resources = re.search(r"^    resources: (.*)$", body, flags=re.M)
            assert resources and re.search(r"\bgpu=1\b", resources.group(1)), f"{rule}: {body}"
            assert re.search(r"\bmem_mb=\d+", resources.group(1)) and "runtime=" in resources.group(1)
            checked += 1
    assert checked == sum(n for r, n in jobs.items() if r in gpu_rules)
