"""Workflow overhead: wall time of `snakemake -n` on Winnow's Snakefile vs a bare Snakefile of the same DAG shape.

Issue 9 targets: a dry run with ``tokenize.num_shards: 10000`` (default config otherwise, methods
[random, pds, ablation, mates, less]) in < 10 s; a finished workflow's dry run ("Nothing to be
done") in < 5 s. Every figure is the median of ``--repeat`` runs of the real CLI in a temporary
working directory (``--directory``, ``--configfile``, ``--replace-workflow-config``, ``--cores 1``).

The reference is a generated Snakefile with no Python logic (no config validation, no code hashes,
no input functions) and the same job structure as ours at the same shard count: N tokenize jobs,
one merge of all N, five scorers each with one fit (all N shards as input) and N per-shard scoring
jobs plus a merge, ~60 jobs that take all N shards as input and ~140 small jobs. Its time is what
Snakemake itself needs for that many jobs and edges: our floor.

The 10,000-shard figure is extrapolated from the largest sizes measured (a power law through the
two largest, exponent at least 1). It is a lower bound: past a few thousand shards the cost grows
faster (Snakemake compares every per-shard job's request against producers whose input lists all
N shards), so ``--measure-10k`` runs the real thing (~10 minutes on 2 cores).

The finished case: the default config (``--quick``: the tests' tiny config) with every output
created empty, then ``snakemake --touch`` (which stamps them in DAG order and writes metadata), then
the dry run, which must say "Nothing to be done".

    python benchmarks/bench_dag.py --json benchmarks/results/dag.json
    python benchmarks/bench_dag.py --quick        # small sizes (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TEN_K = 10_000
SCORERS = 5  # pds + mates_s{0,1}_k{1,2} in the default config
ALL_SHARD_CONSUMERS = 60  # jobs whose input lists every token shard (train_lm, eval_ppl, ...)
SMALL_JOBS = 140


def snakemake_cmd(snakefile: Path, workdir: Path, configfile: Path | None, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--directory", str(workdir)]
    if configfile:
        cmd += ["--configfile", str(configfile), "--replace-workflow-config"]
    return cmd + ["--cores", "1", *args]


def run_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def timed(cmd: list[str], repeat: int) -> tuple[float, str, list[float]]:
    """Median wall seconds of ``cmd`` and the output of its last run (fails loudly)."""
    times, out = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env())
        times.append(time.perf_counter() - t0)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-4000:]}")
    return statistics.median(times), out, times


def total_jobs(out: str) -> int | None:
    m = re.search(r"^total\s+(\d+)", out, re.M)
    return int(m.group(1)) if m else None


def default_config(num_shards: int) -> dict:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["corpus"]["inputs"] = [
        str(ROOT / i) if isinstance(i, str) else {**i, "path": str(ROOT / i["path"])} for i in cfg["corpus"]["inputs"]
    ]
    cfg["tokenize"]["num_shards"] = num_shards
    return cfg


def tiny_config() -> dict:
    cfg = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    cfg["corpus"]["inputs"] = [str(ROOT / p) for p in cfg["corpus"]["inputs"]]
    return cfg


def bare_snakefile(n: int) -> str:
    """A Snakefile with our DAG's shape at ``n`` shards and no logic of ours."""
    return f"""
SHARDS = list(range({n}))
SCORERS = [f"s{{i}}" for i in range({SCORERS})]
CONSUMERS = list(range({ALL_SHARD_CONSUMERS}))
SMALL = list(range({SMALL_JOBS}))

rule all:
    input:
        expand("scores/{{scorer}}/scores.parquet", scorer=SCORERS),
        expand("consumer/{{c}}.out", c=CONSUMERS),
        expand("small/{{i}}.out", i=SMALL),

rule docs:
    output: "data/docs.parquet"
    shell: "touch {{output}}"

rule tokenize:
    input: "data/docs.parquet"
    output: tokens="tokens/tokens-{{shard}}.bin", examples="tokens/examples-{{shard}}.parquet"
    shell: "touch {{output}}"

rule merge_examples:
    input: expand("tokens/examples-{{shard}}.parquet", shard=SHARDS)
    output: examples="tokens/examples.parquet", manifest="tokens/manifest.json"
    shell: "touch {{output}}"

rule fit_scorer:
    input: "tokens/examples.parquet", "tokens/manifest.json", expand("tokens/tokens-{{shard}}.bin", shard=SHARDS)
    output: "scorers/{{scorer}}/model.safetensors"
    shell: "touch {{output}}"

rule score_pool:
    input:
        "scorers/{{scorer}}/model.safetensors", "tokens/examples.parquet", "tokens/manifest.json",
        "tokens/tokens-{{shard}}.bin",
    output: "scores/{{scorer}}/parts/{{shard}}.parquet"
    shell: "touch {{output}}"

rule merge_scores:
    input: expand("scores/{{{{scorer}}}}/parts/{{shard}}.parquet", shard=SHARDS)
    output: "scores/{{scorer}}/scores.parquet"
    shell: "touch {{output}}"

rule consumer:
    input: "tokens/manifest.json", expand("tokens/tokens-{{shard}}.bin", shard=SHARDS)
    output: "consumer/{{c}}.out"
    shell: "touch {{output}}"

rule small:
    input: "tokens/manifest.json"
    output: "small/{{i}}.out"
    shell: "touch {{output}}"
"""


