"""Every attention backend that runs on CPU equals the einsum oracle ("xla"), float32, <= 1e-5: outputs and the
gradients of q, k, v, for every mask kind (causal, non-causal, key padding, segment ids, prefix-shared
branches, dense, sliding windows over indices and over restarted positions), MHA and GQA in both head
conventions ("grouped" h // G, "tiled" h % KVH). A kind a backend cannot express raises a ValueError that
names it. Then "auto": on CPU it is exactly "xla"; the choice rules for GPU and TPU, checked on described calls.

"jax_nn" runs cuDNN's argument mapping through jax.nn's XLA path, so the mapping is tested here; "splash" runs
the Pallas TPU kernel in interpret mode (slow: its cases are few and small). cuDNN itself needs a GPU:
`python -m benchmarks --suite gpu` checks it there.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpo_jax.ops.attention import AttentionCall, AttentionMask, Platform, attend, attention_report, choose
from dpo_jax.ops.attention import dot_product, reset_attention_report

TOL = 1e-5
B, N, D = 2, 24, 8
PROMPT, CHOSEN, REJECTED = 0, 1, 2


def qkv(heads, kv_heads, seed=0, n=N, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal(shape), dtype)
                 for shape in ((B, heads, n, D), (B, kv_heads, n, D), (B, kv_heads, n, D)))


def shared_rows():
    """Two prefix-shared rows: [prompt, chosen, rejected] pairs (positions restart for rejected) and padding."""
    segment = np.full((B, N), -1)
    branch = np.zeros((B, N), int)
    positions = np.zeros((B, N), int)
    for row, pairs in enumerate([((3, 4, 5), (2, 3, 2)), ((6, 5, 7),)]):
        cursor = 0
        for s, (p, c, r) in enumerate(pairs):
            segment[row, cursor:cursor + p + c + r] = s
            branch[row, cursor + p:cursor + p + c] = CHOSEN
            branch[row, cursor + p + c:cursor + p + c + r] = REJECTED
            positions[row, cursor:cursor + p + c] = np.arange(p + c)
            positions[row, cursor + p + c:cursor + p + c + r] = p + np.arange(r)
            cursor += p + c + r
    return jnp.asarray(segment), jnp.asarray(branch), jnp.asarray(positions)


def mask_kinds():
    segment, branch, positions = shared_rows()
    rng = np.random.default_rng(5)
    key_padding = jnp.asarray(np.arange(N)[None] < np.array([[17], [N]]))
    dense = jnp.asarray(rng.random((B, N, N)) < 0.7)
    return {
        "causal": AttentionMask(),
        "non_causal": AttentionMask(causal=False),
        "key_padding": AttentionMask(key_padding=key_padding),
        "segment_ids": AttentionMask(segment_ids=segment),
        "prefix_shared": AttentionMask(segment_ids=segment, branch_ids=branch, positions=positions),
        "dense": AttentionMask(dense=dense),
        "sliding_window": AttentionMask(sliding_window=5),
        "sliding_window_non_causal": AttentionMask(sliding_window=5, causal=False),
        "sliding_window_on_positions": AttentionMask(segment_ids=segment, branch_ids=branch, positions=positions,
                                                     sliding_window=4),
    }


HEADS = {"mha": (4, 4, "grouped"), "gqa_grouped": (4, 2, "grouped"), "gqa_tiled": (4, 2, "tiled"),
         "mqa": (4, 1, "tiled")}


def outputs_and_grads(backend, q, k, v, **kwargs):
    cotangent = jnp.asarray(np.random.default_rng(9).standard_normal(q.shape), q.dtype)

    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, backend=backend, **kwargs)[0], q, k, v)  # eager: tiny
    return out, vjp(cotangent)


def relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def assert_matches_oracle(backend, q, k, v, **kwargs):
    out, grads = outputs_and_grads(backend, q, k, v, **kwargs)
    ref_out, ref_grads = outputs_and_grads("xla", q, k, v, **kwargs)
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(out, ref_out, atol=TOL, rtol=0)
    for name, grad, ref in zip("qkv", grads, ref_grads):
        assert relative(grad, ref) <= TOL, (name, relative(grad, ref))


# ---- jax.nn.dot_product_attention (XLA): every mask kind x every head layout ----------------------------

@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("kind", mask_kinds())
def test_jax_nn_equals_einsum(kind, heads):
    h, kvh, layout = HEADS[heads]
    q, k, v = qkv(h, kvh)
    assert_matches_oracle("jax_nn", q, k, v, mask=mask_kinds()[kind], scale=D ** -0.5, kv_layout=layout)


def test_head_conventions_differ_so_the_gqa_cases_can_fail():
    q, k, v = qkv(4, 2)
    grouped, _ = attend(q, k, v, scale=0.3, kv_layout="grouped", backend="jax_nn")
    tiled, _ = attend(q, k, v, scale=0.3, kv_layout="tiled", backend="jax_nn")
    assert np.max(np.abs(np.asarray(grouped) - np.asarray(tiled))) > 0.1


@pytest.mark.parametrize("causal", [True, False])
def test_jax_nn_with_memory_keys_and_bias_equals_einsum(causal):
    """x-transformers' memory key/values (prefix keys) and an alibi/T5-style bias [1, H, N, N]."""
    q, k, v = qkv(4, 2, n=N)
    _, k_mem, v_mem = qkv(4, 2, seed=3, n=3)
    k, v = jnp.concatenate([k_mem, k], axis=2), jnp.concatenate([v_mem, v], axis=2)
    bias = jnp.asarray(np.random.default_rng(4).standard_normal((1, 4, N, N)), jnp.float32)
    segment, _, _ = shared_rows()
    for mask in (AttentionMask(causal=causal), AttentionMask(segment_ids=segment, causal=causal)):
        assert_matches_oracle("jax_nn", q, k, v, mask=mask, scale=0.3, bias=bias, num_prefix_keys=3,
                              kv_layout="tiled")


