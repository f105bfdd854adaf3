"""Evaluation task items built from held-out documents: LAMBADA-style last word, 4-way next sentence.

Both builders are deterministic given ``seed`` and the set of documents, independent of row order:
documents are visited in the order of a seeded hash of ``doc_id``, and each document's choices
come from a generator seeded by (seed, doc_id). Adding documents therefore leaves the items of the
others unchanged, except that next-sentence distractors are drawn from a pool that grows with them.

Pure Python: no torch, so task data can be built on a machine without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from winnow.io.atomic import write_text
from winnow.progress import Progress

# A sentence ends at terminal punctuation, possibly followed by closing quotes/brackets, then
# whitespace or the end of the text. Crude (abbreviations like "Mr." split), but every passage we
# cut still ends at real punctuation, which is all the tasks need.
_SENT_END = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s|$)")
# The last word of a passage: letters only, whole word (preceded by whitespace or the start), then
# the sentence-final punctuation.
_LAST_WORD = re.compile(r"(?:(?<=\s)|^)([A-Za-z]+)([.!?]+[\"'\u201d\u2019)\]]*)$")


@dataclass(frozen=True)
class _Sentence:
    start: int  # character offsets into the document text, [start, end)
    end: int


def _rows(docs: Any) -> list[dict]:
    """Accept a pyarrow Table (DOCS columns), a pandas DataFrame or an iterable of dicts."""
    if hasattr(docs, "to_pylist"):
        return docs.to_pylist()
    if hasattr(docs, "to_dict") and hasattr(docs, "columns"):
        return docs.to_dict(orient="records")
    return [dict(d) for d in docs]


def _seeded_int(seed: int, *parts: str) -> int:
    h = hashlib.sha256(":".join([str(seed), *parts]).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big")


def _ordered(rows: list[dict], seed: int, split: str | None) -> list[dict]:
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    ids = [r["doc_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate doc_id in docs")
    return sorted(rows, key=lambda r: (_seeded_int(seed, "order", r["doc_id"]), r["doc_id"]))


def _interleave_domains(rows: list[dict]) -> Iterator[dict]:
    """Round-robin over domains (sorted by name), keeping each domain's order."""
    by_domain: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_domain[r["domain"]].append(r)
    queues = [iter(by_domain[d]) for d in sorted(by_domain)]
    while queues:
        alive = []
        for q in queues:
            row = next(q, None)
            if row is not None:
                alive.append(q)
                yield row
        queues = alive


def split_sentences(text: str) -> list[_Sentence]:
    """Sentence spans of ``text``, whitespace excluded; a trailing fragment without end
    punctuation is dropped (it is not a sentence end)."""
    spans = []
    pos = 0
    for m in _SENT_END.finditer(text):
        start = pos
        while start < m.end() and text[start].isspace():
            start += 1
        if start < m.end():
            spans.append(_Sentence(start, m.end()))
        pos = m.end()
    return spans


def _lastword_item(text: str, rng: random.Random, max_chars: int, min_context_chars: int) -> dict | None:
    sents = split_sentences(text)
    candidates = []
    first = 0
    for k, sent in enumerate(sents):
        # The passage starts at the earliest sentence start that keeps it within max_chars: the
        # longer the context, the more likely it can support the word (and the harder the task
        # is for a model that ignores it).
        while first <= k and sent.end - sents[first].start > max_chars:
            first += 1
        if first > k:
            continue
        passage = text[sents[first].start : sent.end]
        m = _LAST_WORD.search(passage)
        if m is None or len(m.group(1)) < 3:
            continue
        word = m.group(1)
        context = passage[: m.start(1)].rstrip()
        if len(context) < min_context_chars:
            continue
        if not re.search(rf"(?<![A-Za-z]){word}(?![A-Za-z])", context):
            continue
        candidates.append((context, word))
    if not candidates:
        return None
    context, word = rng.choice(candidates)
    return {"context": context, "target": " " + word}


