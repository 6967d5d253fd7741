"""The Model: named nodes wired into a DAG, run forward and backward in topological order.

A sequential stack is just a chain of nodes. After shape inference, every trainable weight becomes
a view of one flat parameter buffer (and its gradient a view of one flat gradient buffer), so the
optimizer updates the whole model with a few array operations.

Allocating those buffers is a step of its own (`allocate`): shapes, parameter counts and memory
estimates come from the declared WeightSpecs alone, so summaries and validation of a model far too
big for the machine allocate nothing, and training can refuse it before asking for the memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlrun.engine.backend import CPU, Backend
from dlrun.engine.random import NoiseRNG
from dlrun.errors import short
from dlrun.graph.layer import Layer, Shape, ShapeError, WeightSpec
from dlrun.registry import did_you_mean


class GraphError(ValueError):
    """The graph is malformed; `node` names the offending entry (or None)."""

    def __init__(self, message: str, node: Node | None = None) -> None:
        super().__init__(message)
        self.node = node


class Node:
    """A layer placed in the graph, fed by the named inputs. The layer holds the node's name and,
    once built, its shapes: each is stored once."""

    def __init__(self, name: str, layer: Layer, inputs: list[str], origin: Any = None) -> None:
        layer.name = name
        self.layer = layer
        self.inputs = list(inputs)
        #: Where the node came from (e.g. the YAML line of its entry), for error messages.
        self.origin = origin

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def output_shape(self) -> Shape:
        return self.layer.output_shape


@dataclass
class SummaryRow:
    name: str
    type: str
    output_shape: Shape
    params: int
    trainable: int
    connected_to: list[str]


class Model:
    """Nodes in topological order plus the model inputs' shapes and the output node's name."""

    def __init__(
        self,
        inputs: dict[str, Shape],
        nodes: list[Node],
        output: str,
        *,
        backend: Backend = CPU,
        init_rng: np.random.Generator | None = None,
        noise_rng: np.random.Generator | None = None,
        functional: bool = False,
        allocate: bool = True,
    ) -> None:
        """`allocate=False` builds the graph and its shapes only: the weights are created by
        `allocate()`, or on first use (a forward pass, reading or setting the weights)."""
        self.backend = backend
        self.inputs = {k: tuple(v) for k, v in inputs.items()}
        self.functional = functional
        self.nodes = self._toposort(nodes)
        self._declared = list(nodes)  # config order, which summaries keep (as Keras lists layers)
        self.output = output
        self._by_name = {n.name: n for n in self.nodes}
        if output not in self._by_name:
            raise GraphError(f"the output {output!r} is not a layer of the model")
        self._infer_shapes()
        self._mark_gradients()
        self.noise = NoiseRNG(backend, noise_rng or np.random.default_rng(0))
        for node in self.nodes:
            node.layer.rng = self.noise
        self._init_rng = init_rng or np.random.default_rng(0)
        self.allocated = False
        if allocate:
            self.allocate()

    # -- wiring --------------------------------------------------------------------------------------
    def _toposort(self, nodes: list[Node]) -> list[Node]:
        names = set(self.inputs)
        for node in nodes:
            if node.name in self.inputs:
                which = "the model's input" if len(self.inputs) == 1 else "one of the model's inputs (model.inputs)"
                raise GraphError(
                    f"the layer name {short(node.name)} is the name of {which}; "
                    f"give the layer another name, e.g. {short(node.name + '_layer')}",
                    node,
                )
            if node.name in names:
                raise GraphError(f"the layer name {short(node.name)} is used twice; layer names must be unique", node)
            names.add(node.name)
        for node in nodes:
            for src in node.inputs:
                if src not in names:
                    raise GraphError(
                        f"{short(node.name)} takes input {short(src)}, which is not defined. "
                        f"{did_you_mean(src, sorted(names))}".rstrip(),
                        node,
                    )
            expected = node.layer.n_inputs
            if expected is None and len(node.inputs) < 2:
                raise GraphError(
                    f"{node.layer.type_name} {node.name!r} merges two or more inputs, got {len(node.inputs)}", node
                )
            if expected is not None and len(node.inputs) != expected:
                raise GraphError(
                    f"{node.layer.type_name} {node.name!r} takes {expected} input, "
                    f"got {len(node.inputs)}: {node.inputs}",
                    node,
                )
        done, order, pending = set(self.inputs), [], list(nodes)
        while pending:
            ready = [n for n in pending if all(i in done for i in n.inputs)]
            if not ready:
                cycle = ", ".join(repr(n.name) for n in pending)
                raise GraphError(f"the layers {cycle} feed each other in a cycle", pending[0])
            for n in ready:
                order.append(n)
                done.add(n.name)
            pending = [n for n in pending if n.name not in done]
        return order

    def _infer_shapes(self) -> None:
        shapes: dict[str, Shape] = dict(self.inputs)
        for node in self.nodes:
            in_shapes = [shapes[i] for i in node.inputs]
            arg = in_shapes if node.layer.n_inputs != 1 else in_shapes[0]
            try:
                node.layer.build(arg)
            except ShapeError as exc:
                raise GraphError(f"{node.layer.type_name} {node.name!r}: {exc}", node) from None
            if any(d < 1 for d in node.output_shape):
                raise GraphError(
                    f"{node.layer.type_name} {node.name!r} would output shape "
                    f"(None, {', '.join(map(str, node.output_shape))}): a size shrank below 1; "
                    f"use padding 'same', a smaller kernel/stride, or fewer down-sampling layers",
                    node,
                )
            shapes[node.name] = node.output_shape

    def _mark_gradients(self) -> None:
        """Skip input gradients no parameter needs (e.g. the first Dense's dx: a whole matmul)."""
        upstream_params: dict[str, bool] = dict.fromkeys(self.inputs, False)
        for node in self.nodes:
            carries = any(upstream_params[i] for i in node.inputs)
            node.layer.needs_input_grad = carries
            upstream_params[node.name] = carries or any(w.trainable for w in node.layer.weight_specs)

    def allocate(self) -> None:
        """Create the weights (seeded initial values) and their gradient buffers; once only."""
        if self.allocated:
            return
        self._allocate(self._init_rng)
        self.allocated = True

    @property
    def flat_params(self) -> Any:
        """Every trainable weight in one buffer (the weights are views of it)."""
        self.allocate()
        return self._flat_params

    @property
    def flat_grads(self) -> Any:
        self.allocate()
        return self._flat_grads

    @property
    def segments(self) -> list[slice]:
        """Each trainable weight's slice of `flat_params`, in graph order."""
        self.allocate()
        return self._segments

    def _allocate(self, rng: np.random.Generator) -> None:
        specs = [(n.layer, w) for n in self.nodes for w in n.layer.weight_specs]
        trainable = [(layer, w) for layer, w in specs if w.trainable]
        self._segments: list[slice] = []
        offset = 0
        for _, w in trainable:
            self._segments.append(slice(offset, offset + w.size))
            offset += w.size
        dtype = self.backend.dtype
        host = np.empty(offset, dtype=dtype)
        host_state: list[tuple[Layer, WeightSpec, np.ndarray]] = []
        it = iter(self._segments)
        # Initialise in graph order from one generator: the same seed gives the same weights anywhere.
        for layer, w in specs:
            values = w.initializer(w.shape, rng, dtype)
            if w.trainable:
                host[next(it)] = values.ravel()
            else:
                host_state.append((layer, w, values))
        xp = self.backend.xp
        self._flat_params = self.backend.asarray(host) if self.backend.is_gpu else host
        self._flat_grads = xp.zeros_like(self._flat_params)
        for (layer, w), seg in zip(trainable, self._segments):
            layer.params[w.name] = self._flat_params[seg].reshape(w.shape)
            layer.grads[w.name] = self._flat_grads[seg].reshape(w.shape)
        for layer, w, values in host_state:
            layer.params[w.name] = self.backend.asarray(values) if self.backend.is_gpu else values
        self._regularized = [
            (layer.params[w.name], layer.grads[w.name], w.regularizer)
            for layer, w in trainable
            if w.regularizer is not None
        ]

    # -- computation ---------------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self._by_name[name]

    @property
    def output_node(self) -> Node:
        return self._by_name[self.output]

    def forward(self, x: Any, training: bool = False, logits: bool = False) -> Any:
        """Run the graph on a batch (an array, or a dict for several inputs); returns the output.

        `logits` asks the output layer to leave its final activation out for this call (and its
        backward to start after it): for training with a loss that applies the activation itself,
        which is stabler. `forward(x)` always returns the activated output.
        """
        self.allocate()
        if logits and self.output_activation in (None, "linear"):
            raise ValueError(f"the output layer {self.output!r} ends in no activation to leave out")
        values: dict[str, Any] = dict(x) if isinstance(x, dict) else {next(iter(self.inputs)): x}
        remaining = self._consumers_count()
        for node in self.nodes:
            args = [values[i] for i in node.inputs]
            arg = args if node.layer.n_inputs != 1 else args[0]
            if logits and node.name == self.output:
                values[node.name] = node.layer.forward(arg, training, logits=True)
            else:
                values[node.name] = node.layer.forward(arg, training)
            for i in node.inputs:  # free activations nothing else reads
                remaining[i] -= 1
                if remaining[i] == 0 and i != self.output:
                    values.pop(i, None)
        return values[self.output]

    @property
    def output_activation(self) -> str | None:
        """The name of the activation the output layer applies last (softmax, sigmoid, ...), or None."""
        return self.output_node.layer.output_activation

    def activate_output(self, logits: Any) -> Any:
        """The output activation applied to `forward(x, logits=True)`: what `forward(x)` returns."""
        return self.output_node.layer.activation.forward(logits)

    def _consumers_count(self) -> dict[str, int]:
        if not hasattr(self, "_consumers"):
            counts = dict.fromkeys((*self.inputs, *self._by_name), 0)
            for node in self.nodes:
                for i in node.inputs:
                    counts[i] += 1
            self._consumers = counts
        return dict(self._consumers)

    def backward(self, dout: Any) -> None:
        """Back-propagate the loss gradient w.r.t. the output; fills every weight's gradient."""
        grads: dict[str, Any] = {self.output: dout}
        for node in reversed(self.nodes):
            dy = grads.pop(node.name, None)
            layer = node.layer
            if dy is None:
                # Not on the path to the output: its weights get no gradient.
                for g in layer.grads.values():
                    g[...] = 0
                continue
            if not layer.needs_input_grad and not layer.grads:
                continue
            dx = layer.backward(dy)
            if dx is None:
                continue
            for src, g in zip(node.inputs, dx if layer.n_inputs != 1 else [dx]):
                if src in self.inputs:
                    continue
                grads[src] = grads[src] + g if src in grads else g

    def regularization(self, add_grads: bool) -> Any:
        """Sum of weight penalties (0.0 when none); adds their gradients when `add_grads`."""
        self.allocate()
        total: Any = 0.0
        for w, g, reg in self._regularized:
            total = total + reg.penalty(w)
            if add_grads:
                reg.add_grad(w, g)
        return total

    def use_communicator(self, comm: Any) -> None:
        """Give every layer the processes' communicator (data-parallel training)."""
        for node in self.nodes:
            node.layer.comm = comm

    # -- weights -------------------------------------------------------------------------------------
    def weights(self) -> dict[str, Any]:
        """Every weight (trainable and not) by `layer/weight` name, as device arrays."""
        self.allocate()
        return {f"{n.name}/{k}": v for n in self.nodes for k, v in n.layer.params.items()}

    @property
    def trainable_names(self) -> set[str]:
        """The `layer/weight` names of the weights in `flat_params`."""
        return {f"{n.name}/{w.name}" for n in self.nodes for w in n.layer.weight_specs if w.trainable}

    def get_weights(self) -> dict[str, np.ndarray]:
        """Host copies of every weight: what checkpoints store."""
        return {k: self.backend.to_host(v).copy() for k, v in self.weights().items()}

    def set_weights(self, values: dict[str, np.ndarray]) -> None:
        """Copy host arrays into the weights in place (views of the flat buffer stay views)."""
        current = self.weights()
        missing = sorted(set(current) - set(values))
        unexpected = sorted(set(values) - set(current))
        if missing or unexpected:
            raise ValueError(f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for key, arr in current.items():
            src = values[key]
            if tuple(src.shape) != tuple(arr.shape):
                raise ValueError(f"weight {key} has shape {tuple(src.shape)}, the model expects {tuple(arr.shape)}")
            arr[...] = self.backend.asarray(src, dtype=arr.dtype) if self.backend.is_gpu else src

    # -- reports -------------------------------------------------------------------------------------
    def param_counts(self) -> tuple[int, int]:
        """(trainable, non-trainable) from the declared weights: exact Python ints, nothing allocated."""
        counts = [n.layer.param_count() for n in self.nodes]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    def summary_rows(self) -> list[SummaryRow]:
        rows = []
        if self.functional:
            for name, shape in self.inputs.items():
                rows.append(SummaryRow(name, "InputLayer", shape, 0, 0, []))
        for n in self._declared:
            t, nt = n.layer.param_count()
            rows.append(SummaryRow(n.name, n.layer.type_name, n.output_shape, t + nt, t, list(n.inputs)))
        return rows

    def input_size(self) -> int:
        return sum(math.prod(s) for s in self.inputs.values())
