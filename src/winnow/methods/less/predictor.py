"""The learned score predictor: ridge regression on the frozen base model's mean hidden states."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from winnow.methods.less.features import _amp_ctx
from winnow.train.batches import ExampleStore, collate

# ----------------------------------------------------------------------------------------------
# predictor: ridge regression on cheap per-example inputs


def _ridge_coefs(xs: np.ndarray, yc: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """Coefficients ``(k, L)`` minimising (1/n)‖yc − xs w‖² + λ‖w‖² for each λ (xs, yc centred)."""
    n, k = xs.shape
    if k <= n:  # primal: (XᵀX/n + λ)⁻¹ Xᵀy/n through one eigendecomposition
        s, vecs = np.linalg.eigh(xs.T @ xs / n)
        proj = vecs.T @ (xs.T @ yc / n)
        return vecs @ (proj[:, None] / (s[:, None] + lambdas[None, :]))
    e, u = np.linalg.eigh(xs @ xs.T / n)  # dual: w = Xᵀ (XXᵀ/n + λ)⁻¹ y / n
    proj = u.T @ yc
    return xs.T @ (u @ (proj[:, None] / (e[:, None] + lambdas[None, :]))) / n


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    scale = x.std(0)
    return mean, np.where(scale > 0, scale, 1.0)


def fit_ridge(
    X,
    y,
    lambdas: Sequence[float] = tuple(np.logspace(-3, 3, 13)),
    folds: int = 5,
    seed: int = 0,
) -> dict:
    """Ridge regression y ≈ ((X − μ)/σ) w + b with λ chosen by k-fold cross-validation.

    Objective per λ: (1/n)‖y − X̃w − b‖² + λ‖w‖² on standardised X̃ (so λ is on the scale of a unit
    feature variance); closed form through one eigendecomposition per fold. Folds are a seeded
    random partition; each fold standardises with its own training part. The final model is refit
    on all rows with the λ of lowest mean validation MSE.
    Returns:
        ``{"mean", "scale", "coef", "intercept", "lambda", "lambdas", "cv_mse", "n", "k"}`` (numpy /
        floats; see :func:`predict_ridge`).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != len(y):
        raise ValueError(f"X {X.shape} and y {y.shape} do not match")
    lam = np.asarray(lambdas, dtype=np.float64)
    n = len(y)
    folds = max(2, min(int(folds), n))
    order = np.random.default_rng(seed).permutation(n)
    parts = np.array_split(order, folds)
    mse = np.zeros(len(lam))
    for part in parts:
        train = np.setdiff1d(order, part)
        mu, sd = _standardise(X[train])
        coefs = _ridge_coefs((X[train] - mu) / sd, y[train] - y[train].mean(), lam)
        pred = ((X[part] - mu) / sd) @ coefs + y[train].mean()
        mse += ((pred - y[part, None]) ** 2).sum(0)
    mse /= n
    best = int(np.argmin(mse))
    mu, sd = _standardise(X)
    coef = _ridge_coefs((X - mu) / sd, y - y.mean(), lam[best : best + 1])[:, 0]
    return {
        "mean": mu,
        "scale": sd,
        "coef": coef,
        "intercept": float(y.mean()),
        "lambda": float(lam[best]),
        "lambdas": lam,
        "cv_mse": mse,
        "n": n,
        "k": X.shape[1],
    }


def predict_ridge(model: dict, X) -> np.ndarray:
    """``(n,)`` float64 predictions of a :func:`fit_ridge` model."""
    X = np.asarray(X, dtype=np.float64)
    return ((X - model["mean"]) / model["scale"]) @ model["coef"] + model["intercept"]


def regression_report(y_true, y_pred) -> dict:
    """``{r2, spearman, pearson, n}``; r2 = 1 − Σ(y − ŷ)² / Σ(y − ȳ)²."""
    from winnow.stats import pearson, spearman

    a = np.asarray(y_true, dtype=np.float64).reshape(-1)
    b = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    ss_tot = float(((a - a.mean()) ** 2).sum())
    r2 = 1.0 - float(((a - b) ** 2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    return {"r2": r2, "spearman": spearman(a, b), "pearson": pearson(a, b), "n": int(len(a))}


def _is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer without its LM head (peft wrapper and CausalLM head stripped)."""
    hf = model.get_base_model() if _is_peft(model) else model
    return getattr(hf, "base_model", hf)


@torch.no_grad()
def mean_hidden_states(
    model: torch.nn.Module,
    store: ExampleStore,
    ids: Sequence[int] | np.ndarray,
    batch_size: int = 32,
    seq_len: int = 512,
    pad_id: int = 0,
    device: torch.device | str | None = None,
    amp: str | None = None,
) -> torch.Tensor:
    """Mean of the frozen base model's last hidden state over each example's tokens: ``(N, hidden)``.

    "Last hidden state" is the backbone's output after its final layer norm (what the LM head
    reads); the mean runs over the positions of ``attention_mask`` (all tokens of the example,
    prompt included). LoRA adapters, if any, are disabled; no logits are computed. Eval mode;
    float32 on the CPU, ``ids`` order.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    off = model.disable_adapter() if _is_peft(model) else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    out = []
    try:
        with off:
            backbone = _backbone(model)
            ids = [int(i) for i in ids]
            for i in range(0, len(ids), batch_size):
                batch = collate(store, ids[i : i + batch_size], seq_len, pad_id)
                attn = batch["attention_mask"].to(device)
                with _amp_ctx(amp, device):
                    h = backbone(input_ids=batch["input_ids"].to(device), attention_mask=attn).last_hidden_state
                mask = attn.to(torch.float32)[..., None]
                out.append(((h.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)).cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, _backbone(model).config.hidden_size)
    return torch.cat(out)
