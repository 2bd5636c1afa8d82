#!/usr/bin/env python3
"""Generates small ONNX graphs with ONNX Runtime goldens for the importer tests.

Each pattern mirrors one construct of a torchvision classifier family (EfficientNet's
SiLU, the squeeze-and-excitation block, MobileNet v3's HardSwish/HardSigmoid, MnasNet's
mean head, ShuffleNet v2's channel shuffle, the ConvNeXt block) or covers a group of
operators in the forms ONNX spells them (broadcasting binaries and unary ops,
reductions, layout ops). For every pattern NAME it writes, into the output folder
(default `tests/data/onnx_patterns/` next to this script's repository root):

    NAME.onnx          opset 17, one input "input" and one output, both with a dynamic
                       batch dimension named "N"
    NAME.input.npy     float32, batch 2, from a fixed seed
    NAME.output.npy    the ONNX Runtime CPU output for that input

and `README.md`, which lists each pattern, which builder made it, its shapes and its
node op types.

Builders. Every pattern can be built with `onnx.helper` alone (no torch needed). The
six torchvision-construct patterns can also be exported from PyTorch modules with
`torch.onnx.export(..., dynamo=False, opset_version=17, dynamic_axes=...)`, which
shows the real exporter's graph shapes; with `--builder auto` (the default) torch is
used for those when it is importable, onnx.helper otherwise. The helper builders of
those six mirror, node for node, what torch's TorchScript exporter emits (checked with
torch 2.15 / torchvision 0.29). The three operator-coverage patterns (`broadcast_binaries`,
`reductions`, `layout_ops`) are always built with onnx.helper: their point is the exact
ONNX spellings (axes as attribute or as input, Reshape with 0 and -1, negative Slice
steps, Pad modes), which the exporter would rewrite.

What torch 2.15's exporter emits at opset 17 (and the helper builders copy): nn.SiLU is
Sigmoid + Mul(x, s); the SE block's product is Mul(scale [N,C,1,1], x) with the scale
first; Hardsigmoid is HardSigmoid(alpha=1/6) (beta left at its default 0.5); Linear on
2-D is Gemm(alpha=1, beta=1, transB=1), on 4-D MatMul(x, W^T) then Add(bias, y) with
the bias first; x.mean([2,3]) is ReduceMean(axes=[2,3], keepdims=0) as an attribute;
nn.GELU is Div(x, Constant sqrt 2), Erf, Add(Constant 1), Mul(x, .), Mul(., Constant
0.5), the constants being 0-d Constant nodes; ConvNeXt's layer scale is Mul(gamma
[C,1,1], x); LayerNorm is LayerNormalization(axis=-1, epsilon) with scale and bias. In
ShuffleNet v2, `chunk(2, dim=1)` is NOT a Split: on a dynamic-batch input it becomes
Shape -> Gather(indices [1], axis 0) -> Add [1] -> Div [2] -> Mul [1] / Mul [2] and two
Slices(data, starts, ends, axes=[1]) without steps; `torch.split(x, 8, 1)` is a Split
with a constant `split` input [8, 8]. channel_shuffle reads all four dims with
Shape -> Gather(0-d index) (one Shape per dim), Div(C, 2) -> Cast(int64) -> Cast(int64),
Unsqueeze(axes input [0]) each, Concat(axis 0) with a Constant [2] into [N, 2, C/2, H, W],
Reshape(allowzero=0), Transpose [0,2,1,3,4], Reshape to [N, C, H, W]; every shape
constant is a Constant node (int64), not an initializer. BatchNorm after a Conv is folded
into the Conv's weights and bias.

Goldens are computed with onnxruntime's CPUExecutionProvider, graph optimizations
disabled and one thread, so every node runs as written. After writing, the script
checks each saved model: onnx.checker (full check), the saved output reproduces, the
model also runs at batch 1 and 3 and each sample's output does not depend on the rest
of the batch, and ORT with all optimizations agrees within 1e-5.

Usage (from the repository root):

    pip install onnx onnxruntime numpy            # required
    pip install torch torchvision                 # optional, for --builder torch/auto
    python3 tools/onnx_patterns.py                # (re)writes tests/data/onnx_patterns/
    python3 tools/onnx_patterns.py --builder helper --out /tmp/pat
    python3 tools/onnx_patterns.py --only silu,layout_ops
    python3 tools/onnx_patterns.py --check        # only verify the files already there
    python3 tools/onnx_patterns.py --list         # print each pattern's node op types

Exit status: 0 when every pattern was written and verified, 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# IR version 8 is what torch writes for opset 17; the helper models use it too.
IR_VERSION = 8
BATCH = 2
SEED = 20261207
REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "tests" / "data" / "onnx_patterns"
# A torch.flip-style Slice end: "past the beginning", as the exporter writes it.
INT64_MIN_PLUS_1 = -9223372036854775807

try:  # torch is optional
    import torch
    from torch import nn

    HAVE_TORCH = True
except Exception:  # pragma: no cover - depends on the machine
    torch = None
    nn = None
    HAVE_TORCH = False


# --------------------------------------------------------------------------------------
# onnx.helper graph builder
# --------------------------------------------------------------------------------------


class GraphBuilder:
    """Accumulates nodes and initializers for one graph with input "input"."""

    def __init__(self, name: str, rng: np.random.Generator):
        self.name = name
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count: dict[str, int] = {}

    def _fresh(self, base: str) -> str:
        n = self.count.get(base, 0)
        self.count[base] = n + 1
        return f"{base}_{n}" if n else base

    # ---- values -------------------------------------------------------------------

    def init(self, array, base: str = "w") -> str:
        """Adds an initializer (float arrays as float32, ints as int64)."""
        a = np.asarray(array)
        if a.dtype.kind == "f":
            a = a.astype(np.float32)
        elif a.dtype.kind in "iu":
            a = a.astype(np.int64)
        name = self._fresh(base)
        self.inits.append(numpy_helper.from_array(a, name))
        return name

    def const(self, array, base: str = "/Constant") -> str:
        """Adds a Constant node (as torch's exporter writes shape constants)."""
        a = np.asarray(array)
        if a.dtype.kind == "f":
            a = a.astype(np.float32)
        elif a.dtype.kind in "iu":
            a = a.astype(np.int64)
        out = self._fresh(base + "_output")
        self.nodes.append(
            helper.make_node(
                "Constant", [], [out], name=self._fresh(base),
                value=numpy_helper.from_array(a, out + "_value"),
            )
        )
        return out

    def uniform(self, shape, bound: float) -> np.ndarray:
        return self.rng.uniform(-bound, bound, size=shape).astype(np.float32)

    # ---- nodes --------------------------------------------------------------------

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs):
        """Adds a node; returns its output name, or a list when outputs > 1."""
        name = self._fresh("/" + op_type)
        outs = [f"{name}_output_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if outputs == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, pad: int = 0,
             group: int = 1, bias: bool = True) -> str:
        """Conv with weights that keep the activations' variance (uniform, fan-in)."""
        fan_in = cin // group * k * k
        w = self.init(self.uniform((cout, cin // group, k, k), math.sqrt(3.0 / fan_in)), "conv.weight")
        ins = [x, w]
        if bias:
            ins.append(self.init(self.uniform((cout,), 0.2), "conv.bias"))
        return self.op("Conv", ins, dilations=[1, 1], group=group, kernel_shape=[k, k],
                       pads=[pad] * 4, strides=[stride, stride])

    def gemm(self, x: str, fin: int, fout: int, gain: float = 1.0) -> str:
        """nn.Linear on a 2-D input, as torch exports it: Gemm(transB=1)."""
        w = self.init(self.uniform((fout, fin), gain * math.sqrt(3.0 / fin)), "fc.weight")
        b = self.init(self.uniform((fout,), gain * 0.2), "fc.bias")
        return self.op("Gemm", [x, w, b], alpha=1.0, beta=1.0, transB=1)

    def silu(self, x: str) -> str:
        return self.op("Mul", [x, self.op("Sigmoid", [x])])

    def model(self, input_shape: tuple[int, ...], output: str, doc: str) -> onnx.ModelProto:
        """The finished model; the output's shape is found by running it once."""
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])
        out = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
        nodes = list(self.nodes)
        # Name the last node's output "output", as torch does.
        for n in nodes:
            for i, o in enumerate(n.output):
                if o == output:
                    n.output[i] = "output"
            for i, o in enumerate(n.input):
                if o == output:
                    n.input[i] = "output"
        graph = helper.make_graph(nodes, "main_graph", [inp], [out], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cnnpack tools/onnx_patterns.py",
                              producer_version="1", doc_string=doc)
        m.ir_version = IR_VERSION
        y = run_ort(m, np.zeros((BATCH, *input_shape), np.float32))
        set_output_shape(m, y.shape[1:])
        return m


def set_output_shape(m: onnx.ModelProto, item_shape) -> None:
    out = m.graph.output[0]
    out.type.tensor_type.elem_type = TensorProto.FLOAT
    shape = out.type.tensor_type.shape
    shape.Clear()
    shape.dim.add().dim_param = "N"
    for d in item_shape:
        shape.dim.add().dim_value = int(d)


# --------------------------------------------------------------------------------------
# ONNX Runtime
# --------------------------------------------------------------------------------------


def session(m: onnx.ModelProto, optimized: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_ort(m: onnx.ModelProto, x: np.ndarray, optimized: bool = False) -> np.ndarray:
    s = session(m, optimized)
    outs = s.run(None, {"input": x})
    return np.asarray(outs[0], dtype=np.float32)


# --------------------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------------------


@dataclass
class Pattern:
    name: str
    family: str
    summary: str
    input_shape: tuple[int, ...]  # without the batch dimension
    helper: Callable[[np.random.Generator], onnx.ModelProto]
    torch: Optional[Callable[[], "nn.Module"]] = None


# ---- silu -----------------------------------------------------------------------------

SILU_SHAPE = (3, 9, 9)


def helper_silu(rng):
    g = GraphBuilder("silu", rng)
    y = g.conv("input", 3, 8, 3, pad=1)
    y = g.silu(y)
    return g.model(SILU_SHAPE, y, "Conv -> SiLU (Sigmoid, Mul)")


def torch_silu():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU())


# ---- squeeze_excite -------------------------------------------------------------------

SE_SHAPE = (8, 9, 9)


def helper_se_block(g: GraphBuilder, x: str, c: int, squeeze: int, act: str,
                    scale_act: str = "Sigmoid") -> str:
    """torchvision.ops.SqueezeExcitation: scale = sigmoid(fc2(act(fc1(avgpool(x))))); scale * x."""
    s = g.op("GlobalAveragePool", [x])
    s = g.conv(s, c, squeeze, 1)
    s = g.silu(s) if act == "SiLU" else g.op(act, [s])
    s = g.conv(s, squeeze, c, 1)
    if scale_act == "HardSigmoid":
        s = g.op("HardSigmoid", [s], alpha=1.0 / 6.0)
    else:
        s = g.op(scale_act, [s])
    return g.op("Mul", [s, x])  # torch writes scale first: Mul([N,C,1,1], [N,C,H,W])


def helper_squeeze_excite(rng):
    g = GraphBuilder("squeeze_excite", rng)
    y = g.conv("input", 8, 16, 3, pad=1)
    y = g.silu(y)
    y = helper_se_block(g, y, 16, 4, "SiLU")  # EfficientNet MBConv
    y = g.conv(y, 16, 12, 1)
    y = g.op("Relu", [y])
    y = helper_se_block(g, y, 12, 3, "Relu")  # RegNetY
    return g.model(SE_SHAPE, y, "Conv -> SiLU -> SE(SiLU) -> Conv -> Relu -> SE(Relu)")


def torch_squeeze_excite():
    from torchvision.ops import SqueezeExcitation

    return nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1), nn.SiLU(),
        SqueezeExcitation(16, 4, activation=nn.SiLU),
        nn.Conv2d(16, 12, 1), nn.ReLU(),
        SqueezeExcitation(12, 3, activation=nn.ReLU),
    )


