"""LoRA adapters in dpo_jax, on the JAX side alone (the torch / peft comparisons are parity_tests/test_lora_peft.py):

- `LoraConfig` refusals, which layers a config targets (checkpoint names as PEFT sees them, the output head
  refused), and the trainable-parameter count of Llama-3-8B against the formula sum r (in + out);
- an adapted model starts as its base (both inits), `merge_lora` equals the adapted model, `without_adapters` is
  the base, adapters survive the bfloat16 rebuild and their gradients reach the float32 masters;
- the PEFT directory round trip and its refusals (misnamed, missing or reshaped tensors; DoRA);
- training: step 0 gives ln 2 and zero rewards; after steps with remat every adapter factor has a non-zero
  gradient (equal to the gradient without remat) and every base leaf is bitwise unchanged (the same objects);
  the adapter-off reference log-probs equal the base model's bit for bit before and after training; the
  optimizer state covers the adapters only; the refusals; frozen reference adapters (continuing an adapter);
  precomputed reference log-probs; dropout deterministic under a seed; grad accumulation; checkpoints that hold
  the adapters only and resume the same trajectory; the prefix-shared and packed layouts.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpo_jax
from dpo_jax.data import PreferenceDataset, PreferenceExample
from dpo_jax.layouts.packed import pack_examples
from dpo_jax.layouts.prefix_shared import shared_batch_from_batch
from dpo_jax.models import lora
from dpo_jax.models.llama import LlamaConfig, LlamaForCausalLM
from dpo_jax.models.x_transformers import Transformer, TransformerConfig
from dpo_jax.train import Checkpointer, TrainConfig, init_train_state, make_eval_loss, make_train_step
from dpo_jax.train.lora import FrozenBase
from dpo_jax.train.reference import ReferenceCache, make_reference_fn
from dpo_jax.train.state import reference_params
from dpo_jax.train.step import make_loss_fn

VOCAB, PAD = 64, 0
LLAMA = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=False)
LORA = dpo_jax.LoraConfig(r=4, alpha=8)
CONFIG = TrainConfig(learning_rate=1e-2, pad_id=PAD, beta=0.5, reduction="sum", forward=dict(remat="full"))
LN2 = math.log(2)


def base_model(seed=0):
    """A tiny Llama with every parameter moved off its initialisation (norm gains start at 1)."""
    graphdef, params = nnx.split(LlamaForCausalLM(LLAMA, rngs=nnx.Rngs(seed)), nnx.Param)
    keys = iter(jax.random.split(jax.random.key(seed + 7), len(jax.tree.leaves(params))))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape), params)
    return nnx.merge(graphdef, params)


def named_leaves(tree):
    """[(path string, array)] of a pytree (an nnx State: paths end with the parameter's name, e.g. "['a']")."""
    return [(jax.tree_util.keystr(path).removesuffix(".value"), leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def examples(count=8, seed=0):
    rng = np.random.default_rng(seed)
    return [PreferenceExample(rng.integers(1, VOCAB, rng.integers(2, 5)).tolist(),
                              rng.integers(1, VOCAB, rng.integers(2, 6)).tolist(),
                              rng.integers(1, VOCAB, rng.integers(2, 6)).tolist(), line=i + 1) for i in range(count)]


DATA = PreferenceDataset(examples(), batch_size=4, seed=0, max_len=12, pad_id=PAD, pad_to_multiple_of=12)


def batch_at(step):
    return {k: jnp.asarray(v) for k, v in DATA.get_batch(step).as_dict().items()}


def leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def perturb_adapters(model, seed=1, scale=0.2):
    """Both factors non-zero (an adapter after some training)."""
    for index, (_, adapter) in enumerate(lora.adapters(model)):
        for factor in (adapter.a, adapter.b):
            key = jax.random.fold_in(jax.random.key(seed), index * 2 + (factor is adapter.b))
            factor.set_value(scale * jax.random.normal(key, factor.get_value().shape))
    return model


# ---- the config and the targets ------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (dict(r=0, alpha=8), "positive int"), (dict(r=2.5, alpha=8), "positive int"), (dict(r=4, alpha=0), "alpha"),
    (dict(r=4, alpha=float("nan")), "alpha"), (dict(r=4, alpha=8, dropout=1.0), "dropout"),
    (dict(r=4, alpha=8, init="gaussian"), "one factor must start at zero"),
    (dict(r=4, alpha=8, target_modules="(q_proj"), "regular expression"),
    (dict(r=4, alpha=8, target_modules=["q_proj", ""]), "non-empty"),
    (dict(r=4, alpha=8, exclude="all-linear"), "exclude"),
])
def test_bad_lora_configs_are_refused(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        dpo_jax.LoraConfig(**bad)


def test_scale_is_alpha_over_r_or_over_sqrt_r():
    assert dpo_jax.LoraConfig(r=16, alpha=32).scale == 2.0
    assert dpo_jax.LoraConfig(r=16, alpha=32, use_rslora=True).scale == 8.0


def names_of(model, config):
    return [name for _, name in lora.select_targets(model, config)]


def test_targets_follow_peft_rules_on_checkpoint_names():
    model = base_model()
    every = names_of(model, LORA)
    assert len(every) == 7 * LLAMA.num_hidden_layers and "lm_head" not in every
    assert "model.layers.1.self_attn.q_proj" in every
    assert names_of(model, LORA.replace(target_modules=("q_proj", "v_proj"))) == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj",
        "model.layers.1.self_attn.v_proj"]
    assert len(names_of(model, LORA.replace(target_modules=r"model\.layers\.0\..*"))) == 7
    assert "model.layers.0.mlp.up_proj" not in names_of(model, LORA.replace(exclude=("up_proj",)))
    with pytest.raises(ValueError, match="output head"):
        lora.select_targets(model, LORA.replace(target_modules=("lm_head",), exclude=()))
    with pytest.raises(ValueError, match="'qproj' matches no linear layer.*q_proj"):
        lora.select_targets(model, LORA.replace(target_modules=("qproj", "v_proj")))
    with pytest.raises(ValueError, match="pattern 'q_proj' matches no linear layer's full name"):
        lora.select_targets(model, LORA.replace(target_modules="q_proj"))  # a regex must match the whole name
    port = Transformer(TransformerConfig(num_tokens=VOCAB, max_seq_len=16, dim=32, depth=1, heads=2, attn_dim_head=16),
                       rngs=nnx.Rngs(0))
    assert names_of(port, LORA) == ["attn_layers.layers.0.1.to_k", "attn_layers.layers.0.1.to_out",
                                    "attn_layers.layers.0.1.to_q", "attn_layers.layers.0.1.to_v",
                                    "attn_layers.layers.1.1.ff.0.0", "attn_layers.layers.1.1.ff.2"]


def test_llama3_8b_all_linear_rank_16_has_the_formula_count():
    """sum over layers of r * (in + out) for q, k, v, o (4096 x 4096, 4096 x 1024 twice) and gate, up, down
    (4096 x 14336): 16 * 81,920 = 1,310,720 per layer, 41,943,040 for 32 layers."""
    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192)
    adapted = nnx.eval_shape(lambda: dpo_jax.apply_lora(LlamaForCausalLM(config, rngs=nnx.Rngs(0)),
                                                         dpo_jax.LoraConfig(r=16, alpha=32)))
    d, kv, ff = 4096, 1024, 14336
    formula = 32 * 16 * (2 * (d + d) + 2 * (d + kv) + 3 * (d + ff))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(adapted, nnx.LoRAParam)))
    assert count == formula == 41_943_040


