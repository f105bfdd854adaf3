"""The example tasks shipped in ``data/tasks/``, from the bundled corpus's held-out (test) split,
so no training document of the default config is asked.

``arc_corpus``: ARC-format multiple choice.
Each item is a fill-in-the-last-word question in lm-eval's ``arc_easy`` format (``id``,
``question``, ``choices: {text, label}``, ``answerKey``), scored by the same YAML fields as
``arc_easy`` (``Question: {{question}}\\nAnswer:``, the choice texts, the answer key's index).
The passage and its word come from :func:`winnow.data.tasks.build_lastword`; the three wrong
choices are other items' words of the same domain. ``doc_id`` and ``domain`` are extra fields.

``lambada_corpus``: LAMBADA's format (``text``; the last space-separated word is the target),
scored by ``lambada_openai``'s YAML fields; the passages of :func:`build_lastword`.

Regenerate: ``python -m winnow.data.example_tasks`` (deterministic).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from winnow.data.ingest import split_of
from winnow.data.tasks import _seeded_int, build_lastword, write_jsonl

ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "data" / "default_corpus" / "corpus.parquet"
OUT = ROOT / "data" / "tasks" / "arc_corpus" / "arc_corpus.jsonl"
OUT_LAMBADA = ROOT / "data" / "tasks" / "lambada_corpus" / "lambada_corpus.jsonl"
# The split the default config (config/config.yaml corpus.split_seed / split_fractions) assigns.
SPLIT_SEED = 0
SPLIT_FRACTIONS = {"train": 0.9, "val": 0.05, "test": 0.05}
LABELS = ["A", "B", "C", "D"]


def build_arc(docs: list[dict], n: int, seed: int = 0, max_chars: int = 300) -> list[dict]:
    """ARC-format items from ``docs`` (dicts with doc_id, text, domain, split)."""
    cloze = build_lastword(docs, n, seed, max_chars=max_chars, split="test", balance_domains=True)
    words: dict[str, list[str]] = {}
    for it in cloze:
        words.setdefault(it["domain"], []).append(it["target"].strip())
    items = []
    for it in cloze:
        answer = it["target"].strip()
        rng = random.Random(_seeded_int(seed, "arc", it["doc_id"]))
        pool = sorted({w for w in words[it["domain"]] if w.lower() != answer.lower()})
        if len(pool) < 3:
            continue
        choices = rng.sample(pool, 3)
        key = rng.randrange(4)
        choices.insert(key, answer)
        items.append(
            {
                "id": f"arc_corpus/{len(items):04d}",
                "question": f'Which word completes the passage? "{it["context"]} ___"',
                "choices": {"text": choices, "label": LABELS},
                "answerKey": LABELS[key],
                "doc_id": it["doc_id"],
                "domain": it["domain"],
            }
        )
    return items


def build_lambada(docs: list[dict], n: int, seed: int = 1, max_chars: int = 300) -> list[dict]:
    """LAMBADA-format items ``{"text", "doc_id", "domain"}`` from the test split of ``docs``."""
    cloze = build_lastword(docs, n, seed, max_chars=max_chars, split="test", balance_domains=True)
    # lm-eval splits on " ": the word must follow a plain space (not a newline) to be the target.
    return [
        {"text": it["context"] + it["target"], "doc_id": it["doc_id"], "domain": it["domain"]}
        for it in cloze
        if (it["context"] + it["target"]).split(" ")[-1] == it["target"].strip()
    ]


def corpus_docs() -> list[dict]:
    """The bundled corpus with the default config's split of each document."""
    import pyarrow.parquet as pq

    docs = pq.read_table(CORPUS, columns=["doc_id", "text", "domain"]).to_pylist()
    for d in docs:
        d["split"] = split_of(d["doc_id"], SPLIT_SEED, SPLIT_FRACTIONS)
    return docs


def main(n: int = 120) -> None:
    docs = corpus_docs()
    write_jsonl(OUT, build_arc(docs, n))
    write_jsonl(OUT_LAMBADA, build_lambada(docs, n))
    print(f"wrote {OUT} and {OUT_LAMBADA}", file=sys.stderr)


if __name__ == "__main__":
    main()
