"""Issue 17: a config is data, never code.

Every string a config can hold either reaches its program intact, as (part of) one argument of the
job's command, or is refused at parse time with a message that names its key; a name that becomes
a folder under results/{run}/ can never be '.', '..' or hold a '/'. The values below carry shell
syntax (quotes, $(), backticks, ;, &, |, redirections, globs) and Snakemake's own ({wildcards}).
"""

from __future__ import annotations

import ast
import functools
import json
import re
import shlex
import shutil
import string
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, all_methods_config, smk, tiny_config, write_config

SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
# A command pasted into a shell runs `touch PWNED…` in the job's folder (the workdir).
SHELL = "x'$(touch PWNED)\"`touch PWNED2`;touch PWNED3 & echo |cat <no >out *?\\ ~"
# Snakemake formats plain string params, inputs and outputs with the job's wildcards.
BRACES = "y {run} {{seed}} {part,[a-z]+}"
VALUES = {"shell": SHELL, "braces": BRACES}
MARKERS = {"shell": "touch PWNED", "braces": "{{seed}}"}


# ---- the walk: every key of the schema whose value (or name) is a free string ---------------------
def _resolve(node: dict) -> dict:
    while "$ref" in node:
        target = SCHEMA
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def string_keys(node: dict = SCHEMA, path: str = "") -> set[str]:
    """Dotted keys of every string the config can hold: ``a.b`` (a value), ``a[]`` (an array's
    items), ``a.*`` (a map's values), ``a.<name>`` (a map's own keys, named by the user)."""
    node = _resolve(node)
    out = set()
    types = node.get("type", [])
    if "string" in ([types] if isinstance(types, str) else types) and "enum" not in node:
        out.add(path)
    for key, sub in node.get("properties", {}).items():
        out |= string_keys(sub, f"{path}.{key}" if path else key)
    extra = node.get("additionalProperties")
    if path and (isinstance(extra, dict) or "propertyNames" in node):
        out.add(f"{path}.<name>")
    if isinstance(extra, dict):
        out |= string_keys(extra, f"{path}.*")
    if isinstance(node.get("items"), dict):
        out |= string_keys(node["items"], f"{path}[]")
    for combinator in ("oneOf", "anyOf", "allOf"):
        for sub in node.get(combinator, []):
            out |= string_keys(sub, path)
    return out


# ---- one setter per key: the value in a config that is otherwise valid --------------------------
def _corpus_copy(work: Path, name: str) -> str:
    """A copy of a small corpus file named ``name`` in the workdir (a relative path)."""
    shutil.copy(ROOT / "tests" / "data" / "bad_records.jsonl", work / name)
    return name


def _folder(work: Path, name: str, *files: str) -> str:
    (work / name).mkdir()
    for f in files:
        (work / name / f).write_bytes(b"")
    return name


def _hf_folder(work: Path, name: str) -> str:
    """A local model / tokenizer folder that passes the parse-time checks (docs/models.md); its files
    are inputs, and a dry run never loads them."""
    _folder(work, name, "model.safetensors")
    (work / name / "config.json").write_text('{"model_type": "gpt_neox", "vocab_size": 1024}')
    (work / name / "tokenizer.json").write_text('{"model": {"vocab": {}}, "added_tokens": []}')
    return name


def _set_input(c, v, w, form):
    inputs = c["corpus"]["inputs"]
    if form == "string":
        inputs[1] = _corpus_copy(w, v)
    elif form == "path":
        inputs[1] = {"path": _corpus_copy(w, v), "domain": "qa"}
    else:
        inputs[1] = {"path": inputs[1], "domain": v}


def _set_scorer(c, v, w, block, key):
    c[block]["scorer"][key] = _hf_folder(w, v)