# ---- the adapted model ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("init", ["zero_b", "zero_a"])
def test_adapted_model_starts_as_its_base_and_merges(init):
    base = base_model()
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 9))
    policy = dpo_jax.apply_lora(base, LORA.replace(init=init), seed=3)
    assert not lora.has_adapters(base) and lora.has_adapters(policy)
    assert np.array_equal(np.asarray(policy(tokens)), np.asarray(base(tokens)))
    lora.check_adapters_start_at_zero(policy)
    zero = "b" if init == "zero_b" else "a"
    assert all(not np.any(np.asarray(getattr(adapter, zero)[...])) for _, adapter in lora.adapters(policy))
    perturb_adapters(policy)
    adapted = np.asarray(policy(tokens))
    assert np.abs(adapted - np.asarray(base(tokens))).max() > 1e-2
    merged = dpo_jax.merge_lora(policy)
    assert not lora.has_adapters(merged) and lora.has_adapters(policy)
    assert np.abs(np.asarray(merged(tokens)) - adapted).max() <= 1e-5 * max(1.0, np.abs(adapted).max())
    assert np.array_equal(np.asarray(lora.without_adapters(policy)(tokens)), np.asarray(base(tokens)))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        dpo_jax.apply_lora(policy, LORA)


def test_merge_adds_in_float32_and_casts_once():
    base = base_model()
    bf16 = nnx.merge(nnx.graphdef(base), jax.tree.map(lambda x: x.astype(jnp.bfloat16), nnx.state(base)))
    policy = perturb_adapters(dpo_jax.apply_lora(bf16, LORA))
    (name, adapter), = [(n, a) for n, a in lora.adapters(policy) if n.endswith("0.self_attn.q_proj")]
    kernel = bf16.layers[0].self_attn.q_proj.kernel[...]
    expected = (kernel.astype(jnp.float32) + adapter.scale * (adapter.a[...] @ adapter.b[...])).astype(jnp.bfloat16)
    merged = dpo_jax.merge_lora(policy).layers[0].self_attn.q_proj.kernel[...]
    assert merged.dtype == jnp.bfloat16 and np.array_equal(np.asarray(merged, np.float32),
                                                            np.asarray(expected, np.float32))


