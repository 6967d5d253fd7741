"""The sweep file in Optuna's terms: distributions, a seeded sampler, a pruner, the study on its storage.

Optuna is an optional extra, imported here only (`pip install 'dlrun[sweep]'`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from dlrun.errors import DlrunError
from dlrun.sweep.spec import Parameter, SweepSpec

#: Trials that an interrupted sweep requeued (Ctrl-C): the new trial's user attribute names the old.
RETRY_OF = "retry_of"
INTERRUPTED = "interrupted"


def optuna() -> Any:
    try:
        import optuna as _optuna
    except ImportError:
        raise DlrunError(
            "sweeps need Optuna, which is not installed", hint="pip install 'dlrun[sweep]' (or: pip install optuna)"
        ) from None
    # Optuna logs every trial at INFO to stderr; dlrun shows its own table.
    _optuna.logging.set_verbosity(logging.WARNING)
    return _optuna


def distribution(p: Parameter) -> Any:
    d = optuna().distributions
    if p.values is not None:
        return d.CategoricalDistribution(p.values)
    if p.is_int:
        return d.IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return d.FloatDistribution(float(p.low), float(p.high), log=p.log, step=p.step)


def storage_url(spec: SweepSpec, sweep_dir: Path) -> str:
    """The storage URL: the file's or the command line's, else study.db in the sweep folder."""
    return spec.storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"


def open_study(spec: SweepSpec, storage: str, goal: str) -> Any:
    """Create the study, or join the one of that name already in `storage` (another process or machine)."""
    op = optuna()
    sampler = _sampler(op, spec, spec.seed)
    pruners = {
        "none": lambda: op.pruners.NopPruner(),
        # A trial is stopped when its epoch is worse than the median of earlier trials at that epoch,
        # once two trials have reported; never on its first epoch (steps are epochs from 1), whose loss
        # says little yet: with 3-epoch trials, pruning on epoch 1 stopped 16 of 20.
        "median": lambda: op.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2),
        "hyperband": lambda: op.pruners.HyperbandPruner(min_resource=1),
    }
    # Two processes starting together race to create the tables and the study: the loser retries.
    for attempt in range(ATTEMPTS):
        try:
            study = op.create_study(
                study_name=spec.name,
                storage=_storage(op, storage),
                sampler=sampler,
                pruner=pruners[spec.pruner](),
                direction=goal,
                load_if_exists=True,
            )
            return _reseeded(op, study, spec, shared=spec.storage is not None)
        except ValueError as exc:  # e.g. the study exists with the other direction
            raise DlrunError(f"cannot open the study {spec.name!r} in {storage}: {exc}") from None
        except ImportError as exc:  # the database's driver (psycopg2, PyMySQL) is not installed
            raise DlrunError(
                f"cannot open the Optuna storage {storage}: {_first_line(exc)}",
                hint="install the database's driver, e.g. pip install psycopg2-binary for postgresql://",
            ) from None
        except Exception as exc:  # SQLAlchemy: no such database, refused connection, a race
            if not type(exc).__module__.startswith(("sqlalchemy", "optuna")):
                raise
            if attempt + 1 < ATTEMPTS:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise DlrunError(
                f"cannot open the Optuna storage {storage}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                hint="check the URL (sqlite:///path/study.db, postgresql://user@host/db) and that its driver is installed",
            ) from None
    raise AssertionError("unreachable")


ATTEMPTS = 5


def _sampler(op: Any, spec: SweepSpec, seed: int) -> Any:
    if spec.method == "grid":
        return _grid_sampler(op)({p.path: p.values for p in spec.parameters}, seed=seed)
    if spec.method == "random":
        return op.samplers.RandomSampler(seed=seed)
    # Few startup trials: sweeps here are tens of trials, not hundreds.
    return op.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, spec.trials // 3)))


def _reseeded(op: Any, study: Any, spec: SweepSpec, shared: bool) -> Any:
    """A sampler seeded like the first process's would draw again what that one drew: a resumed
    sweep seeds with the trials already in the study (reproducible), and a process on a storage
    that others may share also with its PID (two processes starting at once draw differently)."""
    done = len(study.get_trials(deepcopy=False))
    if done or shared:
        # One seed per (seed, trials so far, process): sums of them collide (seed + 1 + pid == seed + pid + 1).
        entropy = [spec.seed, done, os.getpid() if shared else 0]
        study.sampler = _sampler(op, spec, int(np.random.SeedSequence(entropy).generate_state(1)[0]))
    return study


def _storage(op: Any, url: str) -> Any:
    """SQLite waits for a lock held by another process (Python's default is 5 s) instead of failing."""
    if url.startswith("sqlite:"):
        return op.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return url


def _grid_sampler(op: Any) -> type:
    """Optuna's GridSampler without its `study.stop()` once the grid is covered: that works only
    inside `study.optimize`, and the sweep loop stops by counting trials itself."""

    class GridSampler(op.samplers.GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return GridSampler


def counted(study: Any) -> int:
    """Trials that count toward `trials`: all but those a Ctrl-C interrupted (they are requeued)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if INTERRUPTED not in t.user_attrs)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
