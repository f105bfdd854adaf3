"""Issue 18, item 7: the tutorial docs/own-experiment.md, followed literally.

The test reads the page's marked code blocks (the data script, the corpus block, the complete
config) and its commands, so page and test cannot drift: a user-style corpus (other domains, other
field and file names, jsonl + parquet + a datasets save_to_disk folder), the copied defaults failing
at the data contract with the named keys before any training job, then a local Llama folder with its
own tokenizer, an external score file, LESS on its own instruction files, a benchmark through
lm-eval: the spine, PDS, LESS and the external arm run and the report builds. Renaming the input
files changes no document id and no split.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, planned_jobs, smk

pytestmark = pytest.mark.slow

DOC = ROOT / "docs" / "own-experiment.md"
R = "results/myexp"
CONFIG = "my-experiment.yaml"
HAVE = "(have: manuals, plays, scripture)"


def _block(marker: str) -> str:
    """The fenced code block right after ``<!-- own-experiment: {marker} -->`` in the page."""
    m = re.search(rf"<!-- own-experiment: {re.escape(marker)} -->\n```\w+\n(.*?)\n```", DOC.read_text(), re.S)
    assert m, f"no block {marker!r} in {DOC}"
    return m.group(1) + "\n"


def _commands() -> list[str]:
    """Every line of the page's ```bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)\n```", DOC.read_text(), re.S)
    return [ln for b in blocks for ln in b.splitlines() if ln.strip()]


SNAKEMAKE = f"snakemake --cores 2 --configfile {CONFIG} --replace-workflow-config"


def _snakemake(work: Path, *args: str, check: bool = True):
    """A ``snakemake`` command of the page, run as written (smk adds only the Snakefile's path)."""
    line = " ".join([SNAKEMAKE, *args])
    assert line in _commands(), f"the page has no command {line!r}"
    return smk(work, work / CONFIG, *args, check=check, timeout=900)


def _run(work: Path, line: str) -> None:
    """A non-snakemake command of the page, run as written in the project root ``work``."""
    assert line in _commands(), f"the page has no command {line!r}"
    argv = shlex.split(line)
    if argv[0] == "python":
        argv[0] = sys.executable
    subprocess.run(argv, cwd=work, check=True, capture_output=True, text=True)


def _project(work: Path) -> None:
    """A project root as the page assumes it: the checkout's data and tools the page uses."""
    (work / "data" / "default_corpus").mkdir(parents=True)
    shutil.copy(ROOT / "data" / "default_corpus" / "corpus.parquet", work / "data" / "default_corpus")
    shutil.copytree(ROOT / "data" / "tasks", work / "data" / "tasks")
    shutil.copytree(ROOT / "tools", work / "tools")
    (work / "make_my_data.py").write_text(_block("make_my_data.py"))
    _run(work, "python make_my_data.py")


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    work = tmp_path_factory.mktemp("own_experiment") / "project"
    work.mkdir()
    _project(work)
    # step 2: the defaults with only the corpus block changed
    assert "cp config/config.yaml my-experiment.yaml" in _commands()
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg.update(yaml.safe_load(_block("corpus block")))
    (work / CONFIG).write_text(yaml.safe_dump(cfg, sort_keys=False))
    first = _snakemake(work, check=False)
    again = _snakemake(work, "-n", check=False)
    # step 3: the external score file; step 4: the model
    _run(work, f"python -m winnow select heuristic-scores --docs {R}/data/docs.parquet --out mydata/scores.tsv")
    _run(work, next(c for c in _commands() if c.startswith("python tools/make_local_model.py")))
    # step 5, 6: the complete config, checked, run, reported
    (work / CONFIG).write_text(_block("my-experiment.yaml"))
    plan = planned_jobs(_snakemake(work, "-n"))
    _snakemake(work)
    return work, first, again, plan


def test_the_page_config_is_complete_and_shares_the_corpus_block():
    full = yaml.safe_load(_block("my-experiment.yaml"))
    corpus = yaml.safe_load(_block("corpus block"))
    assert full["corpus"] == corpus["corpus"] and full["run"] == corpus["run"]
    inputs = full["corpus"]["inputs"]
    assert {Path(p).suffix for p in inputs} == {".jsonl", ".parquet", ""}  # the folder: save_to_disk
    assert full["methods"] == ["random", "pds", "less", "external"] and full["seeds"] == [0]


