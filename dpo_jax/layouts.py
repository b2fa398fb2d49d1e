"""Batch layouts the training run can use: where each pair's tokens go in the batch arrays.

- `padded`: one right-padded row per sequence, chosen and rejected apart (`data.PreferenceDataset`).
- `prefix_shared`: the same batches, each pair one row `[prompt, chosen, rejected]` with the rejected
  positions restarted at the prompt's end (`prefix_sharing`): the prompt is computed once.
- `packed`: several prefix-shared pairs per row, grouped by length with first-fit (`packing.PackedDataset`).

All three give the same loss for the same pairs (parity_tests/test_prefix_sharing.py, test_packing.py); the
packed layout groups pairs differently, so its batches (not its math) differ from the other two.
"""

from dpo_jax.data import PreferenceDataset
from dpo_jax.train import make_train_step

LAYOUTS = ("padded", "prefix_shared", "packed")


def validate_layout(layout, *, num_devices, grad_accum, precompute_ref):
    """Raise ValueError (before anything is built or compiled) for combinations a layout does not support."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if layout == "padded":
        return
    if num_devices != 1:
        raise ValueError(f"layout {layout!r} runs on one device for now (mesh of {num_devices}); use layout 'padded'")
    if grad_accum != 1:
        raise ValueError(f"layout {layout!r} needs grad_accum 1 (put more pairs in a batch instead)")
    if precompute_ref:
        raise ValueError(f"layout {layout!r} computes the reference online; drop precompute_ref or use 'padded'")


class LayoutBatches:
    """Random access to the run's batches: `get_batch(step) -> (arrays, num_scored_tokens)`, as resume needs."""

    def __init__(self, layout, examples, *, batch_size, seed, max_len, pad_id, mask_alignment,
                 process_index=0, process_count=1, row_len=None, rows=None):
        self.layout, self.pad_id, self.mask_alignment = layout, pad_id, mask_alignment
        self.row_len = row_len or 2 * max_len  # a prefix-shared pair is at most prompt + 2 completions
        if layout == "packed":
            from dpo_jax.packing import PackedDataset

            self.packed = PackedDataset(examples, row_len=self.row_len, rows=rows or batch_size,
                                        pairs_per_batch=batch_size, seed=seed, max_len=max_len)
            self.plans = []  # epoch plans, computed as steps reach them
            return
        self.dataset = PreferenceDataset(
            examples, batch_size=batch_size, seed=seed, process_index=process_index, process_count=process_count,
            max_len=max_len, pad_id=pad_id, drop_last=len(examples) >= batch_size,
            pad_to_multiple_of=max_len)  # one fixed shape: one compile

    def get_batch(self, step):
        if self.layout == "packed":
            return self._packed_batch(step)
        batch = self.dataset.get_batch(step)
        if self.layout == "padded":
            return batch.as_dict(), batch.num_scored_tokens()
        from dpo_jax.prefix_sharing import shared_batch_from_batch

        shared = shared_batch_from_batch(**batch.as_dict(), pad_id=self.pad_id, mask_alignment=self.mask_alignment,
                                         row_len=self.row_len)
        return shared.as_dict(), shared.num_scored_tokens()

    def _packed_batch(self, step):
        from dpo_jax.packing import _layout

        epoch = 0
        while True:
            if epoch == len(self.plans):
                self.plans.append(self.packed.epoch_plan(epoch))
            if step < len(self.plans[epoch]):
                shared = _layout(self.packed.specs, self.plans[epoch][step], row_len=self.packed.row_len,
                                 pairs_per_batch=self.packed.pairs_per_batch, share_prefix=True)
                return shared.as_dict(), shared.num_scored_tokens()
            step -= len(self.plans[epoch])
            epoch += 1


def make_layout_train_step(graphdef, train_config, layout, *, state_shardings=None, batch_shardings=None):
    """The jitted train step for `layout`: the padded one shards over the mesh; the shared layouts run on one
    device with `packing.make_packed_loss_fn`."""
    if layout == "padded":
        return make_train_step(graphdef, train_config, state_shardings=state_shardings,
                               batch_shardings=batch_shardings)
    from dpo_jax.packing import make_packed_loss_fn

    return make_train_step(graphdef, train_config, loss_fn=make_packed_loss_fn(graphdef, train_config))