# ---- hardswish_se ---------------------------------------------------------------------

HS_SHAPE = (3, 11, 11)


def helper_hardswish_se(rng):
    g = GraphBuilder("hardswish_se", rng)
    y = g.conv("input", 3, 16, 3, stride=2, pad=1)
    y = g.op("HardSwish", [y])
    y = helper_se_block(g, y, 16, 8, "Relu", "HardSigmoid")
    y = g.op("GlobalAveragePool", [y])
    y = g.op("Flatten", [y], axis=1)
    y = g.gemm(y, 16, 32)
    y = g.op("HardSwish", [y])  # Dropout (eval) is not exported
    y = g.gemm(y, 32, 10, gain=4.0)  # the pooled features are small; keep logits O(1)
    return g.model(HS_SHAPE, y, "MobileNet v3: Conv -> HardSwish -> SE(HardSigmoid) -> GAP -> Flatten -> Gemm")


if HAVE_TORCH:

    class _HardswishSE(nn.Module):
        def __init__(self):
            super().__init__()
            from torchvision.ops import SqueezeExcitation

            self.conv = nn.Conv2d(3, 16, 3, 2, 1)
            self.act = nn.Hardswish()
            self.se = SqueezeExcitation(16, 8, scale_activation=nn.Hardsigmoid)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(16, 32), nn.Hardswish(),
                                            nn.Dropout(0.2), nn.Linear(32, 10))

        def post_init(self):
            """The pooled features are small; scale the last layer to keep logits O(1)."""
            self.classifier[3].weight.mul_(4.0)
            self.classifier[3].bias.mul_(4.0)

        def forward(self, x):
            x = self.avgpool(self.se(self.act(self.conv(x))))
            return self.classifier(torch.flatten(x, 1))

    class _ReduceMeanHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean([2, 3]))

    class _ChannelShuffle(nn.Module):
        def __init__(self):
            super().__init__()
            from torchvision.models.shufflenetv2 import InvertedResidual

            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.unit = InvertedResidual(16, 16, 1)  # chunk, branch2, cat, channel_shuffle

        def forward(self, x):
            x = self.unit(torch.relu(self.conv(x)))
            a, b = torch.split(x, 8, dim=1)  # exported as Split with two outputs
            return torch.cat((b, a), 1)


