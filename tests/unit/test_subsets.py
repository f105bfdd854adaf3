"""winnow.data.subsets: filters, seeded sampling, order independence, errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from winnow.data.subsets import filter_examples, ids_table, sample_ids
from winnow.io.tables import EXAMPLES, IDS


def examples_table(n: int = 60, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10**9, size=n, replace=False)).astype(np.int64)
    splits = np.array(["train", "val", "test"])[np.arange(n) % 3]
    domains = np.array(["a", "b"])[(np.arange(n) // 3) % 2]
    return pa.table(
        {
            "example_id": ids,
            "doc_id": [f"d/{i}" for i in range(n)],
            "shard": np.zeros(n, np.int32),
            "offset": np.arange(n, dtype=np.int64) * 8,
            "length": np.full(n, 8, np.int32),
            "loss_start": np.zeros(n, np.int32),
            "loss_end": np.full(n, 8, np.int32),
            "domain": domains,
            "split": splits,
        },
        schema=EXAMPLES,
    )


def _shuffled(t: pa.Table, seed: int) -> pa.Table:
    return t.take(pa.array(np.random.default_rng(seed).permutation(t.num_rows)))


def test_filter_by_split_domain_and_exclude():
    t = examples_table()
    rows = t.to_pylist()
    all_ids = filter_examples(t)
    assert all_ids.tolist() == sorted(r["example_id"] for r in rows)
    train = filter_examples(t, splits=["train"])
    assert train.tolist() == sorted(r["example_id"] for r in rows if r["split"] == "train")
    assert train.size == 20
    tv_b = filter_examples(t, splits=["train", "val"], domains=["b"])
    assert tv_b.tolist() == sorted(
        r["example_id"] for r in rows if r["split"] in ("train", "val") and r["domain"] == "b"
    )
    exclude = train[::2]
    rest = filter_examples(t, splits=["train"], exclude_ids=exclude)
    assert rest.tolist() == [i for i in train.tolist() if i not in set(exclude.tolist())]
    assert filter_examples(t, splits=["nope"]).size == 0
    # empty / None filters mean "no filter"
    assert filter_examples(t, splits=[], domains=None, exclude_ids=np.zeros(0, np.int64)).tolist() == all_ids.tolist()
    assert all_ids.dtype == np.int64


def test_filter_is_sorted_and_order_independent():
    t = examples_table()
    a = filter_examples(t, splits=["val", "test"], domains=["a"])
    assert np.all(np.diff(a) > 0)
    for s in range(3):
        assert filter_examples(_shuffled(t, s), splits=["val", "test"], domains=["a"]).tolist() == a.tolist()


def test_sample_is_seeded_reproducible_and_without_replacement():
    ids = filter_examples(examples_table(200))
    a = sample_ids(ids, seed=5, n=50)
    assert a.tolist() == sample_ids(ids, seed=5, n=50).tolist()
    assert a.size == 50 and len(set(a.tolist())) == 50 and set(a.tolist()) <= set(ids.tolist())
    assert a.dtype == np.int64
    b = sample_ids(ids, seed=6, n=50)
    assert set(a.tolist()) != set(b.tolist())
    assert a.tolist() != sorted(a.tolist())  # sampled order, not id order


def test_sample_independent_of_input_order():
    ids = filter_examples(examples_table(200))
    ref = sample_ids(ids, seed=1, fraction=0.3)
    for s in range(3):
        shuffled = ids[np.random.default_rng(s).permutation(ids.size)]
        assert sample_ids(shuffled, seed=1, fraction=0.3).tolist() == ref.tolist()
    t = examples_table(200)
    pool = filter_examples(_shuffled(t, 9), splits=["train"])
    assert sample_ids(pool, 2, n=10).tolist() == sample_ids(filter_examples(t, splits=["train"]), 2, n=10).tolist()


def test_fraction_uses_floor_and_bounds():
    ids = np.arange(10, dtype=np.int64)
    assert sample_ids(ids, 0, fraction=0.35).size == 3
    assert sorted(sample_ids(ids, 0, fraction=1.0).tolist()) == list(range(10))
    assert sample_ids(ids, 0, n=10).size == 10
    assert sample_ids(ids, 0, n=0).size == 0


def test_a_fraction_that_keeps_nothing_is_an_error_naming_the_key():
    ids = np.arange(50, dtype=np.int64)
    with pytest.raises(ValueError, match=r"subsets\.pool\.fraction: 0\.01 of 50 matching examples keeps 0"):
        sample_ids(ids, 0, fraction=0.01, key="subsets.pool.fraction")
    with pytest.raises(ValueError, match=r"^fraction: 0\.01 of 50 matching examples keeps 0"):
        sample_ids(ids, 0, fraction=0.01)
    assert sample_ids(ids, 0, fraction=0.02, key="subsets.pool.fraction").size == 1
    assert sample_ids(ids, 0, n=0).size == 0  # an explicit count of 0 is what was asked for


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n": 11}, "only 10"),
        ({"fraction": 1.5}, "only 10"),
        ({}, "exactly one of n or fraction"),
        ({"n": 3, "fraction": 0.5}, "exactly one of n or fraction"),
        ({"n": -1}, "must be ≥ 0"),
        ({"fraction": -0.2}, "must be ≥ 0"),
    ],
)
def test_sample_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_ids(np.arange(10), seed=0, **kwargs)


def test_sample_more_than_filtered_pool_fails():
    t = examples_table(30)
    pool = filter_examples(t, splits=["test"], domains=["a"])
    with pytest.raises(ValueError, match=f"only {pool.size} examples"):
        sample_ids(pool, seed=0, n=pool.size + 1)


def test_ids_table():
    table = ids_table(np.array([9, 3, 7]))
    assert table.schema.equals(IDS)
    assert table.to_pydict() == {"example_id": [9, 3, 7], "rank": [0, 1, 2]}


def test_partition_ids_disjoint_sized_and_seeded():
    from winnow.data.subsets import partition_ids

    ids = np.arange(1000, 1100, dtype=np.int64)
    parts = partition_ids(ids[::-1], [30, 30, 20], seed=3)
    assert [p.size for p in parts] == [30, 30, 20]
    flat = np.concatenate(parts)
    assert np.unique(flat).size == 80 and np.isin(flat, ids).all()
    again = partition_ids(ids, [30, 30, 20], seed=3)  # input order does not matter
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not np.array_equal(parts[0], partition_ids(ids, [30, 30, 20], seed=4)[0])
    with pytest.raises(ValueError, match="disjoint"):
        partition_ids(ids, [60, 60], seed=0)
