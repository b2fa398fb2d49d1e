"""Multi-process for real: two `dpo-jax train` processes on localhost (jax.distributed, 2 CPU devices each)
train on one data=2 x fsdp=2 mesh spanning both, equal one process with 4 devices within 1e-5 over 3 steps,
and write one run directory; a process whose coordinator is unreachable stops with a clear error in time."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from tests.test_checkpointing import write_data

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--steps", "3", "--batch-size", "8", "--dim", "32", "--depth", "1", "--heads", "2", "--max-seq-len", "12",
          "--lr", "1e-3", "--checkpoint-every", "3", "--mesh", "data=2,fsdp=2", "--no-progress", "--seed", "3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env_with(devices: int):
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def train(args, devices):
    return subprocess.Popen([sys.executable, "-m", "dpo_jax", "train", *args], cwd=REPO, env=env_with(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return out


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    single, multi = tmp_path / "single", tmp_path / "multi"
    finish(train(["--data", data, "--out", str(single), *COMMON], devices=4))
    coordinator = f"127.0.0.1:{free_port()}"
    workers = [train(["--data", data, "--out", str(multi), *COMMON, "--coordinator", coordinator,
                      "--num-processes", "2", "--process-id", str(rank)], devices=2) for rank in (0, 1)]
    outputs = [finish(worker) for worker in workers]
    assert json.loads(outputs[0][outputs[0].index("{"):])["steps"] == 3

    want, got = losses(single), losses(multi)
    assert len(got) == len(want) == 3  # one metrics file, written once (by process 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    a, b = load_file(str(single / "policy.safetensors")), load_file(str(multi / "policy.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        scale = max(1.0, float(np.abs(a[key]).max()))
        assert float(np.abs(a[key] - b[key]).max()) / scale <= 1e-5, key
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["3"]


def test_unreachable_coordinator_is_a_clear_error(tmp_path):
    data = write_data(tmp_path / "data.jsonl")
    began = time.monotonic()
    process = train(["--data", data, "--out", str(tmp_path / "run"), *COMMON, "--coordinator",
                     f"127.0.0.1:{free_port()}", "--num-processes", "2", "--process-id", "1", "--init-timeout", "3"],
                    devices=2)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2, err[-2000:]
    assert "could not reach the coordinator 127.0.0.1:" in err and "within 3 s" in err
    assert "Traceback" not in err
    assert time.monotonic() - began < 60
    assert not (tmp_path / "run").exists()  # nothing was started before the inputs were validated
