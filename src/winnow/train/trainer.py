"""A plain causal-LM trainer over a given list of example ids (nanoGPT-style, one loop).

AdamW, warm-up + cosine/constant/WSD/exp schedules, gradient accumulation, bf16 autocast and SDPA
on GPU, DDP when started under ``torchrun`` (WORLD_SIZE > 1). Checkpoints every ``ckpt_every``
steps into ``ckpt_root/step-N``; a rerun resumes from the newest complete one and reaches the
same weights as an uninterrupted run (data order and schedule are pure functions of the step).
A checkpoint that does not load (truncated or corrupt file) is skipped with a warning naming the
file, and the one before it is tried; with none left the run starts from scratch.

Loss: token-mean cross-entropy over the loss-masked positions of the whole optimizer step
(sum over micro-batches and ranks / number of target tokens in the step).

Batches (:mod:`winnow.train.batches`): by default every step takes ``batch_size`` ids from a
continuous stream of per-epoch permutations (a batch may straddle two epochs). With
``epoch_batches`` each epoch is one permutation cut into ⌈n/B⌉ steps, the last batch partial (HF's
Trainer / a DataLoader without drop_last): epoch e ends exactly at step e·⌈n/B⌉ (LESS's recipe).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from winnow import PROCESS_T0
from winnow.io.artifacts import ArtifactError
from winnow.models import attention
from winnow.models.checkpoint import (
    apply_checkpoint,
    checkpoints_newest_first,
    decode_rng,
    encode_rng,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    write_checkpoint_files,
)
from winnow.progress import Progress
from winnow.train.batches import ExampleStore, collate, epoch_step_ids, samples_before, step_ids
from winnow.train.optim import trainer_param_groups
from winnow.train.schedules import lr_at

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int
    batch_size: int  # sequences per optimizer step, all ranks together
    micro_batch_size: int  # sequences per forward pass on one rank
    seq_len: int
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_frac: float = 0.2
    half_life: float = 50.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    shuffle: bool = True
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 | bf16
    log_every_s: float = 10.0
    # GPU fast path (off by default; ignored on CPU): torch.compile of forward + loss, fused AdamW,
    # and an all-ones attention mask dropped so SDPA takes its causal (flash) kernel.
    compile: bool = False
    # Epoch-aligned batches (off: the continuous stream, batches of exactly batch_size): each epoch
    # one permutation of the ids in ⌈n/batch_size⌉ steps, the last one partial (LESS's recipe).
    epoch_batches: bool = False
    extra: dict = field(default_factory=dict)

    def fingerprint(self, ids: np.ndarray, init: str) -> str:
        """What a checkpoint must match to be resumed (everything but logging/checkpoint cadence)."""
        skip = ("ckpt_every", "keep_checkpoints", "log_every_s", "compile")
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        if not self.epoch_batches:
            del d["epoch_batches"]  # off: the fingerprint the checkpoints had before the option
        h = hashlib.sha256(json.dumps(d, sort_keys=True, default=list).encode())
        h.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
        h.update(init.encode())
        return h.hexdigest()[:16]


def setup_distributed() -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            torch.distributed.init_process_group("nccl")
            device = torch.device("cuda", local)
        else:
            torch.distributed.init_process_group("gloo")
            device = torch.device("cpu")
        return torch.distributed.get_rank(), world, device
    return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")


def masked_ce_sum(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of next-token CE (nats) over target positions.

    Args: logits ``(b, t, V)``, input_ids ``(b, t)``, loss_mask ``(b, t)`` bool (target positions).
    """
    pred = logits[:, :-1].float()
    tgt = input_ids[:, 1:]
    mask = loss_mask[:, 1:]
    ce = F.cross_entropy(pred.reshape(-1, pred.size(-1)), tgt.reshape(-1), reduction="none")
    return (ce * mask.reshape(-1)).sum()


def forward_ce_sum(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    loss_mask: torch.Tensor,
    use_bf16: bool,
) -> torch.Tensor:
    """The trainer's forward: logits under bf16 autocast (if asked), then :func:`masked_ce_sum` in fp32."""
    with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        # use_cache: without a mask and without a cache transformers looks for packed sequences in
        # the position ids, which under torch.compile becomes a materialised mask
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True).logits
    return masked_ce_sum(logits, input_ids, loss_mask)