def build_lastword(
    docs: Any,
    n: int,
    seed: int,
    *,
    max_chars: int = 600,
    min_context_chars: int = 40,
    split: str | None = None,
    balance_domains: bool = False,
) -> list[dict]:
    """LAMBADA-style items ``{"context", "target", "doc_id", "domain"}``, at most one per document.

    The passage (≤ ``max_chars`` characters) starts at a sentence start and ends at a sentence end;
    its last word is alphabetic, ≥ 3 letters, and occurs earlier in the passage as a whole word
    (case-sensitive). ``context`` is the passage without that word and its trailing punctuation
    (no trailing space); ``target`` is ``" " + word``. Documents without a valid passage are skipped.

    ``split`` keeps only documents of that split; ``balance_domains`` visits domains round-robin
    so that ``n`` items spread evenly instead of in proportion to the domains' document counts.
    """
    rows = _ordered(_rows(docs), seed, split)

    def make(row: dict) -> dict | None:
        rng = random.Random(_seeded_int(seed, "lastword", row["doc_id"]))
        return _lastword_item(row["text"] or "", rng, max_chars, min_context_chars)

    return _collect(rows, n, balance_domains, "lastword", make)


def _collect(rows: list[dict], n: int, balance_domains: bool, kind: str, make: Callable) -> list[dict]:
    """At most ``n`` items ``make(row)`` of ``rows`` in order (None: the document gives none), each
    with its row's ``doc_id`` and ``domain``; ``balance_domains`` visits domains round-robin."""
    order = _interleave_domains(rows) if balance_domains else iter(rows)
    items: list[dict] = []
    prog = Progress(f"{kind} items", total=n, unit="items")
    for row in order:
        if len(items) >= n:
            break
        item = make(row)
        if item is None:
            continue
        items.append({**item, "doc_id": row["doc_id"], "domain": row["domain"]})
        prog.update(1)
    prog.done()
    return items


def _choice_pool(
    rows: list[dict], min_chars: int, max_chars: int
) -> tuple[dict[str, list[tuple[str, str]]], dict[str, list[_Sentence]]]:
    """Per domain: (doc_id, sentence) candidates for answers/distractors; per doc: its sentences."""
    pool: dict[str, list[tuple[str, str]]] = defaultdict(list)
    sents_of: dict[str, list[_Sentence]] = {}
    for row in rows:
        text = row["text"] or ""
        sents = split_sentences(text)
        sents_of[row["doc_id"]] = sents
        for s in sents:
            sent = text[s.start : s.end]
            if min_chars <= len(sent) <= max_chars and "\n" not in sent:
                pool[row["domain"]].append((row["doc_id"], sent))
    return pool, sents_of


def _distractors(
    rng: random.Random,
    pool: list[tuple[str, str]],
    doc_id: str,
    own: set[str],
    answer: str,
    n: int = 3,
    tries: int = 200,
) -> list[str] | None:
    """``n`` distinct sentences from other documents, none equal to a sentence of this document.

    Prefers lengths within a factor of 2 of the answer and distinct source documents: a summed
    log-likelihood favours short choices, so wildly different lengths would turn the task into a
    length quiz. Both preferences are relaxed (in that order) when the pool is too small.
    """
    lo, hi = len(answer) / 2.0, len(answer) * 2.0

    def ok(src: str, sent: str, chosen: list[str], srcs: set[str], strict_len: bool, strict_src: bool) -> bool:
        return (
            src != doc_id
            and sent not in own
            and sent != answer
            and sent not in chosen
            and (not strict_len or lo <= len(sent) <= hi)
            and (not strict_src or src not in srcs)
        )

    for strict_len, strict_src in ((True, True), (True, False), (False, False)):
        chosen: list[str] = []
        srcs: set[str] = set()
        # Rejection sampling first (cheap on a big pool), then an exhaustive pass in a shuffled order.
        for _ in range(tries):
            if len(chosen) == n or not pool:
                break
            src, sent = pool[rng.randrange(len(pool))]
            if ok(src, sent, chosen, srcs, strict_len, strict_src):
                chosen.append(sent)
                srcs.add(src)
        if len(chosen) < n:
            order = list(range(len(pool)))
            rng.shuffle(order)
            for i in order:
                if len(chosen) == n:
                    break
                src, sent = pool[i]
                if ok(src, sent, chosen, srcs, strict_len, strict_src):
                    chosen.append(sent)
                    srcs.add(src)
        if len(chosen) == n:
            return chosen
    return None


