"""Fit a small model to expensive per-example labels, then score the pool with it.

One stage shared by PDS (labels = γ from the PMP solver), MATES (oracle influence from probing)
and the LESS predictor. The model is a transformer backbone (a fresh GPT-NeoX from a size block,
or a local pretrained folder used as an encoder), masked-mean (or last-token) pooling, dropout and
``Linear(hidden, 1)``. Labels are z-scored with the *training split's* mean/std and clipped to
±``clip``; the loss is MSE on those z labels, so **every score this module writes is in z units of
the training labels** (``raw ≈ mean + std · score``, up to the clipping). Higher score = higher
label; whether higher is better is the method's business (MATES: lower, PDS/LESS: higher).

The checkpoint kept is the one with the best validation Spearman, not the last one.

Saved folder (``fit_scorer`` → ``out_dir``)::

    model.safetensors   "backbone.<HF name>" + "head.weight" (1, hidden) + "head.bias" (1,)
    config.json         the backbone's HF config (AutoModel.from_config rebuilds it)
    scorer.json         ScorerConfig, label normalisation, tokenizer info, inputs, best step,
                        validation metrics and curve
    val.parquet         example_id, label (raw), target (z, clipped), prediction (z, best step)
    tokenizer/          the scorer tokenizer's HF folder (only when ``tokenizer`` was given)

Inputs are token-id lists per example. By default they are the corpus tokens from the
``ExampleStore`` (truncated to ``max_len``); a scorer with another tokenizer gets them from
:func:`retokenize` (corpus tokens → text → scorer tokens, keyed by ``example_id``) through the
``encoder`` argument, so both paths share the training and inference code.

Nothing is fetched from a hub: ``pretrained`` must be a local folder (``local_files_only=True``,
safetensors only, ``trust_remote_code`` only if the workflow config opts in: a fitted folder's
own scorer.json never decides it when the folder is loaded again).
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from winnow.io.atomic import read_json, write_json
from winnow.io.tables import SCORES, read_table, write_table
from winnow.models import attention
from winnow.progress import Progress
from winnow.stats import pearson, spearman
from winnow.train.batches import ExampleStore, step_ids
from winnow.train.schedules import lr_at

log = logging.getLogger(__name__)

Encoder = Callable[[int], Sequence[int]]

POOLINGS = ("mean", "last")
SCORER_FORMAT = 1

TOKEN_LISTS = pa.schema([("example_id", pa.int64()), ("tokens", pa.list_(pa.int32()))])
VAL_TABLE = pa.schema(
    [
        ("example_id", pa.int64()),
        ("label", pa.float64()),
        ("target", pa.float32()),
        ("prediction", pa.float32()),
    ]
)


# --------------------------------------------------------------------------------------------
# configuration and label normalisation


@dataclass
class ScorerConfig:
    """How to build and fit a scorer.

    Exactly one of ``backbone`` (GPT-NeoX sizes as in ``winnow.models.build``: hidden_size,
    num_layers, num_heads, intermediate_size, max_position_embeddings, optional vocab_size) and
    ``pretrained`` (a local HF folder; ``AutoModel`` → its last hidden states) must be set.
    ``epochs`` may be fractional; steps = ceil(epochs · n_train / batch_size).
    """

    backbone: dict | None = None
    pretrained: str | None = None
    trust_remote_code: bool = False
    max_len: int = 128
    pooling: str = "mean"
    dropout: float = 0.1
    lr: float = 1e-4
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    epochs: float = 5.0
    batch_size: int = 32
    eval_batch_size: int = 64
    warmup_steps: int = 10
    val_fraction: float = 0.1
    clip: float = 3.0
    eval_every: int = 50
    seed: int = 0
    grad_clip: float = 1.0
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 | bf16
    log_every_s: float = 10.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.backbone is None) == (not self.pretrained):
            raise ValueError("ScorerConfig needs exactly one of backbone (sizes) or pretrained (local folder)")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling {self.pooling!r}: one of {POOLINGS}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must be in (0, 1)")
        if self.clip <= 0:
            raise ValueError("clip must be > 0 (use a large value to disable clipping)")
        self.betas = tuple(self.betas)

    @classmethod
    def from_dict(cls, d: dict) -> ScorerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown scorer config keys {unknown}")
        return cls(**d)


@dataclass(frozen=True)
class LabelNorm:
    """``z = clip((y − mean) / std, −clip, clip)`` with mean/std of the training split (ddof 0)."""

    mean: float
    std: float
    clip: float

    @classmethod
    def fit(cls, train_labels: np.ndarray, clip: float = 3.0) -> LabelNorm:
        y = np.asarray(train_labels, dtype=np.float64)
        if y.size == 0 or not np.all(np.isfinite(y)):
            raise ValueError("training labels must be non-empty and finite")
        std = float(y.std())
        # A constant target has no ranking to learn; std 1 keeps z finite and the fit honest (ρ = nan).
        return cls(float(y.mean()), std if std > 0 else 1.0, float(clip))

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """``(n,)`` raw labels → ``(n,)`` float64 z labels clipped to ±clip."""
        z = (np.asarray(labels, dtype=np.float64) - self.mean) / self.std
        return np.clip(z, -self.clip, self.clip)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "clip": self.clip, "ddof": 0}


# --------------------------------------------------------------------------------------------
# metrics (pearson / spearman: winnow.stats)


def val_metrics(pred: np.ndarray, target: np.ndarray, top_frac: float = 0.3) -> dict:
    """Metrics of ``(n,)`` predictions against ``(n,)`` z targets (both in z units).

    ``top_precision``: share of the predicted top ``top_frac`` that is in the true top (PDS
    reports the same split as a classification).
    """
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    k = max(1, int(round(top_frac * len(pred))))
    top_pred = set(np.argsort(-pred, kind="stable")[:k].tolist())
    top_true = set(np.argsort(-target, kind="stable")[:k].tolist())
    return {
        "spearman": spearman(pred, target),
        "pearson": pearson(pred, target),
        "mse": float(np.mean((pred - target) ** 2)),
        "top_precision": len(top_pred & top_true) / k,
    }


# --------------------------------------------------------------------------------------------
# model


class ScorerModel(torch.nn.Module):
    """backbone → pooled hidden state ``(b, hidden)`` → dropout → ``Linear(hidden, 1)`` → ``(b,)``."""

    def __init__(self, backbone: torch.nn.Module, hidden_size: int, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r}: one of {POOLINGS}")
        self.backbone = backbone
        self.pooling = pooling
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(hidden_size, 1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, backbone_mask: bool = True
    ) -> torch.Tensor:
        """``input_ids``/``attention_mask`` ``(b, t)`` (right-padded) → scores ``(b,)`` float32.

        ``backbone_mask=False``: the backbone runs without the padding mask, which is redundant
        for a causal backbone with right padding (:data:`CAUSAL_BACKBONES`); pooling still uses it.
        Then the backbone also runs with a (fresh, empty) cache: without a mask *and* without a
        cache, transformers looks for packed sequences in the position ids, which under
        ``torch.compile`` it cannot decide and answers with a materialised mask (slow attention).
        """
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask if backbone_mask else None,
            use_cache=not backbone_mask,
        )
        h = out.last_hidden_state.float()  # (b, t, d)
        mask = attention_mask.to(h.dtype)
        if self.pooling == "mean":
            pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        else:
            last = (attention_mask.sum(1) - 1).clamp_min(0)
            pooled = h[torch.arange(h.size(0), device=h.device), last]
        return self.head(self.dropout(pooled)).squeeze(-1).float()


def _hidden_size(config) -> int:
    for key in ("hidden_size", "d_model", "n_embd", "dim"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise ValueError(f"cannot find the hidden size in {type(config).__name__}")


def build_scorer(cfg: ScorerConfig, vocab_size: int | None, eos_id: int | None, pad_id: int) -> ScorerModel:
    """A new scorer: random GPT-NeoX backbone (seeded) or the local pretrained encoder; fresh head."""
    torch.manual_seed(cfg.seed)
    if cfg.pretrained:
        from transformers import AutoModel

        path = Path(cfg.pretrained)
        if not path.is_dir():
            raise FileNotFoundError(f"pretrained scorer backbone {path} is not a local folder (no hub downloads)")
        from winnow.io.artifacts import check_hf_folder

        check_hf_folder(path)  # a truncated file is named
        backbone = AutoModel.from_pretrained(
            str(path),
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=cfg.trust_remote_code,
            dtype=torch.float32,  # fp32 master weights whatever the folder was saved in
        )
    else:
        from transformers import GPTNeoXModel

        from winnow.models.build import neox_config

        vocab = cfg.backbone.get("vocab_size", vocab_size)
        if not vocab:
            raise ValueError("a fresh backbone needs vocab_size (from the tokenizer or backbone['vocab_size'])")
        eos = eos_id if eos_id is not None else pad_id
        backbone = GPTNeoXModel(neox_config(cfg.backbone, int(vocab), eos, pad_id))
    torch.manual_seed(cfg.seed + 1)  # head init independent of how many draws the backbone took
    return ScorerModel(backbone, _hidden_size(backbone.config), cfg.pooling, cfg.dropout).float()


def load_scorer(
    model_dir: str | os.PathLike, device: str | torch.device = "cpu", trust_remote_code: bool = False
) -> tuple[ScorerModel, dict]:
    """``(model in eval mode on device, scorer.json contents)`` from a :func:`fit_scorer` folder.

    ``trust_remote_code`` is the caller's (the workflow config's scorer block, through the CLI):
    what the folder's own scorer.json says is ignored, so a folder cannot make loading run its
    code. Load errors name the file."""
    from transformers import AutoConfig, AutoModel

    from winnow.io.artifacts import load_tensors, naming, read_json_file

    model_dir = Path(model_dir)
    meta = read_json_file(model_dir / "scorer.json")
    cfg = meta["config"]
    trust = bool(trust_remote_code)
    config_path = model_dir / "config.json"
    read_json_file(config_path)
    with naming(config_path, "scorer config"):
        config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True, trust_remote_code=trust)
        backbone = AutoModel.from_config(config, trust_remote_code=trust)
    model = ScorerModel(backbone.float(), _hidden_size(config), cfg["pooling"], cfg["dropout"])
    weights_path = model_dir / "model.safetensors"
    weights = load_tensors(weights_path)
    with naming(weights_path, "scorer weights"):
        model.load_state_dict(weights, strict=True)
    model.to(device).eval()
    return model, meta


# --------------------------------------------------------------------------------------------
# inputs


def store_encoder(store: ExampleStore, max_len: int) -> Encoder:
    """example_id → the example's corpus tokens, truncated to ``max_len``."""

    def encode(example_id: int) -> np.ndarray:
        return store.get(example_id)[0][:max_len]

    return encode


