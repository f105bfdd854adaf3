"""Pretraining step throughput and MFU: Winnow's trainer step, plain eager fp32 vs the fast path.

    python benchmarks/bench_train.py                 # GPU: Pythia-160M shape, 32×1024 tokens a step
    python benchmarks/bench_train.py --quick         # CPU smoke run, tiny model (< 1 min)

Both ways run the trainer's own step (``winnow.train.trainer``): ``forward_ce_sum`` (logits, then the
fp32 masked cross-entropy sum over the step's target tokens) per micro-batch, backward, gradient
clipping at 1.0, AdamW with the trainer's two parameter groups, ``zero_grad``. Same model
(GPT-NeoX with Pythia-160M's shape, fp32 master weights, seed 0), same random token batches.

(a) plain eager fp32: HF eager attention, no autocast, TF32 off, foreach AdamW (the trainer's
    CUDA default), micro-batch ``--micro-eager`` with gradient accumulation to the same step;
(b) fast path = ``TrainConfig(compile=True)``: SDPA attention (causal kernel: full rows, no mask;
    ``winnow.models.attention.CAUSAL_SDPA`` keeps it so under compile),
    bf16 autocast, ``torch.compile`` of forward + loss, fused AdamW, TF32 on.

MFU = 6·N·tokens/s / 989 TFLOP/s (dense bf16 peak of an H100 SXM; an H200's is the same), N = all
parameters (the issue's definition). Also reported: the same with N without the input embedding
plus attention's 6·L·T·d per token (``mfu_attn``), which is closer to the FLOPs really done.
Timed with device events over ``--steps`` steps after ``--warmup`` (compilation is in the warm-up).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    H100_BF16_PEAK,
    build_neox,
    environment,
    kernel_breakdown,
    print_table,
    pythia_160m_config,
    row,
    sync,
    time_fn,
    write_rows,
)

from winnow.models.attention import use_causal_sdpa  # noqa: E402
from winnow.train.fused_ce import backbone_hidden, fused_forward_ce_sum  # noqa: E402
from winnow.train.trainer import forward_ce_sum  # noqa: E402


def quick_config() -> dict:
    return {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 256,
        "max_position_embeddings": 128,
        "vocab_size": 512,
    }


def make_batches(n: int, seq: int, vocab: int, device: torch.device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, seq), generator=g)
    loss_mask = torch.ones(n, seq, dtype=torch.bool)
    loss_mask[:, 0] = False
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones(n, seq, dtype=torch.long, device=device),
        "loss_mask": loss_mask.to(device),
    }


def optimizer_for(model, fused: bool, device: torch.device):
    """The trainer's AdamW: decay on ≥ 2-D parameters, none on the rest."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    kw = {"fused": True} if fused else {"foreach": device.type == "cuda"}
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-4,
        betas=(0.9, 0.95),
        eps=1e-8,
        **kw,
    )


def make_step(model, opt, batch: dict, micro: int, use_bf16: bool, loss_fn, drop_mask: bool):
    n = batch["input_ids"].size(0)
    n_targets = int(batch["loss_mask"][:, 1:].sum())
    losses = []

    def step():
        total = torch.zeros((), device=batch["input_ids"].device)
        for i in range(0, n, micro):
            ids, lm = batch["input_ids"][i : i + micro], batch["loss_mask"][i : i + micro]
            am = None if drop_mask else batch["attention_mask"][i : i + micro]
            ce = loss_fn(model, ids, am, lm, use_bf16)
            (ce / n_targets).backward()
            total += ce.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total)

    return step, losses


def loss_fn_for(fast: bool, compile_: bool, mode: str | None, head: str):
    """The step's forward + loss: ``head`` "full" (logits, then CE) or "fused" (winnow.train.fused_ce)."""
    if head == "fused":
        hidden = torch.compile(backbone_hidden, mode=mode) if (fast and compile_) else backbone_hidden

        def fused(model, ids, am, lm, bf16):
            return fused_forward_ce_sum(model, ids, am, lm, bf16, hidden_fn=hidden)

        return fused
    return torch.compile(forward_ce_sum, mode=mode) if (fast and compile_) else forward_ce_sum