def torch_hardswish_se():
    return _HardswishSE()


# ---- reduce_mean ----------------------------------------------------------------------

RM_SHAPE = (3, 9, 9)


def helper_reduce_mean(rng):
    g = GraphBuilder("reduce_mean", rng)
    y = g.conv("input", 3, 16, 3, pad=1)
    y = g.op("Relu", [y])
    y = g.op("ReduceMean", [y], axes=[2, 3], keepdims=0)
    y = g.gemm(y, 16, 10)
    return g.model(RM_SHAPE, y, "MnasNet head: Conv -> Relu -> ReduceMean(axes [2,3], keepdims 0) -> Gemm")


def torch_reduce_mean():
    return _ReduceMeanHead()


# ---- channel_shuffle ------------------------------------------------------------------

CS_SHAPE = (3, 9, 9)


def helper_channel_shuffle(rng):
    """Mirrors torch's export of ShuffleNet v2's stride-1 InvertedResidual.

    chunk(2, dim=1) on a dynamic-batch tensor is exported as two Slices whose bounds are
    computed from Shape: Gather([1]) -> Add 1 -> Div 2 -> Mul 1 / Mul 2. channel_shuffle
    reads every dimension through Shape -> Gather(scalar index) and divides the channel
    count by the group count (Div, then two Casts to int64), then Unsqueeze + Concat
    build the Reshape targets. torch.split(x, 8, 1) becomes a Split with a constant
    `split` input and two outputs.
    """
    g = GraphBuilder("channel_shuffle", rng)
    x = g.conv("input", 3, 16, 3, pad=1)
    x = g.op("Relu", [x])
    # ---- x1, x2 = x.chunk(2, dim=1)
    shape = g.op("Shape", [x])
    axis1 = g.const(np.array([1]))
    c = g.op("Gather", [shape, axis1], axis=0)
    zero = g.const(np.array([0]))
    c = g.op("Add", [c, g.const(np.array([1]))])
    half = g.op("Div", [c, g.const(np.array([2]))])
    end1 = g.op("Mul", [half, g.const(np.array([1]))])
    x1 = g.op("Slice", [x, zero, end1, axis1])
    end2 = g.op("Mul", [half, g.const(np.array([2]))])
    x2 = g.op("Slice", [x, end1, end2, axis1])
    # ---- branch2: 1x1 conv (+BN, folded) -> relu -> 3x3 dw conv (+BN) -> 1x1 conv (+BN) -> relu
    b = g.conv(x2, 8, 8, 1)
    b = g.op("Relu", [b])
    b = g.conv(b, 8, 8, 3, pad=1, group=8)
    b = g.conv(b, 8, 8, 1)
    b = g.op("Relu", [b])
    y = g.op("Concat", [x1, b], axis=1)
    # ---- channel_shuffle(y, 2)
    dims = []
    for i in range(4):
        s = g.op("Shape", [y])
        dims.append(g.op("Gather", [s, g.const(np.array(i))], axis=0))  # scalar index -> scalar
    per_group = g.op("Div", [dims[1], g.const(np.array(2))])
    per_group = g.op("Cast", [per_group], to=TensorProto.INT64)
    per_group = g.op("Cast", [per_group], to=TensorProto.INT64)
    u = lambda v: g.op("Unsqueeze", [v, g.const(np.array([0]), "onnx::Unsqueeze")])  # noqa: E731
    target5 = g.op("Concat", [u(dims[0]), g.const(np.array([2])), u(per_group), u(dims[2]), u(dims[3])], axis=0)
    y = g.op("Reshape", [y, target5], allowzero=0)
    y = g.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    target4 = g.op("Concat", [u(dims[0]), u(dims[1]), u(dims[2]), u(dims[3])], axis=0)
    y = g.op("Reshape", [y, target4], allowzero=0)
    # ---- a, b = torch.split(y, 8, dim=1); cat((b, a), 1)
    a, b = g.op("Split", [y, g.const(np.array([8, 8]))], outputs=2, axis=1)
    y = g.op("Concat", [b, a], axis=1)
    return g.model(CS_SHAPE, y, "ShuffleNet v2 unit: chunk (Slices), branch, Concat, channel_shuffle, Split, Concat")


