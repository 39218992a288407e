"""Devices, meshes and multi-host set-up for data-parallel training."""
from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def maybe_initialize(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
    """`jax.distributed.initialize` from flags or env (YOLOJAX_COORDINATOR, YOLOJAX_NUM_PROCESSES,
    YOLOJAX_PROCESS_ID); does nothing for a single process. Must run before any other JAX call."""
    coordinator = coordinator or os.environ.get("YOLOJAX_COORDINATOR")
    num_processes = num_processes or int(os.environ.get("YOLOJAX_NUM_PROCESSES", "0") or 0)
    if process_id is None and os.environ.get("YOLOJAX_PROCESS_ID"):
        process_id = int(os.environ["YOLOJAX_PROCESS_ID"])
    if coordinator and num_processes and num_processes > 1:
        if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
            # cross-process collectives on CPU go through gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)


def data_mesh() -> Mesh:
    """A 1-D mesh over every device of every host, axis 'data'."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
    """(batch sharding along 'data', replicated)."""
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


JIT_KEYS = ("images", "boxes", "classes", "mask", "ignore", "obb")


def device_batch(batch: dict, sharding: NamedSharding) -> dict:
    """This host's slice of the global batch -> global jax.Arrays sharded over 'data' (jit inputs only)."""
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
            for k in JIT_KEYS if k in batch}


def is_primary() -> bool:
    return jax.process_index() == 0
