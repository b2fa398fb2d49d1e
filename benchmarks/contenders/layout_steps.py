"""Contenders with prefix sharing and packing: the library's train step with `layout=` on the same pairs.

- `dpo_jax_prefix_sharing`: one [prompt, chosen, rejected] row per pair (the prompt computed once).
- `dpo_jax_packed`: prefix-shared pairs packed first-fit into rows of twice the longest shared pair.
Both send only the scored positions to the head (`score_index`), as `dpo-jax train --layout ...` does.
"""

from __future__ import annotations

from benchmarks.contenders.inputs import PAD_ID, batch_arrays
from benchmarks.contenders.jax_steps import library_step, train_config
from benchmarks.contenders.registry import contender


@contender("dpo_jax_prefix_sharing", framework="jax")
def dpo_jax_prefix_sharing(setup, batch, config):
    from dpo_jax.layouts.prefix_shared import shared_batch_from_batch, with_score_index
    options = train_config(config)
    shared = shared_batch_from_batch(**batch_arrays(batch), pad_id=PAD_ID, pad_to_multiple_of=8)
    return library_step(setup, with_score_index(shared.as_dict(), options.forward), options, layout="prefix_shared")


@contender("dpo_jax_packed", framework="jax")
def dpo_jax_packed(setup, batch, config):
    from dpo_jax.layouts.packed import first_fit, layout_plan
    from dpo_jax.layouts.prefix_shared import pair_specs_from_batch, with_score_index
    options = train_config(config)
    specs = pair_specs_from_batch(**batch_arrays(batch), pad_id=PAD_ID)
    lengths = [s.length() for s in specs]
    row_len = -(-2 * max(lengths) // 8) * 8
    plan = first_fit(lengths, row_len=row_len, rows=len(specs), pairs_per_batch=len(specs))
    rows = [row for row in plan[0] if row]
    shared = layout_plan(specs, rows, row_len=row_len, pairs_per_batch=len(specs))
    return library_step(setup, with_score_index(shared.as_dict(), options.forward), options, layout="packed")
