"""Config -> loss, optimizer, metrics and callbacks, with config errors that point at the YAML line.

Each builder returns what it built and, where the resolved config spells it out in full, that part
(the loss's and optimizer's specs, the callbacks' full arguments); api/setup.py `prepare` puts the
parts into `cfg.resolved`, so nothing here changes the config.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any

from dlrun.config.schema import Config, section_node
from dlrun.engine import losses, metrics, optimizers
from dlrun.engine.losses import Loss
from dlrun.engine.metrics import Metric
from dlrun.engine.optimizers import Optimizer
from dlrun.errors import ArgumentError, ConfigError, clip, short
from dlrun.registry import check_kwargs, did_you_mean


def _build(cfg: Config, key: str, factory: Any) -> Any:
    try:
        return factory(cfg.resolved[key])
    except (TypeError, ValueError) as exc:
        raise cfg.error(str(exc), cfg.raw, key, key) from None


def make_loss(cfg: Config) -> tuple[Loss, dict[str, Any]]:
    """The loss and its resolved spec (`{type: ..., from_logits: ...}`)."""
    loss = _build(cfg, "loss", losses.get)
    return loss, loss.spec()


def make_optimizer(cfg: Config) -> tuple[Optimizer, dict[str, Any]]:
    """The optimizer and its resolved spec (every hyper-parameter spelled out)."""
    opt = _build(cfg, "optimizer", optimizers.get)
    return opt, optimizers.spec(opt)


def make_metrics(cfg: Config, loss: Loss) -> list[Metric]:
    out = []
    node = section_node(cfg, "metrics")
    for i, name in enumerate(cfg.resolved["metrics"]):
        try:
            out.append(metrics.get(name, loss))
        except (TypeError, ValueError) as exc:
            raise cfg.error(str(exc), node, i, f"metrics[{i}]") from None
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise cfg.error(f"a metric is listed twice: {names}", cfg.raw, "metrics", "metrics")
    return out


# -- callbacks -----------------------------------------------------------------------------------------


def monitorable(cfg: Config, metrics: list[Metric]) -> list[str]:
    """The values every epoch's logs will hold: what callbacks may monitor."""
    train = ["loss", *[m.name for m in metrics]]
    val = [f"val_{n}" for n in train] if (cfg.resolved["data"].get("validation_split") or 0) > 0 else []
    return [*train, *val, "learning_rate"]


def _callback_entry(cfg: Config, entries: Any, index: int) -> tuple[str, dict[str, Any], Any]:
    """(type name, args, raw args node) of `callbacks[index]`: `Name` or `Name: {args}`, like layers."""
    entry = entries[index]
    path = f"callbacks[{index}]"
    if isinstance(entry, str):
        return entry, {}, None
    if isinstance(entry, dict) and len(entry) == 1:
        name, args_node = next(iter(entry.items()))
        args = {} if args_node is None else args_node
        if not isinstance(args, dict):
            raise cfg.error(
                f"the arguments of {clip(str(name))} must be a mapping, got {short(args)}",
                entries,
                index,
                path,
                hint=f"write `- {clip(str(name))}: {{...}}`, or `- {clip(str(name))}` alone for no arguments",
            )
        if not isinstance(name, str):
            raise cfg.error(f"a callback type must be a name, got {short(name)}", entries, index, path)
        return name, dict(args), args_node
    raise cfg.error(
        f"a callback entry is a name or one `Name: {{args}}` mapping, got {short(entry)}",
        entries,
        index,
        path,
        hint="e.g. `- EarlyStopping: {monitor: val_loss, patience: 3}`",
    )


def _entry_error(
    cfg: Config,
    entries: Any,
    index: int,
    args_node: Any,
    where: str,
    message: str,
    arg: str | None = None,
    hint: str | None = None,
) -> ConfigError:
    """A ConfigError at the argument `arg` of `callbacks[index]` where it is written, else at the entry."""
    if arg is not None and isinstance(args_node, dict) and arg in args_node:
        return cfg.error(message, args_node, arg, f"{where}.{arg}", hint=hint)
    return cfg.error(message, entries, index, f"callbacks[{index}]", hint=hint)


