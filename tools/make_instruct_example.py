#!/usr/bin/env python3
"""Write the example LESS input files tests/data/instruct/ from the bundled corpus.

    python tools/make_instruct_example.py            # from the repository root, PYTHONPATH=src

The corpus's instruction items (winnow.data.instruct) of three tasks, each with subtasks —
``define`` (noun/verb/adj/adv), ``continue`` (folio/milton/pydocs), ``saying`` — written in the
formats ``less.data.source: files`` reads (docs/less-data.md):

    pool.jsonl      train-split items of all three tasks; even records prompt/response, odd ones
                    chat ``messages``; plus two malformed records (they land in the rejects)
    target.jsonl    val-split ``define`` items, a few per part of speech, as ``messages``
    eval.parquet    test-split ``define`` items, prompt/response with an ``id`` column

Deterministic (seeded split and selection); small enough for git.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from winnow.data.instruct import build_instructions
from winnow.data.tasks import _seeded_int

ROOT = Path(__file__).resolve().parent.parent
MAX_CHARS = 160  # tiny models see 64 tokens: keep every item short


def _split(doc_id: str, seed: int) -> str:
    u = _seeded_int(seed, "example_split", doc_id) % 10
    return "train" if u < 8 else ("val" if u == 8 else "test")


def _record(row: dict, style: str, with_id: bool = False) -> dict:
    prompt, response = row["prompt"], row["text"][len(row["prompt"]) :]
    rec: dict = {"task": row["task"], "subtask": row["subtask"]}
    if with_id:
        rec["id"] = row["doc_id"].replace("/", ":")
    if style == "messages":
        rec["messages"] = [
            {"role": "user", "content": prompt.strip()},
            {"role": "assistant", "content": response.strip()},
        ]
    else:
        rec.update(prompt=prompt, response=response)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=str(ROOT / "data/default_corpus/corpus.parquet"))
    ap.add_argument("--out", default=str(ROOT / "tests/data/instruct"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-per-task", type=int, default=60)
    ap.add_argument("--target-per-subtask", type=int, default=4)
    ap.add_argument("--eval-size", type=int, default=24)
    args = ap.parse_args()

    corpus = pq.read_table(args.corpus, columns=["doc_id", "text", "domain", "source"]).to_pylist()
    docs = [
        {**d, "split": _split(d["doc_id"], args.seed), "prompt": None}
        for d in corpus
        if d["domain"] in ("wordnet", "fortunes", "folio", "milton", "pydocs")
    ]
    inst = build_instructions(docs, seed=args.seed, max_per_task=400).to_pylist()
    short = [r for r in inst if len(r["text"]) <= MAX_CHARS and r["task"] in ("define", "continue", "saying")]

    def take(task: str, split: str, n: int, subtask: str | None = None) -> list[dict]:
        rows = [r for r in short if r["task"] == task and r["split"] == split]
        return [r for r in rows if subtask is None or r["subtask"] == subtask][:n]

    pool = [r for t in ("define", "continue", "saying") for r in take(t, "train", args.pool_per_task)]
    pool.sort(key=lambda r: _seeded_int(args.seed, "example_pool", r["doc_id"]))
    target = [r for pos in ("noun", "verb", "adj", "adv") for r in take("define", "val", args.target_per_subtask, pos)]
    evals = take("define", "test", args.eval_size)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [_record(r, "messages" if i % 2 else "prompt") for i, r in enumerate(pool)]
    lines.append({"prompt": "A record with no response."})  # → rejects: no_usable_field
    lines.append({"messages": [{"role": "user", "content": "Nobody answers."}]})  # → rejects: bad_messages
    (out / "pool.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    (out / "target.jsonl").write_text(
        "".join(json.dumps(_record(r, "messages"), ensure_ascii=False) + "\n" for r in target)
    )
    pq.write_table(pa.Table.from_pylist([_record(r, "prompt", with_id=True) for r in evals]), out / "eval.parquet")
    print(f"pool {len(pool)} (+2 malformed), target {len(target)}, eval {len(evals)} → {out}")


if __name__ == "__main__":
    main()
