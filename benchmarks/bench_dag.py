"""Workflow overhead: wall time of `snakemake -n` on Winnow's Snakefile vs a bare Snakefile of the same DAG shape.

Issue 9 targets: a dry run with ``tokenize.num_shards: 10000`` (default config otherwise: every
method and the bake-off) in < 10 s; a finished workflow's dry run ("Nothing to be done") in < 5 s.
Every figure is the median of ``--repeat`` runs of the real CLI in a temporary working directory
(``--directory``, ``--configfile``, ``--replace-workflow-config``, ``--cores 1``).

Jobs work on blocks of shards (``tokenize.shards_per_block``, default: at most 64 blocks), and the
readers of the corpus take ``tokens/manifest.json`` rather than a list of shard files, so the job
count follows the blocks. The reference is a generated Snakefile with no Python logic (no config
validation, no code hashes, no input functions) and the same job structure as ours at the same
size: B tokenize jobs, one merge of all B, seven scorers each with one fit and B per-block scoring
jobs plus a merge, and ~200 other jobs that read the manifest. Its time is Snakemake's own floor.

The finished case: the default config (``--quick``: the tests' tiny config) with every output
created empty, then ``snakemake --touch`` (which stamps them in DAG order and writes metadata), then
the dry run, which must say "Nothing to be done".

    python benchmarks/bench_dag.py --json benchmarks/results/dag.json
    python benchmarks/bench_dag.py --quick        # one repeat, the tiny config finished (< 1 min)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _rows import package_env, row, write_rows  # noqa: E402

TEN_K = 10_000
SCORERS = 7  # pds, mates_s{0,1}_k{1,2}, mates_pool, less_pool in the default config
CORPUS_READERS = 200  # jobs that read the corpus through its manifest (train_lm, eval_ppl, ...)
MAX_BLOCKS = 64  # the default tokenize.shards_per_block keeps the blocks at most this many


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
    """A Snakefile with our DAG's shape at ``n`` shards (default blocks) and no logic of ours."""
    blocks = -(-n // -(-n // MAX_BLOCKS))
    return f"""
BLOCKS = list(range({blocks}))
SCORERS = [f"s{{i}}" for i in range({SCORERS})]
READERS = list(range({CORPUS_READERS}))

rule all:
    input:
        expand("scores/{{scorer}}/scores.parquet", scorer=SCORERS),
        expand("reader/{{r}}.out", r=READERS),

rule docs:
    output: "data/docs.parquet"
    shell: "touch {{output}}"

rule tokenize:
    input: "data/docs.parquet"
    output: directory("tokens/block-{{block}}")
    shell: "mkdir -p {{output}}"

rule merge_examples:
    input: expand("tokens/block-{{block}}", block=BLOCKS)
    output: examples="tokens/examples.parquet", manifest="tokens/manifest.json"
    shell: "touch {{output}}"

rule fit_scorer:
    input: "tokens/examples.parquet", "tokens/manifest.json"
    output: "scorers/{{scorer}}/model.safetensors"
    shell: "touch {{output}}"

rule score_pool:
    input: "scorers/{{scorer}}/model.safetensors", "tokens/examples.parquet", "tokens/manifest.json"
    output: "scores/{{scorer}}/parts/{{block}}.parquet"
    shell: "touch {{output}}"

rule merge_scores:
    input: expand("scores/{{{{scorer}}}}/parts/{{block}}.parquet", block=BLOCKS)
    output: "scores/{{scorer}}/scores.parquet"
    shell: "touch {{output}}"

rule reader:
    input: "tokens/examples.parquet", "tokens/manifest.json"
    output: "reader/{{r}}.out"
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
    rows = [line.split("\t") for line in proc.stdout.splitlines()[1:] if "\t" in line]
    files = [r[0] for r in rows]
    for f, rule in ((r[0], r[2]) for r in rows):
        if rule == "tokenize":  # its output is a directory() (a block of shards)
            (work / f).mkdir(parents=True, exist_ok=True)
            continue
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


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--quick", action="store_true", help="one repeat, tiny finished config (< 1 min)")
    ap.add_argument("--sizes", type=int, nargs="*", help="shard counts to measure (default 1000 10000)")
    ap.add_argument("--repeat", type=int, default=None)
    args = ap.parse_args(argv)
    sizes = args.sizes or ([100, TEN_K] if args.quick else [1000, TEN_K])
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
            target = n == TEN_K
            rows.append(
                row(
                    f"dry run, {n:,} shards ({jobs} jobs; bare: {bare_jobs})",
                    ours,
                    bare,
                    10 if target else None,
                    "s",
                    "< 10 s" if target else "",
                    bool(ours < 10) if target else None,
                )
            )
        fin_cfg = tiny_config() if args.quick else default_config(2)
        t, n_files, times = finished_dry_run(tmp, fin_cfg, repeat)
        detail["finished_s"] = times
        name = "tests' tiny config" if args.quick else "default config, 2 shards"
        rows.append(
            row(f"dry run of a finished workflow ({name}, {n_files} outputs)", t, None, 5, "s", "< 5 s", bool(t < 5))
        )
    result = write_rows(args.json, "dag", package_env("snakemake", "tokenizers", "pyyaml"), rows, detail)
    for r in rows:
        print(f"{r['figure']}: ours {r['ours']:.3g} {r['unit']}, reference {r['reference']}, ratio {r['ratio']}")
    return result


if __name__ == "__main__":
    main()
