"""How robust is the demo's DPO recipe? The sampled preferred / valid rates along 150 DPO steps, for the
demo's recipe (sigmoid + 0.5 x SFT, `dpo_jax.demo.DEMO_RECIPE`) and for plain sigmoid DPO, under what changes
from one machine to another or from one user to another:

- the seed (another SFT reference, other pairs, other samples);
- bf16 compute (`forward.compute_dtype`);
- a relative perturbation `eps` of the initial weights before SFT (`--eps 1e-3`): a stand-in for another CPU,
  whose different rounding sends the 600 SFT steps to a slightly different reference;
- twice the learning rate (the over-optimisation stress).

    python -m benchmarks.studies.demo_recipe --seeds 0,1,2,3 --out /tmp/demo-recipe.jsonl

One JSON line per (condition, recipe): {"seed", "eps", "noise_seed", "recipe", "lr", "compute_dtype",
"result": {"before": rates, "50": rates, ...}}. A full run of the default grid takes ~25 min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
from flax import nnx

from dpo_jax import demo as demo_module
from dpo_jax.layouts.padded import PaddedBatches
from dpo_jax.train import TrainConfig, init_train_state, make_train_step

RECIPES = {
    "demo": dict(loss_type=demo_module.DEMO_RECIPE["loss_type"], loss_weights=demo_module.DEMO_RECIPE["loss_weights"]),
    "sigmoid": dict(loss_type="sigmoid"),
}


def build_demo(seed: int, *, eps: float = 0.0, noise_seed: int = 0):
    """The demo task; with `eps`, every initial weight is scaled by (1 + eps x N(0, 1)) before SFT."""
    if not eps:
        return demo_module.build_demo(seed=seed)
    original = demo_module.train_reference

    def perturbed(model, batches, prompt_len, learning_rate):
        graphdef, params = nnx.split(model, nnx.Param)
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.key(noise_seed), len(leaves))
        leaves = [x * (1 + eps * jax.random.normal(k, x.shape, x.dtype)) for x, k in zip(leaves, keys)]
        nnx.update(model, jax.tree.unflatten(tree, leaves))
        return original(model, batches, prompt_len, learning_rate)

    demo_module.train_reference = perturbed
    try:
        return demo_module.build_demo(seed=seed)
    finally:
        demo_module.train_reference = original


def trajectory(demo, seed: int, recipe: str, *, lr: float, compute_dtype=None, steps: int = 150,
               evals=(50, 100, 150)) -> dict:
    recipe_options = demo_module.DEMO_RECIPE
    config = TrainConfig(beta=recipe_options["beta"], reduction=recipe_options["reduction"], learning_rate=lr,
                         weight_decay=recipe_options["weight_decay"], total_steps=steps,
                         forward=dict(compute_dtype=compute_dtype), **RECIPES[recipe])
    graphdef, state = init_train_state(demo.reference, demo.reference, config, seed=seed)
    step = make_train_step(graphdef, config)
    batches = PaddedBatches(demo.train_examples, batch_size=recipe_options["batch_size"], seed=seed,
                            max_len=demo.max_len, pad_id=demo.pad_id)
    out = {"before": demo.rates(demo.reference, seed=seed)}
    for index in range(steps):
        state, metrics = step(state, batches.get_batch(index)[0])
        if index + 1 in evals:
            out[str(index + 1)] = dict(demo.rates(nnx.merge(graphdef, state.params), seed=seed),
                                       chosen=float(metrics["rewards/chosen"]),
                                       rejected=float(metrics["rewards/rejected"]))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--recipes", default="demo,sigmoid")
    parser.add_argument("--eps", type=float, default=0.0)
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=demo_module.DEMO_RECIPE["learning_rate"])
    parser.add_argument("--bf16", action="store_true", help="also run each recipe with bf16 compute")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    with open(args.out, "a") as handle:
        for seed in map(int, args.seeds.split(",")):
            started = time.time()
            demo = build_demo(seed, eps=args.eps, noise_seed=args.noise_seed)
            for recipe in args.recipes.split(","):
                for compute_dtype in (None, "bfloat16") if args.bf16 else (None,):
                    result = trajectory(demo, seed, recipe, lr=args.lr, compute_dtype=compute_dtype)
                    line = dict(seed=seed, eps=args.eps, noise_seed=args.noise_seed, recipe=recipe, lr=args.lr,
                                compute_dtype=compute_dtype, seconds=round(time.time() - started, 1), result=result)
                    handle.write(json.dumps(line) + "\n")
                    handle.flush()
                    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
