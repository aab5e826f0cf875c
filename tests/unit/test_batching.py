"""Batching is pure: no row lost or duplicated, budgets kept, order restorable."""

import numpy as np
import pytest

from embedrank.models import batching


def lognormal_lengths(n, seed=0, median=200, cap=8192):
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median), 1.0, n).astype(int), 1, cap)


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("seed", range(5))
def test_every_row_exactly_once_and_budget_kept(layout, seed):
    lengths = lognormal_lengths(2000, seed)
    budget = 4096
    batches = batching.micro_batches(lengths, budget, layout=layout)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    for b in batches:
        cost = lengths[b].sum() if layout == "packed" else len(b) * lengths[b].max()
        assert cost <= budget or len(b) == 1


def test_row_longer_than_budget_is_alone():
    batches = batching.micro_batches([5, 10_000, 7], 100)
    assert [len(b) for b in batches] == [2, 1]
    assert batches[-1].tolist() == [1]


def test_max_rows_caps_batches():
    batches = batching.micro_batches([1] * 10, 1000, max_rows=3)
    assert [len(b) for b in batches] == [3, 3, 3, 1]


def test_batches_are_length_sorted_and_order_restorable():
    lengths = lognormal_lengths(500, 3)
    batches = batching.micro_batches(lengths, 2048, layout="padded")
    order = np.concatenate(batches)
    assert np.all(np.diff(lengths[order]) >= 0)
    values = np.arange(len(lengths)) * 10
    restored = values[order][batching.inverse_permutation(order)]
    assert np.array_equal(restored, values)


def test_padded_efficiency_on_lognormal_sample():
    lengths = lognormal_lengths(5000, 11)
    batches = batching.micro_batches(lengths, 16384, layout="padded")
    assert batching.padding_efficiency(batches, lengths, "padded") >= 0.95
    assert batching.padding_efficiency(batching.micro_batches(lengths, 16384), lengths, "packed") == 1.0


def test_input_order_padding_is_wasteful_for_contrast():
    # Fixed batches of 32 in input order: the published recipe's layout.
    lengths = lognormal_lengths(5000, 11)
    batches = [np.arange(i, min(i + 32, len(lengths))) for i in range(0, len(lengths), 32)]
    assert batching.padding_efficiency(batches, lengths, "padded") < 0.5


def test_pack_and_cu_seqlens():
    flat, positions, cu = batching.pack([[1, 2, 3], [4], [5, 6]])
    assert flat.tolist() == [1, 2, 3, 4, 5, 6]
    assert positions.tolist() == [0, 1, 2, 0, 0, 1]
    assert cu.tolist() == [0, 3, 4, 6] and cu.dtype == np.int32


def test_pad_left_keeps_last_column_real():
    ids, mask = batching.pad_left([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


@pytest.mark.parametrize("bad", [dict(max_tokens=0), dict(layout="ragged")])
def test_bad_arguments_are_named(bad):
    kwargs = dict(max_tokens=10, layout="packed") | bad
    with pytest.raises(ValueError, match="max_tokens|layout"):
        batching.micro_batches([1, 2], **kwargs)


def test_empty_sequence_rejected():
    with pytest.raises(ValueError, match="at least one token"):
        batching.micro_batches([3, 0], 10)
