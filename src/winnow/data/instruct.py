"""Instruction-tuning examples built from the bundled corpus's plain-text documents (for LESS).

Each example is a prompt/response pair stored as a DOCS-like row (the INSTRUCTIONS schema):
``text = prompt + response``, so ``tokenize_shard`` puts the loss on the response only;
``domain`` = ``task``, so per-domain tables show tasks; ``split`` = the split of the document the
example came from, so pool (train), target (val) and evaluation (test) items never share a source
document; ``doc_id = f"{task}/{source doc_id}/{k}"`` with ``k`` the position of the line, verse,
speech or paragraph the example starts from.

Tasks (source domain → prompt ⟶ response):

* ``define`` (wordnet ``lemma1, lemma2: gloss; "example"``): ``Define the word "lemma1".\\nDefinition:``
  ⟶ `` gloss``;
* ``usage`` (wordnet, an example containing a lemma): ``Use the word "lemma" in a sentence.\\nSentence:``
  ⟶ `` example``;
* ``synonym`` (wordnet, ≥ 2 lemmas): ``Give a synonym of "lemma1".\\nSynonym:`` ⟶ `` lemma2``;
* ``verse`` (kjv): ``Quote Genesis 5:25.\\nVerse:`` ⟶ `` And Methuselah lived ...``;
* ``dialogue`` (shakespeare): ``Continue the scene.\\nA.\\n<A's speech>\\nB.\\n`` ⟶ ``<B's speech>``;
* ``saying`` (fortunes, ≥ 6 words): ``Complete the saying: "<first half>`` ⟶ `` <second half>"``;
* ``continue`` (milton, folio, pydocs): ``Continue the text:\\n<paragraph>\\n`` ⟶ ``<next text>``.

Subtasks: the part of speech (noun/verb/adj/adv) for the three wordnet tasks, recovered from the
lexicographer file in the document id (``wordnet/adj.all/0005``); the source domain for
``continue``; the task name otherwise.

Deterministic given ``seed`` and the set of documents, independent of row order: every document's
candidates depend on its text only, and each (task, split) keeps the first ``max_per_task``
candidates in the order of a seeded hash of their ``doc_id`` (``continue`` round-robins over its
three domains so that none crowds the others out).

``less_sets`` then turns the tokenized instruction store (from these builders or from
``winnow.data.instruct_files``) into LESS's pool, target and evaluation id lists.

Pure Python + numpy + pyarrow: no torch.
"""

from __future__ import annotations

import random
import re
import textwrap
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from winnow.data.subsets import filter_examples, sample_ids
from winnow.data.tasks import _distractors, _interleave_domains, _rows, _seeded_int
from winnow.io.tables import INSTRUCTIONS

TASKS = ("define", "usage", "synonym", "verse", "dialogue", "saying", "continue")
CONTINUE_DOMAINS = ("folio", "milton", "pydocs")
POS = ("noun", "verb", "adj", "adv")  # wordnet subtasks, from the lexicographer file

MAX_GLOSS_CHARS = 300  # define: longer glosses are skipped
MAX_EXAMPLE_CHARS = 300  # usage
MAX_VERSE_CHARS = 300  # verse
MAX_SPEECH_CHARS = 200  # dialogue: each of the two speeches, cut at a line boundary
MAX_SAYING_CHARS = 300  # saying: whole fortune (whitespace normalised)
# continue: the prompt's paragraph (its last lines if longer) and the response (cut at a word
# boundary); with the workflow's 8192-token BPE ~96% of these fit 128 tokens.
MAX_PARAGRAPH_CHARS = 240
MAX_NEXT_CHARS = 150
MIN_NEXT_CHARS = 10

_DEFINE_PROMPT = 'Define the word "{}".\nDefinition:'
_DEFINE_RE = re.compile(r'\ADefine the word "(.*)"\.\nDefinition:\Z', re.S)
# A speaker's heading in the shakespeare domain: "HAMLET.", "FIRST LORD.", "KING HENRY."
_SPEAKER = re.compile(r"^[A-Z][A-Z0-9' ,&-]*[A-Z]\.$")
_VERSE = re.compile(r"^(\d+) (\S.*)$")
_CHAPTER = re.compile(r"^((?:[1-3] )?[A-Z][A-Za-z ]*[a-z]) (\d+)$")
_BLANK_SPLIT = re.compile(r"\n[ \t]*\n")


