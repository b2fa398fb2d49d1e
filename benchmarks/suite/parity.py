"""Part (b) of the GPU suite: parity with torch on the device, the attention backends, and bfloat16 drift.

    python -m benchmarks.suite.parity '{"dim": 128, ...}'     (prints one `RESULT {json}` line)

1. Parity, float32: `jax_default_matmul_precision="highest"` (JAX's float32 matmuls are TF32 on GPUs by
   default) and TF32 off in torch. Same weights (x-transformers -> `dpo_jax.from_torch`), same batch: logits
   (max |diff|), the DPO loss and every policy gradient (relative per tensor) of `dpo_torch.DPO` against
   `dpo_jax.dpo_loss`, each <= 1e-5, through the einsum oracle and through jax.nn's XLA path.
2. Attention backends on the device, in bfloat16 (the dtype cuDNN computes in): per-sequence log-probs, loss and
   gradient of each backend against the float32 oracle, on padded rows (causal, no mask tensor) and
   prefix-shared rows (segment and branch ids: a mask tensor). A backend the device cannot run is recorded as
   skipped with its reason, not as a failure.
3. bfloat16 drift: the same loss in bfloat16 against float32, for dpo_jax and for torch autocast.
4. cuDNN smoke test at (2, 1024, 4, 64) bfloat16, causal and with segment ids, forward and backward
   (jax-ml/jax#32430 reported cuDNN attention failing on CUDA 13 at such shapes).

Every check is a row {check, value, tol, ok | status}: an exception inside one check is that row's error, so
one broken kernel never hides the other results.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

TOL = 1e-5
BACKENDS = ("xla", "jax_nn", "cudnn")
DEFAULT = dict(num_tokens=256, dim=128, depth=2, heads=4, kv_heads=2, pairs=4, prompt_len=16, completion_len=32,
               smoke_len=1024, smoke_heads=4, smoke_dim=64, seed=0, beta=0.1, drift_backends=BACKENDS)


def _row(rows, check, run):
    """Append {check, ..., seconds} from run() -> dict; an exception becomes the row's error."""
    start = time.perf_counter()
    try:
        row = {"check": check, **run()}
    except Exception as error:  # one failing check must not hide the others
        traceback.print_exc()
        row = {"check": check, "status": "error", "error": f"{type(error).__name__}: {error}"[:1500]}
    row["seconds"] = round(time.perf_counter() - start, 2)
    if "ok" in row and "status" not in row:
        row["status"] = "ok" if row["ok"] else "FAIL"
    rows.append(row)
    print(f"[parity] {check}: {row.get('status')} {row.get('value', '')} {row.get('error', '')}"[:400], flush=True)
    return row


