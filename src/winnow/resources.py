"""Cluster requests sized from the job: memory (MB) and runtime (minutes) of each heavy rule.

A job's host memory is what its process holds, estimated from the config (fp32 bytes):

    held   = base + state(kind) + activations(kind)
    mem_mb = min(cap, max(floor, roundup_500(1.5 · held)) · 2^(attempt − 1))

``base`` is the Python + torch (+ CUDA context) process: 1,000 MB on CPU, 4,000 MB with a GPU (the
CUDA runtime maps host memory too). ``state`` is what the kind keeps besides the process (P = the
LM's parameters, 4 bytes each): a trainer 16·P (weights, gradients, AdamW's two moments); the PMP
solver the trajectory's checkpoints (T/ckpt_every + 1)·4P, the model with gradients 8P and a
micro-batch of per-example gradients proxy_batch_size·4P; the MATES oracle the checkpoint with its
moments 12P, the one-step copy 4P and candidates_per_batch per-example gradients; LESS features
the frozen base 4P, per-example LoRA gradients and their Adam state, and one block of the
Rademacher projection (2^25 entries); inference 4P. ``activations`` is one micro-batch's forward
and backward: B·S·(L·H·40 + V·12) bytes (hidden states kept for the backward, and the logits with
their softmax and gradient), doubled for the solver's Hessian-vector products. On a GPU the
activations are in device memory and are not part of the host request.

Runtime: a floor per kind (start-up, data loading) plus three times the compute estimate
6·P·tokens / FLOPS (2·P·tokens for inference) at the assumed ``FLOPS`` of a CPU or a GPU, doubled
on a retry, capped.

These are requests, not measurements: the workflow's own benchmark files (max_rss, s) say what a
job used, and the tests check the requests cover them on the bundled configs.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

KINDS = ("train", "lora", "scorer", "solver", "oracle", "features", "infer")
MB = 1024 * 1024
FLOOR_MB = 2000
BASE_MB = {False: 1000, True: 4000}  # keyed by "has a GPU"
# Sustained FLOP/s assumed: two CPU cores; a data-centre GPU in bf16, kept below what
# benchmarks/RESULTS.md measures for older GPUs and small models that cannot fill one.
FLOPS = {False: 1e10, True: 1e14}
RUNTIME_FLOOR_MIN = {"train": 30, "lora": 30, "scorer": 20, "solver": 60, "oracle": 60, "features": 30, "infer": 10}
PROJECTION_BLOCK = 2**25  # entries of R materialised at once (winnow.methods.less.RademacherProjector)


@dataclass(frozen=True)
class Shape:
    """An LM's size: ``params`` (count), ``hidden``, ``layers``, ``vocab`` (tokens)."""

    params: int
    hidden: int
    layers: int
    vocab: int


def neox_params(hidden: int, layers: int, intermediate: int, vocab: int) -> int:
    """Parameters of an untied GPT-NeoX: embeddings in and out, and per layer QKV + output
    projection, the MLP and two layer norms (weights and biases)."""
    per_layer = 4 * hidden * hidden + 4 * hidden + 2 * hidden * intermediate + intermediate + hidden + 4 * hidden
    return 2 * vocab * hidden + layers * per_layer + 2 * hidden


