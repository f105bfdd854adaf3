"""Dry-run properties of the DAG: lint, formatting, job counts, targets, config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, planned_jobs, smk, tiny_config, write_config

SPINE_JOBS = {  # tiny.yaml: 3 shards, methods random + pds, one seed, one eval target
    "ingest": 1,
    "tokenizer": 1,
    "tokenize": 2,  # blocks of 2 shards: {0, 1} and {2}
    "merge_examples": 1,
    "contract": 1,  # the data contract: every subset/partition/task reader waits for it
    "sample_subset": 2,  # pool, pds_target_eval
    "random_scores": 1,
    "select": 1,
    "train_lm": 1,
    "eval_tasks": 1,
    "eval_ppl": 1,
    "eval_harness": 1,
    "eval_target": 1,
    "spine": 1,
}
PDS_JOBS = {
    "pds_init": 1,
    "pds_solve": 1,
    "fit_scorer": 1,
    "score_pool": 2,  # one per block of token shards
    "merge_scores": 1,
    "eval_compare": 1,
}
# ---- modular data ablations (tiny.yaml: 3 partitions, pairs, seed mix of 2 other domains, a macro) ----
DATA_JOBS = {"ingest": 1, "tokenizer": 1, "tokenize": 2, "merge_examples": 1, "contract": 1}
ABLATION_JOBS = {
    "ablation_partition": 5,  # kjv, pydocs, shakespeare + the seed mix's fortunes, milton
    "ablation_mixture_ids": 4,  # 3 pairs + the seed mix (fortunes+milton)
    "ablation_seed": 1,
    "ablation_component": 3,
    "ablation_mixture": 3,
    "ablation_merge": 3,
    "ablation_macro": 1,
    "ablation_ppl": 11,  # seed + 3 components + 3 mixtures + 3 merges + 1 macro
    "ablation_correlate": 1,
}
# ---- end of the ablation block ----
ALL_JOBS = {
    **{k: v for k, v in SPINE_JOBS.items() if k != "spine"},
    **PDS_JOBS,
    **ABLATION_JOBS,
    "sample_subset": 4,  # + pds_proxy, pds_target (what PDS optimises)
    "select": 2,
    "train_lm": 2,
    "eval_ppl": 2,
    "eval_harness": 2,
    "eval_target": 2,
    "eval_table": 1,
    "report_plots": 1,
    "all": 1,
}


def test_lint_is_clean(tiny):
    work, cfg = tiny
    proc = smk(work, cfg, "--lint")
    assert "Congratulations" in proc.stdout + proc.stderr


def test_snakefmt_check_is_clean():
    files = [str(ROOT / "Snakefile"), *map(str, sorted((ROOT / "rules").glob("*.smk")))]
    proc = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_dry_run_plans_the_whole_workflow(tiny):
    work, cfg = tiny
    assert planned_jobs(smk(work, cfg, "-n")) == ALL_JOBS


def test_dry_run_of_the_spine_target_plans_no_method(tiny):
    work, cfg = tiny
    assert planned_jobs(smk(work, cfg, "-n", "spine")) == SPINE_JOBS


def test_dry_run_of_the_pds_target(tiny):
    work, cfg = tiny
    expected = {k: v for k, v in ALL_JOBS.items() if k not in ABLATION_JOBS}
    expected["pds"] = 1
    del expected["all"], expected["eval_table"], expected["report_plots"]
    assert planned_jobs(smk(work, cfg, "-n", "pds")) == expected


# ---- modular data ablations ----
def test_dry_run_of_the_ablation_target(tiny):
    work, cfg = tiny
    expected = {**DATA_JOBS, **ABLATION_JOBS, "ablation": 1}
    assert planned_jobs(smk(work, cfg, "-n", "ablation")) == expected


def test_without_ablation_in_methods_the_default_target_plans_none(tmp_path: Path):
    work = tmp_path / "w"
    work.mkdir()
    cfg = write_config(tmp_path / "c.yaml", {**tiny_config(), "methods": ["random", "pds"]})
    jobs = planned_jobs(smk(work, cfg, "-n"))
    assert not set(jobs) & set(ABLATION_JOBS)
    # The block is still there: `snakemake ablation` runs it on request.
    assert planned_jobs(smk(work, cfg, "-n", "ablation"))["ablation_component"] == 3


def test_ablation_config_errors_name_the_key(tmp_path: Path):
    work = tmp_path / "w"
    work.mkdir()
    cases = [
        ({"ablation": None}, "config key ablation is required"),
        ({"mixtures": [["kjv", "milton"]]}, "not partitions"),
        ({"partitions": ["kjv", "py+docs"]}, "py+docs"),
        ({"macro_merges": {"m": [["kjv"], ["wordnet"]]}}, "ablation.macro_merges.m"),
        ({"seed_mix": "no_such_subset"}, "ablation.seed_mix"),
    ]
    for i, (change, message) in enumerate(cases):
        cfg = tiny_config()
        if change.get("ablation", 0) is None:
            del cfg["ablation"]
        else:
            cfg["ablation"].update(change)
        proc = smk(work, write_config(tmp_path / f"bad{i}.yaml", cfg), "-n", check=False)
        assert proc.returncode != 0, change
        assert message in proc.stdout + proc.stderr, (change, proc.stderr[-2000:])


# ---- end of the ablation block ----


def test_seeds_multiply_the_selection_branch(tmp_path: Path):
    work = tmp_path / "w"
    work.mkdir()
    cfg = write_config(tmp_path / "c.yaml", {**tiny_config(), "seeds": [0, 1, 2]})
    jobs = planned_jobs(smk(work, cfg, "-n"))
    for rule in ("eval_ppl", "eval_harness"):
        assert jobs[rule] == 6, rule  # 2 methods × 3 seeds
    # Scores do not depend on the seed (the seed drives the selection noise): computed once.
    # 3 shards, 2 a block: the tokenize jobs are the blocks {0, 1} and {2}.
    assert jobs["random_scores"] == 1 and jobs["tokenize"] == 2 and jobs["ingest"] == 1


def test_one_token_block_by_file_name_plans_only_its_ancestors(tiny):
    work, cfg = tiny
    jobs = planned_jobs(smk(work, cfg, "-n", "results/tiny/tokens/block-1"))
    assert jobs == {"ingest": 1, "tokenizer": 1, "tokenize": 1}


def test_ten_thousand_shards_plan_jobs_per_block_with_short_commands(tmp_path: Path):
    """Issue 9: with 10,000 shards the DAG has one tokenize / score_pool job per block (≤ 64 by
    default), and no job's command lists the shards (the kernel refuses one argument > 128 KiB)."""
    work = tmp_path / "w"
    work.mkdir()
    cfg = tiny_config()
    cfg["methods"] = ["random", "pds", "ablation", "mates", "less", "bakeoff"]
    cfg["bakeoff"] = {"n_probe": 16}
    for arm, direction, temperature in (("mates_pool", "lower", 0.5), ("less_pool", "higher", 0.0)):
        cfg["select"][arm] = {
            "direction": direction,
            "ratio": cfg["select"]["pds"]["ratio"],
            "temperature": temperature,
        }
    cfg["tokenize"] = {"seq_len": 64, "num_shards": 10_000}  # shards_per_block: the default
    proc = smk(work, write_config(tmp_path / "c.yaml", cfg), "-n", "-p")
    jobs = planned_jobs(proc)
    assert jobs["tokenize"] == 64  # ceil(10000 / 157) blocks of 157 shards
    # pds, mates_s{seed}_k{stage}, mates_pool, less_pool
    scorers = 1 + len(cfg["seeds"]) * (cfg["mates"]["stages"] - 1) + 2
    assert jobs["score_pool"] == 64 * scorers
    assert sum(jobs.values()) < 1500
    longest = max((proc.stdout + proc.stderr).splitlines(), key=len)
    assert len(longest.encode()) < 32 * 1024, longest[:300]
    assert "--shards " not in proc.stdout + proc.stderr