def build_choice(
    docs: Any,
    n: int,
    seed: int,
    *,
    max_context_sentences: int = 3,
    max_context_chars: int = 600,
    min_sentence_chars: int = 20,
    max_sentence_chars: int = 200,
    split: str | None = None,
    balance_domains: bool = False,
) -> list[dict]:
    """4-way next-sentence items ``{"context", "choices", "label", "doc_id", "domain"}``, ≤ 1 per doc.

    ``context`` is 1..``max_context_sentences`` consecutive sentences of a document (≤
    ``max_context_chars``, original spacing kept); the correct choice is the sentence that follows
    it in the same document; the 3 distractors are sentences of OTHER documents of the SAME domain
    (so domain cues don't give the answer away) and never occur in the item's own document.
    ``choices`` carry no leading space (lm-eval's default target delimiter adds one); ``label``
    is the correct choice's index, drawn uniformly from 0..3 by the seeded generator.
    """
    rows = _ordered(_rows(docs), seed, split)
    pool, sents_of = _choice_pool(rows, min_sentence_chars, max_sentence_chars)
    sentence_chars = (min_sentence_chars, max_sentence_chars)

    def make(row: dict) -> dict | None:
        rng = random.Random(_seeded_int(seed, "choice", row["doc_id"]))
        spans = _choice_spans(
            row["text"] or "", sents_of[row["doc_id"]], max_context_sentences, max_context_chars, sentence_chars
        )
        return _choice_item(row, sents_of[row["doc_id"]], spans, pool, rng)

    return _collect(rows, n, balance_domains, "choice", make)


def _choice_spans(text: str, sents: list[_Sentence], max_sentences: int, max_chars: int, sentence_chars) -> list:
    """``(j, k)`` candidates of a document: answer sentence j (its length within ``sentence_chars``,
    one line) after a context of the k ≤ ``max_sentences`` sentences before it (≤ ``max_chars``)."""
    lo, hi = sentence_chars
    candidates = []
    for j in range(1, len(sents)):
        answer = text[sents[j].start : sents[j].end]
        if not (lo <= len(answer) <= hi) or "\n" in answer:
            continue
        for k in range(1, min(max_sentences, j) + 1):
            if sents[j - 1].end - sents[j - k].start <= max_chars:
                candidates.append((j, k))
    return candidates


def _choice_item(row: dict, sents: list[_Sentence], candidates: list, pool: dict, rng: random.Random) -> dict | None:
    """One item of a document from its ``candidates`` (see :func:`_choice_spans`), or None."""
    if not candidates:
        return None
    text = row["text"] or ""
    j, k = rng.choice(candidates)
    context = text[sents[j - k].start : sents[j - 1].end]
    answer = text[sents[j].start : sents[j].end]
    own = {text[s.start : s.end] for s in sents}
    distractors = _distractors(rng, pool[row["domain"]], row["doc_id"], own, answer)
    if distractors is None:
        return None
    label = rng.randrange(4)
    choices = distractors[:label] + [answer] + distractors[label:]
    return {"context": context, "choices": choices, "label": label}


def write_jsonl(path: str | os.PathLike, items: Iterable[dict]) -> None:
    """One JSON object per line (UTF-8, sorted keys), written atomically."""
    lines = [json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items]
    write_text(path, "".join(lines))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
