"""Data parallelism over every device, on one host or several.

Training runs over a one-axis :class:`jax.sharding.Mesh` named ``data`` that spans all
devices of all processes: each global batch is split evenly over the devices, while the
parameters, optimizer state and the (small) datasets are replicated on every device.
One device is the same code path with a mesh of size 1.

Several hosts run one process each (or several per host). Each process calls
:func:`initialize` before any other JAX work, loads the data itself and puts it on its
own devices; inside an epoch every device gathers only its slice of each global batch.
Files are written by the primary process; Orbax coordinates checkpoints itself.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    auto: bool = False,
) -> bool:
    """Joins a multi-process run; returns whether one was joined.

    Explicit arguments win. Otherwise a run is joined when ``auto`` is set (JAX detects
    Cloud TPU pod slices, Slurm and Open MPI) or when ``JAX_COORDINATOR_ADDRESS`` is set.
    Must be called before any JAX computation.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if all(value is None for value in explicit) and not auto and "JAX_COORDINATOR_ADDRESS" not in os.environ:
        return False
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def data_mesh() -> Mesh:
    """A mesh with one ``data`` axis over every device of every process."""
    return Mesh(np.array(jax.devices()), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the ``data`` axis; other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree, mesh: Mesh):
    """Puts a pytree whose values are the same in every process on every device of ``mesh``.

    Accepts numpy arrays, jax arrays (PRNG keys included) and scalars; each process
    transfers only to its own devices.
    """
    sharding = replicated(mesh)

    def put(leaf):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(leaf)
            return jax.random.wrap_key_data(put(jax.random.key_data(leaf)), impl=impl)
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree.map(put, tree)


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch size") -> None:
    """Raises ValueError unless ``batch_size`` splits evenly over the mesh's devices."""
    devices = mesh.size
    if batch_size % devices:
        suggestion = -(-batch_size // devices) * devices
        raise ValueError(
            f"{name} {batch_size} does not split over {devices} devices: "
            f"use a multiple of {devices}, for example {suggestion}"
        )


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process reaches this point (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def host_description() -> str:
    """This machine in a few words, for timings: ``AMD EPYC, AVX-512, 2 cores``.

    Epoch times move 2-3x between CPUs of one family (AVX2 against AVX-512), so every
    recorded time carries the host it was measured on.
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass  # not Linux: the processor name alone
    vectors = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    return ", ".join(filter(None, [model, vectors, _cores()]))


def _cores() -> str:
    """``2 cores``, or ``1 of 2 cores`` when this process may run on fewer (``taskset``)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{os.cpu_count()} cores" if usable == os.cpu_count() else f"{usable} of {os.cpu_count()} cores"