def _set_less_files(c, value, w, key=None, field=None):
    """less.data.source: files with the example files copied into the workdir; ``key`` (a set's
    path: a copy under the name ``value``), ``chat_template`` or ``field`` set to ``value``."""
    example = ROOT / "tests" / "data" / "instruct"
    files = {"pool": "pool.jsonl", "target": "target.jsonl", "eval": "eval.parquet"}
    for name in files:
        renamed = key == name and value + Path(files[name]).suffix  # keeps the format's suffix
        shutil.copy(example / files[name], w / (renamed or files[name]))
        files[name] = renamed or files[name]
    if key == "chat_template":
        files["chat_template"] = value
    if field is not None:
        files["fields"] = {field: value}
    c["less"]["data"] = {**c["less"]["data"], "source": "files", "files": files}


def _set_external(c, v, w, key):
    """An external score file (a real file in the workdir) with ``v`` as its name, path or column."""
    c["methods"].append("external")
    (w / "scores.tsv").write_text("doc_id\tscore\n")
    spec = {"path": "scores.tsv", "format": "tsv"}
    if key == "path" and "{" not in v:
        (w / v).write_text("doc_id\tscore\n")
    if key in ("path", "score_column"):
        spec[key] = v
    c["external"] = {v if key == "<name>" else "demo": spec}


SETTERS = {
    "run": lambda c, v, w: c.update(run=v),
    "corpus.inputs[]": lambda c, v, w: _set_input(c, v, w, "string"),
    "corpus.inputs[].path": lambda c, v, w: _set_input(c, v, w, "path"),
    "corpus.inputs[].domain": lambda c, v, w: _set_input(c, v, w, "domain"),
    "corpus.text_field": lambda c, v, w: c["corpus"].update(text_field=v),
    "corpus.domain_field": lambda c, v, w: c["corpus"].update(domain_field=v),
    "corpus.id_field": lambda c, v, w: c["corpus"].update(id_field=v),
    "corpus.default_domain": lambda c, v, w: c["corpus"].update(default_domain=v),
    "tokenizer.path": lambda c, v, w: c["tokenizer"].update(kind="local", path=_hf_folder(w, v)),
    "model.pretrained": lambda c, v, w: c["model"].update(pretrained=_hf_folder(w, v)),
    "subsets.<name>": lambda c, v, w: c["subsets"].update({v: {"n": 4, "seed": 0}}),
    "subsets.*.domains[]": lambda c, v, w: c["subsets"]["pds_target"].update(domains=[v, "shakespeare"]),
    "bakeoff.primary": lambda c, v, w: c["bakeoff"].update(primary=v),
    "less.base": lambda c, v, w: c["less"].update(base=_hf_folder(w, v)),
    **{
        f"less.data.files.{k}": functools.partial(_set_less_files, key=k)
        for k in ("pool", "target", "eval", "chat_template")
    },
    **{
        f"less.data.files.fields.{k}": functools.partial(_set_less_files, field=k)
        for k in ("prompt", "response", "messages", "task", "subtask", "id")
    },
    "less.lora.target_modules[]": lambda c, v, w: c["less"]["lora"].update(target_modules=[v, "dense"]),
    "pds.scorer.pretrained": lambda c, v, w: _set_scorer(c, v, w, "pds", "pretrained"),
    "pds.scorer.tokenizer": lambda c, v, w: _set_scorer(c, v, w, "pds", "tokenizer"),
    "mates.scorer.pretrained": lambda c, v, w: _set_scorer(c, v, w, "mates", "pretrained"),
    "mates.scorer.tokenizer": lambda c, v, w: _set_scorer(c, v, w, "mates", "tokenizer"),
    "ablation.column": lambda c, v, w: c["ablation"].update(column=v),
    "ablation.partitions[]": lambda c, v, w: c["ablation"].update(partitions=[v, "pydocs", "shakespeare"]),
    "ablation.seed_mix": lambda c, v, w: c["ablation"].update(seed_mix=v),
    "ablation.seed_mix[]": lambda c, v, w: c["ablation"].update(seed_mix=[v, "milton"]),
    "ablation.mixtures[][]": lambda c, v, w: c["ablation"].update(mixtures=[[v, "kjv"]]),
    "ablation.macro_merges.<name>": lambda c, v, w: c["ablation"].update(
        macro_merges={v: [["kjv", "pydocs"], ["shakespeare"]]}
    ),
    "ablation.macro_merges.*[][]": lambda c, v, w: c["ablation"].update(macro_merges={"m": [[v, "pydocs"], ["kjv"]]}),
    "eval.targets[]": lambda c, v, w: c["eval"].update(targets=[v]),
    "eval.harness.tasks[]": lambda c, v, w: c["eval"].update(harness={"tasks": [v]}),
    "eval.harness.include_path": lambda c, v, w: c["eval"].update(
        harness={"tasks": ["arc_corpus"], "include_path": _folder(w, v)}
    ),
    "eval.harness.datasets_cache": lambda c, v, w: c["eval"].update(
        harness={"tasks": ["arc_easy"], "datasets_cache": _folder(w, v)}
    ),
    "cluster.gpu_model": lambda c, v, w: c.setdefault("cluster", {}).update(gpu_model=v),
    "cluster.gpu_partition": lambda c, v, w: c.setdefault("cluster", {}).update(gpu_partition=v),
    "cluster.max_mem_mb": lambda c, v, w: c.setdefault("cluster", {}).update(max_mem_mb=v),
    "cluster.max_runtime": lambda c, v, w: c.setdefault("cluster", {}).update(max_runtime=v),
    "external.<name>": lambda c, v, w: _set_external(c, v, w, "<name>"),
    "external.*.path": lambda c, v, w: _set_external(c, v, w, "path"),
    "external.*.score_column": lambda c, v, w: _set_external(c, v, w, "score_column"),
}


