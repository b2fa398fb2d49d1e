"""LoRA in both faces against peft 0.21, on tiny random models built locally (float32, every parameter perturbed,
adapters with both factors non-zero, as after some training):

- JAX adapters (read from the directory peft wrote) vs the peft model: logits <= 1e-5 relative;
- `dpo_torch.DPO(peft_model)` vs the JAX LoRA loss (`train.make_loss_fn` on a LoRA `TrainState`): loss and metrics
  <= 1e-6, adapter gradients <= 1e-5 relative per tensor after the layout transposes; the reference is the
  adapter-off model in both;
- a JAX-saved adapter directory loads in peft with no missing or unexpected key, giving the JAX policy's logits
  (and not the base's); merged weights written with `save_pretrained` give the same logits in transformers;
- torch: the adapter-off reference log-probs equal the base model's bit for bit, non-zero adapters are refused as
  the start of an adapter-off run, a frozen `ref_adapter_name` adapter gives step-0 loss ln 2, `parameters()`
  holds the adapters only, and `dpo_torch` imports without peft.

Variants: Llama (GQA, untied), Qwen2 (q/k/v biases, tied), Gemma 2 (softcaps, sandwich norms) with rsLoRA, and
the x-transformers port (a TransformerWrapper wrapped by the plain `PeftModel`, explicit target names).
"""

import copy
import math
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

import dpo_jax
from dpo_jax.models import lora
from dpo_jax.models.pretrained import from_transformers
from dpo_jax.train import TrainConfig, init_train_state
from dpo_jax.train.step import make_loss_fn
from dpo_torch import DPO
from dpo_torch.lora import adapter_pairs
from dpo_torch.losses import METRIC_NAMES
from parity_tests.hf_models import SEQ_LEN, VOCAB, perturbed_hf_model
from parity_tests.model_helpers import make_torch_model, perturb_, relative_max_diff
from parity_tests.test_hf_families import make_batch

PAD, RANK, ALPHA = 0, 4, 8
LOGIT_TOL, LOSS_TOL, GRAD_TOL = 1e-5, 1e-6, 1e-5
VARIANTS = {"llama": False, "qwen2": False, "gemma2": True}  # name -> use_rslora
XT_OPTIONS = dict(num_tokens=VOCAB, max_seq_len=SEQ_LEN, dim=32, depth=2, heads=2, attn_dim_head=16, ff_glu=True)


