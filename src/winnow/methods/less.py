"""LESS: LoRA gradient features, their projection and matching, and a learned score predictor.

Features per example and warm-up checkpoint: Adam-preconditioned LoRA gradients for the pool, plain
gradients for the target, projected by a seeded ±1 matrix (:class:`RademacherProjector`, ``(P,) →
(d,)``) and L2-normalised; per-example gradients are batched (hooks or ``vmap(grad)``).
:func:`less_scores` gives each pool example its lr-weighted cosine with the target, aggregated over
the target examples (``(N,)`` float32). :func:`fit_ridge` / :func:`mean_hidden_states`: the
predictor from the frozen base's mean hidden states (used by :mod:`winnow.methods.less_prefilter`).
Checkpoint weights and moments are keyed by peft's parameter names
(``base_model.model.<module>.lora_A.default.weight``; moments under ``<name>.exp_avg`` /
``.exp_avg_sq``).

See docs/methods/less.md for the equations, the differences from LESS's released code and the
checks.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from winnow.grads import Batch, eval_mode, per_example_grads, per_example_loss
from winnow.io.atomic import atomic_path, read_json, write_json
from winnow.train.batches import ExampleStore, collate

DEFAULT_TARGET_MODULES = ("query_key_value", "dense")  # GPT-NeoX attention qkv and attention output
KINDS = ("adam", "sgd")
AGGREGATES = ("subtask_max", "mean", "max", "min")

# ----------------------------------------------------------------------------------------------
# LoRA


def add_lora(
    model: torch.nn.Module,
    r: int = 128,
    alpha: float = 512,
    dropout: float = 0.1,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    seed: int = 0,
) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters (peft ``LoraConfig`` + ``get_peft_model``); returns the peft model.

    ``model`` is modified in place (peft injects the adapter layers into it) and its base weights are
    frozen. A is initialised by peft (Kaiming-uniform) from a CPU RNG seeded with ``seed`` (the global
    RNG state is restored afterwards); B is zero. The default targets are GPT-NeoX's attention qkv
    and attention output projections (peft matches module-name suffixes, so "dense" does not match
    the MLP's ``dense_h_to_4h``/``dense_4h_to_h``).
    """
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(
        r=int(r),
        lora_alpha=alpha,
        lora_dropout=float(dropout),
        target_modules=list(target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # peft builds the adapter linears on the CPU and moves them next to the base layer afterwards.
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' is_gradient_checkpointing
        torch.manual_seed(int(seed))
        return get_peft_model(model, cfg)


def lora_param_names(model: torch.nn.Module) -> list[str]:
    """Trainable LoRA parameters, sorted: this order defines the flattened gradient layout."""
    names = sorted(n for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n)
    if not names:
        raise ValueError("the model has no trainable LoRA parameters (call add_lora first)")
    return names


def lora_size(model: torch.nn.Module, names: Sequence[str]) -> int:
    """P: the number of values in the flattened LoRA gradient."""
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def load_lora_checkpoint(
    base_model: torch.nn.Module, ckpt_dir: str | os.PathLike, lora_cfg: dict
) -> tuple[torch.nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Rebuild the peft model on ``base_model`` and load a trainer checkpoint of it.

    Args:
        base_model: a model of the checkpoint's base architecture (modified in place by peft; its
            weights are overwritten with the checkpoint's, which hold base and LoRA weights).
        ckpt_dir: a folder of :mod:`winnow.models.checkpoint` written while training the peft model.
        lora_cfg: keyword arguments of :func:`add_lora` (r, alpha, dropout, target_modules, seed).
    Returns:
        The peft model (base weights frozen, device of ``base_model``) and the AdamW moments of its
        LoRA parameters ``{name: (exp_avg, exp_avg_sq)}`` (CPU, float32, each the parameter's
        shape); empty when the checkpoint has no optimizer.safetensors.
    Raises:
        KeyError: optimizer.safetensors exists but lacks some LoRA parameter's moments.
    """
    from winnow.io.artifacts import load_tensors
    from winnow.models.checkpoint import load_weights

    model = add_lora(base_model, **lora_cfg)
    load_weights(model, ckpt_dir)
    opt_path = Path(ckpt_dir) / "optimizer.safetensors"
    if not opt_path.exists():
        return model, {}
    tensors = load_tensors(opt_path)
    names = lora_param_names(model)
    missing = [n for n in names if f"{n}.exp_avg" not in tensors or f"{n}.exp_avg_sq" not in tensors]
    if missing:
        raise KeyError(f"{opt_path}: no AdamW moments for {len(missing)} LoRA parameters, e.g. {missing[:2]}")
    moments = {n: (tensors[f"{n}.exp_avg"].float(), tensors[f"{n}.exp_avg_sq"].float()) for n in names}
    return model, moments


def flat_moments(
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]], names: Sequence[str], device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exp_avg (P,), exp_avg_sq (P,))`` float32, flattened in ``names`` order."""
    m = torch.cat([moments[n][0].reshape(-1) for n in names]).to(device=device, dtype=torch.float32)
    v = torch.cat([moments[n][1].reshape(-1) for n in names]).to(device=device, dtype=torch.float32)
    return m, v


def per_example_lora_grads(
    model: torch.nn.Module, batch: Batch, names: Sequence[str], chunk_size: int | None = None
) -> torch.Tensor:
    """∇_LoRA ℓ(z_n) for every example of ``batch``: ``(b, P)`` float32, flattened in ``names`` order.

    ℓ is the token-mean CE over the example's ``loss_mask`` positions (nats); examples without
    target positions get a zero row. One ``vmap(grad)`` over the batch, differentiating only the
    LoRA parameters (base weights are constants). The model runs in eval mode, so LoRA dropout is
    off and a feature depends on the example alone, and with eager attention (``vmap`` does not go
    through SDPA); both are restored afterwards. Under bf16 autocast (set by the
    caller) the gradients are still float32 (fp32 parameters).

    Memory: b × P values for the gradients (twice, while flattening) plus one batch's activations;
    ``chunk_size`` bounds how many examples vmap runs at once.
    """
    named = dict(model.named_parameters())
    params = {n: named[n].detach() for n in names}
    with eval_mode(model):
        grads = per_example_grads(model, params, batch, chunk_size=chunk_size)
    b = int(batch["input_ids"].shape[0])
    return torch.cat([grads.pop(n).reshape(b, -1).float() for n in names], dim=1)


def per_example_lora_grads_hooks(model: torch.nn.Module, batch: Batch, names: Sequence[str]) -> torch.Tensor:
    """Same as :func:`per_example_lora_grads` (``(b, P)`` float32, ``names`` order) from ONE batched
    backward instead of a per-example one.

    Every LoRA factor is a bias-free ``nn.Linear`` y = W x, so ∂ℓ_n/∂W = Σ_t (∂ℓ_n/∂y_{n,t}) x_{n,t}ᵀ.
    Examples of a causal-LM batch do not interact (no batch statistics; padding is masked and
    carries no loss), so the backward of Σ_n ℓ_n hands every layer ∂ℓ_n/∂y_n for all n at once;
    forward hooks keep x, tensor hooks keep ∂/∂y, and one einsum per factor forms the b gradients.
    Exact, not an approximation (checked against vmap(grad) in tests/unit/test_less.py). Memory:
    the activations of one batch plus b × P for the result. Eval mode, as the vmap version.
    """
    modules = dict(model.named_modules())
    named = dict(model.named_parameters())
    owners = []
    for n in names:
        mod_name, _, leaf = n.rpartition(".")
        mod = modules.get(mod_name)
        if leaf != "weight" or not isinstance(mod, torch.nn.Linear) or mod.bias is not None:
            raise ValueError(f"{n}: the hook path needs bias-free nn.Linear LoRA factors")
        owners.append((n, mod))
    inputs: dict[str, torch.Tensor] = {}
    grads_out: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name: str):
        def fwd(_mod, args, out):
            inputs[name] = args[0].detach()
            out.register_hook(lambda g: grads_out.__setitem__(name, g.detach()))

        return fwd

    try:
        for n, mod in owners:
            handles.append(mod.register_forward_hook(keep(n)))
        with eval_mode(model, eager=False):  # plain reverse mode: SDPA attention is fine
            losses = per_example_loss(model, {n: named[n] for n in names}, batch)
            torch.autograd.grad(losses.sum(), [named[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    b = int(batch["input_ids"].shape[0])
    cols = []
    for n, _ in owners:
        x, g = inputs[n].float(), grads_out[n].float()  # (b, t, in), (b, t, out)
        cols.append(torch.einsum("bto,bti->boi", g, x).reshape(b, -1))
    return torch.cat(cols, dim=1)


def adam_features(
    g: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> torch.Tensor:
    """LESS's Adam-preconditioned gradient Γ = m' / √(v' + ε): ``(b, P)`` from g ``(b, P)``, m, v ``(P,)``.

    One simulated Adam step without bias correction: m' = β1 m + (1−β1) g, v' = β2 v + (1−β2) g².
    ε sits inside the square root, as in LESS's code (not torch's √v̂ + ε).
    """
    m = exp_avg.to(g.device, g.dtype)
    v = exp_avg_sq.to(g.device, g.dtype)
    m_new = torch.add(m * beta1, g, alpha=1.0 - beta1)
    v_new = torch.addcmul(v * beta2, g, g, value=1.0 - beta2)
    # in place: the same operations in the same order as m_new / sqrt(v_new + eps), with two (b, P)
    # temporaries instead of five (each as large as the gradients)
    return m_new.div_(v_new.add_(eps).sqrt_())


# ----------------------------------------------------------------------------------------------
# projection

_M32 = 0xFFFFFFFF


def _mul32(x, c: int):
    """(x · c) mod 2³² for 0 ≤ x < 2³² without overflowing int64 (c split into 16-bit halves)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _fmix32(h):
    """MurmurHash3's 32-bit finaliser (a bijection with full avalanche); ints or int64 tensors."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _hash_bytes(key: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """Word indices ``(rows, W)`` int64 → their hashes as bytes ``(rows, 4W)`` uint8 (little end first)."""
    h = _fmix32((key & _M32) ^ k1)
    h = _fmix32(h ^ (key >> 32) ^ k2)
    shifts = torch.arange(0, 32, 8, dtype=torch.int64, device=key.device)
    return ((h[..., None] >> shifts) & 0xFF).to(torch.uint8).reshape(key.shape[0], -1)


def _unpack_signs(packed: torch.Tensor, d: int, dtype: torch.dtype) -> torch.Tensor:
    """Bytes ``(rows, 4W)`` uint8 → signs ``(rows, d)``: column 8q + t is −1 where bit t of byte q is set."""
    if packed.device.type == "cpu":
        signs = _unpack_gather(packed, dtype)  # the faster of the two on a CPU
    else:
        signs = _unpack_where(packed, dtype)  # the faster on a GPU, and it compiles
    return signs.reshape(packed.shape[0], -1)[:, :d]


def _unpack_where(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    masks = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=packed.device)
    one = torch.ones((), dtype=dtype, device=packed.device)
    return torch.where((packed[..., None] & masks) != 0, -one, one)


def _unpack_gather(packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    b = torch.arange(256, dtype=torch.int64, device=packed.device)
    table = (1 - 2 * ((b[:, None] >> torch.arange(8, dtype=torch.int64, device=packed.device)) & 1)).to(dtype)
    return torch.nn.functional.embedding(packed.to(torch.int64), table)


class RademacherProjector:
    """A seeded ±1 Johnson–Lindenstrauss map Φ(x) = x R / √d, R ∈ {±1}^{n_in × d}.

    Entry R[r, c] is bit c mod 32 of a counter-based hash of (seed, r, c // 32): two rounds of
    MurmurHash3's finaliser over the word index r·⌈d/32⌉ + c//32, in exact int64 arithmetic (no
    product exceeds 2⁴⁹). So R is the same on every device (checked bit for bit, CPU vs GPU), for
    every batch size and block size, and any row range can be generated where it is needed.
    (torch.Generator streams on the CPU would cost minutes per call at LESS's size: P·d ≈ 5.8·10¹⁰
    entries for Pythia-160M with r = 128.)

    Three ways to hold R, chosen per device on first use (all give the same R):
      - dense cache in ``compute_dtype`` when n_in·d·4 bytes ≤ ``cache_bytes`` (default 1 GiB);
      - else packed bits (n_in·d/8 bytes) when that is ≤ ``bits_cache_bytes`` (default 8 GiB),
        unpacked to ±1 block by block per call;
      - else regenerated block by block per call (hash + unpack).
    ``block_rows`` rows of R are materialised at a time (default: ~2²⁵ entries per block). In the
    last two modes each call pays for materialising all of R once, whatever the batch, so project
    many examples per call; the first call also builds the bit cache and compiles (timings:
    benchmarks/bench_less.py).

    ``compute_dtype``: the matmul's input dtype (float32 default; bfloat16 halves the traffic, cosine
    ≥ 0.99999 to float32 at LESS's size); the result is float32; any enclosing autocast is off.
    ``compile``: fuse hashing and unpacking with ``torch.compile`` (None: on CUDA only); checked
    against the eager result on first use, and dropped with a warning if it fails or differs.
    """

    def __init__(
        self,
        n_in: int,
        d: int,
        seed: int = 0,
        block_rows: int | None = None,
        cache_bytes: int = 1 << 30,
        bits_cache_bytes: int = 8 << 30,
        compute_dtype: torch.dtype = torch.float32,
        compile: bool | None = None,
    ):
        if n_in <= 0 or d <= 0:
            raise ValueError(f"n_in and d must be positive, got {n_in}, {d}")
        self.n_in, self.d, self.seed = int(n_in), int(d), int(seed)
        self.words = -(-self.d // 32)  # hash words per row
        self.block_rows = int(block_rows) if block_rows else max(1, (1 << 25) // (self.words * 32))
        self.cache_bytes, self.bits_cache_bytes = int(cache_bytes), int(bits_cache_bytes)
        self.compute_dtype = compute_dtype
        self.compile = compile
        s = self.seed & ((1 << 64) - 1)
        self._k1 = _fmix32((s & _M32) ^ 0x9E3779B9)
        self._k2 = _fmix32(((s >> 32) ^ 0x7F4A7C15) ^ _fmix32(self._k1 ^ 0x85EBCA77))
        self._cache: dict[tuple, tuple[str, torch.Tensor | None]] = {}
        self._fns: dict[tuple, object] = {}

    @property
    def mode(self) -> str:
        """ "dense", "bits" or "regenerate" (what :meth:`project` uses)."""
        if self.n_in * self.d * 4 <= self.cache_bytes:
            return "dense"
        if self.n_in * self.words * 4 <= self.bits_cache_bytes:
            return "bits"
        return "regenerate"

    def _fn(self, name: str, eager, device: torch.device):
        """``eager`` or its compiled version (CUDA by default), checked on its first call."""
        use = self.compile if self.compile is not None else device.type == "cuda"
        key = (name, str(device))
        if not use or self._fns.get(key) is eager:
            return eager
        if key in self._fns:
            return self._fns[key]
        compiled = torch.compile(eager, dynamic=None)

        def checked(*args):
            try:
                out = compiled(*args)
                ok = torch.equal(out, eager(*args))
            except Exception as exc:  # no compiler on this node, an inductor bug, ...
                warnings.warn(
                    f"RademacherProjector: torch.compile of {name} failed ({exc!r}); using eager ops", stacklevel=3
                )
                ok, out = False, None
            if not ok:
                if out is not None:
                    warnings.warn(
                        f"RademacherProjector: compiled {name} differs from eager; using eager ops", stacklevel=3
                    )
                self._fns[key] = eager
                return eager(*args)
            self._fns[key] = compiled
            return out

        self._fns[key] = checked
        return checked

    def _bytes(self, r0: int, r1: int, device) -> torch.Tensor:
        """Rows [r0, r1) of R as hash bytes: ``(r1 − r0, 4·words)`` uint8."""
        device = torch.device(device) if device is not None else torch.device("cpu")
        rows = torch.arange(r0, r1, dtype=torch.int64, device=device)
        key = rows[:, None] * self.words + torch.arange(self.words, dtype=torch.int64, device=device)
        return self._fn("hash", _hash_bytes, device)(key, self._k1, self._k2)

    def _unpack(self, packed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self._fn("unpack", _unpack_signs, packed.device)(packed, self.d, dtype)

    def matrix(self, r0: int = 0, r1: int | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
        """Rows [r0, r1) of R (±1 entries, unscaled): ``(r1 − r0, d)``."""
        r1 = self.n_in if r1 is None else r1
        return self._unpack(self._bytes(r0, r1, device), dtype)

    def _held(self, device: torch.device) -> tuple[str, torch.Tensor | None]:
        key = (str(device), self.compute_dtype)
        if key not in self._cache:
            mode = self.mode
            held = None
            if mode == "dense":
                held = torch.empty(self.n_in, self.d, dtype=self.compute_dtype, device=device)
                for r0 in range(0, self.n_in, self.block_rows):
                    r1 = min(r0 + self.block_rows, self.n_in)
                    held[r0:r1] = self.matrix(r0, r1, device, self.compute_dtype)
            elif mode == "bits":
                held = torch.empty(self.n_in, 4 * self.words, dtype=torch.uint8, device=device)
                for r0 in range(0, self.n_in, self.block_rows):
                    r1 = min(r0 + self.block_rows, self.n_in)
                    held[r0:r1] = self._bytes(r0, r1, device)
            self._cache[key] = (mode, held)
        return self._cache[key]

    @property
    def compiled(self) -> dict[str, bool]:
        """``{"hash@cuda:0": True, ...}``: which steps run compiled, per device (after first use)."""
        eager = {"hash": _hash_bytes, "unpack": _unpack_signs}
        return {f"{n}@{dev}": fn is not eager[n] for (n, dev), fn in self._fns.items()}

    def clear_cache(self) -> None:
        self._cache.clear()

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Φ(x) = x R / √d: ``(b, n_in)`` → ``(b, d)`` float32, on ``x``'s device."""
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"expected (b, {self.n_in}), got {tuple(x.shape)}")
        device = x.device
        mode, held = self._held(device)
        out = torch.zeros(x.shape[0], self.d, dtype=torch.float32, device=device)
        with torch.autocast(device.type, enabled=False):
            xc = x.to(self.compute_dtype)
            if mode == "dense":
                out += xc @ held
            else:
                for r0 in range(0, self.n_in, self.block_rows):
                    r1 = min(r0 + self.block_rows, self.n_in)
                    if mode == "bits":
                        block = self._unpack(held[r0:r1], self.compute_dtype)
                    else:
                        block = self.matrix(r0, r1, device, self.compute_dtype)
                    out += xc[:, r0:r1] @ block
        return out / math.sqrt(self.d)


# ----------------------------------------------------------------------------------------------
# features


def _amp_ctx(amp: str | None, device: torch.device):
    if amp == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if amp not in (None, "fp32"):
        raise ValueError(f"amp {amp!r}: None, 'fp32' or 'bf16'")
    return contextlib.nullcontext()


def featurize(
    model: torch.nn.Module,
    store: ExampleStore,
    ids: Sequence[int] | np.ndarray,
    names: Sequence[str],
    projector: RademacherProjector,
    kind: str,
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    batch_size: int = 16,
    seq_len: int = 512,
    pad_id: int = 0,
    device: torch.device | str | None = None,
    chunk_size: int | None = None,
    project_batch: int | None = None,
    amp: str | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    method: str = "hooks",
) -> tuple[torch.Tensor, torch.Tensor]:
    """LESS features of the examples ``ids`` at the model's current LoRA weights.

    Args:
        kind: "adam" (pool examples: :func:`adam_features` from ``moments``, see
            :func:`load_lora_checkpoint`) or "sgd" (target examples: the plain gradient).
        batch_size: examples per ``vmap(grad)`` call (memory ≈ 2 × batch_size × P floats + activations).
        project_batch: examples per projection call (default max(batch_size, 64)); a larger value
            spreads the cost of materialising R (see :class:`RademacherProjector`) over more
            examples, at project_batch × P floats of buffer on the device.
        device: where to compute (default: the model's device; the model is not moved).
        amp: None/"fp32" or "bf16" (autocast over the fp32 parameters, as the trainer on GPU).
        betas, eps: of the simulated Adam step ("adam"); LESS uses 0.9, 0.999, 1e-8 whatever the
            warm-up optimiser's were.
        method: "hooks" (one batched backward, :func:`per_example_lora_grads_hooks`) or "vmap"
            (:func:`per_example_lora_grads`); the same gradients, hooks is faster.
    Returns:
        ``features (N, d)`` float32, L2-normalised rows (a zero row stays zero), and ``norms (N,)``
        float32, the L2 norms of the projected vectors before normalisation; CPU, ``ids`` order.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {KINDS}")
    if kind == "adam" and not moments:
        raise ValueError('kind "adam" needs the checkpoint\'s AdamW moments')
    device = torch.device(device) if device is not None else next(model.parameters()).device
    project_batch = project_batch or max(batch_size, 64)
    ids = [int(i) for i in ids]
    if kind == "adam":
        m, v = flat_moments(moments, names, device)
        if m.numel() != projector.n_in:
            raise ValueError(f"moments have {m.numel()} values, projector expects {projector.n_in}")
    feats, norms = [], []
    # one preallocated projection buffer in the projector's matmul dtype (it casts to that dtype
    # anyway, so the values are the same): no torch.cat copy, and half the bytes when that is bf16
    cap = min(project_batch + batch_size - 1, len(ids))
    pbuf = torch.empty(cap, projector.n_in, dtype=projector.compute_dtype, device=device) if cap else None

    def flush(rows: int) -> None:
        proj = projector.project(pbuf[:rows])
        n = proj.norm(dim=1)
        feats.append((proj / n.clamp(min=torch.finfo(torch.float32).tiny)[:, None]).cpu())
        norms.append(n.cpu())

    buffered = 0
    with eval_mode(model, eager=method == "vmap"):  # once, not per batch
        for i in range(0, len(ids), batch_size):
            chunk = ids[i : i + batch_size]
            batch = {k: t.to(device) for k, t in collate(store, chunk, seq_len, pad_id).items()}
            with _amp_ctx(amp, device):
                if method == "hooks":
                    g = per_example_lora_grads_hooks(model, batch, names)
                elif method == "vmap":
                    g = per_example_lora_grads(model, batch, names, chunk_size=chunk_size)
                else:
                    raise ValueError(f"method {method!r}: 'hooks' or 'vmap'")
            if kind == "adam":
                g = adam_features(g, m, v, betas[0], betas[1], eps)
            if g.shape[1] != projector.n_in:
                raise ValueError(f"gradients have {g.shape[1]} values, projector expects {projector.n_in}")
            pbuf[buffered : buffered + len(chunk)].copy_(g)
            del g
            buffered += len(chunk)
            if buffered >= project_batch:
                flush(buffered)
                buffered = 0
        if buffered:
            flush(buffered)
    if not feats:
        return torch.zeros(0, projector.d), torch.zeros(0)
    return torch.cat(feats), torch.cat(norms)


# ----------------------------------------------------------------------------------------------
# feature store: <name>.npy (N, d) + <name>.npy.json sidecar

SIDECAR_KEYS = ("checkpoint", "kind", "d", "seed", "ids")


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.json")


def write_features(path: str | os.PathLike, features, sidecar: dict, dtype: str | None = None, norms=None) -> Path:
    """Write ``features (N, d)`` as an .npy (float16 or float32) plus the sidecar ``<path>.json``.

    ``sidecar`` must hold checkpoint (a string naming the LoRA checkpoint), kind ("adam"/"sgd"), d,
    seed (the projector's) and ids (the N example ids in row order); other keys are kept. ``dtype``
    defaults to ``sidecar["dtype"]``, else float16 (LESS stores fp16). ``norms (N,)`` (the
    unnormalised projected norms of :func:`featurize`), if given, go into the sidecar as "norms".
    The writer adds dtype and n. Both files are written atomically, the old sidecar removed first and
    the new one written last, so a sidecar always describes the .npy next to it.
    """
    if dtype is not None and "dtype" in sidecar and sidecar["dtype"] != dtype:
        raise ValueError(f"dtype {dtype!r} but sidecar dtype {sidecar['dtype']!r}")
    dtype = dtype or sidecar.get("dtype", "float16")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype {dtype!r}: float16 or float32")
    missing = [k for k in SIDECAR_KEYS if k not in sidecar]
    if missing:
        raise ValueError(f"sidecar lacks {missing}")
    arr = features.detach().cpu().numpy() if torch.is_tensor(features) else np.asarray(features)
    arr = np.ascontiguousarray(arr, dtype=dtype)
    ids = [int(i) for i in np.asarray(sidecar["ids"]).reshape(-1)]
    if arr.ndim != 2 or arr.shape[0] != len(ids) or arr.shape[1] != int(sidecar["d"]):
        raise ValueError(f"features {arr.shape} do not match {len(ids)} ids × d={sidecar['d']}")
    meta = {k: _plain(v) for k, v in sidecar.items()}
    meta.update(ids=ids, d=int(sidecar["d"]), seed=int(sidecar["seed"]), dtype=dtype, n=len(ids))
    if norms is not None:
        nv = norms.detach().cpu().numpy() if torch.is_tensor(norms) else np.asarray(norms)
        if nv.shape != (len(ids),):
            raise ValueError(f"norms {nv.shape} for {len(ids)} ids")
        meta["norms"] = [float(x) for x in nv.astype(np.float64)]
    path = Path(path)
    side = sidecar_path(path)
    side.unlink(missing_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, arr)
    write_json(side, meta)
    return path


def read_sidecar(path: str | os.PathLike) -> dict:
    """The sidecar of a feature file as written (ids, norms if stored, ...), unchecked."""
    return read_json(sidecar_path(path))


def _plain(v):
    return os.fspath(v) if isinstance(v, os.PathLike) else v


def read_features(path: str | os.PathLike, expect: dict) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map features written by :func:`write_features` after checking the sidecar.

    ``expect`` holds any of checkpoint, kind, d, seed, dtype, ids (and other sidecar keys); each
    must equal the stored value.
    Returns:
        ``(features (N, d) read-only memmap, ids (N,) int64)``.
    Raises:
        ValueError naming the first key that differs (or is missing), or a shape/dtype mismatch
        between the sidecar and the .npy.
    """
    side = sidecar_path(path)
    if not side.exists():
        raise ValueError(f"{path}: no sidecar {side.name}")
    meta = read_json(side)
    for key, want in expect.items():
        if key not in meta:
            raise ValueError(f"{path}: sidecar has no {key!r}")
        got = meta[key]
        if key == "ids":
            same = np.array_equal(np.asarray(got, dtype=np.int64), np.asarray(want, dtype=np.int64).reshape(-1))
            shown = f"{len(got)} ids" if isinstance(got, list) else got
            if not same:
                raise ValueError(
                    f"{path}: sidecar 'ids' differ from the expected {len(np.asarray(want).reshape(-1))} ids ({shown})"
                )
            continue
        if key in ("d", "seed", "n"):
            same = int(got) == int(want)
        else:
            same = got == _plain(want)
        if not same:
            raise ValueError(f"{path}: sidecar {key!r} is {got!r}, expected {_plain(want)!r}")
    arr = np.load(path, mmap_mode="r")
    if arr.shape != (int(meta["n"]), int(meta["d"])) or arr.dtype != np.dtype(meta["dtype"]):
        raise ValueError(f"{path}: array {arr.shape} {arr.dtype} does not match its sidecar (n, d, dtype)")
    return arr, np.asarray(meta["ids"], dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# matching


def checkpoint_weights(avg_lrs: Sequence[float]) -> np.ndarray:
    """w_i = η̄_i / Σ_j η̄_j: ``(C,)`` float64 from each checkpoint's average learning rate."""
    lrs = np.asarray(avg_lrs, dtype=np.float64)
    if lrs.ndim != 1 or len(lrs) == 0 or np.any(lrs < 0) or lrs.sum() <= 0:
        raise ValueError(f"average learning rates must be non-negative with a positive sum, got {lrs}")
    return lrs / lrs.sum()


def _as_f32(a, device) -> torch.Tensor:
    if not torch.is_tensor(a):  # a copy: memmaps are read-only, which torch.from_numpy warns about
        a = torch.from_numpy(np.array(a, dtype=np.float32))
    return a.to(device=device, dtype=torch.float32)


def less_scores(
    train_feats: Sequence,
    target_feats: Sequence,
    weights,
    subtasks: Sequence[str],
    aggregate: str = "subtask_max",
    chunk: int = 8192,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Score of each pool example against a target task: ``(N,)`` float32.

    Args:
        train_feats: per checkpoint, the pool features ``(N, d)`` (normalised; arrays, memmaps or
            tensors, any float dtype).
        target_feats: per checkpoint, the target features ``(M, d)``, same checkpoint order.
        weights: ``(C,)`` checkpoint weights (:func:`checkpoint_weights`).
        subtasks: the subtask label of each of the M target examples.
        aggregate: over the M values Inf(z, z'_m) = Σ_i w_i ⟨φ_i(z), φ_i(z'_m)⟩:
            "subtask_max" (LESS: mean within each subtask, max over subtasks), or "mean", "max",
            "min" over the individual target examples.
    The N × M influence matrix is formed ``chunk`` pool rows at a time (float32 matmuls).
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate {aggregate!r}: one of {AGGREGATES}")
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (len(train_feats) == len(target_feats) == len(w)) or len(w) == 0:
        raise ValueError(f"{len(train_feats)} pool / {len(target_feats)} target feature sets for {len(w)} weights")
    n = int(train_feats[0].shape[0])
    targets = [_as_f32(t, device) for t in target_feats]
    m = int(targets[0].shape[0])
    if len(subtasks) != m:
        raise ValueError(f"{len(subtasks)} subtask labels for {m} target examples")
    for f, t in zip(train_feats, targets):
        if f.shape[0] != n or t.shape[0] != m or f.shape[1] != t.shape[1]:
            raise ValueError(f"feature shapes differ across checkpoints: {tuple(f.shape)} vs {tuple(t.shape)}")
    if aggregate == "subtask_max":
        labels = list(dict.fromkeys(subtasks))  # first-appearance order
        col = {s: j for j, s in enumerate(labels)}
        avg = torch.zeros(m, len(labels), dtype=torch.float32, device=device)
        for r, s in enumerate(subtasks):
            avg[r, col[s]] = 1.0
        avg /= avg.sum(0, keepdim=True)
    out = np.empty(n, dtype=np.float32)
    for i in range(0, n, chunk):
        j = min(i + chunk, n)
        inf = torch.zeros(j - i, m, dtype=torch.float32, device=device)
        for wc, f, t in zip(w, train_feats, targets):
            inf += float(wc) * (_as_f32(f[i:j], device) @ t.T)
        if aggregate == "subtask_max":
            s = (inf @ avg).max(dim=1).values
        elif aggregate == "mean":
            s = inf.mean(dim=1)
        elif aggregate == "max":
            s = inf.max(dim=1).values
        else:
            s = inf.min(dim=1).values
        out[i:j] = s.cpu().numpy()
    return out


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
