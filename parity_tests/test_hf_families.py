"""The Hugging Face families (Llama, Llama 3, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3) against transformers 5.24.

Per variant (`parity_tests/hf_models.py`: tiny, depth 2, every parameter perturbed, float32, eager attention):

- logits vs the transformers model <= 1e-5 relative, on right-padded batches (with and without the padding mask);
- torch -> disk -> JAX -> disk (sharded) -> torch: the same state_dict bit for bit, the same config, and bfloat16
  checkpoints stay bfloat16 bit for bit;
- `dpo_jax.dpo_loss` vs `dpo_torch.DPO` on the same weights: loss and metrics <= 1e-6, gradients of every policy
  tensor <= 1e-5 relative, both reductions;
- the prefix-shared and packed layouts give the padded log-probs (<= 1e-5): positions restart per branch,
  windows are measured on positions;
- each variant's own feature changes the logits (so agreeing on them proves the feature), the chunked head
  applies Gemma's final-logit softcap, and the sliding-window boundary is transformers' own rule.
"""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from transformers.masking_utils import causal_mask_function, sliding_window_overlay

import dpo_jax
from dpo_jax.data import PreferenceExample, collate_pairs
from dpo_jax.dpo import dpo_loss, pair_sequence_logprobs, sequence_masks
from dpo_jax.layouts.packed import pack_examples
from dpo_jax.layouts.prefix_shared import prefix_shared_pair_logprobs, shared_batch_from_batch
from dpo_jax.models.hf.rope import RopeSpec
from dpo_jax.models.pretrained import config_from_hf, family_of, from_transformers, state_dict_from_model
from dpo_jax.ops.attention import AttentionMask
from dpo_torch import DPO
from dpo_torch.losses import METRIC_NAMES
from parity_tests.hf_models import SEQ_LEN, VARIANTS, VOCAB, perturbed_hf_model
from parity_tests.model_helpers import perturb_, relative_max_diff, right_padding_mask

NAMES = list(VARIANTS)
PAD, BATCH = 0, 4
LOGIT_TOL, LOSS_TOL, GRAD_TOL, LAYOUT_TOL = 1e-5, 1e-6, 1e-5, 1e-5
VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "dtype"}