def test_adapters_survive_the_bfloat16_rebuild_and_train_float32_masters():
    policy = perturb_adapters(dpo_jax.apply_lora(base_model(), LORA))
    half = dpo_jax.with_compute_dtype(policy, jnp.bfloat16)
    assert lora.has_adapters(half) and half.hidden_states(np.ones((1, 5), np.int32)).dtype == jnp.bfloat16
    reference = nnx.clone(policy)  # the base's outputs on the policy's graph: every B zero
    for _, adapter in lora.adapters(reference):
        adapter.b.set_value(jnp.zeros_like(adapter.b.get_value()))
    graphdef, params = nnx.split(policy, nnx.Param)
    ref_params = nnx.split(reference, nnx.Param)[1]
    batch = batch_at(0)

    def value_and_grad(dtype):  # the train step's loss, jitted: one compilation instead of op by op
        loss_fn = make_loss_fn(graphdef, CONFIG.replace(forward=CONFIG.forward.replace(compute_dtype=dtype)))
        return jax.jit(jax.value_and_grad(lambda p: loss_fn(p, ref_params, batch)[0]))(params)

    def adapter_grads(grads):
        return [leaf for name, leaf in named_leaves(grads) if "lora" in name]

    full, full_grads = value_and_grad(None)
    half_loss, half_grads = value_and_grad("bfloat16")
    assert abs(float(half_loss) - float(full)) <= 5e-2 * max(1.0, abs(float(full))) and float(half_loss) != float(full)
    pairs = list(zip(adapter_grads(full_grads), adapter_grads(half_grads)))
    assert len(pairs) == 2 * len(lora.adapters(policy))
    for g_full, g_half in pairs:
        assert g_half.dtype == jnp.float32
        assert float(jnp.linalg.norm(g_half - g_full)) <= 0.1 * float(jnp.linalg.norm(g_full)) + 1e-6


# ---- PEFT's directory, JAX side -------------------------------------------------------------------------------

