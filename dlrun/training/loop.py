"""The training loop: shuffled mini-batches, a validation pass per epoch, Keras-shaped history.

Per-batch values stay on the device; they are read once per epoch, or when the progress listener
asks for a refresh (it decides how often), so the hot loop has no host round-trip.

`snapshot()` captures everything a resumed run needs to continue bit for bit, also in the middle of
an epoch (after a batch): weights, optimizer slots and step, the RNG states (the shuffle stream as it
was when the epoch's permutation was drawn), the epoch's running sums, history and callback state.
"""

from __future__ import annotations

import contextlib
import copy
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dlrun.data.dataset import Dataset
from dlrun.engine.losses import Loss
from dlrun.engine.metrics import Metric
from dlrun.engine.optimizers import Optimizer
from dlrun.errors import CheckpointError, TrainingInterrupted
from dlrun.graph.model import Model
from dlrun.parallel.communicator import Communicator, checksum
from dlrun.runs.checkpoint import Checkpoint
from dlrun.training.callbacks import Callback
from dlrun.training.evaluation import Evaluator, means


class ProgressListener(Protocol):
    """How the loop reports to whoever displays it (the CLI); all methods optional in practice."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_epoch_begin(self, epoch: int, epochs: int, batches: int) -> None: ...

    def on_batch_end(self, batch: int, batches: int, samples: int, running: Callable[[], dict[str, float]]) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float], seconds: float) -> None: ...

    def on_train_end(self, history: dict[str, list[float]]) -> None: ...

    def message(self, text: str) -> None: ...


class SilentListener:
    def on_train_begin(self, trainer): ...
    def on_epoch_begin(self, epoch, epochs, batches): ...
    def on_batch_end(self, batch, batches, samples, running): ...
    def on_epoch_end(self, epoch, logs, seconds): ...
    def on_train_end(self, history): ...
    def message(self, text): ...


@dataclass
class Trainer:
    """Owns one training run's moving parts; `fit` runs the remaining epochs."""

    model: Model
    loss: Loss
    optimizer: Optimizer
    metrics: list[Metric]
    data: Dataset
    batch_size: int = 32
    epochs: int = 1
    shuffle: bool = True
    shuffle_rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    callbacks: list[Callback] = field(default_factory=list)
    listener: Any = field(default_factory=SilentListener)
    #: Where callbacks put relative output paths (the run folder), and the resolved config that
    #: checkpoints carry; both optional outside a run.
    run_dir: Path | None = None
    config: dict[str, Any] | None = None
    #: The processes training together (data-parallel); by default this one alone. `batch_size`
    #: is the global batch: each rank trains on its part of every batch, and the gradients, loss
    #: and metric sums are summed over the ranks, so N ranks compute what one would.
    comm: Communicator = field(default_factory=Communicator)
    #: Goyal et al.'s gradual warm-up for large global batches: over this many epochs' steps the
    #: rate each step uses rises linearly to the optimizer's (scheduled) rate, which history logs.
    warmup_epochs: int = 0

    def __post_init__(self) -> None:
        self.backend = self.model.backend
        # The validation pass; the training step reads the model's output as it does (the loss
        # on the logits of a softmax/sigmoid output, the metrics on the probabilities).
        self.evaluator = Evaluator(self.model, self.loss, self.metrics, self.data, comm=self.comm)
        self.model.use_communicator(self.comm)
        self.history: dict[str, list[float]] = {}
        self.epoch = 0  # epochs completed
        self.stop_training = False
        self.interrupt: int | None = None  # a signal number, set (by a handler) to stop after this batch
        self._progress: dict[str, Any] | None = None  # the running epoch, after each batch
        self._resume_epoch: dict[str, Any] | None = None  # a snapshot's unfinished epoch, to go on with
        self._resume_callbacks: list[dict[str, Any]] | None = None
        self.optimizer.build(self.model.flat_params, self.model.segments)
        self.train_batches = self.data.batches(
            self.data.train,
            self.batch_size,
            self.backend,
            self.evaluator.targets,
            training=True,
            shard=(self.comm.rank, self.comm.size),
        )
        self._muted: set[str] = set()  # callbacks that only write files: rank 0 runs them

    # -- one step ------------------------------------------------------------------------------------
    def train_step(self, xb: Any, yb: Any, sums: Any, total: int | None = None) -> Any:
        """Forward, backward, update; adds loss and metric sums (device scalars) into `sums`.

        `xb` may be this rank's part of a batch of `total` samples: its loss gradient is then
        weighted by its share, and the gradients (and the sums) are summed over the ranks, which
        gives the gradient of the mean over the whole batch. Weight penalties and their gradients
        are added after the sum, once."""
        ev = self.evaluator
        n = xb.shape[0]
        out = ev.output(xb, training=True)
        loss, dout, probs = ev.loss.value_grad_and_probabilities(out, yb)
        if total is not None and total != n:
            dout = dout * dout.dtype.type(n / total)
        self.model.backward(dout)
        self.comm.allreduce(self.model.flat_grads)
        loss = loss + self.model.regularization(add_grads=True)
        self._apply_update()
        batch = self.backend.xp.zeros_like(sums)
        batch[0] += loss * n
        ev.add_metric_sums(batch, out, yb, probs)
        sums += self.comm.allreduce_stats(batch)
        return loss

    # -- loops ---------------------------------------------------------------------------------------
    def fit(self) -> dict[str, list[float]]:
        """Run the remaining epochs. Raises TrainingInterrupted (after callbacks' `on_interrupt`)
        when `interrupt` gets set: the state after the last finished batch is then `snapshot()`."""
        if not self.comm.is_writer:  # rank 0 alone writes checkpoints, logs and tracking
            self._muted = {type(cb).__name__ for cb in self.callbacks if cb.writes_files}
            self.callbacks = [cb for cb in self.callbacks if type(cb).__name__ not in self._muted]
        for cb in self.callbacks:
            cb.set_trainer(self)
        self.comm.check_same("initial weights", self._state_checksum())
        self.listener.on_train_begin(self)
        try:
            self._begin_callbacks()
            while self.epoch < self.epochs and not self.stop_training:
                self._run_epoch()
                if self._agree_on_stopping():
                    self._stop_on_interrupt()
        except TrainingInterrupted:
            self._end_listener()
            raise
        except BaseException as exc:
            for cb in self.callbacks:
                with contextlib.suppress(Exception):  # the original error matters more
                    cb.on_error(exc)
            self._end_listener()
            raise
        final = {k: v[-1] for k, v in self.history.items()}
        for cb in self.callbacks:
            cb.on_train_end(final)
        self.listener.on_train_end(self.history)
        return self.history

    def _begin_callbacks(self) -> None:
        """A fresh run calls `on_train_begin`; a resumed one gives each callback its saved state."""
        states, self._resume_callbacks = self._resume_callbacks, None
        if states is not None:
            states = [s for s in states if s.get("type") not in self._muted]
        if states is None:
            for cb in self.callbacks:
                cb.on_train_begin()
            return
        names = [type(cb).__name__ for cb in self.callbacks]
        saved = [s.get("type") for s in states]
        if saved != names:
            raise CheckpointError(f"the checkpoint's callbacks {saved} do not match this run's {names}")
        for cb, state in zip(self.callbacks, states):
            cb.set_state(state["state"])

    def _run_epoch(self) -> None:
        xp = self.backend.xp
        names = self.evaluator.names
        n_batches = len(self.train_batches)
        epoch = self.epoch
        resume, self._resume_epoch = self._resume_epoch, None
        if resume is None:
            for cb in self.callbacks:
                cb.on_epoch_begin(epoch)
            shuffle_state = copy.deepcopy(self.shuffle_rng.bit_generator.state)
            sums, seen, first = xp.zeros(len(names), dtype=xp.float64), 0, 0
        else:  # the callbacks' epoch-begin effects (the learning rate) are in the restored state
            shuffle_state = resume["shuffle"]
            self.shuffle_rng.bit_generator.state = copy.deepcopy(shuffle_state)
            sums = xp.asarray(np.asarray(resume["sums"], dtype=np.float64))
            seen, first = int(resume["seen"]), int(resume["batch"])
        self.listener.on_epoch_begin(epoch, self.epochs, n_batches)
        start = time.perf_counter()
        rng = self.shuffle_rng if self.shuffle else None
        # Augmentation is keyed by (epoch, batch): a resumed epoch augments as the original did.
        batches = self.train_batches.epoch(rng, first, epoch=epoch)
        try:
            for b, (xb, yb) in enumerate(batches, start=first):
                first_row, last_row = self.train_batches.part(b)
                total = self.train_batches.global_size(b)
                self.model.noise.set_part(first_row, last_row, total)
                loss = self.train_step(xb, yb, sums, total)
                seen += total
                self._progress = {"batch": b + 1, "seen": seen, "sums": sums, "shuffle": shuffle_state}
                for cb in self.callbacks:
                    cb.on_batch_end(b, loss)
                self.listener.on_batch_end(b, n_batches, seen, lambda s=sums, k=seen: means(self.backend, s, k, names))
                agreed = self._agree_on_stopping()
                if self.stop_training:
                    break
                if agreed and b + 1 < n_batches:
                    self._stop_on_interrupt()
        finally:
            close = getattr(batches, "close", None)  # stop a prefetching thread early
            if close is not None:
                close()
            self.model.noise.set_part(0, 0, 0)
        self._progress = None
        self._share_model_state()
        logs = means(self.backend, sums, max(seen, 1), names)
        if self.data.val is not None:
            logs.update({f"val_{k}": v for k, v in self.evaluator.evaluate(self.data.val).items()})
        logs["learning_rate"] = self.optimizer.learning_rate
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
        self.epoch = epoch + 1
        seconds = time.perf_counter() - start
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)
        self.listener.on_epoch_end(epoch, logs, seconds)

    def _apply_update(self) -> None:
        opt = self.optimizer
        ramp = self.warmup_epochs * len(self.train_batches)
        if opt.iterations >= ramp:
            opt.apply(self.model.flat_params, self.model.flat_grads)
            return
        rate = opt.learning_rate  # the step count is in checkpoints: a resumed ramp goes on exactly
        opt.learning_rate = rate * (opt.iterations + 1) / ramp
        try:
            opt.apply(self.model.flat_params, self.model.flat_grads)
        finally:
            opt.learning_rate = rate

    def _agree_on_stopping(self) -> int:
        """Every rank stops after the same batch: a signal or a callback's stop on any rank counts
        for all (one small all-reduce), or the others would wait for it in the next one. Returns the
        agreed signal (0: none). Decide on it, never on `self.interrupt`: a signal that lands on one
        rank just after the all-reduce must wait for the next one, or that rank stops alone."""
        signum, stop = self.comm.agree((self.interrupt or 0, int(self.stop_training)))
        if signum and self.interrupt is None:
            self.interrupt = signum
        self.stop_training = bool(stop)
        return int(signum)

    def _share_model_state(self) -> None:
        """Local BatchNormalization leaves each rank its own moving statistics; at the end of each
        epoch every rank takes rank 0's (what PyTorch DDP does each step), so validation and the
        checkpoints rank 0 writes see one model, and a resume from an epoch's end is exact."""
        if self.comm.size == 1:
            return
        weights = self.model.get_weights()
        state = {k: v for k, v in weights.items() if k not in self.model.trainable_names}
        if state:
            self.model.set_weights({**weights, **self.comm.bcast(state)})

    def _state_checksum(self) -> str:
        return checksum(self.model.flat_params, *self.optimizer.state_arrays().values())

    def _stop_on_interrupt(self) -> None:
        """Let callbacks save (the run recorder writes a resumable checkpoint), then raise."""
        for cb in self.callbacks:
            cb.on_interrupt()
        signum = self.interrupt or signal.SIGINT
        name = signal.Signals(signum).name
        where = (
            f"in epoch {self.epoch + 1} after batch {self._progress['batch']}/{len(self.train_batches)}"
            if self._progress
            else f"after epoch {self.epoch}"
        )
        exc = TrainingInterrupted(f"training stopped by {name} {where}")
        exc.exit_code = 128 + int(signum)
        exc.signal, exc.epoch = int(signum), self.epoch  # type: ignore[attr-defined]
        exc.batch = self._progress["batch"] if self._progress else None  # type: ignore[attr-defined]
        raise exc

    def _end_listener(self) -> None:
        """Close the display (a live progress bar) when training ends early; never masks an error."""
        with contextlib.suppress(Exception):  # the original exception matters more
            self.listener.on_train_end(self.history)

    def running_logs(self) -> dict[str, float]:
        """Means over the current epoch so far plus the learning rate (a sync: for rare use)."""
        p = self._progress
        logs = means(self.backend, p["sums"], max(p["seen"], 1), self.evaluator.names) if p else {}
        logs["learning_rate"] = self.optimizer.learning_rate
        return logs

    # -- state for checkpoints -----------------------------------------------------------------------
    def checkpoint(self, *, weights_only: bool = False) -> Checkpoint:
        """Everything needed to resume exactly, or (`weights_only`) the weights and config alone,
        which `dlrun evaluate` and `predict` can still use."""
        if self.config is None:
            raise CheckpointError("this trainer has no config to store in a checkpoint")
        if weights_only:
            return Checkpoint(self.config, self.model.get_weights(), {}, {"epoch": self.epoch, "weights_only": True})
        weights, optimizer, meta = self.snapshot()
        return Checkpoint(self.config, weights, optimizer, meta)

    def snapshot(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
        """(weights, optimizer slots, metadata) as host values: everything needed to resume exactly.

        Taken inside an epoch (after a batch), the metadata also holds that epoch's progress.
        """
        optimizer = {k: self.backend.to_host(v).copy() for k, v in self.optimizer.state_arrays().items()}
        meta = {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "stop_training": self.stop_training,
            "history": copy.deepcopy(self.history),
            "optimizer": {"iterations": self.optimizer.iterations, "learning_rate": self.optimizer.learning_rate},
            "rng": {
                "noise": copy.deepcopy(self.model.noise.get_state()),
                "shuffle": copy.deepcopy(self.shuffle_rng.bit_generator.state),
            },
            "callbacks": [{"type": type(cb).__name__, "state": cb.get_state()} for cb in self.callbacks],
        }
        if self._progress is not None:
            p = self._progress
            meta["partial_epoch"] = {
                "batch": p["batch"],
                "seen": p["seen"],
                "shuffle": copy.deepcopy(p["shuffle"]),
                "sums": [float(v) for v in self.backend.to_host(p["sums"])],
            }
        return self.model.get_weights(), optimizer, meta

    def restore(self, weights: dict[str, np.ndarray], optimizer: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Put a snapshot back (the inverse of `snapshot`); callback states are handed over by `fit`."""
        self.model.set_weights(weights)
        opt = meta.get("optimizer", {})
        self.optimizer.load_state(
            opt.get("iterations", 0),
            {k: self.backend.asarray(v) if self.backend.is_gpu else v for k, v in optimizer.items()},
            opt.get("learning_rate"),
        )
        self.epoch = int(meta.get("epoch", 0))
        self.stop_training = bool(meta.get("stop_training", False))
        self.history = {k: list(v) for k, v in meta.get("history", {}).items()}
        rng = meta.get("rng", {})
        if "noise" in rng:
            self.model.noise.set_state(rng["noise"])
        if "shuffle" in rng:
            self.shuffle_rng.bit_generator.state = rng["shuffle"]
        partial = meta.get("partial_epoch")
        if partial is not None and len(partial.get("sums", [])) != len(self.evaluator.names):
            raise ValueError(  # the caller names the checkpoint file
                f"its unfinished epoch sums {len(partial.get('sums', []))} values; this run logs "
                f"{len(self.evaluator.names)} ({', '.join(self.evaluator.names)})"
            )
        self._resume_epoch = partial
        self._resume_callbacks = meta.get("callbacks")