def test_misspelled_key_fails_before_any_job_and_names_the_key(tmp_path: Path):
    work = tmp_path / "w"
    work.mkdir()
    cfg = tiny_config()
    cfg["train"]["stpes"] = cfg["train"].pop("steps")
    proc = smk(work, write_config(tmp_path / "bad.yaml", cfg), "--cores", "2", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "stpes" in out
    assert not (work / "results").exists()


def test_random_selection_needs_a_positive_temperature(tmp_path: Path):
    work = tmp_path / "w"
    work.mkdir()
    cfg = tiny_config()
    cfg["select"]["random"]["temperature"] = 0.0
    proc = smk(work, write_config(tmp_path / "bad.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "select.random.temperature" in proc.stdout + proc.stderr


def test_paper_variant_with_a_contribution_interval_fails_at_parse_time(tmp_path: Path):
    """PDS's paper variant sums the proxy contributions over every step (Algorithm 1): interval 10
    (the schema's default, the released code's) is refused before any job, naming the key."""
    work = tmp_path / "w"
    work.mkdir()
    cfg = tiny_config()
    cfg["pds"]["solver"].update(variant="paper", interval=10)
    proc = smk(work, write_config(tmp_path / "bad.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "pds.solver.interval" in proc.stdout + proc.stderr
    cfg["pds"]["solver"]["interval"] = 1
    assert planned_jobs(smk(work, write_config(tmp_path / "good.yaml", cfg), "-n"))["pds_solve"] == 1


def test_zero_count_keys_and_the_ablation_lr_reach_the_commands(tmp_path: Path):
    """Selections and fractional subsets name their config key (an error when they would keep 0
    examples names it); without ablation.lr the components continue at the seed's final lr (null)."""
    work = tmp_path / "w"
    work.mkdir()
    cfg = tiny_config()
    del cfg["ablation"]["lr"]
    out = smk(work, write_config(tmp_path / "c.yaml", cfg), "-n", "-p").stdout
    for key in ("select.random.ratio", "select.pds.ratio", "subsets.pool.fraction"):
        assert f"--key {key}" in out, key
    component = next(line for line in out.splitlines() if "ablation/components/" in line and "train lm" in line)
    assert '"lr":null' in component and "--resume-from results/tiny/ablation/seed/model" in component


def test_misspelled_top_level_key_is_named(tmp_path: Path):
    work = tmp_path / "w"
    work.mkdir()
    cfg = tiny_config()
    cfg["method"] = cfg.pop("methods")
    proc = smk(work, write_config(tmp_path / "bad.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "'method'" in proc.stdout + proc.stderr


def test_the_no_network_guard_blocks_connections(tmp_path: Path):
    import os

    from conftest import NONET

    code = (
        "import socket\n"
        "s = socket.socket()\n"
        "try:\n"
        "    s.connect(('93.184.216.34', 443))\n"
        "except OSError as e:\n"
        "    print('blocked' if 'blocked by the test harness' in str(e) else 'other: ' + str(e))\n"
        "else:\n"
        "    print('connected')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(NONET))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "blocked"


def test_a_local_target_file_is_an_input_with_split_target(tmp_path: Path):
    """PDS's target can be any local jsonl/parquet: an input whose records all get split 'target'."""
    work = tmp_path / "w"
    work.mkdir()
    cfg = tiny_config()
    target = str(ROOT / "tests/data/bad_records.jsonl")
    cfg["corpus"]["inputs"] = [cfg["corpus"]["inputs"][0], {"path": target, "split": "target", "domain": "qa"}]
    cfg["subsets"]["pds_target"] = {"splits": ["target"], "domains": ["qa"], "n": 2, "seed": 0}
    proc = smk(work, write_config(tmp_path / "t.yaml", cfg), "-n", "-p")
    assert planned_jobs(proc) == ALL_JOBS
    assert "--input-options '{\"" in proc.stdout and '"split":"target"' in proc.stdout


def test_too_many_blocks_fail_at_parse_time_naming_the_key(tmp_path: Path):
    work = tmp_path / "w"
    work.mkdir()
    cfg = tiny_config()
    cfg["tokenize"] = {"seq_len": 64, "num_shards": 5000, "shards_per_block": 1}
    proc = smk(work, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "tokenize.shards_per_block" in proc.stdout + proc.stderr and "set it to ≥ 5" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "edit, keys",
    [
        (lambda c: c["eval"].update(targets=["pds_target"]), ["eval.targets (pds_target)", "subsets.pds_target"]),
        (
            lambda c: c["subsets"]["pds_target_eval"].update(splits=["val", "test"]),
            ["eval.targets (pds_target_eval)", "subsets.pds_target"],
        ),
        (
            lambda c: c.update(
                methods=[*c["methods"], "bakeoff"], bakeoff={"n_probe": 8, "primary": "target/pds_target"}
            ),
            ["bakeoff.primary", "subsets.pds_target"],
        ),
    ],
)
def test_an_evaluation_target_overlapping_the_selection_target_fails_at_parse_time(tmp_path: Path, edit, keys):
    cfg = tiny_config()
    edit(cfg)
    proc = smk(tmp_path, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for key in keys:
        assert key in out, out
    assert "Job stats" not in out
