"""Callback base class: Keras's hooks, plus state that checkpoints save for exact resume."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dlrun.training.loop import Trainer


class Callback:
    """Override any hook. `trainer` is set before `on_train_begin`."""

    trainer: "Trainer"

    def set_trainer(self, trainer: "Trainer") -> None:
        self.trainer = trainer

    def on_train_begin(self) -> None: ...

    def on_epoch_begin(self, epoch: int) -> None: ...

    def on_batch_end(self, batch: int, loss: Any) -> None:
        """`loss` is the batch loss as a device scalar: reading it is a sync point."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, logs: dict[str, float]) -> None: ...

    # Exact resume: a callback returns its counters and best values, and takes them back.
    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None: ...
