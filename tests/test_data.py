"""Preference-data pipeline tests: reading/validation, collation and truncation, seeded batching."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dpo_jax.data import (
    DataError, PreferenceDataset, PreferenceExample, batch_iterator, collate_pairs,
    read_preference_jsonl, write_preference_jsonl,
)
from dpo_jax.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
PAD, EOS = TOK.pad_id, TOK.eos_id


def _write_lines(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"prompt": "Q", "chosen": "yes", "rejected": "no"})


# ------------------------------------------------------------------------------------------ reading

def test_read_strings_and_ids_with_eos(tmp_path):
    path = _write_lines(tmp_path, [
        GOOD,
        "",
        "   ",
        json.dumps({"prompt": [1, 2], "chosen": [3], "rejected": [4, 5], "extra": 1}),
        json.dumps({"prompt": "", "chosen": "a", "rejected": "b"}),
    ])
    examples = read_preference_jsonl(path, TOK)
    assert [ex.line for ex in examples] == [1, 4, 5]
    assert examples[0] == PreferenceExample([81], [121, 101, 115, EOS], [110, 111, EOS], str(path), 1)
    assert (examples[1].prompt, examples[1].chosen, examples[1].rejected) == ([1, 2], [3, EOS], [4, 5, EOS])
    assert examples[2].prompt == []
    no_eos = read_preference_jsonl(path, TOK, append_eos=False)
    assert no_eos[0].chosen == [121, 101, 115]


BAD_LINES = {
    "bad json": ("{not json", "invalid JSON"),
    "not an object": ("[1, 2, 3]", "expected a JSON object"),
    "missing key": (json.dumps({"prompt": "a", "chosen": "b"}), "missing key"),
    "wrong type": (json.dumps({"prompt": 5, "chosen": "b", "rejected": "c"}), "'prompt' must be a string or a list"),
    "null": (json.dumps({"prompt": "a", "chosen": None, "rejected": "c"}), "'chosen' must be a string or a list"),
    "empty chosen": (json.dumps({"prompt": "a", "chosen": "", "rejected": "c"}), "'chosen' is empty"),
    "empty rejected ids": (json.dumps({"prompt": "a", "chosen": "b", "rejected": []}), "'rejected' is empty"),
    "id too large": (json.dumps({"prompt": [1], "chosen": [258], "rejected": [2]}), r"'chosen'\[0\] = 258 is out of range \[0, 258\)"),
    "negative id": (json.dumps({"prompt": [1, -1], "chosen": [2], "rejected": [2]}), r"'prompt'\[1\] = -1 is out of range"),
    "float id": (json.dumps({"prompt": [1], "chosen": [2.0], "rejected": [2]}), "not an integer token id"),
    "string id": (json.dumps({"prompt": [1], "chosen": [2], "rejected": ["3"]}), "not an integer token id"),
    "bool id": (json.dumps({"prompt": [True], "chosen": [2], "rejected": [3]}), "not an integer token id"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
@pytest.mark.parametrize("bad_line_no", [1, 3])
def test_malformed_line_names_file_and_line(tmp_path, case, bad_line_no):
    bad, expected = BAD_LINES[case]
    lines = [GOOD, "", GOOD, GOOD]  # line 2 is blank: numbering must still count it
    lines[bad_line_no - 1] = bad
    path = _write_lines(tmp_path, lines)
    with pytest.raises(DataError, match=expected) as info:
        read_preference_jsonl(path, TOK)
    assert str(info.value).startswith(f"{path}:{bad_line_no}: ")
    assert info.value.line == bad_line_no and info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_invalid_utf8_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=r":2: not valid UTF-8"):
        read_preference_jsonl(path, TOK)


def test_whole_file_rejected_and_other_bad_lines_counted(tmp_path):
    path = _write_lines(tmp_path, [GOOD] * 5 + ["oops"] + [GOOD] * 3 + ["{}"] + [GOOD])
    with pytest.raises(DataError) as info:
        read_preference_jsonl(path, TOK)
    message = str(info.value)
    assert message.startswith(f"{path}:6: invalid JSON")
    assert "1 more malformed line(s): 10" in message and "file rejected" in message


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="no preference examples"):
        read_preference_jsonl(_write_lines(tmp_path, ["", " "]), TOK)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_preference_jsonl(tmp_path / "nope.jsonl", TOK)


def test_write_then_read_round_trip(tmp_path):
    rows = [{"prompt": "héllo", "chosen": "a", "rejected": [1, 2]},
            PreferenceExample([5], [6], [7])]
    path = tmp_path / "rt.jsonl"
    write_preference_jsonl(path, rows)
    examples = read_preference_jsonl(path, TOK, append_eos=False)
    assert examples[0].prompt == list("héllo".encode()) and examples[0].rejected == [1, 2]
    assert (examples[1].prompt, examples[1].chosen, examples[1].rejected) == ([5], [6], [7])


# ---------------------------------------------------------------------------------------- collation

def test_collate_exact_arrays_and_masks():
    examples = [PreferenceExample([1, 2], [3, 4, 5], [6]), PreferenceExample([7], [8], [9, 10])]
    batch = collate_pairs(examples, max_len=16, pad_id=0)
    P = 0
    np.testing.assert_array_equal(batch.preferred_seq, [[1, 2, 3, 4, 5], [7, 8, P, P, P]])
    np.testing.assert_array_equal(batch.unpreferred_seq, [[1, 2, 6, P, P], [7, 9, 10, P, P]])
    np.testing.assert_array_equal(batch.prompt_mask, [[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(batch.preferred_seq_mask, [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(batch.unpreferred_seq_mask, [[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    assert batch.preferred_seq.dtype == np.int32 and batch.prompt_mask.dtype == bool
    assert batch.num_scored_tokens() == 3 + 1 + 1 + 2
    assert set(batch.as_dict()) == {"preferred_seq", "unpreferred_seq", "prompt_mask",
                                    "preferred_seq_mask", "unpreferred_seq_mask"}
    assert batch.shape == (2, 5)


def test_pad_to_multiple_of_is_capped_at_max_len():
    examples = [PreferenceExample([1, 2], [3, 4, 5], [6])]
    assert collate_pairs(examples, max_len=16, pad_id=0, pad_to_multiple_of=4).shape == (1, 8)
    assert collate_pairs(examples, max_len=6, pad_id=0, pad_to_multiple_of=4).shape == (1, 6)
    assert collate_pairs(examples, max_len=16, pad_id=0, pad_to_length=9).shape == (1, 9)
    with pytest.raises(ValueError, match="pad_to_length"):
        collate_pairs(examples, max_len=16, pad_id=0, pad_to_length=4)


def test_truncation_cuts_completion_end_first():
    ex = PreferenceExample([1, 2, 3], [10, 11, 12, 13, 14], [20])
    batch = collate_pairs([ex], max_len=6, pad_id=0)
    np.testing.assert_array_equal(batch.preferred_seq, [[1, 2, 3, 10, 11, 12]])
    np.testing.assert_array_equal(batch.unpreferred_seq, [[1, 2, 3, 20, 0, 0]])
    np.testing.assert_array_equal(batch.prompt_mask, [[1, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(batch.unpreferred_seq_mask, [[1, 1, 1, 1, 0, 0]])


def test_truncation_keeps_prompt_end_and_min_completion():
    ex = PreferenceExample([1, 2, 3, 4, 5, 6], [10, 11, 12], [20, 21, 22, 23])
    batch = collate_pairs([ex], max_len=5, pad_id=0, min_completion_tokens=2)
    # completions keep 2 tokens; the prompt keeps its last 3 tokens (nearest the answer)
    np.testing.assert_array_equal(batch.preferred_seq, [[4, 5, 6, 10, 11]])
    np.testing.assert_array_equal(batch.unpreferred_seq, [[4, 5, 6, 20, 21]])
    np.testing.assert_array_equal(batch.prompt_mask, [[1, 1, 1, 0, 0]])
    assert batch.num_scored_tokens() == 4


def test_truncation_shares_prompt_cut_and_lets_short_completion_keep_more():
    ex = PreferenceExample([1, 2, 3, 4], [10, 11, 12, 13], [20])
    batch = collate_pairs([ex], max_len=4, pad_id=0, min_completion_tokens=2)
    np.testing.assert_array_equal(batch.preferred_seq, [[3, 4, 10, 11]])
    np.testing.assert_array_equal(batch.unpreferred_seq, [[3, 4, 20, 0]])
    np.testing.assert_array_equal(batch.prompt_mask, [[1, 1, 0, 0]])


def test_truncation_error_policy_and_bad_options():
    ex = PreferenceExample([1, 2, 3], [4, 5], [6], source="f.jsonl", line=7)
    with pytest.raises(DataError, match=r"f.jsonl:7: .*max_len=4"):
        collate_pairs([ex], max_len=4, pad_id=0, truncation="error")
    with pytest.raises(ValueError, match="truncation must be one of"):
        collate_pairs([ex], max_len=4, pad_id=0, truncation="keep_end")
    with pytest.raises(ValueError, match="min_completion_tokens"):
        collate_pairs([ex], max_len=4, pad_id=0, min_completion_tokens=5)
    with pytest.raises(ValueError, match="at least one example"):
        collate_pairs([], max_len=4, pad_id=0)


ids = st.lists(st.integers(0, 50), max_size=12)
nonempty = st.lists(st.integers(0, 50), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(ids, nonempty, nonempty), min_size=1, max_size=5),
       max_len=st.integers(1, 20), min_completion=st.integers(1, 4), multiple=st.integers(1, 8))
def test_collate_properties(rows, max_len, min_completion, multiple):
    min_completion = min(min_completion, max_len)
    examples = [PreferenceExample(p, c, r) for p, c, r in rows]
    batch = collate_pairs(examples, max_len=max_len, pad_id=99, min_completion_tokens=min_completion,
                          pad_to_multiple_of=multiple)
    arrays = batch.as_dict()
    assert len({a.shape for a in arrays.values()}) == 1
    B, N = batch.shape
    assert B == len(rows) and N <= max_len
    for seq, mask in ((batch.preferred_seq, batch.preferred_seq_mask),
                      (batch.unpreferred_seq, batch.unpreferred_seq_mask)):
        scored = (mask & ~batch.prompt_mask).sum(axis=1)
        assert (scored >= 1).all()
        assert not (batch.prompt_mask & ~mask).any()      # prompt positions are real tokens
        assert ((seq == 99) == ~mask).all()                # pads exactly where the mask is False
        lengths = mask.sum(axis=1)
        assert (mask == (np.arange(N) < lengths[:, None])).all()  # right-padded, contiguous
    for row, (p, c, r) in enumerate(rows):
        p_len = batch.prompt_mask[row].sum()
        assert (batch.prompt_mask[row] == (np.arange(N) < p_len)).all()
        assert list(batch.preferred_seq[row, :p_len]) == p[len(p) - p_len:]   # prompt end kept
        kept_c = batch.preferred_seq_mask[row].sum() - p_len
        assert list(batch.preferred_seq[row, p_len:p_len + kept_c]) == c[:kept_c]  # completion start kept
        assert kept_c >= min(len(c), min_completion)
        if len(p) + max(len(c), len(r)) <= max_len:
            assert p_len == len(p) and kept_c == len(c)


# ----------------------------------------------------------------------------------------- batching

def _examples(n, seed=0):
    rng = np.random.default_rng(seed)
    return [PreferenceExample([i % 200], [1] * int(rng.integers(1, 9)), [2] * int(rng.integers(1, 9)),
                              line=i + 1) for i in range(n)]


def _prompt_ids(batch):
    return batch.preferred_seq[:, 0].tolist()


def test_shuffle_is_seeded_and_epochs_cover_dataset():
    examples = _examples(20)
    order_a = [_prompt_ids(b) for b in batch_iterator(examples, batch_size=4, seed=3, max_len=16, pad_id=PAD)]
    order_b = [_prompt_ids(b) for b in batch_iterator(examples, batch_size=4, seed=3, max_len=16, pad_id=PAD)]
    order_c = [_prompt_ids(b) for b in batch_iterator(examples, batch_size=4, seed=4, max_len=16, pad_id=PAD)]
    assert order_a == order_b and order_a != order_c
    expected = np.random.default_rng(3).permutation(20).reshape(5, 4).tolist()
    assert order_a == expected
    epoch1 = [_prompt_ids(b) for b in batch_iterator(examples, batch_size=4, seed=3, epoch=1, max_len=16, pad_id=PAD)]
    assert epoch1 != order_a and sorted(sum(epoch1, [])) == list(range(20))
    unshuffled = [_prompt_ids(b) for b in batch_iterator(examples, batch_size=4, seed=3, shuffle=False, max_len=16, pad_id=PAD)]
    assert unshuffled == np.arange(20).reshape(5, 4).tolist()


def test_get_batch_random_access_matches_fresh_iteration():
    examples = _examples(23)
    kwargs = dict(batch_size=4, seed=11, max_len=12, pad_id=PAD, pad_to_multiple_of=4)
    stream = list(PreferenceDataset(examples, **kwargs).batches(num_steps=17))  # crosses 3 epochs
    assert PreferenceDataset(examples, **kwargs).steps_per_epoch == 5
    for k in [0, 4, 5, 9, 16, 13, 2]:
        fresh = PreferenceDataset(examples, **kwargs).get_batch(k)
        for name, array in fresh.as_dict().items():
            np.testing.assert_array_equal(array, stream[k].as_dict()[name])
    resumed = list(PreferenceDataset(examples, **kwargs).batches(start_step=12, num_steps=5))
    assert [_prompt_ids(b) for b in resumed] == [_prompt_ids(b) for b in stream[12:]]


def test_drop_last_false_wraps_to_fixed_batch_size():
    examples = _examples(10)
    ds = PreferenceDataset(examples, batch_size=4, seed=0, max_len=16, pad_id=PAD, drop_last=False)
    batches = [_prompt_ids(b) for b in ds.epoch(0)]
    assert len(batches) == 3 and all(len(b) == 4 for b in batches)
    flat = sum(batches, [])
    assert sorted(set(flat)) == list(range(10)) and flat[10:] == flat[:2]
    with pytest.raises(ValueError, match="fewer than batch_size"):
        PreferenceDataset(examples[:3], batch_size=4, seed=0, max_len=16, pad_id=PAD)
    small = PreferenceDataset(examples[:3], batch_size=4, seed=0, max_len=16, pad_id=PAD, drop_last=False)
    assert len(_prompt_ids(small.get_batch(0))) == 4


def test_process_slices_partition_global_batch_with_common_shape():
    examples = _examples(32)
    common = dict(batch_size=8, seed=5, max_len=16, pad_id=PAD)
    global_ds = PreferenceDataset(examples, **common)
    for step in range(6):
        parts = [PreferenceDataset(examples, process_index=i, process_count=4, **common).get_batch(step)
                 for i in range(4)]
        assert len({p.shape for p in parts}) == 1 and parts[0].shape[0] == 2
        whole = global_ds.get_batch(step)
        for name in whole.as_dict():
            np.testing.assert_array_equal(np.concatenate([p.as_dict()[name] for p in parts]), whole.as_dict()[name])
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        PreferenceDataset(examples, process_count=3, **common)
    with pytest.raises(ValueError, match="process_index"):
        PreferenceDataset(examples, process_index=4, process_count=4, **common)


def test_group_by_length_reduces_padding_and_stays_deterministic():
    examples = _examples(64, seed=1)
    common = dict(batch_size=4, seed=2, max_len=32, pad_id=PAD)
    plain = PreferenceDataset(examples, **common)
    grouped = PreferenceDataset(examples, group_by_length=True, length_window=32, **common)
    again = PreferenceDataset(examples, group_by_length=True, length_window=32, **common)

    def padding(ds):
        return sum(int((~b.preferred_seq_mask).sum() + (~b.unpreferred_seq_mask).sum()) for b in ds.epoch(0))

    assert padding(grouped) < padding(plain)
    assert [_prompt_ids(b) for b in grouped.epoch(0)] == [_prompt_ids(b) for b in again.epoch(0)]
    assert sorted(sum((_prompt_ids(b) for b in grouped.epoch(0)), [])) == list(range(64))
    np.testing.assert_array_equal(grouped.get_batch(20).preferred_seq,
                                  list(again.batches(num_steps=21))[20].preferred_seq)
    with pytest.raises(ValueError, match="length_window"):
        PreferenceDataset(examples, group_by_length=True, length_window=2, **common)


def test_dataset_validates_truncation_error_up_front():
    examples = _examples(8) + [PreferenceExample([1] * 30, [2], [3], source="x.jsonl", line=9)]
    with pytest.raises(DataError, match="x.jsonl:9"):
        PreferenceDataset(examples, batch_size=4, seed=0, max_len=16, pad_id=PAD, truncation="error")


def test_end_to_end_from_jsonl(tmp_path):
    path = tmp_path / "prefs.jsonl"
    write_preference_jsonl(path, [{"prompt": f"Q{i}?", "chosen": "good answer", "rejected": "bad"} for i in range(6)])
    examples = read_preference_jsonl(path, TOK)
    batch = next(batch_iterator(examples, batch_size=2, seed=0, max_len=64, pad_id=TOK.pad_id))
    row = batch.preferred_seq[0][batch.preferred_seq_mask[0]]
    assert TOK.decode(row).startswith("Q") and row[-1] == TOK.eos_id
    assert TOK.decode(row[~batch.prompt_mask[0][batch.preferred_seq_mask[0]]]) == "good answer"
