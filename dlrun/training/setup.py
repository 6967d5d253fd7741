"""Config -> loss, optimizer and metrics, with config errors that point at the YAML line."""
from __future__ import annotations

from typing import Any

from dlrun.config.schema import Config, section_node
from dlrun.engine import losses, metrics, optimizers
from dlrun.engine.losses import Loss
from dlrun.engine.metrics import Metric
from dlrun.engine.optimizers import Optimizer


def _build(cfg: Config, key: str, factory: Any) -> Any:
    try:
        return factory(cfg.resolved[key])
    except (TypeError, ValueError) as exc:
        raise cfg.error(str(exc), cfg.raw, key, key) from None


def make_loss(cfg: Config) -> Loss:
    loss = _build(cfg, "loss", losses.get)
    cfg.resolved["loss"] = loss.spec()
    return loss


def make_optimizer(cfg: Config) -> Optimizer:
    opt = _build(cfg, "optimizer", optimizers.get)
    cfg.resolved["optimizer"] = optimizers.spec(opt)
    return opt


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
