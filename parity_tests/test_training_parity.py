"""Cross-framework training parity: 20 AdamW steps of `dpo_torch.DPO` (torch.optim.AdamW) and of the dpo_jax
train step (optax adamw) from identical weights on identical batches give the same per-step losses and the same
final parameters.

optax `adamw(eps=1e-8, eps_root=0, weight_decay=wd)` is `torch.optim.AdamW(eps=1e-8, weight_decay=wd)`: both add
eps after the square root of the bias-corrected second moment and decay weights by `lr * wd * p` (decoupled).
"""

import numpy as np
import pytest
import torch

from dpo_jax.models.x_transformers.weights import from_torch, state_dict_from_model
from dpo_jax.data import PreferenceDataset, PreferenceExample
from dpo_jax.train import TrainConfig, init_train_state, make_train_step
from dpo_torch import DPO
from parity_tests.model_helpers import make_torch_model, perturb_

STEPS = 20
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01
LOSS_TOLERANCE = 1e-5  # |l_jax - l_torch| / max(1, |l_torch|): ipo losses are ~25 (float32 ulp 2e-6)
PARAM_TOLERANCE = 1e-5  # per tensor: ||p_jax - p_torch|| / ||p_torch||


def dataset(num_tokens, max_len=16):
    rng = np.random.default_rng(0)
    examples = [PreferenceExample(rng.integers(1, num_tokens, 5).tolist(),
                                  rng.integers(1, num_tokens, rng.integers(2, 7)).tolist(),
                                  rng.integers(1, num_tokens, rng.integers(2, 7)).tolist()) for _ in range(32)]
    return PreferenceDataset(examples, batch_size=4, seed=0, max_len=max_len, pad_id=0, pad_to_multiple_of=max_len)


@pytest.mark.parametrize("loss_type, reduction", [("sigmoid", "mean"), ("sigmoid", "sum"), ("ipo", "mean")])
def test_twenty_adamw_steps_match_torch(loss_type, reduction, record_worst_diff):
    wrapper = perturb_(make_torch_model(seed=0, num_tokens=32, max_seq_len=16, dim=32, depth=2, heads=2,
                                        attn_dim_head=16))
    policy = from_torch(wrapper)
    data = dataset(32)

    dpo = DPO(wrapper, beta=0.1, loss_type=loss_type, reduction=reduction)
    dpo.train()
    optimizer = torch.optim.AdamW(dpo.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=WEIGHT_DECAY)
    config = TrainConfig(beta=0.1, loss_type=loss_type, reduction=reduction, learning_rate=LEARNING_RATE,
                         weight_decay=WEIGHT_DECAY, eps=1e-8, grad_clip=None, schedule="constant", warmup_steps=0)
    graphdef, state = init_train_state(policy, None, config)
    step = make_train_step(graphdef, config)

    worst_loss = 0.0
    for index in range(STEPS):
        batch = data.get_batch(index).as_dict()
        torch_batch = {k: torch.from_numpy(v.astype(np.int64) if v.dtype.kind in "iu" else v)
                       for k, v in batch.items()}
        loss = dpo(torch_batch["preferred_seq"], torch_batch["unpreferred_seq"],
                   prompt_mask=torch_batch["prompt_mask"], preferred_seq_mask=torch_batch["preferred_seq_mask"],
                   unpreferred_seq_mask=torch_batch["unpreferred_seq_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        diff = abs(float(metrics["loss"]) - loss.item()) / max(1.0, abs(loss.item()))
        worst_loss = max(worst_loss, diff)
        assert diff <= LOSS_TOLERANCE, f"step {index + 1}: jax {float(metrics['loss'])} torch {loss.item()}"

    import flax.nnx as nnx

    jax_params = state_dict_from_model(nnx.merge(graphdef, state.params))
    torch_params = {k: v.detach().numpy() for k, v in wrapper.state_dict().items()}
    worst_param = 0.0
    for key, value in jax_params.items():
        expected = torch_params[key].astype(np.float64)
        relative = np.linalg.norm(np.asarray(value, np.float64) - expected) / max(np.linalg.norm(expected), 1e-12)
        worst_param = max(worst_param, float(relative))
        assert relative <= PARAM_TOLERANCE, f"{key}: relative diff {relative:.2e}"
    record_worst_diff(f"training {loss_type}/{reduction}: loss", worst_loss)
    record_worst_diff(f"training {loss_type}/{reduction}: params", worst_param)