def torch_channel_shuffle():
    return _ChannelShuffle()


# ---- convnext_block -------------------------------------------------------------------

CN_SHAPE = (16, 9, 9)


def helper_convnext_block(rng):
    """torchvision CNBlock as exported: LayerNormalization, MatMul + Add(bias first), erf GELU."""
    g = GraphBuilder("convnext_block", rng)
    c = CN_SHAPE[0]
    y = g.conv("input", c, c, 7, pad=3, group=c)
    y = g.op("Transpose", [y], perm=[0, 2, 3, 1])
    scale = g.init(rng.uniform(0.5, 1.5, c), "norm.weight")
    bias = g.init(g.uniform((c,), 0.2), "norm.bias")
    y = g.op("LayerNormalization", [y, scale, bias], axis=-1, epsilon=1e-6)
    w1 = g.init(g.uniform((c, 4 * c), math.sqrt(3.0 / c)), "onnx::MatMul")
    y = g.op("MatMul", [y, w1])
    y = g.op("Add", [g.init(g.uniform((4 * c,), 0.2), "fc1.bias"), y])
    # GELU (approximate="none") below opset 20: x * (erf(x / sqrt 2) + 1) * 0.5
    e = g.op("Div", [y, g.const(np.array(math.sqrt(2.0), np.float32))])
    e = g.op("Erf", [e])
    e = g.op("Add", [e, g.const(np.array(1.0, np.float32))])
    y = g.op("Mul", [y, e])
    y = g.op("Mul", [y, g.const(np.array(0.5, np.float32))])
    w2 = g.init(g.uniform((4 * c, c), math.sqrt(3.0 / (4 * c))), "onnx::MatMul")
    y = g.op("MatMul", [y, w2])
    y = g.op("Add", [g.init(g.uniform((c,), 0.2), "fc2.bias"), y])
    y = g.op("Transpose", [y], perm=[0, 3, 1, 2])
    y = g.op("Mul", [g.init(rng.uniform(0.5, 1.5, (c, 1, 1)), "layer_scale"), y])
    y = g.op("Add", [y, "input"])
    return g.model(CN_SHAPE, y, "ConvNeXt CNBlock")


def torch_convnext_block():
    import functools

    from torchvision.models.convnext import CNBlock

    return CNBlock(CN_SHAPE[0], 1.0, 0.0, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))


# ---- broadcast_binaries ---------------------------------------------------------------

BB_SHAPE = (8, 7, 9)


def helper_broadcast_binaries(rng):
    """Binary ops between computed values of broadcastable shapes, and unary ops."""
    g = GraphBuilder("broadcast_binaries", rng)
    c = BB_SHAPE[0]
    one = g.init(np.array(1.0), "one")
    a = g.conv("input", c, c, 3, pad=1)                                # [N,C,H,W]
    row = g.op("ReduceMean", [a], axes=[2], keepdims=1)                # [N,C,1,W]
    col = g.op("ReduceMax", [a], axes=[1, 3], keepdims=1)              # [N,1,H,1]
    pos_col = g.op("Add", [g.op("Abs", [col]), one])                   # >= 1
    s = g.op("Sub", [a, row])                                          # full - [N,C,1,W]
    s2 = g.op("Sub", [row, a])                                         # [N,C,1,W] - full
    d = g.op("Div", [s, pos_col])                                      # full / [N,1,H,1]
    d2 = g.op("Div", [col, g.op("Add", [g.op("Abs", [a]), one])])      # [N,1,H,1] / full
    p = g.op("Pow", [d, g.init(np.array(2.0), "two")])                 # constant exponent 2
    mx = g.op("Max", [col, a])                                         # [N,1,H,1] vs full
    mn = g.op("Min", [row, d])
    mul = g.op("Mul", [col, s2])                                       # [N,1,H,1] * full
    # unary ops
    u1 = g.op("Tanh", [mx])
    u2 = g.op("Exp", [u1])                                             # in [1/e, e]
    u3 = g.op("Log", [g.op("Softplus", [mn])])                         # log of a positive value
    u3b = g.op("Log", [g.op("Exp", [g.op("Neg", [g.op("Abs", [d2])])])])
    u4 = g.op("Sqrt", [g.op("Add", [g.op("Abs", [s]), one])])
    u5 = g.op("Neg", [g.op("Reciprocal", [g.op("Add", [g.op("Abs", [p]), one])])])
    u6 = g.op("Elu", [d], alpha=0.7)
    u7 = g.op("HardSigmoid", [a], alpha=0.3, beta=0.4)
    u8 = g.op("LeakyRelu", [s2], alpha=0.15)
    slope = g.init(rng.uniform(0.05, 0.5, (c, 1, 1)), "prelu.slope")
    u9 = g.op("PRelu", [mul, slope])
    t = g.op("Mul", [g.op("Add", [u2, u3]), u4])
    t = g.op("Add", [t, u5])
    t = g.op("Mul", [t, u7])
    t = g.op("Add", [t, u6])
    t = g.op("Add", [t, u8])
    t = g.op("Add", [t, u9])
    t = g.op("Add", [t, u3b])
    t = g.op("Sub", [t, g.op("Mul", [p, g.init(np.array(0.1), "tenth")])])
    return g.model(BB_SHAPE, t, "broadcasting Sub/Div/Pow/Max/Min/Mul and unary ops")


