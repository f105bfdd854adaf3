"""The scorer model: configuration, label normalisation, validation metrics, build and load."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from winnow.stats import pearson, spearman

POOLINGS = ("mean", "last")
SCORER_FORMAT = 1


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
