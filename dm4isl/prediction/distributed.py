"""Processes of a prediction on several GPUs or nodes: Lightning Fabric DDP, each rank predicting its own shard."""

from __future__ import annotations

import logging

import lightning as L

log = logging.getLogger(__name__)

#: ``device`` setting → Lightning accelerator.
ACCELERATORS = {"auto": "auto", "cpu": "cpu", "cuda": "cuda", "gpu": "cuda"}


def start_processes(device: str, devices: int, num_nodes: int = 1) -> L.Fabric | None:
    """Start ``devices`` processes per node on ``num_nodes`` nodes (DDP: NCCL on GPUs, gloo on CPUs); None for one.

    Lightning Fabric starts the other local processes by re-running the command (Hydra overrides included), or
    adopts the ranks of an external launcher (``srun`` on SLURM, ``torchrun``); ``devices × num_nodes`` must match
    the number of tasks. Every process returns here with its rank (``fabric.global_rank``) and its device.
    """
    if devices < 1 or num_nodes < 1:
        raise ValueError(f"devices={devices}, num_nodes={num_nodes}: expected positive numbers of processes")
    if devices * num_nodes == 1:
        return None
    if device not in ACCELERATORS:
        raise ValueError(f"device={device!r} with devices={devices}: expected one of {sorted(ACCELERATORS)}")
    fabric = L.Fabric(accelerator=ACCELERATORS[device], devices=devices, num_nodes=num_nodes, strategy="ddp")
    fabric.launch()
    log.info("prediction process %d of %d on %s", fabric.global_rank, fabric.world_size, fabric.device)
    return fabric
