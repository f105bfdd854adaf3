"""``winnow train lm``'s multi-GPU launcher: when it starts torchrun, with what, and that it runs."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
from test_trainer import _env, _train_cfg, _train_cmd, data, run_ddp  # noqa: F401 - `data` is a fixture

from winnow.cli import train


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="winnow")
    parser.add_argument("--log-level", default="INFO")
    groups = parser.add_subparsers(dest="group", required=True)
    train.register(groups.add_parser("train").add_subparsers(dest="command", required=True))
    return parser


ARGV = [
    "train",
    "lm",
    "--examples",
    "e.parquet",
    "--manifest",
    "m.json",
    "--tokenizer",
    "tok/tokenizer.json",
    "--ids",
    "ids.parquet",
    "--model-config",
    '{"hidden_size": 32, "num_layers": 2}',
    "--train-config",
    '{"steps": 3, "lr": 0.001}',
    "--ckpt-root",
    "ck",
    "--out",
    "model/model.safetensors",
    "--threads",
    "2",
]


@pytest.mark.parametrize(
    ("cvd", "expected"),
    [("0", 1), ("0,1", 2), ("2,3,5,7", 4), ("GPU-8c1e,GPU-77aa", 2), ("", 0), ("-1", 0), ("NoDevFiles", 0)],
)
def test_visible_gpus_counts_cuda_visible_devices(cvd, expected):
    assert train.visible_gpus({"CUDA_VISIBLE_DEVICES": cvd}) == expected


def test_visible_gpus_without_the_variable_asks_torch(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert train.visible_gpus({}) == 3


@pytest.mark.parametrize(
    ("gpus", "env", "expected"),
    [
        (None, {"CUDA_VISIBLE_DEVICES": "0"}, 0),  # one GPU: this process
        (None, {"CUDA_VISIBLE_DEVICES": ""}, 0),  # none: this process (CPU)
        (None, {"CUDA_VISIBLE_DEVICES": "0,1"}, 2),  # Slurm gave two: one process each
        (None, {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "WORLD_SIZE": "4"}, 0),  # already a torchrun worker
        (None, {"CUDA_VISIBLE_DEVICES": "0,1", "TORCHELASTIC_RUN_ID": "x"}, 0),
        (1, {"CUDA_VISIBLE_DEVICES": "0,1"}, 0),  # --gpus 1 wins over what is visible
        (0, {"CUDA_VISIBLE_DEVICES": "0,1"}, 0),
        (4, {}, 4),
        (3, {"WORLD_SIZE": "3"}, 0),
    ],
)
def test_processes_to_launch(gpus, env, expected):
    assert train.processes_to_launch(gpus, env) == expected


def test_negative_gpus_is_an_error():
    with pytest.raises(ValueError, match="--gpus"):
        train.processes_to_launch(-1, {})


def test_torchrun_command_is_standalone_one_process_per_gpu():
    cmd = train.torchrun_command(2, ["train", "lm", "--out", "x"], python="/venv/bin/python")
    assert cmd == [
        "/venv/bin/python",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--local-addr",
        "127.0.0.1",
        "-m",
        "winnow",
        "train",
        "lm",
        "--out",
        "x",
    ]


@pytest.mark.parametrize("extra", [[], ["--resume-from", "prev/model", "--gpus", "2"]])
def test_relaunch_argv_parses_back_to_the_same_arguments(extra):
    parser = _parser()
    args = parser.parse_args(["--log-level", "DEBUG", *ARGV, *extra])
    again = parser.parse_args(train.lm_argv(args))
    assert vars(again) == vars(args)


def test_relaunch_execs_torchrun_with_the_same_arguments(monkeypatch):
    args = _parser().parse_args(ARGV)
    calls = []
    monkeypatch.setattr(train.os, "execv", lambda path, argv: calls.append((path, argv)))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    train.relaunch_under_torchrun(args)
    assert calls == []  # one GPU: trains in this process
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    train.relaunch_under_torchrun(args)
    ((path, argv),) = calls
    assert path == sys.executable
    assert argv[:10] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "--local-addr",
        "127.0.0.1",
        "-m",
        "winnow",
    ]
    assert _parser().parse_args(argv[10:]).__dict__ == {**vars(args), "log_level": "INFO"}


def test_two_visible_devices_train_with_two_ddp_processes(data, tmp_path):  # noqa: F811
    """End to end on CPU: CUDA_VISIBLE_DEVICES=0,1 (what Slurm sets for --gpus=2) and no torchrun in
    the command: the CLI starts two gloo workers itself; rank 0 writes the model and the sidecars."""
    out = tmp_path / "two"
    env = dict(_env(tmp_path), CUDA_VISIBLE_DEVICES="0,1")
    env.pop("WORLD_SIZE", None)
    proc = run_ddp(_train_cmd(data, out, _train_cfg(steps=4, ckpt_every=100)), env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting 2 DDP processes under torchrun" in proc.stderr
    state = json.loads((out / "model/trainer_state.json").read_text())
    assert state["summary"]["world_size"] == 2
    prov = json.loads((out / "model/model.safetensors.prov.json").read_text())
    assert "gpus" not in prov["params"]
