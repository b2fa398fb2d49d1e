"""`python -m parity_tests.loss_report`: the worst measured difference of every loss type (and of the
combination and reweighting options), as a markdown table: the README's closing numbers.

Not a test (the tests assert the bounds; this measures how far inside them each loss stays):
- oracle: torch and JAX in float64 against the float64 NumPy oracle, every divergence and label smoothing the
  loss accepts, 4 draws of 16 pairs (relative to max(1, |x|));
- float32: torch against JAX on the same per-sequence inputs: the loss, and the gradient w.r.t. the
  log-probs and token sums (||g_jax - g_torch|| / ||g_torch||);
- model: `dpo_torch.DPO` forward + backward against `dpo_jax.dpo_loss` under jit + grad on converted weights
  (the parity tests' tiny model, default options; `reduction="sum"` where the loss needs it): the loss and the
  worst policy tensor's relative gradient difference.
"""

from __future__ import annotations

import itertools
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

from dpo_jax import losses as jl  # noqa: E402
from dpo_jax.dpo import dpo_loss  # noqa: E402
from dpo_torch import losses as tl  # noqa: E402
from parity_tests.model_helpers import make_torch_model, perturb_  # noqa: E402
from parity_tests.test_dpo_parity import (as_torch, jax_grads_as_state_dict, make_batch, relative, torch_dpo,  # noqa: E402
                                          torch_grads)
from parity_tests.test_loss_extensions import (expected, jax_arrays, library_loss, make_inputs,  # noqa: E402
                                               torch_arrays)

jax.config.update("jax_default_matmul_precision", "highest")

SMOOTHING = {"sigmoid": [0.0, 0.1], "robust": [0.0, 0.2], "simpo": [0.0, 0.1], "exo_pair": [1e-3, 0.3],
             "aot": [0.0, 0.2], "aot_unpaired": [0.0, 0.2]}
ROWS = {name: dict(loss_type=name) for name in tl.LOSS_TYPES}
ROWS.update({
    "RPO: [sigmoid, sft], weights [1, 0.2]": dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.2]),
    "MPO: [sigmoid, bco_pair, sft], [0.8, 0.2, 1]": dict(loss_type=["sigmoid", "bco_pair", "sft"],
                                                       loss_weights=[0.8, 0.2, 1.0]),
    "WPO: sigmoid, use_weighting": dict(loss_type="sigmoid", use_weighting=True),
    "LD-DPO: sigmoid, ld_alpha 0.5": dict(loss_type="sigmoid", ld_alpha=0.5),
})
MODEL_DEFAULTS = {"exo_pair": dict(label_smoothing=1e-3)}
NEEDS_SUM = ("sigmoid_norm",)


def variants(row):
    """Every divergence x label smoothing the row's (single) loss type accepts; combinations as given."""
    name = row["loss_type"]
    if not isinstance(name, str):
        yield dict(row)
        return
    divergences = tl.DIVERGENCES if name in tl.DIVERGENCE_LOSSES else ("reverse_kl",)
    for divergence, smoothing in itertools.product(divergences, SMOOTHING.get(name, [0.0])):
        yield dict(row, divergence=divergence, label_smoothing=smoothing, alpha=0.3)


