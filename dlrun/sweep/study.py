"""The sweep file in Optuna's terms: distributions, a seeded sampler, a pruner, the study on its storage.

Optuna is an optional extra, imported here only (`pip install 'dlrun[sweep]'`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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
    if spec.method == "grid":
        sampler = op.samplers.GridSampler({p.path: p.values for p in spec.parameters}, seed=spec.seed)
    elif spec.method == "random":
        sampler = op.samplers.RandomSampler(seed=spec.seed)
    else:
        # Few startup trials: sweeps here are tens of trials, not hundreds.
        sampler = op.samplers.TPESampler(seed=spec.seed, n_startup_trials=min(10, max(2, spec.trials // 3)))
    pruners = {
        "none": lambda: op.pruners.NopPruner(),
        # A trial is stopped when its epoch is worse than the median of earlier trials at that epoch,
        # from the first epoch on, once two trials have reported.
        "median": lambda: op.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0),
        "hyperband": lambda: op.pruners.HyperbandPruner(min_resource=1),
    }
    try:
        return op.create_study(
            study_name=spec.name,
            storage=storage,
            sampler=sampler,
            pruner=pruners[spec.pruner](),
            direction=goal,
            load_if_exists=True,
        )
    except ValueError as exc:  # e.g. the study exists with the other direction
        raise DlrunError(f"cannot open the study {spec.name!r} in {storage}: {exc}") from None
    except Exception as exc:  # SQLAlchemy: no such database, no driver, refused connection
        if type(exc).__module__.startswith(("sqlalchemy", "optuna")):
            raise DlrunError(
                f"cannot open the Optuna storage {storage}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                hint="check the URL (sqlite:///path/study.db, postgresql://user@host/db) and that its driver is installed",
            ) from None
        raise


def counted(study: Any) -> int:
    """Trials that count toward `trials`: all but those a Ctrl-C interrupted (they are requeued)."""
    return sum(1 for t in study.get_trials(deepcopy=False) if INTERRUPTED not in t.user_attrs)