def safetensors_params(folder: str | Path) -> int:
    """Parameters in a local safetensors folder (single file or sharded), from the headers only."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors") if p.name != "optimizer.safetensors")
    total = 0
    for name in files:
        with open(folder / name, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for key, entry in header.items():
            if key != "__metadata__":
                total += math.prod(entry["shape"])
    return total


def model_shape(config: dict) -> Shape:
    """The LM the workflow trains (``model`` block) or loads (``model.pretrained``)."""
    model = config["model"]
    if model.get("pretrained"):
        folder = Path(model["pretrained"])
        try:
            hf = json.loads((folder / "config.json").read_text())
            params = safetensors_params(folder)
        except (OSError, ValueError, KeyError, struct.error):
            # Not readable yet, or a truncated header (the contract check names the folder): size
            # as the config block.
            hf, params = {}, 0
        hidden = int(hf.get("hidden_size", model["hidden_size"]))
        layers = int(hf.get("num_hidden_layers", model["num_layers"]))
        vocab = int(hf.get("vocab_size", config["tokenizer"]["vocab_size"]))
        if params:
            return Shape(params, hidden, layers, vocab)
        inter = int(hf.get("intermediate_size", model.get("intermediate_size", 4 * hidden)))
        return Shape(neox_params(hidden, layers, inter, vocab), hidden, layers, vocab)
    hidden, layers = model["hidden_size"], model["num_layers"]
    vocab = config["tokenizer"]["vocab_size"]
    inter = model.get("intermediate_size") or 4 * hidden
    return Shape(neox_params(hidden, layers, inter, vocab), hidden, layers, vocab)


def scorer_shape(block: dict, vocab: int) -> Shape:
    """A data scorer (a small GPT-NeoX with a linear head) from a ``pds.scorer``-style block."""
    hidden, layers = block["hidden_size"], block["num_layers"]
    return Shape(neox_params(hidden, layers, block["intermediate_size"], vocab), hidden, layers, vocab)


def lora_params(shape: Shape, r: int) -> int:
    """LoRA parameters on the attention QKV and output projections of every layer: r·(in + out)."""
    return shape.layers * r * ((shape.hidden + 3 * shape.hidden) + 2 * shape.hidden)


def _activations(shape: Shape, batch: int, seq: int) -> int:
    return batch * seq * (shape.layers * shape.hidden * 40 + shape.vocab * 12)


def held_bytes(kind: str, shape: Shape, job: dict, gpu: bool = False) -> int:
    """What a job of ``kind`` holds in host memory besides the process, in bytes. ``job`` carries
    the sizes the kind needs: ``batch`` and ``seq`` always; ``snapshots`` and ``per_example``
    (solver), ``per_example`` (oracle), ``lora`` (lora, features). With a GPU the activations
    live on the device (Slurm gives the whole GPU); the state is still counted, since loading and
    checkpointing copy it through host memory."""
    P, b, s = shape.params, job["batch"], job["seq"]
    act = 0 if gpu else _activations(shape, b, s)
    if kind in ("train", "scorer"):
        return 16 * P + act
    if kind == "lora":
        return 4 * P + 16 * job["lora"] + act
    if kind == "solver":
        return (job["snapshots"] * 4 + 8 + 4 * job["per_example"]) * P + 2 * act
    if kind == "oracle":
        return (16 + 4 * job["per_example"]) * P + act
    if kind == "features":
        return 4 * P + 12 * b * job["lora"] + 4 * PROJECTION_BLOCK + act
    if kind == "infer":
        return 4 * P + (0 if gpu else b * s * (shape.layers * shape.hidden * 8 + shape.vocab * 8))
    raise ValueError(f"unknown job kind {kind!r} (one of {', '.join(KINDS)})")


def memory_mb(kind: str, shape: Shape, job: dict, attempt: int = 1, gpu: bool = True, cap_mb: int = 128000) -> int:
    """The job's memory request in MB (see the module docstring); never above ``cap_mb``."""
    held = BASE_MB[bool(gpu)] + held_bytes(kind, shape, job, gpu) / MB
    first = max(FLOOR_MB, 500 * math.ceil(1.5 * held / 500))
    return int(min(cap_mb, first * 2 ** (max(1, attempt) - 1)))


def runtime_min(kind: str, shape: Shape, tokens: int, attempt: int = 1, gpu: bool = True, cap_min: int = 2880) -> int:
    """The job's time limit in minutes: the kind's floor plus 3 × 6·P·tokens / FLOPS, doubled on
    every retry, never above ``cap_min``. ``tokens``: tokens through the model (forward and
    backward, or forward only for ``infer``)."""
    per_token = 2 if kind == "infer" else 6  # forward only, or forward + backward
    compute = 3 * per_token * shape.params * tokens / FLOPS[bool(gpu)] / 60
    first = RUNTIME_FLOOR_MIN[kind] + math.ceil(compute)
    return int(min(cap_min, first * 2 ** (max(1, attempt) - 1)))


