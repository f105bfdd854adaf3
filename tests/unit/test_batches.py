"""winnow.train.batches: step → ids is pure and epoch-complete; collate's padding and loss mask."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from winnow.io.shards import write_shard
from winnow.io.tables import EXAMPLES
from winnow.train import batches
from winnow.train.batches import ExampleStore, collate, step_ids

IDS = np.array([2**32 + 5, 3, 17, 2**32 + 1, 8, 40, 41], dtype=np.int64)


def test_step_ids_pure_function_of_step():
    batch, seed = 3, 11
    run = [step_ids(IDS, s, batch, seed) for s in range(12)]
    # a "resumed" run asks for steps out of order, with a cold cache
    batches._epoch_perm.cache_clear()
    for s in (9, 2, 11, 0, 5):
        np.testing.assert_array_equal(step_ids(IDS, s, batch, seed), run[s])
    batches._epoch_perm.cache_clear()
    assert all(r.dtype == np.int64 and r.shape == (batch,) for r in run)


def test_each_id_once_per_epoch_and_epochs_differ():
    n, batch = IDS.size, 3  # 7 ids, batch 3: batches straddle epoch boundaries
    steps = 7 * 4  # 84 samples = 12 epochs
    flat = np.concatenate([step_ids(IDS, s, batch, seed=0) for s in range(steps)])
    epochs = flat.reshape(-1, n)
    for e in epochs:
        assert sorted(e.tolist()) == sorted(IDS.tolist())
    assert len({tuple(e) for e in epochs}) > 6  # reshuffled each epoch (7! orders)
    assert any(e.tolist() != IDS.tolist() for e in epochs)  # shuffled at all


def test_seed_changes_order_and_no_shuffle_is_sequential():
    a = np.concatenate([step_ids(IDS, s, 7, seed=0) for s in range(3)])
    b = np.concatenate([step_ids(IDS, s, 7, seed=1) for s in range(3)])
    assert a.tolist() != b.tolist()
    seq = np.concatenate([step_ids(IDS, s, 3, seed=0, shuffle=False) for s in range(5)])
    assert seq.tolist() == np.resize(IDS, 15).tolist()


def test_epoch_batches_are_one_permutation_per_epoch_with_a_partial_last_batch():
    """Epoch-aligned batches (a DataLoader without drop_last): epoch e is one permutation of the n
    ids cut into ⌈n/B⌉ batches, the last one partial; epoch e ends after exactly e·n samples."""
    from winnow.train.batches import epoch_step_ids, steps_per_epoch

    n, batch, seed = IDS.size, 3, 5  # 7 ids: batches of 3, 3, 1
    spe = steps_per_epoch(n, batch)
    assert spe == 3 and steps_per_epoch(6, 3) == 2 and steps_per_epoch(2, 5) == 1
    run = {}
    for e in range(4):
        want = IDS[np.random.default_rng([seed, e]).permutation(n)]  # independent of the module
        got = [epoch_step_ids(IDS, e * spe + k, batch, seed) for k in range(spe)]
        assert [g.size for g in got] == [3, 3, 1] and all(g.dtype == np.int64 for g in got)
        np.testing.assert_array_equal(np.concatenate(got), want)
        run.update({e * spe + k: g for k, g in enumerate(got)})
    batches._epoch_perm.cache_clear()  # pure in the step: a resumed run asks out of order, cold
    for s in (10, 4, 0, 7):
        np.testing.assert_array_equal(epoch_step_ids(IDS, s, batch, seed), run[s])
    # n a multiple of the batch: the continuous stream's batches exactly
    for s in range(8):
        np.testing.assert_array_equal(epoch_step_ids(IDS[:6], s, 3, seed), step_ids(IDS[:6], s, 3, seed))
    # no shuffle: the ids in order each epoch; a batch larger than the ids: one batch an epoch
    seq = [epoch_step_ids(IDS, s, 3, seed, shuffle=False).tolist() for s in range(4)]
    assert seq == [IDS[:3].tolist(), IDS[3:6].tolist(), IDS[6:].tolist(), IDS[:3].tolist()]
    np.testing.assert_array_equal(
        epoch_step_ids(IDS[:2], 1, 5, seed), IDS[:2][np.random.default_rng([seed, 1]).permutation(2)]
    )


def test_batch_larger_than_ids():
    out = step_ids(IDS[:2], 0, 5, seed=3)
    assert out.shape == (5,)
    assert sorted(out[:2].tolist()) == sorted(IDS[:2].tolist())  # epoch 0 = first two samples


# ------------------------------------------------------------------------------- store + collate


@pytest.fixture
def store(tmp_path):
    """Two shards; examples of varied lengths and loss regions."""
    shard0 = np.arange(100, 130)  # 30 tokens
    shard1 = np.arange(500, 520)  # 20 tokens
    write_shard(tmp_path / "tokens-0.bin", shard0, np.dtype("<u2"))
    write_shard(tmp_path / "tokens-1.bin", shard1, np.dtype("<u2"))
    rows = [
        # example_id, shard, offset, length, loss_start, loss_end
        (0, 0, 0, 8, 0, 8),  # plain: loss on 1..7
        (1, 0, 8, 6, 4, 6),  # prompt of 4 tokens, response of 2
        (2, 0, 14, 16, 0, 16),  # longer than the collate width below
        (2**32, 1, 0, 5, 1, 5),  # prompt of 1 token
        (2**32 + 1, 1, 5, 2, 0, 2),  # shortest example with a loss
    ]
    table = pa.table(
        {
            "example_id": [r[0] for r in rows],
            "doc_id": [f"d{r[0]}" for r in rows],
            "shard": [r[1] for r in rows],
            "offset": [r[2] for r in rows],
            "length": [r[3] for r in rows],
            "loss_start": [r[4] for r in rows],
            "loss_end": [r[5] for r in rows],
            "domain": ["x"] * len(rows),
            "split": ["train"] * len(rows),
        },
        schema=EXAMPLES,
    )
    return ExampleStore(table, {0: tmp_path / "tokens-0.bin", 1: str(tmp_path / "tokens-1.bin")}, "<u2")


def test_store_get(store):
    tokens, ls, le = store.get(1)
    assert tokens.tolist() == list(range(108, 114)) and (ls, le) == (4, 6)
    assert tokens.dtype == np.int64
    tokens, ls, le = store.get(2**32)
    assert tokens.tolist() == [500, 501, 502, 503, 504] and (ls, le) == (1, 5)
    with pytest.raises(KeyError):
        store.get(99)


def test_store_lookup_is_by_id_in_any_row_order(tmp_path, store):
    """The id lookup (sorted ids + searchsorted) equals a dict over the rows, whatever their order;
    ids between, below and above the stored ones are missing; a repeated id is refused."""
    table = pa.table({k: store.cols[k].tolist() for k in store.cols})
    perm = np.random.default_rng(0).permutation(table.num_rows)
    shuffled = ExampleStore(table.take(perm), {0: tmp_path / "tokens-0.bin", 1: tmp_path / "tokens-1.bin"}, "<u2")
    for eid in store.cols["example_id"].tolist():
        assert [a.tolist() if hasattr(a, "tolist") else a for a in shuffled.get(eid)] == [
            a.tolist() if hasattr(a, "tolist") else a for a in store.get(eid)
        ]
    for missing in (-1, 2**32 - 1, 2**32 + 10**6, 2**40):
        with pytest.raises(KeyError):
            shuffled.get(missing)
    with pytest.raises(ValueError, match="more than once"):
        ExampleStore(pa.concat_tables([table, table.slice(0, 1)]), {}, "<u2")


def test_store_missing_shard(tmp_path, store):
    partial = ExampleStore(
        pa.table({k: store.cols[k].tolist() for k in store.cols}), {0: tmp_path / "tokens-0.bin"}, "<u2"
    )
    assert partial.get(0)[0].size == 8
    with pytest.raises(KeyError, match="shard 1"):
        partial.get(2**32)


def test_collate_pads_and_masks(store):
    ids = [1, 2**32, 0, 2**32 + 1]
    out = collate(store, ids, seq_len=10, pad_id=7)
    assert set(out) == {"input_ids", "attention_mask", "loss_mask"}
    assert out["input_ids"].shape == out["attention_mask"].shape == out["loss_mask"].shape == (4, 10)
    assert out["input_ids"].dtype == torch.long and out["loss_mask"].dtype == torch.bool
    inp, att, loss = out["input_ids"], out["attention_mask"], out["loss_mask"]
    # row 0: 6 tokens (prompt 4 + response 2), right-padded
    assert inp[0].tolist() == [108, 109, 110, 111, 112, 113, 7, 7, 7, 7]
    assert att[0].tolist() == [1] * 6 + [0] * 4
    assert loss[0].tolist() == [False] * 4 + [True] * 2 + [False] * 4  # response only
    # row 1: prompt of 1 token
    assert inp[1, :5].tolist() == [500, 501, 502, 503, 504]
    assert loss[1].tolist() == [False] + [True] * 4 + [False] * 5
    # row 2: plain text: every position but 0 (nothing predicts the first token)
    assert loss[2].tolist() == [False] + [True] * 7 + [False] * 2
    # row 3: two tokens, one target
    assert loss[3].tolist() == [False, True] + [False] * 8
    assert not (loss & (att == 0)).any()  # never a loss on padding


def test_collate_truncates_to_seq_len(store):
    out = collate(store, [2], seq_len=10, pad_id=0)
    assert out["input_ids"][0].tolist() == list(range(114, 124))
    assert out["attention_mask"][0].tolist() == [1] * 10
    assert out["loss_mask"][0].tolist() == [False] + [True] * 9


def test_n_loss_tokens_agrees_with_collate(store):
    ids = [0, 1, 2, 2**32, 2**32 + 1]
    out = collate(store, ids, seq_len=16, pad_id=0)
    per_row = out["loss_mask"].sum(dim=1).tolist()
    assert per_row == [store.n_loss_tokens(i) for i in ids] == [7, 2, 15, 4, 1]
