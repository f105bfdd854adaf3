"""MATES oracle benchmark: candidates/s of the exact one-step probe, three ways, Pythia-160M shape.

    python benchmarks/bench_mates.py                 # GPU (H100/H200), bf16 autocast, fp32 master params
    python benchmarks/bench_mates.py --tiny --cpu    # a CPU smoke run of the same code paths (fp32)

Setup: a GPT-NeoX with Pythia-160M's shape takes two trainer-style AdamW steps (so the moments and
the bias correction are not trivial), then a real checkpoint is written with
``winnow.models.checkpoint.save_checkpoint`` (model.safetensors + optimizer.safetensors +
trainer_state.json, constant lr 1e-3 as in MATES's stable phase) and read back with
``winnow.methods.mates.load_state``. Candidates: random-token sequences of ``--seq`` tokens, all
positions targets. Reference set: ``--ref-n`` LAMBADA-like random sequences of ~``--ref-seq``
tokens with the loss on the last word (``--ref-target`` tokens).

(a) original loop: per candidate, reload model + optimizer state FROM DISK (``load_checkpoint``),
    one ``torch.optim.AdamW`` step on the candidate (clip 1.0), full reference evaluation
    (``sequential_oracle(reload_dir=...)``);
(c) the same loop with the state restored in memory by ``copy_`` (``sequential_oracle``);
(b) ours: ``batched_oracle`` (vmap(grad) over K candidates, functional AdamW on K parameter copies,
    the reference loss of the K copies by K functional calls (``--ref-mode loop``) or one vmap over
    the stacked copies (``--ref-mode vmap``), LM head only at target positions, SDPA), for each K
    of ``--k``; plus (b') the same with the full LM head, to separate that trick;
(d) the first-order approximation (not exact): rate and Spearman against (b).

Rates are steady-state candidates/s: the per-candidate work of each method (restore/step/reference
or gradients/update/reference), excluding the one ℒ_ref(θ) pass every call makes first; end-to-end
wall times are in the JSON too. Agreement: (b) against (a) on the candidates (a) probed.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    build_neox,
    environment,
    print_table,
    pythia_160m_config,
    row,
    sync,
    time_fn,
    tiny_config,
    write_result,
    write_rows,
)

from winnow.methods.mates import (  # noqa: E402
    batched_oracle,
    first_order_agreement,
    first_order_oracle,
    load_state,
    sequential_oracle,
    trainer_param_groups,
)
from winnow.models.checkpoint import save_checkpoint  # noqa: E402
from winnow.stats import spearman  # noqa: E402
from winnow.train.trainer import TrainConfig, _state, masked_ce_sum  # noqa: E402


def build(cfg: dict, device: torch.device):
    return build_neox(cfg, device)


def sequences(n: int, seq: int, vocab: int, seed: int) -> dict:
    """Candidates: full-length random sequences, every position a target."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, seq), generator=g)
    loss_mask = torch.ones(n, seq, dtype=torch.bool)
    loss_mask[:, 0] = False
    return {"input_ids": ids, "attention_mask": torch.ones(n, seq, dtype=torch.long), "loss_mask": loss_mask}


