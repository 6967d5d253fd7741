"""What a data-parallel run checks and sets up before training: the global batch splits evenly
over the processes, each rank's share of the host's cores, and its GPU."""

from __future__ import annotations

from typing import Any

from dlrun.config.schema import Config
from dlrun.engine import threads
from dlrun.parallel.communicator import Communicator, world


def start() -> Communicator:
    """The run's communicator, with this rank's BLAS threads set to its share of the host's cores."""
    comm = world()
    threads.share_cores(comm.local_size if comm.size > 1 else 1)
    return comm


def check_batch_split(cfg: Config, ranks: int) -> None:
    """`training.batch_size` is the global batch: a ConfigError at its line when `ranks` do not
    divide it, proposing the nearest sizes that do."""
    batch = cfg.resolved["training"]["batch_size"]
    if ranks <= 1 or batch % ranks == 0:
        return
    lower = batch // ranks * ranks
    options = [str(b) for b in (lower, lower + ranks) if b > 0]
    training = cfg.raw.get("training") if hasattr(cfg.raw, "get") else None
    raise cfg.error(
        f"training.batch_size {batch} is the global batch and must split evenly over the {ranks} processes",
        training,
        "batch_size" if training is not None else None,
        "training.batch_size",
        hint=f"use training.batch_size {' or '.join(options)}, or a process count that divides {batch}",
    )


def use_gpu(comm: Communicator, backend: Any) -> None:
    """Rank r uses GPU (r mod the GPUs on its host), before anything is allocated on it."""
    if comm.size > 1 and backend.is_gpu:
        cuda = backend.xp.cuda
        cuda.Device(comm.local_rank % cuda.runtime.getDeviceCount()).use()
