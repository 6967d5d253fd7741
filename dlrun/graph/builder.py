"""Config `model:` section -> Model.

A layer entry is `Type`, or a one-key mapping `{Type: {args}}`; `name:` and `inputs:` go among the
args. An entry without `inputs:` consumes the previous entry, so a plain list is a Sequential model
and the same syntax describes branching graphs. Every mistake becomes a ConfigError at the entry's
line (or the offending argument's line).
"""

from __future__ import annotations

from typing import Any

import dlrun.graph.layers  # noqa: F401  (registers the catalogue)
from dlrun.config.loader import to_plain
from dlrun.config.schema import Config, section_node
from dlrun.engine.backend import CPU, Backend
from dlrun.engine.random import streams
from dlrun.errors import ArgumentError, clip, short
from dlrun.graph.layer import LAYERS, Layer, snake_case
from dlrun.graph.model import GraphError, Model, Node
from dlrun.registry import check_kwargs

DEFAULT_INPUT = "input"


def parse_entry(cfg: Config, entries: Any, index: int) -> tuple[type[Layer], str, dict[str, Any], Any]:
    """(layer class, canonical type name, args, raw args node) for `model.layers[index]`."""
    entry = entries[index]
    path = f"model.layers[{index}]"
    if isinstance(entry, str):
        type_name, args, args_node = entry, {}, None
    elif isinstance(entry, dict) and len(entry) == 1:
        type_name, args_node = next(iter(entry.items()))
        args = dict(args_node) if isinstance(args_node, dict) else args_node
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise cfg.error(
                f"the arguments of {clip(str(type_name))} must be a mapping, got {short(args)}",
                entries,
                index,
                path,
                hint=f"write `- {clip(str(type_name))}: {{...}}`, or `- {clip(str(type_name))}` alone for no arguments",
            )
    else:
        raise cfg.error(
            f"a layer entry is one `Type: {{args}}` mapping, got {short(entry)}",
            entries,
            index,
            path,
            hint="e.g. `- Dense: {units: 10, activation: softmax}`",
        )
    if not isinstance(type_name, str):
        raise cfg.error(f"a layer type must be a name, got {short(type_name)}", entries, index, path)
    try:
        canonical, cls = LAYERS.lookup(type_name)
    except ValueError as exc:
        raise cfg.error(str(exc), entries, index, path) from None
    return cls, canonical, args, args_node


def build_model(
    cfg: Config,
    input_shape: tuple[int, ...] | None = None,
    *,
    backend: Backend = CPU,
    seed: int | None = None,
    allocate: bool = False,
) -> tuple[Model, dict[str, Any]]:
    """Build the Model described by `cfg` (the dataset's `input_shape` fills in a missing one).

    Its weights are not allocated unless `allocate`: the model allocates them on first use, or
    when the caller (having checked that they fit in memory) calls `model.allocate()`.

    Returns the model and its resolved `model:` section: the input shape and every layer's full
    config, so the resolved config is explicit. `cfg` itself is left as it is.
    """
    model_cfg = cfg.resolved["model"]
    resolved_model = dict(model_cfg)
    raw_model = section_node(cfg, "model")
    entries = section_node(cfg, "model", "layers")
    if not entries:
        raise cfg.error("the model needs at least one layer", raw_model, "layers", "model.layers")

    inputs: dict[str, tuple[int, ...]]
    if model_cfg["inputs"]:
        raw_inputs = raw_model["inputs"]
        inputs = {}
        for name, shape in model_cfg["inputs"].items():
            if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
                raise cfg.error(
                    f"input {short(name)} needs a shape: a list of positive integers, got {short(shape)}",
                    raw_inputs,
                    name,
                    f"model.inputs.{name}",
                )
            inputs[str(name)] = tuple(shape)
    else:
        shape = model_cfg["input_shape"] or (list(input_shape) if input_shape else None)
        if shape is None:
            raise cfg.error(
                "the model's input shape is unknown",
                raw_model,
                None,
                "model.input_shape",
                hint="add `input_shape: [..]` under model (no batch axis)",
            )
        inputs = {DEFAULT_INPUT: tuple(shape)}
        resolved_model["input_shape"] = list(shape)

    nodes: list[Node] = []
    used = set(inputs)
    counters: dict[str, int] = {}
    functional = bool(model_cfg["inputs"])
    previous = next(iter(inputs))
    resolved_layers = []
    for index in range(len(entries)):
        cls, canonical, args, args_node = parse_entry(cfg, entries, index)
        path = f"model.layers[{index}].{canonical}"
        node_inputs = args.pop("inputs", None)
        if node_inputs is not None:
            functional = True
            node_inputs = [node_inputs] if isinstance(node_inputs, str) else node_inputs
            if not (isinstance(node_inputs, list) and node_inputs and all(isinstance(i, str) for i in node_inputs)):
                raise cfg.error(
                    f"inputs must be a layer name or a list of names, got {short(node_inputs)}",
                    args_node,
                    "inputs",
                    f"{path}.inputs",
                )
        try:
            check_kwargs(cls, args, canonical)
            layer = cls(**args)
        except (TypeError, ValueError) as exc:
            arg = exc.name if isinstance(exc, ArgumentError) else None
            blamed = args_node if isinstance(args_node, dict) and arg in args_node else entries
            raise cfg.error(
                str(exc),
                blamed,
                arg if blamed is args_node else index,
                f"{path}.{arg}" if blamed is args_node else path,
            ) from None
        if not layer.name:
            base = snake_case(cls.__name__)
            while True:
                n = counters.get(base, 0)
                counters[base] = n + 1
                layer.name = base if n == 0 else f"{base}_{n}"
                if layer.name not in used:
                    break
        used.add(layer.name)
        if node_inputs is None:
            node_inputs = [previous] if layer.n_inputs == 1 else None
        if node_inputs is None:
            raise cfg.error(f"{canonical} merges several layers: name them with `inputs: [a, b]`", entries, index, path)
        nodes.append(
            Node(
                layer.name,
                layer,
                list(node_inputs),
                origin=(entries, index, path),
            )
        )
        previous = layer.name
        resolved = layer.get_config()
        if "inputs" in (args_node or {}):
            resolved["inputs"] = list(node_inputs) if len(node_inputs) > 1 else node_inputs[0]
        # Plain lists and dicts only: the resolved config is dumped with yaml.safe_dump.
        resolved_layers.append({canonical: to_plain(resolved)})

    output = model_cfg["outputs"] or previous
    seed = cfg.resolved["seed"] if seed is None else seed
    rngs = streams(seed)
    try:
        model = Model(
            inputs,
            nodes,
            output,
            backend=backend,
            init_rng=rngs.init,
            noise_rng=rngs.noise,
            functional=functional,
            allocate=allocate,
        )
    except GraphError as exc:
        if exc.node is not None and exc.node.origin is not None:
            ents, idx, path = exc.node.origin
            raise cfg.error(str(exc), ents, idx, path) from None
        raise cfg.error(str(exc), raw_model, "outputs" if "outputs" in raw_model else None, "model") from None
    resolved_model["layers"] = resolved_layers
    return model, resolved_model


__all__ = ["build_model", "parse_entry"]
