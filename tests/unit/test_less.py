"""winnow.methods.less: LoRA per-example gradients, Adam features, projection, matching, store, predictor."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _neox import one_thread, padded_batch, random_store, tiny_neox  # noqa: F401 (one_thread: autouse fixture)

from winnow.methods.less import (
    AGGREGATES,
    RademacherProjector,
    _fmix32,
    _ridge_coefs,
    _unpack_gather,
    _unpack_where,
    adam_features,
    add_lora,
    checkpoint_weights,
    featurize,
    fit_ridge,
    flat_moments,
    less_scores,
    load_lora_checkpoint,
    lora_param_names,
    lora_size,
    mean_hidden_states,
    per_example_lora_grads,
    per_example_lora_grads_hooks,
    predict_ridge,
    read_features,
    read_sidecar,
    regression_report,
    write_features,
)
from winnow.train.batches import ExampleStore, collate

VOCAB, SEQ, PAD = 50, 10, 0
LORA = {"r": 4, "alpha": 8, "dropout": 0.3, "target_modules": ["query_key_value", "dense"], "seed": 1}


def base_model(dtype=torch.float64, seed: int = 0, hidden: int = 16) -> torch.nn.Module:
    return tiny_neox(VOCAB, SEQ, PAD, seed=seed, hidden=hidden, dtype=dtype).eval()


def perturb_b(model, seed: int = 0, scale: float = 0.3) -> None:
    """LoRA B starts at zero (then ∇A = 0); give it values so every LoRA gradient is nonzero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def lora_model(dtype=torch.float64, seed: int = 0, hidden: int = 16):
    model = add_lora(base_model(dtype, seed, hidden), **LORA)
    perturb_b(model, seed)
    return model


def tiny_batch(seed: int, spec: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
    return padded_batch(seed, spec, VOCAB, SEQ, PAD)


SPEC = [(10, 0, 10), (7, 0, 7), (9, 4, 9), (5, 0, 5), (8, 2, 8), (6, 6, 6)]  # last: no targets


def loop_lora_grads(model, batch, names) -> torch.Tensor:
    """LESS's way: one unpadded example at a time, loss.backward(), gather the LoRA .grad's."""
    params = dict(model.named_parameters())
    model.eval()
    rows = []
    for r in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][r].sum())
        ids = batch["input_ids"][r : r + 1, :n]
        pos = torch.nonzero(batch["loss_mask"][r, :n]).flatten()
        model.zero_grad(set_to_none=True)
        if len(pos) == 0:
            rows.append(torch.zeros(sum(params[k].numel() for k in names), dtype=torch.float64))
            continue
        logits = model(input_ids=ids).logits[0]
        F.cross_entropy(logits[pos - 1], ids[0, pos]).backward()
        rows.append(torch.cat([params[k].grad.reshape(-1) for k in names]).clone())
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


# ----------------------------------------------------------------------------------------------
# LoRA and gradients


def test_add_lora_names_and_seeded_init():
    a, b = lora_model(seed=0), add_lora(base_model(seed=0), **LORA)
    names = lora_param_names(a)
    assert names == sorted(names) and len(names) == 8  # 2 layers × (qkv, attention dense) × (A, B)
    assert all(n.startswith("base_model.model.gpt_neox.layers.") for n in names)
    assert not any("mlp" in n for n in names)  # "dense" matches the attention output only
    assert lora_size(a, names) == 2 * (4 * 16 + 48 * 4 + 4 * 16 + 16 * 4)
    pa_, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for n in names:
        if ".lora_A." in n:
            assert torch.equal(pa_[n], pb[n])  # same seed, same A
    assert all(not p.requires_grad for n, p in a.named_parameters() if n not in names)
    state = torch.get_rng_state()
    add_lora(base_model(seed=0), **LORA)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone


