"""``example_texture``: a seeded high-frequency texture at the full L-infinity budget, no model needed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from facedefense import Defender, DefenderConfig
from facedefense.config import option


@dataclass
class ExampleTextureConfig(DefenderConfig):
    """Options of ``example_texture`` (besides ``eps``, ``device``, ``dtype`` and ``seed``).

    Attributes:
        pattern: ``"noise"``: random noise minus its 3x3 local mean (high-pass), one draw per
            image; ``"checker"``: a checkerboard whose sign is drawn per image and channel.
            Default: ``"noise"``.
        cell: side of one texture cell in pixels, 1 to 256; 1 is the highest frequency. Default: 1.
    """

    pattern: Literal["noise", "checker"] = "noise"
    cell: int = option(1, min=1, max=256)


class ExampleTexture(Defender):
    """Add ``eps * sign(texture)``: every pixel and channel moves by the full budget, in a
    high-frequency pattern that depends only on the seed.

    It is not optimized against any model, so on its own it is a baseline, not a protection: an
    optimized defender must do better at the same budget, and ``facedefense purify --method jpeg``
    shows how much of a high-frequency texture compression removes. It is also the template of a
    defender: a ``Config`` dataclass and one hook, ``_perturb``; the base class checks the
    input, projects onto the budget and rounds to 8 bits inside it.

    Shape:
        (N, 3, H, W) float in [0, 1] -> same, within ``eps`` after 8-bit rounding.

    Examples:
        >>> ExampleTexture(eps=4 / 255, pattern="checker", cell=2, seed=1).protect(images).images
    """

    name: ClassVar[str] = "example_texture"
    Config: ClassVar[type[ExampleTextureConfig]] = ExampleTextureConfig

    def _perturb(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        count, _, height, width = images.shape
        cell = self.config.cell
        rows, cols = -(-height // cell), -(-width // cell)
        if self.config.pattern == "checker":
            board = (torch.arange(rows)[:, None] + torch.arange(cols)[None, :]) % 2 * 2 - 1
            signs = torch.randint(0, 2, (count, 3, 1, 1), generator=generator, device=generator.device) * 2 - 1
            texture = board.to(signs.device) * signs
        else:
            noise = torch.randn((count, 3, rows, cols), generator=generator, device=generator.device)
            texture = torch.sign(noise - F.avg_pool2d(noise, 3, stride=1, padding=1, count_include_pad=False))
        texture = texture.repeat_interleave(cell, dim=-2).repeat_interleave(cell, dim=-1)[..., :height, :width]
        adversarial = images + self.config.eps * texture.to(images)
        # Reported in the manifest: the share of values that [0, 1] clipping keeps below the budget.
        clipped = ((adversarial < 0) | (adversarial > 1)).flatten(1).float().mean(dim=1)
        return adversarial, [{"clipped_fraction": round(float(share), 4)} for share in clipped]