def run_way(
    name,
    cfg,
    device,
    batch,
    micro,
    fast: bool,
    steps: int,
    warmup: int,
    compile_: bool,
    mode: str | None = None,
    head: str = "full",
    profile: bool = False,
    plain_sdpa: bool = False,
    flash: bool = False,
) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    # flash: SDPA's cuDNN backend off, so its FlashAttention-2 kernels run (torch prefers cuDNN on H100/H200)
    torch.backends.cuda.enable_cudnn_sdp(not flash)
    model = build_neox(cfg, device, attn="sdpa" if fast else "eager")
    if fast and not plain_sdpa:
        use_causal_sdpa(model)  # as the trainer's fast path does
    model.train()
    opt = optimizer_for(model, fused=fast and device.type == "cuda", device=device)
    loss_fn = loss_fn_for(fast, compile_, mode, head)
    use_bf16 = fast and device.type == "cuda"
    step, losses = make_step(model, opt, batch, micro, use_bf16, loss_fn, drop_mask=fast)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    t_warm = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time_fn(step, device, warmup=0, repeat=steps)
    first = float(losses[0]) / int(batch["loss_mask"][:, 1:].sum())
    breakdown = None
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof_ctx

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with prof_ctx(activities=acts) as prof:
            for _ in range(2):
                step()
            sync(device)
        print(f"== profile of 2 steps of {name}")
        breakdown = kernel_breakdown(prof)
    out = {
        "name": name,
        "step_s": t,
        "warmup_s": t_warm,
        "micro_batch": micro,
        "attn": model.config._attn_implementation,
        "bf16_autocast": use_bf16,
        "compiled": bool(fast and compile_),
        "compile_mode": mode if (fast and compile_) else None,
        "head": head,
        "attn_impl": model.config._attn_implementation,
        "sdpa_cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
        "profile_2_steps": breakdown,
        "fused_adamw": bool(fast and device.type == "cuda"),
        "tf32": fast,
        "first_step_loss": first,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    if device.type == "cuda":
        out["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    del model, opt, step, losses
    torch.backends.cuda.enable_cudnn_sdp(True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU (smoke run, < 1 min)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--batch", type=int, default=None, help="sequences a step (default 32; quick 4)")
    ap.add_argument("--seq", type=int, default=None, help="tokens a sequence (default 1024; quick 64)")
    ap.add_argument("--micro-eager", type=int, default=None, help="(a)'s micro-batch (default 8; quick 2)")
    ap.add_argument("--micro-fast", type=int, default=None, help="(b)'s micro-batch (default 32; quick 4)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10; quick 2)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3; quick 1)")
    ap.add_argument("--no-compile", action="store_true", help="(b) without torch.compile")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode for (b) (e.g. max-autotune-no-cudagraphs)")
    ap.add_argument("--skip-eager", action="store_true", help="only (b) (no ratio)")
    ap.add_argument(
        "--variants",
        default="",
        help="extra fast-path variants, comma-separated, each a +-joined set of: fused (LM head fused into the "
        "loss), plain (transformers' sdpa, not winnow.models.attention.CAUSAL_SDPA: the fast path before session 5), "
        "flash (SDPA's cuDNN backend off), ro (compile mode reduce-overhead: CUDA graphs); e.g. plain,fused,fused+flash",
    )
    ap.add_argument("--profile", action="store_true", help="kernel-time breakdown of 2 steps of every fast way")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the rows document here")
    args = ap.parse_args()
    q = args.quick
    device = torch.device("cpu" if args.cpu or q or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    cfg = quick_config() if q else pythia_160m_config()
    batch_n = args.batch or (4 if q else 32)
    seq = min(args.seq or (64 if q else 1024), cfg["max_position_embeddings"])
    micro_e = args.micro_eager or (2 if q else 8)
    micro_f = args.micro_fast or (4 if q else 32)
    steps = args.steps or (2 if q else 10)
    warmup = args.warmup or (1 if q else 3)
    # compile on the CPU smoke run only if asked: it costs a minute of CPU for a tiny model
    compile_ = not args.no_compile and device.type == "cuda"
    batch = make_batches(batch_n, seq, cfg["vocab_size"], device, seed=1)
    tokens = batch_n * seq

    ways = []
    if not args.skip_eager:
        ways.append(run_way("eager_fp32", cfg, device, batch, micro_e, False, steps, warmup, compile_))
    ways.append(
        run_way(
            "fast", cfg, device, batch, micro_f, True, steps, warmup, compile_, args.compile_mode, profile=args.profile
        )
    )
    extra = []
    for v in [v for v in args.variants.split(",") if v]:
        parts = set(v.split("+"))
        unknown = parts - {"fused", "ro", "plain", "flash"}
        if unknown:
            raise SystemExit(f"--variants: unknown part(s) {sorted(unknown)} in {v!r}")
        kw = dict(
            head="fused" if "fused" in parts else "full",
            mode="reduce-overhead" if "ro" in parts else args.compile_mode,
            plain_sdpa="plain" in parts,
            flash="flash" in parts,
        )
        try:
            extra.append(
                run_way(
                    f"fast_{v}", cfg, device, batch, micro_f, True, steps, warmup, compile_, profile=args.profile, **kw
                )
            )
        except Exception as e:  # a variant that fails to compile is a result, not a crash of the benchmark
            print(f"variant {v} failed: {type(e).__name__}: {e}"[:2000])
    n_params = ways[-1]["n_params"]
    emb = cfg["vocab_size"] * cfg["hidden_size"]
    flops_6n = 6 * n_params * tokens
    flops_attn = (6 * (n_params - emb) + 6 * cfg["num_layers"] * seq * cfg["hidden_size"]) * tokens
    for w in ways + extra:
        s = w["step_s"]["median_s"]
        w["tokens_per_s"] = tokens / s
        w["mfu"] = flops_6n / s / H100_BF16_PEAK
        w["mfu_attn"] = flops_attn / s / H100_BF16_PEAK
    fast = ways[-1]
    eager = ways[0] if len(ways) > 1 else None
    on_gpu = device.type == "cuda"
    rows = [
        row(
            "pretraining MFU, fast path (bf16, SDPA, compile, fused AdamW), 6N",
            fast["mfu"],
            eager["mfu"] if eager else None,
            limit=1.0,
            unit="fraction of 989 TFLOP/s",
            target="≥ 0.45",
            met=(fast["mfu"] >= 0.45) if on_gpu else None,
        ),
        row(
            "pretraining tokens/s, fast path vs plain eager fp32",
            fast["tokens_per_s"],
            eager["tokens_per_s"] if eager else None,
            limit=H100_BF16_PEAK / (6 * n_params),
            unit="tokens/s",
            target="≥ 10× eager fp32",
            met=(fast["tokens_per_s"] / eager["tokens_per_s"] >= 10) if (on_gpu and eager) else None,
        ),
        row(
            "pretraining MFU, fast path, 6N(no input emb.) + attention",
            fast["mfu_attn"],
            eager["mfu_attn"] if eager else None,
            limit=1.0,
            unit="fraction of 989 TFLOP/s",
            target="(information)",
        ),
    ]
    env = environment(device)
    details = {
        "model": {**cfg, "n_params": n_params},
        "tokens_per_step": tokens,
        "batch": batch_n,
        "seq": seq,
        "ways": ways,
        "variants": extra,
    }
    write_rows(args.json, "train", env, rows, details)
    print_table(rows)
    print(
        f"{env['device']}: "
        + "; ".join(
            f"{w['name']} {w['step_s']['median_s'] * 1000:.1f} ms/step, MFU {w['mfu']:.3f}, "
            f"first loss {w['first_step_loss']:.5f}, peak {w.get('peak_gpu_mem_mb', 0) / 1024:.1f} GiB"
            for w in ways + extra
        )
    )


if __name__ == "__main__":
    main()
