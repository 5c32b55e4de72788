"""JPEG re-compression, the cheapest purification an adversary can apply."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces import Purifier, PurifierConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor


@dataclass
class JPEGConfig(PurifierConfig):
    """JPEG options.

    Attributes:
        quality: JPEG quality, 1-100. Default 75 (RID's ``post_jpeg.py``; GAP-Diff's ``jpeg.sh``
            uses 70).
        subsampling: chroma subsampling of the real codec: ``"4:2:0"`` (PIL's default),
            ``"4:2:2"`` or ``"4:4:4"``.
    """

    quality: int = 75
    subsampling: str = "4:2:0"

    def __post_init__(self) -> None:
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"jpeg quality must be in 1..100, got {self.quality}")
        if self.subsampling not in _SUBSAMPLING:
            raise ConfigError(f"jpeg subsampling must be one of {', '.join(_SUBSAMPLING)}, got {self.subsampling}")


_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}


class JPEG(Purifier):
    """Encode and decode each image as JPEG.

    ``purify`` runs the real codec (PIL/libjpeg, 8-bit), exactly what a social network or an
    attacker's script does. ``purify_differentiable`` runs kornia's differentiable JPEG
    (Reich et al., "Differentiable JPEG: The Devil is in the Details", WACV 2024), so a defender can
    optimize through JPEG (expectation over transformation).

    Shape:
        (N, 3, H, W) float in [0, 1] -> same.

    Examples:
        >>> purified = JPEG(quality=70).purify(protected_images)
    """

    name: ClassVar[str] = "jpeg"
    Config: ClassVar[type[JPEGConfig]] = JPEGConfig
    differentiable: ClassVar[bool] = True

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import numpy as np
        import torch
        from PIL import Image

        from facedefense.io import to_uint8

        decoded = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(to_uint8(image)).save(
                buffer, format="JPEG", quality=self.config.quality, subsampling=_SUBSAMPLING[self.config.subsampling]
            )
            buffer.seek(0)
            decoded.append(np.asarray(Image.open(buffer).convert("RGB")))
        stacked = torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2)
        return stacked.to(images.device, torch.float32) / 255.0

    def purify_differentiable(self, images: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Differentiable JPEG approximation (kornia), same shape and range as the input."""
        import torch
        from kornia.enhance import jpeg_codec_differentiable

        quality = torch.tensor([float(self.config.quality)], device=images.device)
        return jpeg_codec_differentiable(images, quality).clamp(0.0, 1.0)