def lambada_like(n: int, seq: int, vocab: int, target: int, seed: int) -> dict:
    """Right-padded passages of 3/4·seq..seq tokens; loss only on the last ``target`` tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, seq, dtype=torch.long)
    attn = torch.zeros(n, seq, dtype=torch.long)
    loss_mask = torch.zeros(n, seq, dtype=torch.bool)
    for r in range(n):
        length = int(torch.randint(3 * seq // 4, seq + 1, (1,), generator=g))
        ids[r, :length] = torch.randint(2, vocab, (length,), generator=g)
        attn[r, :length] = 1
        loss_mask[r, length - target : length] = True
    return {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}


def make_checkpoint(model, root: Path, seq: int, vocab: int, device: torch.device, amp: bool) -> Path:
    """Two trainer-style AdamW steps, then save_checkpoint with a trainer_state of a constant-lr run."""
    tcfg = TrainConfig(steps=1000, batch_size=4, micro_batch_size=4, seq_len=seq, lr=1e-3, schedule="constant")
    opt = torch.optim.AdamW(
        trainer_param_groups(model, tcfg.weight_decay),
        lr=tcfg.lr,
        betas=tcfg.betas,
        eps=tcfg.eps,
        foreach=device.type == "cuda",
    )
    model.train()
    for step in range(2):
        b = {k: v.to(device) for k, v in sequences(4, seq, vocab, seed=100 + step).items()}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        (masked_ce_sum(logits, b["input_ids"], b["loss_mask"]) / int(b["loss_mask"][:, 1:].sum())).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    return save_checkpoint(root / "step-00000002", model, opt, _state(2, "bench", tcfg, device, float("nan")))


def rate(result, n: int) -> float:
    t = result.timings
    per = sum(v for k, v in t.items() if k.endswith("_s") and k != "reference_grad_s")
    return n / per if per > 0 else float("nan")


def run(fn, device, *args, **kw):
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    sync(device)
    return out, time.perf_counter() - t0


def profile(model, state, cands, ref, cfg, ks, device, table: bool) -> None:
    """Phase timings of one chunk of the batched oracle per K and reference mode (+ top kernels)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for mode in ("vmap", "loop"):
        for k in ks:
            c = replace(cfg, candidates_per_batch=k, reference_mode=mode)
            x = {n: v[:k] for n, v in cands.items()}
            batched_oracle(model, state, x, ref, c)  # warm-up
            res, wall = run(batched_oracle, device, model, state, x, ref, c)
            phases = {a: round(b * 1000 / k, 2) for a, b in res.timings.items() if a.endswith("_s")}
            print(f"K={k} reference {mode}: {k / wall:.2f} cand/s incl. the before pass; ms/candidate {phases}")
            if table:
                with prof(activities=acts) as p:
                    batched_oracle(model, state, x, ref, c)
                    sync(device)
                key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
                print(p.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70))
                table = False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="small model (CPU smoke run)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp32"], help="default: bf16 on GPU, fp32 on CPU")
    ap.add_argument("--seq", type=int, default=None, help="candidate length (default 1024; tiny 128)")
    ap.add_argument("--ref-n", type=int, default=None, help="reference examples (default 256; tiny 32)")
    ap.add_argument("--ref-seq", type=int, default=None, help="reference length (default 128; tiny 32)")
    ap.add_argument("--ref-target", type=int, default=2, help="target tokens per reference example")
    ap.add_argument("--ref-batch", type=int, default=256, help="reference micro-batch (all methods)")
    ap.add_argument("--k", default=None, help="candidates per batch for (b), comma list (default 4,8,16; tiny 4)")
    ap.add_argument("--n-batched", type=int, default=None, help="candidates for (b)/(d) (default 64; tiny 8)")
    ap.add_argument("--n-reload", type=int, default=None, help="candidates for (a) (default 4; tiny 2)")
    ap.add_argument("--n-memory", type=int, default=None, help="candidates for (c) (default 16; tiny 4)")
    ap.add_argument("--ckpt-dir", default=None, help="where to write the checkpoint (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (a shared 2-core box: 1)")
    ap.add_argument("--no-tf32", action="store_true", help="full fp32 matmuls (for the fp32 agreement run)")
    ap.add_argument("--ref-mode", default="loop", choices=["vmap", "loop"], help="(b)'s reference_mode")
    ap.add_argument("--compile", action="store_true", help="(b) with OracleConfig.compile (CUDA)")
    ap.add_argument("--grad-mode", default="vmap", choices=["vmap", "loop"], help="(b)'s grad_mode")
    ap.add_argument("--profile", action="store_true", help="time one chunk of (b) per K and reference mode, exit")
    ap.add_argument("--profile-table", action="store_true", help="with --profile: also the top kernels (first)")
    ap.add_argument("--quick", action="store_true", help="= --tiny --cpu (the smoke run benchmarks/run.py uses)")
    ap.add_argument("--json", default=None, help="also write the rows document (benchmarks/run.py) here")
    args = ap.parse_args()
    if args.quick:
        args.tiny = args.cpu = True
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    tiny = args.tiny
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    seq = args.seq or (128 if tiny else 1024)
    ref_n = args.ref_n or (32 if tiny else 256)
    ref_seq = args.ref_seq or (32 if tiny else 128)
    ks = [int(k) for k in (args.k or ("4" if tiny else "4,8,16")).split(",")]
    n_b = args.n_batched or (8 if tiny else 64)
    n_a = args.n_reload or (2 if tiny else 4)
    n_c = args.n_memory or (4 if tiny else 16)
    torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32
    torch.backends.cudnn.allow_tf32 = not args.no_tf32

    mcfg = tiny_config() if tiny else pythia_160m_config()
    seq = min(seq, mcfg["max_position_embeddings"])
    vocab = mcfg["vocab_size"]
    model = build(mcfg, device)
    n_params = sum(p.numel() for p in model.parameters())
    amp = dtype_name == "bf16"
    tmp = tempfile.TemporaryDirectory(prefix="bench_mates_", dir=args.ckpt_dir)
    t0 = time.perf_counter()
    ckpt = make_checkpoint(model, Path(tmp.name), seq, vocab, device, amp)
    t_ckpt = time.perf_counter() - t0
    ckpt_bytes = sum(f.stat().st_size for f in ckpt.iterdir())
    state = load_state(ckpt, model)
    assert state.config.lr == 1e-3 and all(s == 2.0 for s in state.step.values())
    cfg = replace(
        state.config,
        reference_batch_size=args.ref_batch,
        amp="bf16" if amp else None,
        reference_mode=args.ref_mode,
        compile=args.compile,
        grad_mode=args.grad_mode,
    )

    cands = sequences(max(n_b, n_a, n_c), seq, vocab, seed=1)
    ref = lambada_like(ref_n, ref_seq, vocab, args.ref_target, seed=2)

    def sub(b, n):
        return {k: v[:n] for k, v in b.items()}

    # one reference pass, plain model forward, full head: the per-candidate floor of (a)/(c)
    ref_dev = {k: v.to(device) for k, v in ref.items()}

    def ref_pass():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            for i in range(0, ref_n, args.ref_batch):
                model(
                    input_ids=ref_dev["input_ids"][i : i + args.ref_batch],
                    attention_mask=ref_dev["attention_mask"][i : i + args.ref_batch],
                ).logits.float()

    t_refpass = time_fn(ref_pass, device, warmup=1, repeat=3)

    if args.profile:
        profile(model, state, sub(cands, max(ks)), ref, cfg, ks, device, args.profile_table)
        return

    results: dict = {}
    # warm-up (kernels, allocator) on one candidate each
    sequential_oracle(model, state, sub(cands, 1), ref, cfg)
    batched_oracle(model, state, sub(cands, min(ks[0], n_b)), ref, replace(cfg, candidates_per_batch=ks[0]))

    # (a) reload from disk per candidate
    res_a, wall_a = run(sequential_oracle, device, model, state, sub(cands, n_a), ref, cfg, reload_dir=ckpt)
    results["a_reload"] = {"rate": rate(res_a, n_a), "wall_s": wall_a, "n": n_a, "timings": res_a.timings}
    # (c) in-memory restore
    res_c, wall_c = run(sequential_oracle, device, model, state, sub(cands, n_c), ref, cfg)
    results["c_memory"] = {"rate": rate(res_c, n_c), "wall_s": wall_c, "n": n_c, "timings": res_c.timings}
    # (b) batched exact, per K
    best = None
    for k in ks:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            res_b, wall_b = run(
                batched_oracle, device, model, state, sub(cands, n_b), ref, replace(cfg, candidates_per_batch=k)
            )
        except torch.OutOfMemoryError:
            results[f"b_batched_k{k}"] = {"oom": True}
            continue
        entry = {"rate": rate(res_b, n_b), "wall_s": wall_b, "n": n_b, "k": k, "timings": res_b.timings}
        if device.type == "cuda":
            entry["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        results[f"b_batched_k{k}"] = entry
        if best is None or entry["rate"] > best[0]["rate"]:
            best = (entry, res_b)
    if best is None:
        raise SystemExit("every K ran out of memory")
    entry_b, res_b = best
    k_best = entry_b["k"]
    # (b') same, full LM head
    gc.collect()
    try:
        res_bf, wall_bf = run(
            batched_oracle,
            device,
            model,
            state,
            sub(cands, n_b),
            ref,
            replace(cfg, candidates_per_batch=k_best, head_at_targets=False),
        )
        results["b_full_head"] = {
            "rate": rate(res_bf, n_b),
            "wall_s": wall_bf,
            "n": n_b,
            "k": k_best,
            "timings": res_bf.timings,
            "max_abs_diff_vs_b": float(np.max(np.abs(res_bf.ref_loss_after - res_b.ref_loss_after))),
        }
    except torch.OutOfMemoryError:
        results["b_full_head"] = {"oom": True}
    # (d) first-order approximation
    res_d, wall_d = run(
        first_order_oracle, device, model, state, sub(cands, n_b), ref, replace(cfg, candidates_per_batch=k_best)
    )
    results["d_first_order"] = {
        "rate": rate(res_d, n_b),
        "wall_s": wall_d,
        "n": n_b,
        "k": k_best,
        "timings": res_d.timings,
        "vs_exact": first_order_agreement(res_b, res_d),
    }

    # agreement
    n_common = min(n_a, n_b)
    agree = {
        "b_vs_a_max_abs_diff_after": float(
            np.max(np.abs(res_b.ref_loss_after[:n_common] - res_a.ref_loss_after[:n_common]))
        ),
        "b_vs_a_max_abs_diff_delta": float(np.max(np.abs(res_b.delta[:n_common] - res_a.delta[:n_common]))),
        "b_vs_c_max_abs_diff_delta": float(np.max(np.abs(res_b.delta[:n_c] - res_c.delta[: min(n_c, n_b)]))),
        "a_vs_c_max_abs_diff_delta": float(np.max(np.abs(res_a.delta[: min(n_a, n_c)] - res_c.delta[: min(n_a, n_c)]))),
        "b_vs_c_spearman_delta": spearman(res_b.delta[: min(n_c, n_b)], res_c.delta[: min(n_c, n_b)]),
        "ref_loss_before": {"a": res_a.ref_loss_before, "b": res_b.ref_loss_before, "c": res_c.ref_loss_before},
        "delta_b": {"min": float(res_b.delta.min()), "max": float(res_b.delta.max()), "std": float(res_b.delta.std())},
    }
    rate_a, rate_b, rate_c = results["a_reload"]["rate"], entry_b["rate"], results["c_memory"]["rate"]
    ref_floor = 1.0 / t_refpass["median_s"]
    result = {
        "environment": environment(device),
        "model": {**mcfg, "n_params": n_params, "dtype": dtype_name, "seq_len": seq},
        "reference": {"n": ref_n, "seq": ref_seq, "target_tokens": args.ref_target, "micro_batch": args.ref_batch},
        "oracle_config": asdict(cfg),
        "checkpoint": {"bytes": ckpt_bytes, "write_s": t_ckpt},
        "reference_pass_full_head": t_refpass,
        "results": results,
        "agreement": agree,
        "speedup_b_over_a": rate_b / rate_a,
        "speedup_b_over_c": rate_b / rate_c,
        "speedup_c_over_a": rate_c / rate_a,
        "command": " ".join(["python"] + sys.argv),
    }
    if device.type == "cuda":
        result["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    result["tf32"] = not args.no_tf32
    name = f"bench_mates_{dtype_name}_seq{seq}" + (f"_ref{args.ref_mode}" if args.ref_mode != "loop" else "")
    path = write_result(name + ("_tiny" if tiny else ""), result)
    fo = results["d_first_order"]
    print_table(
        [
            {
                "figure": "MATES exact oracle, candidates/s",
                "ours": f"{rate_b:.2f} (batched, K={k_best})",
                "reference": f"{rate_a:.2f} (reload ckpt from disk per candidate)",
                "ratio": f"{rate_b / rate_a:.1f}x",
                "limit": f"max |Δ(b)−Δ(a)| {agree['b_vs_a_max_abs_diff_delta']:.1e} on {n_common}",
            },
            {
                "figure": "same, vs in-memory sequential",
                "ours": f"{rate_b:.2f}",
                "reference": f"{rate_c:.2f} (restore by copy_, one at a time)",
                "ratio": f"{rate_b / rate_c:.1f}x",
                "limit": f"1 full-head reference pass: {ref_floor:.1f}/s",
            },
            {
                "figure": "in-memory sequential vs reload loop",
                "ours": f"{rate_c:.2f}",
                "reference": f"{rate_a:.2f}",
                "ratio": f"{rate_c / rate_a:.1f}x",
                "limit": f"ckpt {ckpt_bytes / 2**20:.0f} MiB",
            },
            {
                "figure": "first-order approx. (not exact), candidates/s",
                "ours": f"{fo['rate']:.2f}",
                "reference": f"{rate_b:.2f} (exact batched)",
                "ratio": f"{fo['rate'] / rate_b:.1f}x",
                "limit": f"Spearman vs exact {fo['vs_exact']['spearman']:.3f} (n={n_b})",
            },
        ]
    )
    per_k = ", ".join(
        f"K={v['k']}: {v['rate']:.2f}/s"
        + (f" ({v['peak_gpu_mem_mb'] / 1024:.1f} GiB)" if "peak_gpu_mem_mb" in v else "")
        for key, v in results.items()
        if key.startswith("b_batched") and not v.get("oom")
    )
    full = results["b_full_head"]
    phases = {a: round(b * 1000 / n_b, 2) for a, b in res_b.timings.items() if a.endswith("_s")}
    print(f"best K={k_best} (compile={args.compile}, grads {args.grad_mode}): ms/candidate {phases}")
    print(f"batched per K: {per_k}; full head: " + ("out of memory" if full.get("oom") else f"{full['rate']:.2f}/s"))
    print(f"wrote {path}; {result['environment']['device']}, {n_params / 1e6:.1f}M params, {dtype_name}")
    on_gpu = device.type == "cuda"
    diff = agree["b_vs_a_max_abs_diff_delta"]
    rows = [
        row(
            f"MATES exact oracle candidates/s, batched K={k_best}"
            + (f" (compiled, grads {args.grad_mode})" if args.compile else "")
            + " vs reload-per-candidate loop",
            rate_b,
            rate_a,
            limit=None,
            unit="candidates/s",
            target="≥ 50× with exact values",
            met=(rate_b / rate_a >= 50) if on_gpu else None,
        ),
        row(
            "MATES oracle: max |Δ(ours) − Δ(loop)|",
            diff,
            None,
            unit="loss",
            target="exact (rounding only)",
            limit=float(res_b.delta.std()),
        ),
        row(
            "MATES batched vs in-memory sequential",
            rate_b,
            rate_c,
            unit="candidates/s",
            limit=ref_floor,
            target="(limit: 1 full-head reference pass/s)",
        ),
    ]
    write_rows(args.json, "mates", result["environment"], rows, result)
    tmp.cleanup()


if __name__ == "__main__":
    main()
