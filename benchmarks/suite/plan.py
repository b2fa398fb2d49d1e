"""What `python -m benchmarks --suite gpu` measures, in which order, at which shapes.

Parts: environment, parity, the presets gpu-125m, head-128k and gpu-350m with every contender that applies,
and the sequence-length sweep. The contenders run in three passes (tiers) over every part: first the library's
default path against x-transformers (and the two chunked heads), then the other baselines (dpo_torch, Liger,
the einsum attention), then the variants (torch.compile, prefix sharing, packing, jax.nn, LoRA in both faces).
A run cut short by its time budget still compares the main pair in every part, instead of measuring one part
completely.
`--dry-run` swaps every shape for a tiny one (and torch.compile's inductor for aot_eager) so the whole plan runs
on a CPU in CI; it runs the third tier of the model presets once (at gpu-125m), since gpu-350m's differ only in
depth.

Sizing for the default budget (8 minutes of suite on one H100/H200): each contender is one process (imports,
the seed-built model, compilation, then `warmup` + `repeats` steps), and compilation dominates: repeats are
cheap on the GPU, so the presets keep theirs (10 and 5) and the sweep uses 3. The sweep keeps the tokens per
step of gpu-125m (pairs = 16384 // length), so its point at 1024 is gpu-125m itself (measured once, reported in
both); at 4096 the einsum attention's float32 [8, 12, 4096, 4096] scores per layer are what `dpo_jax_xla` tests.
"""

from __future__ import annotations

import dataclasses

from benchmarks.presets import PRESETS, BenchConfig

PART_NAMES = ("environment", "parity", "gpu-125m", "head-128k", "gpu-350m", "sweep-seq")

# (tier 1, tier 2, tier 3) per kind of part
MODEL_TIERS = (("dpo_jax", "x_transformers"), ("dpo_torch", "dpo_jax_xla", "liger_dpo"),
               ("dpo_torch_compile", "dpo_jax_prefix_sharing", "dpo_jax_packed", "dpo_jax_jax_nn", "dpo_jax_lora",
                "dpo_torch_lora"))
HEAD_TIERS = (("torch_head", "jax_chunked_head"), ("liger_head",), ("jax_head",))
SWEEP_TIERS = (("dpo_jax",), ("dpo_torch",), ("dpo_jax_xla",))
MODEL_CONTENDERS = sum(MODEL_TIERS, ())
HEAD_CONTENDERS = sum(HEAD_TIERS, ())
SWEEP_CONTENDERS = sum(SWEEP_TIERS, ())
SWEEP_LENGTHS = (512, 2048, 4096)  # and gpu-125m's own 1024
SWEEP_TOKENS = 16384  # pairs = SWEEP_TOKENS // length: gpu-125m's tokens per step at every length

PARITY = dict(num_tokens=256, dim=128, depth=2, heads=4, kv_heads=2, pairs=4, prompt_len=16, completion_len=32,
              smoke_len=1024)

# --dry-run: the same plan at tiny shapes (CPU, CI)
TINY_MODEL = BenchConfig(num_tokens=256, dim=64, depth=1, heads=2, pairs=2, prompt_len=16, completion_len=16,
                         repeats=2, warmup=1, compile_backend="aot_eager", torch_threads=1)
TINY = {"gpu-125m": TINY_MODEL, "gpu-350m": TINY_MODEL.replace(depth=2),
        "head-128k": BenchConfig(kind="head", num_tokens=512, dim=64, depth=0, heads=1, pairs=2, prompt_len=0,
                                 completion_len=32, repeats=2, warmup=1, torch_threads=1)}
TINY_PARITY = dict(num_tokens=128, dim=32, depth=1, heads=4, kv_heads=2, pairs=2, prompt_len=8, completion_len=8,
                   smoke_len=64, drift_backends=("xla", "cudnn"))  # jax_nn's CPU parity: tests/test_attention_*
TINY_SWEEP_LENGTHS = (64,)  # and the tiny preset's own 32
TINY_SWEEP_TOKENS = 64


@dataclasses.dataclass(frozen=True)
class Task:
    """One measurement: a part's contender at one config (`point` is the sweep's length, else None)."""
    part: str
    contender: str | None  # None for environment and parity
    config: BenchConfig | dict | None = None
    point: int | None = None

    @property
    def key(self) -> str:
        name = self.part if self.contender is None else f"{self.part}/{self.contender}"
        return name if self.point is None else f"{name}@{self.point}"


def preset_config(name: str, dry_run: bool) -> BenchConfig:
    if dry_run:
        return TINY[name]
    config, _ = PRESETS[name]
    return config.replace(repeats=5, warmup=1) if name == "gpu-350m" else config


def sweep_points(dry_run: bool) -> list[tuple[int, BenchConfig]]:
    base = TINY["gpu-125m"] if dry_run else PRESETS["gpu-125m"][0]
    lengths = TINY_SWEEP_LENGTHS if dry_run else SWEEP_LENGTHS
    tokens = TINY_SWEEP_TOKENS if dry_run else SWEEP_TOKENS
    points = []
    for length in lengths:
        config = base.replace(prompt_len=length // 2, completion_len=length - length // 2,
                              pairs=max(1, tokens // length), repeats=min(base.repeats, 3), warmup=1)
        points.append((length, config))
    return points


def plan(parts=PART_NAMES, *, dry_run: bool = False) -> list[Task]:
    """Every task of the chosen parts: environment and parity first, then the contenders tier by tier."""
    unknown = [p for p in parts if p not in PART_NAMES]
    if unknown:
        raise ValueError(f"unknown suite part(s) {unknown}; expected some of {', '.join(PART_NAMES)}")
    tasks = []
    if "environment" in parts:
        tasks.append(Task("environment", None))
    if "parity" in parts:
        tasks.append(Task("parity", None, TINY_PARITY if dry_run else PARITY))
    for tier, (model, head, sweep) in enumerate(zip(MODEL_TIERS, HEAD_TIERS, SWEEP_TIERS)):
        for part, names in (("gpu-125m", model), ("head-128k", head), ("gpu-350m", model)):
            if dry_run and part == "gpu-350m" and tier == 2:
                continue  # the rehearsal runs the variants once (at gpu-125m): same code, a deeper model
            if part in parts:
                tasks += [Task(part, name, preset_config(part, dry_run)) for name in names]
        if "sweep-seq" in parts:
            tasks += [Task("sweep-seq", name, config, length) for length, config in sweep_points(dry_run)
                      for name in sweep]
    return tasks
