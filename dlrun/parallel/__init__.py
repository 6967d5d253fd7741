"""Data-parallel training over processes (MPI) and GPUs (NCCL): the communicator the training loop
and the synchronized BatchNormalization use. It sits beside the engine and imports nothing above it."""

from dlrun.parallel.communicator import Communicator, active, launched_under_mpi, world

__all__ = ["Communicator", "active", "launched_under_mpi", "world"]
