from __future__ import annotations

import json
import math
import os

import pytest
import torch
import yaml
from _tiny import make_docs, offline_env, save_tiny

from winnow.data.tasks import build_choice, build_lastword, write_jsonl
from winnow.eval.harness import run_harness, task_kind, write_task_yamls
from winnow.eval.perplexity import ALL, domain_perplexity

torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def _offline(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        offline_env(tmp_path_factory.mktemp("hf"), mp)
        yield


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harness")
    docs = make_docs(n_per_domain=12, sentences=8, seed=2)
    model_dir, tok_dir = save_tiny(tmp, [d["text"] for d in docs], max_positions=1024, init_range=0.1)
    items = {
        "lastword": build_lastword(docs, 10, seed=0),
        "choice": build_choice(docs, 24, seed=0),
        "ppl": [{"text": d["text"], "domain": d["domain"]} for d in docs[::4]],
    }
    files = {}
    for key, its in items.items():
        files[key] = tmp / "data" / f"{key}.jsonl"
        write_jsonl(files[key], its)
    return tmp, model_dir, tok_dir, items, files


@pytest.fixture(scope="module")
def result(setup, tmp_path_factory):
    tmp, model_dir, tok_dir, _, files = setup
    elsewhere = tmp_path_factory.mktemp("cwd")
    # Run from an unrelated directory: the generated YAMLs must not depend on the cwd.
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)
        return run_harness(model_dir, tok_dir, files, "cpu", 4, None, tmp / "work")


def test_task_yamls(setup, tmp_path):
    _, _, _, _, files = setup
    assert {k: task_kind(p) for k, p in files.items()} == {
        "lastword": "lastword",
        "choice": "choice",
        "ppl": "rolling",
    }
    out = write_task_yamls(tmp_path / "tasks", files)
    cfgs = {p.stem: yaml.safe_load(p.read_text()) for p in out.glob("*.yaml")}
    assert set(cfgs) == {"winnow_lastword", "winnow_choice", "winnow_ppl"}
    assert cfgs["winnow_lastword"]["output_type"] == "loglikelihood"
    assert cfgs["winnow_lastword"]["target_delimiter"] == ""
    assert cfgs["winnow_choice"]["output_type"] == "multiple_choice"
    assert cfgs["winnow_ppl"]["output_type"] == "loglikelihood_rolling"
    for name, cfg in cfgs.items():
        assert cfg["task"] == name and cfg["dataset_path"] == "json" and cfg["test_split"] == "test"
        data_file = cfg["dataset_kwargs"]["data_files"]["test"]
        assert data_file.startswith("/") and data_file == str(files[name.removeprefix("winnow_")].resolve())


def test_results_shape(setup, result):
    _, _, _, items, _ = setup
    json.dumps(result, allow_nan=False)  # plain JSON
    assert result["lm_eval_version"] == "0.4.13"
    assert result["n_samples"] == {f"winnow_{k}": len(v) for k, v in items.items()}
    for metric in ("acc", "acc_norm"):
        assert 0.0 <= result["winnow_choice"][metric] <= 1.0
    assert 0.0 <= result["winnow_lastword"]["acc"] <= 1.0
    assert result["winnow_lastword"]["perplexity"] > 1.0
    assert result["winnow_ppl"]["bits_per_byte"] > 0.0
    assert "acc_stderr" in result["winnow_choice"]


def test_per_item_values_aggregate_to_the_task_metrics(setup, result):
    """The items a comparison's bootstrap resamples give back lm-eval's own task numbers."""
    import math as _m

    from winnow.eval.table import _harness_metric

    _, _, _, items, _ = setup
    for task, metrics in (("winnow_choice", ("acc", "acc_norm")), ("winnow_lastword", ("acc", "perplexity"))):
        per = result["items"][task]
        assert len(per["ids"]) == len(set(per["ids"])) == len(items[task.removeprefix("winnow_")])
        for metric in metrics:
            value = _harness_metric(metric, per["ids"], per["values"][metric]).value()
            assert value == pytest.approx(result[task][metric], rel=1e-6), (task, metric)
    bpb = _harness_metric(
        "bits_per_byte", result["items"]["winnow_ppl"]["ids"], result["items"]["winnow_ppl"]["values"]["bits_per_byte"]
    )
    assert bpb.value() == pytest.approx(result["winnow_ppl"]["bits_per_byte"], rel=1e-6) and _m.isfinite(bpb.value())


def _loglik(model, ctx_ids: list[int], cont_ids: list[int]) -> float:
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        logp = model(input_ids=ids[:, :-1]).logits[0].double().log_softmax(-1)
    positions = range(len(ctx_ids) - 1, len(ctx_ids) + len(cont_ids) - 1)
    return float(sum(logp[p, t] for p, t in zip(positions, cont_ids, strict=True)))


def test_choice_acc_matches_direct_scoring(setup, result):
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    _, model_dir, tok_dir, items, _ = setup
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = GPTNeoXForCausalLM.from_pretrained(model_dir).eval()
    correct = correct_norm = 0
    for it in items["choice"]:
        # lm-eval conditions on the context tokens alone (no eos/bos in front when the context is
        # non-empty) and scores " " + choice (its default target delimiter).
        ctx = tok.encode(it["context"], add_special_tokens=False)
        lls = [_loglik(model, ctx, tok.encode(" " + c, add_special_tokens=False)) for c in it["choices"]]
        norm = [ll / len(c) for ll, c in zip(lls, it["choices"], strict=True)]
        correct += max(range(4), key=lls.__getitem__) == it["label"]
        correct_norm += max(range(4), key=norm.__getitem__) == it["label"]
    n = len(items["choice"])
    assert 0 < correct < n  # a non-degenerate accuracy, so agreement is not a coincidence of 0 or 1
    assert result["winnow_choice"]["acc"] == pytest.approx(correct / n)
    assert result["winnow_choice"]["acc_norm"] == pytest.approx(correct_norm / n)


def test_rolling_task_matches_domain_perplexity(setup, result):
    from transformers import AutoTokenizer, GPTNeoXForCausalLM

    _, model_dir, tok_dir, items, _ = setup
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = GPTNeoXForCausalLM.from_pretrained(model_dir)
    ours = domain_perplexity(
        model, tok, [(d["domain"], d["text"]) for d in items["ppl"]], max_len=1024, batch_size=4, device="cpu"
    )
    assert result["winnow_ppl"]["bits_per_byte"] == pytest.approx(ours[ALL]["bits_per_byte"], rel=1e-5)
    assert result["winnow_ppl"]["word_perplexity"] == pytest.approx(
        math.exp(-ours[ALL]["sum_logprob"] / ours[ALL]["n_words"]), rel=1e-4
    )


def test_limit_and_determinism(setup, result):
    tmp, model_dir, tok_dir, _, files = setup
    env = {k: os.environ.get(k) for k in ("DISABLE_MULTIPROC", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    again = run_harness(model_dir, tok_dir, files, "cpu", 2, None, tmp / "work2")
    for task in ("winnow_choice", "winnow_lastword", "winnow_ppl"):
        for metric, value in result[task].items():
            assert again[task][metric] == pytest.approx(value, rel=1e-6), (task, metric)
    assert {k: os.environ.get(k) for k in env} == env  # run_harness restores the environment
    limited = run_harness(model_dir, tok_dir, {"choice": files["choice"]}, "cpu", 4, 5, tmp / "work3")
    assert limited["n_samples"] == {"winnow_choice": 5}
