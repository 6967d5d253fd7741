"""Callback base class: Keras's hooks, plus state that checkpoints save for exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dlrun.training.loop import Trainer


class Callback:
    """Override any hook. `trainer` is set before `on_train_begin`.

    Resume contract: a fresh run calls `on_train_begin()`; a resumed run calls `set_state(state)`
    instead, with what `get_state()` returned when the checkpoint was written, so `set_state` must
    leave the callback exactly as it was then (counters, best values, files it appends to).
    """

    trainer: Trainer
    #: Whether the callback's only effect is output (files, a tracking server): in data-parallel
    #: training rank 0 alone runs it, the others skip it.
    writes_files = False

    def set_trainer(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self) -> None: ...

    def on_epoch_begin(self, epoch: int) -> None: ...

    def on_batch_end(self, batch: int, loss: Any) -> None:
        """`loss` is the batch loss as a device scalar: reading it is a sync point."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, logs: dict[str, float]) -> None: ...

    def on_interrupt(self) -> None:
        """Training stops on a signal after the current batch: save what must survive (no train end)."""

    def on_error(self, error: BaseException) -> None:
        """Training ended by an error (not a signal): release what the callback holds open
        (a tracking run marked failed). Must not raise: the error itself matters more."""

    def on_run_end(self) -> None:
        """After `on_train_end`, once the run folder is complete (metrics.json, history.png): `api.train`
        and `api.resume` call it; a Trainer used on its own does not."""

    # Exact resume: a callback returns its counters and best values, and takes them back.
    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None: ...

    # -- helpers -------------------------------------------------------------------------------------
    def message(self, text: str) -> None:
        """A line for the user, through the trainer's listener (the library never prints)."""
        self.trainer.listener.message(text)

    def output_path(self, path: str | Path) -> Path:
        """A user path: relative ones go inside the run folder (the working directory without one)."""
        p = Path(path).expanduser()
        run_dir = getattr(self.trainer, "run_dir", None)
        return p if p.is_absolute() or run_dir is None else Path(run_dir) / p
