"""Batching and inference: padded batches, the fp32/bf16-autocast path and the compiled CUDA path."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from winnow.models import attention
from winnow.scorer.inputs import Encoder
from winnow.scorer.model import ScorerModel

# --------------------------------------------------------------------------------------------
# batching and inference


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to the longest (≤ ``max_len``): ``input_ids``, ``attention_mask`` ``(b, t)``.

    An empty list becomes one attended pad token: a fully masked row would make attention NaN.
    """
    lens = [max(min(len(s), max_len), 1) for s in seqs]
    t = max(lens)
    input_ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), t), dtype=torch.long)
    for r, s in enumerate(seqs):
        s = np.asarray(s[:max_len], dtype=np.int64)
        input_ids[r, : len(s)] = torch.from_numpy(s)
        attention[r, : lens[r]] = 1
    return input_ids, attention


def _predict_batch(
    model: ScorerModel, seqs: list, pad_id: int, max_len: int, device: torch.device, use_bf16: bool
) -> np.ndarray:
    """Scores ``(b,)`` float32 of one batch (model in eval mode, no grad)."""
    input_ids, attention = pad_batch(seqs, pad_id, max_len)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        out = model(input_ids.to(device), attention.to(device))
    return out.float().cpu().numpy().astype(np.float32)


# Backbones whose position ids are 0..t−1 whatever the mask and whose attention is causal: with
# right padding a real token never attends a pad, so their outputs at real positions do not depend
# on the padding mask, and without it SDPA runs its fused causal kernels.
CAUSAL_BACKBONES = ("gpt_neox", "llama", "mistral", "qwen2", "qwen3")


class _CudaScorer:
    """``score_ids``' CUDA path: the same scores as :func:`_predict_batch` up to bf16 rounding.

    bf16 backbone weights (the head and pooling stay fp32), no padding mask for causal backbones,
    ``torch.compile`` (dynamic=False) on shapes bucketed to (batch_size, a power of two ≥ 64 capped
    at max_len) so that a pool compiles a handful of graphs, inputs through pinned memory, and the
    scores copied back asynchronously: the host pads batch i+1 while the device runs batch i.
    Extra rows (the last batch) are one attended pad token; their scores are dropped.
    """

    def __init__(
        self, model: ScorerModel, batch_size: int, max_len: int, compile: bool = True, mode: str | None = None
    ):
        self.model = model
        model.backbone.to(torch.bfloat16)
        self.batch_size, self.max_len, self.compile = batch_size, max_len, compile
        self.causal = getattr(model.backbone.config, "model_type", None) in CAUSAL_BACKBONES
        if self.causal:
            # transformers' sdpa under torch.compile (torch < 2.14) materialises the causal mask
            attention.use_causal_sdpa(model.backbone)
        self.device = next(model.parameters()).device
        self.fwd = torch.compile(self._forward, dynamic=False, mode=mode) if compile else self._forward

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, attention_mask, backbone_mask=not self.causal)

    def _shape(self, t: int) -> int:
        if not self.compile:
            return t
        return min(max(64, 1 << (t - 1).bit_length()), max(self.max_len, t))

    def launch(self, seqs: list, pad_id: int):
        n = len(seqs)
        ids, attn = pad_batch(seqs, pad_id, self.max_len)
        rows, t = (self.batch_size if self.compile else n), self._shape(ids.shape[1])
        if (rows, t) != tuple(ids.shape):
            full_ids = torch.full((max(rows, n), t), pad_id, dtype=ids.dtype)
            full_attn = torch.zeros((max(rows, n), t), dtype=attn.dtype)
            full_ids[:n, : ids.shape[1]], full_attn[:n, : attn.shape[1]] = ids, attn
            full_attn[n:, 0] = 1
            ids, attn = full_ids, full_attn
        ids, attn = ids.pin_memory(), attn.pin_memory()
        with torch.no_grad():
            out = self.fwd(ids.to(self.device, non_blocking=True), attn.to(self.device, non_blocking=True))
        host = torch.empty(n, dtype=torch.float32, pin_memory=True)
        host.copy_(out[:n].float(), non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done, (ids, attn)  # the pinned inputs live until the copy has run

    @staticmethod
    def fetch(handle) -> np.ndarray:
        host, done, _ = handle
        done.synchronize()
        return host.numpy().astype(np.float32)


def _scored_batches(model, encoder, ids, start, batch_size, pad_id, max_len, device, use_bf16, fast):
    """Scores of the consecutive batches ``ids[start:]``, one array each, in order."""
    if fast is None:
        for i in range(start, len(ids), batch_size):
            yield _predict_batch(
                model, [encoder(e) for e in ids[i : i + batch_size]], pad_id, max_len, device, use_bf16
            )
        return
    inflight = None
    for i in range(start, len(ids), batch_size):
        nxt = fast.launch([encoder(e) for e in ids[i : i + batch_size]], pad_id)
        if inflight is not None:
            yield fast.fetch(inflight)
        inflight = nxt
    if inflight is not None:
        yield fast.fetch(inflight)


def predict(
    model: ScorerModel,
    encoder: Encoder,
    ids: Sequence[int],
    batch_size: int,
    pad_id: int,
    max_len: int,
    device: torch.device,
    use_bf16: bool = False,
) -> np.ndarray:
    """``(n,)`` float32 scores of ``ids`` in order, batches of consecutive ids."""
    was_training = model.training
    model.eval()
    out = [
        _predict_batch(model, [encoder(e) for e in ids[i : i + batch_size]], pad_id, max_len, device, use_bf16)
        for i in range(0, len(ids), batch_size)
    ]
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def _check_vocab(model: ScorerModel, encoder: Encoder, ids: Sequence[int], n: int = 256) -> None:
    """Fail early (not with an index error deep in an embedding) if inputs exceed the vocabulary."""
    emb = model.backbone.get_input_embeddings()
    vocab = emb.num_embeddings
    top = max((int(np.max(encoder(e))) for e in ids[:n] if len(encoder(e))), default=-1)
    if top >= vocab:
        raise ValueError(
            f"token id {top} ≥ the scorer's vocabulary {vocab}: the scorer expects another tokenizer "
            "(retokenize the inputs and pass encoder=...)"
        )


def _use_bf16(precision: str, device: torch.device) -> bool:
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: auto | fp32 | bf16")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")