# Names that become folders under results/{run}/ (or name one): only their pattern's characters.
NAME_KEYS = {
    "run",
    "subsets.<name>",
    "eval.targets[]",
    "eval.harness.tasks[]",  # lm-eval task names: a pattern, like the names here
    "ablation.partitions[]",
    "ablation.seed_mix",
    "ablation.seed_mix[]",
    "ablation.mixtures[][]",
    "ablation.macro_merges.<name>",
    "ablation.macro_merges.*[][]",
    "external.<name>",
}
# Values that become sbatch options (the Slurm executor formats them into its command line): a
# pattern of plain characters; strings are allowed only so that `--config cluster=...` works.
SBATCH_KEYS = {"cluster.gpu_model", "cluster.gpu_partition", "cluster.max_mem_mb", "cluster.max_runtime"}
# Input paths: any local file, but Snakemake reads {braces} in an input path as a wildcard.
# Values checked against a fixed list at parse time (LoRA targets: the base architecture's modules).
KNOWN_NAME_KEYS = {"less.lora.target_modules[]"}
# Model and tokenizer folders too: their files are inputs (rules/common_models.smk).
INPUT_PATH_KEYS = (
    {
        "corpus.inputs[]",
        "corpus.inputs[].path",
        "less.base",
        "model.pretrained",
        "tokenizer.path",
        "eval.harness.include_path",
        "external.*.path",
    }
    | {f"{b}.scorer.{k}" for b in ("pds", "mates") for k in ("pretrained", "tokenizer")}
    | {f"less.data.files.{k}" for k in ("pool", "target", "eval")}
)


def test_every_string_key_of_the_schema_has_a_hostile_case():
    """A key added to the schema without a case here fails this test (add it to SETTERS)."""
    keys = string_keys()
    assert len(keys) >= 20, sorted(keys)
    assert keys == set(SETTERS), (sorted(keys - set(SETTERS)), sorted(set(SETTERS) - keys))
    assert NAME_KEYS | SBATCH_KEYS | INPUT_PATH_KEYS <= keys


# ---- what a printed command must look like -------------------------------------------------------
def shell_commands(text: str) -> list[str]:
    return [line.split("Shell command: ", 1)[1] for line in text.splitlines() if "Shell command: " in line]


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def argument_strings(arg: str) -> list[str]:
    """An argument, or the strings inside it when it is a JSON object (a --*-config argument)."""
    if arg.startswith("{"):
        try:
            return list(_strings(json.loads(arg)))
        except json.JSONDecodeError:
            pass
    return [arg]