def peft_model_of(torch_model, *, use_rslora=False, targets="all-linear", seed=5):
    """peft LoRA on a copy of `torch_model`, every lora_A and lora_B perturbed (both factors non-zero)."""
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0,
                             use_rslora=use_rslora)
    model = peft.get_peft_model(copy.deepcopy(torch_model), config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, a, b in adapter_pairs(model):
            for weight in (a, b):
                weight.copy_(0.2 * torch.randn(weight.shape, generator=generator))
    return model.eval()


def xt_targets(model):
    """Every nn.Linear of a TransformerWrapper but the output head (peft's all-linear needs a PreTrainedModel)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name != "to_logits"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (torch base, peft model, JAX base, JAX policy with the adapters peft saved)."""
    built = {}

    def get(name):
        if name in built:
            return built[name]
        if name == "x_transformers":
            base = perturb_(make_torch_model(**XT_OPTIONS), seed=3)
            model = peft_model_of(base, targets=xt_targets(base))
            jax_base = dpo_jax.from_torch(base)
        else:
            base = perturbed_hf_model(name)
            model = peft_model_of(base, use_rslora=VARIANTS[name])
            jax_base = from_transformers(base)
        directory = tmp_path_factory.mktemp(f"peft-{name}")
        model.save_pretrained(directory)
        built[name] = (base, model, jax_base, dpo_jax.load_adapter(jax_base, directory))
        return built[name]
    return get


NAMES = list(VARIANTS) + ["x_transformers"]


def torch_logits(model, tokens):
    with torch.no_grad():
        out = model(torch.from_numpy(tokens))
    return (out.logits if hasattr(out, "logits") else out).float().numpy()


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_peft(cases, name, record_worst_diff):
    base, model, jax_base, policy = cases(name)
    tokens = np.random.default_rng(1).integers(0, VOCAB, size=(3, SEQ_LEN))
    expected = torch_logits(model, tokens)
    error = relative_max_diff(np.asarray(policy(tokens)), expected)
    record_worst_diff(f"lora {name} logits vs peft", error)
    assert error <= LOGIT_TOL, error
    assert relative_max_diff(torch_logits(base, tokens), expected) > 100 * LOGIT_TOL  # the adapters matter


def relative(a, b):
    return abs(float(a) - float(b)) / max(1.0, abs(float(b)))


@pytest.mark.parametrize("name", NAMES)
def test_dpo_loss_and_adapter_gradients_match_dpo_torch(cases, name, record_worst_diff):
    """The adapters trained some steps (both factors non-zero); the reference is the adapter-off base in both."""
    base, model, jax_base, policy = cases(name)
    fresh = peft.get_peft_model(copy.deepcopy(base), copy.deepcopy(model.peft_config["default"])).eval()
    dpo = DPO(fresh, beta=0.1, pad_id=PAD)  # checked at the start: B = 0
    fresh.load_state_dict(model.state_dict())  # then the trained adapters
    config = TrainConfig(beta=0.1, pad_id=PAD)
    graphdef, state = init_train_state(dpo_jax.apply_lora(jax_base, lora_config_of(model)), None, config)
    params = nnx.state(policy, nnx.LoRAParam)
    assert jax.tree.structure(params) == jax.tree.structure(state.params)
    batch = make_batch(seed=4)
    loss_fn = make_loss_fn(graphdef, config)
    (loss_jax, metrics_jax), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, state.ref_params, {k: jnp.asarray(v) for k, v in batch.items()})
    fresh.zero_grad(set_to_none=True)
    loss_torch, metrics_torch = dpo(**{k: torch.from_numpy(v) for k, v in batch.items()}, return_metrics=True)
    loss_torch.backward()
    assert abs(loss_torch.item() - math.log(2)) > 1e-3  # the policy is away from its reference
    record_worst_diff(f"lora {name} DPO loss", relative(loss_jax, loss_torch.item()))
    assert relative(loss_jax, loss_torch.item()) <= LOSS_TOL, (float(loss_jax), loss_torch.item())
    for metric in METRIC_NAMES:
        assert relative(metrics_jax[metric], metrics_torch[metric].item()) <= LOSS_TOL, metric
    jax_grads = {module: (np.asarray(a).T, np.asarray(b).T)
                 for module, a, b in lora.adapter_pairs(nnx.merge(graphdef, grads, state.ref_params.base))}
    torch_grads = {module: (a.grad.numpy(), b.grad.numpy()) for module, a, b in adapter_pairs(fresh)}
    assert set(jax_grads) == set(torch_grads) and len(torch_grads) > 0
    assert sum(p.numel() for p in dpo.parameters()) == sum(x.size for x in jax.tree.leaves(params))
    worst = 0.0
    for module, pair in torch_grads.items():
        for g_torch, g_jax in zip(pair, jax_grads[module]):
            norm = np.linalg.norm(g_torch)
            assert norm > 0, f"{module}: zero torch gradient, the check could not fail"
            error = float(np.linalg.norm(g_jax - g_torch) / norm)
            worst = max(worst, error)
            assert error <= GRAD_TOL, (module, error)
    record_worst_diff(f"lora {name} adapter gradients (relative norm)", worst)


def lora_config_of(model):
    config = model.peft_config["default"]
    targets = config.target_modules
    return dpo_jax.LoraConfig(r=config.r, alpha=config.lora_alpha, use_rslora=config.use_rslora,
                              target_modules=tuple(sorted(targets)) if not isinstance(targets, str) else targets)


