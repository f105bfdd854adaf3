"""Checkpoints as plain files: model weights, AdamW moments keyed by parameter name, trainer state.

    step-N/config.json              HF model config (the folder loads with from_pretrained)
    step-N/model.safetensors        weights
    step-N/optimizer.safetensors    "<param name>.exp_avg", "<param name>.exp_avg_sq", "<param name>.step"
                                    (+ metadata: hyper-parameters of each param group, JSON)
    step-N/trainer_state.json       step, data position, schedule, RNG states

Name-keyed moments let other code (MATES probing, LESS Adam features) read the optimizer state
without knowing parameter order, and survive a change of world size. Nothing here unpickles.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from winnow.io.atomic import read_json, write_json

MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "step")


def optimizer_state_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    by_param = {p: n for n, p in _unwrap(model).named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for p, state in optimizer.state.items():
        name = by_param[p]
        for key in MOMENT_KEYS:
            if key in state:
                value = state[key]
                value = value if torch.is_tensor(value) else torch.tensor(float(value))
                out[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
    return out


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]
) -> None:
    """Inverse of :func:`optimizer_state_by_name` (moments are moved to each parameter's device)."""
    for name, p in _unwrap(model).named_parameters():
        if f"{name}.exp_avg" not in tensors:
            continue
        state = optimizer.state[p]
        for key in MOMENT_KEYS:
            t = tensors[f"{name}.{key}"]
            # AdamW keeps ``step`` as a CPU float32 scalar unless capturable/fused.
            state[key] = t.clone() if key == "step" else t.to(p.device, dtype=p.dtype).clone()


def save_checkpoint(out_dir: str | os.PathLike, model, optimizer, state: dict) -> Path:
    """Write a complete checkpoint folder atomically (temp folder, then rename)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}.", dir=out_dir.parent))
    try:
        write_checkpoint_files(tmp, model, optimizer, state)
        tmp.chmod(0o755)  # mkdtemp makes 0700; checkpoints are shared on a cluster
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def write_checkpoint_files(out_dir: str | os.PathLike, model, optimizer, state: dict) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = _unwrap(model)
    m.config.save_pretrained(str(out_dir))
    weights = {k: v.detach().to("cpu").contiguous() for k, v in m.state_dict().items()}
    _save_tensors(weights, out_dir / "model.safetensors", {"format": "pt"})
    if optimizer is not None:
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        _save_tensors(
            optimizer_state_by_name(model, optimizer),
            out_dir / "optimizer.safetensors",
            {"param_groups": json.dumps(groups, default=str)},
        )
    write_json(out_dir / "trainer_state.json", state)


def _save_tensors(tensors: dict, path: Path, metadata: dict) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(model: torch.nn.Module, ckpt_dir: str | os.PathLike) -> None:
    tensors = load_file(str(Path(ckpt_dir) / "model.safetensors"))
    _unwrap(model).load_state_dict(tensors, strict=True)


def load_checkpoint(ckpt_dir: str | os.PathLike, model, optimizer) -> dict:
    ckpt_dir = Path(ckpt_dir)
    load_weights(model, ckpt_dir)
    if optimizer is not None and (ckpt_dir / "optimizer.safetensors").exists():
        device = next(_unwrap(model).parameters()).device
        load_optimizer_state(
            model,
            optimizer,
            load_file(str(ckpt_dir / "optimizer.safetensors"), device=str(device) if device.type != "cpu" else "cpu"),
        )
    return read_json(ckpt_dir / "trainer_state.json")


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The complete ``step-N`` folder with the largest N (temp folders are ignored)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return None
    steps = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step-") and (d / "trainer_state.json").exists():
            try:
                steps.append((int(d.name[5:]), d))
            except ValueError:
                continue
    return max(steps)[1] if steps else None


def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model