def names_key(text: str, key: str) -> bool:
    """Whether an error names ``key``: Snakemake's schema errors say ``instance['a']['b']``, the
    workflow's own say ``config key a.b``."""
    plain = re.split(r"\.<name>|\.\*|\[\]", key)[0]
    brackets = "instance" + "".join(f"[{p!r}]" for p in plain.split("."))
    return f"config key {plain}" in text or brackets in text


def no_pwned(root: Path) -> list[str]:
    """Files a pasted value's `touch PWNED…` made, anywhere under ``root``."""
    return sorted(str(p) for p in root.rglob("*") if re.fullmatch(r"PWNED\d*", p.name))


@pytest.mark.parametrize("kind", sorted(VALUES))
@pytest.mark.parametrize("key", sorted(SETTERS))
def test_a_hostile_string_is_refused_or_reaches_its_command_intact(tmp_path: Path, key: str, kind: str):
    value, marker = VALUES[kind], MARKERS[kind]
    work = tmp_path / "w"
    work.mkdir()
    cfg = all_methods_config()
    cfg["seeds"] = [0]
    SETTERS[key](cfg, value, work)
    proc = smk(work, write_config(tmp_path / "c.yaml", cfg), "-n", "-p", check=False)
    out = proc.stdout + proc.stderr
    assert no_pwned(tmp_path) == []
    refused = key in NAME_KEYS | SBATCH_KEYS | KNOWN_NAME_KEYS or (kind == "braces" and key in INPUT_PATH_KEYS)
    if refused:
        assert proc.returncode != 0, f"{key}: {value!r} accepted"
        assert names_key(out, key), f"{key}: refused without naming the key:\n{out[-3000:]}"
        return
    assert proc.returncode == 0, f"{key}: {value!r} refused:\n{out[-3000:]}"
    commands = shell_commands(proc.stdout)
    assert len(commands) > 50, out[-2000:]
    intact = 0
    for cmd in commands:
        args = shlex.split(cmd)  # a value that broke the quoting leaves an unclosed quote
        for arg in args:
            for s in argument_strings(arg):
                if marker in s:
                    assert value in s, f"{key}: {value!r} split or altered in {arg!r}\n{cmd}"
                    intact += 1
    assert intact, f"{key}: {value!r} reached no command (nor was it refused)\n{out[-3000:]}"


# ---- names that become folders under results/{run}/ -------------------------------------------
def _tiny_with(edit):
    cfg = tiny_config()
    edit(cfg)
    return cfg