def dry_run_ours(tmp: Path, cfg: dict, repeat: int) -> tuple[float, int | None, list[float]]:
    n = cfg["tokenize"]["num_shards"]
    work = tmp / f"ours-{n}"
    work.mkdir(exist_ok=True)
    cfg_path = tmp / f"config-{n}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = snakemake_cmd(ROOT / "Snakefile", work, cfg_path, "-n", "--quiet", "rules", "host", "reason")
    t, out, times = timed(cmd, repeat)
    return t, total_jobs(out), times


def dry_run_bare(tmp: Path, n: int, repeat: int) -> tuple[float, int | None, list[float]]:
    work = tmp / f"bare-{n}"
    work.mkdir(exist_ok=True)
    snakefile = tmp / f"bare-{n}.smk"
    snakefile.write_text(bare_snakefile(n))
    t, out, times = timed(snakemake_cmd(snakefile, work, None, "-n", "--quiet", "rules", "host", "reason"), repeat)
    return t, total_jobs(out), times


def finished_dry_run(tmp: Path, cfg: dict, repeat: int) -> tuple[float, int, list[float]]:
    """Make every output of ``cfg``'s plan exist (empty, then ``--touch``), then time the dry run."""
    work = tmp / "finished"
    work.mkdir(exist_ok=True)
    cfg_path = tmp / "config-finished.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    snakefile = ROOT / "Snakefile"
    proc = subprocess.run(
        snakemake_cmd(snakefile, work, cfg_path, "--summary", "-q"), capture_output=True, text=True, env=run_env()
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    files = [line.split("\t")[0] for line in proc.stdout.splitlines()[1:] if "\t" in line]
    for f in files:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        (work / f).touch()
    subprocess.run(
        snakemake_cmd(snakefile, work, cfg_path, "--touch", "-q"), capture_output=True, env=run_env(), check=True
    )
    t, out, times = timed(snakemake_cmd(snakefile, work, cfg_path, "-n"), repeat)
    if "Nothing to be done" not in out:
        raise RuntimeError(f"the finished workflow still has jobs to run:\n{out[-4000:]}")
    return t, len(files), times


def parse_only(tmp: Path, cfg: dict, repeat: int) -> tuple[float, list[float]]:
    """`snakemake --list-rules`: imports, config validation, code hashes, rule definitions; no DAG."""
    cfg_path = tmp / "config-parse.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    work = tmp / "parse"
    work.mkdir(exist_ok=True)
    t, _, times = timed(snakemake_cmd(ROOT / "Snakefile", work, cfg_path, "--list-rules"), repeat)
    return t, times


def environment() -> dict:
    import importlib.metadata as md

    env = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "machine": platform.machine()}
    for name in ("snakemake", "tokenizers", "pyyaml"):
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            env[name] = None
    env["date_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return env


def row(figure, ours, reference, limit, unit, target, met) -> dict:
    ratio = ours / reference if reference else None
    return {
        "figure": figure,
        "ours": round(ours, 3),
        "reference": round(reference, 3) if reference is not None else None,
        "ratio": round(ratio, 3) if ratio is not None else None,
        "limit": limit,
        "unit": unit,
        "target": target,
        "met": met,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat (< 1 min)")
    ap.add_argument("--sizes", type=int, nargs="*", help="shard counts to measure (default 250 500 1000)")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--measure-10k", action="store_true", help="also run the 10,000-shard dry run (minutes)")
    args = ap.parse_args(argv)
    sizes = args.sizes or ([10, 20] if args.quick else [250, 500, 1000])
    repeat = args.repeat or (1 if args.quick else 3)
    rows, detail = [], {"sizes": {}}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t, times = parse_only(tmp, default_config(2), repeat)
        rows.append(row("parse only (snakemake --list-rules), default config", t, None, None, "s", "", None))
        detail["parse_s"] = times
        for n in sizes:
            ours, jobs, ours_times = dry_run_ours(tmp, default_config(n), repeat)
            bare, bare_jobs, bare_times = dry_run_bare(tmp, n, repeat)
            detail["sizes"][n] = {"ours_s": ours_times, "bare_s": bare_times, "jobs": jobs, "bare_jobs": bare_jobs}
            rows.append(row(f"dry run, {n} shards ({jobs} jobs; bare: {bare_jobs})", ours, bare, None, "s", "", None))
        (n1, n2) = sizes[-2:]
        s1, s2 = detail["sizes"][n1], detail["sizes"][n2]
        # The job count grows linearly in N, so an exponent below 1 (small sizes, start-up dominated) is noise.
        ours_exp = max(
            1.0, math.log(statistics.median(s2["ours_s"]) / statistics.median(s1["ours_s"])) / math.log(n2 / n1)
        )
        bare_exp = max(
            1.0, math.log(statistics.median(s2["bare_s"]) / statistics.median(s1["bare_s"])) / math.log(n2 / n1)
        )
        ours_10k = statistics.median(s2["ours_s"]) * (TEN_K / n2) ** ours_exp
        bare_10k = statistics.median(s2["bare_s"]) * (TEN_K / n2) ** bare_exp
        detail["growth_exponent"] = {"ours": ours_exp, "bare": bare_exp}
        rows.append(
            row(
                f"dry run, 10,000 shards, extrapolated from {n2} (∝ N^{ours_exp:.2f}; bare ∝ N^{bare_exp:.2f}; a lower bound)",
                ours_10k,
                bare_10k,
                10,
                "s",
                "< 10 s",
                bool(ours_10k < 10),
            )
        )
        if args.measure_10k:
            ours, jobs, ours_times = dry_run_ours(tmp, default_config(TEN_K), 1)
            bare, bare_jobs, bare_times = dry_run_bare(tmp, TEN_K, 1)
            detail["sizes"][TEN_K] = {"ours_s": ours_times, "bare_s": bare_times, "jobs": jobs, "bare_jobs": bare_jobs}
            rows.append(
                row(f"dry run, 10,000 shards, measured ({jobs} jobs)", ours, bare, 10, "s", "< 10 s", ours < 10)
            )
        fin_cfg = tiny_config() if args.quick else default_config(2)
        t, n_files, times = finished_dry_run(tmp, fin_cfg, repeat)
        detail["finished_s"] = times
        name = "tests' tiny config" if args.quick else "default config, 2 shards"
        rows.append(
            row(f"dry run of a finished workflow ({name}, {n_files} outputs)", t, None, 5, "s", "< 5 s", bool(t < 5))
        )
    result = {
        "bench": "dag",
        "env": environment(),
        "command": " ".join(["python", "benchmarks/bench_dag.py", *(argv if argv is not None else sys.argv[1:])]),
        "rows": rows,
        "detail": detail,
    }
    for r in rows:
        print(f"{r['figure']}: ours {r['ours']} {r['unit']}, reference {r['reference']}, ratio {r['ratio']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
