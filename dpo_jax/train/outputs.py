"""The run directory's files: metrics.jsonl (append, truncate on resume), summary.json, training.png, and the
names of the final policy's files.

Every file is written atomically with the permissions `open()` gives (`dpo_jax.files.atomic_write`): whole files
go to a temporary file renamed into place; metrics.jsonl grows by one `write` of a whole line per record (an
`O_APPEND` write), and a torn last line (a kill mid-write) is ignored when read and dropped on resume.
"""

from __future__ import annotations

import json
import math
import os

from dpo_jax.files import atomic_write, atomic_write_text

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
PLOT_FILE = "training.png"
RUN_CONFIG_FILE = "run_config.json"
POLICY_FILE = "policy.safetensors"   # an x-transformers policy
HF_POLICY_DIR = "hf_policy"          # a Hugging Face family policy: a directory transformers loads
ADAPTER_DIR = "adapter"              # a LoRA policy: its adapters as a PEFT directory


def _json_value(value):
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN/Inf: write "nan"/"inf"


class MetricsLog:
    """One JSON object per logged step; on resume, entries beyond the restored step are dropped."""

    def __init__(self, run_dir, *, resume_step: int = 0, write: bool = True):
        self.path = os.path.join(run_dir, METRICS_FILE)
        self.write = write  # False on every host but the first: one writer per file
        self.records = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step else []
        self._rewrite()

    def _rewrite(self) -> None:
        if not self.write:
            return
        atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in self.records))

    def append(self, step: int, metrics: dict) -> dict:
        record = {"step": int(step), **{k: _json_value(v) for k, v in metrics.items()}}
        self.records.append(record)
        if not self.write:
            return record
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            os.write(descriptor, (json.dumps(record) + "\n").encode())
        finally:
            os.close(descriptor)
        return record


def read_metrics(path) -> list[dict]:
    """Records of a metrics.jsonl; a torn last line (a kill mid-write) is ignored."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return records


def write_json(path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def plot_training(records: list[dict], path) -> None:
    """Loss and reward margins against step (matplotlib Agg: no display needed); eval points where evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    figure, (loss_axis, margin_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(steps, [r.get("loss") for r in records], label="train")
    loss_axis.set(title="DPO loss", xlabel="step", ylabel="loss")
    margin_axis.plot(steps, [r.get("rewards/margins") for r in records], label="margin")
    margin_axis.plot(steps, [r.get("rewards/chosen") for r in records], label="chosen", alpha=0.6)
    margin_axis.plot(steps, [r.get("rewards/rejected") for r in records], label="rejected", alpha=0.6)
    evaluated = [r for r in records if "eval/loss" in r]
    if evaluated:
        eval_steps = [r["step"] for r in evaluated]
        loss_axis.plot(eval_steps, [float(r["eval/loss"]) for r in evaluated], "o-", label="eval")
        margin_axis.plot(eval_steps, [float(r["eval/rewards/margins"]) for r in evaluated], "o-", label="eval margin")
        loss_axis.legend()
    margin_axis.set(title="rewards", xlabel="step")
    margin_axis.legend()
    figure.tight_layout()
    with atomic_write(path, binary=True) as (handle, _):
        figure.savefig(handle, dpi=100, format="png")
    plt.close(figure)