def test_adapter_directory_round_trip_and_contents(tmp_path):
    import json

    from safetensors.numpy import load_file

    base = base_model()
    policy = perturb_adapters(dpo_jax.apply_lora(base, LORA.replace(target_modules=("q_proj", "v_proj", "down_proj"),
                                                                       use_rslora=True)))
    dpo_jax.save_adapter(policy, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["r"], config["lora_alpha"], config["use_rslora"]) == (
        "LORA", "CAUSAL_LM", 4, 8.0, True)
    assert config["target_modules"] == ["down_proj", "q_proj", "v_proj"] and config["use_dora"] is False
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len(tensors) == 2 * 3 * LLAMA.num_hidden_layers
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].shape == (4, 48)
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape == (32, 4)
    loaded = dpo_jax.load_adapter(base, tmp_path / "adapter")
    tokens = np.random.default_rng(1).integers(0, VOCAB, (2, 9))
    assert np.array_equal(np.asarray(loaded(tokens)), np.asarray(policy(tokens)))
    assert lora.lora_settings(loaded) == lora.lora_settings(policy)


def write_variant(source, target, *, config_changes=None, rename=None, drop=None, reshape=None):
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    shutil.copytree(source, target)
    config = json.loads((source / "adapter_config.json").read_text())
    config.update(config_changes or {})
    (target / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(source / "adapter_model.safetensors")
    if rename:
        tensors[rename[1]] = tensors.pop(rename[0])
    if drop:
        tensors.pop(drop)
    if reshape:
        tensors[reshape] = tensors[reshape][:, :-1]
    save_file(tensors, target / "adapter_model.safetensors")
    return target


def test_adapter_directories_that_do_not_fit_are_refused(tmp_path):
    base = base_model()
    dpo_jax.save_adapter(dpo_jax.apply_lora(base, LORA), tmp_path / "good")
    good = tmp_path / "good"
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    cases = {
        "misnamed": (dict(rename=(key, key.replace("q_proj", "qproj"))), "missing .*q_proj.*unexpected .*qproj"),
        "missing": (dict(drop=key), r"missing \['base_model.model.model.layers.0.self_attn.q_proj.lora_A"),
        "reshaped": (dict(reshape=key), r"lora_A \(4, 31\)"),
        "dora": (dict(config_changes={"use_dora": True}), "use_dora=True is not implemented"),
        "pissa": (dict(config_changes={"init_lora_weights": "pissa"}), "rewrites the base weights"),
        "prompt tuning": (dict(config_changes={"peft_type": "PROMPT_TUNING"}), "only 'LORA'"),
        "other model": (dict(config_changes={"target_modules": ["to_q"]}), "'to_q' matches no linear layer"),
    }
    for name, (changes, message) in cases.items():
        with pytest.raises(ValueError, match=message):
            dpo_jax.load_adapter(base, write_variant(good, tmp_path / name.replace(" ", "_"), **changes))
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        dpo_jax.load_adapter(base, tmp_path)


# ---- training --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """A LoRA policy trained 3 steps with remat="full" (one compiled step), and what the tests compare."""
    base = base_model()
    policy = dpo_jax.apply_lora(base, LORA)
    graphdef, state = init_train_state(policy, None, CONFIG)
    start = state
    base_leaves = leaves(state.ref_params.base)
    step = make_train_step(graphdef, CONFIG, donate=False)
    history = []
    for index in range(3):
        state, metrics = step(state, batch_at(index))
        history.append(jax.device_get(metrics))
    return dict(base=base, policy=policy, graphdef=graphdef, start=start, state=state, step=step, history=history,
                base_leaves=base_leaves)


def test_step_zero_is_ln2_with_zero_rewards_and_training_moves(trained):
    """Zero up to float32 rounding: the policy (base + x @ A @ 0) and the reference (the base) are different
    XLA programs, whose fusions may round a matmul differently in the last bit."""
    first = trained["history"][0]
    assert abs(float(first["loss"]) - LN2) <= 1e-6
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(float(first[key])) <= 1e-6, key
    assert float(trained["history"][-1]["loss"]) < LN2 - 1e-3


def test_base_is_unchanged_and_shared_and_only_adapters_train(trained):
    state, base = trained["state"], trained["base"]
    assert isinstance(state.ref_params, FrozenBase) and state.ref_params.adapters is None
    base_arrays = jax.tree.leaves(nnx.state(base, nnx.Param))
    assert all(a is b for a, b in zip(jax.tree.leaves(state.ref_params.base), base_arrays))  # no copy
    for before, after in zip(trained["base_leaves"], leaves(state.ref_params.base)):
        assert np.array_equal(before, after)
    assert {path[-5:] for path, _ in named_leaves(state.params)} == {"['a']", "['b']"}
    for before, after in zip(leaves(trained["start"].params), leaves(state.params)):
        assert not np.array_equal(before, after) or not before.any()  # B moved; A moved once B was non-zero
    adapter_leaves = jax.tree.leaves(state.params)
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]  # adam's mu and nu, nothing of the base
    assert sorted(x.shape for x in moments) == sorted(2 * [x.shape for x in adapter_leaves])
    adapter_count = sum(x.size for x in adapter_leaves)
    opt_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
    assert 8 * adapter_count <= opt_bytes <= 8 * adapter_count + 64  # mu, nu float32 and two step counters


