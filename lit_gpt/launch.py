"""How the processes of a launch find each other: torchrun's or srun's layout checked against the settings,
and a process group formed from the current launch attempt only.

``torchrun --max-restarts N`` keeps one key-value store for the whole job (its agent's TCPStore, at
``MASTER_ADDR:MASTER_PORT``) and starts the workers again after a failure. PyTorch's ``env://``
rendezvous connects the new workers to that store without a per-attempt namespace, so they can read the
keys that the dead attempt left -- a peer's address (gloo: "connectFullMesh failed ... Connection
refused") or a barrier count -- and fail or hang in start-up. ``Strategy`` forms the process group
through a ``PrefixStore`` named after the attempt (``TORCHELASTIC_RESTART_COUNT``, the same on every
worker that one agent starts), so an attempt sees its own keys only.
"""

from __future__ import annotations

import atexit
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from lightning.fabric.strategies import ModelParallelStrategy

from lit_gpt.errors import InvalidInput


class Strategy(ModelParallelStrategy):
    """Fabric's FSDP2 strategy, with the process group of a torchrun worker formed in its attempt's own
    namespace of the agent's store (elsewhere exactly Fabric's)."""

    def _setup_distributed(self) -> None:
        store = attempt_store(self._timeout)
        if store is not None and not dist.is_initialized():
            self._set_world_ranks()
            backend = self._get_process_group_backend()
            self._process_group_backend = backend
            device = self.root_device if self.root_device.type != "cpu" else None
            dist.init_process_group(
                backend,
                store=store,
                rank=self.global_rank,
                world_size=self.world_size,
                timeout=self._timeout,
                device_id=device,
            )
            if backend == "nccl":  # as Fabric does: NCCL warns about a group left undestroyed at exit
                atexit.register(dist.destroy_process_group)
        super()._setup_distributed()  # the rest of Fabric's set-up; the group exists, so it forms none


def attempt_store(timeout: timedelta) -> dist.Store | None:
    """The agent's store seen through this attempt's prefix, for a worker that torchrun started with a
    shared agent store; None otherwise (srun, Fabric's own launcher, one process)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"lit_gpt/attempt_{attempt}", store)


def devices_per_node(devices: int | str) -> int | str:
    """``devices``, checked against the processes per node that torchrun started, if it did ("auto"
    takes that number, so that a CPU run under torchrun needs no --devices)."""
    launched = os.environ.get("LOCAL_WORLD_SIZE")
    if launched is None:
        return devices
    if devices not in ("auto", int(launched)):
        raise InvalidInput(f"--devices {devices}, but torchrun started {launched} processes per node; make them agree")
    return int(launched)


def launched_world_size(devices: int | str, num_nodes: int) -> int:
    """The number of processes this launch will have: torchrun's or srun's, else devices x nodes."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_NTASKS" in os.environ and "SLURM_STEP_ID" in os.environ:
        return int(os.environ["SLURM_NTASKS"])
    per_node = devices if isinstance(devices, int) else max(torch.cuda.device_count(), 1)
    return per_node * num_nodes


def check_launch(devices: int | str, num_nodes: int) -> None:
    """The nodes that torchrun or srun started agree with ``--num_nodes`` (and, under srun, the tasks per
    node with ``--devices``), refused before any process group is formed."""
    if "LOCAL_WORLD_SIZE" in os.environ and "WORLD_SIZE" in os.environ:
        launched = int(os.environ["WORLD_SIZE"]) // int(os.environ["LOCAL_WORLD_SIZE"])
        launcher = "torchrun"
    elif "SLURM_NTASKS" in os.environ and "SLURM_STEP_ID" in os.environ:  # inside srun
        launched, launcher = int(os.environ.get("SLURM_STEP_NUM_NODES", os.environ.get("SLURM_NNODES", "1"))), "srun"
        tasks = int(os.environ["SLURM_NTASKS"]) // launched
        if devices not in ("auto", tasks):
            raise InvalidInput(f"--devices {devices}, but srun started {tasks} tasks per node; make them agree")
    else:
        return
    if launched != num_nodes:
        raise InvalidInput(
            f"--num_nodes {num_nodes}, but {launcher} started processes on {launched} node(s); make them agree"
        )