def test_per_example_lora_grads_equal_backward_loop():
    model = lora_model()
    model.train()  # dropout 0.3 on the LoRA input: the function must switch it off
    names = lora_param_names(model)
    batch = tiny_batch(0, SPEC)
    attn = model.config._attn_implementation
    got = per_example_lora_grads(model, batch, names)
    assert model.training and model.config._attn_implementation == attn  # restored
    want = loop_lora_grads(model, batch, names)
    assert got.shape == (len(SPEC), lora_size(model, names)) and got.dtype == torch.float32
    live = want.norm(dim=1) > 0
    assert live.sum() == len(SPEC) - 1 and float(got[~live].abs().max()) == 0.0
    assert float(cosine(got[live].double(), want[live]).min()) >= 0.9999
    torch.testing.assert_close(got[live].norm(dim=1).double(), want[live].norm(dim=1), rtol=1e-5, atol=0)
    # both factors carry gradient once B ≠ 0
    params = dict(model.named_parameters())
    off = 0
    for n in names:
        k = params[n].numel()
        assert float(got[0, off : off + k].abs().max()) > 0, n
        off += k
    chunked = per_example_lora_grads(model, batch, names, chunk_size=2)
    torch.testing.assert_close(chunked, got, rtol=1e-6, atol=1e-7)


def test_hook_grads_equal_backward_loop_and_vmap():
    # One batched backward with hooks (the fast path) against LESS's one-example loop: padded rows
    # of different lengths, a masked prompt, and an example without targets in one batch.
    model = lora_model()
    model.train()
    names = lora_param_names(model)
    batch = tiny_batch(0, SPEC)
    got = per_example_lora_grads_hooks(model, batch, names)
    assert model.training  # restored
    want = loop_lora_grads(model, batch, names)
    live = want.norm(dim=1) > 0
    assert float(got[~live].abs().max()) == 0.0
    assert float(cosine(got[live].double(), want[live]).min()) >= 0.9999
    torch.testing.assert_close(got[live].norm(dim=1).double(), want[live].norm(dim=1), rtol=1e-5, atol=0)
    torch.testing.assert_close(got, per_example_lora_grads(model, batch, names), rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())  # no .grad side effects