def test_every_adapter_gets_a_gradient_through_remat(trained):
    """After 3 steps (B no longer zero) both factors of every targeted layer have a non-zero gradient with
    remat="full", equal to the gradient without remat: remat does not cut the adapters off."""
    state, graphdef = trained["state"], trained["graphdef"]
    grads = {}
    for remat in ("full", "none"):
        config = CONFIG.replace(forward=CONFIG.forward.replace(remat=remat))
        loss_fn = make_loss_fn(graphdef, config)
        grads[remat] = jax.jit(jax.grad(lambda p: loss_fn(p, state.ref_params, batch_at(3))[0]))(state.params)
    flat = named_leaves(grads["full"])
    assert len(flat) == 2 * 7 * LLAMA.num_hidden_layers
    for (path, g_full), g_none in zip(flat, jax.tree.leaves(grads["none"])):
        norm = float(jnp.linalg.norm(g_full))
        assert norm > 0, path
        assert float(jnp.linalg.norm(g_full - g_none)) <= 1e-5 * norm, path


def test_adapter_off_reference_is_the_base_bit_for_bit(trained):
    state, graphdef, base = trained["state"], trained["graphdef"], trained["base"]
    base_graphdef, base_params = nnx.split(base, nnx.Param)
    theirs = make_reference_fn(base_graphdef, CONFIG)(base_params, batch_at(1))
    ours = make_reference_fn(graphdef, CONFIG)
    for frozen in (trained["start"].ref_params, state.ref_params):
        for a, b in zip(ours(frozen, batch_at(1)), theirs):
            assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("init", ["zero_b", "zero_a"])
def test_step_zero_gradient_geometry(init):
    """B = 0: only B has a gradient at step 0 (A's is exactly zero); A = 0: the reverse."""
    graphdef, state = init_train_state(dpo_jax.apply_lora(base_model(), LORA.replace(init=init)), None, CONFIG)
    loss_fn = make_loss_fn(graphdef, CONFIG)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, state.ref_params, batch_at(0))[0]))(state.params)
    zero = "['a']" if init == "zero_b" else "['b']"
    for path, grad in named_leaves(grads):
        norm = float(jnp.linalg.norm(grad))
        assert (norm == 0.0) if path.endswith(zero) else (norm > 0), path


def test_refusals():
    base = base_model()
    policy = dpo_jax.apply_lora(base, LORA)
    with pytest.raises(ValueError, match="neither factor is zero.*--init-adapter"):
        init_train_state(perturb_adapters(dpo_jax.apply_lora(base, LORA)), None, CONFIG)
    both_zero = dpo_jax.apply_lora(base, LORA)
    for _, adapter in lora.adapters(both_zero):
        adapter.a.set_value(jnp.zeros_like(adapter.a[...]))
    with pytest.raises(ValueError, match="both factors are zero"):
        init_train_state(both_zero, None, CONFIG)
    with pytest.raises(ValueError, match="second copy"):
        init_train_state(policy, base_model(), CONFIG)  # a separate reference copy
    with pytest.raises(ValueError, match="TR-DPO"):
        init_train_state(policy, None, CONFIG.replace(ref_sync_every=2))
    init_train_state(policy, base, CONFIG)  # its own base: the adapter-off reference
    with pytest.raises(ValueError, match="own base arrays"):
        init_train_state(policy, dpo_jax.apply_lora(base_model(), LORA), CONFIG)