@pytest.mark.parametrize("name", NAMES)
def test_jax_saved_adapter_loads_in_peft_with_the_policy_logits(cases, name, tmp_path):
    base, _, jax_base, policy = cases(name)
    moved = nnx.clone(policy)
    for _, adapter in lora.adapters(moved):  # not the numbers peft wrote: the JAX side's own
        adapter.b.set_value(adapter.b[...] * 1.5)
    dpo_jax.save_adapter(moved, tmp_path / "adapter")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    bad = [str(w.message) for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    assert not bad, bad
    from safetensors.numpy import load_file

    stored = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert stored == set(peft.get_peft_model_state_dict(loaded))
    tokens = np.random.default_rng(2).integers(0, VOCAB, size=(2, SEQ_LEN))
    theirs, ours = torch_logits(loaded, tokens), np.asarray(moved(tokens))
    assert relative_max_diff(ours, theirs) <= LOGIT_TOL
    assert relative_max_diff(torch_logits(base, tokens), theirs) > 100 * LOGIT_TOL


@pytest.mark.parametrize("name", ["llama", "gemma2"])
def test_merged_weights_in_transformers_give_the_policy_logits(cases, name, tmp_path):
    _, model, _, policy = cases(name)
    dpo_jax.save_pretrained(dpo_jax.merge_lora(policy), tmp_path / "merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager").eval()
    tokens = np.random.default_rng(3).integers(0, VOCAB, size=(2, SEQ_LEN))
    assert relative_max_diff(torch_logits(merged, tokens), np.asarray(policy(tokens))) <= LOGIT_TOL
    reference = copy.deepcopy(model).merge_and_unload()
    assert relative_max_diff(torch_logits(merged, tokens), torch_logits(reference, tokens)) <= LOGIT_TOL


def test_torch_adapter_off_reference_is_the_base_bit_for_bit(cases):
    base, model, _, _ = cases("llama")
    batch = {k: torch.from_numpy(v) for k, v in make_batch(seed=5).items()}
    fresh = peft.get_peft_model(copy.deepcopy(base), copy.deepcopy(model.peft_config["default"]))
    dpo = DPO(fresh, pad_id=PAD)
    assert dpo.ref_model is None
    fresh.load_state_dict(model.state_dict())
    fresh.train()
    ours = dpo.reference_logprobs(**batch)
    theirs = DPO(copy.deepcopy(base), pad_id=PAD).reference_logprobs(**batch)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert fresh.training  # the reference forward ran in eval mode and gave the mode back
    with pytest.raises(ValueError, match="neither factor is zero.*ref_adapter_name"):
        DPO(model)


def test_torch_frozen_reference_adapter_when_continuing(cases, tmp_path):
    base, model, _, _ = cases("llama")
    model.save_pretrained(tmp_path / "sft")
    policy = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "sft", is_trainable=True)
    policy.load_adapter(tmp_path / "sft", adapter_name="ref")  # frozen (is_trainable=False)
    dpo = DPO(policy, pad_id=PAD, ref_adapter_name="ref")
    trainable = [name for name, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in name for name in trainable)
    assert sum(p.numel() for p in dpo.parameters()) == sum(p.numel() for p in policy.parameters() if p.requires_grad)
    batch = {k: torch.from_numpy(v) for k, v in make_batch(seed=6).items()}
    loss = dpo(**batch)
    assert abs(loss.item() - math.log(2)) <= 1e-6
    loss.backward()
    assert all(p.grad is not None for p in dpo.parameters())
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == trainable
    with pytest.raises(ValueError, match="is the adapter being trained"):
        DPO(policy, ref_adapter_name="default")


def test_dpo_torch_imports_without_peft():
    code = "import sys; import dpo_torch; print('peft' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "False"]
