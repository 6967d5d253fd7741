"""One trial in its own process: `python -m dlrun.sweep.worker`, driven by the sweep's parent process.

The parent owns the Optuna study (only it touches the storage). It writes the job as one JSON line
on stdin; the worker trains it as an ordinary run into the job's run folder and writes JSON lines on
stdout: `{"event": "epoch", ...}` after every epoch (then, when the sweep prunes, it waits for the
parent's answer on stdin: `prune` or `go`), and finally `{"event": "result", ...}`.

The worker runs in its own session, so a Ctrl-C in the terminal reaches the parent only; the parent
passes it on once, and the run stops after the current batch with a resumable checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
from typing import Any, TextIO

from dlrun import jsonio
from dlrun.training.loop import SilentListener


class SweepReporter(SilentListener):
    """The trial's progress listener: reports each epoch's logs to the parent and stops the run when
    the parent says it is pruned.

    A listener rather than a Callback: the loop calls it after every callback has ended the epoch
    (the checkpoint and history.json are written), and checkpoints list only the config's own
    callbacks, so a trial folder resumes with `dlrun train --resume` like any run. A pruned run ends
    as an early stop does: checkpoints, history and metrics.json complete."""

    def __init__(self, out: TextIO, answers: TextIO | None) -> None:
        self.out, self.answers = out, answers
        self.pruned = False
        self.trainer: Any = None

    def on_train_begin(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_epoch_end(self, epoch: int, logs: dict[str, float], seconds: float) -> None:
        send(self.out, {"event": "epoch", "epoch": epoch + 1, "epochs": self.trainer.epochs, "logs": logs})
        if self.answers is None or self.trainer.stop_training:
            return
        answer = self.answers.readline().strip()
        if answer == "prune":
            self.pruned = True
            self.trainer.stop_training = True
        elif answer != "go":  # the parent is gone: stop, resumable, rather than train on unwatched
            raise SystemExit(1)


def send(out: TextIO, event: dict[str, Any]) -> None:
    out.write(jsonio.dumps(event) + "\n")
    out.flush()


def trial_value(
    history: dict[str, list[float]], best_epoch: int | None, metric: str
) -> tuple[float | None, str | None]:
    """(the metric at the run's best epoch, None) or (None, why there is none)."""
    if metric not in history:
        return None, f"the run logged no {metric!r} (it logged {', '.join(history) or 'nothing'})"
    if best_epoch is None:
        return None, "no epoch ended with a finite loss: training diverged (NaN or Inf)"
    value = history[metric][best_epoch - 1]
    if not math.isfinite(value):
        return None, f"{metric} at the best epoch ({best_epoch}) is not finite: training diverged"
    return float(value), None


def run(job: dict[str, Any], out: TextIO, answers: TextIO | None) -> dict[str, Any]:
    """Train the job's trial; returns the result event (never raises for a trial that fails)."""
    from dlrun import api
    from dlrun.errors import DlrunError, TrainingInterrupted

    reporter = SweepReporter(out, answers)
    try:
        result = api.train(
            job["config"],
            run_dir=job["run_dir"],
            overrides=job["overrides"],
            listener=reporter,
            device=job.get("device"),
            context=job.get("context"),
        )
    except TrainingInterrupted as exc:
        return {"event": "result", "state": "INTERRUPTED", "message": exc.message}
    except DlrunError as exc:
        return {"event": "result", "state": "FAIL", "message": str(exc)}
    except MemoryError:
        return {"event": "result", "state": "FAIL", "message": "out of memory"}
    except Exception as exc:  # a bug or a library error: the sweep goes on, the message keeps the cause
        last = traceback.extract_tb(exc.__traceback__)[-1]
        where = f" ({last.filename}:{last.lineno})"
        return {"event": "result", "state": "FAIL", "message": f"{type(exc).__name__}: {exc}{where}"}
    value, problem = trial_value(result.history, result.best_epoch, job["metric"])
    state = "FAIL" if problem else ("PRUNED" if reporter.pruned else "COMPLETE")
    return {
        "event": "result",
        "state": state,
        "value": value,
        "message": problem,
        "best_epoch": result.best_epoch,
        "epochs": result.metrics.get("epochs"),
    }


def main() -> None:
    job = json.loads(sys.stdin.readline())
    out = sys.stdout
    sys.stdout = sys.stderr  # only protocol lines on the real stdout, whatever a library prints
    send(out, run(job, out, sys.stdin if job.get("prune") else None))


if __name__ == "__main__":
    main()
