"""Train a config end to end, or resume a run folder, writing the run folder as it goes."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlrun.api import memory
from dlrun.api.setup import Setup, config_from_checkpoint, prepare
from dlrun.atomic import remove_temporaries, write_json, write_text
from dlrun.config.loader import from_plain, to_plain
from dlrun.config.overrides import apply_overrides
from dlrun.config.schema import Config, parse_config
from dlrun.data.dataset import Dataset, known_class_names, load_dataset
from dlrun.data.sources import ProgressFn
from dlrun.engine.random import streams
from dlrun.engine.threads import cpu_threads, forced_kernels_note
from dlrun.errors import CheckpointError, DlrunError, TrainingInterrupted, UsageError
from dlrun.graph.summary import summary_text
from dlrun.interop.weights_file import load_initial_weights
from dlrun.parallel.communicator import Communicator
from dlrun.runs import checkpoint as ckpt_mod
from dlrun.runs import manifest as manifest_mod
from dlrun.runs.folder import (
    exact_run_dir,
    new_run_dir,
    remove_new_run_dir,
    remove_stale_temporaries,
    run_lock,
    write_config,
    write_metrics,
)
from dlrun.runs.plot import plot_history
from dlrun.training import distributed
from dlrun.training.interrupt import graceful_interrupts
from dlrun.training.loop import SilentListener, Trainer
from dlrun.training.recorder import RunRecorder
from dlrun.training.targets import check_data_fits, check_targets


@dataclass
class RunResult:
    run_dir: Path
    history: dict[str, list[float]]
    metrics: dict[str, float]
    best_epoch: int | None
    device: str
    #: The model's final weights (host copies), after callbacks such as EarlyStopping's restore.
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    #: Things the user may want to change for speed (sentences), e.g. BLAS kernels forced slower.
    notes: list[str] = field(default_factory=list)


def train(
    source: str | Path | Config | dict[str, Any],
    *,
    runs_dir: str | Path = "runs",
    listener: Any = None,
    device: str | None = None,
    download_progress: ProgressFn | None = None,
    overrides: list[str] | None = None,
    run_dir: str | Path | None = None,
    context: dict[str, Any] | None = None,
    threads: int | None = None,
) -> RunResult:
    """Train a config end to end and write its run folder; returns where and what it reached.

    The run folder is a fresh `runs_dir/<name>/<timestamp>/`, or exactly `run_dir` (created; it must
    not exist yet or be empty), as a sweep puts its trials at `trials/<number>/`. `context` (e.g. a
    sweep's name and trial number) goes into manifest.json, where trackers read their tags.

    SIGINT/SIGTERM stop after the current batch with a resumable checkpoint: TrainingInterrupted.
    `threads`: CPU threads to compute on (default: OMP_NUM_THREADS etc. if set, else every core,
    or this rank's share of them); the results are the same bits whatever the count.

    Started by mpiexec (or srun) as one of several processes, it trains data-parallel: every rank
    runs this, rank 0 alone reports to `listener` and writes the run folder.
    """
    comm = distributed.start()  # before the thread count: ranks on one host share its cores
    with cpu_threads(threads):
        return _train(comm, source, runs_dir, listener, device, download_progress, overrides, run_dir, context)


def _train(
    comm: Communicator,
    source: str | Path | Config | dict[str, Any],
    runs_dir: str | Path,
    listener: Any,
    device: str | None,
    download_progress: ProgressFn | None,
    overrides: list[str] | None,
    run_dir: str | Path | None,
    context: dict[str, Any] | None,
) -> RunResult:
    listener = listener if listener is not None and comm.is_writer else SilentListener()
    setup = prepare(source, device=device, overrides=overrides)
    cfg = setup.config
    distributed.check_batch_split(cfg, comm.size)
    distributed.use_gpu(comm, setup.backend)
    if setup.device_note:
        listener.message(setup.device_note)
    check_memory(setup, "this run", cfg.file)
    # Data errors surface here, before any run folder exists.
    data, trainer = _make_trainer(setup, listener, download_progress, comm)
    initial = load_initial_weights(cfg, setup.model)  # model.weights: only a new run (resume restores)
    processes = comm.describe() if comm.size > 1 else None  # single-process manifests stay as they were
    if not comm.is_writer:
        return _fit_and_finish(setup, data, trainer, Path(comm.bcast(None)))
    if run_dir is None:
        remove_stale_temporaries(Path(runs_dir) / cfg.name)  # what kills of earlier runs left behind
        run_dir = new_run_dir(runs_dir, cfg.name)
    else:
        run_dir = exact_run_dir(run_dir)
    try:
        lock = run_lock(run_dir)
        lock.__enter__()
    except CheckpointError:
        remove_new_run_dir(run_dir)  # nothing trained yet: leave no folder that looks like a run
        raise
    try:
        _start_run_folder(setup, data, run_dir, overrides, context, initial, processes)
        comm.bcast(str(run_dir))
        return _fit_and_finish(setup, data, trainer, run_dir)
    finally:
        lock.__exit__(None, None, None)


def _start_run_folder(
    setup: Setup,
    data: Dataset,
    run_dir: Path,
    overrides: list[str] | None,
    context: dict[str, Any] | None,
    initial_weights: Path | None = None,
    processes: dict[str, Any] | None = None,
) -> None:
    """config.yaml, summary.txt, manifest.json and an empty history; on any failure, no folder."""
    cfg = setup.config
    resolved = cfg.resolved
    try:
        write_json(run_dir / "history.json", {})  # a run folder always holds a readable history
        write_config(run_dir, resolved)
        write_text(run_dir / "summary.txt", summary_text(setup.model, cfg.name))
        manifest_mod.write(
            run_dir,
            manifest_mod.build(
                seed=resolved["seed"],
                backend=setup.backend,
                device=setup.backend.describe(),
                data_cfg=resolved["data"],
                data=data,
                config_file=cfg.file,
                overrides=overrides,
                context=context,
                initial_weights=initial_weights,
                processes=processes,
            ),
        )
    except BaseException as exc:
        remove_new_run_dir(run_dir)  # nothing trained yet: leave no folder that looks like a run
        if isinstance(exc, OSError):
            raise CheckpointError(
                f"cannot write the run folder ({exc.strerror or exc}); nothing was trained and no folder is left",
                path=str(run_dir),
                hint="free some space or pass --runs-dir a writable folder",
            ) from None
        raise


def resume(
    run_dir: str | Path,
    *,
    listener: Any = None,
    device: str | None = None,
    download_progress: ProgressFn | None = None,
    overrides: list[str] | None = None,
    threads: int | None = None,
) -> RunResult:
    """Continue a run from `run_dir/checkpoints/last.npz` with the config saved in it, in the same
    folder. The result is bit-identical to a run that was never interrupted (same machine).

    `overrides` may only set `training.epochs`: a finished or interrupted run then trains on to that
    many epochs (what `fit` again on the same model does in Keras). `threads` as for `train`.

    Under mpiexec every rank resumes, with any number of processes that divides the global batch:
    rank 0 reads the checkpoint and hands it to the others (their hosts need not see the folder)."""
    comm = distributed.start()
    with cpu_threads(threads):
        return _resume(comm, run_dir, listener, device, download_progress, overrides)


def _resume(
    comm: Communicator,
    run_dir: str | Path,
    listener: Any,
    device: str | None,
    download_progress: ProgressFn | None,
    overrides: list[str] | None,
) -> RunResult:
    listener = listener if listener is not None and comm.is_writer else SilentListener()
    run_dir = Path(run_dir)
    if comm.is_writer and not run_dir.is_dir():
        raise DlrunError(f"no run folder at {run_dir}", hint="pass a run folder such as runs/<name>/<timestamp>")
    # One process per run folder: rank 0 holds the lock for its ranks.
    with run_lock(run_dir) if comm.is_writer else contextlib.nullcontext():
        path = run_dir / "checkpoints" / "last.npz"
        ckpt = comm.bcast(_resumable_checkpoint(run_dir, path) if comm.is_writer else None)
        extended = _extend_epochs(ckpt, overrides or [])
        setup = prepare(config_from_checkpoint(path, ckpt), device=device)
        distributed.check_batch_split(setup.config, comm.size)
        distributed.use_gpu(comm, setup.backend)
        if setup.device_note:
            listener.message(setup.device_note)
        check_memory(setup, "resuming this run", str(path))
        data, trainer = _make_trainer(setup, listener, download_progress, comm)
        try:
            trainer.restore(ckpt.weights, ckpt.optimizer, ckpt.meta)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path} does not fit its own config: {exc}") from None
        if extended:
            if trainer.epochs < trainer.epoch:
                raise UsageError(
                    f"the run has already trained {trainer.epoch} epochs; training.epochs={trainer.epochs} would undo them",
                    hint=f"pass --set training.epochs={trainer.epoch + 1} or more",
                )
            trainer.stop_training = False  # an early stop ended the old budget; the new one starts now
            if comm.is_writer:
                write_config(run_dir, setup.config.resolved)
        processes = comm.describe() if comm.size > 1 else None  # single-process manifests stay as they were
        if not comm.is_writer:
            return _fit_and_finish(setup, data, trainer, run_dir)
        for folder in (run_dir, run_dir / "checkpoints"):
            remove_temporaries(folder)  # left by writes that a kill cut short
        write_json(run_dir / "history.json", trainer.history)  # a kill may have left it one epoch behind
        partial = ckpt.meta.get("partial_epoch")
        manifest_mod.add_resume(
            run_dir,
            backend=setup.backend,
            device=setup.backend.describe(),
            from_epoch=trainer.epoch,
            from_batch=partial["batch"] if partial else None,
            processes=processes,
        )
        if trainer.epoch >= trainer.epochs or trainer.stop_training:
            listener.message(
                f"Resuming {run_dir}: training had finished after epoch {trainer.epoch}; completing the run's results"
            )
        else:
            where = f"epoch {trainer.epoch + 1} of {trainer.epochs}"
            if partial:
                where += f", batch {partial['batch'] + 1}"
            listener.message(f"Resuming {run_dir} at {where}")
        return _fit_and_finish(setup, data, trainer, run_dir)


def _resumable_checkpoint(run_dir: Path, path: Path) -> ckpt_mod.Checkpoint:
    if not path.is_file():
        raise CheckpointError(
            f"{run_dir} has no checkpoint to resume from ({path} is missing)",
            hint="the run stopped before its first epoch ended: train it again from its config",
        )
    ckpt = ckpt_mod.load(path)
    if not ckpt.resumable:
        raise CheckpointError(f"{path} holds weights only and cannot resume a run")
    return ckpt


def _extend_epochs(ckpt: ckpt_mod.Checkpoint, overrides: list[str]) -> bool:
    """Apply `--set training.epochs=N` to a checkpoint's config; any other override is refused."""
    if not overrides:
        return False
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key != "training.epochs":
            raise UsageError(
                f"--set {item!s:.60} does not apply to --resume: a run continues with the config it started with",
                hint="only --set training.epochs=N can extend a resumed run",
            )
    tree = apply_overrides(from_plain(copy.deepcopy(ckpt.config)), overrides)
    parse_config(tree, None)  # a bad value is a ConfigError naming its --set, not the checkpoint
    ckpt.config = to_plain(tree)
    return True


def record_statistics(cfg: Config, data: Dataset) -> None:
    """The one addition to the resolved config after `prepare`: what only loading the data reveals,
    into config.yaml and every checkpoint for evaluate/predict: the standardisation statistics, and
    the class names of a dataset whose files name them (a csv's labels)."""
    if data.statistics:
        cfg.resolved["data"]["statistics"] = data.statistics
    if data.class_names and not known_class_names(cfg.resolved["data"]):
        cfg.resolved["data"]["class_names"] = [str(name) for name in data.class_names]


def check_memory(setup: Setup, what: str, file: str | None) -> None:
    """Refuse a run whose estimated memory (weights, gradients, optimizer state, the activations of a
    batch, generated data) exceeds what the machine has: from the static shapes, before the data is
    loaded or generated and before the weights are allocated."""
    resolved = setup.config.resolved
    need = memory.training_need(setup.model, setup.optimizer, resolved["training"]["batch_size"], resolved["data"])
    memory.check(need, what=what, file=file, backend=setup.backend)


def _make_trainer(
    setup: Setup, listener: Any, download_progress: ProgressFn | None, comm: Communicator | None = None
) -> tuple[Dataset, Trainer]:
    """Load the data (seeded split), allocate the weights and build the Trainer with the config's
    callbacks. The caller has checked the memory this needs (check_memory)."""
    cfg = setup.config
    rngs = streams(cfg.resolved["seed"])
    data = load_dataset(cfg.resolved["data"], cfg.resolved["seed"], split_rng=rngs.split, progress=download_progress)
    for note in data.notes:  # e.g. an empty test split that is skipped
        listener.message(note)
    record_statistics(cfg, data)
    check_data_fits(cfg, setup.model, data)
    check_targets(cfg, setup.model, setup.loss, data.name, data.targets)
    setup.model.allocate()  # the seeded initial weights: the same whenever they are allocated
    tcfg = cfg.resolved["training"]
    trainer = Trainer(
        setup.model,
        setup.loss,
        setup.optimizer,
        setup.metrics,
        data,
        batch_size=tcfg["batch_size"],
        epochs=tcfg["epochs"],
        shuffle=tcfg["shuffle"],
        warmup_epochs=tcfg.get("warmup_epochs", 0),
        shuffle_rng=rngs.shuffle,
        callbacks=list(setup.callbacks),
        listener=listener,
        config=cfg.resolved,
        comm=comm or Communicator(),
    )
    return data, trainer


def _fit_and_finish(setup: Setup, data: Dataset, trainer: Trainer, run_dir: Path) -> RunResult:
    """Train (checkpointing every epoch into `run_dir`), then score and write metrics.json.

    In a data-parallel run the other ranks only train: rank 0 then scores on its own and writes."""
    trainer.run_dir = run_dir
    recorder = RunRecorder(run_dir, setup.config.resolved, "val_loss" if data.val is not None else "loss")
    trainer.callbacks.append(recorder)  # last: its checkpoint holds every other callback's state
    if not trainer.comm.is_writer:  # the recorder is muted there (Trainer.fit), as the checkpoint says
        with graceful_interrupts(trainer):
            history = trainer.fit()
        return RunResult(run_dir, history, {}, None, setup.backend.describe())
    try:
        return _fit(setup, data, trainer, recorder, run_dir)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile
        raise _write_failure(run_dir, exc) from None


def _write_failure(run_dir: Path, exc: OSError) -> CheckpointError:
    """What could not be written, and which checkpoint the run can resume from."""
    target = getattr(exc, "target", None) or exc.filename or "a file"
    last = run_dir / "checkpoints" / "last.npz"
    try:
        kept = f"{last} (after epoch {ckpt_mod.load(last).epoch}) is intact"
    except CheckpointError:
        kept = "no checkpoint was written yet"
    return CheckpointError(
        f"could not write {target}: {exc.strerror or exc}; {kept}",
        hint=f"free some space, then resume with: dlrun train --resume {run_dir}"
        if last.is_file()
        else "free some space and train again",
    )


def _fit(setup: Setup, data: Dataset, trainer: Trainer, recorder: RunRecorder, run_dir: Path) -> RunResult:
    try:
        with graceful_interrupts(trainer):
            history = trainer.fit()
        trainer.evaluator.comm = Communicator()  # the final scores are rank 0's alone
    except TrainingInterrupted as exc:
        exc.message = f"{exc.message}; the run's state after it is saved in {run_dir / 'checkpoints' / 'last.npz'}"
        exc.args = (exc.message,)
        exc.hint = f"resume with: dlrun train --resume {run_dir}"
        exc.run_dir = run_dir  # type: ignore[attr-defined]
        raise
    final = setup.model.get_weights()
    metrics: dict[str, Any] = _scores(trainer, data)
    metrics["best_epoch"] = recorder.best_epoch
    metrics["epochs"] = trainer.epoch
    metrics["best"] = _best_scores(trainer, data, run_dir, recorder.best_epoch, final, metrics)
    write_metrics(run_dir, metrics)
    _plot_if_possible(run_dir, history)
    for cb in trainer.callbacks:
        cb.on_run_end()
    notes = [] if setup.backend.is_gpu or (note := forced_kernels_note()) is None else [note]
    return RunResult(run_dir, history, metrics, recorder.best_epoch, setup.backend.describe(), final, notes)


def _scores(trainer: Trainer, data: Dataset) -> dict[str, Any]:
    """The model's current scores on the held-out splits the run has."""
    return {
        name: trainer.evaluator.evaluate(part)
        for name, part in (("val", data.val), ("test", data.test))
        if part is not None
    }


def _best_scores(
    trainer: Trainer,
    data: Dataset,
    run_dir: Path,
    best_epoch: int | None,
    final: dict[str, np.ndarray],
    final_scores: dict[str, Any],
) -> dict[str, Any] | None:
    """The scores of checkpoints/best.npz: what `dlrun evaluate RUN_DIR` reports, and what the end of
    training prints (the final weights can be an epoch or more past the best one)."""
    path = run_dir / "checkpoints" / "best.npz"
    if best_epoch is None or not path.is_file():
        return None
    best = {"epoch": best_epoch, "checkpoint": str(path.relative_to(run_dir))}
    weights = ckpt_mod.load(path).weights
    if all(np.array_equal(weights[k], v) for k, v in final.items()):  # e.g. EarlyStopping restored them
        return {**best, **{k: v for k, v in final_scores.items() if k in ("val", "test")}}
    trainer.model.set_weights(weights)
    try:
        return {**best, **_scores(trainer, data)}
    finally:
        trainer.model.set_weights(final)


def _plot_if_possible(run_dir: Path, history: dict[str, list[float]]) -> None:
    """history.png beside history.json when matplotlib is installed (an optional extra)."""
    if history and importlib.util.find_spec("matplotlib") is not None:
        plot_history({run_dir.name: history}, run_dir / "history.png")
