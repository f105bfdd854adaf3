"""The trainer: exact resume after a kill, name-keyed optimizer state, DDP equals one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from winnow.cli import main as cli
from winnow.params import schema_params

ROOT = Path(__file__).resolve().parents[2]
MODEL = {"hidden_size": 48, "num_layers": 2, "num_heads": 2, "intermediate_size": 96, "max_position_embeddings": 64}


def _train_cfg(**kw) -> dict:
    cfg = {
        "steps": 40,
        "batch_size": 8,
        "micro_batch_size": 4,
        "lr": 3e-3,
        "schedule": "cosine",
        "warmup_steps": 3,
        "ckpt_every": 5,
        "keep_checkpoints": 2,
        "precision": "fp32",
        "seed": 0,
    }
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Ingest + tokenizer + one shard + examples + an id list, through the CLI functions."""
    d = tmp_path_factory.mktemp("trainer")
    os.environ.setdefault("HF_HOME", str(d / "hf"))
    corpus = ROOT / "tests/data/tiny_corpus.jsonl.gz"
    p = {
        k: d / v
        for k, v in {
            "docs": "docs.parquet",
            "rejects": "rejects.parquet",
            "ingest": "ingest.json",
            "tok": "tok/tokenizer.json",
            "block": "tokens/block-0",
            "examples": "tokens/examples.parquet",
            "manifest": "tokens/manifest.json",
            "ids": "ids.parquet",
        }.items()
    }
    cli(
        [
            "data",
            "ingest",
            "--inputs",
            str(corpus),
            "--params",
            schema_params("data ingest", id_field="id"),
            "--docs",
            str(p["docs"]),
            "--rejects",
            str(p["rejects"]),
            "--manifest",
            str(p["ingest"]),
        ]
    )
    cli(
        [
            "data",
            "tokenizer",
            "--docs",
            str(p["docs"]),
            "--params",
            schema_params("data tokenizer", vocab_size=512, max_train_chars=300000),
            "--out",
            str(p["tok"]),
        ]
    )
    cli(
        [
            "data",
            "tokenize",
            "--docs",
            str(p["docs"]),
            "--tokenizer",
            str(p["tok"]),
            "--block",
            "0",
            "--params",
            schema_params("data tokenize", shards_per_block=1, num_shards=1, seq_len=64),
            "--out",
            str(p["block"]),
        ]
    )
    cli(
        [
            "data",
            "merge-examples",
            "--blocks",
            str(p["block"]),
            "--params",
            schema_params("data merge-examples", shards_per_block=1, num_shards=1, seq_len=64),
            "--tokenizer",
            str(p["tok"]),
            "--out",
            str(p["examples"]),
            "--manifest",
            str(p["manifest"]),
        ]
    )
    cli(
        [
            "data",
            "sample-subset",
            "--examples",
            str(p["examples"]),
            "--splits",
            "train",
            "--n",
            "400",
            "--seed",
            "0",
            "--out",
            str(p["ids"]),
        ]
    )
    return p


def _train_cmd(data: dict, out: Path, cfg: dict, launcher: list[str] | None = None) -> list[str]:
    return [
        *(launcher or [sys.executable]),
        "-m",
        "winnow",
        "train",
        "lm",
        "--examples",
        str(data["examples"]),
        "--manifest",
        str(data["manifest"]),
        "--tokenizer",
        str(data["tok"]),
        "--ids",
        str(data["ids"]),
        "--model-config",
        json.dumps(MODEL),
        "--train-config",
        json.dumps(cfg),
        "--ckpt-root",
        str(out / "checkpoints"),
        "--out",
        str(out / "model/model.safetensors"),
    ]