def test_the_copied_defaults_fail_at_the_contract_naming_keys(tutorial):
    work, first, again, _ = tutorial
    assert first.returncode != 0
    out = first.stdout + first.stderr
    problems = (
        f"subsets.pds_target.domains: shakespeare not in corpus {HAVE}",
        f"subsets.pds_target_eval.domains: shakespeare not in corpus {HAVE}",
        f"subsets.ablation_seed.domains: fortunes not in corpus {HAVE}",
        f"ablation.partitions: kjv not in corpus {HAVE}",
        "less.data.target_task: define is built from domain wordnet",
        "subsets.pds_proxy.n: 1024 examples asked,",
    )
    assert "the config asks for data the corpus does not have" in out
    for problem in problems:
        assert problem in out, problem
        assert problem.split(":")[0] in DOC.read_text()  # the page shows the same message
    assert "Traceback" not in out
    # the dry run after it: refused at parse time, same message, no job planned
    assert again.returncode != 0
    text = again.stdout + again.stderr
    assert f"subsets.pds_target.domains: shakespeare not in corpus {HAVE}" in text and "Job stats" not in text
    assert "Traceback" not in text


def test_no_training_job_started_before_the_contract_passed(tutorial):
    """The first run's logs (the later run's jobs log under the same tree, so read the first
    run's console instead): only ingest, tokenizer, tokenize and the contract ran."""
    _, first, _, _ = tutorial
    out = first.stdout + first.stderr
    ran = set(re.findall(r"^rule (\w+):", out, re.M)) | set(re.findall(r"^localrule (\w+):", out, re.M))
    assert ran and ran <= {"ingest", "tokenizer", "tokenize", "merge_examples", "contract"}, ran


def test_the_fixed_config_runs_every_arm(tutorial):
    work, _, _, plan = tutorial
    assert plan["contract"] == 1 and plan["tokenizer"] == 1 and "ingest" not in plan  # the corpus was read once
    run = work / R
    # the local Llama and its own tokenizer
    model = yaml.safe_load((run / "models/random/s0/model/config.json").read_text())
    assert model["model_type"] == "llama"
    # every arm trained, evaluated on the benchmark, compared with random
    summary = (run / "eval/summary.tsv").read_text()
    for arm in ("random", "pds", "external-heuristic"):
        assert (run / f"eval/{arm}/s0/harness-tasks.json").is_file(), arm
        assert f"\n{arm}\t" in summary, arm
    assert "arc_corpus/acc" in summary.splitlines()[0]
    for table in ("compare-pds.tsv", "compare-external-heuristic.tsv"):
        assert "target/pds_target_eval" in (run / "eval" / table).read_text()
    report = yaml.safe_load((run / "external/heuristic/report.json").read_text())
    assert report["coverage"] == 1.0
    # LESS on the user's instruction files, one subtask per domain
    manifest = yaml.safe_load((run / "less/data/manifest.json").read_text())
    assert manifest["source"] == "files"
    assert (run / "less/compare.tsv").is_file()
    subtasks = pq.read_table(run / "less/data/subtasks.parquet")["subtask"].to_pylist()
    assert set(subtasks) == {"plays", "scripture", "manuals"}


def test_the_report_builds(tutorial):
    work, _, _, _ = tutorial
    _snakemake(work, "--report", "report.zip")
    page = next(n for n in zipfile.ZipFile(work / "report.zip").namelist() if n.endswith("report.html"))
    html = zipfile.ZipFile(work / "report.zip").read(page).decode()
    assert "Run status" in html


def test_renaming_the_input_files_changes_no_id_and_no_split(tutorial, tmp_path):
    work, _, _, _ = tutorial
    other = tmp_path / "project"
    (other / "renamed").mkdir(parents=True)
    shutil.copy(work / "mydata/articles.jsonl", other / "renamed/zz_first.jsonl")
    shutil.copy(work / "mydata/archive.parquet", other / "renamed/aa_second.parquet")
    shutil.copytree(work / "mydata/crawl_hf", other / "renamed/hf_folder")
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())  # step 2's config
    cfg.update(yaml.safe_load(_block("corpus block")))
    cfg["corpus"]["inputs"] = ["renamed/hf_folder", "renamed/zz_first.jsonl", "renamed/aa_second.parquet"]
    (other / "c.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    smk(other, other / "c.yaml", f"{R}/data/docs.parquet")

    def ids(root: Path) -> dict[str, str]:
        t = pq.read_table(root / R / "data/docs.parquet", columns=["doc_id", "split"]).to_pydict()
        return dict(zip(t["doc_id"], t["split"]))

    before, after = ids(work), ids(other)
    assert len(before) == 240 and before == after
    assert set(before) == {f"{d}-{i:03d}" for d in ("plays", "scripture", "manuals") for i in range(80)}
