"""Host-side packing: first-fit rules, determinism per seed, coverage, fixed shapes, truncation as collate_pairs."""

import numpy as np
import pytest

from dpo_jax.data import PreferenceExample, collate_pairs
from dpo_jax.layouts.packed import PackedDataset, first_fit, pack_examples, pair_spec_from_example


def examples(n=40, seed=0, max_part=20):
    rng = np.random.default_rng(seed)
    draw = lambda k: [int(t) for t in rng.integers(1, 50, size=k)]  # noqa: E731
    return [PreferenceExample(draw(rng.integers(1, max_part)), draw(rng.integers(1, max_part)),
                              draw(rng.integers(1, max_part)), line=i + 1) for i in range(n)]


def test_first_fit_fills_rows_in_order_and_respects_limits():
    plan = first_fit([5, 4, 3, 6, 2], row_len=8, rows=2, pairs_per_batch=3)
    assert plan == [[[0, 2], [1]], [[3, 4], []]]
    with pytest.raises(ValueError, match="row_len"):
        first_fit([9], row_len=8, rows=1, pairs_per_batch=1)


@pytest.mark.parametrize("share_prefix", [True, False])
def test_epoch_covers_every_example_once_with_fixed_shapes(share_prefix):
    exs = examples()
    data = PackedDataset(exs, row_len=64, rows=3, pairs_per_batch=6, seed=7, max_len=32, share_prefix=share_prefix)
    plan = data.epoch_plan(0)
    seen = sorted(i for batch in plan for row in batch for i in row)
    assert seen == list(range(len(exs)))
    for batch in data.epoch(0):
        assert batch.tokens.shape == (3, 64) and batch.pair_valid.shape == (6,)
        assert batch.pair_valid.sum() >= 1
        # positions restart at 0 at every segment start; segments are contiguous
        for row_seg, row_pos in zip(batch.segment_ids, batch.positions):
            starts = np.flatnonzero(np.diff(np.concatenate([[-2], row_seg])) != 0)
            assert all(row_pos[s] == 0 for s in starts)
    assert data.epoch_plan(0) == PackedDataset(exs, row_len=64, rows=3, pairs_per_batch=6, seed=7, max_len=32,
                                               share_prefix=share_prefix).epoch_plan(0)
    assert data.epoch_plan(1) != plan


def test_packing_wastes_less_than_padding():
    exs = examples(64, seed=1)
    packed = list(PackedDataset(exs, row_len=96, rows=4, pairs_per_batch=16, seed=0, max_len=48).epoch(0))
    padded_slots = sum(2 * collate_pairs(exs[i:i + 8], max_len=48, pad_id=0).preferred_seq.size
                       for i in range(0, 64, 8))
    assert sum(b.tokens.size for b in packed) < 0.75 * padded_slots
    assert sum(b.num_real_tokens() for b in packed) <= sum(b.tokens.size for b in packed)


def test_pair_spec_truncates_like_collate_pairs():
    ex = PreferenceExample(list(range(1, 11)), list(range(20, 30)), [40, 41], line=1)
    batch = collate_pairs([ex], max_len=12, pad_id=0, min_completion_tokens=3)
    spec = pair_spec_from_example(ex, max_len=12, min_completion_tokens=3)
    p = int(batch.prompt_mask.sum())
    assert list(spec.prompt) == list(batch.preferred_seq[0, :p])
    chosen = batch.preferred_seq[0, p:batch.preferred_seq_mask[0].sum()]
    assert [t for _, t in spec.chosen_scored] == list(chosen)
    assert list(spec.chosen_inputs) == list(chosen[:-1])
    assert [t for _, t in spec.rejected_scored] == [40, 41]


def test_refusals():
    with pytest.raises(ValueError, match="row_len"):
        PackedDataset(examples(), row_len=16, rows=2, pairs_per_batch=4, seed=0, max_len=32)
    with pytest.raises(ValueError, match="prompt of at least one token"):
        pair_spec_from_example(PreferenceExample([], [1], [2]), max_len=8)
    with pytest.raises(ValueError, match="slot"):
        from dpo_jax.layouts.prefix_shared import layout_pairs
        spec = pair_spec_from_example(examples(1)[0], max_len=64)
        layout_pairs([spec], [[(0, 0), (0, 0)]], row_len=200, num_pairs=1)
    assert pack_examples(examples(3), row_len=64, rows=1, pairs_per_batch=1, max_len=32)[0].num_pairs == 1