def test_jax_nn_refuses_what_it_cannot_return():
    q, k, v = qkv(4, 4)
    with pytest.raises(ValueError, match="residual attention"):
        attend(q, k, v, scale=0.3, return_scores=True, backend="jax_nn")
    with pytest.raises(ValueError, match="softcap"):
        attend(q, k, v, scale=0.3, softcap=20.0, backend="jax_nn")


# ---- splash (Pallas interpret mode on CPU) --------------------------------------------------------------

SPLASH_CASES = {  # (mask kind, heads); N = 24 pads to the 128-lane block, so padding is exercised everywhere
    "causal_gqa_tiled": ("causal", "gqa_tiled"),
    "segment_ids_gqa_grouped": ("segment_ids", "gqa_grouped"),
    "key_padding_mha": ("key_padding", "mha"),
    "sliding_window_mqa": ("sliding_window", "mqa"),
    "non_causal_mha": ("non_causal", "mha"),
}


@pytest.mark.parametrize("case", SPLASH_CASES)
def test_splash_equals_einsum(case):
    kind, heads = SPLASH_CASES[case]
    h, kvh, layout = HEADS[heads]
    q, k, v = qkv(h, kvh)
    assert_matches_oracle("splash", q, k, v, mask=mask_kinds()[kind], scale=D ** -0.5, kv_layout=layout)


def test_splash_softcap_equals_einsum():
    q, k, v = qkv(4, 4)
    segment, _, _ = shared_rows()
    assert_matches_oracle("splash", 3 * q, k, v, mask=AttentionMask(segment_ids=segment), scale=D ** -0.5,
                          softcap=2.0)


@pytest.mark.parametrize("kind, named", [("prefix_shared", "branch_ids"), ("dense", "dense"),
                                         ("sliding_window_on_positions", "branch_ids")])
def test_splash_names_the_mask_rules_it_cannot_express(kind, named):
    q, k, v = qkv(4, 4)
    with pytest.raises(ValueError, match=f"splash.*{named}"):
        attend(q, k, v, mask=mask_kinds()[kind], scale=0.3, backend="splash")