# ---- reductions -----------------------------------------------------------------------

RD_SHAPE = (8, 7, 9)


def helper_reductions(rng):
    """Opset 17 reductions: ReduceSum takes axes as an input (since opset 13), ReduceMax,
    ReduceMin, ReduceL2 and ReduceMean take them as an attribute (until opset 18)."""
    assert OPSET < 18, "at opset 18 every Reduce* takes axes as an input"
    g = GraphBuilder("reductions", rng)
    a = g.conv("input", RD_SHAPE[0], RD_SHAPE[0], 3, pad=1)            # [N,8,7,9]
    r1 = g.op("ReduceSum", [a, g.init(np.array([2]), "axes")], keepdims=1)   # [N,8,1,9]
    r2 = g.op("ReduceMax", [a], axes=[3], keepdims=1)                  # [N,8,7,1]
    r3 = g.op("ReduceMin", [a], axes=[1], keepdims=1)                  # [N,1,7,9]
    r4 = g.op("ReduceL2", [a], axes=[2, 3], keepdims=1)                # [N,8,1,1]
    b = g.op("Add", [a, g.op("Mul", [r1, g.init(np.array(0.1), "tenth")])])
    b = g.op("Add", [b, r2])
    b = g.op("Sub", [b, r3])
    b = g.op("Div", [b, g.op("Add", [r4, g.init(np.array(1.0), "one")])])
    b = g.op("Mul", [b, g.init(np.array(3.0), "three")])
    sm = g.op("Softmax", [b], axis=1)                                  # 4-D, channel axis
    ls = g.op("LogSoftmax", [b], axis=-1)                              # last axis
    c = g.op("Add", [sm, g.op("Mul", [ls, g.init(np.array(0.25), "quarter")])])   # [N,8,7,9]
    k1 = g.op("ReduceSum", [c, g.init(np.array([-1]), "axes")], keepdims=0)  # [N,8,7], axis -1
    k2 = g.op("ReduceMax", [c], axes=[3], keepdims=0)                  # [N,8,7]
    k3 = g.op("ReduceMin", [c], axes=[-1], keepdims=0)                 # [N,8,7], negative axis
    k4 = g.op("ReduceL2", [c], axes=[2, 3], keepdims=0)                # [N,8]
    k5 = g.op("ReduceMean", [c], axes=[3], keepdims=0)                 # [N,8,7]
    k4 = g.op("Unsqueeze", [k4, g.init(np.array([2]), "axes")])         # [N,8,1]
    y = g.op("Add", [g.op("Mul", [k1, g.init(np.array(0.2), "fifth")]), k2])
    y = g.op("Add", [y, k3])
    y = g.op("Sub", [y, g.op("Mul", [k4, g.init(np.array(0.1), "tenth")])])
    y = g.op("Add", [y, k5])
    return g.model(RD_SHAPE, y, "ReduceSum/Max/Min/L2/Mean keepdims 0 and 1, Softmax axis 1, LogSoftmax axis -1")


# ---- layout_ops -----------------------------------------------------------------------

LO_SHAPE = (6, 9, 10)


