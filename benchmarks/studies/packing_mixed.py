"""Mixed-length data: padded batches vs packing vs packing + prefix sharing, side by side in one process.

Every layout trains on the same examples (each exactly once per epoch) with the project's own train steps:
`dpo_jax.train.make_train_step` on `PreferenceDataset` batches (padded to the batch's longest row, rounded
up to --pad-multiple so only a few shapes compile), and the same factory with `layout="packed"` on
`PackedDataset` batches (one fixed shape). Warm-up epoch first (compiles every shape), then the median of
--repeats timed epochs. tokens/s counts scored (completion) tokens, identical for every layout.

    python -m benchmarks.studies.packing_mixed --out benchmarks/results/cpu-2core_packing-mixed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np
from flax import nnx

from dpo_jax.data import PreferenceDataset, PreferenceExample
from dpo_jax.models.x_transformers import Transformer
from dpo_jax.models.x_transformers.config import TransformerConfig
from dpo_jax.layouts.packed import PackedDataset
from dpo_jax.layouts.prefix_shared import with_score_index
from dpo_jax.train import TrainConfig, init_train_state, make_train_step


def mixed_examples(n, *, vocab, max_prompt, max_completion, seed):
    """Log-uniform prompt and completion lengths: many short pairs, a few long ones."""
    rng = np.random.default_rng(seed)
    length = lambda hi: int(np.exp(rng.uniform(np.log(4), np.log(hi))))  # noqa: E731
    draw = lambda k: [int(t) for t in rng.integers(1, vocab, size=k)]  # noqa: E731
    return [PreferenceExample(draw(length(max_prompt)), draw(length(max_completion)), draw(length(max_completion)))
            for _ in range(n)]


def time_epochs(step, state, batches, repeats):
    for batch in batches:  # warm-up: compiles every shape
        state, metrics = step(state, batch)
    jax.block_until_ready(state)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-prompt", type=int, default=256)
    parser.add_argument("--max-completion", type=int, default=96)
    parser.add_argument("--pad-multiple", type=int, default=64)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--row-len", type=int, default=512)
    parser.add_argument("--pairs-per-batch", type=int, default=16)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()

    max_len = args.max_prompt + args.max_completion
    examples = mixed_examples(args.examples, vocab=args.vocab, max_prompt=args.max_prompt,
                              max_completion=args.max_completion, seed=0)
    model_config = TransformerConfig(num_tokens=args.vocab, max_seq_len=max(max_len, args.row_len), dim=args.dim,
                                     depth=args.depth, heads=4, attn_dim_head=args.dim // 4)
    train_config = TrainConfig(beta=0.1, learning_rate=1e-5)
    load_start = os.getloadavg()

    padded = list(PreferenceDataset(examples, batch_size=args.batch_size, seed=0, max_len=max_len, pad_id=0,
                                    drop_last=False, pad_to_multiple_of=args.pad_multiple).epoch(0))
    layouts = {"padded": ([b.as_dict() for b in padded], "padded")}
    for name, share in (("packed", False), ("packed_prefix_sharing", True)):
        data = PackedDataset(examples, row_len=args.row_len, rows=args.rows, pairs_per_batch=args.pairs_per_batch,
                             seed=0, max_len=max_len, share_prefix=share)
        layouts[name] = ([with_score_index(b.as_dict(), train_config.forward) for b in data.epoch(0)], "packed")

    scored = sum(len(e.chosen) + len(e.rejected) for e in examples)
    results = {}
    for name, (batches, layout) in layouts.items():
        graphdef, state = init_train_state(Transformer(model_config, rngs=nnx.Rngs(0)), None, train_config)
        step = make_train_step(graphdef, train_config, layout=layout, donate=False)
        median, times = time_epochs(step, state, batches, args.repeats)
        slots = sum(2 * b["preferred_seq"].size if name == "padded" else b["tokens"].size for b in batches)
        results[name] = dict(batches=len(batches), token_slots=slots, epoch_s=median, epoch_times_s=times,
                             scored_tokens_per_s=scored / median)
        print(f"{name:>22}: {len(batches)} batches, {slots} token slots, epoch {median:.3f} s, "
              f"{scored / median:.0f} scored tok/s", flush=True)
    base = results["padded"]["scored_tokens_per_s"]
    for name in results:
        results[name]["speedup_vs_padded"] = results[name]["scored_tokens_per_s"] / base
        print(f"{name:>22}: {results[name]['speedup_vs_padded']:.2f}x vs padded")
    payload = dict(args=vars(args), scored_tokens=scored, machine=platform.processor() or platform.machine(),
                   cpu_count=os.cpu_count(), loadavg=dict(start=load_start, end=os.getloadavg()),
                   jax=jax.__version__, devices=[str(d) for d in jax.devices()], results=results)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(payload, handle, indent=2)


if __name__ == "__main__":
    main()