# ------------------------------------------------------------------------------------------ wordnet
def _parse_wordnet_line(line: str) -> tuple[list[str], str, list[str]] | None:
    """``lemma1, lemma2: gloss; "ex1"; "ex2"`` → (lemmas, gloss, examples); None if malformed.

    Examples are the quoted spans from the first one preceded by ``;``, ``:`` or ``,`` on (a
    quoted phrase inside the gloss, as in ``(especially in the phrase "make strides")``, stays
    in the gloss).
    """
    head, sep, rest = line.partition(": ")
    if not sep:
        return None
    lemmas = [w.strip() for w in head.split(",") if w.strip()]
    cut = len(rest)
    for m in re.finditer(r'"[^"]*"', rest):
        if rest[: m.start()].rstrip().endswith((";", ":", ",")):
            cut = m.start()
            break
    gloss = rest[:cut].strip().rstrip(";:,").strip()
    examples = [e.strip() for e in re.findall(r'"([^"]*)"', rest[cut:]) if e.strip()]
    if not lemmas or not gloss:
        return None
    return lemmas, gloss, examples


_LEXFILE = re.compile(r"(?:^|[/_])(noun|verb|adj|adv)\.[A-Za-z]+(?:[/_]|$)")


def _pos_of(doc_id: str) -> str | None:
    """``wordnet/adj.all/0005`` (bundled corpus) or ``wordnet_adj.all_0253`` (test corpus) →
    ``adj``; None when the id carries no lexicographer file."""
    m = _LEXFILE.search(doc_id)
    return m.group(1) if m else None


def _wordnet(doc: dict) -> Iterator[tuple[str, int, str, str, str]]:
    pos = _pos_of(doc["doc_id"])
    for k, line in enumerate(doc["text"].split("\n")):
        parsed = _parse_wordnet_line(line.strip())
        if parsed is None:
            continue
        lemmas, gloss, examples = parsed
        head = lemmas[0]
        if len(gloss) <= MAX_GLOSS_CHARS:
            yield "define", k, _DEFINE_PROMPT.format(head), " " + gloss, pos or "define"
        for ex in examples:
            if len(ex) > MAX_EXAMPLE_CHARS:
                continue
            lemma = next((w for w in lemmas if _contains_word(ex, w)), None)
            if lemma is not None:
                yield "usage", k, f'Use the word "{lemma}" in a sentence.\nSentence:', " " + ex, pos or "usage"
                break
        # Prefer a synonym that is not the headword plus a word ("Dutch" → "Dutch people").
        others = [w for w in lemmas[1:] if w.lower() != head.lower()]
        other = next((w for w in others if not (_contains_word(w, head) or _contains_word(head, w))), None)
        other = other or next(iter(others), None)
        if other is not None:
            yield "synonym", k, f'Give a synonym of "{head}".\nSynonym:', " " + other, pos or "synonym"


def _contains_word(text: str, word: str) -> bool:
    """``word`` occurs in ``text`` (case-insensitive) not inside a longer run of ASCII letters."""
    text, word = text.lower(), word.lower()
    i = text.find(word)
    while i >= 0 and word:
        j = i + len(word)
        if not _is_letter(text[i - 1 : i]) and not _is_letter(text[j : j + 1]):
            return True
        i = text.find(word, i + 1)
    return False


def _is_letter(ch: str) -> bool:
    return ch != "" and ("a" <= ch <= "z")


# ---------------------------------------------------------------------------------------------- kjv
def _kjv(doc: dict) -> Iterator[tuple[str, int, str, str, str]]:
    """Verses under a ``Book C`` heading (a line between blank lines; a doc may hold several)."""
    lines = doc["text"].split("\n")
    chapter = None
    for k, line in enumerate(lines):
        blank_before = k == 0 or not lines[k - 1].strip()
        blank_after = k + 1 < len(lines) and not lines[k + 1].strip()
        m = _CHAPTER.match(line)
        if m and blank_before and blank_after:
            chapter = f"{m.group(1)} {m.group(2)}"
            continue
        v = _VERSE.match(line)
        if chapter is None or v is None:
            continue
        verse = v.group(2).strip()
        if len(verse) <= MAX_VERSE_CHARS:
            yield "verse", k, f"Quote {chapter}:{v.group(1)}.\nVerse:", " " + verse, "verse"


# -------------------------------------------------------------------------------------- shakespeare
def _speeches(text: str) -> list[tuple[str, list[str]] | None]:
    """Blank-line blocks; a speech is ``(speaker, lines)``, anything else (stage directions,
    a speech cut off at the document's start) is None."""
    out: list[tuple[str, list[str]] | None] = []
    for block in _BLANK_SPLIT.split(text):
        lines = [ln.rstrip() for ln in block.strip("\n").split("\n")]
        lines = [ln for ln in lines if ln.strip()]
        if len(lines) >= 2 and _SPEAKER.match(lines[0].strip()):
            # Indented verse (songs) loses its common indent, so a speech starts with a character.
            speech = textwrap.dedent("\n".join(lines[1:])).split("\n")
            out.append((lines[0].strip()[:-1], [speech[0].lstrip(), *speech[1:]]))
        else:
            out.append(None)
    return out


