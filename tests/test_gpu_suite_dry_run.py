"""`python -m benchmarks --suite gpu --dry-run`: every part of the GPU suite at tiny shapes on CPU, end to end.

The run itself is the test of the wiring (environment, parity, every contender of every preset, the sweep,
checkpointed JSON, the one-page summary, the figures); the checks below make it fail on a part that went
missing, a parity row that is not ok, a contender that errored, or a skip without a reason. Then the budget
(tasks that do not fit are listed, with the command that runs them) and --resume (what was measured is kept).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.suite.plan import HEAD_CONTENDERS, MODEL_CONTENDERS, MODEL_TIERS, SWEEP_CONTENDERS

REPO = Path(__file__).resolve().parent.parent
CUDA_ONLY = ("liger_dpo", "liger_head")  # Triton kernels: skipped on a CPU, with the reason


def suite(*args, timeout=600):
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--suite", "gpu", "--dry-run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def files(out_dir):
    return {path.name.split("_", 2)[-1]: path for path in Path(out_dir).iterdir()}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("suite")
    stdout = suite("--out-dir", str(out_dir))
    written = files(out_dir)
    return json.loads(written["gpu-suite.json"].read_text()), written, stdout


def test_every_part_ran_and_was_written(dry_run):
    payload, written, stdout = dry_run
    assert payload["status"] == "complete" and payload["dry_run"] and not payload["skipped"]
    assert set(written) == {"gpu-suite.json", "gpu-suite.md", "gpu-125m.png", "head-128k.png", "gpu-350m.png",
                            "sweep-seq.png"}
    for name in ("gpu-125m.png", "head-128k.png", "gpu-350m.png", "sweep-seq.png"):
        assert written[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    environment = payload["environment"]
    assert environment["versions"]["jax"] and environment["jax"]["backend"] == "cpu"
    assert "parity ok" in stdout


def test_parity_rows_pass_and_gpu_only_rows_say_why(dry_run):
    parity = dry_run[0]["parity"]
    assert parity["parity_ok"], parity["failed"]
    assert [row["status"] for row in parity["parity"]] == ["ok"] * 4
    for row in parity["parity"]:
        assert row["tol"] == 1e-5 and max(row["value"] if isinstance(row["value"], list) else [row["value"]]) <= 1e-5
    for row in parity["drift"] + parity["smoke"]:
        if "cudnn" in row["check"] or "cuDNN" in row["check"]:
            assert row["status"] == "skipped" and "NVIDIA GPU" in row["reason"]
        elif row["status"] == "measured":
            assert all(math.isfinite(row[k]) for k in ("logp_max_rel_diff", "loss_abs_diff", "grad_rel_diff"))
            assert row["logp_max_rel_diff"] < 0.05  # bfloat16 rounding, not a wrong mask
        else:
            assert row["status"] == "skipped" and row["reason"]


@pytest.mark.parametrize("part, contenders", [("gpu-125m", MODEL_CONTENDERS),
                                              ("gpu-350m", MODEL_TIERS[0] + MODEL_TIERS[1]),
                                              ("head-128k", HEAD_CONTENDERS)])
def test_every_contender_measured_or_skipped_with_a_reason(dry_run, part, contenders):
    results = dry_run[0]["presets"][part]["contenders"]
    assert set(results) == set(contenders)
    for name, result in results.items():
        if name in CUDA_ONLY:
            assert result["skipped"], name
            continue
        assert result["error"] is None, (name, result["error"])
        assert result["tokens_per_s"] > 0 and math.isfinite(result["loss_last"])
        if part != "head-128k":  # same weights, policy = reference (the head preset perturbs its reference)
            assert result["loss_first"] == pytest.approx(math.log(2), abs=1e-5)
        if name.startswith("dpo_jax"):
            backends = {line.split()[1].rstrip(":") for line in result["attention"]}
            assert backends == ({"jax_nn"} if name == "dpo_jax_jax_nn" else {"xla"}), (name, result["attention"])


def test_sweep_has_every_length_and_reuses_the_preset_point(dry_run):
    payload, written, _ = dry_run
    points = payload["sweep"]["points"]
    for point in points.values():
        assert set(point["contenders"]) == set(SWEEP_CONTENDERS)
        assert all(r.get("error") is None and r["tokens_per_s"] > 0 for r in point["contenders"].values())
    summary = written["gpu-suite.md"].read_text()
    assert "| 32 (2) |" in summary and "| 64 (1) |" in summary  # 32: the tiny gpu-125m preset itself


def test_summary_reads_top_down(dry_run):
    summary = dry_run[1]["gpu-suite.md"].read_text()
    positions = [summary.index(title) for title in ("## Machine", "## Parity", "cuDNN smoke test", "## Presets",
                                                    "### gpu-125m", "### head-128k", "### gpu-350m",
                                                    "## Sequence-length sweep")]
    assert positions == sorted(positions)
    assert "dry run" in summary and "Attention backend compiled: dpo_jax: xla" in summary


def test_budget_lists_what_did_not_fit_and_resume_keeps_what_was_measured(dry_run, tmp_path):
    suite("--out-dir", str(tmp_path / "cut"), "--parts", "environment,gpu-125m", "--budget-s", "5")
    cut = json.loads(files(tmp_path / "cut")["gpu-suite.json"].read_text())
    assert cut["status"] == "cut by the time budget"
    assert [s["task"] for s in cut["skipped"]] == [f"gpu-125m/{n}" for n in MODEL_CONTENDERS]
    assert "--parts gpu-125m --resume" in files(tmp_path / "cut")["gpu-suite.md"].read_text()

    full = dry_run[1]["gpu-suite.json"]
    suite("--out-dir", str(tmp_path / "resumed"), "--parts", "environment,gpu-125m", "--resume", str(full))
    resumed = json.loads(files(tmp_path / "resumed")["gpu-suite.json"].read_text())
    kept = resumed["presets"]["gpu-125m"]["contenders"]
    measured = {n for n, r in dry_run[0]["presets"]["gpu-125m"]["contenders"].items() if not r.get("skipped")}
    assert {n for n, r in kept.items() if r.get("resumed")} == measured
    assert resumed["status"] == "complete"