def fast_path(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether the compiled GPU path is on (``cfg.compile`` on a CUDA device)."""
    return bool(cfg.compile) and device.type == "cuda"


def _adamw(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, fast: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only; fused on the fast path, foreach on CUDA."""
    return torch.optim.AdamW(
        trainer_param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        **({"fused": True} if fast else {"foreach": device.type == "cuda"}),
    )


@dataclass
class _TrainRun:
    """What :func:`train`'s steps work with (fixed before the first step)."""

    model: torch.nn.Module
    ddp_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: object
    store: ExampleStore
    ids: np.ndarray
    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    pad_id: int
    use_bf16: bool
    fast: bool


def _train_step(run: _TrainRun, step: int) -> tuple[float, float, int]:
    """One optimizer step (this rank's micro-batches, accumulated): ``(loss per target token, lr,
    this rank's tokens)``."""
    model, ddp_model, optimizer, loss_fn = run.model, run.ddp_model, run.optimizer, run.loss_fn
    store, ids, cfg, rank, world, device = run.store, run.ids, run.cfg, run.rank, run.world, run.device
    pad_id, use_bf16, fast = run.pad_id, run.use_bf16, run.fast
    lr = lr_at(step, cfg.lr, cfg.steps, cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio, cfg.decay_frac, cfg.half_life)
    for group in optimizer.param_groups:
        group["lr"] = lr
    batch_of = epoch_step_ids if cfg.epoch_batches else step_ids
    batch_ids = batch_of(ids, step, cfg.batch_size, cfg.seed, cfg.shuffle)
    n_targets = sum(store.n_loss_tokens(e) for e in batch_ids)
    chunks = [batch_ids[i : i + cfg.micro_batch_size] for i in range(0, len(batch_ids), cfg.micro_batch_size)]
    mine = chunks[rank::world]
    # An epoch's partial last batch can leave a rank without a micro-batch; under DDP it still
    # joins the gradient all-reduce, with a zero-weight backward of one example.
    idle = not mine
    if idle:
        mine = [batch_ids[:1]]
    loss_sum = torch.zeros((), device=device)
    step_tokens = 0
    for j, chunk in enumerate(mine):
        batch = {k: v.to(device) for k, v in collate(store, chunk, cfg.seq_len, pad_id).items()}
        sync = j == len(mine) - 1
        ctx = ddp_model.no_sync() if (world > 1 and not sync) else _null()
        with ctx:
            mask = batch["attention_mask"]
            if fast and bool(mask.all()):
                mask = None  # no padding: SDPA's causal kernel instead of an explicit mask
            ce = loss_fn(ddp_model, batch["input_ids"], mask, batch["loss_mask"], use_bf16)
            # DDP averages gradients over ranks; × world turns that back into a sum.
            (ce * (0 if idle else world) / max(n_targets, 1)).backward()
        if not idle:
            loss_sum += ce.detach()
            step_tokens += int(batch["attention_mask"].sum())
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if world > 1:
        torch.distributed.all_reduce(loss_sum)
    loss_value = float(loss_sum) / max(n_targets, 1)
    if not np.isfinite(loss_value):
        raise FloatingPointError(f"loss is {loss_value} at step {step}")
    return loss_value, lr, step_tokens


def _summary(
    run: _TrainRun,
    start_step: int,
    loss_value: float,
    n_params: int,
    tokens_seen: int,
    t0: float,
    t_first: float | None,
    tokens_first: int,
) -> dict:
    """:func:`train`'s summary, timed now (the end of the loop)."""
    cfg, world, device, use_bf16, fast = run.cfg, run.world, run.device, run.use_bf16, run.fast
    t_end = time.monotonic()
    wall = t_end - t0
    steady = None
    if t_first is not None and t_end > t_first and tokens_seen > tokens_first:
        steady = (tokens_seen - tokens_first) * world / (t_end - t_first)
    summary = {
        "final_loss": loss_value,
        "steps": cfg.steps,
        "resumed_at": start_step,
        "tokens_this_run": tokens_seen * world,
        "wall_s": wall,
        "tokens_per_s": tokens_seen * world / wall if wall > 0 else None,
        "n_params": n_params,
        "world_size": world,
        "device": str(device),
        "precision": "bf16" if use_bf16 else "fp32",
        "compiled": fast,
        # where a short job's time goes: imports, data and model before the loop; the first step
        # (torch.compile's tracing and codegen on the fast path); the steps after it
        "startup_s": t0 - PROCESS_T0,
        "first_step_s": (t_first - t0) if t_first is not None else None,
        "steady_tokens_per_s": steady,
    }
    return summary


def _start(
    ckpt_root: Path, fingerprint: str, model, optimizer, device: torch.device, rank: int, resume_from, seed: int
) -> tuple[int, list[list[float]]]:
    """``(first step, history so far)``: this configuration's newest checkpoint (weights, optimizer,
    RNGs), else ``resume_from``'s weights and optimizer; a run from step 0 seeds torch with ``seed``."""
    start_step = 0
    history: list[list[float]] = []
    resumed = _resume(ckpt_root, fingerprint, model, optimizer, device, rank)
    if resumed is not None:
        latest, state = resumed
        start_step = int(state["step"])
        history = [list(r) for r in state.get("history", []) if r[0] <= start_step]
        log.info("resumed from %s at step %d", latest, start_step)
    elif resume_from is not None:
        load_checkpoint(resume_from, model, optimizer)
        log.info("initialised weights and optimizer state from %s", resume_from)
    if start_step == 0:
        torch.manual_seed(seed)
    return start_step, history


def _wrap(model: torch.nn.Module, world: int, device: torch.device, fast: bool):
    """``(model to call, loss function)``: DDP over several ranks; compiled loss on the fast path."""
    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    loss_fn = forward_ce_sum
    if fast:
        # transformers' sdpa under torch.compile (torch < 2.14) materialises the causal mask, a
        # large share of a step (winnow.models.attention); a padded batch still gets its mask
        attention.use_causal_sdpa(model)
        loss_fn = torch.compile(forward_ce_sum)
    return ddp_model, loss_fn


def _accumulation(cfg: TrainConfig, world: int) -> int:
    """Micro-batches per optimizer step and rank (the batch must split evenly)."""
    if cfg.batch_size % (world * cfg.micro_batch_size):
        raise ValueError(
            f"batch_size {cfg.batch_size} is not a multiple of world_size {world} × micro_batch_size {cfg.micro_batch_size}"
        )
    return cfg.batch_size // (world * cfg.micro_batch_size)


def _log_plan(run: _TrainRun, n_params: int, accum: int) -> None:
    cfg = run.cfg
    log.info(
        "training %d params on %d ids: %d steps × %d seqs × %d tokens (accum %d, world %d, %s, %s)",
        n_params,
        len(run.ids),
        cfg.steps,
        cfg.batch_size,
        cfg.seq_len,
        accum,
        run.world,
        run.device,
        "bf16" if run.use_bf16 else "fp32",
    )


def train(
    model: torch.nn.Module,
    store: ExampleStore,
    ids: np.ndarray,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    ckpt_root: str | os.PathLike,
    pad_id: int,
    init: str = "scratch",
    resume_from: str | os.PathLike | None = None,
) -> dict:
    """Train ``model`` on ``ids`` for ``cfg.steps`` steps; write the final checkpoint to ``out_dir``.

    Args:
        ids: ``(n,)`` int64 example ids the run may draw from (in any order).
        init: a string describing the initial weights (folds into the resume fingerprint).
        resume_from: an existing checkpoint folder to continue (weights *and* optimizer state), e.g.
            the end of a previous stage; its trainer_state's ``step`` is not reused — steps restart
            at 0 for this run's schedule, unless ``cfg.extra['continue_schedule']``.
    Returns:
        A summary dict (final loss, tokens, wall time, tokens/s).
    """
    rank, world, device = setup_distributed()
    accum = _accumulation(cfg, world)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    ids = np.asarray(ids, dtype=np.int64)
    fingerprint = cfg.fingerprint(ids, init)
    ckpt_root = Path(ckpt_root)

    model.to(device)
    model.train()
    fast = fast_path(cfg, device)
    optimizer = _adamw(model, cfg, device, fast)

    # One row per optimizer step, [step, loss, lr]: the training curve, kept in trainer_state.json
    # (checkpoints too, so a resumed run's curve is the uninterrupted one).
    start_step, history = _start(ckpt_root, fingerprint, model, optimizer, device, rank, resume_from, cfg.seed)
    ddp_model, loss_fn = _wrap(model, world, device, fast)
    n_params = sum(p.numel() for p in model.parameters())
    run = _TrainRun(model, ddp_model, optimizer, loss_fn, store, ids, cfg, rank, world, device, pad_id, use_bf16, fast)
    _log_plan(run, n_params, accum)
    prog = Progress("train", total=cfg.steps, unit="steps", interval_s=cfg.log_every_s)
    prog.count = start_step
    t0 = time.monotonic()
    t_first = None  # end of the first step: start-up plus compilation plus one step
    tokens_seen = tokens_first = 0
    loss_value = float("nan")
    for step in range(start_step, cfg.steps):
        loss_value, lr, step_tokens = _train_step(run, step)
        tokens_seen += step_tokens
        prog.update(1, tokens=step_tokens * world)
        if t_first is None:
            t_first, tokens_first = time.monotonic(), tokens_seen
        done = step + 1
        history.append([done, loss_value, lr])
        if rank == 0 and (done % cfg.ckpt_every == 0) and done < cfg.steps:
            state = _state(done, fingerprint, cfg, device, loss_value, history, len(ids))
            save_checkpoint(ckpt_root / f"step-{done:08d}", model, optimizer, state)
            _prune(ckpt_root, cfg.keep_checkpoints)
        if done % max(1, cfg.steps // 20) == 0 or done == cfg.steps:
            log.info("step %d/%d loss %.4f lr %.2e", done, cfg.steps, loss_value, lr)
    prog.done()
    summary = _summary(run, start_step, loss_value, n_params, tokens_seen, t0, t_first, tokens_first)
    if device.type == "cuda":
        summary["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    if rank == 0:
        write_checkpoint_files(
            out_dir,
            model,
            optimizer,
            {**_state(cfg.steps, fingerprint, cfg, device, loss_value, history, len(ids)), "summary": summary},
        )
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


def _resume(
    ckpt_root: Path, fingerprint: str, model, optimizer, device: torch.device, rank: int
) -> tuple[Path, dict] | None:
    """Load the newest loadable checkpoint of this configuration into ``model``, ``optimizer`` and
    the RNGs: ``(folder, trainer state)``, or None (nothing to resume: start from scratch).

    Checkpoints are tried newest first; one whose files do not read or fit is skipped with a
    warning naming the file and the reason (nothing of it is applied). Checkpoints of another
    configuration (fingerprint) are removed, as before."""
    found = checkpoints_newest_first(ckpt_root)
    for ckpt in found:
        saved = state_fingerprint(ckpt)
        if saved is not None and saved != fingerprint:
            log.warning("checkpoints in %s are from another configuration; starting over", ckpt_root)
            if rank == 0:
                shutil.rmtree(ckpt_root)
            return None
        try:
            weights, moments, state = read_checkpoint(ckpt, model, optimizer is not None)
            if state.get("fingerprint") != fingerprint:
                raise ValueError(f"{ckpt / 'trainer_state.json'}: no fingerprint")
            int(state["step"])
            rng = decode_rng(state["rng"]["torch"])
            cuda_rng = decode_rng(state["rng"]["cuda"]) if device.type == "cuda" and state["rng"].get("cuda") else None
        except (ArtifactError, KeyError, TypeError, ValueError) as err:
            log.warning("skipping checkpoint %s: %s: %s", ckpt, type(err).__name__, err)
            continue
        apply_checkpoint(model, optimizer, weights, moments)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng)
        return ckpt, state
    if found:
        log.warning("no loadable checkpoint in %s (%d tried); starting from scratch", ckpt_root, len(found))
    return None


def state_fingerprint(ckpt: Path) -> str | None:
    """The fingerprint in a checkpoint's trainer_state.json; None if it does not read."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        return state.get("fingerprint") if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None


def _state(
    step: int,
    fingerprint: str,
    cfg: TrainConfig,
    device: torch.device,
    loss: float,
    history: list | None = None,
    n_ids: int = 0,
) -> dict:
    rng = {"torch": encode_rng(torch.get_rng_state())}
    if device.type == "cuda":
        rng["cuda"] = encode_rng(torch.cuda.get_rng_state(device))
    return {
        "step": step,
        # data position: the order is a function of this
        "samples_seen": samples_before(n_ids, step, cfg.batch_size, cfg.epoch_batches),
        "fingerprint": fingerprint,
        "schedule": {"name": cfg.schedule, "lr": cfg.lr, "total": cfg.steps, "warmup": cfg.warmup_steps},
        "last_loss": loss,
        "rng": rng,
        "config": asdict(cfg),
        "history": history or [],
    }


def final_lr(ckpt_dir: str | os.PathLike) -> float:
    """The learning rate of a checkpoint's last optimizer step: the last row of its trainer_state's
    ``history`` (what the step used), else its schedule (``config``) at step − 1."""
    path = Path(ckpt_dir) / "trainer_state.json"
    state = json.loads(path.read_text())
    history = state.get("history") or []
    if history:
        return float(history[-1][2])
    cfg, step = state.get("config") or {}, int(state.get("step") or 0)
    if step < 1 or "lr" not in cfg:
        raise ValueError(f"{path}: no history and no schedule to take the final learning rate from")
    c = {**asdict(TrainConfig(steps=step, batch_size=1, micro_batch_size=1, seq_len=1)), **cfg}
    return lr_at(
        step - 1,
        c["lr"],
        c["steps"],
        c["schedule"],
        c["warmup_steps"],
        c["min_lr_ratio"],
        c["decay_frac"],
        c["half_life"],
    )


def _prune(root: Path, keep: int) -> None:
    steps = sorted(d for d in root.iterdir() if d.is_dir() and d.name.startswith("step-"))
    for d in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(d, ignore_errors=True)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
