"""Timing and reporting helpers shared by the benchmarks (device events on CUDA, medians)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from _rows import H100_BF16_PEAK, fmt, print_table, row, write_rows  # noqa: F401 (re-exported)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn, device: torch.device, warmup: int = 2, repeat: int = 5) -> dict:
    """Median and spread of ``fn()`` wall time in seconds (synchronised around each call)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "n": len(times),
        "times_s": times,  # in run order: a slow first pass (allocator growth, compile) shows here
    }


def environment(device: torch.device) -> dict:
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "host": platform.node(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.type == "cpu":
        env["threads"] = torch.get_num_threads()
    return env


def pythia_160m_config(vocab: int = 50304, max_pos: int = 2048) -> dict:
    """Pythia-160M's shape: d 768, 12 layers, 12 heads, MLP 3072, vocab 50304 (~162M parameters)."""
    return {
        "hidden_size": 768,
        "num_layers": 12,
        "num_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": max_pos,
        "vocab_size": vocab,
    }


def build_neox(
    cfg: dict,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    pad_token_id: int | None = None,
    attn: str | None = None,
):
    """A GPT-NeoX from a ``*_config()`` dict (Pythia's rotary 0.25, parallel residual), seed 0.

    ``attn``: the attention implementation ("eager", "sdpa"; None: transformers' default).
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    conf = GPTNeoXConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_heads"],
        intermediate_size=cfg["intermediate_size"],
        max_position_embeddings=cfg["max_position_embeddings"],
        rotary_pct=0.25,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=pad_token_id,
    )
    if attn is not None:
        conf._attn_implementation = attn
    return GPTNeoXForCausalLM(conf).to(device=device, dtype=dtype)


def tiny_config() -> dict:
    """A CPU-sized stand-in with the same code paths (for a local smoke run of a benchmark)."""
    return {
        "hidden_size": 128,
        "num_layers": 4,
        "num_heads": 4,
        "intermediate_size": 512,
        "max_position_embeddings": 256,
        "vocab_size": 8192,
    }


def write_result(name: str, result: dict) -> Path:
    out = Path(os.environ.get("OUT", "benchmarks/out"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return path


KERNEL_CLASSES = (
    ("attention", ("sdpa", "flash", "fmha", "attention")),
    ("gemm", ("gemm", "cutlass", "nvjet", "xmma", "cublas")),
    ("optimizer", ("adam", "multi_tensor")),
    ("inductor (fused elementwise/reductions)", ("triton",)),
    ("copies", ("memcpy", "memset", "copy", "fill")),
)


def kernel_breakdown(prof, top: int = 15) -> dict:
    """Device time of a ``torch.profiler`` run by kernel class, plus the ``top`` kernels (ms).

    Classes by kernel-name substrings (``KERNEL_CLASSES``, first match wins; the rest is "other").
    """
    per_kernel: dict[str, float] = {}
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None)
        if t is None:
            t = getattr(e, "self_cuda_time_total", 0.0)
        if t and getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type):
            per_kernel[e.key] = per_kernel.get(e.key, 0.0) + t / 1000.0
    classes: dict[str, float] = {}
    for name, ms in per_kernel.items():
        low = name.lower()
        cls = next((c for c, keys in KERNEL_CLASSES if any(k in low for k in keys)), "other")
        classes[cls] = classes.get(cls, 0.0) + ms
    total = sum(classes.values())
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:top]
    print(f"device time {total:.2f} ms by class:")
    for c, ms in sorted(classes.items(), key=lambda kv: -kv[1]):
        print(f"  {c:45s} {ms:9.2f} ms  {100 * ms / max(total, 1e-9):5.1f}%")
    print("top kernels:")
    for name, ms in ranked:
        print(f"  {ms:9.2f} ms  {name[:110]}")
    return {"total_ms": total, "classes_ms": classes, "top_ms": ranked}
