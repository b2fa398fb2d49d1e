"""Sharded DPO training on a device mesh: data parallel x FSDP, multi-host ready.

Mesh: two named axes, `data` (pure data parallelism: parameters replicated) and `fsdp` (parameters, gradients
and optimizer state split; batch split too). `make_mesh("data=2,fsdp=4")` lays the devices out in
`jax.devices()` order (process-major), so every process owns a contiguous block of the flattened
(data, fsdp) axis and therefore a contiguous slice of the batch - the slice `PreferenceDataset(process_index=,
process_count=)` loads. Default (`spec=None`): every device on `data`.

Partitioning rule (`leaf_spec`), applied to every leaf of the TrainState:
  * floating-point arrays with at least `MIN_SHARD_SIZE` elements are split over `fsdp` along their largest
    dimension divisible by the fsdp size (the first such dimension on a tie);
  * everything else is replicated: scalars (step, adam count), the RNG key data (uint32), small arrays
    (norm gains, biases) and arrays with no dimension divisible by the fsdp size.
The rule depends only on a leaf's shape and dtype, so adam's mu/nu (shaped like their parameter) are sharded
exactly like the parameter, and the reference parameters like the policy's.

The batch is split over (`data`, `fsdp`) on its leading axis. All shape checks (`validate_mesh_spec`,
`validate_batch`) run on the host and raise ValueError before anything is compiled.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")
MIN_SHARD_SIZE = 1024  # elements; smaller arrays are replicated (splitting them costs more than it saves)


def parse_mesh_spec(spec: str | Mapping[str, int] | None, num_devices: int | None = None) -> dict[str, int]:
    """{"data": d, "fsdp": f} from "data=2,fsdp=4" or a dict; missing axes are 1; None: every device on data.

    With `num_devices`, the product of the axis sizes must equal it.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        if num_devices is None:
            raise ValueError("a default mesh needs num_devices")
        return {"data": int(num_devices), "fsdp": 1}
    if isinstance(spec, str):
        sizes = {}
        for part in spec.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or not name:
                raise ValueError(f"mesh spec {spec!r}: expected comma-separated axis=size, e.g. 'data=2,fsdp=4'")
            if name in sizes:
                raise ValueError(f"mesh spec {spec!r}: axis {name!r} given twice")
            try:
                sizes[name] = int(value)
            except ValueError:
                raise ValueError(f"mesh spec {spec!r}: size of {name!r} is not an integer: {value!r}") from None
    else:
        sizes = dict(spec)
    unknown = [name for name in sizes if name not in AXES]
    if unknown:
        raise ValueError(f"unknown mesh axis {unknown[0]!r}; expected axes from {', '.join(AXES)}")
    for name, size in sizes.items():
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise ValueError(f"mesh axis {name!r} must have a positive integer size, got {size!r}")
    sizes = {name: int(sizes.get(name, 1)) for name in AXES}
    if num_devices is not None and math.prod(sizes.values()) != num_devices:
        shape = " x ".join(f"{name}={size}" for name, size in sizes.items())
        raise ValueError(f"mesh {shape} has {math.prod(sizes.values())} devices but {num_devices} are available")
    return sizes


def validate_mesh_spec(spec, devices=None) -> dict[str, int]:
    """Axis sizes of `spec` checked against `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(np.ravel(np.asarray(devices, dtype=object)))
    return parse_mesh_spec(spec, len(devices))


def make_mesh(spec: str | Mapping[str, int] | None = None, devices=None) -> Mesh:
    """A `Mesh` with axes ("data", "fsdp"); devices in the given (default `jax.devices()`) order."""
    devices = jax.devices() if devices is None else list(np.ravel(np.asarray(devices, dtype=object)))
    sizes = parse_mesh_spec(spec, len(devices))
    grid = np.asarray(devices, dtype=object).reshape(tuple(sizes[name] for name in AXES))
    return Mesh(grid, AXES)


def num_batch_shards(mesh: Mesh) -> int:
    return math.prod(mesh.shape[name] for name in BATCH_AXES)


def validate_batch(batch_size: int, mesh: Mesh, grad_accum: int = 1, process_count: int = 1) -> None:
    """ValueError unless the batch (and each grad-accum micro-batch) splits evenly over the batch axes."""
    shards = num_batch_shards(mesh)
    layout = " x ".join(f"{name}={mesh.shape[name]}" for name in BATCH_AXES)
    if batch_size % shards:
        raise ValueError(f"batch size {batch_size} is not divisible by the mesh's batch shards ({layout} = {shards})")
    if batch_size % grad_accum:
        raise ValueError(f"batch size {batch_size} is not divisible by grad_accum={grad_accum}")
    micro = batch_size // grad_accum
    if micro % shards:
        raise ValueError(f"grad-accum micro-batch of {micro} (batch {batch_size} / grad_accum {grad_accum}) is not "
                         f"divisible by the mesh's batch shards ({layout} = {shards})")
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} is not divisible by the process count {process_count}")


def leaf_spec(shape, dtype, fsdp_size: int, min_size: int = MIN_SHARD_SIZE) -> P:
    """PartitionSpec of one state leaf (the rule of the module docstring)."""
    shape = tuple(shape)
    if fsdp_size <= 1 or not shape or not jnp.issubdtype(dtype, jnp.floating) or math.prod(shape) < min_size:
        return P()
    candidates = [axis for axis, size in enumerate(shape) if size % fsdp_size == 0]
    if not candidates:
        return P()
    axis = max(candidates, key=lambda a: (shape[a], -a))
    return P(*([None] * axis + ["fsdp"]))


def state_shardings(state, mesh: Mesh, min_size: int = MIN_SHARD_SIZE):
    """A pytree like `state` (TrainState or any tree of arrays / ShapeDtypeStructs) of NamedShardings."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda leaf: NamedSharding(mesh, leaf_spec(np.shape(leaf), leaf.dtype, fsdp, min_size)),
                        state)