def test_splash_refuses_memory_keys_and_bias():
    q, k, v = qkv(4, 4)
    with pytest.raises(ValueError, match="memory key/values"):
        attend(q, jnp.pad(k, ((0, 0), (0, 0), (2, 0), (0, 0))), jnp.pad(v, ((0, 0), (0, 0), (2, 0), (0, 0))),
               scale=0.3, num_prefix_keys=2, backend="splash")
    with pytest.raises(ValueError, match="alibi"):
        attend(q, k, v, scale=0.3, bias=jnp.zeros((1, 4, N, N)), backend="splash")


# ---- the seam: shapes, padding queries, cuDNN on CPU ----------------------------------------------------

def test_padding_queries_are_zero_for_every_backend():
    q, k, v = qkv(4, 2)
    mask = mask_kinds()["key_padding"]
    for backend in ("xla", "jax_nn"):
        out, _ = attend(q, k, v, mask=mask, scale=0.3, kv_layout="tiled", backend=backend)
        assert np.all(np.asarray(out)[0, :, 17:] == 0) and np.all(np.abs(np.asarray(out)[0, :, :17]) > 0)


def test_queries_with_no_visible_key_are_zero_for_every_backend():
    q, k, v = qkv(4, 2)
    dense = np.ones((B, N, N), bool)
    dense[0, 5] = False  # query 5 of row 0 may see nothing
    for backend in ("xla", "jax_nn"):
        out, _ = attend(q, k, v, mask=AttentionMask(dense=jnp.asarray(dense)), scale=0.3, backend=backend)
        assert np.all(np.asarray(out)[0, :, 5] == 0) and np.all(np.abs(np.asarray(out)[0, :, 6]) > 0)


def test_bad_shapes_and_names_are_refused():
    q, k, v = qkv(4, 4)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        attend(q, k[:, :3], v[:, :3], scale=0.3)
    with pytest.raises(ValueError, match="num_prefix_keys"):
        attend(q, k, v, scale=0.3, num_prefix_keys=2)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attend(q, k, v, scale=0.3, backend="flash")
    with pytest.raises(ValueError, match="unknown kv_layout"):
        attend(q, k, v, scale=0.3, kv_layout="interleaved")
    with pytest.raises(ValueError, match="sliding_window must be a positive int"):
        attend(q, k, v, mask=AttentionMask(sliding_window=0), scale=0.3)


def test_cudnn_on_cpu_is_a_clear_error():
    q, k, v = (t.astype(jnp.bfloat16) for t in qkv(4, 4))
    with pytest.raises(ValueError, match="cuDNN needs an NVIDIA GPU; this computation runs on cpu"):
        attend(q, k, v, scale=0.3, backend="cudnn")


# ---- "auto" ------------------------------------------------------------------------------------------

def test_auto_is_exactly_xla_on_cpu():
    reset_attention_report()
    q, k, v = qkv(4, 2)
    for mask in mask_kinds().values():
        auto, _ = attend(q, k, v, mask=mask, scale=0.3, kv_layout="tiled")
        oracle, _ = attend(q, k, v, mask=mask, scale=0.3, kv_layout="tiled", backend="xla")
        np.testing.assert_array_equal(auto, oracle)
    lines = [line for line in attention_report() if "requested 'auto'" in line]
    assert lines and all(line.startswith("attention xla (requested 'auto'): the einsum path on cpu") for line in lines)


GPU = Platform("gpu", cuda=True, compute_capability="9.0")
TPU = Platform("tpu")


def described(platform, dtype=jnp.bfloat16, mask=None, heads=(4, 4), n=N, d=D, **kwargs):
    q, k, v = qkv(*heads, n=n)
    q, k, v = (jax.ShapeDtypeStruct(t.shape, dtype) for t in (q, k, v))
    return AttentionCall.of(q, k, v, mask=mask or AttentionMask(), platform=platform, **kwargs) if d == D else \
        dataclasses.replace(AttentionCall.of(q, k, v, mask=mask or AttentionMask(), platform=platform, **kwargs),
                            head_dim=d)


