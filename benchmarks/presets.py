"""Benchmark presets: model and batch shapes, and which contenders each preset runs by default.

A `BenchConfig` is plain data (JSON round-trip) so the parent process can hand it to a worker subprocess.
`kind="model"` is a full DPO training step on a TransformerWrapper; `kind="head"` is the loss head alone
(hidden states + output weight -> per-sequence DPO loss, fwd+bwd).
"""

from __future__ import annotations

import dataclasses
import json

MODEL_CONTENDERS = ("x_transformers", "dpo_torch", "dpo_torch_compile", "dpo_jax")
HEAD_CONTENDERS = ("torch_head", "jax_head")
SWEEP_CONTENDERS = ("dpo_jax", "dpo_torch")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    kind: str = "model"  # "model" (full DPO step) or "head" (loss head alone)
    num_tokens: int = 8192
    dim: int = 256
    depth: int = 4
    heads: int = 4
    pairs: int = 8  # preference pairs; the model sees 2 * pairs rows (chosen + rejected)
    prompt_len: int = 128
    completion_len: int = 128
    dtype: str = "float32"  # "float32" or "bfloat16" (bf16 compute where the contender supports it)
    seed: int = 0
    beta: float = 0.1
    lr: float = 1e-5
    repeats: int = 10
    warmup: int = 2
    # torch.compile backend for dpo_torch_compile: "inductor" (real runs) or "aot_eager" (the quick smoke test:
    # inductor's C++ compile of the DPO graphs takes minutes on 2 cores, longer than the whole quick budget).
    compile_backend: str = "inductor"
    # torch intra-op threads (0: torch's default, one per core). On a machine other jobs also load, torch's
    # OpenMP pool can spin-wait badly (we saw 10x slower tiny steps at load 9 on 2 cores with 2 threads).
    torch_threads: int = 0
    # x-transformers' attn_flash (torch's scaled_dot_product_attention: flash / cuDNN kernels on a GPU) for the
    # torch model every torch contender trains; the same math, so the JAX port (attn_flash is a no-op there)
    # and the FLOPs are unchanged. The GPU presets turn it on: the torch baselines get their fused attention.
    attn_flash: bool = False
    # head-only preset: rows = 2 * pairs sequences of prompt_len + completion_len tokens.

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.completion_len

    @property
    def dim_head(self) -> int:
        return max(1, self.dim // self.heads)

    def replace(self, **changes) -> "BenchConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BenchConfig":
        return cls(**json.loads(text))


PRESETS: dict[str, tuple[BenchConfig, tuple[str, ...]]] = {
    "cpu-small": (BenchConfig(num_tokens=8192, dim=256, depth=4, heads=4, pairs=8, prompt_len=128,
                              completion_len=128), MODEL_CONTENDERS),
    "cpu-longprompt": (BenchConfig(num_tokens=8192, dim=256, depth=4, heads=4, pairs=4, prompt_len=512,
                                   completion_len=128), MODEL_CONTENDERS),
    "gpu-125m": (BenchConfig(num_tokens=32000, dim=768, depth=12, heads=12, pairs=16, prompt_len=512,
                             completion_len=512, dtype="bfloat16", attn_flash=True), MODEL_CONTENDERS),
    "gpu-350m": (BenchConfig(num_tokens=32000, dim=1024, depth=24, heads=16, pairs=16, prompt_len=512,
                             completion_len=512, dtype="bfloat16", attn_flash=True), MODEL_CONTENDERS),
    # Liger-Kernel's loss-head benchmark shape: 32 rows x 512 tokens, hidden 1024, vocab 128256, bf16.
    # 32 rows = 16 pairs; prompt 0 tokens so every non-pad token of a row is scored (as in Liger's setup,
    # but completions still get random lengths between half and full, like the other presets).
    "head-128k": (BenchConfig(kind="head", num_tokens=128256, dim=1024, depth=0, heads=1, pairs=16, prompt_len=0,
                              completion_len=512, dtype="bfloat16"), HEAD_CONTENDERS),
    # --quick: a smoke test of the harness (tiny model, 2 repeats, 1 warm-up), all four model contenders.
    "quick": (BenchConfig(num_tokens=256, dim=64, depth=1, heads=2, pairs=2, prompt_len=16, completion_len=16,
                          repeats=2, warmup=1, compile_backend="aot_eager"), MODEL_CONTENDERS),
}

OVERRIDES = ("dim", "depth", "heads", "num_tokens", "pairs", "prompt_len", "completion_len", "dtype")


def resolve(preset: str, **overrides) -> tuple[BenchConfig, tuple[str, ...]]:
    """The preset's config with the non-None overrides applied, and its default contenders."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    config, contenders = PRESETS[preset]
    changes = {key: value for key, value in overrides.items() if value is not None}
    unknown = set(changes) - set(OVERRIDES) - {"repeats", "warmup", "seed", "torch_threads"}
    if unknown:
        raise ValueError(f"unknown overrides {sorted(unknown)}")
    if "dtype" in changes and changes["dtype"] not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {changes['dtype']!r}")
    return config.replace(**changes), contenders


# ---- scaling sweeps -----------------------------------------------------------------------------------

SEQ_SWEEP = (128, 256, 512, 1024, 2048)
VOCAB_SWEEP = (8192, 16384, 32768, 65536, 128256)


def sweep_configs(kind: str, base: BenchConfig, *, on_cpu: bool) -> tuple[list[tuple[int, BenchConfig]], str]:
    """(value, config) points of a sweep, and a note on what was reduced to keep it feasible.

    `seq`: total sequence length 128..2048 doubling, half prompt half completion. `vocab`: 8k..128k.
    On CPU the pairs (and for long sequences the model) are reduced so one sweep fits in minutes.
    """
    points, notes = [], []
    if kind == "seq":
        for length in SEQ_SWEEP:
            config = base.replace(prompt_len=length // 2, completion_len=length - length // 2)
            if on_cpu:
                pairs = max(1, min(base.pairs, 4096 // length))
                config = config.replace(pairs=pairs, repeats=min(base.repeats, 3), warmup=1)
            points.append((length, config))
        if on_cpu:
            notes.append("CPU: pairs reduced to max(1, 4096 // seq_len) (token budget ~8k per step), 3 repeats")
    elif kind == "vocab":
        for vocab in VOCAB_SWEEP:
            config = base.replace(num_tokens=vocab)
            if on_cpu:
                config = config.replace(pairs=min(base.pairs, 2), prompt_len=min(base.prompt_len, 64),
                                        completion_len=min(base.completion_len, 64),
                                        repeats=min(base.repeats, 3), warmup=1)
            points.append((vocab, config))
        if on_cpu:
            notes.append("CPU: 2 pairs of 64 + 64 tokens, 3 repeats (the [2B, N, V] logits dominate at 128k)")
    else:
        raise ValueError(f"unknown sweep {kind!r}; expected seq or vocab")
    return points, "; ".join(notes)