def _lines_within(lines: list[str], max_chars: int, from_end: bool) -> str | None:
    """The most whole lines from the start (or the end) that fit ``max_chars``; None if not even one."""
    seq = list(reversed(lines)) if from_end else lines
    kept: list[str] = []
    n = -1
    for ln in seq:
        if n + 1 + len(ln) > max_chars:
            break
        kept.append(ln)
        n += 1 + len(ln)
    if not kept:
        return None
    return "\n".join(reversed(kept) if from_end else kept)


def _dialogue(doc: dict) -> Iterator[tuple[str, int, str, str, str]]:
    blocks = _speeches(doc["text"])
    # The document's last block may be a speech cut off by the chunking: never a response.
    for k in range(len(blocks) - 2):
        a, b = blocks[k], blocks[k + 1]
        if a is None or b is None or a[0] == b[0]:
            continue
        said = _lines_within(a[1], MAX_SPEECH_CHARS, from_end=True)
        reply = _lines_within(b[1], MAX_SPEECH_CHARS, from_end=False)
        if said is None or reply is None or not reply.strip():
            continue
        prompt = f"Continue the scene.\n{a[0]}.\n{said}\n{b[0]}.\n"
        yield "dialogue", k, prompt, reply, "dialogue"


# ------------------------------------------------------------------------------------------ fortunes
def _saying(doc: dict) -> Iterator[tuple[str, int, str, str, str]]:
    words = doc["text"].split()
    if len(words) < 6 or len(" ".join(words)) > MAX_SAYING_CHARS:
        return
    half = len(words) // 2
    prompt = 'Complete the saying: "' + " ".join(words[:half])
    yield "saying", 0, prompt, " " + " ".join(words[half:]) + '"', "saying"


# ------------------------------------------------------------------------------------------ continue
def _cut_words(text: str, max_chars: int) -> str:
    """``text`` if it fits, else its longest prefix ending before whitespace, ≤ ``max_chars``."""
    if len(text) <= max_chars:
        return text
    cut = max((m.start() for m in re.finditer(r"\s", text[: max_chars + 1])), default=0)
    return text[:cut].rstrip()


def _continue(doc: dict) -> Iterator[tuple[str, int, str, str, str]]:
    blocks = [b.strip() for b in _BLANK_SPLIT.split(doc["text"])]
    blocks = [b for b in blocks if b]
    for k in range(len(blocks) - 1):
        para = blocks[k]
        if len(para) > MAX_PARAGRAPH_CHARS:  # a long paragraph: its last lines that fit
            para = _lines_within(para.split("\n"), MAX_PARAGRAPH_CHARS, from_end=True)
            if para is None:
                continue
            para = para.strip()
        nxt = _cut_words(blocks[k + 1], MAX_NEXT_CHARS)
        if len(para) < 20 or len(nxt) < MIN_NEXT_CHARS or not re.search("[A-Za-z]", para + nxt):
            continue
        yield "continue", k, f"Continue the text:\n{para}\n", nxt, doc["domain"]


_BUILDERS = {
    "wordnet": _wordnet,
    "kjv": _kjv,
    "shakespeare": _dialogue,
    "fortunes": _saying,
    **{d: _continue for d in CONTINUE_DOMAINS},
}


