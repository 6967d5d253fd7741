"""`dlrun train ... --processes N`: the same command, started N times by mpiexec."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from dlrun.errors import UsageError
from dlrun.parallel.communicator import MPI_HINT, launched_under_mpi


def find_mpiexec() -> str | None:
    """The mpiexec beside this Python (where the `mpich` wheel puts it: the venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("mpiexec")


def without_processes(argv: list[str]) -> list[str]:
    """`argv` without its --processes option (either spelling)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            out.append(arg)
    return out


def relaunch(processes: int) -> None:
    """Replace this process by `mpiexec -n processes python -m dlrun <the same arguments>`; under
    an MPI launcher already (or for one process) do nothing: the run goes on here."""
    if processes == 1 or launched_under_mpi():
        return
    mpiexec = find_mpiexec()
    if mpiexec is None:
        raise UsageError(
            f"--processes {processes} needs mpiexec, which was not found beside {sys.executable} or on PATH",
            hint=f"{MPI_HINT} (its mpich wheel brings mpiexec), or install Open MPI or MPICH",
        )
    argv = [mpiexec, "-n", str(processes), sys.executable, "-m", "dlrun", *without_processes(sys.argv[1:])]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(mpiexec, argv)
