"""GAP-Diff (Zhu, Pang, Lu, Zhou, Xue, "GAP-Diff: Protecting JPEG-Compressed Images from Diffusion-based
Facial Customization", NDSS 2025, doi:10.14722/ndss.2025.242088)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.imaging import to_vae_range
from facedefense.interfaces import AmortizedDefender, DefenderConfig
from facedefense_amortized.checkpoints import load_defender_network

if TYPE_CHECKING:
    import torch
    from torch import Tensor

OFFICIAL_NAME = r"per(\d+(?:\.\d+)?)"
WHERE_TO_GET = (
    "gap_diff needs --checkpoint: the official generator G_per16_pretrain.pth is linked from the README "
    "of github.com/AIASLab/GAP-Diff (Google Drive); download it and pass its path"
)
PREFIX = "generator."


@dataclass
class GAPDiffConfig(DefenderConfig):
    """GAP-Diff options.

    Attributes:
        checkpoint: generator weights (official ``G_per16_pretrain.pth``, keys ``generator.*``, or a
            facedefense ``.safetensors``).
        eps: L-infinity budget in [0, 1] units. Default None: the checkpoint's (``per16`` is 16/255 in
            the reference's [-1, 1] units, so 8/255 here). A different value is refused.
        train_mode: run the generator as the reference script does (it never calls ``eval()``):
            dropout active and per-batch BatchNorm statistics, so outputs vary with the seed.
            Default False: deterministic eval mode.
    """

    checkpoint: str = ""
    eps: float | None = None  # type: ignore[assignment]
    train_mode: bool = False

    def __post_init__(self) -> None:
        if self.eps is not None:
            super().__post_init__()


class GAPDiff(AmortizedDefender):
    """Protect photos in one forward pass of GAP-Diff's generator.

    A U-Net (8 stride-2 convolutions, 4 residual blocks, 8 transposed convolutions with skip
    connections, about 73M parameters) trained against Stable Diffusion's denoising loss through
    simulated JPEG and blur, so the protection survives compression. Output:
    ``x + eps * G(x)`` with ``G`` ending in tanh.

    Args:
        checkpoint, eps, train_mode: see :class:`GAPDiffConfig`.

    Shape:
        (N, 3, H, W) in [0, 1], any size: reflection-padded to multiples of 256 (at least 512) and
        cropped back, so every pixel keeps its place and the resolution is kept.

    Example:
        >>> protected = GAPDiff(checkpoint="G_per16_pretrain.pth").protect(images).images

    Differences from the reference code:
        deterministic eval mode by default (``train_mode=True`` reproduces the reference's
        stochastic behaviour); any input size; budgets in [0, 1] units; PNG output (the reference
        re-encodes JPEG inputs as lossy JPEG).
    """

    name: ClassVar[str] = "gap_diff"
    Config: ClassVar[type[GAPDiffConfig]] = GAPDiffConfig
    cpu_bf16: ClassVar[bool] = True

    def __init__(self, config: GAPDiffConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        import torch

        from facedefense_amortized.networks import GAPGenerator

        loaded = load_defender_network(
            "gap_diff",
            self.config.checkpoint,
            GAPGenerator,
            eps=self.config.eps,
            name_pattern=OFFICIAL_NAME,
            where_to_get=WHERE_TO_GET,
            strip_prefix=PREFIX,
        )
        self.config.eps, self.budget_source = loaded.eps, loaded.budget_source
        network = loaded.network.train(self.config.train_mode).requires_grad_(False)
        layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.network = network.to(device=self.device, dtype=self.dtype, memory_format=layout)

    def _perturb(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch

        height, width = images.shape[-2:]
        inputs = to_vae_range(_pad_for_generator(images)).to(self.dtype).contiguous(memory_format=torch.channels_last)
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            # dropout in train mode draws from the global generator: seed it from ours
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
            direction = self.network(inputs).float()
        return images + self.config.eps * direction[..., :height, :width]


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
