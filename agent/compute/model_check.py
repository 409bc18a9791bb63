"""Checks an uploaded ONNX model before onnxruntime ever loads it.

A model is code: its allocations can be sized by whoever sends a request.
``ConstantOfShape`` fed from an input's *values* lets one small request
allocate gigabytes (issue 18 measured +400 MB before the task's deadline
stopped it).  So an upload is refused (400, naming the node) when:

- a tensor lives outside the file (external data would make the agent read
  a path the uploader chose);
- an op is in a domain onnxruntime cannot run without a custom library;
- an allocation op (``SIZE_INPUTS``) takes its size from the request's values,
  unless shape inference proves its output static and within ``max_tensor_bytes``;
- any tensor whose shape inference makes static is over ``max_tensor_bytes``
  (a constant ``[1e10]`` would be folded at load time, in this process).

Sizes derived from an input's *shape* (``Shape`` -> ``ConstantOfShape``, as
exported models pad and resize) are allowed: they grow with the request's
size, which the body limit bounds; the capped arena of uploaded models'
sessions (``agent.compute.models``) bounds what such arithmetic can still reach.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto

MAX_TENSOR_BYTES = 256 * 1024 * 1024     # one statically sized tensor; the uploads' arena cap
MAX_NODES = 200_000                       # nodes in all graphs: keeps this check itself bounded
DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}

# Op -> the inputs that size its output (for Resize: scales and sizes; opset 10 has scales at 1).
SIZE_INPUTS: dict[str, tuple[int, ...]] = {
    "ConstantOfShape": (0,), "Expand": (1,), "Tile": (1,), "Range": (0, 1, 2), "Resize": (1, 2, 3),
    "Upsample": (1,), "Pad": (1,), "OneHot": (1,), "Loop": (0,), "CenterCropPad": (1,), "Col2Im": (1, 2),
    "MaxUnpool": (2,), "MelWeightMatrix": (0, 1), "BlackmanWindow": (0,), "HannWindow": (0,),
    "HammingWindow": (0,), "DFT": (1,), "STFT": (1, 3),
}
CONST, SHAPE, VALUE = 0, 1, 2            # what a tensor's values derive from
WHAT = {SHAPE: "an input's shape", VALUE: "the request's input values"}


class ModelCheckError(ValueError):
    """The model is refused; the message names the node and the reason."""


def check_model(data: bytes, max_tensor_bytes: int = MAX_TENSOR_BYTES) -> None:
    """Refuse (ModelCheckError) a model whose work a request could make unbounded; see the module's docstring."""
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelCheckError(f"not a loadable ONNX model: {str(exc).splitlines()[0][:200] if str(exc) else exc!r}") \
            from None
    try:
        _check(model, max_tensor_bytes)
    except ModelCheckError as exc:
        raise ModelCheckError(f"model refused: {exc}") from None


def _check(model: onnx.ModelProto, max_tensor_bytes: int) -> None:
    _no_external_data(model)
    local = {(f.domain, f.name) for f in model.functions}
    graphs = list(_graphs(model.graph)) + [g for f in model.functions for g in _function_graphs(f)]
    if sum(len(g.node) for g in graphs) > MAX_NODES:
        raise ModelCheckError(f"more than {MAX_NODES} nodes")
    for g in graphs:
        for node in g.node:
            if node.domain not in DOMAINS and (node.domain, node.op_type) not in local:
                raise ModelCheckError(f"{_name(node)}: op domain {node.domain!r} is not supported here "
                                      f"(only the standard ONNX, ONNX-ML and onnxruntime domains)")
    shapes = _static_shapes(model)
    _check_graph(model.graph, {}, shapes, max_tensor_bytes)
    for f in model.functions:
        _check_nodes(f.node, {i: VALUE for i in f.input}, shapes, max_tensor_bytes)


def _name(node: onnx.NodeProto) -> str:
    return f"op {node.op_type}" + (f" (node {node.name!r})" if node.name else "")


def _graphs(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else a.graphs if a.type == AttributeProto.GRAPHS
                        else []):
                yield from _graphs(sub)


def _function_graphs(f: onnx.FunctionProto) -> Iterable[onnx.GraphProto]:
    yield onnx.helper.make_graph(list(f.node), f.name, [], [])


def _tensors(model: onnx.ModelProto) -> Iterable[TensorProto]:
    for g in _graphs(model.graph):
        yield from g.initializer
        yield from (s.values for s in g.sparse_initializer)
        for node in g.node:
            for a in node.attribute:
                if a.type == AttributeProto.TENSOR:
                    yield a.t
                elif a.type == AttributeProto.TENSORS:
                    yield from a.tensors
                elif a.type == AttributeProto.SPARSE_TENSOR:
                    yield a.sparse_tensor.values


def _no_external_data(model: onnx.ModelProto) -> None:
    for t in _tensors(model):
        if t.data_location == TensorProto.EXTERNAL or t.external_data:
            raise ModelCheckError(f"tensor {t.name!r} keeps its data outside the model file; "
                                  f"upload a model with every tensor inside it")


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """name -> (elements, bytes per element) for every value shape inference makes fully static."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # inference is advisory: without it, only the data-flow rule applies
        return {}
    out = {}
    for g in _graphs(inferred.graph):
        for vi in list(g.value_info) + list(g.output):
            t = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            if any(d is None for d in dims):
                continue
            try:
                size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).itemsize
            except (KeyError, TypeError, ValueError):
                size = 8   # strings and the like: count them as 8 bytes each
            out[vi.name] = (int(np.prod(dims, dtype=np.float64)), size)
    return out


def _check_graph(graph: onnx.GraphProto, outer: dict[str, int], shapes: dict[str, tuple[int, int]],
                 limit: int) -> dict[str, int]:
    init = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    env = dict(outer)
    env.update({name: CONST for name in init})
    # A graph input with an initializer of the same name can be overridden by the request.
    env.update({i.name: VALUE for i in graph.input})
    return _check_nodes(graph.node, env, shapes, limit)


def _check_nodes(nodes: Iterable[onnx.NodeProto], env: dict[str, int], shapes: dict[str, tuple[int, int]],
                 limit: int) -> dict[str, int]:
    for node in nodes:
        kinds = [env.get(i, VALUE) for i in node.input if i]
        for a in node.attribute:     # a subgraph's values may come from this scope
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else a.graphs if a.type == AttributeProto.GRAPHS
                        else []):
                inner = _check_graph(sub, {k: v for k, v in env.items()}, shapes, limit)
                kinds.extend(inner.get(o.name, VALUE) for o in sub.output)
        if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
            kind = SHAPE
        else:
            kind = max(kinds, default=CONST)
        size_from = SIZE_INPUTS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if size_from:
            worst = max((env.get(node.input[i], VALUE) for i in size_from if i < len(node.input) and node.input[i]),
                        default=CONST)
            static = [shapes.get(o) for o in node.output if o]
            if worst == VALUE and not (static and all(static)):
                raise ModelCheckError(f"{_name(node)} takes its output size from {WHAT[VALUE]}, so one request "
                                      f"could make it allocate without bound; make that size a constant (or derive "
                                      f"it from an input's shape)")
        for o in node.output:
            if o in shapes:
                elements, itemsize = shapes[o]
                if elements * itemsize > limit:
                    raise ModelCheckError(f"{_name(node)}: its output {o!r} has {elements} elements "
                                          f"({elements * itemsize} bytes), over the {limit}-byte limit per tensor")
            if o:
                env[o] = kind
    return env