def shard_train_state(state, mesh: Mesh, min_size: int = MIN_SHARD_SIZE):
    """`state` placed on `mesh` by `state_shardings`.

    Multi-process: every process must hold the same values (same seed / checkpoint); they go through host memory
    so that each process places only its own devices' slices.
    """
    shardings = state_shardings(state, mesh, min_size)
    if jax.process_count() > 1:
        state = jax.device_get(state)
    return jax.device_put(state, shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over (data, fsdp); every other axis whole."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def make_global_batch(local_arrays: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global batch arrays from this process's rows (all rows when single-process)."""
    sharding = batch_sharding(mesh)
    return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
            for key, value in local_arrays.items()}


def gather_replicated(tree, mesh: Mesh):
    """Every leaf fully replicated (addressable on every process, e.g. to save the final policy)."""
    target = replicated(mesh)
    return jax.jit(lambda x: x, out_shardings=jax.tree.map(lambda _: target, tree))(tree)


DISTRIBUTED_ENV = ("DPO_JAX_COORDINATOR", "DPO_JAX_NUM_PROCESSES", "DPO_JAX_PROCESS_ID")


DEFAULT_INIT_TIMEOUT = 300  # seconds a process waits for the coordinator (process 0) to come up


def sync_processes(name: str) -> None:
    """A barrier across the processes of a multi-process run (nothing on one process): e.g. process 0 has made
    the run directory before the others open it."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Block until a TCP connection to `address` ("host:port") succeeds, or raise ConnectionError after `timeout`.

    `jax.distributed.initialize` aborts the whole process (a C++ fatal error, no Python exception) when the
    coordinator cannot be reached, so every process but the first checks it here first.
    """
    import socket
    import time

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator address {address!r} must be HOST:PORT")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, max(timeout, 0.1))):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"could not reach the coordinator {address} within {timeout:g} s ({err.strerror or err}); "
                    "start process 0 first, or check the address, the port and the firewall") from None
            time.sleep(0.5)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, *, timeout: float = DEFAULT_INIT_TIMEOUT) -> bool:
    """`jax.distributed.initialize` for multi-process runs; returns whether it was called.

    Arguments default to the environment variables DPO_JAX_COORDINATOR ("host:port"), DPO_JAX_NUM_PROCESSES
    and DPO_JAX_PROCESS_ID. With none of them given, a single process is a no-op unless the platform
    advertises a cluster itself (a TPU pod slice sets TPU worker variables; SLURM/Open MPI set theirs):
    then `jax.distributed.initialize()` auto-detects everything. Call it before any other jax call.
    A process other than 0 that cannot reach the coordinator within `timeout` seconds raises ConnectionError.
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("DPO_JAX_COORDINATOR") or None
    if num_processes is None and env.get("DPO_JAX_NUM_PROCESSES"):
        num_processes = int(env["DPO_JAX_NUM_PROCESSES"])
    if process_id is None and env.get("DPO_JAX_PROCESS_ID"):
        process_id = int(env["DPO_JAX_PROCESS_ID"])
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if explicit:
        if num_processes == 1 and coordinator_address is None:
            return False
        if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
            raise ValueError(f"process_id {process_id} is not in [0, num_processes={num_processes})")
        if coordinator_address is not None and process_id not in (None, 0):
            wait_for_coordinator(coordinator_address, timeout)
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=int(max(timeout, 1)))
        return True
    cluster = ("," in env.get("TPU_WORKER_HOSTNAMES", "") or int(env.get("SLURM_NTASKS", "1")) > 1
               or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1)
    if cluster:
        jax.distributed.initialize()
        return True
    return False
