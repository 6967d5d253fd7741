"""One communicator object for data-parallel training, ChainerMN-style.

`world()` is the run's communicator: a single-process one that does nothing (so the training loop
has no "if distributed" branches), or, when the process was started by mpiexec/srun, one over
mpi4py's COMM_WORLD. mpi4py is imported only then: a plain run never loads MPI.

All reductions are sums (of a flat gradient buffer, of small statistics) or maxima (of flags the
ranks must agree on), so the caller divides by global counts: never a mean of means.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import traceback
from typing import Any

import numpy as np

from dlrun.errors import DlrunError

# What mpiexec (MPICH's hydra, Open MPI's prterun), a PMIx launcher or Slurm's srun put in each
# rank's environment; any of them with a size above 1 means "launched as one of several ranks".
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS", "PMIX_SIZE")
_RANK_VARS = ("PMIX_RANK",)  # PMIx gives no size variable: its presence is enough to ask MPI
_LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "PMIX_LOCAL_SIZE")

MPI_HINT = "pip install 'dlrun[mpi]'"


def _env_int(names: tuple[str, ...]) -> int | None:
    for name in names:
        value = os.environ.get(name, "")
        head = value.split("(")[0].split(",")[0]  # Slurm writes e.g. "2(x3)"
        if head.isdigit():
            return int(head)
    return None


def launched_under_mpi() -> bool:
    """Whether this process is one rank of several, from the launcher's environment alone."""
    size = _env_int(_SIZE_VARS)
    if size is not None:
        return size > 1
    return any(name in os.environ for name in _RANK_VARS)


def local_ranks() -> int:
    """How many ranks share this host (1 outside MPI): the cores are theirs to share."""
    if not launched_under_mpi():
        return 1
    return max(1, _env_int(_LOCAL_SIZE_VARS) or 1)


class Communicator:
    """The single-process communicator: rank 0 of 1, every collective the identity."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    kind = "single"

    @property
    def is_writer(self) -> bool:
        """Whether this rank prints and writes the run folder (rank 0)."""
        return self.rank == 0

    def allreduce(self, buffer: Any) -> None:
        """Sum a flat array (host or device) over the ranks, in place."""

    def allreduce_stats(self, values: Any) -> Any:
        """The sum over ranks of a small array (host or device), as a new array of the same kind."""
        return values

    def agree(self, value: Any) -> Any:
        """The largest of every rank's `value` (an int, or a tuple of ints elementwise): a flag any
        rank can raise for all."""
        return value

    def bcast(self, obj: Any, root: int = 0) -> Any:
        """Rank `root`'s picklable object, on every rank."""
        return obj

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's object, in rank order (on every rank)."""
        return [obj]

    def barrier(self) -> None: ...

    def abort(self, code: int = 1) -> None:
        """End every rank now (MPI_Abort); single-process: exit."""
        raise SystemExit(code)

    def hosts(self) -> list[str]:
        """The host name of each rank, in rank order."""
        return self.gather(socket.gethostname())

    def library(self) -> str | None:
        """The MPI library's version line, or None without MPI."""
        return None

    def describe(self) -> dict[str, Any]:
        """What manifest.json records about the processes."""
        hosts = self.hosts()
        return {
            "world_size": self.size,
            "communicator": self.kind,
            "hosts": sorted(set(hosts)),
            "ranks_per_host": {h: hosts.count(h) for h in sorted(set(hosts))},
            "mpi_library": self.library(),
        }

    def check_same(self, what: str, digest: str) -> None:
        """Raise a DlrunError on every rank when `digest` differs from rank 0's."""
        reference = self.bcast(digest)
        bad = self.agree(int(digest != reference))
        if bad:
            raise DlrunError(
                f"the {what} differ between the processes (rank {self.rank}: {digest[:12]}, rank 0: {reference[:12]})",
                hint="run the same dlrun version and config on every host, with the data at the same path",
            )


def checksum(*arrays: Any) -> str:
    """A hash of host or device arrays' bytes: equal only for bit-identical values."""
    h = hashlib.sha256()
    for a in arrays:
        host = a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)
        h.update(np.ascontiguousarray(host).tobytes())
    return h.hexdigest()