def _special_frame(tok) -> tuple[list[int], int | None, list[int]]:
    """``(prefix, separator, suffix)`` ids a scorer tokenizer wraps a chunk in.

    BERT-style (has a CLS token): ``[CLS] piece [SEP] piece … [SEP]``. Decoder-style: a BOS
    prefix only if it differs from EOS (fairseq/Llama ``<s>``; GPT-2/Pythia have BOS = EOS),
    pieces joined by EOS where the corpus had its EOS — PDS's recipe.
    """
    cls_id = getattr(tok, "cls_token_id", None)
    sep_id = getattr(tok, "sep_token_id", None)
    eos_id = getattr(tok, "eos_token_id", None)
    bos_id = getattr(tok, "bos_token_id", None)
    if cls_id is not None:
        sep = sep_id if sep_id is not None else eos_id
        return [cls_id], sep, ([sep] if sep is not None else [])
    prefix = [bos_id] if bos_id is not None and bos_id != eos_id else []
    return prefix, (eos_id if eos_id is not None else sep_id), []


def _retokenize_batch(
    token_lists: list[np.ndarray], src_tokenizer, dst_tokenizer, max_len: int | None
) -> list[list[int]]:
    """Corpus token lists → scorer token lists (see :func:`retokenize`)."""
    src_eos = src_tokenizer.eos_token_id
    prefix, sep, suffix = _special_frame(dst_tokenizer)
    pieces: list[list[int]] = []
    counts: list[int] = []
    for tokens in token_lists:
        tokens = np.asarray(tokens, dtype=np.int64)
        cuts = np.flatnonzero(tokens == src_eos) if src_eos is not None else np.zeros(0, dtype=np.int64)
        parts = np.split(tokens, cuts)
        # np.split keeps each EOS at the head of the following part; drop it (it becomes ``sep``).
        parts = [parts[0]] + [p[1:] for p in parts[1:]]
        pieces.extend(p.tolist() for p in parts)
        counts.append(len(parts))
    texts = src_tokenizer.batch_decode(pieces, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    nonempty = [i for i, t in enumerate(texts) if t]
    encoded: list[list[int]] = [[] for _ in texts]
    if nonempty:
        enc = dst_tokenizer([texts[i] for i in nonempty], add_special_tokens=False)["input_ids"]
        for i, ids in zip(nonempty, enc):
            encoded[i] = list(ids)
    out = []
    k = 0
    for n in counts:
        body: list[int] = []
        for j in range(n):
            if j and sep is not None:
                body.append(sep)
            body.extend(encoded[k + j])
        k += n
        if max_len is not None:
            body = body[: max(max_len - len(prefix) - len(suffix), 0)]
        out.append(prefix + body + suffix)
    return out


def retokenize(
    store: ExampleStore,
    ids: Iterable[int],
    src_tokenizer,
    dst_tokenizer,
    max_len: int | None,
    chunk: int = 1024,
    log_every_s: float = 10.0,
) -> dict[int, list[int]]:
    """Re-encode corpus examples with the scorer's tokenizer, keyed by ``example_id``.

    Each example's corpus tokens are split at the corpus EOS, each piece is decoded to text and
    re-encoded with ``dst_tokenizer``, the pieces are joined with the scorer's EOS (or SEP), the
    scorer's framing tokens are added (see ``_special_frame``) and the result is truncated to
    ``max_len`` (framing kept).
    """
    ids = [int(e) for e in ids]
    out: dict[int, list[int]] = {}
    prog = Progress("retokenize", total=len(ids), unit="examples", interval_s=log_every_s)
    for start in range(0, len(ids), chunk):
        batch = ids[start : start + chunk]
        lists = _retokenize_batch([store.get(e)[0] for e in batch], src_tokenizer, dst_tokenizer, max_len)
        out.update(zip(batch, lists))
        prog.update(len(batch), tokens=sum(len(t) for t in lists))
    prog.done()
    return out


def dict_encoder(mapping: dict[int, Sequence[int]], max_len: int | None = None) -> Encoder:
    """Encoder over precomputed token lists (e.g. :func:`retokenize`'s output)."""

    def encode(example_id: int) -> Sequence[int]:
        tokens = mapping[int(example_id)]
        return tokens[:max_len] if max_len is not None else tokens

    return encode


def write_token_lists(path: str | os.PathLike, mapping: dict[int, Sequence[int]]) -> None:
    """Retokenized inputs as parquet (example_id int64, tokens list<int32>), sorted by id."""
    keys = sorted(mapping)
    table = pa.table(
        {
            "example_id": pa.array(keys, pa.int64()),
            "tokens": pa.array([list(mapping[k]) for k in keys], pa.list_(pa.int32())),
        }
    )
    write_table(path, table, TOKEN_LISTS)


def read_token_lists(path: str | os.PathLike) -> dict[int, list[int]]:
    t = read_table(path, TOKEN_LISTS).to_pydict()
    return dict(zip(t["example_id"], t["tokens"]))


_WS = re.compile(r"\s+")


def _normalise_text(text: str, mode: str) -> str:
    if mode == "none":
        return text
    if mode == "whitespace":
        return _WS.sub(" ", text).strip()
    if mode == "loose":  # uncased scorers (bert-base-uncased) and WordPiece's spaces around punctuation
        return _WS.sub("", text).lower()
    raise ValueError(f"normalize {mode!r}: one of none | whitespace | loose")


def roundtrip_check(
    store: ExampleStore,
    ids: Sequence[int],
    src_tokenizer,
    dst_tokenizer,
    n: int = 64,
    seed: int = 0,
    threshold: float = 0.9,
    normalize: str = "whitespace",
    max_len: int | None = None,
) -> dict:
    """Does re-encoding keep the text? Compare decode(src) with decode(dst(encode(text))).

    On ``n`` ids drawn with ``default_rng(seed)`` (without replacement), the corpus text
    ``src.decode(tokens)`` and the scorer's view ``dst.decode(retokenized)`` (special tokens
    skipped, retokenized *without* truncation so only the tokenizers are tested) are compared with
    ``difflib.SequenceMatcher(...).ratio()`` after ``normalize`` (none | whitespace | loose);
    ratio ≥ ``threshold`` passes. ``truncated`` tells whether ``max_len`` would cut the example.

    Returns: ``{"passed", "threshold", "normalize", "seed", "n_checked", "n_failed", "min_ratio",
    "mean_ratio", "truncated_frac", "samples": [{example_id, ratio, passed, src_chars, dst_chars,
    src_tokens, dst_tokens, truncated}]}`` (samples in the order of ``ids``).
    """
    ids = np.asarray(ids, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(ids), size=min(n, len(ids)), replace=False))
    samples = []
    for eid in ids[pick].tolist():
        tokens = store.get(eid)[0]
        dst_ids = _retokenize_batch([tokens], src_tokenizer, dst_tokenizer, None)[0]
        a = src_tokenizer.decode(tokens.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        b = dst_tokenizer.decode(dst_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        na, nb = _normalise_text(a, normalize), _normalise_text(b, normalize)
        ratio = 1.0 if na == nb else difflib.SequenceMatcher(None, na, nb).ratio()
        samples.append(
            {
                "example_id": int(eid),
                "ratio": float(ratio),
                "passed": bool(ratio >= threshold),
                "src_chars": len(a),
                "dst_chars": len(b),
                "src_tokens": len(tokens),
                "dst_tokens": len(dst_ids),
                "truncated": bool(max_len is not None and len(dst_ids) > max_len),
            }
        )
    ratios = np.array([s["ratio"] for s in samples], dtype=np.float64)
    n_failed = sum(not s["passed"] for s in samples)
    result = {
        "passed": bool(samples) and n_failed == 0,
        "threshold": threshold,
        "normalize": normalize,
        "seed": seed,
        "n_checked": len(samples),
        "n_failed": n_failed,
        "min_ratio": float(ratios.min()) if len(ratios) else float("nan"),
        "mean_ratio": float(ratios.mean()) if len(ratios) else float("nan"),
        "truncated_frac": float(np.mean([s["truncated"] for s in samples])) if samples else 0.0,
        "samples": samples,
    }
    log.info(
        "round-trip check: %d/%d pass (min ratio %.3f, mean %.3f)",
        len(samples) - n_failed,
        len(samples),
        result["min_ratio"],
        result["mean_ratio"],
    )
    return result


def tokenizer_info(tokenizer) -> dict | None:
    if tokenizer is None:
        return None
    return {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_size": len(tokenizer),
        "pad_id": tokenizer.pad_token_id,
        "eos_id": tokenizer.eos_token_id,
        "bos_id": getattr(tokenizer, "bos_token_id", None),
        "cls_id": getattr(tokenizer, "cls_token_id", None),
    }


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


# --------------------------------------------------------------------------------------------
# fitting


def split_ids(ids: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(train_ids, val_ids)``; val = the first ⌈fraction·n⌉ of ``default_rng(seed)``'s permutation."""
    ids = np.asarray(ids, dtype=np.int64)
    n_val = max(int(math.ceil(val_fraction * len(ids))), 1)
    perm = np.random.default_rng(seed).permutation(len(ids))
    return np.sort(ids[perm[n_val:]]), np.sort(ids[perm[:n_val]])


def _fit_split(
    ids: Sequence[int], labels: Sequence[float], cfg: ScorerConfig, val_ids: Sequence[int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``(ids, labels, train_ids, val_ids)`` of :func:`fit_scorer`: explicit or seeded split."""
    ids = np.asarray(ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.float64)
    if ids.shape != labels.shape or ids.ndim != 1:
        raise ValueError(f"ids {ids.shape} and labels {labels.shape} must be equal-length 1-D arrays")
    if len(np.unique(ids)) != len(ids):
        raise ValueError("ids contain duplicates")
    if not np.all(np.isfinite(labels)):
        raise ValueError(f"{int((~np.isfinite(labels)).sum())} labels are not finite")
    if val_ids is None:
        train_ids, val = split_ids(ids, cfg.val_fraction, cfg.seed)
    else:
        val = np.sort(np.unique(np.asarray(val_ids, dtype=np.int64)))
        missing = np.setdiff1d(val, ids)
        if len(missing):
            raise ValueError(f"{len(missing)} val ids have no label (first: {missing[:5].tolist()})")
        train_ids = np.sort(np.setdiff1d(ids, val))
    if len(val) < 3 or len(train_ids) < 1:
        raise ValueError(f"need ≥ 3 validation and ≥ 1 training examples, got {len(val)} and {len(train_ids)}")
    return ids, labels, train_ids, val


def _fit_model(
    cfg: ScorerConfig, tokenizer, encoder: Encoder, device: torch.device, check_ids: np.ndarray
) -> tuple[ScorerModel, int]:
    """The freshly initialised scorer on ``device`` in train mode, and the pad id its inputs use."""
    pad_id, eos_id, vocab = 0, None, None
    if tokenizer is not None:
        eos_id, vocab = tokenizer.eos_token_id, len(tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_id or 0)
    model = build_scorer(cfg, vocab, eos_id, pad_id)
    if tokenizer is None and getattr(model.backbone.config, "pad_token_id", None) is not None:
        pad_id = int(model.backbone.config.pad_token_id)
    model.to(device).train()
    _check_vocab(model, encoder, check_ids)
    return model, pad_id


def _adamw(model: ScorerModel, cfg: ScorerConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norms: none)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )


@dataclass
class _FitRun:
    """What one :func:`fit_scorer` training loop works with (fixed before the first step)."""

    cfg: ScorerConfig
    model: ScorerModel
    optimizer: torch.optim.Optimizer
    encoder: Encoder
    train_ids: np.ndarray
    target_of: dict
    val: np.ndarray
    val_target: np.ndarray
    pad_id: int
    device: torch.device
    use_bf16: bool
    total: int


def _fit_step(run: _FitRun, step: int) -> tuple[float, float, int]:
    """One optimizer step: ``(loss, lr, batch size)``."""
    cfg, model = run.cfg, run.model
    lr = lr_at(step, cfg.lr, run.total, "cosine", cfg.warmup_steps, cfg.min_lr_ratio)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    batch = step_ids(run.train_ids, step, cfg.batch_size, cfg.seed)
    input_ids, attention = pad_batch([run.encoder(e) for e in batch], run.pad_id, cfg.max_len)
    y = torch.tensor([run.target_of[e] for e in batch.tolist()], dtype=torch.float32, device=run.device)
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_bf16):
        pred = model(input_ids.to(run.device), attention.to(run.device))
    loss = F.mse_loss(pred.float(), y)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"scorer loss is {float(loss)} at step {step}")
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), lr, len(batch)


def _fit_eval(run: _FitRun, done: int, train_loss: float, lr: float, best: dict) -> tuple[dict, dict]:
    """Evaluate after ``done`` steps: ``(curve entry, best)``, best replaced when strictly better."""
    cfg = run.cfg
    vp = predict(
        run.model, run.encoder, run.val, cfg.eval_batch_size, run.pad_id, cfg.max_len, run.device, run.use_bf16
    )
    m = val_metrics(vp, run.val_target)
    entry = {
        "step": done,
        "val_spearman": m["spearman"],
        "val_pearson": m["pearson"],
        "val_mse": m["mse"],
        "val_top_precision": m["top_precision"],
        "train_loss": train_loss,
        "lr": lr,
    }
    rho = m["spearman"] if np.isfinite(m["spearman"]) else -math.inf
    # Strictly better only: ties keep the earlier (less trained) checkpoint.
    if rho > best["spearman"] or best["step"] is None:
        best = {
            "spearman": rho,
            "step": done,
            "state": {k: v.detach().to("cpu", copy=True) for k, v in run.model.state_dict().items()},
            "pred": vp,
            "metrics": m,
        }
    return entry, best


def _fit_loop(run: _FitRun, eval_every: int, on_eval) -> tuple[list[dict], dict]:
    """The training steps with an evaluation every ``eval_every`` and at the end: ``(curve, best)``."""
    curve: list[dict] = []
    best = {"spearman": -math.inf, "step": None, "state": None, "pred": None, "metrics": None}
    loss_sum, loss_n = 0.0, 0
    prog = Progress("fit scorer", total=run.total, unit="steps", interval_s=run.cfg.log_every_s)
    for step in range(run.total):
        loss, lr, n_batch = _fit_step(run, step)
        loss_sum += loss
        loss_n += 1
        prog.update(1, examples=n_batch)
        done = step + 1
        if done % eval_every == 0 or done == run.total:
            entry, best = _fit_eval(run, done, loss_sum / loss_n, lr, best)
            curve.append(entry)
            loss_sum, loss_n = 0.0, 0
            log.info(
                "%s step %d: val spearman %.4f pearson %.4f mse %.4f, train loss %.4f (best %.4f @ %d)",
                prog.line(),
                done,
                entry["val_spearman"],
                entry["val_pearson"],
                entry["val_mse"],
                entry["train_loss"],
                best["spearman"],
                best["step"],
            )
            if on_eval is not None:
                on_eval(done, entry, run.model)
    prog.done()
    return curve, best


def _save_fit(
    out_dir: Path,
    run: _FitRun,
    curve: list[dict],
    best: dict,
    *,
    norm: LabelNorm,
    label_of: dict,
    tokenizer,
    inputs: str,
    steps_per_epoch: int,
    n_params: int,
    wall_s: float,
) -> dict:
    """The report of :func:`fit_scorer`; writes the scorer folder (the best checkpoint, loaded)."""
    m = best["metrics"]
    report = {
        "val_spearman": m["spearman"],
        "val_pearson": m["pearson"],
        "val_mse": m["mse"],
        "val_top_precision": m["top_precision"],
        "n_train": int(len(run.train_ids)),
        "n_val": int(len(run.val)),
        "best_step": int(best["step"]),
        "steps": run.total,
        "steps_per_epoch": steps_per_epoch,
        "curve": curve,
        "label_norm": norm.to_dict(),
        "units": "z (training-label mean/std, clipped)",
        "wall_s": wall_s,
        "n_params": n_params,
        "device": str(run.device),
        "precision": "bf16" if run.use_bf16 else "fp32",
    }
    meta = {
        "format": SCORER_FORMAT,
        "config": asdict(run.cfg),
        "label_norm": norm.to_dict(),
        "tokenizer": tokenizer_info(tokenizer),
        "pad_id": int(run.pad_id),
        "inputs": inputs,
        "best_step": report["best_step"],
        "report": report,
    }
    val_table = pa.table(
        {
            "example_id": pa.array(run.val, pa.int64()),
            "label": pa.array([label_of[e] for e in run.val.tolist()], pa.float64()),
            "target": pa.array(run.val_target.astype(np.float32)),
            "prediction": pa.array(best["pred"].astype(np.float32)),
        }
    )
    _save_folder(out_dir, run.model, meta, val_table, tokenizer)
    return report


def fit_scorer(
    store: ExampleStore | None,
    ids: Sequence[int],
    labels: Sequence[float],
    cfg: ScorerConfig,
    out_dir: str | os.PathLike,
    tokenizer=None,
    val_ids: Sequence[int] | None = None,
    encoder: Encoder | None = None,
    device: str | torch.device | None = None,
    on_eval: Callable[[int, dict, ScorerModel], None] | None = None,
) -> dict:
    """Fit a scorer to ``labels`` and save the best-validation-Spearman checkpoint in ``out_dir``.

    Args:
        store: corpus examples; inputs are their tokens (truncated to ``cfg.max_len``) unless
            ``encoder`` is given (then ``store`` may be None).
        ids: ``(n,)`` example ids with labels; ``labels``: ``(n,)`` raw labels, same order.
        tokenizer: the tokenizer of the scorer's *inputs* (the corpus tokenizer, or the scorer's
            own when ``encoder`` is a retokenization): gives vocab size and pad id, and is saved
            under ``out_dir/tokenizer``.
        val_ids: explicit validation ids (a subset of ``ids``); otherwise a seeded split of
            ``cfg.val_fraction``.
        encoder: example_id → token list, e.g. ``dict_encoder(retokenize(...))``.
        device: default CUDA if available, else CPU.
        on_eval: called as ``on_eval(step, curve_entry, model)`` after each evaluation (after the
            best checkpoint was updated), e.g. for an external tracker.
    Returns:
        The report (also in ``scorer.json``): ``val_spearman``, ``val_pearson``, ``val_mse`` (z
        units), ``val_top_precision``, ``n_train``, ``n_val``, ``best_step``, ``steps``, ``curve``
        (per evaluation: step, val_spearman, val_pearson, val_mse, train_loss, lr), ``label_norm``,
        ``wall_s``, ``n_params``, ``device``, ``precision``.
    """
    t_start = time.monotonic()
    ids, labels, train_ids, val = _fit_split(ids, labels, cfg, val_ids)
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    norm = LabelNorm.fit(np.array([label_of[e] for e in train_ids.tolist()]), cfg.clip)
    target_of = dict(zip(ids.tolist(), norm.apply(labels).tolist()))
    val_target = np.array([target_of[e] for e in val.tolist()], dtype=np.float64)

    if encoder is None:
        if store is None:
            raise ValueError("give a store or an encoder")
        encoder = store_encoder(store, cfg.max_len)
        inputs = "store"
    else:
        inputs = "encoder"
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    use_bf16 = _use_bf16(cfg.precision, device)
    model, pad_id = _fit_model(cfg, tokenizer, encoder, device, np.concatenate([train_ids[:128], val[:128]]))
    optimizer = _adamw(model, cfg)
    steps_per_epoch = math.ceil(len(train_ids) / cfg.batch_size)
    total = max(int(math.ceil(cfg.epochs * steps_per_epoch)), 1)
    eval_every = max(int(cfg.eval_every), 1)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "fit scorer: %d params, %d train / %d val, %d steps × %d (%.1f epochs), eval every %d, %s, %s",
        n_params,
        len(train_ids),
        len(val),
        total,
        cfg.batch_size,
        cfg.epochs,
        eval_every,
        device,
        "bf16" if use_bf16 else "fp32",
    )

    torch.manual_seed(cfg.seed)  # dropout stream
    run = _FitRun(
        cfg, model, optimizer, encoder, train_ids, target_of, val, val_target, pad_id, device, use_bf16, total
    )
    curve, best = _fit_loop(run, eval_every, on_eval)
    model.load_state_dict(best["state"])
    model.eval()

    return _save_fit(
        Path(out_dir),
        run,
        curve,
        best,
        norm=norm,
        label_of=label_of,
        tokenizer=tokenizer,
        inputs=inputs,
        steps_per_epoch=steps_per_epoch,
        n_params=n_params,
        wall_s=time.monotonic() - t_start,
    )


def _save_folder(out_dir: Path, model: ScorerModel, meta: dict, val_table: pa.Table, tokenizer) -> None:
    """Write the scorer folder atomically (temp folder, then rename)."""
    from safetensors.torch import save_file

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}.", dir=out_dir.parent))
    try:
        model.backbone.config.save_pretrained(str(tmp))
        # clone: tied weights share storage, which safetensors refuses
        weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json(tmp / "scorer.json", meta)
        write_table(tmp / "val.parquet", val_table, VAL_TABLE)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# --------------------------------------------------------------------------------------------
# scoring the pool (resumable)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _part_path(state_path: Path, k: int) -> Path:
    return state_path.with_name(f"{state_path.stem}-part-{k:06d}.parquet")


def _clear_parts(state_path: Path) -> None:
    for p in state_path.parent.glob(f"{state_path.stem}-part-*.parquet"):
        p.unlink()
    if state_path.exists():
        state_path.unlink()


def _score_fingerprint(
    ids: np.ndarray, model_dir: Path, batch_size: int, max_len: int, device: torch.device, tag: str, compile
) -> str:
    """What a resumable :func:`score_ids` state must match: ids, weights, batching, device, tag."""
    fp = hashlib.sha256()
    fp.update(ids.tobytes())
    fp.update(_file_sha256(model_dir / "model.safetensors").encode())
    fp.update(f"{batch_size}|{max_len}|{device.type}|{tag}".encode())
    if device.type == "cuda":  # compiled and eager kernels round differently: never mix their parts
        fp.update(f"|compile={compile is not False}".encode())
    return fp.hexdigest()[:32]


def _resume_scores(state_path: Path, fingerprint: str, ids: np.ndarray) -> tuple[list[np.ndarray], int]:
    """``(scores of the finished parts, next index)`` from a matching state; else cleared, ``([], 0)``."""
    parts: list[np.ndarray] = []
    start = 0
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state = read_json(state_path) if state_path.exists() else None
    if state is not None and state.get("fingerprint") == fingerprint:
        try:
            tables = [read_table(state_path.with_name(name), SCORES) for name in state["parts"]]
            got_ids = np.concatenate([t["example_id"].to_numpy() for t in tables]) if tables else ids[:0]
            if int(state["next_index"]) != len(got_ids) or not np.array_equal(got_ids, ids[: len(got_ids)]):
                raise ValueError("parts do not cover ids[:next_index]")
        except (OSError, ValueError, KeyError) as err:
            log.warning("score state %s is unusable (%s); starting over", state_path, err)
            _clear_parts(state_path)
        else:
            parts = [t["score"].to_numpy() for t in tables]
            start = len(got_ids)
            log.info("resuming scoring at %d/%d from %s", start, len(ids), state_path)
    elif state is not None:
        log.warning("score state %s is from other inputs; starting over", state_path)
    if start == 0:
        _clear_parts(state_path)  # leftovers of another run must not be mixed in
    return parts, start


def score_ids(
    model_dir: str | os.PathLike,
    store: ExampleStore | None,
    ids: Sequence[int],
    batch_size: int,
    out_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    state_path: str | os.PathLike | None = None,
    flush_every: int = 100,
    encoder: Encoder | None = None,
    tag: str = "",
    log_every_s: float = 10.0,
    compile: bool | None = None,
    trust_remote_code: bool = False,
) -> dict:
    """Score ``ids`` with a fitted scorer; write SCORES parquet (example_id int64, score float32).

    ``trust_remote_code``: the workflow config's (see :func:`load_scorer`), never the folder's.

    Scores are in **z units of the training labels** (see the module docstring), rows in the
    order of ``ids``. Batches are consecutive slices of ``ids``; bf16 autocast on CUDA only.

    Resumable when ``state_path`` is given: every ``flush_every`` batches the new scores go to
    ``{state_path.stem}-part-{k:06d}.parquet`` next to ``state_path`` and the JSON state
    (fingerprint, next index, parts) is rewritten. A rerun with the same arguments continues at
    the next index and writes the same bytes as an uninterrupted run. The fingerprint covers the
    ids, the weights' sha256, batch size, max_len, device type and ``tag`` (name any custom
    ``encoder`` there, e.g. the retokenized table's hash); a state with another fingerprint is
    discarded, never mixed. Parts and state are removed once ``out_path`` is written.

    On CUDA the batches run through :class:`_CudaScorer` (bf16 weights, ``compile``: None = on);
    the CPU path is :func:`_predict_batch` (fp32).

    Returns: ``{"n", "resumed_at", "wall_s", "examples_per_s", "units", "label_norm"}``.
    """
    t0 = time.monotonic()
    model_dir = Path(model_dir)
    device = torch.device(device)
    ids = np.asarray(ids, dtype=np.int64)
    model, meta = load_scorer(model_dir, device, trust_remote_code=trust_remote_code)
    cfg = meta["config"]
    max_len = int(cfg["max_len"])
    pad_id = int(meta["pad_id"])
    use_bf16 = device.type == "cuda"
    if encoder is None:
        if meta.get("inputs") == "encoder":
            raise ValueError(f"{model_dir} was fitted on custom (retokenized) inputs: pass the same encoder")
        if store is None:
            raise ValueError("give a store or an encoder")
        encoder = store_encoder(store, max_len)
    _check_vocab(model, encoder, ids)

    fingerprint = _score_fingerprint(ids, model_dir, batch_size, max_len, device, tag, compile)
    state_path = Path(state_path) if state_path is not None else None
    parts, start = _resume_scores(state_path, fingerprint, ids) if state_path is not None else ([], 0)

    prog = Progress("score", total=len(ids), unit="examples", interval_s=log_every_s)
    prog.count = start
    pending: list[np.ndarray] = []
    pending_from = start
    n_batches = 0
    fast = _CudaScorer(model, batch_size, max_len, compile is not False) if device.type == "cuda" else None
    for scores in _scored_batches(model, encoder, ids, start, batch_size, pad_id, max_len, device, use_bf16, fast):
        pending.append(scores)
        n_batches += 1
        prog.update(len(scores))
        if state_path is not None and n_batches % flush_every == 0:
            _flush(state_path, ids, parts, pending, pending_from, fingerprint)
            pending_from += sum(len(p) for p in pending)
            pending = []
    prog.done()
    scores = np.concatenate(parts + pending) if (parts or pending) else np.zeros(0, dtype=np.float32)
    table = pa.table({"example_id": pa.array(ids, pa.int64()), "score": pa.array(scores.astype(np.float32))})
    write_table(out_path, table, SCORES)
    if state_path is not None:
        _clear_parts(state_path)
    wall = time.monotonic() - t0
    return {
        "n": int(len(ids)),
        "resumed_at": int(start),
        "wall_s": wall,
        "examples_per_s": (len(ids) - start) / wall if wall > 0 else None,
        "units": "z (training-label mean/std, clipped)",
        "label_norm": meta["label_norm"],
    }


def _flush(state_path: Path, ids: np.ndarray, parts: list, pending: list, start: int, fingerprint: str) -> None:
    """Write ``pending`` scores as the next part file, then the state that lists it."""
    new = np.concatenate(pending).astype(np.float32)
    k = len(parts)
    part = _part_path(state_path, k)
    write_table(
        part,
        pa.table({"example_id": pa.array(ids[start : start + len(new)], pa.int64()), "score": pa.array(new)}),
        SCORES,
    )
    parts.append(new)
    names = [_part_path(state_path, j).name for j in range(len(parts))]
    write_json(
        state_path, {"fingerprint": fingerprint, "next_index": start + len(new), "parts": names, "n_ids": int(len(ids))}
    )