def test_auto_on_gpu_picks_cudnn_for_half_precision_and_falls_back_with_a_reason():
    assert choose("auto", described(GPU)).backend == "cudnn"
    assert choose("auto", described(GPU, dtype=jnp.float16, heads=(4, 2))).backend == "cudnn"
    fp32 = choose("auto", described(GPU, dtype=jnp.float32))
    assert fp32.backend == "xla" and "float32" in fp32.reason
    scores = choose("auto", described(GPU, return_scores=True))
    assert scores.backend == "xla" and "residual attention" in scores.reason
    assert choose("auto", described(Platform("gpu", cuda=False))).backend == "xla"  # ROCm


def test_auto_sends_masked_calls_to_cudnn_only_where_jax_skips_the_wasted_bias_gradient(monkeypatch):
    shared = mask_kinds()["prefix_shared"]
    monkeypatch.setattr(dot_product, "jax_version", lambda: (0, 11, 1))
    assert choose("auto", described(GPU, mask=shared)).backend == "cudnn"
    monkeypatch.setattr(dot_product, "jax_version", lambda: (0, 10, 2))
    old = choose("auto", described(GPU, mask=shared))
    assert old.backend == "xla" and "0.11.1" in old.reason
    assert choose("auto", described(GPU)).backend == "cudnn"  # no mask tensor: fine on any version
    assert choose("cudnn", described(GPU, mask=shared)).backend == "cudnn"  # explicit: the user's call


@pytest.mark.parametrize("kwargs, named", [
    (dict(dtype=jnp.float32), "bfloat16/float16 only, got float32"),
    (dict(return_scores=True), "residual attention"),
    (dict(num_prefix_keys=2), "memory key/values"),
    (dict(bias=jnp.zeros(())), "alibi or T5"),
    (dict(softcap=30.0), "softcapping"),
    (dict(d=512), "head_dim <= 256"),
    (dict(n=23, mask=AttentionMask(segment_ids=jnp.zeros((B, 23), int))), "even sequence length, got 23"),
])
def test_explicit_cudnn_names_what_it_cannot_do(kwargs, named):
    with pytest.raises(ValueError, match=named):
        choose("cudnn", described(GPU, **kwargs))


def test_cudnn_head_dim_limit_is_128_before_hopper():
    ampere = Platform("gpu", cuda=True, compute_capability="8.0")
    with pytest.raises(ValueError, match="head_dim <= 128"):
        choose("cudnn", described(ampere, d=192))
    assert choose("cudnn", described(GPU, d=192)).backend == "cudnn"


def test_auto_on_tpu_picks_splash_where_it_can_express_the_call():
    kinds = mask_kinds()
    assert choose("auto", described(TPU)).backend == "splash"
    assert choose("auto", described(TPU, mask=kinds["segment_ids"], softcap=50.0)).backend == "splash"
    shared = choose("auto", described(TPU, mask=kinds["prefix_shared"]))
    assert shared.backend == "xla" and "branch_ids" in shared.reason
    with pytest.raises(ValueError, match="splash is a TPU kernel"):
        choose("splash", described(GPU))


def test_auto_falls_back_to_xla_when_the_kernel_refuses_at_trace_time(monkeypatch):
    """A shape cuDNN rejects while tracing (its own NotImplementedError) is computed by the oracle instead."""
    from dpo_jax.ops.attention import call as call_module, choice

    def refusing_kernel(*args, **kwargs):
        raise NotImplementedError("The head dim must be <= 256 and a multiple of 8, but got 12.")

    monkeypatch.setattr(call_module, "current_platform", lambda: GPU)
    monkeypatch.setitem(choice.BACKENDS, "cudnn", (refusing_kernel, dot_product.unsupported_cudnn))
    reset_attention_report()
    q, k, v = (t.astype(jnp.bfloat16) for t in qkv(4, 4))
    out, _ = attend(q, k, v, scale=0.3)
    oracle, _ = attend(q, k, v, scale=0.3, backend="xla")
    np.testing.assert_array_equal(out, oracle)
    assert any("fallback: cudnn raised NotImplementedError" in line for line in attention_report())
    with pytest.raises(NotImplementedError):
        attend(q, k, v, scale=0.3, backend="cudnn")
