"""`from_pretrained(dir, mesh=...)` on 8 CPU devices, run by tests/test_hf_checkpoint.py in a subprocess.

`python tests/hf_load_worker.py WORK_DIR OUT.json`: writes a small random Llama checkpoint in several shard
files, loads it without a mesh and with mesh data=2,fsdp=4, and checks that every parameter has exactly the
`dpo_jax.sharding.leaf_spec` placement, that large ones are split over fsdp, and that the values equal the
single-device load. Exits non-zero on the first failed check; writes counts as JSON.
"""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import dpo_jax  # noqa: E402
from dpo_jax.models.llama import LlamaConfig, LlamaForCausalLM  # noqa: E402
from dpo_jax.models.pretrained import parameter_table  # noqa: E402
from dpo_jax.sharding import leaf_spec, make_mesh  # noqa: E402


def main(work_dir, out):
    assert jax.device_count() == 8, jax.device_count()
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    dpo_jax.save_pretrained(LlamaForCausalLM(config, rngs=nnx.Rngs(0)), work_dir, max_shard_size="80KB")
    assert len([n for n in os.listdir(work_dir) if n.endswith(".safetensors")]) > 2
    plain = dpo_jax.from_pretrained(work_dir)
    mesh = make_mesh("data=2,fsdp=4")
    placed = dpo_jax.from_pretrained(work_dir, mesh="data=2,fsdp=4")
    counts = {"sharded": 0, "replicated": 0}
    for want, got in zip(parameter_table(plain), parameter_table(placed)):
        value = got.param.get_value()
        spec = leaf_spec(value.shape, value.dtype, mesh.shape["fsdp"])
        assert value.sharding.mesh.shape == mesh.shape and value.sharding.spec == spec, (got.key, value.sharding)
        assert np.array_equal(np.asarray(value), np.asarray(want.param.get_value())), got.key
        counts["replicated" if value.sharding.is_fully_replicated else "sharded"] += 1
        if not value.sharding.is_fully_replicated:
            shard = value.addressable_shards[0].data
            assert shard.size * mesh.shape["fsdp"] == value.size, (got.key, shard.shape)
    tokens = np.random.default_rng(0).integers(0, 256, size=(2, 8))
    assert np.allclose(np.asarray(placed(tokens)), np.asarray(plain(tokens)), atol=1e-5)
    with open(out, "w") as handle:
        json.dump(counts, handle)
    print(counts)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
