"""LoRA on a device mesh (a subprocess with 8 CPU devices, tests/lora_sharding_worker.py): the base sharded by
FSDP and frozen, the adapters trained, equal to the single-device run, and a sharded checkpoint resumed."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lora_on_a_data_by_fsdp_mesh_equals_one_device(tmp_path):
    out = tmp_path / "lora_mesh.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("XLA_FLAGS", None)
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "lora_sharding_worker.py"), str(out)],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    report = json.loads(out.read_text())
    assert report["mesh"] == "data=2,fsdp=4"
    assert report["sharded_base_leaves"] > 0
    for key in ("trained", "resumed"):
        assert max(report[key]["loss"], report[key]["adapters"]) <= 1e-5, (key, report[key])
        assert report[key]["adapters_moved"] > 0, (key, report[key])
