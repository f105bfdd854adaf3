"""Checkpoints as plain files: model weights, AdamW moments keyed by parameter name, trainer state.

    step-N/config.json              HF model config (the folder loads with from_pretrained)
    step-N/model.safetensors        weights
    step-N/optimizer.safetensors    "<param name>.exp_avg", "<param name>.exp_avg_sq", "<param name>.step"
                                    (+ metadata: hyper-parameters of each param group, JSON)
    step-N/trainer_state.json       step, data position, schedule, RNG states

Name-keyed moments let other code (MATES probing, LESS Adam features) read the optimizer state
without knowing parameter order, and survive a change of world size. Nothing here unpickles.

Every load error names its file (:mod:`winnow.io.artifacts`), and :func:`read_checkpoint` reads
and checks all of a checkpoint's files before anything is applied, so a corrupt checkpoint leaves
the model and optimizer as they were (the trainer then tries the one before it).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from winnow.io.artifacts import ArtifactError, load_tensors, naming, read_json_file
from winnow.io.atomic import atomic_folder, write_json

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
    with atomic_folder(out_dir) as tmp:
        write_checkpoint_files(tmp, model, optimizer, state)
    return Path(out_dir)


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


def _check_weights(path: Path, tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """The tensors of ``path`` are exactly the model's state (names and shapes), or ArtifactError."""
    want = {k: tuple(v.shape) for k, v in _unwrap(model).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = [f"missing {k}" for k in sorted(want.keys() - got.keys())]
    problems += [f"unexpected {k}" for k in sorted(got.keys() - want.keys())]
    problems += [
        f"{k}: shape {got[k]}, the model's {want[k]}" for k in sorted(want.keys() & got.keys()) if got[k] != want[k]
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; … {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ArtifactError(path, f"{path} does not fit the model: {shown}")


def _check_moments(path: Path, tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every parameter with moments in ``path`` has all of them, shaped like the parameter."""
    for name, p in _unwrap(model).named_parameters():
        if f"{name}.exp_avg" not in tensors:
            continue
        for key in MOMENT_KEYS:
            t = tensors.get(f"{name}.{key}")
            if t is None:
                raise ArtifactError(path, f"{path}: {name}.{key} is missing")
            if key != "step" and tuple(t.shape) != tuple(p.shape):
                raise ArtifactError(
                    path, f"{path}: {name}.{key} has shape {tuple(t.shape)}, the parameter {tuple(p.shape)}"
                )


def load_weights(model: torch.nn.Module, ckpt_dir: str | os.PathLike) -> None:
    path = Path(ckpt_dir) / "model.safetensors"
    tensors = load_tensors(path)
    _check_weights(path, tensors, model)
    with naming(path, "weights"):
        _unwrap(model).load_state_dict(tensors, strict=True)


def read_checkpoint(
    ckpt_dir: str | os.PathLike, model, with_optimizer: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict]:
    """``(weights, optimizer moments or None, trainer state)`` of a checkpoint, read and checked
    against ``model`` without changing it; any problem is an ArtifactError naming the file."""
    ckpt_dir = Path(ckpt_dir)
    state_path = ckpt_dir / "trainer_state.json"
    state = read_json_file(state_path)
    if not isinstance(state, dict):
        raise ArtifactError(state_path, f"{state_path}: not a JSON object")
    path = ckpt_dir / "model.safetensors"
    weights = load_tensors(path)
    _check_weights(path, weights, model)
    moments = None
    opt_path = ckpt_dir / "optimizer.safetensors"
    if with_optimizer and opt_path.exists():
        device = next(_unwrap(model).parameters()).device
        moments = load_tensors(opt_path, device=str(device) if device.type != "cpu" else "cpu")
        _check_moments(opt_path, moments, model)
    return weights, moments, state


def apply_checkpoint(model, optimizer, weights: dict, moments: dict | None) -> None:
    """Load what :func:`read_checkpoint` returned into ``model`` (and ``optimizer``)."""
    _unwrap(model).load_state_dict(weights, strict=True)
    if optimizer is not None and moments is not None:
        load_optimizer_state(model, optimizer, moments)


def load_checkpoint(ckpt_dir: str | os.PathLike, model, optimizer) -> dict:
    """Weights (and optimizer moments) of a checkpoint into ``model`` (and ``optimizer``); returns
    its trainer state. Nothing is changed unless every file reads and fits."""
    weights, moments, state = read_checkpoint(ckpt_dir, model, optimizer is not None)
    apply_checkpoint(model, optimizer, weights, moments)
    return state


def checkpoints_newest_first(ckpt_root: str | os.PathLike) -> list[Path]:
    """The ``step-N`` folders with a trainer_state.json, largest N first (temp folders ignored)."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    steps = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step-") and (d / "trainer_state.json").exists():
            try:
                steps.append((int(d.name[5:]), d))
            except ValueError:
                continue
    return [d for _, d in sorted(steps, reverse=True)]


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The complete ``step-N`` folder with the largest N (temp folders are ignored)."""
    found = checkpoints_newest_first(ckpt_root)
    return found[0] if found else None


def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model
