"""PDS solver benchmarks: per-example contributions and one solver step, on a Pythia-160M shape.

    python benchmarks/bench_pds.py                 # GPU (H100/H200), Pythia-160M shape, bf16
    python benchmarks/bench_pds.py --tiny --cpu    # a CPU smoke run of the same code paths

1. Contributions ⟨∇ℓ(x_n, θ), λ⟩ for a batch of proxy examples, two ways in one run:
   ours = forward-mode JVP of θ ↦ (ℓ_1..ℓ_b), batched (`winnow.grads.loss_jvp`);
   reference = the straightforward loop of the originals: one example at a time, backward,
   flatten the gradient, dot with λ. Both results are compared (relative error).
2. One backward step of the solver (recompute the SGD step, HVP by forward-over-reverse on the
   trajectory batch, ∇J on the target batch) against one AdamW training step on the same batch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    build_neox,
    environment,
    print_table,
    pythia_160m_config,
    row,
    time_fn,
    tiny_config,
    write_result,
    write_rows,
)

from winnow.grads.functional import (  # noqa: E402
    functional_model,
    hvp,
    loss_jvp,
    mean_loss_grad,
    params_of,
    per_example_loss,
)


def build(cfg: dict, dtype: torch.dtype, device: torch.device):
    return build_neox(cfg, device, dtype)


def batch(n: int, seq: int, vocab: int, device: torch.device, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    loss_mask = torch.ones(n, seq, dtype=torch.bool)
    loss_mask[:, 0] = False
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "loss_mask": loss_mask.to(device)}


def sub(b: dict, i: int, j: int) -> dict:
    return {k: v[i:j] for k, v in b.items()}


def loop_contributions(model, b: dict, lam_flat: torch.Tensor) -> torch.Tensor:
    """The originals' way: per example, backward, flatten, dot."""
    out = []
    params = [p for p in model.parameters()]
    for i in range(b["input_ids"].size(0)):
        model.zero_grad(set_to_none=True)
        loss = per_example_loss(model, dict(model.named_parameters()), sub(b, i, i + 1)).sum()
        grads = torch.autograd.grad(loss, params)
        flat = torch.cat([g.reshape(-1) for g in grads]).float()
        out.append(torch.dot(flat, lam_flat))
    return torch.stack(out)