def _env(tmp: Path) -> dict:
    env = dict(os.environ, HF_HOME=str(tmp / "hf"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


def run_ddp(cmd: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a multi-process (torchrun) command in its own process group; past ``timeout`` seconds kill
    the whole group (torchrun's workers too) and fail with the output so far: a rendezvous that
    cannot connect hangs, and CI should learn where, not run out of time."""
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:8])} ... still running after {timeout} s; stderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_killed_run_resumes_to_the_same_weights(data, tmp_path):
    cfg = _train_cfg(steps=60)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_cmd(data, whole, cfg), check=True, env=_env(tmp_path), capture_output=True)

    proc = subprocess.Popen(
        _train_cmd(data, killed, cfg), env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not any((killed / "checkpoints").glob("step-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model/model.safetensors").exists(), "run finished before the kill: make it longer"
    assert any((killed / "checkpoints").glob("step-*")), "no checkpoint before the kill"

    rerun = subprocess.run(
        _train_cmd(data, killed, cfg), check=True, env=_env(tmp_path), capture_output=True, text=True
    )
    state = json.loads((killed / "model/trainer_state.json").read_text())
    assert state["summary"]["resumed_at"] > 0, rerun.stderr[-2000:]
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = _tensors(whole / "model" / name), _tensors(killed / "model" / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"
    # the training curve of the resumed run is the uninterrupted run's, one row per step
    whole_curve = json.loads((whole / "model/trainer_state.json").read_text())["history"]
    assert [r[0] for r in whole_curve] == list(range(1, 61))
    assert state["history"] == whole_curve


def test_checkpoints_from_another_config_are_not_resumed(data, tmp_path):
    out = tmp_path / "run"
    subprocess.run(_train_cmd(data, out, _train_cfg(steps=12)), check=True, env=_env(tmp_path), capture_output=True)
    stale = sorted((out / "checkpoints").glob("step-*"))
    assert stale
    proc = subprocess.run(
        _train_cmd(data, out, _train_cfg(steps=12, lr=1e-3)),
        check=True,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert "another configuration; starting over" in proc.stderr
    assert json.loads((out / "model/trainer_state.json").read_text())["summary"]["resumed_at"] == 0


def test_optimizer_state_is_keyed_by_parameter_name(data, tmp_path):
    out = tmp_path / "run"
    subprocess.run(_train_cmd(data, out, _train_cfg(steps=6)), check=True, env=_env(tmp_path), capture_output=True)
    weights = _tensors(out / "model/model.safetensors")
    opt = _tensors(out / "model/optimizer.safetensors")
    params = [
        k
        for k in weights
        if not k.endswith(("masked_bias", ".bias_buffer")) and "rotary" not in k and "inv_freq" not in k
    ]
    for name in params:
        assert opt[f"{name}.exp_avg"].shape == weights[name].shape
        assert opt[f"{name}.exp_avg_sq"].shape == weights[name].shape
        assert float(opt[f"{name}.step"]) == 6.0
        assert torch.all(opt[f"{name}.exp_avg_sq"] >= 0)
    # v is a running mean of squared gradients: after 6 steps it cannot be all zero anywhere big.
    assert float(opt["gpt_neox.embed_in.weight.exp_avg_sq"].sum()) > 0


def test_two_process_ddp_matches_one_process(data, tmp_path):
    cfg = _train_cfg(steps=6, ckpt_every=100)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_train_cmd(data, one, cfg), check=True, env=_env(tmp_path), capture_output=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"]
    # torchrun runs `python -m winnow` when given `-m`; drop our own interpreter from the command.
    cmd = _train_cmd(data, two, cfg, launcher=launcher)
    proc = run_ddp(cmd, _env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((two / "model/trainer_state.json").read_text())
    assert state["summary"]["world_size"] == 2
    a, b = _tensors(one / "model/model.safetensors"), _tensors(two / "model/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_resume_from_loads_the_exact_optimizer_state(data, tmp_path, monkeypatch):
    """A MATES stage (or an ablation component) continues from a previous run's checkpoint: right
    after loading, every AdamW moment and step count equals the saved ones, bit for bit."""
    import numpy as np

    from winnow.data.tokenizer import load
    from winnow.io.tables import IDS, read_table
    from winnow.models.build import build_model
    from winnow.models.checkpoint import optimizer_state_by_name
    from winnow.train import trainer
    from winnow.train.batches import open_store

    prev = tmp_path / "prev"
    subprocess.run(_train_cmd(data, prev, _train_cfg(steps=5)), check=True, env=_env(tmp_path), capture_output=True)
    saved = _tensors(prev / "model/optimizer.safetensors")

    captured = {}
    real_load = trainer.load_checkpoint

    def spy(ckpt_dir, model, optimizer):
        state = real_load(ckpt_dir, model, optimizer)
        # clone: on CPU the by-name view aliases the optimizer's tensors, which the next step updates
        captured.update({k: v.clone() for k, v in optimizer_state_by_name(model, optimizer).items()})
        return state

    monkeypatch.setattr(trainer, "load_checkpoint", spy)
    torch.set_num_threads(1)
    tok = load(data["tok"].parent)
    store, _ = open_store(data["examples"], data["manifest"])
    ids = read_table(data["ids"], IDS)["example_id"].to_numpy()
    model = build_model(MODEL, len(tok), tok.eos_token_id, tok.pad_token_id, seed=123)
    cfg = trainer.TrainConfig(seq_len=64, **_train_cfg(steps=1, schedule="constant", warmup_steps=0))
    trainer.train(
        model,
        store,
        np.asarray(ids),
        cfg,
        tmp_path / "next/model",
        tmp_path / "next/ckpt",
        tok.pad_token_id,
        init="resume",
        resume_from=prev / "model",
    )
    assert captured.keys() == saved.keys() and captured
    for k in saved:
        assert torch.equal(captured[k], saved[k]), k
    after = _tensors(tmp_path / "next/model/optimizer.safetensors")
    assert float(after["gpt_neox.embed_in.weight.step"]) == 6.0  # the step count carries on


def test_lr_null_continues_at_the_final_lr_of_the_resume_from_checkpoint(data, tmp_path):
    """Modular data ablations continue the seed at the seed's final learning rate: a train config
    with ``lr: null`` and ``--resume-from`` trains at the lr of that checkpoint's last optimizer
    step (what ``ablation.lr: null`` gives every component and mixture) and records it."""
    import math

    seed = tmp_path / "seed"
    seed_cfg = _train_cfg(steps=6, warmup_steps=2, ckpt_every=100)  # cosine 3e-3 → 3e-4 at step 6
    subprocess.run(_train_cmd(data, seed, seed_cfg), check=True, env=_env(tmp_path), capture_output=True)
    # independently: the cosine schedule at the seed's last step (step 5 of 6, 2 warm-up steps)
    progress = (5 - 2) / (6 - 2)
    want = 3e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    seed_state = json.loads((seed / "model/trainer_state.json").read_text())
    assert seed_state["history"][-1][2] == pytest.approx(want, rel=1e-12)

    comp = tmp_path / "component"
    comp_cfg = _train_cfg(steps=3, lr=None, schedule="constant", warmup_steps=0, ckpt_every=100)
    cmd = [*_train_cmd(data, comp, comp_cfg), "--resume-from", str(seed / "model")]
    proc = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((comp / "model/trainer_state.json").read_text())
    assert state["config"]["lr"] == pytest.approx(want, rel=1e-12)
    assert state["config"]["lr"] == seed_state["history"][-1][2]
    assert [r[2] for r in state["history"]] == [state["config"]["lr"]] * 3  # every step at that lr
    side = json.loads((comp / "model/model.safetensors.prov.json").read_text())
    assert side["lr"] == state["config"]["lr"] and "resume-from" in side["lr_from"]

    # without a checkpoint to continue there is no final lr: an error that says so
    proc = subprocess.run(
        _train_cmd(data, tmp_path / "x", comp_cfg), env=_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode != 0 and "--resume-from" in proc.stderr


# ---------------------------------------------------------------- epoch-aligned batches (LESS)
def _epoch_run(tmp_path, name: str, n: int = 10, model_seed: int = 0, **kw):
    """In process: a float64 2-layer NeoX on n random examples, epoch-aligned batches of 4."""
    from _neox import random_store, tiny_neox

    from winnow.train.trainer import TrainConfig, train

    torch.set_num_threads(1)
    store, ids = random_store(tmp_path, n, 10, 50, seed=0)
    model = tiny_neox(50, 10, 0, seed=model_seed)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = {
        "steps": 3,
        "batch_size": 4,
        "micro_batch_size": 4,
        "seq_len": 10,
        "lr": 1e-2,
        "schedule": "cosine",
        "precision": "fp32",
        "log_every_s": 1e9,
        "epoch_batches": True,
        **kw,
    }
    summary = train(model, store, ids, TrainConfig(**cfg), tmp_path / name / "model", tmp_path / name / "ckpt", 0)
    return store, ids, init, model, summary


def test_epoch_batches_partial_batch_is_a_token_mean_and_micro_batching_agrees(tmp_path):
    """The partial last batch of an epoch is one optimizer step whose loss is the token mean over
    its own examples, however it is cut into micro-batches."""
    from _neox import tiny_neox

    # 2 examples, batches of 4: every step is one partial batch (the epoch's permutation)
    store, ids, init, _, _ = _epoch_run(tmp_path, "two", n=2, steps=1)
    first = json.loads((tmp_path / "two/model/trainer_state.json").read_text())["history"][0]
    ref = tiny_neox(50, 10, 0, seed=0)
    ref.load_state_dict(init)
    total, count = 0.0, 0
    with torch.no_grad():
        for eid in ids:  # one unpadded example at a time: Σ CE over its target tokens
            tokens, ls, le = store.get(int(eid))
            x = torch.from_numpy(tokens)[None]
            logp = torch.log_softmax(ref(input_ids=x).logits[0, :-1].double(), -1)
            pos = torch.arange(max(ls, 1), le)
            total += float(-logp[pos - 1, x[0, pos]].sum())
            count += len(pos)
    assert first[1] == pytest.approx(total / count, rel=1e-6)  # the trainer's CE is in fp32
    # 10 examples, batches 4, 4, 2 for 2 epochs: micro-batches of 1, 2 or 4 give the same weights
    weights = []
    for micro in (4, 2, 1):
        _, _, _, model, _ = _epoch_run(tmp_path, f"m{micro}", steps=6, micro_batch_size=micro)
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for other in weights[1:]:
        for k in weights[0]:
            torch.testing.assert_close(other[k], weights[0][k], rtol=1e-5, atol=1e-7, msg=k)


def test_epoch_batches_resume_from_an_epoch_checkpoint_exactly(tmp_path):
    import shutil

    _, _, _, whole, summary = _epoch_run(tmp_path, "whole", steps=9, ckpt_every=3, keep_checkpoints=3)
    assert summary["resumed_at"] == 0
    state = json.loads((tmp_path / "whole/ckpt/step-00000006/trainer_state.json").read_text())
    assert state["samples_seen"] == 20  # two epochs of 10: the data position of the checkpoint
    shutil.copytree(tmp_path / "whole/ckpt", tmp_path / "again/ckpt")
    shutil.rmtree(tmp_path / "again/ckpt/step-00000006")  # resume from the end of epoch 1
    _, _, _, again, summary = _epoch_run(tmp_path, "again", steps=9, ckpt_every=3, keep_checkpoints=3, model_seed=5)
    assert summary["resumed_at"] == 3
    for (k, a), (_, b) in zip(whole.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    a, b = (json.loads((tmp_path / r / "model/trainer_state.json").read_text()) for r in ("whole", "again"))
    assert a["history"] == b["history"]


def test_default_batches_keep_their_fingerprint():
    """epoch_batches is off by default, and then the resume fingerprint (so every checkpoint of the
    spine, MATES, PDS and the ablation) is what it was before the option existed."""
    import numpy as np

    from winnow.train.trainer import TrainConfig

    cfg = TrainConfig(steps=9, batch_size=4, micro_batch_size=2, seq_len=10)
    assert cfg.epoch_batches is False
    assert cfg.fingerprint(np.arange(10), "scratch") == "2887cd6f25934c9a"
    on = TrainConfig(steps=9, batch_size=4, micro_batch_size=2, seq_len=10, epoch_batches=True)
    assert on.fingerprint(np.arange(10), "scratch") != "2887cd6f25934c9a"


def test_two_process_ddp_with_a_partial_epoch_batch_matches_one_process(data, tmp_path):
    """12 ids in batches of 8 (micro-batches of 4): each epoch's last batch is one micro-batch, so
    one rank has none; it joins the gradient all-reduce with a zero-weight backward."""
    import numpy as np

    from winnow.io.tables import IDS, read_table, write_table

    ids = read_table(data["ids"], IDS).slice(0, 12)
    few = {**data, "ids": tmp_path / "ids12.parquet"}
    write_table(few["ids"], ids.set_column(1, "rank", [np.arange(12, dtype=np.int64)]), IDS)
    cfg = _train_cfg(steps=4, ckpt_every=100, epoch_batches=True)
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_train_cmd(few, one, cfg), check=True, env=_env(tmp_path), capture_output=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29534"]
    proc = run_ddp(_train_cmd(few, two, cfg, launcher=launcher), _env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a_state, b_state = (json.loads((d / "model/trainer_state.json").read_text()) for d in (one, two))
    assert b_state["summary"]["world_size"] == 2
    np.testing.assert_allclose([r[1] for r in b_state["history"]], [r[1] for r in a_state["history"]], rtol=1e-5)
    a, b = _tensors(one / "model/model.safetensors"), _tensors(two / "model/model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
