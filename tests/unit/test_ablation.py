"""Modular data ablations: mixture names, equal shares, merges, correlations, and the CLI."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from winnow.methods.ablation import (
    MIXTURE_PATTERN,
    NAME_PATTERN,
    equal_shares,
    expand_mixtures,
    mixture_name,
    parse_mixture,
)
from winnow.methods.ablation_report import (
    correlation_rows,
    model_of,
    points,
    ppl_rows,
)
from winnow.methods.merge import average_state_dicts, merge_folders

torch.set_num_threads(1)

# ------------------------------------------------------------------------------- names


def test_mixture_name_is_sorted_and_parses_back():
    assert mixture_name(["pydocs", "kjv"]) == "kjv+pydocs"
    assert mixture_name(("wordnet", "kjv", "pydocs")) == "kjv+pydocs+wordnet"
    assert parse_mixture("kjv+pydocs+wordnet") == ["kjv", "pydocs", "wordnet"]
    for parts in (["a", "b"], ["x_1", "y.2", "z-3"]):
        assert parse_mixture(mixture_name(parts)) == sorted(parts)


@pytest.mark.parametrize("bad", [["kjv"], ["kjv", "kjv"], ["a+b", "c"], ["a/b", "c"], ["a b", "c"], ["", "c"]])
def test_bad_mixtures_are_refused(bad):
    with pytest.raises(ValueError):
        mixture_name(bad)


@pytest.mark.parametrize("name", ["pydocs+kjv", "kjv", "kjv+kjv", "kjv++pydocs"])
def test_non_canonical_names_do_not_parse(name):
    with pytest.raises(ValueError):
        parse_mixture(name)


def test_wildcard_patterns_separate_partitions_from_mixtures():
    assert re.fullmatch(NAME_PATTERN, "shakespeare") and not re.fullmatch(NAME_PATTERN, "kjv+pydocs")
    assert re.fullmatch(MIXTURE_PATTERN, "kjv+pydocs") and re.fullmatch(MIXTURE_PATTERN, "a+b+c")
    for no in ("kjv", "kjv+", "+kjv", "kjv/pydocs+x"):
        assert not re.fullmatch(MIXTURE_PATTERN, no), no


def test_expand_pairs_triples_and_lists():
    parts = ["wordnet", "kjv", "pydocs", "shakespeare"]
    pairs = expand_mixtures("pairs", parts)
    assert len(pairs) == 6 and all(len(p) == 2 and p == sorted(p) for p in pairs)
    assert len({mixture_name(p) for p in pairs}) == 6
    assert len(expand_mixtures("triples", parts)) == 4
    both = expand_mixtures(["triples", "pairs", ["pydocs", "kjv"]], parts)  # the explicit pair is a duplicate
    assert len(both) == 10 and [len(m) for m in both] == [2] * 6 + [3] * 4
    assert expand_mixtures([["shakespeare", "kjv", "wordnet"]], parts) == [["kjv", "shakespeare", "wordnet"]]
    with pytest.raises(ValueError, match="not partitions"):
        expand_mixtures([["kjv", "milton"]], parts)
    with pytest.raises(ValueError, match="shorthand"):
        expand_mixtures("quads", parts)


def test_adding_a_partition_only_adds_mixtures_that_contain_it():
    old = {mixture_name(m) for m in expand_mixtures("pairs", ["a", "b", "c"])}
    new = {mixture_name(m) for m in expand_mixtures("pairs", ["a", "b", "c", "d"])}
    assert old < new and all("d" in parse_mixture(n) for n in new - old) and len(new - old) == 3


# ------------------------------------------------------------------------------- equal shares


def test_equal_shares_give_the_shares_asked_for():
    lists = [np.arange(100, 110), np.arange(200, 203), np.arange(300, 307)]
    ids, counts = equal_shares(lists, seed=0)
    assert counts == [10, 10, 10] and ids.size == 30 and ids.dtype == np.int64
    part = ids // 100
    assert Counter(part.tolist()) == {1: 10, 2: 10, 3: 10}  # exactly 1/3 each
    for src in lists:  # every id appears ⌊10/n⌋ or ⌈10/n⌉ times; a full copy is always there
        c = Counter(ids[np.isin(ids, src)].tolist())
        assert set(c) == set(src.tolist())
        assert set(c.values()) <= {10 // src.size, -(-10 // src.size)}
    assert np.array_equal(ids, equal_shares(lists, seed=0)[0])  # deterministic
    assert not np.array_equal(ids, equal_shares(lists, seed=1)[0])  # the remainder draw follows the seed
    # The order of the input lists' entries does not matter (they are sorted first).
    shuffled = [np.random.default_rng(5).permutation(x) for x in lists]
    assert np.array_equal(ids, equal_shares(shuffled, seed=0)[0])


def test_equal_shares_with_an_explicit_size_and_errors():
    lists = [np.arange(10), np.arange(10, 14)]
    ids, counts = equal_shares(lists, seed=3, per_part=6)
    assert counts == [6, 6]
    first = ids[ids < 10]
    assert first.size == 6 and np.unique(first).size == 6  # downsampled without replacement
    assert sorted(Counter(ids[ids >= 10].tolist()).values()) == [1, 1, 2, 2]  # one copy + 2 drawn
    with pytest.raises(ValueError, match="empty"):
        equal_shares([np.arange(3), np.array([], dtype=np.int64)], seed=0)
    with pytest.raises(ValueError):
        equal_shares([], seed=0)


def test_mixture_ids_drive_the_trainer_at_equal_shares():
    """The trainer draws from the list by epoch permutations: over whole epochs the shares hold."""
    from winnow.train.batches import step_ids

    lists = [np.arange(0, 40), np.arange(1000, 1008)]
    ids, _ = equal_shares(lists, seed=0)
    drawn = np.concatenate([step_ids(ids, s, 16, seed=0) for s in range(ids.size // 16 * 3)])  # 3 epochs
    frac = np.mean(drawn >= 1000)
    assert frac == pytest.approx(0.5, abs=0.01)


# ------------------------------------------------------------------------------- merges


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g),
        "b": torch.randn(3, generator=g).to(torch.float16),
        "steps": torch.tensor([seed, 7], dtype=torch.int64),  # an integer buffer: copied, not averaged
        "mask": torch.tensor([True, False]),
    }


def test_merge_is_the_arithmetic_mean_and_copies_integer_buffers():
    sds = [_state(s) for s in (1, 2, 3)]
    merged, info = average_state_dicts(iter(sds))
    assert torch.allclose(merged["w"], torch.stack([sd["w"] for sd in sds]).mean(0), atol=1e-7, rtol=0)
    mean_b = torch.stack([sd["b"].double() for sd in sds]).mean(0).to(torch.float16)
    assert merged["b"].dtype == torch.float16 and torch.equal(merged["b"], mean_b)
    assert torch.equal(merged["steps"], sds[0]["steps"]) and merged["steps"].dtype == torch.int64
    assert torch.equal(merged["mask"], sds[0]["mask"])
    assert info["n"] == 3 and info["averaged"] == ["b", "w"] and info["copied"] == ["mask", "steps"]
    assert info["copied_differ"] == ["steps"]  # the members' integer buffers differed: first one kept


def test_merge_refuses_mismatched_models():
    a, b = _state(1), _state(2)
    b["w"] = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="w"):
        average_state_dicts([a, b])
    c = _state(3)
    del c["mask"]
    with pytest.raises(ValueError, match="missing"):
        average_state_dicts([a, c])
    with pytest.raises(ValueError):
        average_state_dicts([])


def _save_model(folder: Path, seed: int, **arch):
    from winnow.models.build import build_model

    cfg = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32, "max_position_embeddings": 16}
    model = build_model({**cfg, **arch}, vocab_size=50, eos_id=0, pad_id=1, seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    return model


def test_merged_folder_loads_and_equals_the_mean(tmp_path):
    from winnow.models.build import load_pretrained

    models = [_save_model(tmp_path / f"m{i}", seed=i) for i in range(3)]
    report = merge_folders([tmp_path / f"m{i}" for i in range(3)], tmp_path / "merged")
    merged = load_pretrained(tmp_path / "merged")
    sds = [m.state_dict() for m in models]
    for name, p in merged.state_dict().items():
        if name in sds[0]:
            expected = torch.stack([sd[name].double() for sd in sds]).mean(0).to(p.dtype)
            assert torch.allclose(p, expected, atol=1e-7, rtol=0), name
    assert report["n"] == 3 and report["weights"] == [pytest.approx(1 / 3)] * 3
    # A macro merge (a merge of a merge and a model) weighs its members uniformly, not their parts.
    merge_folders([tmp_path / "merged", tmp_path / "m0"], tmp_path / "macro")
    macro = load_pretrained(tmp_path / "macro").state_dict()
    name = "gpt_neox.embed_in.weight"
    expected = (sds[0][name] + sds[1][name] + sds[2][name]).double() / 6 + sds[0][name].double() / 2
    assert torch.allclose(macro[name].double(), expected, atol=1e-6)


def test_merge_refuses_other_architectures(tmp_path):
    _save_model(tmp_path / "a", seed=0)
    _save_model(tmp_path / "b", seed=1, intermediate_size=48)
    with pytest.raises(ValueError, match="config.json differs"):
        merge_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    with pytest.raises(ValueError, match="at least 2"):
        merge_folders([tmp_path / "a"], tmp_path / "out")


# ------------------------------------------------------------------------------- correlations


# pearson / spearman: tests/unit/test_stats.py (winnow.stats)


def _toy_rows():
    """Three partitions a, b, c; the pairs; two eval domains (a: a partition, z: held out)."""
    comps = {"a": {"a": 10.0, "z": 50.0}, "b": {"a": 30.0, "z": 40.0}, "c": {"a": 35.0, "z": 20.0}}
    mixes = {"a+b": {"a": 14.0, "z": 44.0}, "a+c": {"a": 15.0, "z": 30.0}, "b+c": {"a": 31.0, "z": 29.0}}
    merges = {"a+b": {"a": 16.0, "z": 46.0}, "a+c": {"a": 17.0, "z": 33.0}, "b+c": {"a": 32.0, "z": 28.0}}
    rows = []
    for kind, table in (("components", comps), ("mixtures", mixes), ("merges", merges)):
        for name, per_domain in table.items():
            for domain, v in per_domain.items():
                rows.append({"kind": kind, "model": name, "domain": domain, "ppl_token": v})
    rows.append({"kind": "macros", "model": "m", "domain": "a", "ppl_token": 20.0})
    rows.append({"kind": "macros", "model": "m", "domain": "z", "ppl_token": 45.0})
    return rows, comps, mixes, merges


def test_points_and_correlation_rows_on_a_toy_table():
    stats = pytest.importorskip("scipy.stats")
    rows, comps, mixes, merges = _toy_rows()
    mixtures = [["a", "b"], ["a", "c"], ["b", "c"]]
    pts = points(rows, mixtures, ["a", "b", "c"], macros={"m": [["a"], ["b"]]})
    assert len(pts) == 6
    p = next(q for q in pts if q["mixture"] == "a+c" and q["domain"] == "z")
    assert p["mixture_value"] == 30.0 and p["merged"] == 33.0 and p["mean_components"] == pytest.approx(35.0)
    assert p["domain_kind"] == "held_out" and not p["in_mixture"] and "macro" not in p
    q = next(q for q in pts if q["mixture"] == "a+b" and q["domain"] == "a")
    assert q["domain_kind"] == "partition" and q["in_mixture"] and q["macro"] == 20.0 and q["macro_name"] == "m"

    corr = {(r["proxy"], r["domain"]): r for r in correlation_rows(pts)}
    names = ["a+b", "a+c", "b+c"]
    for domain in ("a", "z"):
        y = [mixes[n][domain] for n in names]
        merged = [merges[n][domain] for n in names]
        naive = [np.mean([comps[k][domain] for k in n.split("+")]) for n in names]
        r = corr[("merged", domain)]
        assert r["n"] == 3
        assert r["pearson"] == pytest.approx(stats.pearsonr(merged, y)[0])
        assert r["spearman"] == pytest.approx(stats.spearmanr(merged, y)[0])
        assert r["mean_log_ratio"] == pytest.approx(np.mean(np.log(np.divide(merged, y))))
        assert corr[("mean_components", domain)]["pearson"] == pytest.approx(stats.pearsonr(naive, y)[0])
    y_all = [mixes[n][d] for n in names for d in ("a", "z")]
    x_all = [merges[n][d] for n in names for d in ("a", "z")]
    pooled = corr[("merged", "__pooled__")]
    assert pooled["n"] == 6 and pooled["pearson"] == pytest.approx(stats.pearsonr(x_all, y_all)[0])
    assert pooled["spearman"] == pytest.approx(stats.spearmanr(x_all, y_all)[0])
    assert corr[("merged", "__pooled_partitions__")]["n"] == 3 and corr[("merged", "__pooled_held_out__")]["n"] == 3
    assert corr[("macro", "a")]["n"] == 1 and math.isnan(corr[("macro", "a")]["pearson"])


def test_a_missing_eval_is_an_error():
    rows, *_ = _toy_rows()
    rows = [r for r in rows if not (r["kind"] == "merges" and r["model"] == "b+c")]
    with pytest.raises(ValueError, match="b\\+c"):
        points(rows, [["a", "b"], ["b", "c"]], ["a", "b", "c"])


def test_model_of_reads_the_eval_path():
    assert model_of("results/r/ablation/eval/seed/ppl.json") == ("seed", "seed")
    assert model_of("results/r/ablation/eval/mixtures/kjv+pydocs/ppl.json") == ("mixtures", "kjv+pydocs")
    assert model_of("/x/eval/y/ablation/eval/components/kjv/ppl.json") == ("components", "kjv")
    for bad in ("results/r/ablation/eval/nope/x/ppl.json", "results/r/ablation/eval/components/kjv/harness.json"):
        with pytest.raises(ValueError):
            model_of(bad)


# ------------------------------------------------------------------------------- CLI


def _examples(tmp_path: Path) -> tuple[str, str]:
    from winnow.io.tables import DOCS, EXAMPLES, write_table

    docs, ex = [], []
    eid = 0
    for d, (domain, source) in enumerate([("kjv", "bible"), ("kjv", "bible"), ("wn", "dict"), ("wn", "dict2")]):
        split = ["train", "test", "train", "train"][d]
        docs.append(
            {"doc_id": f"d{d}", "text": "x", "domain": domain, "source": source, "split": split, "prompt": None}
        )
        for _ in range(d + 2):
            ex.append(
                {
                    "example_id": eid,
                    "doc_id": f"d{d}",
                    "shard": 0,
                    "offset": 0,
                    "length": 5,
                    "loss_start": 0,
                    "loss_end": 5,
                    "domain": domain,
                    "split": split,
                }
            )
            eid += 1
    write_table(tmp_path / "docs.parquet", pa.Table.from_pylist(docs), DOCS)
    write_table(tmp_path / "examples.parquet", pa.Table.from_pylist(ex), EXAMPLES)
    return str(tmp_path / "examples.parquet"), str(tmp_path / "docs.parquet")


def test_cli_partition_and_mix(tmp_path):
    from winnow.cli import main

    examples, docs = _examples(tmp_path)
    out, rep = tmp_path / "kjv.parquet", tmp_path / "kjv.json"
    domain = ["--params", '{"column": "domain"}']
    main(["ablation", "partition", "--examples", examples, "--docs", docs, *domain, "--value", "kjv"]
         + ["--out", str(out), "--report", str(rep)])  # fmt: skip
    assert pq.read_table(out)["example_id"].to_pylist() == [0, 1]  # d0 (train); d1 is test
    report = json.loads(rep.read_text())
    assert report["examples"] == {"test": 3, "train": 2} and report["docs"] == {"test": 1, "train": 1}
    assert json.loads(Path(f"{out}.prov.json").read_text())["command"] == "ablation partition"
    # A column only the docs table has (source): joined through doc_id.
    src = tmp_path / "dict.parquet"
    main(["ablation", "partition", "--examples", examples, "--docs", docs, "--params", '{"column": "source"}', "--value", "dict"]
         + ["--out", str(src), "--report", str(tmp_path / "dict.json")])  # fmt: skip
    assert pq.read_table(src)["example_id"].to_pylist() == [5, 6, 7, 8]
    with pytest.raises(ValueError, match="no examples"):
        main(["ablation", "partition", "--examples", examples, "--docs", docs, *domain, "--value", "milton"]
             + ["--out", str(tmp_path / "m.parquet"), "--report", str(tmp_path / "m.json")])  # fmt: skip
    mixed = tmp_path / "mix.parquet"
    main(["ablation", "mix", "--parts", str(out), str(src), "--params", '{"seed": 0}', "--out", str(mixed)])
    ids = pq.read_table(mixed)["example_id"].to_pylist()
    assert Counter(i < 5 for i in ids) == {True: 4, False: 4}  # the 2-example partition repeated twice


def test_cli_merge_and_correlate(tmp_path):
    from winnow.cli import main

    for i in range(2):
        _save_model(tmp_path / f"m{i}", seed=i)
    out = tmp_path / "merged" / "model.safetensors"
    main(["ablation", "merge", "--models", str(tmp_path / "m0/model.safetensors"), str(tmp_path / "m1/model.safetensors")]
         + ["--out", str(out), "--members", str(tmp_path / "merged/members.json")])  # fmt: skip
    assert (tmp_path / "merged/config.json").exists() and Path(f"{out}.prov.json").exists()
    assert json.loads((tmp_path / "merged/members.json").read_text())["n"] == 2

    rows, *_ = _toy_rows()
    evals = []
    for kind, model in {(r["kind"], r["model"]) for r in rows}:
        path = tmp_path / "ablation" / "eval" / kind / model / "ppl.json"
        path.parent.mkdir(parents=True)
        domains = {}
        for r in rows:
            if (r["kind"], r["model"]) == (kind, model):
                v = r["ppl_token"]
                s = -math.log(v) * 100
                domains[r["domain"]] = {
                    "sum_logprob": s,
                    "n_tokens": 100,
                    "n_docs": 2,
                    "ppl_token": v,
                    "ppl_word": v * 2,
                    "ppl_char": v**0.25,
                    "bits_per_byte": -s / (400 * math.log(2)),
                }
        path.write_text(json.dumps({"split": "test", "max_len": 16, "domains": domains}))
        evals.append(str(path))
    spec = {"partitions": ["a", "b", "c"], "mixtures": [["a", "b"], ["a", "c"], ["b", "c"]], "macros": {}}
    outs = {k: tmp_path / f"out.{k}" for k in ("table", "json", "points", "ppl", "plot")}
    main(["ablation", "correlate", "--evals", *evals, "--spec", json.dumps(spec)]
         + [a for k, p in outs.items() for a in (f"--{k}", str(p))])  # fmt: skip
    result = json.loads(outs["json"].read_text())
    assert result["held_out_domains"] == ["z"] and result["mixtures"] == ["a+b", "a+c", "b+c"]
    assert result["summary"]["merged"]["__pooled__"]["n"] == 6
    table = outs["table"].read_text().splitlines()
    assert table[0].split("\t")[:6] == ["metric", "proxy", "domain", "domain_kind", "n", "pearson"]
    assert pq.read_table(outs["ppl"]).num_rows == len(rows)
    assert outs["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(ppl_rows(evals)) == len(rows)