def test_adam_features_one_simulated_step():
    g = torch.Generator().manual_seed(0)
    grads = torch.randn(3, 50, generator=g, dtype=torch.float64)
    m = torch.randn(50, generator=g, dtype=torch.float64) * 0.1
    v = torch.rand(50, generator=g, dtype=torch.float64) * 1e-2
    got = adam_features(grads, m, v)
    # the formula in numpy
    gn, mn, vn = grads.numpy(), m.numpy(), v.numpy()
    want = (0.9 * mn + 0.1 * gn) / np.sqrt(0.999 * vn + 0.001 * gn**2 + 1e-8)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # the moments after one real torch Adam step from (m, v) are the m', v' used (ε inside the sqrt)
    for r in range(3):
        p = torch.nn.Parameter(torch.zeros(50, dtype=torch.float64))
        opt = torch.optim.Adam([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
        opt.state[p] = {"step": torch.tensor(5.0), "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        p.grad = grads[r].clone()
        opt.step()
        st = opt.state[p]
        torch.testing.assert_close(got[r], st["exp_avg"] / torch.sqrt(st["exp_avg_sq"] + 1e-8), rtol=1e-12, atol=0)
    # other betas and eps are honoured
    got2 = adam_features(grads, m, v, beta1=0.8, beta2=0.95, eps=1e-6)
    want2 = (0.8 * mn + 0.2 * gn) / np.sqrt(0.95 * vn + 0.05 * gn**2 + 1e-6)
    np.testing.assert_allclose(got2.numpy(), want2, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# projection


def _fmix32_reference(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_hash_is_murmur3_fmix32_in_exact_int64():
    xs = [0, 1, 2, 31, 0x7FFFFFFF, 0x80000000, 0xDEADBEEF, 0xFFFFFFFF]
    want = [_fmix32_reference(x) for x in xs]
    assert _fmix32(torch.tensor(xs, dtype=torch.int64)).tolist() == want
    assert [_fmix32(x) for x in xs] == want


def test_unpack_variants_agree_on_every_byte():
    """The CPU (gather) and GPU (where) unpackers give the same signs, so R is device-independent."""
    packed = torch.arange(256, dtype=torch.int64).to(torch.uint8).reshape(16, 16)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        a, b = _unpack_gather(packed, dtype), _unpack_where(packed, dtype)
        assert a.dtype == b.dtype == dtype and torch.equal(a, b)
    signs = _unpack_where(packed, torch.float32).reshape(256, 8)
    assert torch.equal(signs[5], torch.tensor([-1.0, 1, -1, 1, 1, 1, 1, 1]))  # 5 = bits 0 and 2


def test_projector_matrix_is_pinned_balanced_and_block_independent():
    p = RademacherProjector(300, 100, seed=0, block_rows=7)
    full = p.matrix()
    assert full.shape == (300, 100) and set(full.unique().tolist()) == {-1.0, 1.0}

    # pinned (bit t of a word = column 32·w + t is −1): changing the generator would silently
    # invalidate every stored feature file
    def word(row: int, w: int) -> int:
        return sum(int(b) << i for i, b in enumerate((full[row, 32 * w : 32 * w + 32] < 0).tolist()))

    assert (word(0, 0), word(0, 1), word(299, 2)) == (0x4122689F, 0x691E5129, 0xF49C620B)
    torch.testing.assert_close(p.matrix(13, 40), full[13:40], rtol=0, atol=0)
    q = RademacherProjector(300, 100, seed=0, block_rows=300)
    assert torch.equal(q.matrix(), full)
    # a GPU materialises 8x larger blocks by default (its launches, not its math, bound small ones);
    # a given block_rows holds everywhere
    r = RademacherProjector(10**6, 8192)
    assert r.rows_per_block("cuda") == 8 * r.rows_per_block("cpu") == 8 * 4096
    assert p.rows_per_block("cuda") == p.rows_per_block("cpu") == 7
    assert not torch.equal(RademacherProjector(300, 100, seed=1).matrix(), full)
    big = RademacherProjector(2048, 512, seed=3).matrix().double()
    assert abs(float(big.mean())) < 0.01
    corr = big.T @ big / 2048
    off = corr - torch.diag(torch.diag(corr))
    assert float(off.abs().max()) < 6 / 2048**0.5  # columns near-orthogonal


def test_projector_paths_agree_and_do_not_depend_on_batch_size():
    n_in, d = 700, 96
    x = torch.randn(5, n_in, generator=torch.Generator().manual_seed(0))
    dense = RademacherProjector(n_in, d, seed=4)
    bits = RademacherProjector(n_in, d, seed=4, cache_bytes=0, block_rows=64)
    regen = RademacherProjector(n_in, d, seed=4, cache_bytes=0, bits_cache_bytes=0, block_rows=99)
    assert (dense.mode, bits.mode, regen.mode) == ("dense", "bits", "regenerate")
    want = (x.double() @ dense.matrix().double() / d**0.5).float()
    for p in (dense, bits, regen):
        y = p.project(x)
        assert y.shape == (5, d) and y.dtype == torch.float32
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p.project(x), y, rtol=0, atol=0)  # same call, same bits
        one_by_one = torch.cat([p.project(x[i : i + 1]) for i in range(5)])
        torch.testing.assert_close(one_by_one, y, rtol=1e-5, atol=1e-5)  # float32 summation order only
    with torch.autocast("cpu", dtype=torch.bfloat16):  # projection ignores an enclosing autocast
        torch.testing.assert_close(dense.project(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        dense.project(torch.zeros(2, n_in + 1))


def test_projection_preserves_gradient_cosines():
    model = lora_model(hidden=32)
    names = lora_param_names(model)
    spec = [(SEQ, s % 4, SEQ) for s in range(12)] + [(7, 0, 7), (8, 3, 8), (9, 0, 9), (10, 5, 10)]
    batch = tiny_batch(5, spec)
    g = per_example_lora_grads(model, batch, names).double()
    proj = RademacherProjector(g.shape[1], 8192, seed=0).project(g.float()).double()
    iu = torch.triu_indices(len(spec), len(spec), offset=1)
    exact = torch.nn.functional.normalize(g, dim=1) @ torch.nn.functional.normalize(g, dim=1).T
    approx = torch.nn.functional.normalize(proj, dim=1) @ torch.nn.functional.normalize(proj, dim=1).T
    a, b = exact[iu[0], iu[1]].numpy(), approx[iu[0], iu[1]].numpy()
    assert np.corrcoef(a, b)[0, 1] >= 0.95
    assert np.abs(a - b).max() < 0.1
    # norms are kept in expectation (E‖xR‖²/d = ‖x‖²)
    ratio = proj.norm(dim=1) / g.norm(dim=1)
    assert float((ratio - 1).abs().max()) < 0.1


# ----------------------------------------------------------------------------------------------
# featurize over an ExampleStore


def make_store(tmp_path, n: int = 9, seed: int = 0) -> tuple[ExampleStore, np.ndarray]:
    return random_store(tmp_path, n, SEQ, VOCAB, seed, first_id=100, stride=3, prompt_frac=0.4)


def test_featurize_sgd_and_adam(tmp_path):
    store, ids = make_store(tmp_path)
    model = lora_model()
    names = lora_param_names(model)
    proj = RademacherProjector(lora_size(model, names), 64, seed=2)
    g = per_example_lora_grads(model, collate(store, ids, SEQ, PAD), names)
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(9)
    moments = {
        n: (torch.randn(params[n].shape, generator=gen) * 1e-2, torch.rand(params[n].shape, generator=gen) * 1e-4)
        for n in names
    }
    m, v = flat_moments(moments, names)
    for kind, x in (("sgd", g), ("adam", adam_features(g, m, v))):
        want = proj.project(x)
        feats, norms = featurize(model, store, ids, names, proj, kind, moments=moments, batch_size=4, seq_len=SEQ)
        by_vmap, _ = featurize(
            model, store, ids, names, proj, kind, moments=moments, batch_size=4, seq_len=SEQ, method="vmap"
        )
        torch.testing.assert_close(by_vmap, feats, rtol=1e-5, atol=1e-6)
        assert feats.shape == (len(ids), 64) and norms.shape == (len(ids),)
        torch.testing.assert_close(norms, want.norm(dim=1), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(feats, want / want.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)
        other, _ = featurize(
            model, store, ids, names, proj, kind, moments=moments, batch_size=2, project_batch=5, seq_len=SEQ
        )
        torch.testing.assert_close(other, feats, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="moments"):
        featurize(model, store, ids, names, proj, "adam", seq_len=SEQ)


# ----------------------------------------------------------------------------------------------
# matching


def brute_scores(train, target, w, subtasks, aggregate) -> np.ndarray:
    out = []
    for n in range(train[0].shape[0]):
        infs = []
        for mi in range(target[0].shape[0]):
            infs.append(sum(w[c] * float(np.dot(train[c][n].astype(np.float64), target[c][mi])) for c in range(len(w))))
        if aggregate == "subtask_max":
            groups: dict[str, list[float]] = {}
            for s, v in zip(subtasks, infs):
                groups.setdefault(s, []).append(v)
            out.append(max(sum(v) / len(v) for v in groups.values()))
        else:
            out.append({"mean": np.mean, "max": max, "min": min}[aggregate](infs))
    return np.array(out)


def test_less_scores_match_brute_force():
    rng = np.random.default_rng(0)

    def feats(n):
        x = rng.standard_normal((n, 12))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    train = [feats(23).astype(np.float16), feats(23).astype(np.float32), torch.from_numpy(feats(23))]
    target = [feats(7) for _ in range(3)]
    w = checkpoint_weights([1.6877e-5, 1.2859e-5, 7.7030e-6])
    subtasks = ["a", "a", "b", "c", "b", "c", "c"]
    train_np = [np.asarray(t, dtype=np.float64) if not torch.is_tensor(t) else t.numpy() for t in train]
    for aggregate in AGGREGATES:
        got = less_scores(train, target, w, subtasks, aggregate=aggregate, chunk=5)
        want = brute_scores(
            [np.asarray(t, dtype=np.float32).astype(np.float64) for t in train_np], target, w, subtasks, aggregate
        )
        assert got.shape == (23,) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        less_scores(train, target, w, subtasks[:-1])
    with pytest.raises(ValueError):
        less_scores(train, target, w, subtasks, aggregate="median")


def test_checkpoint_weights():
    lrs = [1.6877e-5, 1.2859e-5, 7.7030e-6, 2.5616e-6]
    w = checkpoint_weights(lrs)
    np.testing.assert_allclose(w, np.array(lrs) / sum(lrs))
    assert w.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        checkpoint_weights([0.0, 0.0])


# ----------------------------------------------------------------------------------------------
# feature store


def test_feature_store_round_trip_and_rejections(tmp_path):
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((6, 8)).astype(np.float32)
    ids = [5, 3, 9, 11, 2, 7]
    side = {"checkpoint": "warmup/step-105", "kind": "adam", "d": 8, "seed": 0, "ids": ids, "task": "pool"}
    for dtype in ("float16", "float32"):
        path = tmp_path / f"f-{dtype}.npy"
        write_features(path, torch.from_numpy(feats), side, dtype=dtype)
        expect = {k: side[k] for k in ("checkpoint", "kind", "d", "seed", "ids")} | {"dtype": dtype}
        arr, got_ids = read_features(path, expect)
        assert isinstance(arr, np.memmap) and arr.dtype == np.dtype(dtype) and arr.shape == (6, 8)
        np.testing.assert_allclose(np.asarray(arr, dtype=np.float32), feats, rtol=1e-3 if dtype == "float16" else 0)
        assert got_ids.tolist() == ids and got_ids.dtype == np.int64
        for key, bad in (
            ("checkpoint", "warmup/step-211"),
            ("kind", "sgd"),
            ("d", 16),
            ("seed", 1),
            ("dtype", "float32" if dtype == "float16" else "float16"),
            ("ids", ids[::-1]),
            ("ids", ids[:-1]),
        ):
            with pytest.raises(ValueError, match=repr(key)):
                read_features(path, {**expect, key: bad})
        with pytest.raises(ValueError, match="'n_layers'"):
            read_features(path, {"n_layers": 3})  # a key the sidecar lacks
    # dtype from the sidecar; norms kept in it
    norms = np.linspace(1.0, 2.0, 6)
    write_features(tmp_path / "g.npy", feats, {**side, "dtype": "float32"}, norms=torch.from_numpy(norms))
    arr, _ = read_features(tmp_path / "g.npy", {"dtype": "float32"})
    assert arr.dtype == np.float32 and read_sidecar(tmp_path / "g.npy")["norms"] == norms.tolist()
    with pytest.raises(ValueError):
        write_features(tmp_path / "g.npy", feats, {**side, "dtype": "float32"}, dtype="float16")
    with pytest.raises(ValueError):
        write_features(tmp_path / "g.npy", feats, side, norms=norms[:3])
    # rewriting replaces both files; no temp files are left behind
    write_features(tmp_path / "f-float16.npy", feats[:2], {**side, "ids": ids[:2]})
    arr, got_ids = read_features(tmp_path / "f-float16.npy", {"ids": ids[:2]})
    assert arr.shape == (2, 8) and not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError):
        write_features(tmp_path / "bad.npy", feats, {**side, "ids": ids[:3]})  # rows ≠ ids
    with pytest.raises(ValueError):
        read_features(tmp_path / "missing.npy", {})


# ----------------------------------------------------------------------------------------------
# LoRA checkpoints written by the trainer


def test_load_lora_checkpoint_from_the_trainer(tmp_path):
    from winnow.train.trainer import TrainConfig, train

    store, ids = make_store(tmp_path, n=8)
    model = add_lora(base_model(torch.float32, seed=3), **LORA)
    tcfg = TrainConfig(
        steps=3,
        batch_size=4,
        micro_batch_size=2,
        seq_len=SEQ,
        lr=1e-2,
        schedule="constant",
        precision="fp32",
        log_every_s=1e9,
        weight_decay=0.0,
    )
    train(model, store, ids, tcfg, tmp_path / "final", tmp_path / "ckpts", PAD)
    names = lora_param_names(model)
    loaded, moments = load_lora_checkpoint(base_model(torch.float32, seed=7), tmp_path / "final", LORA)
    assert lora_param_names(loaded) == names and set(moments) == set(names)
    trained = dict(model.named_parameters())
    for n, p in loaded.named_parameters():
        assert torch.equal(p, trained[n]), n  # base and LoRA weights
    b_vals = [trained[n].detach() for n in names if ".lora_B." in n]
    assert all(float(t.abs().max()) > 0 for t in b_vals)  # the run moved B off zero
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "final" / "optimizer.safetensors"))
    for n in names:
        m, v = moments[n]
        assert m.shape == trained[n].shape and torch.equal(m, saved[f"{n}.exp_avg"])
        assert torch.equal(v, saved[f"{n}.exp_avg_sq"]) and float(v.max()) > 0
    m, v = flat_moments(moments, names)
    assert m.shape == (lora_size(loaded, names),)


# ----------------------------------------------------------------------------------------------
# predictor


def test_mean_hidden_states_is_the_base_model_masked_mean(tmp_path):
    store, ids = make_store(tmp_path, n=5)
    base = base_model()
    ref = copy.deepcopy(base)
    model = add_lora(base, **LORA)
    perturb_b(model)  # adapters must be off: the result is the base model's
    got = mean_hidden_states(model, store, ids, batch_size=2, seq_len=SEQ)
    assert got.shape == (5, 16) and got.dtype == torch.float32
    for r, eid in enumerate(ids):
        tokens, _, _ = store.get(eid)
        with torch.no_grad():
            h = ref.gpt_neox(input_ids=torch.from_numpy(tokens)[None]).last_hidden_state[0]
        torch.testing.assert_close(got[r], h.mean(0).float(), rtol=1e-5, atol=1e-6)
    plain = mean_hidden_states(ref, store, ids, batch_size=5, seq_len=SEQ)
    torch.testing.assert_close(plain, got, rtol=1e-6, atol=1e-7)


def test_ridge_recovers_a_planted_linear_function():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 10)) * rng.uniform(0.5, 5.0, size=10) + 3.0
    w = rng.standard_normal(10)
    y = X @ w + 0.7 + 0.1 * rng.standard_normal(300)
    model = fit_ridge(X[:200], y[:200], folds=5, seed=0)
    rep = regression_report(y[200:], predict_ridge(model, X[200:]))
    assert rep["r2"] > 0.9 and rep["n"] == 100 and rep["pearson"] > 0.95 and rep["spearman"] > 0.9
    assert model["lambda"] in model["lambdas"] and model["cv_mse"].shape == (13,)
    # closed forms (primal k ≤ n, dual k > n) against a direct solve
    for n, k in ((40, 6), (8, 20)):
        xs = rng.standard_normal((n, k))
        xs -= xs.mean(0)
        yc = rng.standard_normal(n)
        yc -= yc.mean()
        lams = np.array([1e-2, 1.0])
        got = _ridge_coefs(xs, yc, lams)
        for j, lam in enumerate(lams):
            want = np.linalg.solve(xs.T @ xs / n + lam * np.eye(k), xs.T @ yc / n)
            np.testing.assert_allclose(got[:, j], want, rtol=1e-8, atol=1e-10)


def test_regression_report_matches_manual_formulas():
    rng = np.random.default_rng(3)
    a = rng.standard_normal(50)
    b = a + 0.5 * rng.standard_normal(50)
    rep = regression_report(a, b)
    r2 = 1 - np.sum((a - b) ** 2) / np.sum((a - a.mean()) ** 2)
    assert rep["r2"] == pytest.approx(r2, rel=1e-12)
    assert rep["pearson"] == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)
    ranks = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731 (no ties here)
    assert rep["spearman"] == pytest.approx(np.corrcoef(ranks(a), ranks(b))[0, 1], rel=1e-9)
    assert rep["n"] == 50


def test_projector_compile_falls_back_to_eager(monkeypatch):
    """A failing or wrong torch.compile (no compiler on a node, an inductor bug) must not change R."""
    want = RademacherProjector(100, 64, seed=2).matrix()

    def broken(fn, **kw):
        def run(*args):
            raise RuntimeError("no compiler")

        return run

    def wrong(fn, **kw):
        return lambda *args: fn(*args) ^ 1 if args[0].dtype == torch.int64 else -fn(*args)

    for fake in (broken, wrong):
        monkeypatch.setattr(torch, "compile", fake)
        p = RademacherProjector(100, 64, seed=2, compile=True)
        with pytest.warns(UserWarning, match="RademacherProjector"):
            got = p.matrix()
        assert torch.equal(got, want) and p.compiled == {"hash@cpu": False, "unpack@cpu": False}
        assert torch.equal(p.matrix(), want)  # later calls: eager, no new warning needed


# ----------------------------------------------------------------------------------------------
# the warm-up's epochs (the recipe of `winnow less train` on the shared trainer)


def _less_recipe_run(tmp_path, monkeypatch, n: int, batch: int, epochs: int):
    """Train LESS's recipe (``less_train_config``) on n examples with a spy on the trainer's batches:
    (ids, config, steps per epoch, the ids of each optimizer step, the trainer's history)."""
    import json

    from winnow.cli.less import less_train_config
    from winnow.train import trainer

    store, ids = make_store(tmp_path, n=n)
    recipe = {"lr": 1e-2, "batch_size": batch, "epochs": epochs, "warmup_ratio": 0.2, "precision": "fp32"}
    tc, spe = less_train_config(recipe, ids.size, SEQ, seed=3)
    tc.log_every_s = 1e9
    steps: list[np.ndarray] = []
    real = trainer.collate

    def spy(st, chunk, *args, **kwargs):  # micro_batch_size = batch_size: one call per step
        steps.append(np.asarray(chunk, dtype=np.int64).copy())
        return real(st, chunk, *args, **kwargs)

    monkeypatch.setattr(trainer, "collate", spy)
    model = add_lora(base_model(torch.float32, seed=3), **LORA)
    trainer.train(model, store, ids, tc, tmp_path / "final", tmp_path / "ckpts", PAD)
    history = json.loads((tmp_path / "final" / "trainer_state.json").read_text())["history"]
    assert len(steps) == tc.steps == len(history)
    return ids, tc, spe, steps, history


def test_warmup_checkpoints_fall_on_data_epoch_boundaries(tmp_path, monkeypatch):
    """LESS's warm-up checkpoints once per epoch; with n % B ≠ 0 (10 examples, batches of 4) the
    ids trained on up to the e-th checkpoint are each id exactly once per epoch, epoch by epoch
    (one permutation each, the last batch of an epoch partial, as HF's Trainer does)."""
    n, batch, epochs = 10, 4, 3
    ids, tc, spe, steps, _ = _less_recipe_run(tmp_path, monkeypatch, n, batch, epochs)
    assert spe == 3 and tc.steps == epochs * spe and tc.ckpt_every == spe
    for e in range(1, epochs):  # the trainer's checkpoint after epoch e (the last one is `final`)
        assert (tmp_path / "ckpts" / f"step-{e * spe:08d}").is_dir()
    for e in range(epochs):
        seen = np.concatenate(steps[e * spe : (e + 1) * spe])
        assert seen.size == n, f"epoch {e} trained on {seen.size} samples, not the {n} examples"
        assert sorted(seen.tolist()) == sorted(ids.tolist())
        np.testing.assert_array_equal(seen, ids[np.random.default_rng([3, e]).permutation(n)])
        assert [s.size for s in steps[e * spe : (e + 1) * spe]] == [4, 4, 2]


@pytest.mark.parametrize("n", [10, 8])  # n % B ≠ 0 (where epochs and checkpoints used to drift) and = 0
def test_epoch_mean_lrs_is_the_mean_lr_over_each_data_epoch(tmp_path, monkeypatch, n):
    """η̄_e (LESS's checkpoint weights) = the mean lr of the optimizer steps that trained on data
    epoch e, found from the ids each step actually trained on and the lr it actually used."""
    from winnow.cli.less import epoch_mean_lrs

    batch, epochs = 4, 3
    ids, tc, spe, steps, history = _less_recipe_run(tmp_path, monkeypatch, n, batch, epochs)
    epoch_of_step, position = [], 0
    for s in steps:  # the data epoch of every sample: its position in the stream // n
        owners = {(position + j) // n for j in range(s.size)}
        assert len(owners) == 1, f"a step trains on samples of data epochs {sorted(owners)}"
        epoch_of_step.append(owners.pop())
        position += s.size
    lrs = np.array([row[2] for row in history])
    want = [float(lrs[np.array(epoch_of_step) == e].mean()) for e in range(epochs)]
    np.testing.assert_allclose(epoch_mean_lrs(tc, spe), want, rtol=1e-12, atol=0)
    assert len(set(np.round(want, 12))) == epochs  # a linear decay: the epochs' weights differ


def test_warmup_fraction_that_keeps_nothing_is_an_error_naming_the_key():
    from winnow.cli.less import warmup_ids

    pool = np.arange(100, 140, dtype=np.int64)
    got = warmup_ids(pool, 0.1, seed=0)
    assert got.size == 4 and set(got.tolist()) <= set(pool.tolist())
    with pytest.raises(ValueError, match=r"less\.warmup\.fraction: 0\.01 of 40 pool examples keeps 0"):
        warmup_ids(pool, 0.01, seed=0)