def workflow_contributions(args, model, params, lam, lam_flat, cfg, seq, device, reps) -> dict:
    """Time ``winnow.methods.pds._contributions`` as ``solve`` runs it, for each precision."""
    import tempfile

    import numpy as np
    import pyarrow as pa

    from winnow.io.shards import token_dtype, write_shard
    from winnow.io.tables import EXAMPLES
    from winnow.methods.pds import PMPConfig, _contributions, _CudaJVP, _Data
    from winnow.train.batches import ExampleStore

    n = args.workflow_n
    tmp = tempfile.TemporaryDirectory(prefix="bench_pds_")
    rng = np.random.default_rng(5)
    tokens = rng.integers(2, cfg["vocab_size"], size=n * seq)
    dtype = token_dtype(cfg["vocab_size"])
    write_shard(Path(tmp.name) / "tokens-0.bin", tokens, dtype)
    ids = np.arange(n, dtype=np.int64)
    table = pa.table(
        {
            "example_id": ids,
            "doc_id": [f"d{i}" for i in range(n)],
            "shard": np.zeros(n, dtype=np.int32),
            "offset": np.arange(n, dtype=np.int64) * seq,
            "length": np.full(n, seq, dtype=np.int32),
            "loss_start": np.zeros(n, dtype=np.int32),
            "loss_end": np.full(n, seq, dtype=np.int32),
            "domain": ["x"] * n,
            "split": ["train"] * n,
        },
        schema=EXAMPLES,
    )
    data = _Data(ExampleStore(table, {0: Path(tmp.name) / "tokens-0.bin"}, dtype.str), seq, 0)
    out = {}
    with torch.autocast(device.type, enabled=False):
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # the workflow never turns TF32 on
        looped = [b for _, b in data.chunks(ids[: args.loop], args.loop)][0]
        looped = {k: v.to(device) for k, v in looped.items()}
        for prec in args.workflow_precision.split(","):
            pcfg = PMPConfig(lr=1.0, proxy_batch_size=args.workflow_micro, contribution_precision=prec)
            on_gpu = device.type == "cuda"
            try:
                jvp = _CudaJVP(pcfg) if on_gpu else None
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16"):
                    ref = loop_contributions(model, looped, lam_flat).double()

                def run(jvp=jvp, pcfg=pcfg):
                    return _contributions(model, params, lam, ids, pcfg, data, jvp)

                t_first = time_fn(run, device, warmup=0, repeat=1)["median_s"]  # includes compiling
                vals = torch.from_numpy(run()[: args.loop]).to(ref.device)
                err = float((vals - ref).norm() / ref.norm())
                t = time_fn(run, device, warmup=0, repeat=min(reps, 3))
                out[prec] = {
                    "s": t["median_s"],
                    "s_per_1024": t["median_s"] * 1024 / n,
                    "first_call_s": t_first,
                    "rel_err": err,
                    "micro": args.workflow_micro,
                    "n": n,
                    "timing": t,
                    "compiled": on_gpu and jvp.fn is not loss_jvp,  # False: fell back to eager
                }
            except Exception as exc:
                out[prec] = {"error": repr(exc)[:500]}
            print("workflow", prec, {k: v for k, v in out[prec].items() if k != "timing"}, flush=True)
        torch.backends.cuda.matmul.allow_tf32 = tf32
    tmp.cleanup()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="small model (CPU smoke run)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--proxy", type=int, default=64, help="examples in the contribution benchmark")
    ap.add_argument("--micro", default="16", help="JVP micro-batch; a comma list times each (best is reported)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd JVPs (GPU)")
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU, few examples (smoke run)")
    ap.add_argument("--json", default=None, help="also write the rows document (benchmarks/run.py) here")
    ap.add_argument("--loop", type=int, default=16, help="examples timed with the per-example loop")
    ap.add_argument("--batch", type=int, default=16, help="trajectory / training batch")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--workflow", action="store_true", help="also time winnow.methods.pds._contributions")
    ap.add_argument("--workflow-n", type=int, default=1024, help="proxy examples of the workflow pass")
    ap.add_argument("--workflow-micro", type=int, default=64, help="proxy_batch_size of the workflow pass")
    ap.add_argument("--workflow-precision", default="bf16,model", help="contribution_precision values")
    args = ap.parse_args()
    if args.quick:
        args.tiny, args.cpu = True, True
        args.seq, args.proxy, args.loop, args.batch = 64, 8, 4, 4
        args.micro, args.dtype = "4", "fp32"
        args.workflow, args.workflow_n, args.workflow_micro = True, 8, 4
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    # bf16 = fp32 parameters under bf16 autocast (mixed precision, as training runs): pure-bf16
    # parameters break forward-mode AD through CUDA layer norm (its primal comes back fp32).
    dtype = torch.float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
    autocast.__enter__()
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = tiny_config() if args.tiny else pythia_160m_config()
    if args.quick:  # smaller still: the solver step's HVP is slow on a shared CPU
        cfg = {**cfg, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 256, "vocab_size": 512}
    seq = min(args.seq, cfg["max_position_embeddings"])
    model = functional_model(build(cfg, dtype, device))
    n_params = sum(p.numel() for p in model.parameters())
    params = params_of(model)
    g = torch.Generator(device="cpu").manual_seed(1)
    lam = {k: (torch.randn(v.shape, generator=g) * 1e-3).to(device=device, dtype=dtype) for k, v in params.items()}
    lam_flat = torch.cat([lam[k].reshape(-1) for k, _ in model.named_parameters()]).float()
    proxy = batch(args.proxy, seq, cfg["vocab_size"], device, seed=2)

    # 1. contributions: correctness on the looped subset, then throughput of each way.
    micros = [int(m) for m in str(args.micro).split(",")]
    reps = 1 if args.quick else 5

    def jvp_all(micro: int, fn=None):
        fn = fn or (lambda p, b, t: loss_jvp(model, p, b, t))
        return torch.cat([fn(params, sub(proxy, i, i + micro), lam) for i in range(0, args.proxy, micro)])

    ref_vals = loop_contributions(model, sub(proxy, 0, args.loop), lam_flat)
    t_loop = time_fn(
        lambda: loop_contributions(model, sub(proxy, 0, args.loop), lam_flat), device, warmup=1, repeat=min(reps, 3)
    )
    loop_rate = args.loop / t_loop["median_s"]
    variants: dict = {}
    fns = [("eager", None)]
    if args.compile:
        fns.append(("compiled", torch.compile(lambda p, b, t: loss_jvp(model, p, b, t), dynamic=False)))
    for fname, fn in fns:
        for micro in micros:
            key = f"{fname}_micro{micro}"
            try:
                vals = jvp_all(micro, fn).float()
                err = float((vals[: args.loop] - ref_vals).norm() / ref_vals.norm())
                t = time_fn(lambda micro=micro, fn=fn: jvp_all(micro, fn), device, warmup=1, repeat=reps)
                variants[key] = {"rate": args.proxy / t["median_s"], "timing": t, "rel_err": err, "micro": micro}
            except Exception as exc:  # out of memory at a large micro-batch, a compiler failure, ...
                variants[key] = {"error": repr(exc)[:500]}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            print(key, {k: v for k, v in variants[key].items() if k != "timing"}, flush=True)
    ok = {k: v for k, v in variants.items() if "rate" in v}
    best_key = max(ok, key=lambda k: ok[k]["rate"])
    jvp_rate, rel_err, t_jvp = ok[best_key]["rate"], ok[best_key]["rel_err"], ok[best_key]["timing"]

    # 1b. the workflow's own contribution pass (winnow.methods.pds._contributions: collate from an
    # ExampleStore, micro-batches of proxy_batch_size, the CUDA JVP wrapper), outside the global
    # autocast, per contribution_precision; checked against the per-example loop in that precision.
    workflow: dict = {}
    if args.workflow:
        workflow = workflow_contributions(args, model, params, lam, lam_flat, cfg, seq, device, reps)

    # 2. one solver backward step vs one AdamW training step on the same batch.
    traj = batch(args.batch, seq, cfg["vocab_size"], device, seed=3)
    target = batch(args.batch, seq, cfg["vocab_size"], device, seed=4)

    def solver_step():
        mean_loss_grad(model, params, traj)  # recompute θ_{t+1} = θ_t − η∇L (the gradient is the cost)
        hvp(model, params, traj, lam)  # H_t λ_{t+1}, forward-over-reverse
        mean_loss_grad(model, params, target)  # ∇J(θ_t)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

    def train_step():
        loss = per_example_loss(model, dict(model.named_parameters()), traj).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    t_solver = time_fn(solver_step, device, warmup=1, repeat=reps)
    t_train = time_fn(train_step, device, warmup=2, repeat=reps)
    tokens = args.batch * seq

    result = {
        "environment": environment(device),
        "model": {**cfg, "n_params": n_params, "dtype": args.dtype, "seq_len": seq},
        "contributions": {
            "jvp_examples_per_s": jvp_rate,
            "loop_examples_per_s": loop_rate,
            "speedup": jvp_rate / loop_rate,
            "relative_error_vs_loop": rel_err,
            "jvp": t_jvp,
            "loop": t_loop,
            "proxy": args.proxy,
            "best": best_key,
            "variants": variants,
            "looped": args.loop,
        },
        "workflow_contributions": workflow,
        "solver_vs_train_step": {
            "solver_step": t_solver,
            "train_step": t_train,
            "ratio": t_solver["median_s"] / t_train["median_s"],
            "batch": args.batch,
            "tokens_per_step": tokens,
        },
        "command": " ".join(["python"] + sys.argv),
    }
    if device.type == "cuda":
        result["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    path = write_result("bench_pds" + ("_tiny" if args.tiny else ""), result)
    print_table(
        [
            {
                "figure": "PDS contributions, examples/s",
                "ours": f"{jvp_rate:.1f} (batched JVP, {best_key})",
                "reference": f"{loop_rate:.1f} (per-example backward loop)",
                "ratio": f"{jvp_rate / loop_rate:.1f}x",
                "limit": f"rel. err {rel_err:.1e}",
            },
            {
                "figure": "solver backward step vs train step, s",
                "ours": f"{t_solver['median_s']:.4f}",
                "reference": f"{t_train['median_s']:.4f}",
                "ratio": f"{t_solver['median_s'] / t_train['median_s']:.2f}",
                "limit": f"{tokens} tokens/step",
            },
        ]
    )
    print(f"wrote {path}; {result['environment']['device']}, {n_params / 1e6:.1f}M params, {args.dtype}")
    on_gpu = device.type == "cuda"
    rows = [
        row(
            f"PDS contributions, s for 1024 proxy examples × {seq} tokens ({best_key})",
            1024 / jvp_rate,
            1024 / loop_rate,
            ratio=jvp_rate / loop_rate,
            limit="0.4 (H100 FLOP floor)" if on_gpu else None,
            unit="s",
            target="≤ 1.5 s on an H100",
            met=(1024 / jvp_rate <= 1.5) if on_gpu else None,
        ),
        row("PDS contributions: relative error vs the backward loop", rel_err, None, unit="", target="bf16 rounding"),
        row(
            "PDS solver backward step vs one AdamW step",
            t_solver["median_s"],
            t_train["median_s"],
            unit="s",
            target="(information; floor ≈ 4-5 training steps)",
        ),
    ]
    for key, w in workflow.items():
        if "s_per_1024" not in w:
            continue
        rows.append(
            row(
                f"PDS workflow _contributions ({key}), s for 1024 × {seq} tokens",
                w["s_per_1024"],
                1024 / loop_rate,
                ratio=1024 / loop_rate / w["s_per_1024"],
                limit="0.4 (H100 FLOP floor)" if on_gpu else None,
                unit="s",
                target=f"≤ 1.5 s on an H100; rel. err vs loop {w['rel_err']:.1e}",
                met=(w["s_per_1024"] <= 1.5) if on_gpu else None,
            )
        )
    write_rows(args.json, "pds", result["environment"], rows, result)


if __name__ == "__main__":
    main()
