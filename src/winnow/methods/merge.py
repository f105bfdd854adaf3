"""Uniform parameter averages of models that share an architecture (merges, and merges of merges).

θ̄ = (1/K) Σ_k θ_k for every floating-point tensor of the state dict (summed in float64, cast back
to the tensor's dtype); integer and bool tensors (step counters, masks, position ids) are copied
from the first model, not averaged. The merged folder is an HF model folder (``config.json`` of
the first member + ``model.safetensors``) that ``winnow.models.build.load_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from winnow.io.atomic import atomic_path, read_json, write_text


def average_state_dicts(state_dicts: Iterable[Mapping[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], dict]:
    """Uniform average of the floating-point tensors; non-floating tensors copied from the first.

    ``state_dicts`` may be a generator (one model in memory at a time besides the float64 sums).
    Returns ``(merged state dict, info)`` with ``info = {"n": K, "averaged": [...], "copied":
    [...], "copied_differ": [...]}`` (``copied_differ``: integer tensors that were not equal in
    every member, so copying the first one was a choice). Raises ``ValueError`` when keys,
    shapes or dtypes differ.
    """
    sums: dict[str, torch.Tensor] = {}
    first: dict[str, torch.Tensor] = {}
    differ: set[str] = set()
    n = 0
    for sd in state_dicts:
        if n == 0:
            for key, t in sd.items():
                first[key] = t.detach().cpu().clone()
                if t.is_floating_point():
                    sums[key] = t.detach().to("cpu", torch.float64).clone()
        else:
            if set(sd) != set(first):
                missing, extra = sorted(set(first) - set(sd)), sorted(set(sd) - set(first))
                raise ValueError(f"model {n} has other tensors: missing {missing[:5]}, extra {extra[:5]}")
            for key, t in sd.items():
                ref = first[key]
                if t.shape != ref.shape or t.dtype != ref.dtype:
                    raise ValueError(
                        f"{key}: model {n} has {tuple(t.shape)} {t.dtype}, model 0 has {tuple(ref.shape)} {ref.dtype}"
                    )
                if key in sums:
                    sums[key] += t.detach().to("cpu", torch.float64)
                elif not torch.equal(t.cpu(), ref):
                    differ.add(key)
        n += 1
    if n == 0:
        raise ValueError("nothing to merge")
    merged = {key: (sums[key] / n).to(first[key].dtype) if key in sums else first[key] for key in first}
    info = {
        "n": n,
        "averaged": sorted(sums),
        "copied": sorted(set(first) - set(sums)),
        "copied_differ": sorted(differ),
    }
    return merged, info


def merge_folders(members: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> dict:
    """Average the ``model.safetensors`` of model folders into ``out_dir`` (+ the first config.json).

    The members' ``config.json`` must be equal (same architecture). Writes ``model.safetensors``
    and ``config.json`` atomically and returns a report (members, what was averaged/copied).
    """
    from safetensors.torch import save_file

    from winnow.io.artifacts import load_tensors

    members = [Path(m) for m in members]
    if len(members) < 2:
        raise ValueError(f"a merge needs at least 2 models, got {len(members)}")
    configs = [read_json(m / "config.json") for m in members]
    for m, cfg in zip(members[1:], configs[1:]):
        if cfg != configs[0]:
            diff = sorted(k for k in set(cfg) | set(configs[0]) if cfg.get(k) != configs[0].get(k))
            raise ValueError(f"{m}/config.json differs from {members[0]}/config.json in {diff}")
    merged, info = average_state_dicts(load_tensors(m / "model.safetensors") for m in members)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file({k: v.contiguous() for k, v in merged.items()}, str(tmp), metadata={"format": "pt"})
    write_text(out_dir / "config.json", json.dumps(configs[0], indent=2, sort_keys=True) + "\n")
    return {"members": [str(m) for m in members], "weights": [1.0 / len(members)] * len(members), **info}
