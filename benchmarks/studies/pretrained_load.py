"""Load time and peak host memory of `dpo_jax.from_pretrained` on a randomly initialised ~1B-parameter checkpoint.

The checkpoint is a Llama 3.2 1B-shaped model (hidden 2048, 16 layers, 32 heads / 8 kv heads, SwiGLU 8192, vocab
128256, tied: 1.24e9 parameters) written without torch, tensor by tensor, as bfloat16 safetensors shards of at
most `--shard-size` and deleted afterwards. Each measurement is a fresh process; its peak RSS (VmHWM, restarted
just before the load) is reported with the baseline before the load (the interpreter with jax, or torch and
transformers for the torch row, imported, devices up) and the RSS after it:

- `dpo_jax` without a mesh (the default device), in the checkpoint's dtype and cast to float32;
- `dpo_jax` with a mesh over 8 forced CPU devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8`),
  `data=1,fsdp=8` (every tensor once in host memory, each device its slice) and `data=2,fsdp=4` (two data replicas);
- transformers `AutoModelForCausalLM.from_pretrained` (bfloat16), the PyTorch reference, same files, same machine.
  It memory-maps the files and returns before reading them (`seconds_lazy`); the row's time and peak include
  reading every weight once (`param.sum()`), which makes them resident, as the JAX arrays are after loading.

    python -m benchmarks.studies.pretrained_load --dir /tmp/llama-1b --out benchmarks/results/cpu-2core_pretrained-load
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

LLAMA_1B = dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                rms_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=500000.0,
                rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                  original_max_position_embeddings=8192),
                bos_token_id=128000, eos_token_id=128001)


def write_checkpoint(directory: str, shard_size: str) -> dict:
    """Random bfloat16 weights (N(0, 0.02), norm gains 1) for LLAMA_1B, one tensor in memory at a time."""
    import jax.numpy as jnp
    import ml_dtypes
    from flax import nnx

    from dpo_jax.models.hf.checkpoint import WeightEntry, write_config, write_weights
    from dpo_jax.models.hf.key_table import hf_shape
    from dpo_jax.models.llama import LlamaForCausalLM
    from dpo_jax.models.pretrained import config_from_hf, parameter_table

    config = config_from_hf(LLAMA_1B, dtype=jnp.bfloat16)
    table = parameter_table(nnx.eval_shape(lambda: LlamaForCausalLM(config, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)

    def fetch(key, shape):
        if key.endswith("norm.weight"):
            return np.ones(shape, ml_dtypes.bfloat16)
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)

    entries = [WeightEntry(row.key, hf_shape(row), np.dtype(ml_dtypes.bfloat16),
                           lambda key=row.key, shape=hf_shape(row): fetch(key, shape)) for row in table]
    began = time.perf_counter()
    files = write_weights(directory, entries, max_shard_size=shard_size)
    write_config(directory, {**config.to_hf(), "dtype": "bfloat16"})
    return {"parameters": int(sum(np.prod(e.shape) for e in entries)), "files": len(files),
            "bytes": int(sum(e.nbytes for e in entries)), "write_seconds": time.perf_counter() - began}


def _status_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MiB. Not ru_maxrss: Linux carries that across exec, so a
    child would inherit its parent's peak."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Restart VmHWM from the current RSS (Linux >= 4.0: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def measure(directory: str, who: str, mesh: str | None, dtype: str) -> dict:
    """One load in this process: seconds until every array is ready, and peak RSS before and after."""
    if who == "transformers":
        import torch
        import transformers

        baseline = _status_mib("VmRSS")
        _reset_peak()
        began = time.perf_counter()
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype))
        lazy = {"seconds_lazy": time.perf_counter() - began, "peak_rss_lazy_mib": _status_mib("VmHWM")}
        with torch.no_grad():  # transformers maps the files; reading every weight once makes them resident
            for param in model.parameters():
                param.sum()
        seconds = time.perf_counter() - began
        count = sum(p.numel() for p in model.parameters())
    else:
        import jax
        import jax.numpy as jnp
        from flax import nnx

        import dpo_jax

        jax.devices()
        baseline = _status_mib("VmRSS")
        _reset_peak()
        began = time.perf_counter()
        model = dpo_jax.from_pretrained(directory, dtype=jnp.dtype(dtype), mesh=mesh)
        params = nnx.state(model, nnx.Param)
        jax.block_until_ready(params)
        seconds = time.perf_counter() - began
        count = sum(x.size for x in jax.tree.leaves(params))
        lazy = {}
    return {"who": who, "mesh": mesh, "dtype": dtype, "seconds": seconds, "baseline_rss_mib": baseline, **lazy,
            "peak_rss_mib": _status_mib("VmHWM"), "rss_after_mib": _status_mib("VmRSS"), "parameters": int(count)}


def _measure_in_subprocess(directory, who, mesh, dtype) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    if mesh is not None:
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    command = [sys.executable, "-m", "benchmarks.studies.pretrained_load", "--measure", who, "--dir", directory,
               "--dtype", dtype] + (["--mesh", mesh] if mesh else [])
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


RUNS = [("dpo_jax", None, "bfloat16"), ("dpo_jax", "data=1,fsdp=8", "bfloat16"), ("dpo_jax", "data=2,fsdp=4", "bfloat16"),
        ("dpo_jax", None, "float32"), ("transformers", None, "bfloat16")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/tmp/dpo-jax-llama-1b", help="where the checkpoint is written (deleted after)")
    parser.add_argument("--shard-size", default="1GB")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--measure", choices=("dpo_jax", "transformers"), help=argparse.SUPPRESS)
    parser.add_argument("--mesh", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.dir, args.measure, args.mesh, args.dtype)))
        return 0
    if os.path.exists(args.dir):
        raise SystemExit(f"{args.dir} exists; give another --dir (it is deleted at the end)")
    try:
        checkpoint = write_checkpoint(args.dir, args.shard_size)
        results = [_measure_in_subprocess(args.dir, *run) for run in RUNS]
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    report = {"checkpoint": checkpoint, "results": results, "machine": platform.processor() or platform.machine(),
              "load_average": os.getloadavg()}
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out + ".json", "w") as handle:
            json.dump(report, handle, indent=2)
        lines = ["| loader | mesh | dtype | load s | baseline RSS MiB | peak RSS MiB | peak - baseline MiB | "
                 "RSS after MiB |", "|---|---|---|---|---|---|---|---|"]
        for r in results:
            lines.append(f"| {r['who']} | {r['mesh'] or 'none'} | {r['dtype']} | {r['seconds']:.1f} | "
                         f"{r['baseline_rss_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
                         f"{r['peak_rss_mib'] - r['baseline_rss_mib']:.0f} | {r['rss_after_mib']:.0f} |")
        with open(args.out + ".md", "w") as handle:
            handle.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