@pytest.mark.parametrize(
    "key, edit",
    [
        ("run", lambda c: c.update(run="..")),
        ("run", lambda c: c.update(run=".")),
        ("subsets", lambda c: c["subsets"].update({"..": {"n": 4, "seed": 0}})),
        ("subsets", lambda c: c["subsets"].update({".": {"n": 4, "seed": 0}})),
        ("ablation.partitions", lambda c: c["ablation"].update(partitions=["..", "pydocs", "shakespeare"])),
        ("ablation.partitions", lambda c: c["ablation"].update(partitions=["../x", "pydocs", "shakespeare"])),
        ("ablation.seed_mix", lambda c: c["ablation"].update(seed_mix=[".."])),
        ("ablation.macro_merges", lambda c: c["ablation"].update(macro_merges={"..": [["kjv", "pydocs"], ["kjv"]]})),
        ("eval.targets", lambda c: c["eval"].update(targets=[".."])),
    ],
    ids=["run-dotdot", "run-dot", "subset-dotdot", "subset-dot", "partition-dotdot", "partition-slash",
         "seed-mix-dotdot", "macro-dotdot", "eval-target-dotdot"],
)  # fmt: skip
def test_a_name_that_would_leave_its_folder_is_refused_at_parse_time(tmp_path: Path, key, edit):
    work = tmp_path / "w"
    work.mkdir()
    proc = smk(work, write_config(tmp_path / "c.yaml", _tiny_with(edit)), "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"{key}: accepted\n{out[-2000:]}"
    assert names_key(out, key), out[-3000:]
    assert not (work / "results").exists() and not (tmp_path / "data").exists()


def test_a_nul_character_is_refused_naming_its_key(tmp_path: Path):
    """No command line can carry a NUL: refused before any job, not when the job starts."""
    work = tmp_path / "w"
    work.mkdir()
    cfg = tiny_config()
    cfg["corpus"]["text_field"] = "te\0xt"
    proc = smk(work, write_config(tmp_path / "c.yaml", cfg), "-n", check=False)
    assert proc.returncode != 0
    assert "config key corpus.text_field holds a NUL character" in proc.stdout + proc.stderr


def test_every_command_parses_and_hostile_values_arrive_as_they_are(tmp_path: Path, monkeypatch):
    """Every planned command, split as a shell would, parses with winnow's own CLI, and free strings
    that start with '-' (an option to argparse, unless passed as --opt=value) arrive intact."""
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "src"))
    from winnow.cli import main

    work = tmp_path / "w"
    work.mkdir()
    dash = f"-{SHELL}"
    cfg = all_methods_config()
    cfg["corpus"].update(text_field=dash, domain_field=f"-{dash}", id_field=dash, default_domain=dash)
    cfg["subsets"]["pds_target"]["domains"] = [dash, "shakespeare"]
    cfg["bakeoff"]["primary"] = dash
    cfg["ablation"]["column"] = dash
    cfg["eval"]["harness_limit"] = 5
    cfg["audit_strict"] = True
    _set_external(cfg, dash, work, "score_column")
    config = write_config(tmp_path / "c.yaml", cfg)
    out = smk(work, config, "-n", "-p").stdout + smk(work, config, "-n", "-p", "audit").stdout
    parsed, parse = [], argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        parsed.append(parse(self, args, namespace))
        raise SystemExit(0)  # parsed: the command itself is not run

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    commands = [c for c in shell_commands(out) if c.startswith("python -m winnow ")]
    for cmd in commands:
        argv = shlex.split(cmd)
        with pytest.raises(SystemExit) as stop:
            main(argv[3 : argv.index(">")])
        assert stop.value.code == 0, cmd
    by = {f"{a.group} {a.command}": a for a in parsed}
    assert len(commands) > 100 and len(by) >= 35, sorted(by)
    ingest = by["data ingest"].params
    assert (ingest.text_field, ingest.domain_field, ingest.id_field, ingest.default_domain) == (
        dash,
        f"-{dash}",
        dash,
        dash,
    )
    assert [a.domains for a in parsed if a.command == "sample-subset" and a.domains and len(a.domains) > 1] == [
        [dash, "shakespeare"]
    ]
    assert by["eval leaderboard"].params.primary == dash == by["eval leaderboard"].metrics[0]
    assert by["ablation partition"].params.column == dash  # the config keys arrive as one JSON object
    assert by["select external-scores"].score_column == dash
    assert by["eval harness"].params.harness_limit == 5 and by["audit verify"].strict is True


# ---- every field of every rule's shell command is quoted ----------------------------------------
def rule_commands() -> tuple[dict[str, str], dict[str, Path]]:
    """({rule: its shell command template} (the concatenated string literals), {rule: its script})
    from rules/*.smk; a `use rule` runs its base rule's command."""
    out, scripts = {}, {}
    for path in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule )", path.read_text(), flags=re.M)[1:]:
            script = re.match(r"rule (\w+):\n(?:.*\n)*?    script:\n        \"(.+)\"\n", block)
            if script:
                scripts[script.group(1)] = (path.parent / script.group(2)).resolve()
                continue
            m = re.match(r"rule (\w+):\n(?:.*\n)*?    shell:\n((?:        .+\n)+)", block)
            # a `run:` block's shell(...) call: the string literals inside its parentheses
            m = m or re.match(
                r"rule (\w+):\n(?:.*\n)*?    run:\n(?:.*\n)*?        shell\(\n((?:            \".+\n)+)", block
            )
            assert m, f"{path.name}: a rule without a shell command or script: {block[:80]}"
            out[m.group(1)] = "".join(ast.literal_eval(line.strip()) for line in m.group(2).splitlines())
    return out, scripts


def shell_templates() -> dict[str, str]:
    return rule_commands()[0]