class MPICommunicator(Communicator):
    """COMM_WORLD through mpi4py. Device (CuPy) buffers are summed by NCCL when CuPy has it, as
    ChainerMN's pure_nccl does, else through host copies and MPI."""

    kind = "mpi"

    def __init__(self) -> None:
        try:
            from mpi4py import MPI  # type: ignore[import-not-found]
        except ImportError as exc:
            raise DlrunError(
                f"this process was started by an MPI launcher, but mpi4py cannot be imported ({exc})",
                hint=MPI_HINT,
            ) from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self._nccl: Any = None  # made on first use: NCCL binds the current device
        self._nccl_failed: str | None = None
        _abort_on_uncaught(self)

    def allreduce(self, buffer: Any) -> None:
        if isinstance(buffer, np.ndarray):
            self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        elif not self._nccl_allreduce(buffer, buffer):
            host = buffer.get()
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buffer.set(host)

    def allreduce_stats(self, values: Any) -> Any:
        if isinstance(values, np.ndarray):
            out = np.empty_like(values)
            self.comm.Allreduce(np.ascontiguousarray(values), out, op=self.MPI.SUM)
            return out
        out = values.copy()
        self.allreduce(out)
        return out

    def agree(self, value: Any) -> Any:
        many = isinstance(value, (tuple, list))
        mine = np.asarray(value if many else [value], dtype=np.int64)
        out = np.empty_like(mine)
        self.comm.Allreduce(mine, out, op=self.MPI.MAX)
        return tuple(int(v) for v in out) if many else int(out[0])

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def gather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)

    def hosts(self) -> list[str]:
        return self.gather(self.MPI.Get_processor_name())

    def library(self) -> str | None:
        return self.MPI.Get_library_version().strip().splitlines()[0].strip()

    def _nccl_allreduce(self, buffer: Any, out: Any) -> bool:
        """Sum a CuPy buffer with NCCL; False when NCCL is unavailable (then MPI on host copies)."""
        if self._nccl is None and self._nccl_failed is None:
            try:
                from cupy.cuda import nccl  # type: ignore[import-not-found]

                uid = nccl.get_unique_id() if self.rank == 0 else None
                self._nccl = nccl.NcclCommunicator(self.size, self.bcast(uid), self.rank)
            except Exception as exc:  # no NCCL in this CuPy build: host copies instead
                self._nccl_failed = f"{type(exc).__name__}: {exc}"
            # Every rank must take the same path, or one would wait in NCCL, another in MPI.
            if self.agree(int(self._nccl is None)):
                self._nccl = None
                self._nccl_failed = self._nccl_failed or "NCCL failed on another rank"
        if self._nccl is None:
            return False
        import cupy  # type: ignore[import-not-found]
        from cupy.cuda import nccl  # type: ignore[import-not-found]

        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self._nccl.allReduce(
            buffer.data.ptr,
            out.data.ptr,
            buffer.size,
            types[np.dtype(buffer.dtype)],
            nccl.NCCL_SUM,
            cupy.cuda.get_current_stream().ptr,
        )
        return True


def _abort_on_uncaught(comm: MPICommunicator) -> None:
    """An uncaught exception on one rank would leave the others waiting in a collective forever:
    print it, then MPI_Abort every rank (what `python -m mpi4py` and ChainerMN do)."""
    previous = sys.excepthook

    def hook(kind: Any, value: Any, tb: Any) -> None:
        if issubclass(kind, SystemExit) and not value.code:
            return
        sys.stderr.write(f"dlrun rank {comm.rank} of {comm.size}: uncaught error, aborting every rank\n")
        previous(kind, value, tb) if previous is not sys.__excepthook__ else traceback.print_exception(kind, value, tb)
        comm.abort(1)

    sys.excepthook = hook


_world: Communicator | None = None


def world() -> Communicator:
    """The run's communicator, made once: over MPI when an MPI launcher started this process, else
    the single-process one (and mpi4py is never imported)."""
    global _world
    if _world is None:
        _world = MPICommunicator() if launched_under_mpi() else Communicator()
    return _world


def active() -> Communicator | None:
    """The communicator if one was made (never starts MPI): for error paths that must abort."""
    return _world
