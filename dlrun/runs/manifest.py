"""manifest.json: what it takes to reproduce a run.

The seed; the versions of dlrun, Python, NumPy, its BLAS and the kernels that BLAS chose (and numba or
CuPy when used); the backend and device; the dataset files' SHA-256; the command line and `--set`
overrides; the config file and the git commit of the repository holding it (when there is one).
A resumed run adds an entry to `resumes`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from dlrun import __version__
from dlrun.atomic import write_json
from dlrun.engine.compiled import numba_version
from dlrun.engine.threads import blas_libraries

MANIFEST = "manifest.json"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataset_files(files: list[Path]) -> dict[str, str]:
    """{file path: SHA-256} of the files a dataset was read from (`Dataset.files`); {} for generated data."""
    out: dict[str, str] = {}
    for p in files:
        try:
            out[str(Path(p).resolve())] = sha256(Path(p))
        except OSError:  # a manifest never fails a run
            continue
    return out


def git_commit(config_file: str | None) -> str | None:
    """HEAD of the git repository holding the config file, or None (no file, no git, no repo)."""
    if not config_file:
        return None
    try:
        proc = subprocess.run(
            ["git", "-C", str(Path(config_file).resolve().parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


def versions(backend: Any) -> dict[str, Any]:
    out = {"dlrun": __version__, "python": platform.python_version(), "numpy": np.__version__}
    out["blas"] = blas_libraries()  # its kernels change the speed and the last bits of results
    if getattr(backend, "is_gpu", False):
        out["cupy"] = getattr(backend.xp, "__version__", None)
    elif (numba := numba_version()) is not None:  # its kernels ran (the same bits as NumPy's, faster)
        out["numba"] = numba
    return out


def build(
    *,
    seed: int,
    backend: Any,
    device: str,
    data_cfg: dict[str, Any],
    data: Any = None,
    config_file: str | None,
    overrides: list[str] | None,
    context: dict[str, Any] | None = None,
    initial_weights: Path | None = None,
    processes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "created": _now(),
        "seed": seed,
        "versions": versions(backend),
        "platform": platform.platform(),
        "backend": "gpu" if getattr(backend, "is_gpu", False) else "cpu",
        "device": device,
        "dataset": {"name": data_cfg.get("dataset"), "files": dataset_files(getattr(data, "files", None) or [])},
        "argv": list(sys.argv),
        "overrides": list(overrides or []),
        "config_file": str(Path(config_file).resolve()) if config_file else None,
        "git_commit": git_commit(config_file),
        **({"context": dict(context)} if context else {}),
        # model.weights: the file the run started from, as the dataset files are recorded
        **({"initial_weights": dataset_files([initial_weights])} if initial_weights else {}),
        **({"processes": dict(processes)} if processes else {}),
    }


def write(run_dir: Path, manifest: dict[str, Any]) -> None:
    write_json(run_dir / MANIFEST, manifest)


def add_resume(
    run_dir: Path,
    *,
    backend: Any,
    device: str,
    from_epoch: int,
    from_batch: int | None,
    processes: dict[str, Any] | None = None,
) -> None:
    """Record a resume: when, with what, from where (a missing or unreadable manifest is recreated)."""
    path = run_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if not isinstance(manifest, dict):
            manifest = {}
    except (OSError, ValueError):
        manifest = {}
    manifest.setdefault("resumes", []).append(
        {
            "time": _now(),
            "argv": list(sys.argv),
            "versions": versions(backend),
            "device": device,
            "from_epoch": from_epoch,
            "from_batch": from_batch,
            **({"processes": dict(processes)} if processes else {}),
        }
    )
    write(run_dir, manifest)
