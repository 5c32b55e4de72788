"""GAP-Diff (Zhu, Pang, Lu, Zhou, Xue, "GAP-Diff: Protecting JPEG-Compressed Images from Diffusion-based
Facial Customization", NDSS 2025, doi:10.14722/ndss.2025.242088)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.checkpoints import load_defender_network
from facedefense.errors import ConfigError
from facedefense.imaging import to_vae_range
from facedefense.interfaces import AmortizedDefender, AmortizedDefenderConfig
from facedefense_amortized.common import check_runtime, onnx_engine, uses_onnx

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from facedefense.autotune import Choice
    from facedefense.checkpoints import LoadedNetwork

OFFICIAL_NAME = r"per(\d+(?:\.\d+)?)"
WHERE_TO_GET = (
    "gap_diff needs --checkpoint: the official generator G_per16_pretrain.pth is linked from the README "
    "of github.com/AIASLab/GAP-Diff (Google Drive); download it and pass its path"
)
PREFIX = "generator."


#: ``-o engine=...`` values (see ``GAPDiffConfig``).
ENGINES = ("auto", "float32", "bfloat16", "int8", "int8+bf16", "module")


@dataclass
class GAPDiffConfig(AmortizedDefenderConfig):
    """GAP-Diff options.

    Attributes:
        checkpoint: generator weights (official ``G_per16_pretrain.pth``, keys ``generator.*``, or a
            facedefense ``.safetensors``).
        eps: L-infinity budget in [0, 1] units. Default None: the checkpoint's (``per16`` is 16/255 in
            the reference's [-1, 1] units, so 8/255 here). A different value is refused.
        train_mode: run the generator as the reference script does (it never calls ``eval()``):
            dropout active and per-batch BatchNorm statistics, so outputs vary with the seed.
            Default False: deterministic eval mode.
        max_side: longest side, in pixels, at which the generator runs. A larger photo is
            downscaled for the network and its perturbation upscaled back (memory grows with the
            area: about 1.5 GB at 2048x2048 in fp32). Default 2048; 0 means always full resolution.
        runtime: ``"auto"`` (default: ONNX Runtime for an ``.onnx`` checkpoint, else PyTorch),
            ``"torch"`` or ``"onnx"``.
        engine: how the network runs on a CPU. ``"auto"`` (default): with ``--dtype auto`` the
            folded network in fp32, bf16, int8 or int8+bf16 (the heavy convolutions in int8 between
            fp32 or bf16 activations), whichever measured fastest on this machine (once, then
            cached: ``facedefense info --hardware``), with an explicit ``--dtype`` the folded
            network in that precision; ``"float32"``, ``"bfloat16"``, ``"int8"`` or
            ``"int8+bf16"`` force one; ``"module"`` runs the PyTorch module itself in ``--dtype``.
    """

    train_mode: bool = False
    max_side: int = 2048
    runtime: str = "auto"
    engine: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_runtime(self.runtime)
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.max_side < 0 or 0 < self.max_side < 512:
            raise ConfigError(f"max_side must be 0 (no limit) or at least 512 pixels, got {self.max_side}")


class GAPDiff(AmortizedDefender):
    """Protect photos in one forward pass of GAP-Diff's generator.

    A U-Net (8 stride-2 convolutions, 4 residual blocks, 8 transposed convolutions with skip
    connections, about 73M parameters) trained against Stable Diffusion's denoising loss through
    simulated JPEG and blur, so the protection survives compression. Output:
    ``x + eps * G(x)`` with ``G`` ending in tanh.

    Args:
        checkpoint, eps, train_mode, max_side, runtime: see ``GAPDiffConfig``.

    Shape:
        (N, 3, H, W) in [0, 1], any size: reflection-padded to multiples of 256 (at least 512) and
        cropped back, so every pixel keeps its place and the resolution is kept (photos longer
        than ``max_side`` are computed at that size and the perturbation upscaled).

    Examples:
        >>> protected = GAPDiff(checkpoint="G_per16_pretrain.pth").protect(images).images

    Differences from the reference code:
        deterministic eval mode by default (``train_mode=True`` reproduces the reference's
        stochastic behaviour); any input size; budgets in [0, 1] units; on the CPU, batch norms
        folded into the convolutions (same function); PNG output (the reference re-encodes JPEG
        inputs as lossy JPEG).
    """

    name: ClassVar[str] = "gap_diff"
    Config: ClassVar[type[GAPDiffConfig]] = GAPDiffConfig
    cpu_bf16: ClassVar[bool] = True

    def __init__(self, config: GAPDiffConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        import torch

        from facedefense_amortized.networks.gap_generator import (
            FOLDED_PRECISIONS,
            FoldedGAPGenerator,
            folded_precisions,
            folding_supported,
            int8_convolution_supported,
        )

        on_cpu = self.device.type == "cpu"
        # One photo at a time on the CPU (faster per photo there, and bounded memory) and in train
        # mode (batch-norm statistics per photo, as the reference computes them at batch size 1).
        self.chunk = 1 if on_cpu or self.config.train_mode else None
        #: How the precision was chosen (``--dtype auto`` on a CPU: the measurement).
        self.choice: Choice | None = None
        if uses_onnx(self.config.runtime, self.config.checkpoint):
            if self.config.train_mode:
                raise ConfigError("gap_diff: train_mode needs the PyTorch network, not an .onnx export")
            self.engine, eps = onnx_engine("gap_diff", self.config.checkpoint, self.config.eps, self.device.type)
            self.config = self.config.replace(eps=eps)
            self.budget_source, self.architecture = "its ONNX metadata", self.engine.architecture
            self.network, self.engine_dtype, self.path = None, torch.float32, "onnx"
            return
        loaded = self.load_trained(self.config.checkpoint, self.config.eps)
        self.config = self.config.replace(eps=loaded.eps)
        self.budget_source = loaded.budget_source
        self.architecture = loaded.architecture
        #: The trainable generator (for training and export); ``engine`` runs inference.
        self.network = loaded.network.train(self.config.train_mode).requires_grad_(False)
        self.engine_dtype = self.dtype
        engine = self.config.engine
        if engine not in ("auto", "module") and not (on_cpu and not self.config.train_mode and folding_supported()):
            raise ConfigError(
                f"gap_diff: engine={engine} needs the CPU, eval mode and this torch build's oneDNN kernels; "
                "use -o engine=module"
            )
        if engine.startswith("int8") and not int8_convolution_supported():
            raise ConfigError(f"gap_diff: engine={engine} needs oneDNN's int8 convolutions and a CPU with VNNI or AMX-INT8 (x86); use -o engine=auto")
        if engine in FOLDED_PRECISIONS and engine not in folded_precisions():
            raise ConfigError(
                f"gap_diff: engine={engine} needs oneDNN's bf16 kernels, which this CPU lacks (AVX-512 BW/VL/DQ "
                f"or AVX-NE-CONVERT); available: {', '.join(folded_precisions())}"
            )
        if engine != "module" and on_cpu and not self.config.train_mode and folding_supported():
            built: dict[str, FoldedGAPGenerator] = {}
            name = str(self.engine_dtype).removeprefix("torch.") if engine == "auto" else engine
            if engine == "auto" and self.config.dtype == "auto":
                self.choice = self._measure(built)
                name = self.choice.name
            if name in folded_precisions():
                self.engine = built.get(name) or FoldedGAPGenerator(self.network.float(), name)
                self.engine_dtype = self.engine.dtype
                self.path = f"folded {name}"
                return
        # channels-last weights, like the inputs (on an H100 in bf16 2% faster than contiguous ones)
        self.network = self.network.to(device=self.device, dtype=self.dtype, memory_format=torch.channels_last)
        self.engine, self.engine_dtype, self.path = self.network, self.dtype, "module"

    @classmethod
    def load_trained(cls, checkpoint: str, eps: float | None = None) -> LoadedNetwork:
        """The trainable ``GAPGenerator`` of ``checkpoint`` and its budget (fp32, CPU)."""
        from facedefense_amortized.networks import GAPGenerator

        return load_defender_network(
            "gap_diff",
            checkpoint,
            GAPGenerator,
            eps=eps,
            name_pattern=OFFICIAL_NAME,
            where_to_get=WHERE_TO_GET,
            strip_prefix=PREFIX,
        )

    @classmethod
    def training_recipe(cls):
        """``facedefense train --method gap_diff`` (see ``training/gap_diff.py``)."""
        from facedefense_amortized.training.gap_diff import _recipe

        return _recipe()

    @classmethod
    def export_onnx(cls, checkpoint: str, output: str | Path, *, eps: float | None = None) -> Path:
        """Write the generator of ``checkpoint`` as ONNX (eval mode; batch, height and width dynamic:
        any multiple of 256 of at least 512)."""
        import torch

        from facedefense_amortized.networks import GAPGenerator
        from facedefense_amortized.onnx_io import export_onnx

        loaded = cls.load_trained(checkpoint, eps)
        side = GAPGenerator.min_size
        return export_onnx(
            loaded.network.eval(), output, method="gap_diff", eps=loaded.eps, architecture=loaded.architecture,
            example=torch.zeros(1, 3, side, side), dynamic_size=True,
        )

    def _measure(self, built: dict) -> Choice:
        """Every folded precision this build runs (``folded_precisions``), one 512x512 forward
        each (cached per machine); the engines built for the measurement are left in ``built``."""
        import torch

        from facedefense import autotune
        from facedefense_amortized.networks import GAPGenerator
        from facedefense_amortized.networks.gap_generator import FoldedGAPGenerator, folded_precisions

        candidates = folded_precisions()
        side = GAPGenerator.min_size

        def probes():
            noise = torch.Generator().manual_seed(0)
            x = (torch.rand(1, 3, side, side, generator=noise) * 2 - 1).contiguous(memory_format=torch.channels_last)
            shared: dict = {}  # layers converted once, shared by the engines that use them
            for name in candidates:
                built[name] = FoldedGAPGenerator(self.network.float(), name, shared=shared)
            return {name: (lambda e=engine: e(x.to(e.dtype))) for name, engine in built.items()}

        # ``engine``: the folded engine's revision (a new one is measured again, not read from the cache)
        problem = {"ngf": self.network.conv1.out_channels, "side": side, "engine": 2}
        return autotune.choose("gap_diff", candidates, probes, problem=problem, budget_s=0.3)

    def _perturb(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch

        from facedefense.imaging import resize
        from facedefense.runtime import global_rng_from

        height, width = images.shape[-2:]
        cap = self.config.max_side
        scale = cap / max(height, width) if cap and max(height, width) > cap else 1.0
        work = resize(images, (round(height * scale), round(width * scale))) if scale < 1 else images
        # dropout in train mode draws from the global generator: seeded from ours
        with global_rng_from(generator), torch.inference_mode():
            direction = torch.cat([self._direction(part) for part in work.split(self.chunk or len(work))])
        if scale < 1:
            direction = resize(direction, (height, width))
        return images + self.config.eps * direction

    def _direction(self, images: Tensor) -> Tensor:
        """G(x) in [-1, 1] for a batch in [0, 1], at the batch's own size (float32)."""
        import torch

        height, width = images.shape[-2:]
        inputs = to_vae_range(_pad_for_generator(images)).to(self.engine_dtype).contiguous(memory_format=torch.channels_last)
        return self.engine(inputs).float()[..., :height, :width]


def _pad_for_generator(images: Tensor) -> Tensor:
    """Pad bottom/right to multiples of 256, at least 512 per side (the generator's geometry):
    reflection where the image is large enough, replication otherwise."""
    import torch.nn.functional as F

    from facedefense_amortized.networks import GAPGenerator

    height, width = images.shape[-2:]
    step, least = GAPGenerator.multiple, GAPGenerator.min_size
    pad_h = max(least, -(-height // step) * step) - height
    pad_w = max(least, -(-width // step) * step) - width
    if not (pad_h or pad_w):
        return images
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(images, (0, pad_w, 0, pad_h), mode=mode)
