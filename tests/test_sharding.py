"""dpo_jax.sharding: mesh parsing, the FSDP partitioning rule, layout errors, and (in a subprocess with 8 CPU
devices, tests/sharding_worker.py) sharded training equal to single-device training, plus checkpoints that
restore onto a different mesh shape.
"""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from dpo_jax import cli, sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sharded_training_matches_single_device_on_8_cpu_devices(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = tmp_path / "report.json"
    result = subprocess.run([sys.executable, os.path.join(REPO, "tests", "sharding_worker.py"), str(out)],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    report = json.loads(out.read_text())
    assert set(report["meshes"]) == {"data=8,fsdp=1", "data=1,fsdp=8", "data=2,fsdp=4"}
    for spec, diffs in report["meshes"].items():
        assert max(diffs["metrics"], diffs["params"], diffs["opt_state"]) <= 1e-5, (spec, diffs)
    assert report["meshes"]["data=8,fsdp=1"]["sharded_params"] == 0
    assert report["meshes"]["data=1,fsdp=8"]["sharded_params"] > 0
    assert len(report["errors"]) == 7


@pytest.mark.parametrize("spec, expected", [
    ("data=2,fsdp=4", {"data": 2, "fsdp": 4}),
    ("fsdp=8", {"data": 1, "fsdp": 8}),
    (" data = 4 ", {"data": 4, "fsdp": 1}),
    ({"data": 2, "fsdp": 2}, {"data": 2, "fsdp": 2}),
    (None, {"data": 8, "fsdp": 1}),
])
def test_parse_mesh_spec(spec, expected):
    assert sharding.parse_mesh_spec(spec, 8 if spec is None else None) == expected


@pytest.mark.parametrize("spec, devices, message", [
    ("data=2,tensor=4", None, "unknown mesh axis 'tensor'"),
    ("data=2,fsdp=4", 4, "has 8 devices but 4 are available"),
    ("data=0", None, "positive integer size"),
    ("data=2,data=2", None, "given twice"),
    ("data:2", None, "axis=size"),
    ("data=two", None, "not an integer"),
])
def test_parse_mesh_spec_errors(spec, devices, message):
    with pytest.raises(ValueError, match=message):
        sharding.parse_mesh_spec(spec, devices)


def test_make_mesh_defaults_to_every_device_on_data_and_rejects_a_wrong_size():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data", "fsdp") and mesh.shape["fsdp"] == 1
    with pytest.raises(ValueError, match="devices but"):
        sharding.make_mesh({"data": mesh.shape["data"] + 1})


@pytest.mark.parametrize("shape, dtype, fsdp, spec", [
    ((32, 64), jnp.float32, 8, P(None, "fsdp")),      # largest divisible dimension
    ((64, 32), jnp.float32, 8, P("fsdp")),
    ((64, 64), jnp.float32, 4, P("fsdp")),             # tie: the first
    ((60, 64), jnp.float32, 8, P(None, "fsdp")),       # 60 not divisible: the other one
    ((60, 36), jnp.float32, 8, P()),                   # nothing divisible: replicated
    ((64,), jnp.float32, 8, P()),                      # small: replicated
    ((4096,), jnp.float32, 8, P("fsdp")),
    ((), jnp.float32, 8, P()),                         # scalars
    ((4096,), jnp.uint32, 8, P()),                     # integer state (rng, counters)
    ((64, 64), jnp.float32, 1, P()),                   # no fsdp axis
])
def test_leaf_spec_rule(shape, dtype, fsdp, spec):
    assert sharding.leaf_spec(shape, dtype, fsdp) == spec


def test_validate_batch_errors():
    mesh = sharding.make_mesh()  # 1 device here: only grad_accum and process errors can fire
    sharding.validate_batch(6, mesh, grad_accum=3)
    with pytest.raises(ValueError, match="grad_accum=4"):
        sharding.validate_batch(6, mesh, grad_accum=4)
    with pytest.raises(ValueError, match="process count 4"):
        sharding.validate_batch(6, mesh, process_count=4)


def test_cli_rejects_bad_mesh_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--mesh", "data=2,tensor=4", "--out", str(tmp_path / "a"), "--no-progress"])
    assert exit_info.value.code == 2 and "unknown mesh axis" in capsys.readouterr().err
    devices = sharding.make_mesh().size
    code = cli.main(["train", "--mesh", f"data={devices + 1}", "--out", str(tmp_path / "b"), "--no-progress"])
    assert code == 2 and "devices but" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # rejected before any file (or compile)


def test_initialize_distributed_is_a_no_op_for_one_process(monkeypatch):
    for name in sharding.DISTRIBUTED_ENV + ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert sharding.initialize_distributed() is False
    assert sharding.initialize_distributed(num_processes=1) is False
    with pytest.raises(ValueError, match="process_id 3"):
        sharding.initialize_distributed("localhost:1234", num_processes=2, process_id=3)
