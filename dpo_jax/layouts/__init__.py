"""Batch layouts: where each pair's tokens go in the batch arrays, behind one interface (`base.Layout`).

- `padded`: one right-padded row per sequence, chosen and rejected apart (what `dpo_loss` takes).
- `prefix_shared`: each pair one row `[prompt, chosen, rejected]` with the rejected positions restarted at the
  prompt's end: the prompt is computed once.
- `packed`: several prefix-shared pairs per row, grouped by length with first-fit.

All three give the same loss for the same pairs (parity_tests/test_prefix_sharing.py, test_packing.py); the
packed layout groups pairs differently, so its batches (not its math) differ from the other two. A new
layout is one module implementing `base.Layout` and one line in `LAYOUTS`.
"""

from dpo_jax.layouts.base import Layout, PairLogps
from dpo_jax.layouts.packed import PackedLayout
from dpo_jax.layouts.padded import PaddedLayout
from dpo_jax.layouts.prefix_shared import PrefixSharedLayout

__all__ = ["LAYOUTS", "Layout", "PairLogps", "UnsupportedLayoutError", "get_layout", "validate_layout",
           "layout_batches"]

LAYOUTS = {"padded": PaddedLayout, "prefix_shared": PrefixSharedLayout, "packed": PackedLayout}


class UnsupportedLayoutError(NotImplementedError, ValueError):
    """A combination a layout refuses: an invalid option for it (a ValueError) that it does not implement."""


def get_layout(layout="padded", *, pad_id=None, mask_alignment="next_token", checks="nan") -> Layout:
    """The layout object for a name (a Layout instance passes through). `checks` ("nan" or "raise": what a bad
    row does inside jit, `dpo_jax.row_guards`) is the padded layout's; the others take host-built rows."""
    if not isinstance(layout, str):
        return layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if layout == "padded":
        return PaddedLayout(pad_id=pad_id, mask_alignment=mask_alignment, checks=checks)
    if checks != "nan":
        raise ValueError(f"checks={checks!r} applies to the padded layout; layout {layout!r} takes rows built "
                         "on the host from validated examples")
    return LAYOUTS[layout](mask_alignment=mask_alignment)


def validate_layout(layout, *, num_devices=1, grad_accum=1, precompute_ref=False, model=None):
    """Raise (before anything is built or compiled) for combinations a layout does not support."""
    layout = get_layout(layout)
    try:
        layout.check(model, num_devices=num_devices, grad_accum=grad_accum)
    except (ValueError, NotImplementedError) as err:
        raise UnsupportedLayoutError(str(err)) from None
    if precompute_ref and layout.name != "padded":
        raise UnsupportedLayoutError(f"layout {layout.name!r} computes the reference online; drop precompute_ref "
                                     "or use 'padded'")
    return layout


def layout_batches(layout, examples, *, batch_size, seed, max_len, pad_id, mask_alignment="next_token",
                   forward=None, process_index=0, process_count=1, row_len=None, rows=None):
    """The run's batch source for `layout`: `get_batch(step) -> (arrays, num_scored_tokens)`, random access."""
    layout = get_layout(layout, pad_id=pad_id, mask_alignment=mask_alignment)
    return layout.batches(examples, batch_size=batch_size, seed=seed, max_len=max_len, pad_id=pad_id,
                          forward=forward, process_index=process_index, process_count=process_count,
                          row_len=row_len, rows=rows)
