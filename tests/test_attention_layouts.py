"""Every batch layout through every attention backend that can run it on CPU: the DPO loss and the policy
gradients equal the einsum oracle's (float32: loss <= 1e-6, gradients <= 1e-5 relative per tensor), on a tiny
GQA model with rotary positions (kv heads read "tiled", as x-transformers does). The padded layout is plain
causal attention (every backend); prefix sharing and packing carry segment and branch ids (jax.nn with a mask
tensor; splash refuses the branch ids by name). "auto" (the default) equals "xla" on CPU bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dpo_jax.dpo import ReferenceLogps, batch_loss
from dpo_jax.forward import ForwardOptions
from dpo_jax.layouts.packed import first_fit, layout_plan
from dpo_jax.layouts.prefix_shared import pair_specs_from_batch, shared_batch_from_batch
from dpo_jax.models.x_transformers import Transformer, TransformerConfig

PAD, PAIRS, SEQ_LEN = 0, 3, 12
CONFIG = TransformerConfig(num_tokens=48, max_seq_len=32, dim=32, depth=1, heads=4, attn_kv_heads=2,
                           attn_dim_head=8, rotary_pos_emb=True)


def perturbed_model(seed=0):
    """A fresh model with every parameter moved off its initialisation (norm gains are 0 when fresh)."""
    model = Transformer(CONFIG, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model, nnx.Param)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
    leaves = [leaf + 0.1 * jax.random.normal(key, leaf.shape, leaf.dtype) for leaf, key in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def padded_batch(seed=0):
    rng = np.random.default_rng(seed)
    prompt_len = rng.integers(3, 6, size=PAIRS)
    positions = np.arange(SEQ_LEN)[None]
    prompt_mask = positions < prompt_len[:, None]
    preferred = rng.integers(1, CONFIG.num_tokens, size=(PAIRS, SEQ_LEN))
    unpreferred = np.where(prompt_mask, preferred, rng.integers(1, CONFIG.num_tokens, size=(PAIRS, SEQ_LEN)))
    lengths = [rng.integers(prompt_len + 2, SEQ_LEN + 1) for _ in range(2)]
    lengths[0][0] = SEQ_LEN
    masks = [positions < n[:, None] for n in lengths]
    return dict(preferred_seq=np.where(masks[0], preferred, PAD), unpreferred_seq=np.where(masks[1], unpreferred, PAD),
                prompt_mask=prompt_mask)


def layout_arrays(layout):
    batch = padded_batch()
    if layout == "padded":
        return batch
    if layout == "prefix_shared":
        return shared_batch_from_batch(**batch, pad_id=PAD, pad_to_multiple_of=8).as_dict()
    specs = pair_specs_from_batch(**batch, pad_id=PAD)
    lengths = [spec.length() for spec in specs]
    row_len = -(-2 * max(lengths) // 8) * 8
    rows = [row for row in first_fit(lengths, row_len=row_len, rows=PAIRS, pairs_per_batch=PAIRS)[0] if row]
    return layout_plan(specs, rows, row_len=row_len, pairs_per_batch=PAIRS).as_dict()


def loss_and_grads(layout, attention):
    policy = perturbed_model()
    graphdef, params = nnx.split(policy, nnx.Param)
    reference = ReferenceLogps(jnp.asarray([-3.0, -2.5, -4.0]), jnp.asarray([-3.5, -2.0, -4.5]))
    arrays = {key: jnp.asarray(value) for key, value in layout_arrays(layout).items()}

    def loss_fn(params):
        model = nnx.merge(graphdef, params)
        return batch_loss(model, reference, arrays, layout=layout, pad_id=PAD,
                          forward=ForwardOptions(attention=attention, score_positions="all"))[0]

    return jax.jit(jax.value_and_grad(loss_fn))(params)


@pytest.fixture(scope="module")
def oracle():
    return {layout: loss_and_grads(layout, "xla") for layout in ("padded", "prefix_shared", "packed")}


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


@pytest.mark.parametrize("layout, attention", [("padded", "jax_nn"), ("prefix_shared", "jax_nn"),
                                               ("packed", "jax_nn"), ("padded", "splash")])
def test_layout_loss_and_gradients_equal_the_oracle(oracle, layout, attention):
    loss, grads = loss_and_grads(layout, attention)
    ref_loss, ref_grads = oracle[layout]
    assert np.isfinite(float(loss)) and abs(float(loss) - float(ref_loss)) <= 1e-6
    for (path, grad), (_, ref) in zip(jax.tree_util.tree_leaves_with_path(grads),
                                      jax.tree_util.tree_leaves_with_path(ref_grads)):
        assert relative(grad, ref) <= 1e-5, (jax.tree_util.keystr(path), relative(grad, ref))


@pytest.mark.parametrize("layout", ["padded", "prefix_shared", "packed"])
def test_auto_is_bit_identical_to_xla_on_cpu(oracle, layout):
    loss, grads = loss_and_grads(layout, "auto")
    ref_loss, ref_grads = oracle[layout]
    assert float(loss) == float(ref_loss)
    for grad, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_array_equal(grad, ref)


@pytest.mark.parametrize("layout", ["prefix_shared", "packed"])
def test_splash_refuses_prefix_sharing_by_name(layout):
    with pytest.raises(ValueError, match="splash.*branch_ids"):
        loss_and_grads(layout, "splash")


def test_default_forward_attention_is_auto():
    assert ForwardOptions().attention == "auto"
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        ForwardOptions(attention="flash")
