"""Hyperparameter sweeps on Optuna: `sweep(SWEEP.yaml)` and `resume_sweep(SWEEP_DIR)`.

This process owns the Optuna study: it asks for each trial's parameters, trains the trial in a
worker process (dlrun.sweep.worker: an ordinary run folder at `trials/<number>/`), reports every
epoch's metric to Optuna, answers the worker's "prune or go" after each epoch, and tells Optuna the
result. Only this process touches the storage, so SQLite stays safe; several `dlrun sweep`
processes (or machines) work on one study by naming the same study and storage, which Optuna itself
coordinates (`load_if_exists`).

Nothing here prints: the caller's listener sees each trial start, each epoch and each result.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import dlrun
from dlrun.api.setup import validate
from dlrun.atomic import write_text
from dlrun.config.overrides import flatten
from dlrun.engine.metrics import direction
from dlrun.errors import ConfigError, DlrunError, TrainingInterrupted, UsageError
from dlrun.registry import did_you_mean
from dlrun.runs.folder import new_run_dir, remove_new_run_dir
from dlrun.sweep import spec as spec_mod
from dlrun.sweep import study as st
from dlrun.sweep.results import TrialRecord, best_of, write_results
from dlrun.sweep.spec import SweepSpec, load_sweep
from dlrun.training.interrupt import signal_handler
from dlrun.training.setup import monitorable

#: Each trial's process computes single-threaded: `parallel` trials then use `parallel` cores, not
#: `parallel` times all of them.
SINGLE_THREADED = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")


@dataclass
class SweepResult:
    dir: Path
    best: TrialRecord | None
    trials: list[TrialRecord]
    metric: str
    goal: str

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t.state == state)

    def summary(self) -> dict[str, Any]:
        """What `dlrun sweep --json` prints."""
        best = self.best
        return {
            "dir": str(self.dir),
            "best": None
            if best is None
            else {"number": best.number, "value": best.value, "params": best.params, "run_dir": best.run_dir},
            "completed": self.count("COMPLETE"),
            "pruned": self.count("PRUNED"),
            "failed": self.count("FAIL"),
        }


class SweepListener:
    """What a sweep reports; every method optional in practice (the CLI shows a table)."""

    def on_sweep_begin(self, sweep_dir: Path, spec: SweepSpec, goal: str, done: list[TrialRecord]) -> None: ...
    def on_trial_begin(self, number: int, params: dict[str, Any]) -> None: ...
    def on_trial_epoch(self, number: int, epoch: int, epochs: int, logs: dict[str, float]) -> None: ...
    def on_trial_end(self, record: TrialRecord, best: TrialRecord | None) -> None: ...
    def message(self, text: str) -> None: ...


def sweep(
    path: str | Path,
    *,
    runs_dir: str | Path = "runs",
    trials: int | None = None,
    parallel: int | None = None,
    storage: str | None = None,
    device: str | None = None,
    listener: SweepListener | None = None,
) -> SweepResult:
    """Run the sweep a sweep file describes into a new `runs_dir/<name>/<timestamp>/` folder.

    Every parameter is checked against the base config first (ConfigError at the sweep file's line).
    SIGINT/SIGTERM stop the running trials after their current batch (each resumable as a run) and
    raise TrainingInterrupted naming `resume_sweep`'s folder."""
    spec = load_sweep(path)
    _apply_options(spec, trials, parallel, storage)
    goal = check_sweep(spec)
    sweep_dir = new_run_dir(runs_dir, spec.name)
    try:
        st.open_study(spec, st.storage_url(spec, sweep_dir), goal)  # a bad storage leaves no folder
    except BaseException:
        remove_new_run_dir(sweep_dir)
        raise
    return _run(spec, goal, sweep_dir, device, listener or SweepListener())


def resume_sweep(
    sweep_dir: str | Path,
    *,
    trials: int | None = None,
    parallel: int | None = None,
    device: str | None = None,
    listener: SweepListener | None = None,
) -> SweepResult:
    """Continue the sweep in `sweep_dir` (its sweep.yaml and study) up to `trials` trials in all."""
    sweep_dir = Path(sweep_dir)
    if not (sweep_dir / "sweep.yaml").is_file():
        raise DlrunError(
            f"{sweep_dir} is not a sweep folder (it has no sweep.yaml)", hint="pass a folder such as runs/<name>/<time>"
        )
    spec = load_sweep(sweep_dir / "sweep.yaml")
    _apply_options(spec, trials, parallel, None)
    goal = check_sweep(spec)
    return _run(spec, goal, sweep_dir, device, listener or SweepListener())


def sweep_schema() -> dict[str, Any]:
    """The JSON Schema of sweep files (`dlrun schema --sweep`)."""
    return spec_mod.json_schema()


def _apply_options(spec: SweepSpec, trials: int | None, parallel: int | None, storage: str | None) -> None:
    for name, value in (("--trials", trials), ("--parallel", parallel)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be 1 or more, got {value}")
    if trials is not None:
        if spec.method == "grid" and trials > spec.grid_size():
            raise UsageError(f"--trials {trials}: the grid has {spec.grid_size()} points", hint="each runs once")
        spec.trials = trials
    spec.parallel = parallel or spec.parallel
    spec.storage = storage or spec.storage


def check_sweep(spec: SweepSpec) -> str:
    """Check the sweep against its base config before any trial runs; returns the goal.

    Each parameter's values (each of `values`, or `min` and `max`) are applied to the base config
    with `--set` and the result validated as `dlrun validate` does; a failure is a ConfigError at
    that value's line in the sweep file, proposing the closest existing path."""
    base = validate(spec.config)  # the base config's own errors point into the base config
    paths = list(flatten(base.config.resolved))
    for p in spec.parameters:
        tries = (
            [(v, ("parameters", p.path, "values", i)) for i, v in enumerate(p.values)]
            if p.values is not None
            else [(p.low, ("parameters", p.path, "min")), (p.high, ("parameters", p.path, "max"))]
        )
        for value, keys in tries:
            try:
                validate(spec.config, overrides=[override(p.path, value)])
            except ConfigError as exc:
                near = did_you_mean(p.path, paths) if p.path not in paths else ""
                what = f"{exc.path}: {exc.message}" if exc.path else exc.message
                what = what.removeprefix(f"--set {override(p.path, value)}: ")
                raise spec.error(
                    f"{p.path}={value!r} does not fit the base config {spec.config.name}: {what}",
                    *keys,
                    hint=near or exc.hint,
                ) from None
    available = monitorable(base.config, base.metrics)
    if spec.metric not in available:
        raise spec.error(
            f"the runs of {spec.config.name} do not log {spec.metric!r}",
            "metric",
            "name",
            path="metric.name",
            hint=did_you_mean(spec.metric, available) or f"they log: {', '.join(available)}",
        )
    if spec.goal is not None:
        return spec.goal
    known = direction(spec.metric)
    if known is None:
        raise spec.error(
            f"cannot tell whether {spec.metric!r} should go up or down",
            "metric",
            path="metric",
            hint="add goal: minimize or goal: maximize",
        )
    return "minimize" if known == "min" else "maximize"


def override(path: str, value: Any) -> str:
    """A `--set` argument; JSON is YAML, so the value reads back exactly (floats keep every digit)."""
    return f"{path}={json.dumps(value)}"


# -- the loop ------------------------------------------------------------------------------------------


@dataclass
class _Running:
    trial: Any
    number: int
    params: dict[str, Any]
    run_dir: Path
    proc: subprocess.Popen
    log: Any
    started: float = field(default_factory=time.monotonic)
    result: dict[str, Any] | None = None
    epochs: int = 0


def _run(spec: SweepSpec, goal: str, sweep_dir: Path, device: str | None, listener: SweepListener) -> SweepResult:
    op = st.optuna()
    storage = st.storage_url(spec, sweep_dir)
    write_text(sweep_dir / "sweep.yaml", yaml.safe_dump(spec.resolved(goal), sort_keys=False, width=100))
    study = st.open_study(spec, storage, goal)
    _fail_abandoned(study, op)
    distributions = {p.path: st.distribution(p) for p in spec.parameters}
    events: queue.Queue[tuple[int, dict[str, Any] | None]] = queue.Queue()
    running: dict[int, _Running] = {}
    stop = {"signals": 0}
    listener.on_sweep_begin(sweep_dir, spec, goal, _records(study))

    def on_signal(signum: int, frame: Any) -> None:
        # The first signal stops asking for trials; each is passed on to the running trials once
        # (their first stops after the current batch, resumable; a second stops them at once).
        stop["signals"] += 1
        for r in running.values():
            with contextlib.suppress(OSError):
                r.proc.send_signal(signal.SIGINT)

    with signal_handler(on_signal):
        try:
            while True:
                while not stop["signals"] and len(running) < spec.parallel and st.counted(study) < spec.trials:
                    r = _start(study, distributions, spec, sweep_dir, device, events)
                    running[r.number] = r
                    listener.on_trial_begin(r.number, r.params)
                if not running:
                    break
                try:
                    number, event = events.get(timeout=0.2)
                except queue.Empty:
                    continue
                r = running[number]
                if event is None:  # the worker's stdout closed: it has ended
                    record = _finish(study, op, r, spec)
                    del running[number]
                    records = _records(study)
                    write_results(sweep_dir, records, goal, spec.metric)
                    listener.on_trial_end(record, best_of(records, goal))
                elif event["event"] == "epoch":
                    _report(r, event, spec)
                    listener.on_trial_epoch(number, event["epoch"], event["epochs"], event["logs"])
                elif event["event"] == "result":
                    r.result = event
        finally:
            for r in running.values():  # only after an error in this loop: leave no orphan trial
                with contextlib.suppress(OSError):
                    r.proc.kill()
    records = _records(study)
    write_results(sweep_dir, records, goal, spec.metric)
    result = SweepResult(sweep_dir, best_of(records, goal), records, spec.metric, goal)
    if stop["signals"]:
        raise TrainingInterrupted(
            f"the sweep stopped on a signal after {st.counted(study)} of {spec.trials} trials; "
            "the interrupted trials are resumable runs and will run again",
            hint=f"continue with: dlrun sweep --resume {sweep_dir}",
        )
    return result


#: `-m` would put the working directory first on the worker's module path, so a user's
#: `timeit.py` or `logging.py` there would shadow the standard library (`dlrun` itself, a
#: console script, never does that). Python 3.11's -P leaves it out.
WORKER_FLAGS = ("-P",) if sys.version_info >= (3, 11) else ()


def _start(
    study: Any, distributions: dict[str, Any], spec: SweepSpec, sweep_dir: Path, device: str | None, events: queue.Queue
) -> _Running:
    trial = study.ask(distributions)
    number = trial.number
    params = {p.path: trial.params[p.path] for p in spec.parameters}
    run_dir = sweep_dir / "trials" / str(number)
    trial.set_user_attr("run_dir", str(run_dir.resolve()))
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("sweep_pid", os.getpid())
    job = {
        "config": str(spec.config),
        "overrides": [override(k, v) for k, v in params.items()],
        "run_dir": str(run_dir),
        "metric": spec.metric,
        "prune": spec.pruner != "none",
        "device": device,
        "context": {"sweep": spec.name, "trial": number, "sweep_dir": str(sweep_dir.resolve())},
    }
    (sweep_dir / "logs").mkdir(exist_ok=True)
    log = open(sweep_dir / "logs" / f"{number}.log", "w", encoding="utf-8")  # noqa: SIM115 (closed in _finish)
    proc = subprocess.Popen(
        [sys.executable, *WORKER_FLAGS, "-m", "dlrun.sweep.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=_worker_env(),
        start_new_session=True,  # Ctrl-C in the terminal reaches this process only; it passes it on
    )
    proc.stdin.write(json.dumps(job) + "\n")
    proc.stdin.flush()
    r = _Running(trial, number, params, run_dir, proc, log)

    def read() -> None:
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                events.put((number, json.loads(line)))
        proc.wait()
        events.put((number, None))

    threading.Thread(target=read, daemon=True, name=f"dlrun-trial-{number}").start()
    return r


def _worker_env() -> dict[str, str]:
    """This process's environment, single-threaded, with this dlrun first on the path: the trials
    run the code that checked the sweep, whatever is installed."""
    root = str(Path(dlrun.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, **SINGLE_THREADED, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _report(r: _Running, event: dict[str, Any], spec: SweepSpec) -> None:
    """Report the epoch's metric to Optuna and, when pruning, answer the waiting worker."""
    r.epochs = event["epoch"]
    value = event["logs"].get(spec.metric)
    if spec.pruner == "none":
        return
    prune = False
    if value is not None:
        r.trial.report(float(value), event["epoch"])
        prune = r.trial.should_prune()
    with contextlib.suppress(OSError):  # the worker may have died meanwhile: its end event follows
        r.proc.stdin.write("prune\n" if prune else "go\n")
        r.proc.stdin.flush()


def _finish(study: Any, op: Any, r: _Running, spec: SweepSpec) -> TrialRecord:
    """Tell Optuna how the trial ended; an interrupted one is requeued with the same parameters."""
    r.log.close()
    with contextlib.suppress(OSError):
        r.proc.stdin.close()
    res = r.result or {"state": "FAIL", "message": _crash_message(r)}
    state, value = res["state"], res.get("value")
    seconds = round(time.monotonic() - r.started, 3)
    r.trial.set_user_attr("seconds", seconds)
    if res.get("message"):
        r.trial.set_user_attr("message", str(res["message"])[:2000])
    if value is not None:
        r.trial.set_user_attr("value", value)
    states = op.trial.TrialState
    if state == "COMPLETE":
        return _record(study.tell(r.trial, value))
    if state == "PRUNED":
        return _record(study.tell(r.trial, state=states.PRUNED))
    if state == "INTERRUPTED":
        r.trial.set_user_attr(st.INTERRUPTED, True)
        study.enqueue_trial(r.params, user_attrs={st.RETRY_OF: r.number})
    return _record(study.tell(r.trial, state=states.FAIL))


def _crash_message(r: _Running) -> str:
    code = r.proc.returncode
    why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    if code == -signal.SIGKILL:
        why += " (out of memory?)"
    try:
        tail = (r.run_dir.parent.parent / "logs" / f"{r.number}.log").read_text(encoding="utf-8").strip()
    except OSError:
        tail = ""
    tail = tail.splitlines()[-1] if tail else ""
    return f"the trial's process ended without a result ({why}){': ' + tail if tail else ''}"


def _fail_abandoned(study: Any, op: Any) -> None:
    """RUNNING trials whose sweep process on this machine is gone (killed) are FAIL, so they no longer
    count toward `trials`; other machines' trials are theirs to finish."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(op.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("sweep_pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or _alive(pid):
            continue
        with contextlib.suppress(Exception):  # another process may have finished it meanwhile
            study.tell(t.number, state=op.trial.TrialState.FAIL, skip_if_finished=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _records(study: Any) -> list[TrialRecord]:
    return [_record(t) for t in study.get_trials(deepcopy=False)]


def _record(t: Any) -> TrialRecord:
    attrs = t.user_attrs
    state = t.state.name
    value = t.value if state == "COMPLETE" else attrs.get("value")
    message = attrs.get("message")
    if attrs.get(st.INTERRUPTED):
        message = f"interrupted: the run is resumable (dlrun train --resume {attrs.get('run_dir')}); requeued"
    return TrialRecord(
        number=t.number,
        state=state,
        value=value,
        params=dict(t.params),
        run_dir=attrs.get("run_dir"),
        seconds=attrs.get("seconds"),
        message=message,
    )
