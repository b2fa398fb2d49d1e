"""dpo_torch.DPO against dpo_jax.dpo_loss on converted weights, over the whole option grid.

For every loss type x divergence (where it applies) x reduction x alignment x (pad_id / explicit masks /
none): token log-probs <= 1e-5, loss and metrics <= 1e-6 (relative to max(1, |value|)), gradients w.r.t.
every policy parameter tensor ||g_jax - g_torch|| / ||g_torch|| <= 1e-5. The policy is perturbed away
from the reference, which is itself perturbed away from its initialisation.

The JAX gradients of a grid cell come from one `jax.vjp` of the per-sequence log-probs, pulled back with
that cell's d loss / d log-probs: the chain rule autodiff applies anyway, computed once per
(reduction, alignment, masks) instead of once per cell. `test_dpo_loss_end_to_end` checks the public
`dpo_loss` under jit + grad for every loss type as well.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from x_transformers.dpo import DPO as XTransformersDPO

from dpo_jax import from_torch, state_dict_from_model
from dpo_jax.dpo import ReferenceLogps, dpo_loss, pair_sequence_logprobs, reference_logprobs, sequence_masks
from dpo_jax.logprobs import token_logprobs
from dpo_jax.losses import preference_loss as jax_preference_loss
from dpo_torch import DPO
from dpo_torch.logprobs import log_prob_from_model_and_seq
from dpo_torch.logprobs import sequence_logprobs as torch_sequence_logprobs
from dpo_torch.losses import DIVERGENCE_LOSSES, DIVERGENCES, LOSS_TYPES, METRIC_NAMES, TOKEN_STATISTICS_LOSSES
from parity_tests.model_helpers import make_torch_model, perturb_
from parity_tests.numpy_oracle import oracle_token_logprobs

PAD = 0
BATCH, SEQ_LEN = 4, 16
MASK_MODES = ("pad_id", "explicit", "none")
SMOOTHING = {"sigmoid": 0.1, "robust": 0.1, "exo_pair": 1e-3, "simpo": 0.0}


def loss_cells():
    """Every loss type x divergence where it applies. One beta for all cells: the rewards are beta times
    log-prob differences, so a larger beta (SimPO's paper uses 2.0) scales the ~3e-7 float32 forward-pass
    difference between the frameworks by the same factor; the formulas themselves are checked at the
    papers' betas against the float64 oracle in test_losses.py."""
    for loss_type in LOSS_TYPES:
        if loss_type in TOKEN_STATISTICS_LOSSES:  # they read SequenceStats too: test_loss_extensions_parity.py
            continue
        for divergence in (DIVERGENCES if loss_type in DIVERGENCE_LOSSES else ("reverse_kl",)):
            yield dict(loss_type=loss_type, divergence=divergence, label_smoothing=SMOOTHING.get(loss_type, 0.0),
                       alpha=0.3, gamma=0.5, beta=0.1)


def make_batch(mask_mode, seed=0):
    """Prompts of 3-7 tokens, completions of different lengths, right-padded with PAD (or full rows)."""
    rng = np.random.default_rng(seed)
    preferred = rng.integers(1, 96, size=(BATCH, SEQ_LEN))
    unpreferred = rng.integers(1, 96, size=(BATCH, SEQ_LEN))
    prompt_len = rng.integers(3, 8, size=BATCH)
    positions = np.arange(SEQ_LEN)[None, :]
    prompt_mask = positions < prompt_len[:, None]
    unpreferred = np.where(prompt_mask, preferred, unpreferred)  # the prompt is shared
    if mask_mode == "none":
        return dict(preferred_seq=preferred, unpreferred_seq=unpreferred, prompt_mask=prompt_mask), None
    preferred_len = rng.integers(prompt_len + 2, SEQ_LEN + 1)
    unpreferred_len = rng.integers(prompt_len + 2, SEQ_LEN + 1)
    preferred_mask = positions < preferred_len[:, None]
    unpreferred_mask = positions < unpreferred_len[:, None]
    batch = dict(preferred_seq=np.where(preferred_mask, preferred, PAD),
                 unpreferred_seq=np.where(unpreferred_mask, unpreferred, PAD), prompt_mask=prompt_mask)
    if mask_mode == "explicit":
        batch.update(preferred_seq_mask=preferred_mask, unpreferred_seq_mask=unpreferred_mask)
        return batch, None
    return batch, PAD


@pytest.fixture(scope="module")
def models():
    """(torch policy, reference state_dict, JAX policy, JAX reference): policy != reference != init."""
    reference = perturb_(make_torch_model(seed=3), seed=11)
    reference_state = {k: v.clone() for k, v in reference.state_dict().items()}
    policy = perturb_(reference, seed=12, scale=0.05)
    torch_reference = make_torch_model(seed=3)
    torch_reference.load_state_dict(reference_state)
    jax_reference = from_torch(torch_reference)
    return policy, reference_state, from_torch(policy), jax_reference


def torch_dpo(policy, reference_state, **options):
    dpo = DPO(policy, **options)
    if dpo.ref_model is not None:
        dpo.ref_model.load_state_dict(reference_state)
    return dpo


def as_torch(batch):
    return {k: torch.from_numpy(v) for k, v in batch.items()}


def relative(a, b):
    return abs(float(a) - float(b)) / max(1.0, abs(float(b)))


def torch_grads(policy):
    return {name: p.grad.detach().numpy().copy() for name, p in policy.named_parameters()}


def jax_grads_as_state_dict(graphdef, grad_state):
    return state_dict_from_model(nnx.merge(graphdef, grad_state))


def assert_grads_match(grads_torch, grads_jax, context):
    for name, g_torch in grads_torch.items():
        g_jax = grads_jax[name]
        norm = np.linalg.norm(g_torch)
        error = np.linalg.norm(g_jax - g_torch)
        assert norm > 0, f"{context}: torch gradient of {name} is zero; the test would not be able to fail"
        assert error / norm <= 1e-5, f"{context}: {name} relative gradient error {error / norm:.2e}"


@pytest.mark.parametrize("mask_mode", MASK_MODES)
def test_token_logprobs_match_torch_and_oracle(models, mask_mode):
    policy, _, jax_policy, _ = models
    batch, _ = make_batch(mask_mode)
    for key in ("preferred_seq", "unpreferred_seq"):
        seq = batch[key]
        with torch.no_grad():
            torch_lp = log_prob_from_model_and_seq(policy, torch.from_numpy(seq)).numpy()
            logits64 = policy(torch.from_numpy(seq[:, :-1])).double().numpy()
        jax_lp = np.asarray(token_logprobs(jax_policy(jnp.asarray(seq[:, :-1])), jnp.asarray(seq[:, 1:])))
        assert np.abs(jax_lp - torch_lp).max() <= 1e-5
        assert np.abs(jax_lp - oracle_token_logprobs(logits64, seq)).max() <= 1e-5


def torch_sequence_logps(model, batch, chosen_mask, rejected_mask, reduction):
    with torch.no_grad():
        return [torch_sequence_logprobs(log_prob_from_model_and_seq(model, torch.from_numpy(batch[key])),
                                        torch.from_numpy(np.asarray(mask)), reduction).numpy()
                for key, mask in (("preferred_seq", chosen_mask), ("unpreferred_seq", rejected_mask))]


@pytest.mark.parametrize("mask_mode", MASK_MODES)
@pytest.mark.parametrize("mask_alignment", ["next_token", "x_transformers"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_metrics_and_gradients_match_over_the_grid(models, mask_mode, mask_alignment, reduction):
    """Three checks per cell.

    1. Same log-probs in, same loss out: JAX's loss and metrics computed from torch's per-sequence log-probs
       equal DPO.forward's within 1e-6 (relative to max(1, |value|)).
    2. End to end: the frameworks' per-sequence log-probs differ by float32 forward-pass rounding (tokens
       <= 1e-5, checked above). With reduction="sum" they are ~-40, and most losses act on differences of
       them (u = p - r), so that rounding reaches the loss amplified; the loss gap must not exceed
       1e-6 * max(1, |loss|) plus the first-order propagation sum_i |dL/dlogp_i| * |dlogp_i| of the measured
       log-prob gap. Anything beyond rounding (a wrong formula, mask or sign) is orders of magnitude larger.
    3. Gradients w.r.t. every policy tensor: relative error <= 1e-5, both frameworks differentiating the
       loss at the same per-sequence log-probs (torch's), pulled back through JAX's own backward pass. Fed
       each framework's own log-probs instead, the cotangent dL/dlogp inherits the forward gap, amplified by
       the loss's curvature: DiscoPOP's m = sigmoid(z / 0.05) has curvature ~1/tau^2 = 400, which turned a
       ~1e-6 summed log-prob gap into a 1.56e-5 relative gradient difference (measured, reduction="sum").
       test_dpo_loss_end_to_end checks the fully end-to-end jit + grad path for every loss type.
    """
    policy, reference_state, jax_policy, jax_reference = models
    batch, pad_id = make_batch(mask_mode)
    jnp_batch = {k: jnp.asarray(v) for k, v in batch.items()}
    chosen_mask, rejected_mask = sequence_masks(
        jnp_batch["preferred_seq"], jnp_batch["unpreferred_seq"], prompt_mask=jnp_batch["prompt_mask"],
        preferred_seq_mask=jnp_batch.get("preferred_seq_mask"),
        unpreferred_seq_mask=jnp_batch.get("unpreferred_seq_mask"), pad_id=pad_id, mask_alignment=mask_alignment)
    graphdef, params = nnx.split(jax_policy)

    def policy_logps(params):
        return pair_sequence_logprobs(nnx.merge(graphdef, params), jnp_batch["preferred_seq"],
                                      jnp_batch["unpreferred_seq"], chosen_mask, rejected_mask, reduction)

    jax_policy_logps, pull_back = jax.vjp(policy_logps, params)
    apply_pull_back = jax.jit(lambda pull_back, cotangent: pull_back(cotangent))
    jax_reference_logps = pair_sequence_logprobs(jax_reference, jnp_batch["preferred_seq"],
                                                 jnp_batch["unpreferred_seq"], chosen_mask, rejected_mask, reduction)
    torch_reference = make_torch_model(seed=3)
    torch_reference.load_state_dict(reference_state)
    torch_logps = (torch_sequence_logps(policy, batch, chosen_mask, rejected_mask, reduction)
                   + torch_sequence_logps(torch_reference, batch, chosen_mask, rejected_mask, reduction))
    jax_logps = [np.asarray(x) for x in (*jax_policy_logps, *jax_reference_logps)]
    logp_gap = [np.abs(j - t) for j, t in zip(jax_logps, torch_logps)]
    for gap, t in zip(logp_gap, torch_logps):
        assert (gap / np.maximum(1.0, np.abs(t))).max() <= 1e-5

    torch_reference_logps = tuple(torch.from_numpy(x) for x in torch_logps[2:])
    for cell in loss_cells():
        context = f"{cell} {reduction} {mask_alignment} {mask_mode}"
        dpo = torch_dpo(policy, reference_state, pad_id=pad_id, reduction=reduction, mask_alignment=mask_alignment,
                        **cell)
        policy.zero_grad(set_to_none=True)
        reference_logps = None if dpo.is_reference_free else torch_reference_logps
        loss_torch, metrics_torch = dpo(**as_torch(batch), reference_logps=reference_logps, return_metrics=True)
        loss_torch.backward()

        def loss_of_logps(*logps):
            return jax_preference_loss(*logps, **cell)

        # 1. identical log-probs in
        loss_same_in, metrics_same_in = loss_of_logps(*[jnp.asarray(x) for x in torch_logps])
        assert relative(loss_same_in, loss_torch.item()) <= 1e-6, context
        for name in METRIC_NAMES:
            assert relative(metrics_same_in[name], metrics_torch[name].item()) <= 1e-6, f"{context} {name}"

        # 2. end to end, within the propagated float32 forward-pass gap
        (loss_jax, metrics_jax), logp_grads = jax.value_and_grad(loss_of_logps, argnums=(0, 1, 2, 3),
                                                                 has_aux=True)(*jax_logps)
        propagated = sum(float(np.abs(np.asarray(g)) @ gap) for g, gap in zip(logp_grads, logp_gap))
        loss_gap = abs(float(loss_jax) - loss_torch.item())
        assert loss_gap <= 1e-6 * max(1.0, abs(loss_torch.item())) + propagated, f"{context} gap {loss_gap:.2e}"
        for name in METRIC_NAMES:
            assert relative(metrics_jax[name], metrics_torch[name].item()) <= 1e-5, f"{context} {name}"

        # 3. gradients w.r.t. every policy parameter, cotangent taken at the same log-probs as torch
        same_in_cotangent = jax.grad(lambda *logps: loss_of_logps(*logps)[0], argnums=(0, 1))(
            *[jnp.asarray(x) for x in torch_logps])
        (grad_state,) = apply_pull_back(pull_back, same_in_cotangent)
        assert_grads_match(torch_grads(policy), jax_grads_as_state_dict(graphdef, grad_state), context)


@pytest.mark.parametrize("cell", list(loss_cells()), ids=lambda c: f"{c['loss_type']}-{c['divergence']}")
def test_dpo_loss_end_to_end(models, cell):
    """The public dpo_loss under jit and grad equals DPO.forward + backward (pad_id masks, defaults)."""
    policy, reference_state, jax_policy, jax_reference = models
    batch, pad_id = make_batch("pad_id", seed=5)
    dpo = torch_dpo(policy, reference_state, pad_id=pad_id, **cell)
    policy.zero_grad(set_to_none=True)
    loss_torch, metrics_torch = dpo(**as_torch(batch), return_metrics=True)
    loss_torch.backward()

    reference = None if cell["loss_type"] == "simpo" else jax_reference
    graphdef, params = nnx.split(jax_policy)

    @jax.jit
    def loss_and_grad(params, batch):
        def loss_fn(params):
            return dpo_loss(nnx.merge(graphdef, params), reference, **batch, pad_id=pad_id, **cell)
        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss_jax, metrics_jax), grad_state = loss_and_grad(params, {k: jnp.asarray(v) for k, v in batch.items()})
    assert relative(loss_jax, loss_torch.item()) <= 1e-6
    for name in METRIC_NAMES:
        assert relative(metrics_jax[name], metrics_torch[name].item()) <= 1e-6, name
    assert_grads_match(torch_grads(policy), jax_grads_as_state_dict(graphdef, grad_state), cell["loss_type"])


@pytest.mark.parametrize("mask_mode", MASK_MODES)
def test_x_transformers_alignment_equals_x_transformers_dpo(models, mask_mode):
    policy, reference_state, jax_policy, jax_reference = models
    batch, pad_id = make_batch(mask_mode, seed=7)
    x_dpo = XTransformersDPO(policy, beta=0.1, pad_id=pad_id)
    x_dpo.ref_model.load_state_dict(reference_state)
    with torch.no_grad():
        expected = x_dpo(**as_torch(batch)).item()
    loss, _ = dpo_loss(jax_policy, jax_reference, **batch, pad_id=pad_id, mask_alignment="x_transformers")
    assert relative(loss, expected) <= 1e-6
    default_loss, _ = dpo_loss(jax_policy, jax_reference, **batch, pad_id=pad_id)
    assert abs(float(default_loss) - expected) > 1e-6, "the alignments must differ on a perturbed policy"


def test_precomputed_reference_logps_give_the_same_loss(models):
    _, _, jax_policy, jax_reference = models
    batch, pad_id = make_batch("pad_id", seed=2)
    online, _ = dpo_loss(jax_policy, jax_reference, **batch, pad_id=pad_id)
    cached = reference_logprobs(jax_reference, **{k: jnp.asarray(v) for k, v in batch.items()}, pad_id=pad_id)
    assert isinstance(cached, ReferenceLogps)
    precomputed, _ = dpo_loss(jax_policy, cached, **batch, pad_id=pad_id)
    assert float(precomputed) == float(online)


def test_reference_receives_no_gradient(models):
    _, _, jax_policy, jax_reference = models
    batch, pad_id = make_batch("pad_id", seed=3)
    policy_graph, policy_params = nnx.split(jax_policy)
    reference_graph, reference_params = nnx.split(jax_reference)

    def loss_fn(policy_params, reference_params):
        loss, _ = dpo_loss(nnx.merge(policy_graph, policy_params), nnx.merge(reference_graph, reference_params),
                           **batch, pad_id=pad_id)
        return loss

    policy_grads, reference_grads = jax.grad(loss_fn, argnums=(0, 1))(policy_params, reference_params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(reference_grads))
    assert any(float(jnp.abs(g).max()) > 0.0 for g in jax.tree.leaves(policy_grads))


def test_jitted_loss_does_not_recompile_when_only_data_changes(models):
    _, _, jax_policy, jax_reference = models
    graphdef, params = nnx.split(jax_policy)
    traces = []

    @jax.jit
    def step(params, batch):
        traces.append(1)
        return dpo_loss(nnx.merge(graphdef, params), jax_reference, **batch, pad_id=PAD)[0]

    for seed in range(3):
        batch, _ = make_batch("pad_id", seed=seed)
        step(params, {k: jnp.asarray(v) for k, v in batch.items()}).block_until_ready()
    assert len(traces) == 1


@pytest.mark.parametrize("loss_type", [name for name in LOSS_TYPES if name not in TOKEN_STATISTICS_LOSSES])
def test_extreme_logits_give_finite_loss_and_gradients(models, loss_type):
    """Logits of magnitude ~1e4: no NaN or Inf in the loss or any gradient."""
    _, _, jax_policy, jax_reference = models
    extreme = nnx.clone(jax_policy)
    head = extreme.to_logits.kernel
    head[...] = head[...] / jnp.abs(head[...]).max() * 3e3
    batch, pad_id = make_batch("pad_id", seed=4)
    logits = extreme(jnp.asarray(batch["preferred_seq"][:, :-1]))
    assert float(jnp.abs(logits).max()) > 1e4 * 0.5
    cell = next(c for c in loss_cells() if c["loss_type"] == loss_type)
    reference = None if loss_type == "simpo" else jax_reference
    graphdef, params = nnx.split(extreme)

    def loss_fn(params):
        return dpo_loss(nnx.merge(graphdef, params), reference, **batch, pad_id=pad_id, **cell)[0]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    assert np.isfinite(float(loss))
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("bad, error, message", [
    (dict(loss_type="nope"), ValueError, "unknown loss_type"),
    (dict(divergence="nope"), ValueError, "unknown divergence"),
    (dict(reduction="median"), ValueError, "unknown reduction"),
    (dict(mask_alignment="left"), ValueError, "unknown mask_alignment"),
    (dict(loss_type="exo_pair", label_smoothing=0.0), ValueError, "label_smoothing"),
    (dict(divergence="alpha_divergence", alpha=1.5), ValueError, "alpha must lie in"),
    (dict(reference=None), ValueError, "needs a reference"),
])
def test_dpo_loss_rejects_bad_options(models, bad, error, message):
    _, _, jax_policy, jax_reference = models
    batch, pad_id = make_batch("pad_id")
    options = dict(bad)
    reference = options.pop("reference", jax_reference)
    with pytest.raises(error, match=message):
        dpo_loss(jax_policy, reference, **batch, pad_id=pad_id, **options)


@pytest.mark.parametrize("mutate, error, message", [
    (lambda b: b.update(preferred_seq=b["preferred_seq"].astype(np.float32)), TypeError, "integer token ids"),
    (lambda b: b.update(preferred_seq=b["preferred_seq"][:, :-1]), ValueError, "same shape"),
    (lambda b: b["unpreferred_seq"].__setitem__((1, 5), 96), ValueError, r"token id 96 at \(row 1, position 5\)"),
    (lambda b: b.update(prompt_mask=b["prompt_mask"].astype(np.int32)), TypeError, "prompt_mask must be a bool"),
    (lambda b: b.update(prompt_mask=b["prompt_mask"][:, :3]), ValueError, "prompt_mask must have shape"),
    (lambda b: b["prompt_mask"].__setitem__(2, True), ValueError, "row 2 has no scored token"),
    (lambda b: b.update(preferred_seq=np.ones((BATCH, 26), np.int64), unpreferred_seq=np.ones((BATCH, 26), np.int64),
                        prompt_mask=np.zeros((BATCH, 26), bool)), ValueError, "max_seq_len is 24"),
])
def test_dpo_loss_rejects_bad_input(models, mutate, error, message):
    _, _, jax_policy, jax_reference = models
    batch, pad_id = make_batch("pad_id")
    batch = {k: v.copy() for k, v in batch.items()}
    mutate(batch)
    with pytest.raises(error, match=message):
        dpo_loss(jax_policy, jax_reference, **batch, pad_id=pad_id)
