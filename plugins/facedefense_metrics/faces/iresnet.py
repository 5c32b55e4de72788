"""insightface's IResNet face-recognition network in torch, with its weights read from insightface's
released ONNX files (antelopev2 ``glintr100.onnx``: IResNet-100; buffalo_l ``w600k_r50.onnx``:
IResNet-50), so that a defender can differentiate through the very encoder that ONNX Runtime runs.

The architecture is arcface_torch's ``backbones/iresnet.py`` (Deng et al., ArcFace, CVPR 2019;
Duta et al., Improved Residual Networks, 2020): a 3x3 stem convolution, BN, PReLU; four stages of
``IBasicBlock`` (BN, 3x3 conv, BN, PReLU, 3x3 conv with the stage's stride 2, BN, plus the shortcut:
a 1x1 strided conv and BN in each stage's first block); then BN, flatten, a linear layer to the
embedding and a 1-D BN ("features"). Input: a 112x112 aligned face chip, RGB, ``(x/255 - 0.5)/0.5``;
output: the 512-D embedding (not normalized; compare with cosine).

`load_iresnet` reads the graph, not the initializers' names (the released files name most of them
by number): it follows the data flow from the input, so the depth (blocks per stage), the widths,
the embedding size and the chip size all come from the file. Both export forms load: the
TorchScript exporter's (arcface_torch's ``torch2onnx.py``, eval mode), which folds each
convolution's following BN into the convolution's weight and bias, and an unfolded graph, whose
conv + BN pairs are folded here the same way (the network computes the same function).

This module imports torch at the top: import it lazily (the face backends and embedders do).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from facedefense.errors import ConfigError, MissingDependencyError, ModelNotFoundError

#: Blocks per stage of the released models (arcface_torch ``iresnet50`` / ``iresnet100``).
DEPTHS = {(3, 4, 14, 3): "IResNet-50", (3, 13, 30, 3): "IResNet-100"}
_PASS_THROUGH = ("Identity", "Dropout")


def _conv3x3(inplanes: int, planes: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=bias)


def _conv_norm(conv: nn.Conv2d, folded: bool) -> tuple[nn.Conv2d, nn.Module]:
    """A convolution and the BN after it (an identity once the BN is folded into the conv's bias)."""
    return conv, nn.Identity() if folded else nn.BatchNorm2d(conv.out_channels, eps=1e-5)


class IBasicBlock(nn.Module):
    """``bn1, conv1, bn2, prelu, conv2 (stride), bn3`` plus the shortcut (arcface_torch's names).

    Args:
        inplanes, planes: input and output channels.
        stride: stride of ``conv2`` and of the shortcut's 1x1 conv.
        downsample: the shortcut is a 1x1 conv + BN (each stage's first block), else the identity.
        folded: the BNs that follow a convolution are folded into it (conv bias, identity BN).
    """

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: bool, folded: bool) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1, self.bn2 = _conv_norm(_conv3x3(inplanes, planes, bias=folded), folded)
        self.prelu = nn.PReLU(planes)
        self.conv2, self.bn3 = _conv_norm(_conv3x3(planes, planes, stride, bias=folded), folded)
        self.downsample = (
            nn.Sequential(*_conv_norm(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=folded), folded))
            if downsample else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """arcface_torch's IResNet (names as in its ``iresnet.py``), of any depth and width.

    Args:
        layers: blocks per stage; (3, 4, 14, 3) is IResNet-50, (3, 13, 30, 3) IResNet-100.
        widths: output channels of the stem and of the four stages; (64, 64, 128, 256, 512).
        features: embedding size (512).
        chip: input side in pixels (112; the four stride-2 stages leave ``chip / 16``).
        folded: convolutions carry their following BN (see `IBasicBlock`); what `load_iresnet` builds.

    Shape:
        (N, 3, chip, chip) RGB in [-1, 1] -> (N, features).
    """

    def __init__(
        self, layers: Sequence[int] = (3, 4, 14, 3), widths: Sequence[int] = (64, 64, 128, 256, 512),
        features: int = 512, chip: int = 112, folded: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(widths) != 5 or chip % 16:
            raise ConfigError(f"IResNet needs 4 stages, 5 widths and a chip side divisible by 16; got {layers}, {widths}, {chip}")
        self.layers, self.widths, self.chip, self.folded = tuple(layers), tuple(widths), chip, folded
        self.conv1, self.bn1 = _conv_norm(_conv3x3(3, widths[0], bias=folded), folded)
        self.prelu = nn.PReLU(widths[0])
        for stage, (blocks, planes) in enumerate(zip(layers, widths[1:]), start=1):
            inplanes = widths[stage - 1]
            stack = [IBasicBlock(inplanes if i == 0 else planes, planes, 2 if i == 0 else 1, i == 0, folded) for i in range(blocks)]
            setattr(self, f"layer{stage}", nn.Sequential(*stack))
        self.bn2 = nn.BatchNorm2d(widths[4], eps=1e-5)
        self.fc = nn.Linear(widths[4] * (chip // 16) ** 2, features)
        self.features = nn.BatchNorm1d(features, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


# ----------------------------------------------------------------------------------------------
# Reading the ONNX graph


@dataclass
class _Graph:
    """An ONNX graph's nodes indexed by the tensors they read, and its constant tensors."""

    consumers: dict[str, list[Any]]
    constants: dict[str, np.ndarray]
    path: Path
    state: dict[str, np.ndarray] = field(default_factory=dict)

    def fail(self, what: str) -> ConfigError:
        return ConfigError(f"{self.path} is not an insightface IResNet ONNX model ({what})")

    def constant(self, name: str) -> np.ndarray:
        if name not in self.constants:
            raise self.fail(f"tensor {name} is computed, a weight was expected")
        return self.constants[name]

    def readers(self, tensor: str) -> list[Any]:
        """The nodes reading ``tensor``, looking through identities and dropouts."""
        out = []
        for node in self.consumers.get(tensor, []):
            out.extend(self.readers(node.output[0]) if node.op_type in _PASS_THROUGH else [node])
        return out

    def next(self, tensor: str, *ops: str, optional: bool = False) -> Any:
        """The one node reading ``tensor`` if it is one of ``ops`` (None when ``optional`` and it is not)."""
        readers = self.readers(tensor)
        if len(readers) == 1 and readers[0].op_type in ops:
            return readers[0]
        if optional:
            return None
        found = ", ".join(node.op_type for node in readers) or "nothing"
        raise self.fail(f"expected {' or '.join(ops)} after {tensor}, found {found}")

    def batch_norm(self, node: Any, prefix: str) -> None:
        for key, name in zip(("weight", "bias", "running_mean", "running_var"), node.input[1:5]):
            self.state[f"{prefix}.{key}"] = self.constant(name)
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        self.state[f"{prefix}.running_var"] = self.state[f"{prefix}.running_var"] + (epsilon - 1e-5)  # torch's eps

    def conv(self, node: Any, prefix: str, kernel: int) -> tuple[str, int]:
        """Store ``node``'s conv (with the BN after it folded in); the output tensor and the stride."""
        attributes = {a.name: list(a.ints) or a.i for a in node.attribute}
        weight = self.constant(node.input[1]).astype(np.float64)
        bias = self.constant(node.input[2]).astype(np.float64) if len(node.input) > 2 else np.zeros(weight.shape[0])
        strides = attributes.get("strides", [1, 1])
        expected_pads = [kernel // 2] * 4
        if weight.shape[2:] != (kernel, kernel) or attributes.get("pads", expected_pads) != expected_pads or \
                attributes.get("group", 1) != 1 or strides[0] != strides[1]:
            raise self.fail(f"unexpected convolution {node.name or node.output[0]}")
        out = node.output[0]
        norm = self.next(out, "BatchNormalization", optional=True)
        if norm is not None and self.readers(out) == [norm]:  # an unfolded conv + BN: fold it as the exporter does
            epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
            gamma, beta, mean, var = (self.constant(name).astype(np.float64) for name in norm.input[1:5])
            scale = gamma / np.sqrt(var + epsilon)
            weight, bias = weight * scale[:, None, None, None], (bias - mean) * scale + beta
            out = norm.output[0]
        self.state[f"{prefix}.weight"] = weight.astype(np.float32)
        self.state[f"{prefix}.bias"] = bias.astype(np.float32)
        return out, int(strides[0])

    def prelu(self, node: Any, prefix: str) -> None:
        self.state[f"{prefix}.weight"] = self.constant(node.input[1]).reshape(-1)


def _read_graph(path: Path) -> tuple[_Graph, str, tuple[int, ...]]:
    """The graph, its input tensor's name and shape (-1 where symbolic)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as error:
        raise MissingDependencyError("reading an ONNX face model needs onnx: pip install 'facedefense[onnx]'") from error
    if not path.is_file():
        raise ModelNotFoundError(
            f"insightface model {path} not found (antelopev2 glintr100.onnx or buffalo_l w600k_r50.onnx; "
            "insightface's model zoo, non-commercial research use; never downloaded here)"
        )
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise ConfigError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from exc
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in constants:  # a weight shared under another name
            constants[node.output[0]] = constants[node.input[0]]
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    inputs = [value for value in model.graph.input if value.name not in constants]
    if len(inputs) != 1:
        raise ConfigError(f"{path} is not an insightface IResNet ONNX model ({len(inputs)} inputs)")
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in inputs[0].type.tensor_type.shape.dim)
    return _Graph(consumers, constants, path), inputs[0].name, shape


def load_iresnet(path: str | Path) -> IResNet:
    """The torch IResNet of an insightface ONNX face-recognition model, weights read from the file.

    Args:
        path: ``glintr100.onnx`` (antelopev2), ``w600k_r50.onnx`` (buffalo_l) or any IResNet exported
            from arcface_torch; depth, widths, embedding size and chip size are read from the graph.

    Returns:
        An `IResNet` with ``folded=True`` in eval mode on the CPU (float32).

    Raises:
        ModelNotFoundError: the file does not exist.
        ConfigError: the graph is not an IResNet (one line naming what was found instead).
    """
    graph, name, shape = _read_graph(Path(path).expanduser())
    x = name
    node = graph.next(x, "Conv")
    if graph.readers(x) != [node]:
        raise graph.fail("the input is normalized inside the graph (an MXNet-era model)")
    x, _ = graph.conv(node, "conv1", 3)
    activation = graph.next(x, "PRelu")
    graph.prelu(activation, "prelu")
    x = activation.output[0]
    layers: list[int] = []
    widths = [graph.state["conv1.weight"].shape[0]]
    while len(graph.readers(x)) == 2:  # a block: its BN and the shortcut (the Add, or the 1x1 conv)
        norm = next((n for n in graph.readers(x) if n.op_type == "BatchNormalization"), None)
        shortcut = next((n for n in graph.readers(x) if n is not norm), None)
        if norm is None or shortcut is None or shortcut.op_type not in ("Add", "Conv"):
            raise graph.fail(f"unexpected branch after {x}")
        downsample = shortcut.op_type == "Conv"
        if downsample:
            layers.append(0)
        if not layers:
            raise graph.fail("the first block has no downsampling shortcut")
        prefix = f"layer{len(layers)}.{layers[-1]}"
        graph.batch_norm(norm, f"{prefix}.bn1")
        y, _ = graph.conv(graph.next(norm.output[0], "Conv"), f"{prefix}.conv1", 3)
        activation = graph.next(y, "PRelu")
        graph.prelu(activation, f"{prefix}.prelu")
        y, stride = graph.conv(graph.next(activation.output[0], "Conv"), f"{prefix}.conv2", 3)
        skip = graph.conv(shortcut, f"{prefix}.downsample.0", 1)[0] if downsample else x
        add = graph.next(y, "Add")
        if set(add.input) != {y, skip} or stride != (2 if downsample else 1):
            raise graph.fail(f"unexpected residual block {prefix}")
        if downsample:
            widths.append(graph.state[f"{prefix}.conv2.weight"].shape[0])
        layers[-1] += 1
        x = add.output[0]
    if len(layers) != 4:
        raise graph.fail(f"{len(layers)} stages, IResNet has 4")
    norm = graph.next(x, "BatchNormalization")
    graph.batch_norm(norm, "bn2")
    flat = graph.next(norm.output[0], "Flatten", "Reshape")
    linear = graph.next(flat.output[0], "Gemm", "MatMul")
    weight = graph.constant(linear.input[1])
    if linear.op_type == "Gemm":
        attributes = {a.name: a.i if a.type == 2 else a.f for a in linear.attribute}
        if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0 or attributes.get("transA", 0):
            raise graph.fail("unexpected Gemm attributes")
        weight = weight if attributes.get("transB", 0) else weight.T
        bias, out = graph.constant(linear.input[2]), linear.output[0]
    else:
        weight, add = weight.T, graph.next(linear.output[0], "Add")
        bias, out = graph.constant(next(n for n in add.input if n != linear.output[0])), add.output[0]
    graph.state.update({"fc.weight": weight, "fc.bias": bias})
    graph.batch_norm(graph.next(out, "BatchNormalization"), "features")
    cells = weight.shape[1] // widths[-1]
    chip = int(round(cells**0.5)) * 16
    if shape[-2:] not in ((chip, chip), (-1, -1)):
        raise graph.fail(f"input {shape}, the fc layer expects {chip}x{chip}")
    network = IResNet(layers, widths, features=weight.shape[0], chip=chip, folded=True)
    state = {key: torch.tensor(np.asarray(value, dtype=np.float32)) for key, value in graph.state.items()}
    expected = {key for key in network.state_dict() if not key.endswith("num_batches_tracked")}
    if set(state) != expected:
        raise graph.fail(f"weights missing: {sorted(expected - set(state))[:3]}")
    try:
        network.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise graph.fail(str(exc).splitlines()[0]) from exc
    return network.eval()


def describe(network: IResNet) -> str:
    """``"IResNet-100"`` for the released depths, else ``"IResNet (blocks a-b-c-d)"``."""
    return DEPTHS.get(network.layers, "IResNet (blocks " + "-".join(map(str, network.layers)) + ")")
