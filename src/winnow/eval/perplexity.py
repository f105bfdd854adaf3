"""Rolling-window perplexity per domain, with lm-eval's ``loglikelihood_rolling`` windows.

Each document is scored on its own, from a prefix token (eos: our tokenizers have no BOS), in
disjoint windows so that every token is predicted exactly once. The windows are those of
``lm_eval.utils.get_rolling_token_windows(..., context_len=1)`` + ``make_disjoint_window``, which
is what lm-eval's HFLM uses: numbers from here and from an lm-eval perplexity task agree.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch

from winnow.progress import Progress

log = logging.getLogger(__name__)

ALL = "__all__"


def rolling_windows(
    token_ids: Sequence[int], max_len: int, prefix_token: int, *, context_len: int = 1
) -> list[tuple[list[int], list[bool]]]:
    """Split one document's tokens into scoring windows.

    Returns ``[(input_ids, pred_mask), ...]``. ``input_ids`` is a window of ≤ ``max_len + 1``
    tokens laid out like a training example: the model reads ``input_ids[:-1]`` (≤ ``max_len``
    tokens, so it fits the position table) and its logits at position ``i`` score
    ``input_ids[i + 1]``. ``pred_mask[j]`` (same length) is True where token ``j`` is scored;
    ``pred_mask[0]`` is always False. Concatenating ``input_ids[j]`` over True ``pred_mask[j]``
    across windows gives back ``token_ids`` exactly, so each token is predicted once.

    The first window is ``[prefix_token] + token_ids[:max_len]`` and scores its first ``max_len``
    tokens. Each later window scores the next ``max_len - context_len + 1`` new tokens, preceded
    by the tokens just before them so the model reads exactly ``max_len`` tokens: with lm-eval's
    ``context_len=1`` the windows are disjoint chunks of ``max_len`` and the first token of a chunk
    sees only one token of context, except the last (short) chunk, which gets a full window of
    context. A larger ``context_len`` gives overlapping (strided) windows: more context, more compute.
    """
    if not 1 <= context_len <= max_len:
        raise ValueError(f"need 1 <= context_len ({context_len}) <= max_len ({max_len})")
    tokens = list(token_ids)
    n = len(tokens)
    if n == 0:
        return []
    windows = []
    first = min(max_len, n)
    seq = [prefix_token] + tokens[:first]
    windows.append((seq, [False] + [True] * first))
    predicted = first
    pred_len = max_len - context_len + 1
    while predicted < n:
        new = min(n - predicted, pred_len)
        end = predicted + new
        # max_len + 1 tokens ending at `end`, of which the model reads the first max_len. The start
        # is never negative: after the first window predicted >= max_len, so end >= max_len + 1.
        seq = tokens[end - max_len - 1 : end]
        windows.append((seq, [False] * (len(seq) - new) + [True] * new))
        predicted = end
    return windows


def _empty() -> dict[str, float]:
    return {"sum_logprob": 0.0, "n_tokens": 0, "n_chars": 0, "n_words": 0, "n_bytes": 0, "n_docs": 0}


def _finish(acc: dict[str, float]) -> dict[str, float]:
    s = acc["sum_logprob"]

    def exp_neg(denominator: float) -> float:
        return math.exp(-s / denominator) if denominator > 0 else float("nan")

    out = dict(acc)
    out["ppl_token"] = exp_neg(acc["n_tokens"])
    out["ppl_word"] = exp_neg(acc["n_words"])
    out["ppl_char"] = exp_neg(acc["n_chars"])
    out["bits_per_byte"] = -s / (acc["n_bytes"] * math.log(2)) if acc["n_bytes"] > 0 else float("nan")
    return out


@torch.no_grad()
def _score_batch(
    model: torch.nn.Module, batch: list[tuple[list[int], list[bool]]], pad_id: int, device: torch.device | str
) -> torch.Tensor:
    """Summed log-probability (float64, nats) of the scored tokens of each window: shape [B]."""
    width = max(len(seq) for seq, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for b, (seq, pred) in enumerate(batch):
        # Right padding: real tokens keep positions 0..len-1, exactly as when run alone.
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = torch.tensor(pred)
        attn[b, : len(seq)] = 1
    ids, mask, attn = ids.to(device), mask.to(device), attn.to(device)
    logits = model(input_ids=ids[:, :-1], attention_mask=attn[:, :-1]).logits  # [B, W-1, V]
    target_mask = mask[:, 1:]  # [B, W-1]: logits at i score token i+1
    rows, cols = target_mask.nonzero(as_tuple=True)
    # log_softmax only over the scored positions (≤ B·max_len rows of V), in float32 at least.
    picked = logits[rows, cols].float().log_softmax(dim=-1)  # [N, V]
    lp = picked.gather(1, ids[:, 1:][rows, cols].unsqueeze(1)).squeeze(1).double()  # [N]
    out = torch.zeros(len(batch), dtype=torch.float64, device=lp.device)
    out.index_add_(0, rows, lp)
    return out.cpu()


def domain_perplexity(
    model: torch.nn.Module,
    tokenizer,
    docs: Iterable[tuple[str, str]],
    max_len: int,
    batch_size: int,
    device: torch.device | str,
    *,
    context_len: int = 1,
    prefix_token: int | None = None,
    per_doc: list[dict] | None = None,
) -> dict[str, dict[str, float]]:
    """Per-domain (and ``"__all__"``) log-likelihood statistics of ``(domain, text)`` documents.

    Each entry: ``sum_logprob`` (natural log, summed over tokens, float64), ``n_tokens``,
    ``n_chars``, ``n_words`` (whitespace split), ``n_bytes`` (UTF-8), ``n_docs``,
    ``ppl_token = exp(-sum/n_tokens)``, ``ppl_word = exp(-sum/n_words)``,
    ``ppl_char = exp(-sum/n_chars)``, ``bits_per_byte = -sum/(n_bytes·ln 2)`` (nan where a count
    is 0). Text is encoded without special tokens; the first token of a document is predicted
    from ``prefix_token`` (default: the tokenizer's eos, as lm-eval does without a BOS).
    ``max_len`` is the number of tokens the model reads per window (≤ its position table);
    windows are those of :func:`rolling_windows`, run ``batch_size`` at a time.

    The model is moved to ``device`` and run in eval mode under ``no_grad``; its training mode is
    restored afterwards. If ``per_doc`` is a list, one entry per document (in ``docs`` order) is
    appended to it with that document's counts and ``sum_logprob``.
    """
    prefix_token, pad_id = _prefix_and_pad(model, tokenizer, max_len, prefix_token)

    was_training = model.training
    model.to(device)
    model.eval()
    stats: dict[str, dict[str, float]] = defaultdict(_empty)
    docs_seen: list[dict] = []  # one accumulator per document, in order
    pending: list[tuple[str, int, list[int], list[bool]]] = []  # (domain, doc index, window ids, pred mask)

    def flush() -> None:
        if not pending:
            return
        sums = _score_batch(model, [(s, m) for _, _, s, m in pending], pad_id, device)
        for (domain, doc, _, _), value in zip(pending, sums.tolist(), strict=True):
            stats[domain]["sum_logprob"] += value
            docs_seen[doc]["sum_logprob"] += value
        pending.clear()

    total = len(docs) if hasattr(docs, "__len__") else None  # type: ignore[arg-type]
    prog = Progress("perplexity", total=total, unit="docs")
    try:
        for domain, text in docs:
            ids = tokenizer.encode(text, add_special_tokens=False)
            counts = _doc_counts(text, ids)
            for key, value in counts.items():
                stats[domain][key] += value
            docs_seen.append({"domain": domain, "sum_logprob": 0.0, **counts})
            for seq, mask in rolling_windows(ids, max_len, prefix_token, context_len=context_len):
                pending.append((domain, len(docs_seen) - 1, seq, mask))
                if len(pending) >= batch_size:
                    flush()
            prog.update(1, tokens=len(ids))
        flush()
    finally:
        model.train(was_training)
    prog.done()
    if per_doc is not None:
        per_doc.extend(docs_seen)

    return _results(stats)


def _prefix_and_pad(model: torch.nn.Module, tokenizer, max_len: int, prefix_token: int | None) -> tuple[int, int]:
    """``(prefix token, pad id)`` of :func:`domain_perplexity`, after checking ``max_len``."""
    if prefix_token is None:
        prefix_token = tokenizer.eos_token_id
    if prefix_token is None:
        raise ValueError("tokenizer has no eos token; pass prefix_token")
    n_pos = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if n_pos is not None and max_len > n_pos:
        raise ValueError(f"max_len {max_len} exceeds the model's max_position_embeddings {n_pos}")
    return prefix_token, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else prefix_token


def _doc_counts(text: str, ids: list[int]) -> dict[str, int]:
    return {
        "n_docs": 1,
        "n_tokens": len(ids),
        "n_chars": len(text),
        "n_words": len(text.split()),
        "n_bytes": len(text.encode("utf-8")),
    }


def _results(stats: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per-domain statistics, sorted by domain, and their total under ``ALL``."""
    total_acc = _empty()
    for st in stats.values():
        for key in total_acc:
            total_acc[key] += st[key]
    result = {domain: _finish(st) for domain, st in sorted(stats.items())}
    result[ALL] = _finish(total_acc)
    log.info(
        "perplexity: %d docs, %d tokens, bits/byte %.4f",
        total_acc["n_docs"],
        total_acc["n_tokens"],
        result[ALL]["bits_per_byte"],
    )
    return result