def loss_level(row):
    """(worst oracle difference, worst float32 loss difference, worst float32 gradient difference)."""
    worst = [0.0, 0.0, 0.0]
    for variant, draw in itertools.product(list(variants(row)), range(4)):
        options = dict(dict(beta=0.1, label_smoothing=0.0, divergence="reverse_kl", alpha=0.5, gamma=0.5),
                       **{k: v for k, v in variant.items() if k != "ld_alpha"})
        logps, sides = make_inputs(1000 + draw)
        want, _ = expected(logps, sides, options)
        loss_t64, _ = library_loss(tl, *torch_arrays(logps, sides, torch.float64), options)
        with jax.enable_x64(True):
            loss_j64, _ = library_loss(jl, *jax_arrays(logps, sides, jnp.float64), options)
            worst[0] = max(worst[0], relative(loss_t64.item(), want), relative(float(loss_j64), want))
        logps32 = [x.astype(np.float32) for x in logps]
        sides32 = [{k: v.astype(np.float32) for k, v in side.items()} for side in sides]
        t_logps, t_sides = torch_arrays(logps32, sides32, torch.float32, requires_grad=True)
        loss_t, _ = library_loss(tl, t_logps, t_sides, options)
        loss_t.backward()
        jax_sides = jax_arrays(logps32, sides32, jnp.float32)[1]

        def jax_loss(logps, sums):
            return library_loss(jl, logps, [dict(s, logp_sum=x) for s, x in zip(jax_sides, sums)], options)[0]

        loss_j, (g_logps, g_sums) = jax.value_and_grad(jax_loss, argnums=(0, 1))(
            [jnp.asarray(x) for x in logps32], [jnp.asarray(s["logp_sum"]) for s in sides32])
        worst[1] = max(worst[1], relative(loss_j, loss_t.item()))
        reference_free = not tl.needs_reference(options["loss_type"])
        grads_t = [x.grad for i, x in enumerate(t_logps) if not (reference_free and i > 1)]
        grads_t += [s["logp_sum"].grad for s in t_sides]
        grads_j = [g for i, g in enumerate(g_logps) if not (reference_free and i > 1)] + list(g_sums)
        for g_t, g_j in zip(grads_t, grads_j):
            if g_t is None or float(g_t.norm()) == 0:
                continue
            worst[2] = max(worst[2], float(np.linalg.norm(np.asarray(g_j) - g_t.numpy()) / g_t.norm().item()))
    return worst


def model_level(row, models):
    """(loss difference, worst relative gradient difference) of DPO vs dpo_loss on the parity model."""
    policy, reference_state, jax_policy, jax_reference = models
    name = row["loss_type"] if isinstance(row["loss_type"], str) else None
    cell = dict(row, beta=0.1, **MODEL_DEFAULTS.get(name, {}))
    if name in NEEDS_SUM or "ld_alpha" in row:
        cell["reduction"] = "sum"
    batch, pad_id = make_batch("pad_id", seed=5)
    dpo = torch_dpo(policy, reference_state, pad_id=pad_id, **cell)
    policy.zero_grad(set_to_none=True)
    loss_torch = dpo(**as_torch(batch))
    loss_torch.backward()
    reference = None if dpo.is_reference_free else jax_reference
    graphdef, params = nnx.split(jax_policy)
    loss_jax, grads = jax.jit(jax.value_and_grad(lambda p, b: dpo_loss(nnx.merge(graphdef, p), reference, **b,
                                                                       pad_id=pad_id, **cell)[0]))(
        params, {k: jnp.asarray(v) for k, v in batch.items()})
    grads = jax_grads_as_state_dict(graphdef, grads)
    worst_grad = max(float(np.linalg.norm(grads[k] - g) / np.linalg.norm(g))
                     for k, g in torch_grads(policy).items() if np.linalg.norm(g) > 0)
    return relative(loss_jax, loss_torch.item()), worst_grad, cell.get("reduction", "mean")


def main():
    torch.manual_seed(0)
    reference = perturb_(make_torch_model(seed=3), seed=11)
    reference_state = {k: v.clone() for k, v in reference.state_dict().items()}
    policy = perturb_(reference, seed=12, scale=0.05)
    torch_reference = make_torch_model(seed=3)
    torch_reference.load_state_dict(reference_state)
    from dpo_jax import from_torch

    models = (policy, reference_state, from_torch(policy), from_torch(torch_reference))
    print("| loss | oracle, float64 (both faces) | torch vs JAX float32: loss | gradients | "
          "model (DPO vs dpo_loss): loss | gradients (worst tensor) |")
    print("|---|---|---|---|---|---|")
    for label, row in ROWS.items():
        oracle, loss32, grad32 = loss_level(row) if "ld_alpha" not in row else ("-", "-", "-")
        model_loss, model_grad, reduction = model_level(row, models)
        cells = [f"{x:.1e}" if isinstance(x, float) else x for x in (oracle, loss32, grad32)]
        suffix = "" if reduction == "mean" else f" (reduction {reduction})"
        print(f"| `{label}` | {' | '.join(cells)} | {model_loss:.1e}{suffix} | {model_grad:.1e} |", flush=True)


if __name__ == "__main__":
    main()
