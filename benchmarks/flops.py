"""FLOPs per DPO step (DESIGN.md section 6), device peaks, and MFU.

    FLOPs/step = (6 N_policy + 2 N_reference) x tokens_processed + attention term

* N is the *compute* parameter count: all parameters except the token and position embedding tables
  (lookups, not matmuls), **plus the output head** `to_logits` (dim x vocab), which is a real matmul on
  every position; biases and norm gains are included (negligible).
* tokens_processed counts what the model actually runs on, not only the scored tokens: both policy and
  reference forward the full padded [2B, N-1] input (chosen and rejected rows), so tokens = 2B x (N-1).
  Throughput (tokens/s) is reported on scored tokens only, so MFU and tokens/s deliberately use
  different token counts.
* attention (scores QK^T and the weighted sum AV, causal so half the n x n square), per layer forward:
  2 * 2 * rows * n^2 * d_attn / 2; the policy pays it 3x (fwd + bwd), the reference 1x.
* the head-only benchmark: policy head fwd+bwd 6 * rows * T * H * V plus reference head fwd 2 * rows * T * H * V
  (Liger-Kernel's accounting, torch-anchors.md 2.2).

MFU = achieved FLOP/s / device peak for the compute dtype; the peak is known only for the GPUs in
`PEAK_FLOPS` (dense, no sparsity), and null on CPU unless `--peak-flops` is given.
"""

from __future__ import annotations

from benchmarks.presets import BenchConfig

# Dense peak FLOP/s by (device-name substring, compute dtype). float32 is the non-tensor-core peak
# (torch keeps TF32 off for matmuls by default); tf32 is listed for reference.
PEAK_FLOPS = {
    "H100": {"bfloat16": 989e12, "float32": 67e12, "tf32": 495e12},
    "H200": {"bfloat16": 989e12, "float32": 67e12, "tf32": 495e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12, "tf32": 156e12},
}


def torch_model_config(config: BenchConfig) -> dict:
    """Keyword arguments of the x-transformers model every contender uses (plain pre-norm decoder)."""
    return dict(num_tokens=config.num_tokens, max_seq_len=config.seq_len, dim=config.dim, depth=config.depth,
                heads=config.heads, attn_dim_head=config.dim_head, attn_flash=config.attn_flash)


def compute_params(config: BenchConfig) -> int:
    """Non-embedding parameters plus the output head, counted on a meta-device build of the real model."""
    if config.kind == "head":
        return config.dim * config.num_tokens
    import torch
    from x_transformers import Decoder, TransformerWrapper

    kwargs = torch_model_config(config)
    with torch.device("meta"):
        model = TransformerWrapper(num_tokens=kwargs["num_tokens"], max_seq_len=kwargs["max_seq_len"],
                                   attn_layers=Decoder(dim=kwargs["dim"], depth=kwargs["depth"],
                                                       heads=kwargs["heads"], attn_dim_head=kwargs["attn_dim_head"]))
    return sum(p.numel() for name, p in model.named_parameters()
               if not name.startswith(("token_emb.", "pos_emb.")))


def tokens_processed(config: BenchConfig) -> int:
    """Positions the model runs on per forward: 2B rows x (N-1) inputs (the last token is only a target)."""
    if config.kind == "head":
        return 2 * config.pairs * config.seq_len
    return 2 * config.pairs * (config.seq_len - 1)


def attention_flops(config: BenchConfig) -> float:
    """Causal attention matmuls per step: (3 policy + 1 reference) x depth x 2*2*rows*n^2*d_attn/2."""
    if config.kind == "head":
        return 0.0
    rows, n = 2 * config.pairs, config.seq_len - 1
    d_attn = config.heads * config.dim_head
    per_layer_fwd = 2 * 2 * rows * n * n * d_attn / 2
    return (3 + 1) * config.depth * per_layer_fwd


def flops_per_step(config: BenchConfig, *, n_compute: int | None = None) -> float:
    n = compute_params(config) if n_compute is None else n_compute
    return (6 * n + 2 * n) * tokens_processed(config) + attention_flops(config)


def peak_flops(device: str, dtype: str) -> float | None:
    for key, table in PEAK_FLOPS.items():
        if key in device:
            return table.get(dtype)
    return None


def mfu(flops: float | None, step_time_s: float | None, peak: float | None) -> float | None:
    if not flops or not step_time_s or not peak:
        return None
    return flops / step_time_s / peak
