"""Run ONE contender in this process and print its measurements as a `RESULT {json}` line.

    python -m benchmarks._worker CONTENDER 'CONFIG_JSON'

Each contender gets its own process so that its memory growth is attributable and no framework's
allocator or thread pool state leaks into another's timings.

Memory: on GPU the device allocator's peak (torch.cuda.max_memory_allocated, or jax's memory_stats
peak_bytes_in_use) minus the bytes in use after setup; on CPU the process peak RSS (VmHWM) minus the RSS
after setup. Setup = imports, the seed-built model of the contender's framework and the batch; everything
the contender builds after that (reference copy, optimizer state, gradients, activations, compiled code)
counts. The peak is reset after the first (compiling) call where the platform allows it (CPU: the kernel's
clear_refs; torch CUDA: reset_peak_memory_stats), so `peak_mem_bytes` is the steady-state training peak and
`compile_peak_mem_bytes` the peak during the first call.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import sys
import time
import traceback


def _rss_bytes(field: str) -> int | None:
    """VmRSS (current) or VmHWM (peak since start or the last clear_refs) of this process, in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    if field == "VmHWM":
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return None


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    """Baseline and peak for the platform the contender runs on."""

    def __init__(self, framework: str):
        self.kind = "cpu_rss"
        if framework == "torch":
            import torch
            if torch.cuda.is_available():
                self.kind = "torch_cuda"
        else:
            import jax
            device = jax.devices()[0]
            if device.platform != "cpu" and device.memory_stats():
                self.kind = "jax_device"
                self.device = device

    def current(self) -> int:
        if self.kind == "torch_cuda":
            import torch
            return torch.cuda.memory_allocated()
        if self.kind == "jax_device":
            return self.device.memory_stats()["bytes_in_use"]
        return _rss_bytes("VmRSS")

    def peak(self) -> int:
        if self.kind == "torch_cuda":
            import torch
            return torch.cuda.max_memory_allocated()
        if self.kind == "jax_device":
            return self.device.memory_stats()["peak_bytes_in_use"]
        return _rss_bytes("VmHWM")

    def reset_peak(self) -> bool:
        if self.kind == "torch_cuda":
            import torch
            torch.cuda.reset_peak_memory_stats()
            return True
        if self.kind == "jax_device":
            return False  # XLA's peak cannot be reset; it then includes the compile call
        return _reset_rss_peak()


def device_name(framework: str) -> str:
    if framework == "torch":
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    else:
        import jax
        device = jax.devices()[0]
        if device.platform != "cpu":
            return getattr(device, "device_kind", device.platform)
    return "cpu"


def measure(name: str, config) -> dict:
    from benchmarks.contenders import CONTENDERS, make_batch, make_setup

    factory = CONTENDERS[name]
    import torch
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    result = {"contender": name, "framework": factory.framework}
    if factory.framework == "jax":
        from dpo_jax.ops.attention import reset_attention_report
        reset_attention_report()  # count this contender's attention calls only (the dry run shares a process)
    for module in factory.preload:  # imported before the baseline: code is not the contender's memory
        importlib.import_module(module)
    batch = make_batch(config)
    setup = make_setup(config, factory.framework)
    probe = MemoryProbe(factory.framework)
    result["device"] = device_name(factory.framework)
    result["torch_threads"] = torch.get_num_threads()
    result["memory_kind"] = probe.kind
    baseline = probe.current()

    start = time.perf_counter()
    step = factory(setup, batch, config)
    first_loss = step()
    result["compile_s"] = time.perf_counter() - start
    result.update(getattr(step, "info", {}))  # what a contender reports of itself (e.g. LoRA's trainable_params)
    result["compile_peak_mem_bytes"] = probe.peak() - baseline
    result["peak_reset_after_compile"] = probe.reset_peak()

    for _ in range(config.warmup):
        step()
    times, loss = [], first_loss
    for _ in range(config.repeats):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    result["peak_mem_bytes"] = probe.peak() - baseline
    result["baseline_mem_bytes"] = baseline
    result["step_time_s"] = {"median": statistics.median(times), "min": min(times), "max": max(times)}
    result["times_s"] = times
    result["loss_first"], result["loss_last"] = first_loss, loss
    result["scored_tokens"] = batch.scored_tokens
    result["tokens_per_s"] = batch.scored_tokens / result["step_time_s"]["median"]
    if factory.framework == "jax" and config.kind == "model":
        from dpo_jax.ops.attention import attention_report
        result["attention"] = attention_report()  # which backend each attention call compiled with ("auto")
    if not all(math.isfinite(x) for x in (first_loss, loss)):
        result["error"] = f"non-finite loss: first {first_loss}, last {loss}"
    return result


def main(argv=None) -> int:
    from benchmarks.presets import BenchConfig

    argv = sys.argv[1:] if argv is None else argv
    name, config = argv[0], BenchConfig.from_json(argv[1])
    try:
        result = measure(name, config)
    except Exception as error:  # a contender that fails (e.g. torch.compile without a compiler) is a result
        traceback.print_exc()
        message = f"{type(error).__name__}: {error}".strip()
        result = {"contender": name, "error": message[:2000]}
    result["pid"] = os.getpid()
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
