"""A real kill: the CLI in a subprocess gets SIGKILL mid-run (at a random step, possibly mid-checkpoint),
then `--resume` finishes the run, and its per-step losses equal an uninterrupted run's (CPU, same seed)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from dpo_jax.train.outputs import read_metrics
from tests.test_checkpointing import write_data

TINY = ["--dim", "32", "--depth", "1", "--heads", "2", "--max-seq-len", "12", "--batch-size", "4",
        "--lr", "1e-3", "--steps", "40", "--checkpoint-every", "3", "--no-progress"]


def cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "dpo_jax", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(run_dir):
    return {record["step"]: record["loss"] for record in read_metrics(run_dir)}


def test_sigkill_at_a_random_step_then_resume_equals_uninterrupted_run(tmp_path):
    data = write_data(tmp_path / "data.jsonl", count=32)
    uninterrupted = cli("--data", data, "--out", str(tmp_path / "full"), *TINY)

    killed_dir = tmp_path / "killed"
    victim = cli("--data", data, "--out", str(killed_dir), *TINY)
    kill_at = int(np.random.default_rng().integers(5, 30))  # random on purpose: any moment must be safe
    deadline = time.monotonic() + 300
    while victim.poll() is None and time.monotonic() < deadline:
        if (killed_dir / "metrics.jsonl").exists() and len(losses(killed_dir)) >= kill_at:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, f"the run finished before the kill at step {kill_at}"

    resumed = cli("--resume", str(killed_dir), "--no-progress")
    resumed_output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_output
    full_output, _ = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, full_output

    full_losses, resumed_losses = losses(tmp_path / "full"), losses(killed_dir)
    assert sorted(resumed_losses) == list(range(1, 41))  # every step once: no gap, no duplicate
    assert resumed_losses == full_losses, f"killed at step >= {kill_at}"
    assert json.loads((killed_dir / "summary.json").read_text())["loss"] == full_losses[40]
