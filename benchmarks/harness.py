"""Run contenders, each in its own subprocess, and assemble the results (FLOPs, MFU, ratios, environment)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.flops import compute_params, flops_per_step, mfu, peak_flops, tokens_processed
from benchmarks.presets import BenchConfig, sweep_configs

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINE = "x_transformers"
HEAD_BASELINE = "torch_head"  # the head-only preset has no x_transformers; its ratios are to plain torch


def baseline_name(results: dict[str, dict]) -> str | None:
    for name in (BASELINE, HEAD_BASELINE):
        if name in results and not results[name].get("error"):
            return name
    return None


def cpu_description() -> str:
    """CPU model name from /proc/cpuinfo and the number of cores this process may use."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores"


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "jax", "jaxlib", "flax", "optax", "x-transformers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    out["python"] = platform.python_version()
    return out


def run_worker(name: str, config: BenchConfig, *, timeout_s: float = 1800) -> dict:
    """One contender in a fresh `python -m benchmarks._worker` process; its RESULT line, or an error."""
    command = [sys.executable, "-m", "benchmarks._worker", name, config.to_json()]
    load_before = os.getloadavg()
    start = time.perf_counter()
    try:
        completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"contender": name, "error": f"timed out after {timeout_s:.0f} s"}
    result = None
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if result is None:
        tail = (completed.stderr or completed.stdout)[-2000:]
        result = {"contender": name, "error": f"worker exited with {completed.returncode}: {tail}"}
    result["wall_s"] = time.perf_counter() - start
    result["loadavg_before"], result["loadavg_after"] = load_before, os.getloadavg()
    return result


def finish(results: dict[str, dict], config: BenchConfig, *, device: str, peak: float | None) -> dict[str, dict]:
    """Add flops_per_step, mfu and ratio_to_x_transformers (to torch_head in the head preset); null the
    measures of failed contenders."""
    n_compute = compute_params(config)
    flops = flops_per_step(config, n_compute=n_compute)
    baseline = baseline_name(results)
    base = results[baseline]["tokens_per_s"] if baseline else None
    for result in results.values():
        failed = bool(result.get("error"))
        for key in ("step_time_s", "tokens_per_s", "peak_mem_bytes", "compile_s"):
            result.setdefault(key, None)
        result["flops_per_step"] = flops
        median = None if failed or not result["step_time_s"] else result["step_time_s"]["median"]
        result["achieved_flops_per_s"] = flops / median if median else None
        result["mfu"] = mfu(flops, median, peak)
        result["ratio_to_x_transformers"] = (result["tokens_per_s"] / base
                                             if base and result["tokens_per_s"] and not failed else None)
        result.setdefault("error", None)
    return results


def device_string(results: dict[str, dict]) -> str:
    for result in results.values():
        if result.get("device") and result["device"] != "cpu":
            return result["device"]
    return cpu_description()


def run_benchmark(config: BenchConfig, contenders, *, peak_override: float | None = None,
                  log=print) -> tuple[dict[str, dict], str, dict]:
    """Each contender once, in the order given; returns (results, device, extra info)."""
    results = {}
    for name in contenders:
        log(f"[benchmarks] {name}: running ({config.repeats} repeats after {config.warmup} warm-up)...")
        results[name] = run_worker(name, config)
        result = results[name]
        if result.get("error"):
            log(f"[benchmarks] {name}: ERROR {result['error'][:300]}")
        else:
            log(f"[benchmarks] {name}: {result['tokens_per_s']:.1f} scored tok/s, "
                f"median {result['step_time_s']['median'] * 1e3:.1f} ms, compile {result['compile_s']:.1f} s")
    device = device_string(results)
    peak = peak_override if peak_override else peak_flops(device, config.dtype)
    finish(results, config, device=device, peak=peak)
    info = {"peak_flops": peak, "ratio_baseline": baseline_name(results), "n_compute_params": compute_params(config),
            "tokens_processed_per_forward": tokens_processed(config),
            "scored_tokens": next((r.get("scored_tokens") for r in results.values() if r.get("scored_tokens")),
                                  None)}
    return results, device, info


def run_sweep(kind: str, base: BenchConfig, contenders, *, log=print) -> dict:
    """tokens/s and peak memory over a sequence-length or vocabulary sweep."""
    import torch

    on_cpu = not torch.cuda.is_available()
    points, note = sweep_configs(kind, base, on_cpu=on_cpu)
    if note:
        log(f"[benchmarks] sweep {kind}: {note}")
    rows = []
    for value, config in points:
        row = {"value": value, "config": config.to_dict(), "contenders": {}}
        for name in contenders:
            log(f"[benchmarks] sweep {kind}={value}: {name}...")
            result = run_worker(name, config)
            row["contenders"][name] = {key: result.get(key) for key in
                                       ("tokens_per_s", "peak_mem_bytes", "step_time_s", "compile_s", "error")}
        rows.append(row)
    return {"sweep": kind, "note": note, "points": rows}
