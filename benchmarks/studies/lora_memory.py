"""The memory model of full vs LoRA DPO (docs/lora.md): its predictions for Llama 1B / 8B / 70B, and its check on
the cpu-small benchmark model, where every term is measured.

Bytes per parameter, P base parameters, A adapter parameters:

- full DPO (mixed precision, the usual accounting): bf16 policy 2 + fp32 master 4 + bf16 gradient 2 + fp32 Adam
  moments 8 + bf16 reference 2 = 18 P; dpo_jax as it runs today keeps float32 weights (policy = master 4,
  gradient 4, Adam 8, reference copy 4) = 20 P;
- LoRA: the base once, in its checkpoint dtype (bf16: 2 P), shared by the policy and the reference; the adapters
  in float32 with their gradient and Adam moments, 16 A;
- activations: not per parameter; both runs keep the policy's (the adapters' gradient flows back through every
  layer, so LoRA saves the same layer inputs as full DPO, plus each adapter's rank-r intermediate), and neither
  keeps the reference's (computed without gradient). They scale with tokens x hidden x layers and are what remat
  and the chunked head cut.

The adapter count A is counted from the code, not a formula: `dpo_jax.apply_lora` on an abstract
(`nnx.eval_shape`) Llama of each size, rank 16 on every linear layer but the head.

The check (`--check`): on the benchmark's cpu-small model (the x-transformers port, float32) the bytes of the
train state that `dpo_jax.train.init_train_state` builds (policy, reference, optimizer state) for full DPO and
for LoRA, against the model's per-parameter prediction (the gradient is not in the state: it is a tree shaped
like the trained parameters, 4 bytes each in float32, alive during the step). The whole-step peak, activations
included, is the benchmark's (`python -m benchmarks --contenders dpo_jax,dpo_jax_lora`).

    python -m benchmarks.studies.lora_memory [--check] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

GB = 1e9
LLAMA = {  # (hidden, intermediate, layers, heads, kv heads, tied): the published Llama 3 shapes, vocab 128256
    "1B (Llama-3.2-1B)": (2048, 8192, 16, 32, 8, True),
    "8B (Llama-3-8B)": (4096, 14336, 32, 32, 8, False),
    "70B (Llama-3-70B)": (8192, 28672, 80, 64, 8, False),
}
FULL_MIXED = {"policy (bf16)": 2, "master weights (fp32)": 4, "gradient (bf16)": 2, "Adam moments (fp32)": 8,
              "reference (bf16)": 2}
FULL_FLOAT32 = {"policy = master (fp32)": 4, "gradient (fp32)": 4, "Adam moments (fp32)": 8, "reference (fp32)": 4}
ADAPTER = {"adapter (fp32)": 4, "gradient (fp32)": 4, "Adam moments (fp32)": 8}


def counts(hidden, intermediate, layers, heads, kv_heads, tied, rank=16) -> tuple[int, int]:
    """(base parameters, rank-`rank` all-linear adapter parameters) of an abstract Llama, from the code."""
    import jax
    from flax import nnx

    import dpo_jax
    from dpo_jax.models.llama import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=128256, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=8192, tie_word_embeddings=tied)
    model = nnx.eval_shape(lambda: dpo_jax.apply_lora(LlamaForCausalLM(config, rngs=nnx.Rngs(0)),
                                                      dpo_jax.LoraConfig(r=rank, alpha=2 * rank)))
    _, adapters, base = nnx.split(model, nnx.LoRAParam, nnx.Param)
    size = lambda tree: int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))  # noqa: E731
    return size(base), size(adapters)


def predict(base: int, adapters: int, base_bytes: int = 2) -> dict:
    """Bytes before activations of full DPO (both accountings) and of LoRA (base in `base_bytes` per parameter)."""
    return {"full_mixed": base * sum(FULL_MIXED.values()), "full_float32": base * sum(FULL_FLOAT32.values()),
            "lora": base * base_bytes + adapters * sum(ADAPTER.values())}


def table() -> list[dict]:
    rows = []
    for name, shape in LLAMA.items():
        base, adapters = counts(*shape)
        rows.append(dict(model=name, base_params=base, adapter_params=adapters, **predict(base, adapters)))
    return rows


def tree_bytes(tree) -> int:
    import jax
    return int(sum(np.dtype(leaf.dtype).itemsize * np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def check() -> dict:
    """Measured state and gradient bytes on the cpu-small port vs the model's prediction (float32 everywhere)."""
    import jax
    from flax import nnx

    import dpo_jax
    from benchmarks.contenders.inputs import make_setup
    from benchmarks.presets import PRESETS
    from dpo_jax.train import TrainConfig, init_train_state

    config = TrainConfig(beta=0.1, learning_rate=1e-5, pad_id=0, total_steps=10)
    model = make_setup(PRESETS["cpu-small"][0], "jax").jax_model
    base = int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))
    _, full = init_train_state(model, None, config)
    lora_model = dpo_jax.apply_lora(model, dpo_jax.LoraConfig(r=16, alpha=32))
    _, lora = init_train_state(lora_model, None, config)
    adapters = int(sum(np.prod(x.shape) for x in jax.tree.leaves(lora.params)))
    measured = {
        "full": {"policy": tree_bytes(full.params), "reference": tree_bytes(full.ref_params),
                 "optimizer": tree_bytes(full.opt_state)},
        "lora": {"adapters": tree_bytes(lora.params), "base (shared)": tree_bytes(lora.ref_params.base),
                 "reference extra": tree_bytes(lora.ref_params.adapters), "optimizer": tree_bytes(lora.opt_state)},
    }
    predicted = {"full": {"policy": 4 * base, "reference": 4 * base, "optimizer": 8 * base},
                 "lora": {"adapters": 4 * adapters, "base (shared)": 4 * base, "reference extra": 0,
                          "optimizer": 8 * adapters}}
    totals = {kind: {"measured": sum(measured[kind].values()), "predicted": sum(predicted[kind].values())}
              for kind in measured}
    return {"base_params": base, "adapter_params": adapters, "measured": measured, "predicted": predicted,
            "totals": totals, "gradient_predicted": {"full": 4 * base, "lora": 4 * adapters}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.lora_memory",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="also measure the cpu-small train states")
    parser.add_argument("--out", help="FILE.json")
    args = parser.parse_args(argv)
    result = {"predictions": table()}
    print("| model | base params | LoRA r16 params | full, mixed (18 B/p) | full, float32 (20 B/p) | LoRA, bf16 base |")
    print("|---|---|---|---|---|---|")
    for row in result["predictions"]:
        print(f"| {row['model']} | {row['base_params']:,} | {row['adapter_params']:,} "
              f"({100 * row['adapter_params'] / row['base_params']:.2f}%) | {row['full_mixed'] / GB:.1f} GB | "
              f"{row['full_float32'] / GB:.1f} GB | {row['lora'] / GB:.1f} GB |")
    if args.check:
        result["check"] = check()
        print(json.dumps(result["check"], indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