# --------------------------------------------------------------------------------------------- build
def build_instructions(docs: Any, seed: int, max_per_task: int) -> pa.Table:
    """INSTRUCTIONS rows from the plain-text documents of ``docs`` (DOCS columns: a pyarrow Table,
    a pandas DataFrame or dicts); at most ``max_per_task`` examples per task and split.

    Documents of other domains, and documents that already carry a prompt, are ignored. Rows come
    out grouped by task (``TASKS`` order), then split (sorted), then in their seeded order.
    """
    if max_per_task < 0:
        raise ValueError("max_per_task must be ≥ 0")
    rows = _rows(docs)
    ids = [r["doc_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate doc_id in docs")
    cands: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        build = _BUILDERS.get(row["domain"])
        if build is None or row.get("prompt") is not None or not row["text"]:
            continue
        for task, k, prompt, response, subtask in build(row):
            if not response.strip():
                continue
            cands[(task, row["split"])].append(
                {
                    "doc_id": f"{task}/{row['doc_id']}/{k}",
                    "text": prompt + response,
                    "domain": task,
                    "source": row["source"],
                    "split": row["split"],
                    "prompt": prompt,
                    "task": task,
                    "subtask": subtask,
                }
            )
    out: list[dict] = []
    for task in TASKS:
        for split in sorted(s for t, s in cands if t == task):
            items = sorted(
                cands[(task, split)], key=lambda r: (_seeded_int(seed, "instruct", r["doc_id"]), r["doc_id"])
            )
            if task == "continue":  # one domain per turn, so all three are represented
                items = list(_interleave_domains([{**r, "domain": r["subtask"]} for r in items]))
                items = [{**r, "domain": task} for r in items]
            out.extend(items[:max_per_task])
    return pa.Table.from_pylist(out, schema=INSTRUCTIONS)


def target_subtasks(instructions: pa.Table, task: str, split: str) -> dict[str, str]:
    """``doc_id → subtask`` for the rows of ``task`` in ``split``."""
    cols = instructions.select(["doc_id", "task", "split", "subtask"]).to_pydict()
    return {
        d: s
        for d, t, sp, s in zip(cols["doc_id"], cols["task"], cols["split"], cols["subtask"], strict=True)
        if t == task and sp == split
    }


def _source_doc(item_id: str) -> str:
    """``define/wordnet/adj.all/0005/3`` → ``wordnet/adj.all/0005``."""
    return item_id.split("/", 1)[1].rsplit("/", 1)[0]


def build_define_choice(instructions: pa.Table, split: str, n: int, seed: int) -> list[dict]:
    """4-way "which gloss defines the word" items from the ``define`` rows of ``split``.

    Items ``{"context", "choices", "label", "doc_id", "domain", "subtask"}`` in the format of
    ``winnow.data.tasks.build_choice`` (kind ``choice`` for the harness): ``context`` is the define
    prompt, ``choices`` carry no leading space (lm-eval's target delimiter " " adds it, so the
    scored text of the truth is exactly the instruction row's text). The 3 distractors are glosses
    of other source documents of the same split, preferably of the same part of speech and within a
    factor 2 of the truth's length, never a gloss of another sense of the same headword. At most
    ``n`` items, in a seeded order; deterministic.
    """
    cols = instructions.select(["doc_id", "text", "split", "prompt", "task", "subtask"]).to_pylist()
    rows = []
    for r in cols:
        if r["task"] != "define" or r["split"] != split:
            continue
        m = _DEFINE_RE.match(r["prompt"] or "")
        gloss = r["text"][len(r["prompt"] or "") :]
        if m is None or not gloss.startswith(" ") or not gloss[1:].strip():
            continue
        rows.append({**r, "word": m.group(1).lower(), "gloss": gloss[1:]})
    rows.sort(key=lambda r: (_seeded_int(seed, "define_choice", r["doc_id"]), r["doc_id"]))
    pool_all = [(_source_doc(r["doc_id"]), r["gloss"]) for r in rows]
    pool_sub: dict[str, list[tuple[str, str]]] = defaultdict(list)
    glosses_of: dict[str, set[str]] = defaultdict(set)
    for r, entry in zip(rows, pool_all, strict=True):
        pool_sub[r["subtask"]].append(entry)
        glosses_of[r["word"]].add(r["gloss"])
    items: list[dict] = []
    for r in rows:
        if len(items) >= n:
            break
        rng = random.Random(_seeded_int(seed, "define_choice", r["doc_id"]))
        src, own = _source_doc(r["doc_id"]), glosses_of[r["word"]]
        distractors = _distractors(rng, pool_sub[r["subtask"]], src, own, r["gloss"])
        if distractors is None:
            distractors = _distractors(rng, pool_all, src, own, r["gloss"])
        if distractors is None:
            continue
        label = rng.randrange(4)
        items.append(
            {
                "context": r["prompt"],
                "choices": distractors[:label] + [r["gloss"]] + distractors[label:],
                "label": label,
                "doc_id": r["doc_id"],
                "domain": "define",
                "subtask": r["subtask"],
            }
        )
    return items


# ------------------------------------------------------------------------------------------ LESS sets
@dataclass
class LessSets:
    """What ``less_sets`` builds: the SUBTASKS table, the three id lists, the define-choice items
    and ``summary``, the instruction store manifest's fields about them."""

    subtasks: pa.Table
    pool: np.ndarray
    target: np.ndarray
    eval_ids: np.ndarray
    choice: list[dict]
    summary: dict[str, Any]


def less_sets(instructions: pa.Table, examples: pa.Table, cfg: dict, from_files: bool) -> LessSets:
    """LESS's sets from the instruction store.

    Inputs: ``instructions`` (INSTRUCTIONS rows: ``build_instructions`` or
    ``instruct_files.build_from_files``), ``examples`` (the EXAMPLES table ``tokenize_shard`` made
    of them, all shards, ``doc_id`` = the instruction's), ``cfg`` (``less.data``: ``seed``,
    ``pool_size``, ``target_per_subtask``, ``eval_size``, and for the corpus ``target_task`` and
    ``n_choice``) and ``from_files`` (the instructions came from the user's files).

    Outputs (a ``LessSets``):

    * ``subtasks``: SUBTASKS rows (``example_id``, ``task`` = the example's domain, ``subtask`` =
      its instruction's) of every example;
    * ``pool``: a seeded sample of ``pool_size`` train-split examples (all of them if fewer);
    * ``target``: the reference points, up to ``target_per_subtask`` val-split examples per subtask
      (LESS's few-shot dev sets), subtasks in sorted order; of ``target_task`` only for the corpus,
      of every task with files (the target file's tasks are the targets);
    * ``eval_ids``: a seeded sample of ``eval_size`` test-split examples (of ``target_task`` for
      the corpus, of every task with files);
    * ``choice``: the define-choice items (``build_define_choice`` on the test split, ``n_choice``
      of them) for the corpus; empty with files (``less eval`` then reports the target loss alone);
    * ``summary``: ``instructions_per_task``, ``pool_per_task``, ``n_pool``, ``n_target``,
      ``n_eval``, ``n_choice``, ``target_task`` (the configured one, or with files the sorted tasks
      of the target) and ``source`` (``corpus`` or ``files``).

    An empty pool, target or eval set, or (corpus) no define-choice item, is a ValueError.
    Deterministic given ``cfg["seed"]``.
    """
    seed = cfg["seed"]
    # Subtask of every example, through its instruction row (doc_id).
    sub_of = dict(zip(instructions["doc_id"].to_pylist(), instructions["subtask"].to_pylist(), strict=True))
    task = cfg.get("target_task")
    subtasks = pa.table(
        {
            "example_id": examples["example_id"],
            "task": examples["domain"],
            "subtask": pa.array([sub_of[d] for d in examples["doc_id"].to_pylist()], pa.string()),
        }
    )
    pool_all = filter_examples(examples, splits=["train"])
    pool = sample_ids(pool_all, seed, n=min(cfg["pool_size"], pool_all.size))
    # The reference points: up to n per subtask of the target task, from the val split (LESS's
    # few-shot dev sets are a handful of examples per subtask).
    # With files, every item of the target file is a reference point (its tasks are the targets).
    val_ids = examples.filter(pc.equal(examples["split"], "val"))["example_id"]
    in_val = pc.is_in(subtasks["example_id"], val_ids)
    target_rows = subtasks.filter(in_val if from_files else pc.and_(pc.equal(subtasks["task"], task), in_val))
    target = []
    for name in sorted(set(target_rows["subtask"].to_pylist())):
        ids = target_rows.filter(pc.equal(target_rows["subtask"], name))["example_id"].to_numpy()
        target.append(sample_ids(ids, seed, n=min(cfg["target_per_subtask"], ids.size)))
    target = np.concatenate(target) if target else np.zeros(0, np.int64)
    eval_all = filter_examples(examples, splits=["test"], domains=None if from_files else [task])
    eval_ids = sample_ids(eval_all, seed, n=min(cfg["eval_size"], eval_all.size))
    for name, ids in (("pool", pool), ("target", target), ("eval", eval_ids)):
        if ids.size == 0:
            raise ValueError(f"less data: the {name} set is empty (target_task {task!r}; check less.data)")
    # The define-choice task exists only for the corpus's define items.
    choice = [] if from_files else build_define_choice(instructions, split="test", n=cfg["n_choice"], seed=seed)
    if not choice and not from_files:
        raise ValueError("less data: no define-choice items could be built from the test split")
    row_of = {int(e): i for i, e in enumerate(examples["example_id"].to_pylist())}
    pool_rows = np.asarray([row_of[int(e)] for e in pool], dtype=np.int64)
    summary = {
        "instructions_per_task": _counts(instructions["task"].to_pylist()),
        "pool_per_task": _counts(pc.take(examples["domain"], pool_rows).to_pylist()),
        "n_pool": int(pool.size),
        "n_target": int(target.size),
        "n_eval": int(eval_ids.size),
        "n_choice": len(choice),
        "target_task": sorted(set(target_rows["task"].to_pylist())) if from_files else task,
        "source": "files" if from_files else "corpus",
    }
    return LessSets(subtasks, pool, target, eval_ids, choice, summary)


def _counts(values) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))