def test_every_field_of_every_shell_command_is_quoted():
    templates = shell_templates()
    assert len(templates) > 40, sorted(templates)
    unquoted = {
        rule: [f"{{{name}:{spec}}}" if spec else f"{{{name}}}" for _, name, spec, _ in string.Formatter().parse(t)
               if name is not None and not spec.endswith("q")]
        for rule, t in templates.items()
    }  # fmt: skip
    assert not {r: f for r, f in unquoted.items() if f}


def test_script_rules_hand_values_to_their_command_without_a_shell():
    """A script rule (workflow/scripts/) passes its inputs and params to `winnow` as a list of
    arguments in its own process (winnow.workflow_script.run_command): no shell to quote for."""
    scripts = rule_commands()[1]
    assert scripts, "no script rules found"
    for rule, script in scripts.items():
        assert script.is_file() and script.parent == ROOT / "workflow" / "scripts", (rule, script)
        text = script.read_text()
        assert "run_command(" in text, f"{script.name}: does not run its command with run_command"
        for call in ("shell(", "subprocess", "os.system", "os.popen", "shell=True"):
            assert call not in text, f"{script.name} uses {call}"


# ---- a real run: the hostile values reach `data ingest` as they are ---------------------------
REAL = {
    # Each is valid shell when pasted bare (so the old commands ran it); the examples.
    "issue": {
        "text": "--text$(touch PWNED) and spaces",
        "domain": '-domain`touch PWNED2` "quoted"',
        "ident": "id $(touch PWNED3) *",
        "default": "default $HOME ~ {run}",
        "forced": "x'$(touch PWNED4)'",
        "path": "in $(touch PWNED5) 'q'.jsonl",
    },
    # Unbalanced quotes and every metacharacter: the old commands did not even parse.
    "shell": {
        "text": f"--{SHELL} text",
        "domain": f"-{SHELL} domain",
        "ident": f"{SHELL} id",
        "default": f"{SHELL} default",
        "forced": f"{SHELL} {{run}} forced",
        "path": f"{SHELL}.jsonl",
    },
}


@pytest.mark.parametrize("case", sorted(REAL))
def test_ingest_runs_with_hostile_field_names_and_domains(tmp_path: Path, case: str):
    """The field names start with '-' too (an argparse option, unless passed as --opt=value)."""
    v = REAL[case]
    work = tmp_path / "w"
    work.mkdir()
    text, domain, ident = v["text"], v["domain"], v["ident"]
    first = work / v["path"]  # the input's path is hostile too
    first.write_text(
        json.dumps({text: "alpha text one", domain: "dom-a", ident: "a1"})
        + "\n"
        + json.dumps({text: "beta text two", ident: "a2"})  # no domain field: the default domain
        + "\n"
        + json.dumps({"text": "a record without the hostile text field", ident: "a3"})
        + "\n"
    )
    second = work / "second.jsonl"
    second.write_text(json.dumps({text: "gamma text three", domain: "dom-b", ident: "b1"}) + "\n")
    cfg = tiny_config()
    cfg["corpus"].update(
        inputs=[str(first), {"path": str(second), "domain": v["forced"]}],
        text_field=text,
        domain_field=domain,
        id_field=ident,
        default_domain=v["default"],
    )
    proc = smk(work, write_config(tmp_path / "c.yaml", cfg), "results/tiny/data/docs.parquet", check=False)
    assert no_pwned(tmp_path) == [], proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    import pyarrow.parquet as pq

    docs = pq.read_table(work / "results/tiny/data/docs.parquet").to_pylist()
    by_text = {d["text"]: d for d in docs}
    assert set(by_text) == {"alpha text one", "beta text two", "gamma text three"}
    assert by_text["alpha text one"]["domain"] == "dom-a"
    assert by_text["beta text two"]["domain"] == v["default"]
    assert by_text["gamma text three"]["domain"] == v["forced"]  # the input's domain wins
    assert by_text["alpha text one"]["doc_id"] == "a1"  # the record's own id, never the file name
    rejects = pq.read_table(work / "results/tiny/data/rejects.parquet").to_pylist()
    assert [r["detail"] for r in rejects] == [f"no string field {text!r}"]
