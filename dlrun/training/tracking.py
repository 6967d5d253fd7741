"""Experiment tracking where users already look: the TensorBoard and MLflow callbacks.

Both write with the real libraries (tensorboardX, which needs no TensorFlow, and mlflow-skinny's
`MlflowClient`), imported only when a run starts; constructing the callback (what `dlrun validate`
does) only checks that they are installed, so a missing one is a config error naming the pip command.
Both write from the chief process only (`trainer.is_chief`, True unless a data-parallel trainer says
otherwise) and keep in their callback state what a resumed run needs to go on without logging any
step twice.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dlrun import __version__
from dlrun.checks import BOOL, NON_EMPTY_STR, NON_NEGATIVE_INT, checked, choices, declare, nullable
from dlrun.config.overrides import flatten
from dlrun.errors import ArgumentError
from dlrun.runs.paths import run_path
from dlrun.training.callbacks import Callback
from dlrun.training.callbacks_builtin import CALLBACKS


def require(module: str, extra: str, who: str) -> None:
    """A ValueError (a config error at the callback's entry) when `module` cannot be imported.

    find_spec only locates the package, so `dlrun validate` does not pay for importing it.
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or sys.modules[module] = None
        found = False
    if not found:
        raise ValueError(f"{who} needs the {module} package, which is not installed: pip install 'dlrun[{extra}]'")


def is_chief(callback: Callback) -> bool:
    """Only one process of a data-parallel run writes (rank 0); a single process always does."""
    return bool(getattr(callback.trainer, "is_chief", True))


# -- TensorBoard ----------------------------------------------------------------------------------------


@CALLBACKS.register("TensorBoard")
class TensorBoard(Callback):
    """Write TensorBoard event files (with tensorboardX) in Keras's layout.

    `<log_dir>/train` holds `epoch_<name>` for every training value of the epoch's logs, including
    `epoch_learning_rate`; `<log_dir>/validation` holds the `val_` values under the same tags
    (`val_loss` -> `epoch_loss`). Epoch scalars use the epoch (from 0) as step, as Keras does.
    Start TensorBoard over a runs folder with `tensorboard --logdir runs`.

    Args:
        log_dir: where the event files go, inside the run folder. Defaults to None: `<run folder>/logs`.
        histogram_freq: every that many epochs, write a histogram of every weight and a
            `gradient_norm/<weight>` scalar (the norm of its gradient in the epoch's last batch) to
            `train`. 0 writes none. Defaults to 0.
        write_graph: write the layer graph (a graph for TensorBoard's Graphs tab, with each layer's
            output shape) and the model summary as text (tag `model_summary`). Defaults to True.
        update_freq: "epoch", "batch" or a number of batches N: also write `batch_<name>` (the
            epoch's running means, as Keras's batch logs) every N batches, with the batch count since
            the start of training as step. The values are read from the device only at those batches.
            They go to `<log_dir>/train_batch` rather than Keras's `train`: one event folder with two
            step units (epochs and batches) could not be purged exactly on resume. Defaults to "epoch".
    """

    writes_files = True

    bounds = declare(log_dir=nullable(NON_EMPTY_STR), histogram_freq=NON_NEGATIVE_INT, write_graph=BOOL)

    def __init__(
        self,
        log_dir: str | None = None,
        histogram_freq: int = 0,
        write_graph: bool = True,
        update_freq: str | int = "epoch",
    ) -> None:
        require("tensorboardX", "tensorboard", "The TensorBoard callback")
        self.log_dir = checked(self, "log_dir", log_dir)
        if self.log_dir is not None:  # inside the run folder, like every path a config names
            self.log_dir = run_path(self.log_dir, "log_dir")
        self.histogram_freq = checked(self, "histogram_freq", histogram_freq)
        self.write_graph = checked(self, "write_graph", write_graph)
        if update_freq == "batch":
            every: int | None = 1
        elif update_freq == "epoch":
            every = None
        elif isinstance(update_freq, int) and not isinstance(update_freq, bool) and update_freq >= 1:
            every = update_freq
        else:
            raise ArgumentError(
                "update_freq must be 'epoch', 'batch' or a positive number of batches. "
                f"Received: update_freq={update_freq!r}",
                "update_freq",
                update_freq,
            )
        self.update_freq = update_freq
        self.every = every
        self.writers: dict[str, Any] = {}
        self.batches = 0  # batches trained since the start of the run: the batch scalars' step

    def get_config(self) -> dict[str, Any]:
        return {
            "log_dir": self.log_dir,
            "histogram_freq": self.histogram_freq,
            "write_graph": self.write_graph,
            "update_freq": self.update_freq,
        }

    @property
    def path(self) -> Path:
        return self.output_path(self.log_dir or "logs")

    # -- writers -------------------------------------------------------------------------------------
    def _open(self, epoch_purge: int | None, batch_purge: int | None) -> None:
        """One SummaryWriter per folder; a resumed run's writers hide the steps the checkpoint does
        not cover (`purge_step`), so epochs or batches done again after a kill are not doubled."""
        self.close()
        if not is_chief(self):
            return
        from tensorboardX import SummaryWriter

        root = self.path
        folders = {"train": epoch_purge, "validation": epoch_purge}
        if self.every is not None:
            folders["train_batch"] = batch_purge
        for name, purge in folders.items():
            # flush_secs: the epoch end flushes anyway; this bounds what a kill mid-epoch loses.
            self.writers[name] = SummaryWriter(str(root / name), purge_step=purge, flush_secs=10)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    # -- hooks ---------------------------------------------------------------------------------------
    def on_train_begin(self) -> None:
        self.batches = 0
        self._open(None, None)
        if self.write_graph and self.writers:
            self._write_graph()
            self.flush()

    def on_batch_end(self, batch: int, loss: Any) -> None:
        self.batches += 1
        if self.every is None or self.batches % self.every or not self.writers:
            return
        writer = self.writers["train_batch"]
        for name, value in self.trainer.running_logs().items():  # the one device read
            if name != "learning_rate":
                writer.add_scalar(f"batch_{name}", value, self.batches)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if not self.writers:
            return
        train, validation = self.writers["train"], self.writers["validation"]
        for name, value in logs.items():
            if name.startswith("val_"):
                validation.add_scalar(f"epoch_{name[4:]}", value, epoch)
            else:
                train.add_scalar(f"epoch_{name}", value, epoch)
        if self.histogram_freq and (epoch + 1) % self.histogram_freq == 0:
            self._write_histograms(epoch)
        self.flush()  # what the checkpoint written next covers is on disk

    def on_interrupt(self) -> None:
        self.flush()

    def on_train_end(self, logs: dict[str, float]) -> None:
        self.close()

    def get_state(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def set_state(self, state: dict[str, Any]) -> None:
        self.batches = int(state.get("batches", 0))
        epochs_done = self.trainer.epoch
        self._open(epochs_done, self.batches + 1)
        if self.write_graph and self.writers and epochs_done == 0:
            self._write_graph()  # the purge at step 0 hid the first attempt's summary text

    # -- what is written -----------------------------------------------------------------------------
    def _write_histograms(self, epoch: int) -> None:
        writer = self.writers["train"]
        model = self.trainer.model
        backend = model.backend
        for node in model.nodes:
            for key, value in node.layer.params.items():
                writer.add_histogram(f"{node.name}/{key}", backend.to_host(value), epoch)
            for key, grad in node.layer.grads.items():
                norm = float(backend.xp.linalg.norm(grad.reshape(-1)))
                writer.add_scalar(f"gradient_norm/{node.name}/{key}", norm, epoch)

    def _write_graph(self) -> None:
        from tensorboardX.proto import attr_value_pb2, event_pb2, graph_pb2, node_def_pb2, tensor_shape_pb2

        from dlrun.graph.summary import summary_text

        model = self.trainer.model
        name = (self.trainer.config or {}).get("name")

        def shape_attr(shape: tuple[int | None, ...]) -> Any:
            dims = [tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if d is None else d) for d in (None, *shape)]
            listed = attr_value_pb2.AttrValue.ListValue(shape=[tensor_shape_pb2.TensorShapeProto(dim=dims)])
            return attr_value_pb2.AttrValue(list=listed)

        nodes = [
            node_def_pb2.NodeDef(name=n, op="InputLayer", attr={"_output_shapes": shape_attr(s)})
            for n, s in model.inputs.items()
        ]
        for node in model.nodes:
            trainable, frozen = node.layer.param_count()
            nodes.append(
                node_def_pb2.NodeDef(
                    name=node.name,
                    op=node.layer.type_name,
                    input=node.inputs,
                    attr={
                        "_output_shapes": shape_attr(node.output_shape),
                        "params": attr_value_pb2.AttrValue(i=trainable + frozen),
                    },
                )
            )
        graph = graph_pb2.GraphDef(node=nodes)
        writer = self.writers["train"]
        writer.file_writer.add_event(event_pb2.Event(graph_def=graph.SerializeToString()))
        # Markdown: four-space indent keeps the table's columns.
        text = "\n".join("    " + line for line in summary_text(model, name).splitlines())
        writer.add_text("model_summary", text, 0)


# -- MLflow ---------------------------------------------------------------------------------------------

#: MLflow's limits (mlflow/utils/validation.py): longer keys are refused, longer values cut.
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
MAX_PER_BATCH = 100  # params or tags per log_batch call
MAX_METRICS_PER_BATCH = 1000
_VALID_KEY = re.compile(r"^[/\w.\- :]*$")

#: How long an unreachable tracking server may hold training up: MLflow's own default is 7 retries
#: with exponential backoff and a 120 s timeout (minutes). Used unless the user's environment sets them.
BOUNDED_RETRY = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
_QUIET_LOGGERS = ("mlflow", "alembic")


def param_key(path: str) -> str:
    """A `--set` path as an MLflow key: MLflow refuses brackets, so `layers[1]` becomes `layers.1`."""
    return re.sub(r"\[(\d+)\]", r".\1", path)


def param_value(value: Any) -> str:
    """Strings as they are, everything else as in YAML/JSON (`true`, `null`, `[3, 3]`)."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def config_params(config: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The resolved config as MLflow params, and the keys left out (too long or with characters
    MLflow refuses). Values over MLflow's limit are cut, ending in "..."."""
    params: dict[str, str] = {}
    skipped: list[str] = []
    for path, value in flatten(config).items():
        key = param_key(path)
        if len(key) > MAX_KEY_LENGTH or not _VALID_KEY.match(key) or os.path.normpath(key) != key:
            skipped.append(path)
            continue
        text = param_value(value)
        params[key] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
    return params, skipped


class TrackingUnavailable(Exception):
    """An MLflow call failed: the callback warns once and stops tracking for this process."""


@CALLBACKS.register("MLflow")
class MLflow(Callback):
    """Log the run to MLflow: params, per-epoch metrics, tags and the run folder's files.

    - params: the resolved config, flattened to the paths `--set` uses (`optimizer.learning_rate`;
      list items as `model.layers.1.Dense.units`, since MLflow keys cannot hold brackets);
    - metrics: every history value of every epoch, with the epoch (from 0) as step;
    - tags: `dlrun.version`, `dlrun.seed`, `dlrun.device`, `dlrun.run_folder` and
      `mlflow.source.git.commit` (from manifest.json, when the config is in a git repository);
    - artifacts, at the end and on an interruption: config.yaml, history.json, metrics.json,
      manifest.json, history.png (those that exist) and checkpoints per `log_checkpoints`. At an
      interruption the checkpoints are those of the last finished epoch.

    A resumed run continues the same MLflow run (its id is in the checkpoint's callback state) and
    logs no step twice. An unreachable server or unwritable store is a warning, after a bounded
    retry, and training goes on untracked; a later resume logs the epochs it missed.

    Args:
        tracking_uri: where to log. Defaults to None: `$MLFLOW_TRACKING_URI`, else
            `sqlite:///<runs folder>/mlflow.db` with artifacts in `<runs folder>/mlartifacts`.
        experiment_name: created when missing. Defaults to None: the config's name.
        run_name: Defaults to None: the run folder's name (its timestamp).
        log_checkpoints: "best" (checkpoints/best.npz), "all" (every .npz in checkpoints/) or
            "none". Defaults to "best".
    """

    writes_files = True

    bounds = declare(
        tracking_uri=nullable(NON_EMPTY_STR),
        experiment_name=nullable(NON_EMPTY_STR),
        run_name=nullable(NON_EMPTY_STR),
        log_checkpoints=choices("best", "all", "none"),
    )

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        log_checkpoints: str = "best",
    ) -> None:
        self.tracking_uri = checked(self, "tracking_uri", tracking_uri)
        self.experiment_name = checked(self, "experiment_name", experiment_name)
        self.run_name = checked(self, "run_name", run_name)
        self.log_checkpoints = checked(self, "log_checkpoints", log_checkpoints)
        require("mlflow", "mlflow", "The MLflow callback")
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None or uri.startswith("sqlite:"):  # MLflow's SQL store needs both
            require("sqlalchemy", "mlflow", "The MLflow callback's SQLite store")
            require("alembic", "mlflow", "The MLflow callback's SQLite store")
        self.client: Any = None
        self.run_id: str | None = None
        self.uri: str | None = None
        self.logged = 0  # epochs of history already sent
        self.logged_steps: dict[str, int] = {}  # key -> last step the server has (read on resume)

    def get_config(self) -> dict[str, Any]:
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.experiment_name,
            "run_name": self.run_name,
            "log_checkpoints": self.log_checkpoints,
        }

    # -- connection ----------------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path | None:
        run_dir = getattr(self.trainer, "run_dir", None)
        return Path(run_dir) if run_dir is not None else None

    def resolve_uri(self) -> str:
        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri:
            return uri
        # A run folder is <runs>/<config name>/<timestamp>: the store is shared by the runs folder.
        runs = self.run_dir.parent.parent if self.run_dir is not None else Path.cwd()
        runs.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(runs / 'mlflow.db').resolve()}"

    @contextlib.contextmanager
    def _call(self, what: str, quiet: bool = True) -> Iterator[None]:
        """Bounded retries and MLflow's INFO lines (database migrations) silenced for the length of
        one call; any failure becomes TrackingUnavailable (tracking must never lose a training run)."""
        saved_env = {k: os.environ.get(k) for k in BOUNDED_RETRY}
        for key, value in BOUNDED_RETRY.items():
            os.environ.setdefault(key, value)
        loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS] if quiet else []
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        except Exception as exc:
            raise TrackingUnavailable(f"could not {what} ({type(exc).__name__}: {_first_line(exc)})") from exc
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)

    def _safely(self, fn: Any, *args: Any) -> None:
        """Run a tracking step; on failure warn once and stop tracking for this process."""
        if self.client is None:
            return
        try:
            fn(*args)
        except TrackingUnavailable as exc:
            self.client = None
            self.message(
                f"MLflow: {exc} at {self.uri}; tracking is off for the rest of this run (training goes on"
                + ("; resuming the run logs what was missed)" if self.run_id else ")")
            )

    def _connect(self) -> bool:
        if not is_chief(self):
            return False
        self.uri = self.resolve_uri()
        try:
            with self._call("load MLflow", quiet=False):  # importing configures MLflow's loggers
                from mlflow.tracking import MlflowClient
            with self._call("open the tracking store"):
                self.client = MlflowClient(tracking_uri=self.uri)
        except TrackingUnavailable as exc:
            self.client = None
            self.message(f"MLflow: {exc} at {self.uri}; training goes on untracked")
            return False
        return True

    def _experiment_id(self) -> str:
        name = self.experiment_name or (self.trainer.config or {}).get("name") or "dlrun"
        with self._call(f"open the experiment {name!r}"):
            experiment = self.client.get_experiment_by_name(name)
            if experiment is not None:
                return experiment.experiment_id
            location = None
            if self.uri and self.uri.startswith("sqlite:///"):
                # MLflow would put artifacts in ./mlruns of whatever the working directory is.
                location = (Path(self.uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
            return self.client.create_experiment(name, artifact_location=location)

    def _tags(self) -> dict[str, str]:
        config = self.trainer.config or {}
        manifest = self._manifest()
        context = manifest.get("context") if isinstance(manifest.get("context"), dict) else {}
        tags = {
            "dlrun.version": __version__,
            "dlrun.seed": config.get("seed", manifest.get("seed")),
            "dlrun.device": manifest.get("device"),
            "dlrun.run_folder": str(self.run_dir.resolve()) if self.run_dir is not None else None,
            "mlflow.source.git.commit": manifest.get("git_commit"),
            # A sweep's trial: which sweep, which trial (api.sweep puts them in the manifest).
            "dlrun.sweep": context.get("sweep"),
            "dlrun.trial": context.get("trial"),
        }
        return {k: str(v)[:MAX_TAG_LENGTH] for k, v in tags.items() if v is not None}

    def _manifest(self) -> dict[str, Any]:
        if self.run_dir is None:
            return {}
        try:
            manifest = json.loads((self.run_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            return {}
        return manifest if isinstance(manifest, dict) else {}

    # -- starting ------------------------------------------------------------------------------------
    def on_train_begin(self) -> None:
        self.client, self.run_id, self.logged, self.logged_steps = None, None, 0, {}
        # The first use of a SQLite store creates its tables (Alembic migrations): two runs starting
        # at once (a parallel sweep's trials) would race and one would train untracked.
        with _sqlite_store_lock(self.resolve_uri()):
            if self._connect():
                self._safely(self._start_run)

    def _start_run(self) -> None:
        from mlflow.entities import Param

        experiment_id = self._experiment_id()
        run_name = self.run_name or (self.run_dir.name if self.run_dir is not None else None)
        with self._call("start an MLflow run"):
            run = self.client.create_run(experiment_id, run_name=run_name, tags=self._tags())
        self.run_id = run.info.run_id
        params, skipped = config_params(self.trainer.config or {})
        items = list(params.items())
        with self._call("log the config as params"):
            for i in range(0, len(items), MAX_PER_BATCH):
                self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + MAX_PER_BATCH]])
        if skipped:
            self.message(
                f"MLflow: {len(skipped)} config keys are not logged as params (over {MAX_KEY_LENGTH} characters "
                f"or with characters MLflow refuses), e.g. {skipped[0]}; config.yaml holds them all"
            )

    def set_state(self, state: dict[str, Any]) -> None:
        self.client, self.logged_steps = None, {}
        self.run_id = state.get("run_id")
        self.logged = int(state.get("logged", 0))
        with _sqlite_store_lock(self.resolve_uri()):
            if self._connect():
                self._safely(self._continue_run)

    def _continue_run(self) -> None:
        """The saved run again: RUNNING, with the steps it already has (a kill after logging an
        epoch but before the checkpoint leaves one there) skipped; a run that is gone starts anew."""
        run = None
        if self.run_id is not None:
            from mlflow.exceptions import MlflowException

            with self._call(f"find the MLflow run {self.run_id}"):
                try:
                    run = self.client.get_run(self.run_id)
                except MlflowException as exc:  # another store, or the run was removed: a new run
                    if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                        raise
        if run is None or run.info.lifecycle_stage != "active":
            if self.run_id is not None:
                self.message(f"MLflow: the run {self.run_id} is not in {self.uri}; logging this run as a new one")
            self.logged = 0
            self._start_run()
            self._log_history()
            return
        with self._call("read the run's metrics"):
            for key in run.data.metrics:
                steps = [m.step for m in self.client.get_metric_history(self.run_id, key)]
                self.logged_steps[key] = max(steps) if steps else -1
            self.client.update_run(self.run_id, status="RUNNING")
        self._log_history()

    # -- logging -------------------------------------------------------------------------------------
    def _log_history(self) -> None:
        """History values of the epochs not yet sent, each with its epoch as step, in few calls."""
        from mlflow.entities import Metric

        history = self.trainer.history
        epochs = len(next(iter(history.values()), []))
        if epochs <= self.logged:
            return
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(values[step]), now, step)
            for key, values in history.items()
            for step in range(self.logged, min(epochs, len(values)))
            if step > self.logged_steps.get(key, -1)
        ]
        with self._call("log metrics"):
            for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])
        self.logged = epochs

    def _log_artifacts(self) -> None:
        run_dir = self.run_dir
        if run_dir is None:
            return
        files = [run_dir / n for n in ("config.yaml", "history.json", "metrics.json", "manifest.json", "history.png")]
        checkpoints = run_dir / "checkpoints"
        if self.log_checkpoints == "best":
            chosen = [checkpoints / "best.npz"]
        elif self.log_checkpoints == "all":
            chosen = sorted(checkpoints.glob("*.npz"))
        else:
            chosen = []
        with self._call("upload the run folder's files"):
            for path in files:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
            for path in chosen:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path), "checkpoints")

    def _finish(self, status: str) -> None:
        self._log_history()
        self._log_artifacts()
        with self._call("close the MLflow run"):
            self.client.set_terminated(self.run_id, status=status)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self._safely(self._log_history)

    def on_interrupt(self) -> None:
        self._safely(self._finish, "KILLED")

    def on_run_end(self) -> None:
        self._safely(self._finish, "FINISHED")

    def on_error(self, error: BaseException) -> None:
        self._safely(self._finish, "FAILED")

    def get_state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "logged": self.logged}


@contextlib.contextmanager
def _sqlite_store_lock(uri: str | None) -> Iterator[None]:
    """An exclusive lock on `<store>.lock` beside a SQLite tracking store (POSIX), else nothing."""
    if not uri or not uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; MLflow's own retries remain
        yield
        return
    store = Path(uri[len("sqlite:///") :])
    lock = store.with_name(store.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= 200 else line[:197] + "..."