def job_sizes(config: dict) -> dict[str, tuple[Shape, dict, int]]:
    """Per kind: the shape, the job sizes for :func:`held_bytes` and the tokens for
    :func:`runtime_min`, from a validated workflow config (the largest job of each kind)."""
    shape = model_shape(config)
    seq = config["tokenize"]["seq_len"]
    train = config["train"]
    micro = train.get("micro_batch_size", train["batch_size"])
    steps = max(
        train["steps"],
        (config.get("ablation") or {}).get("seed_steps", 0),
        (config.get("pds") or {}).get("init_steps", 0),
    )
    out = {"train": (shape, {"batch": micro, "seq": seq}, steps * train["batch_size"] * seq)}
    pds = config.get("pds") or {}
    solver = pds.get("solver") or {}
    proxy_n = (config["subsets"].get("pds_proxy") or {}).get("n", 1024)
    if solver:
        snapshots = solver["steps"] // solver["ckpt_every"] + 1
        contributions = solver["steps"] // max(1, solver.get("interval", 1)) + 1
        tokens = (3 * solver["steps"] * solver["batch_size"] + contributions * proxy_n) * seq
        tokens *= max(1, solver.get("outer_epochs", 1))
        job = {
            "batch": solver["batch_size"],
            "seq": seq,
            "snapshots": snapshots,
            "per_example": solver["proxy_batch_size"],
        }
        out["solver"] = (shape, job, tokens)
    scorers = [b for b in (pds.get("scorer"), (config.get("mates") or {}).get("scorer")) if b]
    if scorers:
        block = max(scorers, key=lambda b: b["hidden_size"] * b["num_layers"])
        sshape = scorer_shape(block, shape.vocab)
        n = max(proxy_n, 1)
        tokens = block["epochs"] * n * block["max_len"] + 2 * n * block["max_len"]
        out["scorer"] = (sshape, {"batch": block["batch_size"], "seq": block["max_len"]}, tokens)
    mates = config.get("mates") or {}
    oracle = mates.get("oracle") or {}
    n_probe = max(mates.get("n_probe", 0), (config.get("bakeoff") or {}).get("n_probe", 0))
    if oracle or "bakeoff" in config.get("methods", []):
        per = oracle.get("candidates_per_batch", 8)
        ref = (mates.get("reference") or {}).get("n", 48)
        job = {"batch": max(per, oracle.get("reference_batch_size", 64)), "seq": seq, "per_example": per}
        out["oracle"] = (shape, job, max(n_probe, 1) * (3 + ref) * seq)
    less = config.get("less") or {}
    if less:
        r = (less.get("lora") or {}).get("r", 8)
        lora = lora_params(shape, r)
        ltrain = less.get("train") or {}
        data = less.get("data") or {}
        pool = data.get("pool_size", 1000)
        tokens = (ltrain.get("epochs", 1) + 1) * pool * seq
        out["lora"] = (
            shape,
            {"batch": ltrain.get("micro_batch_size", ltrain.get("batch_size", 16)), "seq": seq, "lora": lora},
            tokens,
        )
        epochs = (less.get("warmup") or {}).get("epochs", 1)
        fb = (less.get("features") or {}).get("batch_size", 16)
        out["features"] = (shape, {"batch": fb, "seq": seq, "lora": lora}, 2 * epochs * pool * seq)
    ev = config.get("eval") or {}
    # An evaluation: perplexity docs, last-word and 4-way items, or a block of the pool scored.
    items = 4 * ev.get("n_choice", 200) + ev.get("n_lastword", 100) + 100 * ev.get("max_docs_per_domain", 10)
    out["infer"] = (shape, {"batch": ev.get("batch_size", 16), "seq": seq}, max(items, 20_000) * seq)
    for kind in KINDS:  # kinds whose method is off still get a sensible request
        out.setdefault(kind, out["train"])
    return out