def helper_layout_ops(rng):
    """Transpose (rank 3-5), Reshape (0, -1), Flatten(axis 2), Squeeze/Unsqueeze (axes as
    input), Slice with negative steps, Gather with constant indices, Pad reflect/edge,
    Expand. Each piece is reshaped to [N, -1] and the pieces are concatenated."""
    g = GraphBuilder("layout_ops", rng)
    i64 = lambda v, base="shape": g.init(np.array(v, np.int64), base)  # noqa: E731
    a = g.conv("input", LO_SHAPE[0], 8, 1)                             # [N,8,9,10]
    pieces = []
    # rank 5 and rank 3 transposes around Reshapes with 0 and -1
    t = g.op("Reshape", [a, i64([0, 2, 4, 9, 10])])                    # [N,2,4,9,10]
    t = g.op("Transpose", [t], perm=[0, 2, 1, 4, 3])                   # [N,4,2,10,9]
    t = g.op("Reshape", [t, i64([0, 8, -1])])                          # [N,8,90]
    t = g.op("Transpose", [t], perm=[0, 2, 1])                         # [N,90,8]
    # Flatten at axis 2 folds the batch into the rows: [N*90, 8]; -1 brings it back
    t = g.op("Flatten", [t], axis=2)                                   # [N*90, 8]
    t = g.op("Reshape", [t, i64([-1, 90, 8])])                         # [N,90,8]
    t = g.op("Unsqueeze", [t, i64([1, -1], "axes")])                   # [N,1,90,8,1]
    t = g.op("Transpose", [t], perm=[0, 4, 3, 1, 2])                   # [N,1,8,1,90]
    t = g.op("Squeeze", [t, i64([1, -2], "axes")])                     # [N,8,90]
    pieces.append(t)
    # rank 4 transpose
    pieces.append(g.op("Transpose", [a], perm=[0, 3, 1, 2]))            # [N,10,8,9]
    # Slice with negative steps, and a torch.flip-style full reversal
    s = g.op("Slice", [a, i64([8, -2], "starts"), i64([-100, 0], "ends"),
                       i64([2, 3], "axes"), i64([-2, -3], "steps")])  # [N,8,5,3]
    s = g.op("Slice", [s, i64([-1], "starts"), i64([INT64_MIN_PLUS_1], "ends"),
                       i64([1], "axes"), i64([-1], "steps")])        # channels reversed
    s = g.op("Slice", [s, i64([1], "starts"), i64([100], "ends"), i64([-1], "axes")])  # no steps
    pieces.append(s)                                                   # [N,8,5,2]
    # Gather with constant indices (one negative) on axis 1, and a scalar index
    gi = g.op("Gather", [a, i64([3, 0, -1, 7, 1], "indices")], axis=1)  # [N,5,9,10]
    gs = g.op("Gather", [a, i64(2, "index")], axis=1)                   # [N,9,10]
    pieces.append(gs)
    # Pad: reflect and edge (pads as input, opset 11+)
    p = g.op("Pad", [gi, i64([0, 0, 2, 1, 0, 0, 1, 2], "pads")], mode="reflect")  # [N,5,12,13]
    pieces.append(p)
    e = g.op("Pad", [g.op("Transpose", [gs], perm=[0, 2, 1]), i64([0, 1, 0, 0, 2, 3], "pads")],
             mode="edge")                                              # [N,12,12]
    pieces.append(e)
    # Expand a [N,8,1,10] row and a [N,1,9,1] column to [N,8,9,10]
    row = g.op("ReduceMean", [a], axes=[2], keepdims=1)
    col = g.op("ReduceMax", [a], axes=[1, 3], keepdims=1)
    ex = g.op("Expand", [row, i64([1, 1, 9, 1])])                       # [N,8,9,10]
    ex2 = g.op("Expand", [col, i64([9, 10])])                           # shorter shape: [N,1,9,10]
    pieces.append(g.op("Sub", [ex, a]))
    pieces.append(ex2)
    flat = [g.op("Reshape", [q, i64([0, -1])]) for q in pieces]
    y = g.op("Concat", flat, axis=1)
    return g.model(LO_SHAPE, y, "layout ops, each piece flattened to [N,-1] and concatenated")


# ---- conv1d ---------------------------------------------------------------------------

C1_SHAPE = (4, 23)


def helper_conv1d(rng):
    g = GraphBuilder("conv1d", rng)
    w = g.init(g.uniform((8, 2, 5), math.sqrt(3.0 / 10)), "conv.weight")
    b = g.init(g.uniform((8,), 0.2), "conv.bias")
    y = g.op("Conv", ["input", w, b], group=2, kernel_shape=[5], pads=[2, 1], strides=[2])
    y = g.op("Relu", [y])
    y = g.op("MaxPool", [y], kernel_shape=[3], strides=[1], pads=[1, 1])
    y = g.op("AveragePool", [y], kernel_shape=[2], strides=[2], ceil_mode=1)
    w2 = g.init(g.uniform((6, 8, 3), math.sqrt(3.0 / 24)), "conv2.weight")
    y = g.op("Conv", [y, w2], auto_pad="SAME_UPPER")
    return g.model(C1_SHAPE, y, "1-D Conv (groups, stride, uneven pads), Relu, MaxPool, "
                   "AveragePool (ceil_mode), Conv (auto_pad SAME_UPPER)")


PATTERNS: list[Pattern] = [
    Pattern("silu", "EfficientNet", "Conv -> Sigmoid -> Mul(x, sigmoid(x)) (nn.SiLU)",
            SILU_SHAPE, helper_silu, torch_silu),
    Pattern("squeeze_excite", "EfficientNet / RegNetY",
            "Conv -> SiLU -> SE (GlobalAveragePool, 1x1 Conv, SiLU, 1x1 Conv, Sigmoid, "
            "Mul [N,C,1,1]*[N,C,H,W]) -> 1x1 Conv -> Relu -> SE with Relu",
            SE_SHAPE, helper_squeeze_excite, torch_squeeze_excite),
    Pattern("hardswish_se", "MobileNet v3",
            "Conv(stride 2) -> HardSwish -> SE with Relu and HardSigmoid -> GlobalAveragePool -> "
            "Flatten -> Gemm -> HardSwish -> Gemm",
            HS_SHAPE, helper_hardswish_se, torch_hardswish_se),
    Pattern("reduce_mean", "MnasNet", "Conv -> Relu -> ReduceMean(axes [2,3], keepdims 0) -> Gemm",
            RM_SHAPE, helper_reduce_mean, torch_reduce_mean),
    Pattern("channel_shuffle", "ShuffleNet v2",
            "Conv -> Relu -> InvertedResidual(stride 1): chunk(2) as Shape/Gather/Add/Div/Mul/Slice, "
            "branch2 (1x1 Conv, Relu, 3x3 depthwise Conv, 1x1 Conv, Relu), Concat, channel_shuffle "
            "(Shape, Gather, Div, Cast, Unsqueeze, Concat, Reshape [N,2,C/2,H,W], Transpose [0,2,1,3,4], "
            "Reshape back) -> Split (two outputs) -> Concat swapped",
            CS_SHAPE, helper_channel_shuffle, torch_channel_shuffle),
    Pattern("convnext_block", "ConvNeXt",
            "depthwise 7x7 Conv -> Transpose [0,2,3,1] -> LayerNormalization -> MatMul [C,4C] + Add -> "
            "GELU (Div sqrt2, Erf, Add 1, Mul, Mul 0.5) -> MatMul [4C,C] + Add -> Transpose [0,3,1,2] -> "
            "Mul layer scale [C,1,1] -> Add residual",
            CN_SHAPE, helper_convnext_block, torch_convnext_block),
    Pattern("broadcast_binaries", "operator coverage",
            "Sub, Div, Pow (exponent 2), Max, Min, Mul between [N,C,H,W], [N,C,1,W] and "
            "[N,1,H,1] (either side); Tanh, Exp, Log, Sqrt, Neg, Abs, Reciprocal, Softplus, Elu, "
            "HardSigmoid, LeakyRelu, PRelu with a [C,1,1] slope",
            BB_SHAPE, helper_broadcast_binaries),
    Pattern("reductions", "operator coverage",
            "ReduceSum (axes input) / ReduceMax / ReduceMin / ReduceL2 / ReduceMean (axes attribute), "
            "keepdims 0 and 1, negative axes; Softmax axis 1 of a 4-D tensor; LogSoftmax axis -1",
            RD_SHAPE, helper_reductions),
    Pattern("layout_ops", "operator coverage",
            "Transpose rank 3/4/5, Reshape with 0 and -1, Flatten axis 2, Unsqueeze/Squeeze (axes input), "
            "Slice with negative steps and without steps, Gather (index list with a negative, scalar "
            "index) on axis 1, Pad reflect and edge, Expand, Concat of [N,-1] pieces",
            LO_SHAPE, helper_layout_ops),
    Pattern("conv1d", "1-D CNNs (audio, sequences)",
            "1-D Conv (groups, stride, uneven pads), Relu, MaxPool, AveragePool (ceil_mode), "
            "Conv (auto_pad SAME_UPPER)",
            C1_SHAPE, helper_conv1d),
]