@pytest.fixture(scope="module")
def converted():
    """name -> (transformers model, the JAX model converted from it), built once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            hf_model = perturbed_hf_model(name)
            cache[name] = (hf_model, from_transformers(hf_model))
        return cache[name]
    return get


def torch_logits(model, tokens, mask=None):
    with torch.no_grad():
        out = model(torch.from_numpy(tokens), attention_mask=None if mask is None else torch.from_numpy(mask).long())
    return out.logits.float().numpy()


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(converted, name, record_worst_diff):
    """All positions without a mask (right padding is causal-safe); the real positions with the padding mask.

    With the mask, a pad query whose window holds no real key is attended uniformly over masked keys by
    transformers and zeroed by `attend`; such positions are never scored, so they are left out."""
    hf_model, model = converted(name)
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(3, SEQ_LEN))
    mask = right_padding_mask(3, SEQ_LEN, seed=2)
    assert (~mask).any() and mask.all(axis=1).any()
    plain = relative_max_diff(np.asarray(model(tokens)), torch_logits(hf_model, tokens))
    masked = relative_max_diff(np.asarray(model(tokens, attention_mask=mask))[mask], torch_logits(hf_model, tokens, mask)[mask])
    record_worst_diff(f"hf {name} logits", max(plain, masked))
    assert plain <= LOGIT_TOL and masked <= LOGIT_TOL, (plain, masked)


def _off(config, **changes):
    return config.replace(**changes)


FEATURES_OFF = {
    "llama3": lambda c: _off(c, rope=RopeSpec(theta=c.rope.theta)),
    "mistral": lambda c: _off(c, sliding_window=None),
    "qwen2": lambda c: _off(c, layer_types=("full_attention",) * c.num_hidden_layers),
    "gemma2 attention softcap": lambda c: _off(c, attn_logit_softcapping=None),
    "gemma2 final softcap": lambda c: _off(c, final_logit_softcapping=None),
    "gemma2 sliding window": lambda c: _off(c, layer_types=("full_attention",) * c.num_hidden_layers),
    "gemma3 local rope": lambda c: _off(c, rope=c.local_rope),
    "gemma3 sliding window": lambda c: _off(c, layer_types=("full_attention",) * c.num_hidden_layers),
}


@pytest.mark.parametrize("feature", list(FEATURES_OFF))
def test_each_variant_feature_changes_the_logits(converted, feature):
    """Switched off on the same weights, a variant's feature moves the logits by far more than the tolerance, so
    the parity above is a test of that feature."""
    _, model = converted(feature.split()[0])
    config = FEATURES_OFF[feature](model.config)
    family = family_of(model)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: family.model_type(config, rngs=nnx.Rngs(0))))
    other = nnx.merge(graphdef, nnx.state(model, nnx.Param))
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(3, SEQ_LEN))
    assert relative_max_diff(np.asarray(other(tokens)), np.asarray(model(tokens))) > 100 * LOGIT_TOL


def _state_dicts_equal(expected, actual):
    assert set(expected) == set(actual)
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype and torch.equal(actual[key], value), key


@pytest.mark.parametrize("name", NAMES)
def test_torch_disk_jax_disk_torch_is_bit_exact(converted, name, tmp_path):
    hf_model, _ = converted(name)
    hf_model.save_pretrained(tmp_path / "torch")
    model = dpo_jax.from_pretrained(tmp_path / "torch")
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    files = dpo_jax.save_pretrained(model, tmp_path / "jax", max_shard_size="24KB")
    assert len(files) > 1 and (tmp_path / "jax" / "model.safetensors.index.json").exists()
    assert (tmp_path / "jax" / "generation_config.json").exists()  # copied from the source directory
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "jax", attn_implementation="eager").eval()
    assert type(back) is type(hf_model)
    _state_dicts_equal(hf_model.state_dict(), back.state_dict())
    theirs, ours = hf_model.config.to_dict(), back.config.to_dict()
    differing = {k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k)} - VOLATILE_CONFIG_KEYS
    assert not differing, {k: (theirs.get(k), ours.get(k)) for k in differing}
    tokens = np.random.default_rng(3).integers(0, VOCAB, size=(2, SEQ_LEN))
    assert np.array_equal(torch_logits(back, tokens), torch_logits(hf_model, tokens))


@pytest.mark.parametrize("name", ["llama3", "gemma3"])
def test_bfloat16_checkpoint_round_trip_keeps_dtype_and_bits(name, tmp_path):
    hf_model = perturbed_hf_model(name).to(torch.bfloat16)
    hf_model.save_pretrained(tmp_path / "torch")
    model = dpo_jax.from_pretrained(tmp_path / "torch")  # dtype=None: the checkpoint's own
    assert model.config.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    dpo_jax.save_pretrained(model, tmp_path / "jax")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "jax")
    _state_dicts_equal(hf_model.state_dict(), back.state_dict())
    as_float32 = dpo_jax.from_pretrained(tmp_path / "torch", dtype=jnp.float32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(as_float32, nnx.Param)))


def make_batch(seed):
    """Prompts of 3-6 tokens shared by both rows, completions of different lengths, right-padded with PAD."""
    rng = np.random.default_rng(seed)
    preferred, unpreferred = (rng.integers(1, VOCAB, size=(BATCH, SEQ_LEN)) for _ in range(2))
    prompt_len = rng.integers(3, 7, size=BATCH)
    positions = np.arange(SEQ_LEN)[None]
    prompt_mask = positions < prompt_len[:, None]
    unpreferred = np.where(prompt_mask, preferred, unpreferred)
    lengths = [rng.integers(prompt_len + 2, SEQ_LEN + 1) for _ in range(2)]
    lengths[0][0] = SEQ_LEN
    return dict(preferred_seq=np.where(positions < lengths[0][:, None], preferred, PAD),
                unpreferred_seq=np.where(positions < lengths[1][:, None], unpreferred, PAD), prompt_mask=prompt_mask)


def relative(a, b):
    return abs(float(a) - float(b)) / max(1.0, abs(float(b)))


@pytest.mark.parametrize("name", NAMES)
def test_dpo_loss_and_gradients_match_dpo_torch(name, record_worst_diff):
    """`dpo_torch.DPO(transformers model)` and `dpo_jax.dpo_loss` under jit + grad, on the same HF weights."""
    reference_hf = perturbed_hf_model(name, seed=3)
    reference_state = {k: v.clone() for k, v in reference_hf.state_dict().items()}
    policy_hf = perturb_(copy.deepcopy(reference_hf), seed=9, scale=0.05)
    policy, reference = from_transformers(policy_hf), from_transformers(reference_hf)
    graphdef, params = nnx.split(policy, nnx.Param)
    batch = make_batch(seed=4)
    torch_batch = {k: torch.from_numpy(v) for k, v in batch.items()}
    reductions = ("mean", "sum")

    @jax.jit  # both reductions in one compilation
    def losses_and_grads(params, batch):
        def loss_fn(params, reduction):
            return dpo_loss(nnx.merge(graphdef, params), reference, **batch, pad_id=PAD, beta=0.1, reduction=reduction)
        return {r: jax.value_and_grad(loss_fn, has_aux=True)(params, r) for r in reductions}

    jax_results = losses_and_grads(params, {k: jnp.asarray(v) for k, v in batch.items()})
    worst, worst_loss = 0.0, 0.0
    for reduction in reductions:
        dpo = DPO(policy_hf, beta=0.1, pad_id=PAD, reduction=reduction)
        dpo.ref_model.load_state_dict(reference_state)
        policy_hf.zero_grad(set_to_none=True)
        loss_torch, metrics_torch = dpo(**torch_batch, return_metrics=True)
        loss_torch.backward()
        (loss_jax, metrics_jax), grads = jax_results[reduction]
        worst_loss = max(worst_loss, relative(loss_jax, loss_torch.item()))
        assert relative(loss_jax, loss_torch.item()) <= LOSS_TOL, (reduction, float(loss_jax), loss_torch.item())
        for metric in METRIC_NAMES:
            assert relative(metrics_jax[metric], metrics_torch[metric].item()) <= LOSS_TOL, (reduction, metric)
        jax_grads = state_dict_from_model(nnx.merge(graphdef, grads))
        torch_grads = {key: p.grad.numpy() for key, p in policy_hf.named_parameters()}
        assert set(torch_grads) == set(jax_grads)
        for key, g_torch in torch_grads.items():
            norm = np.linalg.norm(g_torch)
            assert norm > 0, f"{key}: zero torch gradient, the check could not fail"
            error = float(np.linalg.norm(jax_grads[key] - g_torch) / norm)
            worst = max(worst, error)
            assert error <= GRAD_TOL, (reduction, key, error)
    record_worst_diff(f"hf {name} DPO loss", worst_loss)
    record_worst_diff(f"hf {name} DPO gradients (relative norm)", worst)


def layout_examples(seed=0, n=5):
    rng = np.random.default_rng(seed)

    def draw(k):
        return [int(t) for t in rng.integers(1, VOCAB, size=k)]

    return [PreferenceExample(draw(rng.integers(2, 7)), draw(rng.integers(2, 7)), draw(rng.integers(2, 7)), line=i + 1)
            for i in range(n)]


@pytest.mark.parametrize("name", NAMES)
def test_prefix_shared_and_packed_layouts_equal_padded(converted, name):
    _, model = converted(name)
    examples = layout_examples()
    padded = collate_pairs(examples, max_len=SEQ_LEN, pad_id=PAD)
    masks = sequence_masks(padded.preferred_seq, padded.unpreferred_seq, prompt_mask=padded.prompt_mask,
                           preferred_seq_mask=padded.preferred_seq_mask, unpreferred_seq_mask=padded.unpreferred_seq_mask)
    shared = shared_batch_from_batch(**padded.as_dict()).as_dict()
    packed = {share: pack_examples(examples, row_len=3 * SEQ_LEN, rows=2, pairs_per_batch=len(examples),
                                   max_len=SEQ_LEN, share_prefix=share)[0].as_dict() for share in (True, False)}
    for reduction in ("mean", "sum"):
        want = pair_sequence_logprobs(model, padded.preferred_seq, padded.unpreferred_seq, *masks, reduction)
        for layout, arrays in (("prefix_shared", shared), ("packed", packed[True]), ("packed unshared", packed[False])):
            got = prefix_shared_pair_logprobs(model, arrays, reduction=reduction)
            for side in (0, 1):
                error = relative_max_diff(np.asarray(got[side])[:len(examples)], np.asarray(want[side]))
                assert error <= LAYOUT_TOL, (layout, reduction, side, error)


def test_chunked_head_applies_the_final_logit_softcap(converted):
    """Gemma's final-logit softcap inside the chunked head (custom VJP) equals the full head, loss and gradients;
    without the softcap the loss differs, so the comparison covers it."""
    _, policy = converted("gemma2")
    reference = from_transformers(perturbed_hf_model("gemma2", seed=5))
    batch = {k: jnp.asarray(v) for k, v in make_batch(seed=6).items()}
    graphdef, params = nnx.split(policy, nnx.Param)

    def loss_and_grad(graphdef, **options):
        def loss_fn(params, batch):
            return dpo_loss(nnx.merge(graphdef, params), reference, **batch, pad_id=PAD, reduction="sum", **options)[0]
        return jax.jit(jax.value_and_grad(loss_fn))(params, batch)

    full, full_grads = loss_and_grad(graphdef, logprob_head="full")
    chunked, chunked_grads = loss_and_grad(graphdef, logprob_head="chunked", head_chunk_size=7)
    assert relative(chunked, full) <= LOSS_TOL
    for g_full, g_chunked in zip(jax.tree.leaves(full_grads), jax.tree.leaves(chunked_grads)):
        assert float(jnp.linalg.norm(g_chunked - g_full) / jnp.linalg.norm(g_full)) <= GRAD_TOL
    uncapped_config = policy.config.replace(final_logit_softcapping=None)
    uncapped = nnx.graphdef(nnx.eval_shape(lambda: type(policy)(uncapped_config, rngs=nnx.Rngs(0))))
    loss_uncapped, _ = loss_and_grad(uncapped, logprob_head="chunked", head_chunk_size=7)
    assert relative(loss_uncapped, full) > 1e-3


def test_bfloat16_compute_runs_in_bfloat16_close_to_float32(converted):
    """`compute_dtype="bfloat16"` rebuilds a family in bfloat16 (activations, not only weights; Gemma's embedding
    scale in bfloat16 too) on float32 masters; the loss stays within bfloat16 rounding of the float32 one."""
    _, policy = converted("gemma2")
    reference = from_transformers(perturbed_hf_model("gemma2", seed=5))
    batch = make_batch(seed=7)
    bf16 = dpo_jax.with_compute_dtype(policy, jnp.bfloat16)
    assert bf16.hidden_states(batch["preferred_seq"]).dtype == jnp.bfloat16
    full, _ = dpo_loss(policy, reference, **batch, pad_id=PAD, reduction="sum")
    half, _ = dpo_loss(policy, reference, **batch, pad_id=PAD, reduction="sum", compute_dtype="bfloat16")
    assert np.isfinite(float(half)) and 0 < relative(half, full) < 5e-2, (float(half), float(full))


@pytest.mark.parametrize("window", [1, 3, 4])
def test_sliding_window_boundary_is_transformers_rule(window):
    """`AttentionMask(sliding_window=w)` (with causality) is transformers' causal + sliding_window_overlay(w)."""
    n = 9
    ours = np.asarray(AttentionMask(sliding_window=window).allowed(n))[0] & np.tri(n, dtype=bool)
    overlay = sliding_window_overlay(window)
    theirs = np.array([[bool(causal_mask_function(0, 0, q, k)) and bool(overlay(0, 0, q, k)) for k in range(n)]
                       for q in range(n)])
    assert np.array_equal(ours, theirs)