def test_continuing_an_adapter_makes_it_the_frozen_reference():
    policy = perturb_adapters(dpo_jax.apply_lora(base_model(), LORA))
    graphdef, state = init_train_state(policy, policy, CONFIG)
    reference_adapters = leaves(state.ref_params.adapters)
    assert all(np.any(a) for a in reference_adapters)
    step = make_train_step(graphdef, CONFIG)
    state, metrics = step(state, batch_at(0))
    assert abs(float(metrics["loss"]) - LN2) <= 1e-6 and abs(float(metrics["rewards/margins"])) <= 1e-6
    state, metrics = step(state, batch_at(1))
    assert abs(float(metrics["rewards/margins"])) > 1e-4
    for before, after in zip(reference_adapters, leaves(state.ref_params.adapters)):
        assert np.array_equal(before, after)
    # the adapter-off base would be the wrong reference here: its loss at the same point differs
    off = make_eval_loss(graphdef, CONFIG)(state.params, state.ref_params.replace(adapters=None), batch_at(1))[0]
    with_ref = make_eval_loss(graphdef, CONFIG)(state.params, state.ref_params, batch_at(1))[0]
    assert abs(float(off) - float(with_ref)) > 1e-3


def test_precomputed_reference_equals_online_with_lora(trained):
    graphdef, state = trained["graphdef"], trained["state"]
    online_loss, online = make_eval_loss(graphdef, CONFIG)(state.params, state.ref_params, batch_at(2))
    cached_config = CONFIG.replace(precompute_ref=True)
    _, cached_state = init_train_state(trained["policy"], None, cached_config)
    cache = ReferenceCache(graphdef, reference_params(cached_state, None), cached_config)
    with_ref = cache.with_reference(batch_at(2))
    cached_loss, cached = make_eval_loss(graphdef, cached_config)(state.params, state.ref_params, with_ref)
    assert abs(float(online_loss) - float(cached_loss)) <= 1e-6
    for key in online:
        assert abs(float(online[key]) - float(cached[key])) <= 1e-6, key


def test_dropout_is_deterministic_under_a_seed_and_off_outside_training():
    policy = dpo_jax.apply_lora(base_model(), LORA.replace(dropout=0.5))
    config = CONFIG.replace(forward=CONFIG.forward.replace(remat=None))
    runs, step = {}, None
    for name, seed in (("a", 0), ("again", 0), ("other", 1)):
        graphdef, state = init_train_state(policy, None, config, seed=seed)
        step = step or make_train_step(graphdef, config)  # one compilation: the seed lives in the state
        losses = []
        for index in range(3):
            state, metrics = step(state, batch_at(index))
            losses.append(float(metrics["loss"]))
        runs[name] = (losses, state)
    assert runs["a"][0] == runs["again"][0] and abs(runs["a"][0][0] - LN2) <= 1e-6
    assert runs["a"][0][2] != runs["other"][0][2]
    losses, state = runs["a"]
    evaluate = make_eval_loss(graphdef, config)
    first = evaluate(state.params, state.ref_params, batch_at(0))[0]
    assert float(first) == float(evaluate(state.params, state.ref_params, batch_at(0))[0])
    no_dropout = init_train_state(dpo_jax.apply_lora(base_model(), LORA), None, config)[0]
    assert float(first) == float(make_eval_loss(no_dropout, config)(state.params, state.ref_params, batch_at(0))[0])