# --------------------------------------------------------------------------------------
# torch export
# --------------------------------------------------------------------------------------


def reinit_torch(module: "nn.Module", gen: "torch.Generator") -> None:
    """Weights with O(1) activations: variance-keeping uniform weights, small biases,
    non-trivial BatchNorm statistics and LayerNorm affines, layer scales near 1."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                b = math.sqrt(3.0 / fan_in)
                m.weight.uniform_(-b, b, generator=gen)
                if m.bias is not None:
                    m.bias.uniform_(-0.2, 0.2, generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 1.5, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
            elif isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
            if hasattr(m, "layer_scale") and isinstance(m.layer_scale, torch.Tensor):
                m.layer_scale.uniform_(0.5, 1.5, generator=gen)


def export_torch(p: Pattern, seed: int) -> onnx.ModelProto:
    torch.manual_seed(seed)
    model = p.torch()
    reinit_torch(model, torch.Generator().manual_seed(seed))
    if hasattr(model, "post_init"):
        with torch.no_grad():
            model.post_init()
    model.eval()
    x = torch.zeros((BATCH, *p.input_shape))
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (x,), f, dynamo=False, opset_version=OPSET,
            input_names=["input"], output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
        )
    m = onnx.load_from_string(f.getvalue())
    m.doc_string = p.summary
    return m


def torch_versions() -> str:
    import torchvision

    return f"torch {torch.__version__}, torchvision {torchvision.__version__}"


# --------------------------------------------------------------------------------------
# checks, README
# --------------------------------------------------------------------------------------


def check_model_files(out: Path, name: str) -> tuple[bool, str]:
    """Re-loads NAME.onnx and its goldens and checks them; returns (ok, message)."""
    m = onnx.load(out / f"{name}.onnx")
    problems = []
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # noqa: BLE001
        problems.append(f"checker: {str(e).splitlines()[0]}")
    if [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] != [OPSET]:
        problems.append(f"opset {[(o.domain, o.version) for o in m.opset_import]}")
    g = m.graph
    inits = {i.name for i in g.initializer}
    real_inputs = [i for i in g.input if i.name not in inits]
    if [i.name for i in real_inputs] != ["input"] or len(g.output) != 1:
        problems.append("inputs/outputs are not input/one output")
    for vi in (real_inputs[0], g.output[0]):
        d0 = vi.type.tensor_type.shape.dim[0]
        if d0.dim_param != "N":
            problems.append(f"{vi.name} dim 0 is not 'N'")
    x = np.load(out / f"{name}.input.npy")
    y = np.load(out / f"{name}.output.npy")
    if x.dtype != np.float32 or y.dtype != np.float32 or x.shape[0] != BATCH:
        problems.append("npy dtype/batch")
    got = run_ort(m, x)
    d = float(np.max(np.abs(got - y))) if got.shape == y.shape else float("inf")
    if d > 1e-6:
        problems.append(f"saved output does not reproduce: max|d| {d:g}")
    opt = run_ort(m, x, optimized=True)
    d_opt = float(np.max(np.abs(opt - y)))
    if d_opt > 1e-5:
        problems.append(f"optimized ORT differs: max|d| {d_opt:g}")
    # dynamic batch: batch 1 and 3 run, and samples do not see each other
    x3 = np.concatenate([x, x[:1] * 0.5], axis=0)
    y3 = run_ort(m, x3)
    y1 = run_ort(m, x[1:2])
    if y3.shape[0] != 3 or y1.shape[0] != 1:
        problems.append(f"batch 1/3 output shapes {y1.shape} {y3.shape}")
    elif max(np.max(np.abs(y3[:2] - y)), np.max(np.abs(y1[0] - y[1]))) > 1e-5:
        problems.append("output of a sample depends on the rest of the batch")
    if not np.all(np.isfinite(y)):
        problems.append("non-finite output")
    msg = (f"{name:20s} {'ok' if not problems else 'FAIL'}  in {list(x.shape)} out {list(y.shape)} "
           f"max|out| {np.max(np.abs(y)):.3g}  nodes {len(g.node)}")
    if problems:
        msg += "\n    " + "\n    ".join(problems)
    return not problems, msg


def op_types(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]


def compact_ops(ops: list[str]) -> str:
    """Op types in order, runs of the same op written as `Op x3`."""
    parts, i = [], 0
    while i < len(ops):
        j = i
        while j < len(ops) and ops[j] == ops[i]:
            j += 1
        parts.append(ops[i] if j - i == 1 else f"{ops[i]} x{j - i}")
        i = j
    return ", ".join(parts)


def shape_n(shape) -> str:
    return "[" + ", ".join(["N", *map(str, shape[1:])]) + "]"


def write_readme(out: Path, made: dict[str, str]) -> None:
    lines = [
        "# ONNX pattern graphs",
        "",
        "Small ONNX models, each with a float32 input and its ONNX Runtime output, for the",
        "importer tests. Generated by `tools/onnx_patterns.py` (see its docstring); do not",
        "edit by hand, regenerate:",
        "",
        "    python3 tools/onnx_patterns.py            # writes this folder",
        "    python3 tools/onnx_patterns.py --check    # verifies the files here with ONNX Runtime",
        "",
        "Every model: opset 17, one graph input `input` and one output `output`, both with",
        "the batch dimension named `N`. `<name>.input.npy` is float32 with batch 2 (normal",
        "samples from a fixed seed); `<name>.output.npy` is onnxruntime's CPU output",
        f"(onnxruntime {ort.__version__}, graph optimizations disabled, one thread). The check",
        "also runs each model at batch 1 and 3 and with ORT's optimizations (within 1e-5).",
        "",
        "Builders: `torch` = exported from a PyTorch module with",
        "`torch.onnx.export(..., dynamo=False, opset_version=17, dynamic_axes={\"input\": {0: \"N\"},",
        "\"output\": {0: \"N\"}})` after re-initializing weights to keep activations O(1) (BatchNorm",
        "is folded into the Conv by the exporter); `onnx.helper` = built node by node by the script",
        "(the helper builders of the torch-capable patterns mirror torch's node sequence; the",
        "operator-coverage patterns are helper-only by design: they test exact ONNX spellings).",
        "`python3 tools/onnx_patterns.py --builder helper --out DIR` builds all nine without torch;",
        "for the six torch patterns its graphs have the same nodes, attributes and constant",
        "inputs as the exported ones (only the random weights differ).",
        "",
        "| pattern | family | builder | input | output | max abs output |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    details = []
    for p in PATTERNS:
        if not (out / f"{p.name}.onnx").exists():
            continue
        m = onnx.load(out / f"{p.name}.onnx")
        x = np.load(out / f"{p.name}.input.npy")
        y = np.load(out / f"{p.name}.output.npy")
        builder = made.get(p.name) or next(
            (pp.value for pp in m.metadata_props if pp.key == "builder"), "?")
        lines.append(f"| `{p.name}` | {p.family} | {builder} | {shape_n(x.shape)} | {shape_n(y.shape)} "
                     f"| {np.max(np.abs(y)):.3g} |")
        details += ["", f"## {p.name}", "", p.summary + ".", "",
                    f"Nodes ({len(m.graph.node)}): {compact_ops(op_types(m))}."]
    lines += details
    lines += [
        "",
        "## Size",
        "",
        f"All files together: {sum(f.stat().st_size for f in out.iterdir() if f.is_file()) // 1024 + 1} KiB "
        "(README included, as of generation).",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines))


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def build(p: Pattern, builder: str, seed: int) -> tuple[onnx.ModelProto, str]:
    use_torch = p.torch is not None and (builder == "torch" or (builder == "auto" and HAVE_TORCH))
    if use_torch:
        if not HAVE_TORCH:
            raise SystemExit("--builder torch: torch is not importable (pip install torch torchvision)")
        m = export_torch(p, seed)
        how = f"torch ({torch_versions()})"
    else:
        m = p.helper(np.random.default_rng(seed))
        how = f"onnx.helper (onnx {onnx.__version__})"
    m.metadata_props.add(key="builder", value=how)
    m.metadata_props.add(key="pattern", value=p.name)
    return m, how


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--builder", choices=["auto", "torch", "helper"], default="auto",
                    help="auto: torch where a pattern has a torch builder and torch imports (default)")
    ap.add_argument("--only", help="comma-separated pattern names")
    ap.add_argument("--check", action="store_true", help="only verify the files already in --out")
    ap.add_argument("--list", action="store_true", help="print each written pattern's node op types")
    args = ap.parse_args()

    chosen = PATTERNS
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {p.name for p in PATTERNS}
        if unknown:
            ap.error(f"unknown pattern(s): {', '.join(sorted(unknown))}; "
                     f"known: {', '.join(p.name for p in PATTERNS)}")
        chosen = [p for p in PATTERNS if p.name in names]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    made: dict[str, str] = {}
    if not args.check:
        for i, p in enumerate(PATTERNS):
            if p not in chosen:
                continue
            seed = SEED + i
            m, how = build(p, args.builder, seed)
            x = np.random.default_rng(seed + 1000).standard_normal((BATCH, *p.input_shape)).astype(np.float32)
            y = run_ort(m, x)
            onnx.save(m, out / f"{p.name}.onnx")
            np.save(out / f"{p.name}.input.npy", x)
            np.save(out / f"{p.name}.output.npy", y)
            made[p.name] = how
            print(f"wrote {p.name} ({how})")
        write_readme(out, made)

    ok = True
    for p in chosen:
        if not (out / f"{p.name}.onnx").exists():
            print(f"{p.name:20s} MISSING")
            ok = False
            continue
        good, msg = check_model_files(out, p.name)
        ok &= good
        print(msg)
        if args.list:
            print("    " + " ".join(op_types(onnx.load(out / f"{p.name}.onnx"))))
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"{out}: {total / 1024:.1f} KiB in {sum(1 for f in out.iterdir() if f.is_file())} files")
    if total > 2 * 1024 * 1024:
        print("error: the folder is over 2 MiB")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