MINIMAL = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=64, num_hidden_layers=12, num_attention_heads=32)


def their_windows(config, model_type):
    """transformers' per-layer sliding window, read off its own config object as its attention modules do."""
    if model_type == "llama":
        return (None,) * config.num_hidden_layers
    if model_type == "mistral":
        return (config.sliding_window,) * config.num_hidden_layers
    return tuple(config.sliding_window if kind == "sliding_attention" else None for kind in config.layer_types)


DEFAULT_CASES = ([(t, {}) for t in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")]
                 + [(t, {"sliding_window": None}) for t in ("mistral", "qwen2", "gemma2", "gemma3_text")]
                 + [(t, {"use_sliding_window": True, "max_window_layers": 5}) for t in ("qwen2", "qwen3")])


@pytest.mark.parametrize("model_type, extra", DEFAULT_CASES, ids=[f"{t}-{'-'.join(e) or 'sizes'}" for t, e in DEFAULT_CASES])
def test_absent_config_keys_take_transformers_defaults(model_type, extra):
    """A config.json with only the sizes: every derived quantity equals what transformers' own config class makes."""
    data = {"model_type": model_type, **MINIMAL, **extra}
    if model_type.startswith("gemma") and "sliding_window" in extra:  # transformers' forward raises on it too
        with pytest.raises(ValueError, match="sliding_window"):
            config_from_hf(data)
        return
    ours = config_from_hf(data)
    theirs = transformers.AutoConfig.for_model(**data)
    assert ours.num_key_value_heads == theirs.num_key_value_heads
    assert ours.head_dim == (getattr(theirs, "head_dim", None) or theirs.hidden_size // theirs.num_attention_heads)
    assert ours.max_position_embeddings == theirs.max_position_embeddings
    assert ours.rms_norm_eps == theirs.rms_norm_eps and ours.tie_word_embeddings == theirs.tie_word_embeddings
    assert ours.layer_windows == their_windows(theirs, model_type)
    rope = theirs.rope_parameters
    if model_type == "gemma3_text":
        assert ours.rope.theta == rope["full_attention"]["rope_theta"]
        assert ours.local_rope.theta == rope["sliding_attention"]["rope_theta"]
    else:
        assert ours.rope.theta == rope["rope_theta"] and rope["rope_type"] == "default"
    if model_type.startswith("gemma"):
        assert ours.query_pre_attn_scalar == theirs.query_pre_attn_scalar
        assert ours.final_logit_softcapping == theirs.final_logit_softcapping
        assert ours.attn_logit_softcapping == theirs.attn_logit_softcapping
