"""Part (a) of the GPU suite: the machine - device, driver, CUDA/cuDNN and package versions.

Read in a subprocess of its own (`python -m benchmarks.suite.environment`), so that neither framework's GPU
runtime stays alive in the suite's parent process, which only spawns workers.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys

PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax", "orbax-checkpoint", "numpy",
            "torch", "triton", "x-transformers", "liger-kernel", "transformers", "nvidia-cudnn-cu13",
            "nvidia-cudnn-cu12", "matplotlib")


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    found["python"] = platform.python_version()
    return found


def nvidia_smi() -> dict | None:
    """name, driver, memory and clocks of GPU 0 as nvidia-smi reports them, or None without it."""
    if shutil.which("nvidia-smi") is None:
        return None
    fields = ("name", "driver_version", "memory.total", "clocks.max.sm", "clocks.sm", "power.limit",
              "compute_cap", "persistence_mode")
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"error": str(error)}
    if done.returncode != 0:
        return {"error": done.stderr.strip()[:500]}
    values = [v.strip() for v in done.stdout.splitlines()[0].split(",")]
    return dict(zip(fields, values))


def jax_devices() -> dict:
    try:
        import jax
        devices = jax.devices()
        device = devices[0]
        info = {"backend": jax.default_backend(), "count": len(devices), "kind": getattr(device, "device_kind", None),
                "platform_version": str(getattr(getattr(device, "client", None), "platform_version", "")),
                "compute_capability": getattr(device, "compute_capability", None)}
        try:
            from jax._src.lib import cuda_versions  # jax's own record of the CUDA/cuDNN it loaded
            if cuda_versions is not None:
                info["cudnn"] = cuda_versions.cudnn_get_version()
                info["cuda_runtime"] = cuda_versions.cuda_runtime_get_version()
        except Exception as error:  # a private module: report, never fail on it
            info["cudnn_error"] = f"{type(error).__name__}: {error}"[:300]
        return info
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"[:1000]}


def torch_devices() -> dict:
    try:
        import torch
        info = {"cuda": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(name=props.name, multiprocessors=props.multi_processor_count,
                        memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
        return info
    except Exception as error:
        return {"error": f"{type(error).__name__}: {error}"[:1000]}


def cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def describe() -> dict:
    return {"nvidia_smi": nvidia_smi(), "jax": jax_devices(), "torch": torch_devices(), "cpu": cpu_name(),
            "versions": package_versions(), "loadavg": os.getloadavg(),
            "env": {key: os.environ[key] for key in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                                                     "JAX_COMPILATION_CACHE_DIR", "CUDA_VISIBLE_DEVICES")
                    if key in os.environ}}


def device_label(environment: dict) -> str:
    """The device the results are named by: the GPU's name, else the CPU's."""
    smi = environment.get("nvidia_smi") or {}
    if smi.get("name"):
        return smi["name"]
    torch_info = environment.get("torch") or {}
    if torch_info.get("name"):
        return torch_info["name"]
    return environment.get("cpu", "cpu")


def main() -> int:
    sys.stdout.write("RESULT " + json.dumps(describe()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