def test_grad_accumulation_equals_the_big_batch_with_lora():
    policy = perturb_adapters(dpo_jax.apply_lora(base_model(), LORA))
    results = []
    for accum in (1, 2):
        config = CONFIG.replace(grad_accum=accum, eps=1.0, grad_clip=None)
        graphdef, state = init_train_state(policy, policy, config)
        state, metrics = make_train_step(graphdef, config)(state, batch_at(0))
        results.append((float(metrics["loss"]), leaves(state.params)))
    assert abs(results[0][0] - results[1][0]) <= 1e-6
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_checkpoints_hold_adapters_only_and_resume_the_same_trajectory(trained, tmp_path):
    graphdef, step = trained["graphdef"], trained["step"]
    _, state = init_train_state(trained["policy"], None, CONFIG)
    state, _ = step(state, batch_at(0))
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    checkpointer.save(1, state, {"note": "lora"})
    stored = checkpointer._manager.restore(1)["state"]  # what is on disk
    assert all(name.startswith(("step", "params", "opt_state", "rng")) for name in stored), sorted(stored)[:5]
    assert sum(np.asarray(v).size for k, v in stored.items() if k.startswith("params")) == sum(
        x.size for x in jax.tree.leaves(state.params))
    _, template = init_train_state(trained["policy"], None, CONFIG)
    restored, meta = checkpointer.restore(template)
    checkpointer.close()
    assert meta["note"] == "lora" and int(restored.step) == 1
    assert restored.ref_params is template.ref_params
    for a, b in zip(leaves(restored.params), leaves(state.params)):
        assert np.array_equal(a, b)
    for index in (1, 2):
        state, expected = step(state, batch_at(index))
        restored, got = step(restored, batch_at(index))
        assert float(got["loss"]) == float(expected["loss"])
    assert float(expected["loss"]) == float(trained["history"][2]["loss"])


def test_prefix_shared_and_packed_layouts_with_adapters_equal_padded():
    policy = perturb_adapters(dpo_jax.apply_lora(base_model(), LORA))
    graphdef, state = init_train_state(policy, policy, CONFIG)
    pairs = examples(5, seed=3)
    padded = dpo_jax.collate_pairs(pairs, max_len=12, pad_id=PAD).as_dict()
    shared = shared_batch_from_batch(**padded, pad_id=PAD).as_dict()
    packed = pack_examples(pairs, row_len=36, rows=2, pairs_per_batch=5, max_len=12, share_prefix=True)[0].as_dict()
    moved = nnx.state(perturb_adapters(dpo_jax.apply_lora(base_model(), LORA), seed=5), nnx.LoRAParam)
    config = CONFIG.replace(forward=dict(logprob_head="chunked", head_chunk_size=5, remat="full"))
    losses = {}
    for layout, batch in (("padded", padded), ("prefix_shared", shared), ("packed", packed)):
        loss_fn = jax.jit(make_loss_fn(graphdef, config, layout))
        losses[layout] = float(loss_fn(moved, state.ref_params, batch)[0])
    assert abs(losses["padded"] - LN2) > 1e-3  # the policy moved away from its frozen reference adapters
    for layout in ("prefix_shared", "packed"):
        assert abs(losses[layout] - losses["padded"]) <= 1e-5 * max(1.0, abs(losses["padded"])), (layout, losses)


def test_the_x_transformers_port_takes_adapters_too(tmp_path):
    base = Transformer(TransformerConfig(num_tokens=VOCAB, max_seq_len=16, dim=32, depth=1, heads=2,
                                         attn_dim_head=16, ff_glu=True), rngs=nnx.Rngs(0))
    policy = dpo_jax.apply_lora(base, LORA)
    graphdef, state = init_train_state(policy, base, CONFIG)
    state, metrics = make_train_step(graphdef, CONFIG)(state, batch_at(0))
    assert abs(float(metrics["loss"]) - LN2) <= 1e-6
    trained_policy = nnx.merge(graphdef, state.params, state.ref_params.base)
    dpo_jax.save_adapter(trained_policy, tmp_path / "adapter")
    import json

    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] is None and "attn_layers.layers.1.1.ff.0.proj" in config["target_modules"]
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 9))
    reloaded = dpo_jax.load_adapter(base, tmp_path / "adapter")
    assert np.array_equal(np.asarray(reloaded(tokens)), np.asarray(trained_policy(tokens)))
