"""GrIDPure: iterative DiffPure on overlapping crops at the diffusion model's own scale.

Zhao, Lu, Hu, Wang, Xu. *Can Protective Perturbation Safeguard Personal Data from Being Exploited
by Stable Diffusion?* CVPR 2024 (arXiv:2312.00084). Reference code: ZhengyueZhao/GrIDPure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces import Purifier, PurifierConfig
from facedefense_purifiers.diffpure import check_model, check_strength, load_denoiser

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def crop_starts(length: int, crop: int, stride: int) -> list[int]:
    """Offsets of crops of side ``crop`` every ``stride`` pixels, the last one flush with the end.

    Examples:
        >>> crop_starts(512, 256, 128), crop_starts(600, 256, 128)
        ([0, 128, 256], [0, 128, 256, 344])
    """
    starts = list(range(0, length - crop + 1, stride))
    if starts[-1] + crop < length:
        starts.append(length - crop)
    return starts


@dataclass
class GridPureConfig(PurifierConfig):
    """GrIDPure options (the reference's command-line names in brackets).

    Attributes:
        model: the diffusion model of the crops: a pixel DDPM (the reference's 256x256
            unconditional guided-diffusion model, as a diffusers ``UNet2DModel``) or Stable
            Diffusion (img2img on each crop).
        crop: crop side in pixels. Default 256 (the model's training size in the reference).
        stride: distance between crops in pixels. Default 128 (a 512x512 photo gives 3x3 crops).
        strength: DiffPure strength of each pass, t*/T. Default 0.01 (``--pure_steps 10`` of 1000).
        steps: denoising steps per pass; None (default): every timestep (10), as the reference.
        iterations: purification rounds. Default 20 (``--pure_iter_num``).
        gamma: weight of the previous iterate in ``x <- (1 - gamma) x_pur + gamma x_prev``.
            Default 0.1 (``--gamma``).
        mosaic: also purify the mosaic of the four corners (default True, as the reference).
        batch_size: crops per denoising pass.
    """

    model: str = ""
    crop: int = 256
    stride: int = 128
    strength: float = 0.01
    steps: int | None = None
    iterations: int = 20
    gamma: float = 0.1
    mosaic: bool = True
    batch_size: int = 10

    def __post_init__(self) -> None:
        check_model(self.model, "gridpure", "a pixel DDPM such as a 256x256 guided-diffusion model, or Stable Diffusion")
        check_strength(self.strength, "gridpure")
        if self.crop < 8 or self.crop % 2:
            raise ConfigError(f"gridpure crop must be an even number of pixels >= 8, got {self.crop}")
        if not 1 <= self.stride <= self.crop:
            raise ConfigError(f"gridpure stride must be in 1..crop ({self.crop}), got {self.stride}")
        if not 0 <= self.gamma < 1:
            raise ConfigError(f"gridpure gamma must be in [0, 1), got {self.gamma}")
        for key in ("iterations", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"gridpure {key} must be at least 1, got {getattr(self, key)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"gridpure steps must be at least 1, got {self.steps}")


class GridPure(Purifier):
    """Purify overlapping crops plus the corner mosaic with DiffPure, average, blend, repeat.

    Each round: cut ``crop`` x ``crop`` crops every ``stride`` pixels (the last row and column
    flush with the border) and, with ``mosaic``, one crop made of the four ``crop/2`` corners;
    purify them all with a few DiffPure steps; average the overlapping pixels (the mosaic's
    quadrants count for their corners); blend ``x <- (1 - gamma) x_pur + gamma x_prev``.

    A photo whose short side is smaller than ``crop`` is enlarged (aspect kept) until it is
    ``crop``, purified, and reduced back: the model always sees crops at its own scale.

    Shape:
        (N, 3, H, W) float in [0, 1] -> same.

    Examples:
        >>> purified = GridPure(model="path/to/256x256-ddpm").purify(images)

    Differences from the reference code:
        The reference takes 512x512 images and the guided-diffusion checkpoint; here any size
        (crops flush with the border cover the rest) and any diffusers ``UNet2DModel`` or Stable
        Diffusion model. The straight-through estimator is its differentiable version.
    """

    name: ClassVar[str] = "gridpure"
    Config: ClassVar[type[GridPureConfig]] = GridPureConfig
    _denoiser: Any = None

    @property
    def denoiser(self) -> Any:
        """The loaded model (loaded on first use)."""
        if self._denoiser is None:
            # Stable Diffusion: DDPM ancestral steps, as the reference's guided-diffusion sampler.
            self._denoiser = load_denoiser(self.config.model, self.device, self.dtype, scheduler="ddpm")
            if self.config.crop % self._denoiser.multiple:
                raise ConfigError(
                    f"gridpure crop {self.config.crop} must be a multiple of {self._denoiser.multiple} for this model"
                )
        return self._denoiser

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        from facedefense.imaging import resize

        crop = self.config.crop
        height, width = images.shape[-2:]
        if min(height, width) >= crop:
            return self._rounds(images, generator)
        scale = crop / min(height, width)
        size = (max(crop, round(height * scale)), max(crop, round(width * scale)))
        return resize(self._rounds(resize(images, size).clamp(0, 1), generator), (height, width)).clamp(0, 1)

    def _rounds(self, images: Tensor, generator: torch.Generator) -> Tensor:
        from tqdm.auto import tqdm

        x = images.to(self.device)
        for _ in tqdm(range(self.config.iterations), desc="gridpure", leave=False, disable=None):
            x = (1 - self.config.gamma) * self._one_round(x, generator) + self.config.gamma * x
        return x.clamp(0.0, 1.0)

    def _one_round(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch

        config, crop, half = self.config, self.config.crop, self.config.crop // 2
        count, _, height, width = images.shape
        boxes = [(i, j) for i in crop_starts(height, crop, config.stride) for j in crop_starts(width, crop, config.stride)]
        pieces = [images[:, :, i : i + crop, j : j + crop] for i, j in boxes]
        corners = [(0, 0), (0, width - half), (height - half, 0), (height - half, width - half)]
        if config.mosaic:
            quads = [images[:, :, i : i + half, j : j + half] for i, j in corners]
            pieces.append(torch.cat([torch.cat(quads[:2], dim=3), torch.cat(quads[2:], dim=3)], dim=2))
        batch = torch.cat(pieces)  # piece-major: (len(pieces) * N, 3, crop, crop)
        purified = torch.cat([
            self.denoiser(chunk, config.strength, config.steps, generator).to(images.device)
            for chunk in batch.split(config.batch_size)
        ]).view(len(pieces), count, 3, crop, crop)
        total = torch.zeros_like(images)
        weight = torch.zeros_like(images[:, :1])
        for (i, j), piece in zip(boxes, purified):
            total[:, :, i : i + crop, j : j + crop] += piece
            weight[:, :, i : i + crop, j : j + crop] += 1
        if config.mosaic:
            mosaic = purified[-1]
            for index, (i, j) in enumerate(corners):
                row, col = divmod(index, 2)
                total[:, :, i : i + half, j : j + half] += mosaic[:, :, row * half : (row + 1) * half, col * half : (col + 1) * half]
                weight[:, :, i : i + half, j : j + half] += 1
        return total / weight
