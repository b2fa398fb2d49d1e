"""`python -m benchmarks --quick` end to end in a subprocess: JSON schema, finite numbers, .md and .png written."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONTENDERS = ("x_transformers", "dpo_torch", "dpo_torch_compile", "dpo_jax")


def _positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    completed = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)], cwd=REPO,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out, json.loads(out.read_text()), completed.stdout


def test_schema(quick_run):
    _, payload, _ = quick_run
    for key in ("device", "preset", "config", "command", "versions", "contenders", "loadavg"):
        assert key in payload, key
    assert payload["preset"] == "quick"
    assert isinstance(payload["device"], str) and payload["device"]
    assert "--quick" in payload["command"]
    for package in ("torch", "jax", "x-transformers"):
        assert payload["versions"][package]
    assert tuple(payload["contenders"]) == CONTENDERS


@pytest.mark.parametrize("name", CONTENDERS)
def test_contender_numbers(quick_run, name):
    _, payload, _ = quick_run
    result = payload["contenders"][name]
    assert result["error"] is None, result["error"]
    step = result["step_time_s"]
    assert all(_positive(step[key]) for key in ("median", "min", "max"))
    assert step["min"] <= step["median"] <= step["max"]
    for key in ("tokens_per_s", "flops_per_step", "compile_s", "ratio_to_x_transformers"):
        assert _positive(result[key]), (key, result[key])
    assert isinstance(result["peak_mem_bytes"], int) and result["peak_mem_bytes"] >= 0
    assert "mfu" in result  # null on CPU without --peak-flops
    assert math.isfinite(result["loss_last"])


def test_same_batch_and_weights(quick_run):
    """Every contender starts from the same weights and batch: the first loss is log 2 for all (policy = ref)."""
    _, payload, _ = quick_run
    scored = {r["scored_tokens"] for r in payload["contenders"].values()}
    assert len(scored) == 1
    for result in payload["contenders"].values():
        assert result["loss_first"] == pytest.approx(math.log(2), abs=1e-5)


def test_markdown_and_png(quick_run):
    out, _, stdout = quick_run
    markdown = out.with_suffix(".md").read_text()
    assert "| contender |" in markdown and "dpo_jax" in markdown
    png = out.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "scored tok/s" in stdout
