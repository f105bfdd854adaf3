"""Scoring the pool: ``winnow.scorer`` inference throughput and MFU on a Pythia-160M-shaped encoder.

    python benchmarks/bench_scorer.py              # GPU: batches of 128 × 512 tokens
    python benchmarks/bench_scorer.py --quick      # CPU smoke run, tiny model (< 1 min)

The scorer is ``build_scorer`` (GPT-NeoX backbone with Pythia-160M's shape, mean pooling, linear
head), in eval mode. Inputs: random token lists of ``--len`` tokens (full rows, as pool examples
cut to the scorer's max_len are). Ways, same model and inputs, one run:

(a) reference: eager fp32 forward (HF eager attention, TF32 off), device only;
(b) Winnow's scoring path as ``score_ids`` runs it: ``_predict_batch`` (host padding, copy to the
    device, bf16 autocast, scores back to the host) under the backbone's default attention (SDPA);
(c) device only, bf16 autocast, SDPA (the model part of (b));
(d) device only, bf16 backbone weights (fp32 head), SDPA, ``torch.compile`` of the scorer's forward.

MFU = 2·N·tokens/s / 989 TFLOP/s, N = the backbone's parameters without the input embedding (a
lookup, no FLOPs) plus the head; ``mfu_attn`` adds attention's 4·L·T·d FLOPs per token.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import H100_BF16_PEAK, environment, kernel_breakdown, print_table, row, time_fn, write_rows  # noqa: E402

from winnow import scorer as S  # noqa: E402


def backbone_config(quick: bool) -> dict:
    if quick:
        return {
            "hidden_size": 64,
            "num_layers": 2,
            "num_heads": 4,
            "intermediate_size": 256,
            "max_position_embeddings": 128,
            "vocab_size": 512,
        }
    return {
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 2048,
        "vocab_size": 50304,
    }


def build(bb: dict, max_len: int, attn: str | None, device: torch.device) -> S.ScorerModel:
    cfg = S.ScorerConfig(backbone=dict(bb), max_len=max_len)
    model = S.build_scorer(cfg, bb["vocab_size"], eos_id=0, pad_id=0)
    if attn is not None:
        model.backbone.config._attn_implementation = attn
    return model.to(device).eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU (smoke run, < 1 min)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--len", type=int, default=None, help="tokens an example (default 512; quick 64)")
    ap.add_argument("--batch", type=int, default=None, help="examples a batch (default 128; quick 8)")
    ap.add_argument("--batches", type=int, default=None, help="batches a timed run (default 8; quick 2)")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs (default 5; quick 2)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument(
        "--compile-mode", default=None, help="torch.compile mode of (d) and (e), e.g. max-autotune-no-cudagraphs"
    )
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one run of (e)")
    ap.add_argument("--skip-eager", action="store_true", help="skip (e)'s uncompiled variant")
    ap.add_argument("--flash", action="store_true", help="(d) and (e) with SDPA's cuDNN backend off (FlashAttention-2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    q = args.quick
    device = torch.device("cpu" if args.cpu or q or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    on_gpu = device.type == "cuda"
    bb = backbone_config(q)
    seq = min(args.len or (64 if q else 512), bb["max_position_embeddings"])
    bsz = args.batch or (8 if q else 128)
    nb = args.batches or (2 if q else 8)
    repeat = args.repeat or (2 if q else 5)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(2, bb["vocab_size"], size=seq).tolist() for _ in range(bsz * nb)]
    chunks = [seqs[i : i + bsz] for i in range(0, len(seqs), bsz)]
    dev_batches = []
    for c in chunks:
        ids, am = S.pad_batch(c, 0, seq)
        dev_batches.append((ids.to(device), am.to(device)))
    n_tok = bsz * nb * seq

    def device_loop(model, bf16: bool):
        def fn():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                for ids, am in dev_batches:
                    model(ids, am)

        return fn

    ways: dict = {}
    # (a) eager fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    model = build(bb, seq, "eager", device)
    n_all = sum(p.numel() for p in model.parameters())
    n_emb = model.backbone.get_input_embeddings().weight.numel()
    ways["a_eager_fp32"] = time_fn(device_loop(model, False), device, warmup=1, repeat=repeat)
    with torch.no_grad():
        ref_scores = model(*dev_batches[0]).float()
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = True
    # (b) score_ids' path, (c) device only, both under the default attention
    model = build(bb, seq, None, device)
    attn_default = model.backbone.config._attn_implementation
    use_bf16 = S._use_bf16("auto", device)

    def score_path():
        for c in chunks:
            S._predict_batch(model, c, 0, seq, device, use_bf16)

    ways["b_score_path"] = time_fn(score_path, device, warmup=1, repeat=repeat)
    ways["c_device_autocast"] = time_fn(device_loop(model, use_bf16), device, warmup=1, repeat=repeat)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        c_scores = model(*dev_batches[0]).float()
    # (d) bf16 weights + compile (GPU only: compile on the CPU smoke run costs a minute)
    d_scores = None
    if on_gpu:
        torch.backends.cuda.enable_cudnn_sdp(not args.flash)
        model_d = build(bb, seq, "sdpa", device)
        model_d.backbone.to(torch.bfloat16)  # the head stays fp32 (the pooled state is fp32)
        fwd = model_d if args.no_compile else torch.compile(model_d, mode=args.compile_mode)
        ways["d_bf16_compiled"] = time_fn(device_loop(fwd, False), device, warmup=2, repeat=repeat)
        with torch.no_grad():
            d_scores = fwd(*dev_batches[0]).float()

    # (e) score_ids' CUDA path as it now runs (winnow.scorer._CudaScorer through _scored_batches:
    # host padding, pinned async copies, bf16 weights, no backbone mask, compile), full scores out
    e_scores = None
    if on_gpu:
        e_ways = [("e_score_ids_cuda", not args.no_compile)] + (
            [] if args.skip_eager else [("e_score_ids_cuda_eager", False)]
        )
        for key, comp in e_ways:
            model_e = build(bb, seq, None, device)
            fast = S._CudaScorer(model_e, bsz, seq, compile=comp, mode=args.compile_mode)

            # the encoder is the identity on the example's position: ``list`` of seqs[i] below
            def enc_path(fast=fast, model_e=model_e):
                order = np.arange(len(seqs))
                return np.concatenate(
                    list(S._scored_batches(model_e, seqs.__getitem__, order, 0, bsz, 0, seq, device, True, fast))
                )

            ways[key] = time_fn(enc_path, device, warmup=2, repeat=repeat)
            if e_scores is None:
                e_scores = torch.from_numpy(enc_path()[:bsz]).to(device)
            if args.profile and key == "e_score_ids_cuda":
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    enc_path()
                    torch.cuda.synchronize()
                print(f"== profile of one timed run of (e): {nb} batches of {bsz} × {seq} tokens")
                kernel_breakdown(prof, top=20)
            del model_e, fast
            torch.cuda.empty_cache()

    flops_tok = 2 * (n_all - n_emb)
    flops_tok_attn = flops_tok + 4 * bb["num_layers"] * seq * bb["hidden_size"]
    res = {}
    for k, t in ways.items():
        s = t["median_s"]
        res[k] = {
            "timing": t,
            "tokens_per_s": n_tok / s,
            "examples_per_s": bsz * nb / s,
            "mfu": flops_tok * n_tok / s / H100_BF16_PEAK,
            "mfu_attn": flops_tok_attn * n_tok / s / H100_BF16_PEAK,
        }

    def rel(x):
        return None if x is None else float((x - ref_scores).norm() / ref_scores.norm().clamp_min(1e-12))

    best_key = "d_bf16_compiled" if "d_bf16_compiled" in res else "c_device_autocast"
    ref = res["a_eager_fp32"]
    rows = []
    if "e_score_ids_cuda" in res:
        rows.append(
            row(
                "scorer inference MFU, score_ids CUDA path (bf16 weights, compile, async copies)",
                res["e_score_ids_cuda"]["mfu"],
                ref["mfu"],
                limit=1.0,
                unit="fraction of 989 TFLOP/s (2N, N without input emb.)",
                target="≥ 0.40",
                met=res["e_score_ids_cuda"]["mfu"] >= 0.40,
            )
        )
    rows += [
        row(
            "scorer inference MFU, previous score_ids path (_predict_batch: bf16 autocast, SDPA)",
            res["b_score_path"]["mfu"],
            ref["mfu"],
            limit=1.0,
            unit="fraction of 989 TFLOP/s (2N, N without input emb.)",
            target="≥ 0.40",
            met=(res["b_score_path"]["mfu"] >= 0.40) if on_gpu else None,
        ),
        row(
            f"scorer inference MFU, device only, {'bf16 weights + compile' if on_gpu else 'bf16 autocast'}",
            res[best_key]["mfu"],
            ref["mfu"],
            limit=1.0,
            unit="fraction of 989 TFLOP/s",
            target="≥ 0.40",
            met=(res[best_key]["mfu"] >= 0.40) if on_gpu else None,
        ),
        row(
            "scorer examples/s, score_ids path",
            res["b_score_path"]["examples_per_s"],
            ref["examples_per_s"],
            limit=H100_BF16_PEAK / (flops_tok * seq),
            unit=f"examples/s ({seq} tokens)",
            target="10M pool: hours = 1e7 / this / 3600",
        ),
    ]
    details = {
        "backbone": {**bb, "n_params_scorer": n_all, "n_input_embedding": n_emb},
        "seq": seq,
        "batch": bsz,
        "batches": nb,
        "default_attention": attn_default,
        "ways": res,
        "scores_rel_err_vs_fp32": {
            "c_device_autocast": rel(c_scores),
            "d_bf16_compiled": rel(d_scores),
            "e_score_ids_cuda": rel(e_scores),
        },
    }
    env = environment(device)
    write_rows(args.json, "scorer", env, rows, details)
    print_table(rows)
    print(
        f"{env['device']}: "
        + "; ".join(f"{k} {v['tokens_per_s']:.3g} tok/s mfu {v['mfu']:.3f}" for k, v in res.items())
        + f"; rel err vs fp32: {details['scores_rel_err_vs_fp32']}"
    )


if __name__ == "__main__":
    main()