def _relative(a, b):
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _torch_model(config):
    import torch
    from x_transformers import Decoder, TransformerWrapper

    torch.manual_seed(config["seed"])
    model = TransformerWrapper(num_tokens=config["num_tokens"], max_seq_len=2 * (config["prompt_len"] + config["completion_len"]),
                               attn_layers=Decoder(dim=config["dim"], depth=config["depth"], heads=config["heads"],
                                                   attn_kv_heads=config["kv_heads"], rotary_pos_emb=True,
                                                   attn_dim_head=config["dim"] // config["heads"]))
    generator = torch.Generator().manual_seed(config["seed"] + 1)
    with torch.no_grad():  # move norm gains and biases off their init (0): a fresh model hides mistakes
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def _batch(config):
    from benchmarks.contenders.inputs import make_batch
    from benchmarks.presets import BenchConfig

    bench = BenchConfig(num_tokens=config["num_tokens"], pairs=config["pairs"], prompt_len=config["prompt_len"],
                        completion_len=config["completion_len"], seed=config["seed"])
    return make_batch(bench)


def run(config: dict) -> dict:
    config = {**DEFAULT, **config}
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the GPU in this process
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx

    from benchmarks.contenders.inputs import PAD_ID, batch_arrays
    from dpo_jax import dpo_loss, from_torch
    from dpo_jax.dpo import batch_loss
    from dpo_jax.layouts import get_layout
    from dpo_jax.forward import ForwardOptions
    from dpo_jax.layouts.prefix_shared import shared_batch_from_batch
    from dpo_jax.models.x_transformers.weights import state_dict_from_model
    from dpo_jax.ops.attention import AttentionCall, AttentionMask, attend, refusal
    from dpo_torch import DPO

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = _batch(config)
    arrays = batch_arrays(batch)
    tokens = np.concatenate([arrays["preferred_seq"], arrays["unpreferred_seq"]])
    rows, drift, smoke = [], [], []

    policy_torch = _torch_model(config)
    reference_state = {k: v.clone() for k, v in _torch_model({**config, "seed": config["seed"] + 5}).state_dict().items()}
    policy_jax = from_torch(policy_torch)
    reference_torch = _torch_model(config)
    reference_torch.load_state_dict(reference_state)
    reference_jax = from_torch(reference_torch)
    policy_torch, reference_torch = policy_torch.to(device), reference_torch.to(device)
    graphdef, params = nnx.split(policy_jax)

    with torch.no_grad():
        logits_torch = policy_torch(torch.as_tensor(tokens, device=device)).float().cpu().numpy()
    dpo = DPO(policy_torch, beta=config["beta"], pad_id=PAD_ID)
    dpo.ref_model.load_state_dict(reference_state)
    policy_torch.zero_grad(set_to_none=True)
    loss_torch = dpo(*(torch.as_tensor(arrays[k], device=device) for k in ("preferred_seq", "unpreferred_seq")),
                     **{k: torch.as_tensor(arrays[k], device=device) for k in
                        ("prompt_mask", "preferred_seq_mask", "unpreferred_seq_mask")})
    loss_torch.backward()
    grads_torch = {name: p.grad.float().cpu().numpy() for name, p in policy_torch.named_parameters()
                   if p.grad is not None}

    def jax_loss(params, data, attention):
        return dpo_loss(nnx.merge(graphdef, params), reference_jax, data["preferred_seq"], data["unpreferred_seq"],
                        prompt_mask=data["prompt_mask"], preferred_seq_mask=data["preferred_seq_mask"],
                        unpreferred_seq_mask=data["unpreferred_seq_mask"], beta=config["beta"], pad_id=PAD_ID,
                        attention=attention)

    # 1. parity, float32 at the highest matmul precision
    with jax.default_matmul_precision("highest"):
        for attention in ("xla", "jax_nn"):
            def logits_check(attention=attention):
                logits = np.asarray(jax.jit(lambda t: policy_jax(t, attention_backend=attention))(tokens))
                value = float(np.max(np.abs(logits - logits_torch)))
                return {"metric": "max |logits - torch|", "value": value, "tol": TOL, "ok": value <= TOL}
            _row(rows, f"logits float32 attention={attention}", logits_check)

            def loss_and_grads(attention=attention):
                step = jax.jit(jax.value_and_grad(lambda p, data: jax_loss(p, data, attention), has_aux=True))
                (loss, _), grads = step(params, {key: jnp.asarray(value) for key, value in arrays.items()})
                named = state_dict_from_model(nnx.merge(graphdef, grads))
                worst = max((_relative(named[name], g), name) for name, g in grads_torch.items())
                loss_gap = abs(float(loss) - float(loss_torch))
                return {"metric": "|loss - torch|; worst relative gradient (tensor)", "value": [loss_gap, worst[0]],
                        "worst_tensor": worst[1], "tol": TOL, "ok": loss_gap <= TOL and worst[0] <= TOL,
                        "loss": float(loss), "loss_torch": float(loss_torch)}
            _row(rows, f"DPO loss + gradients float32 attention={attention}", loss_and_grads)

    # 2. + 3. attention backends and bfloat16 drift against the float32 oracle
    shared = {k: jnp.asarray(v) for k, v in
              shared_batch_from_batch(**arrays, pad_id=PAD_ID, pad_to_multiple_of=8).as_dict().items()}
    padded = {k: jnp.asarray(v) for k, v in arrays.items()}

    def layout_loss(layout, attention, compute_dtype):
        forward = ForwardOptions(attention=attention, compute_dtype=compute_dtype)
        data = padded if layout == "padded" else shared

        def loss_fn(params, data):
            model = nnx.merge(graphdef, params)
            loss, _ = batch_loss(model, reference_jax, data, layout=layout, pad_id=PAD_ID, beta=config["beta"],
                                 forward=forward)
            logps = get_layout(layout, pad_id=PAD_ID).pair_logprobs(model, data, reduction="mean", forward=forward)
            return loss, jnp.concatenate([logps.chosen, logps.rejected])
        (loss, logps), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, data)
        return float(loss), np.asarray(logps), grads

    with jax.default_matmul_precision("highest"):
        oracle = {layout: layout_loss(layout, "xla", None) for layout in ("padded", "prefix_shared")}
    q_probe = jax.ShapeDtypeStruct((1, config["heads"], 8, config["dim"] // config["heads"]), jnp.bfloat16)
    kv_probe = jax.ShapeDtypeStruct((1, config["kv_heads"], 8, config["dim"] // config["heads"]), jnp.bfloat16)
    for layout in ("padded", "prefix_shared"):
        mask = AttentionMask() if layout == "padded" else AttentionMask(segment_ids=jnp.zeros((1, 8), jnp.int32),
                                                                         branch_ids=jnp.zeros((1, 8), jnp.int32))
        for attention in config["drift_backends"]:
            reason = refusal(attention, AttentionCall.of(q_probe, kv_probe, kv_probe, mask=mask))

            def backend_drift(layout=layout, attention=attention, reason=reason):
                if reason is not None:
                    return {"status": "skipped", "reason": reason}
                loss, logps, grads = layout_loss(layout, attention, "bfloat16")
                ref_loss, ref_logps, ref_grads = oracle[layout]
                grad = _relative(np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)]),
                                 np.concatenate([np.ravel(g) for g in jax.tree.leaves(ref_grads)]))
                return {"status": "measured", "loss_abs_diff": abs(loss - ref_loss),
                        "logp_max_rel_diff": float(np.max(np.abs(logps - ref_logps) / np.maximum(1, np.abs(ref_logps)))),
                        "grad_rel_diff": grad}
            _row(drift, f"bfloat16 {layout} attention={attention} vs float32 xla", backend_drift)

    def torch_bf16_drift():
        if device.type != "cuda":
            return {"status": "skipped", "reason": "torch bfloat16 autocast is measured on the GPU only"}
        with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            low = policy_torch(torch.as_tensor(tokens, device=device)).float().cpu().numpy()
        return {"status": "measured", "logits_max_abs_diff": float(np.max(np.abs(low - logits_torch))),
                "logits_rel_diff": _relative(low, logits_torch)}
    _row(drift, "torch bfloat16 autocast logits vs float32", torch_bf16_drift)

    # 4. cuDNN smoke test
    b, h, n, d = 2, config["smoke_heads"], config["smoke_len"], config["smoke_dim"]
    keys = jax.random.split(jax.random.PRNGKey(7), 4)
    q, k, v = (jax.random.normal(key, (b, h, n, d), jnp.float32) for key in keys[:3])
    cotangent = jax.random.normal(keys[3], (b, h, n, d), jnp.float32)
    segments = jnp.asarray(np.repeat((np.arange(n) >= n // 3).astype(np.int32)[None], b, 0))
    for name, mask in (("causal", AttentionMask()), ("causal + segment_ids", AttentionMask(segment_ids=segments))):
        def cudnn_smoke(mask=mask):
            reason = refusal("cudnn", AttentionCall.of(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                                                       v.astype(jnp.bfloat16), mask=mask))
            if reason is not None:
                return {"status": "skipped", "reason": reason}

            def fwd_bwd(backend, dtype):
                @jax.jit
                def run(q, k, v, cotangent, mask):  # arrays as arguments: nothing for XLA to constant-fold
                    def f(q, k, v):
                        return attend(q, k, v, mask=mask, scale=d ** -0.5, backend=backend)[0].astype(jnp.float32)
                    out, vjp = jax.vjp(f, *(t.astype(dtype) for t in (q, k, v)))
                    return out, vjp(cotangent)
                return run(q, k, v, cotangent, mask)
            with jax.default_matmul_precision("highest"):
                ref_out, ref_grads = fwd_bwd("xla", jnp.float32)
            out, grads = fwd_bwd("cudnn", jnp.bfloat16)
            finite = bool(np.isfinite(np.asarray(out)).all() and all(np.isfinite(np.asarray(g)).all() for g in grads))
            return {"status": "measured" if finite else "FAIL", "finite": finite, "out_rel_diff": _relative(out, ref_out),
                    "grad_rel_diff": [_relative(g, r) for g, r in zip(grads, ref_grads)]}
        _row(smoke, f"cuDNN attention {name} ({b}, {n}, {h}, {d}) bfloat16 fwd+bwd vs float32 xla", cudnn_smoke)

    failed = [r["check"] for r in rows if r.get("status") != "ok"]
    return {"config": config, "device": str(jax.devices()[0]), "torch_device": str(device), "parity": rows,
            "drift": drift, "smoke": smoke, "parity_ok": not failed, "failed": failed}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = json.loads(argv[0]) if argv else {}
    try:
        result = run(config)
    except Exception as error:
        traceback.print_exc()
        result = {"error": f"{type(error).__name__}: {error}"[:2000]}
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