def make_callbacks(
    cfg: Config, metrics: list[Metric], optimizer: Optimizer | None = None
) -> tuple[list[Any], list[dict[str, Any]]]:
    """The config's `callbacks:` entries as Callback objects, checked against what the run will log,
    and their resolved entries (`{Name: {every argument}}`).

    Unknown names or arguments, bad values and monitored values that will never exist are
    ConfigErrors at the entry's (or the argument's) line.
    """
    from dlrun.training import callbacks_builtin as cbs

    entries = section_node(cfg, "callbacks")
    if entries is None or not isinstance(entries, list):
        entries = cfg.resolved["callbacks"]
    available = monitorable(cfg, metrics)
    out, resolved = [], []
    written: dict[tuple[str, ...], tuple[int, bool, str]] = {}
    for index in range(len(entries)):
        name, args, args_node = _callback_entry(cfg, entries, index)
        try:
            canonical, cls = cbs.CALLBACKS.lookup(name)
        except ValueError as exc:
            raise cfg.error(str(exc), entries, index, f"callbacks[{index}]") from None
        error = functools.partial(_entry_error, cfg, entries, index, args_node, f"callbacks[{index}].{canonical}")
        if cls is cbs.ModelCheckpoint and "filepath" not in args:  # name files after the monitored value
            monitor = args.get("monitor", "val_loss")
            monitor = "learning_rate" if monitor == "lr" else monitor
            if monitor in available and args.get("save_freq", "epoch") == "epoch":
                args["filepath"] = f"checkpoints/epoch{{epoch:03d}}-{{{monitor}:.4f}}.npz"
        try:
            check_kwargs(cls, args, canonical)
            cb = cls(**args)
        except (TypeError, ValueError) as exc:
            arg = exc.name if isinstance(exc, ArgumentError) else None
            raise error(str(exc), arg, getattr(exc, "hint", None)) from None
        monitor = getattr(cb, "monitor", None)
        explicit = isinstance(args_node, dict) and "monitor" in args_node
        watched = monitor is not None and (explicit or not isinstance(cb, cbs.ModelCheckpoint) or cb.save_best_only)
        if watched and monitor not in available:
            hint = (
                "validation values (val_*) need data.validation_split > 0"
                if monitor.startswith("val_") and f"val_{monitor[4:]}" not in available
                else did_you_mean(monitor, available) or None
            )
            raise error(
                f"{canonical} monitors {short(monitor)}, which this run will not log. Values it logs: {', '.join(available)}",
                "monitor",
                hint,
            )
        if isinstance(cb, cbs.ModelCheckpoint):
            _check_filepath(cb, available, error)
        _check_own_path(cb, index, written, error)
        if isinstance(cb, cbs.LearningRateScheduler) and optimizer is not None:
            schedule = cb.schedule
            if getattr(schedule, "initial_learning_rate", 0) is None:
                schedule.initial_learning_rate = float(optimizer.learning_rate)
        out.append(cb)
        resolved.append({canonical: cb.get_config()})
    return out, resolved


def _check_filepath(cb: Any, available: list[str], error: Any) -> None:
    """Every `{field}` of a ModelCheckpoint filepath must be a value the run logs when it saves."""
    batch_level = cb.save_freq != "epoch"
    names = [n for n in available if not (batch_level and n.startswith("val_"))]
    known = ["epoch", *(["batch"] if batch_level else []), *names, "lr"]
    for field_name in cb.fields:  # plain names (the constructor refused attribute and index access)
        base = field_name
        if base not in known:
            hint = did_you_mean(base, known) or None
            raise error(
                f"the filepath field {{{field_name}}} is not a value this run logs"
                f"{' when saving every few batches' if batch_level and base.startswith('val_') else ''}. "
                f"Fields: {', '.join('{' + k + '}' for k in known)}",
                "filepath",
                hint,
            )
    try:
        cb.filepath.format(**{**dict.fromkeys(known, 0.5), "epoch": 1, "batch": 1})
    except (ValueError, IndexError, KeyError, AttributeError) as exc:
        raise error(f"the filepath {short(cb.filepath)} cannot be filled in ({exc})", "filepath") from None


def _check_own_path(cb: Any, index: int, written: dict[tuple[str, ...], tuple[int, bool, str]], error: Any) -> None:
    """Two callbacks must not write the same file (or the same pattern of files), nor one a file where
    the other needs a folder (`log.csv` and `log.csv/x.csv`). `written` maps each path's fixed
    leading parts (up to the first `{field}`) to (callback index, whether that is the whole path, the path)."""
    arg, path = ("filename", cb.filename) if hasattr(cb, "filename") else ("filepath", getattr(cb, "filepath", None))
    if path is None:
        return
    parts = path.split("/")
    fixed = tuple(p.casefold() for p in itertools.takewhile(lambda p: "{" not in p, parts))
    whole = len(fixed) == len(parts)
    for other, (other_index, other_whole, other_path) in written.items():
        shorter, longer = sorted((fixed, other), key=len)
        if longer[: len(shorter)] != shorter:
            continue
        # The same fixed path is a clash when both are whole names; a strictly shorter one only when it
        # is a whole file name (the other needs it as a folder).
        if (fixed == other and (whole or other_whole or path.casefold() == other_path)) or (
            len(shorter) < len(longer) and (whole if shorter is fixed else other_whole)
        ):
            raise error(
                f"{arg} {short(path)} clashes with the file callbacks[{other_index}] writes",
                arg,
                "give each callback its own file",
            )
    written.setdefault(fixed, (index, whole, path.casefold()))
