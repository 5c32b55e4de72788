"""GAP-Diff's training objective (Zhu et al., NDSS 2025; ``models/Network.py`` of AIASLab/GAP-Diff):
the generator maximizes Stable Diffusion's denoising loss on its protected images *after* a
randomly chosen preprocessing (differentiable JPEG, Gaussian blur or none), while a small
discriminator keeps them looking like photos.

Per step, with ``x_p = clamp(x + eps G(x))`` and a preprocessing P drawn per batch
(JPEG with probability 1/2, blur 1/4, identity 1/4, as the reference's list of four):

- discriminator: ``BCE(D(x), 1) + BCE(D(sg[P(x_p)]), 0)``;
- generator, first ``first_phase_epochs`` (40) epochs: ``-L_adv(P(x_p)) + 0.001 BCE(D(P(x_p)), 1)``;
  afterwards: ``-0.6 L_adv(x_p) - 0.4 L_adv(P(x_p)) + 0.001 BCE(D(P(x_p)), 1)``;

where ``L_adv`` is the denoising loss (noise target) of each frozen model, averaged over the models.

The discriminator shares one batch norm among its four convolutions and the batch is 6 images
per process, as in the reference. Differences from the reference code (docs/methods/gap_diff.md,
Fidelity, gives each reason): Gaussian noise in the denoising loss (the reference draws
``torch.rand_like``, uniform in [0, 1)); the JPEG simulation exposes its kept coefficients (5x5
luma, 3x3 chroma) instead of an unused quality; any number of models (the reference uses SD
2.1-base alone); budgets in [0, 1] units (``per16`` is 8/255); a checkpoint every ``--save-every``
steps and at the end (the reference keeps the epoch of lowest mean loss); an epoch's last
incomplete batch is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import Tensor

    from facedefense_amortized.training.surrogates import Surrogate

PROMPT = "a photo of sks person"


@dataclass
class GAPTrainingOptions:
    """``-o`` options of ``facedefense train --method gap_diff``.

    Attributes:
        lr: Adam learning rate of generator and discriminator. Default 1e-3 (reference).
        epochs: training epochs when ``--steps`` is not given. Default 50 (reference: 40 + 10).
        first_phase_epochs: epochs trained on preprocessed images only. Default 40 (reference).
        clean_weight, processed_weight: the second phase's weights of the adversarial loss on the
            protected and the preprocessed protected images. Defaults 0.6 and 0.4 (reference).
        discriminator_weight: weight of the generator's adversarial (realism) term. Default 0.001.
        luma_coefficients, chroma_coefficients: DCT coefficients (per 8x8 block side) the JPEG
            simulation keeps. Defaults 5 and 3 (reference).
        blur_sigma: the blur's standard deviation in pixels (7x7 kernel). Default 2 (reference).
        size: training image side, a multiple of 256, at least 512. Default 512 (reference).
        surrogate_size: side at which the diffusion models see the images (resized, differentiably).
            Default 0: the training size (reference). Smaller sizes make CPU tests affordable.
        discriminator_width: the discriminator's channels. Default 64 (reference).
        prompt: the surrogate's prompt. Default ``"a photo of sks person"`` (reference).
        architecture: overrides of the generator architecture (``ngf=8`` for tests).
    """

    lr: float = 1e-3
    epochs: int = 50
    first_phase_epochs: int = 40
    clean_weight: float = 0.6
    processed_weight: float = 0.4
    discriminator_weight: float = 0.001
    luma_coefficients: int = 5
    chroma_coefficients: int = 3
    blur_sigma: float = 2.0
    size: int = 512
    surrogate_size: int = 0
    discriminator_width: int = 64
    prompt: str = PROMPT
    architecture: str = ""

    def __post_init__(self) -> None:
        from facedefense.errors import ConfigError

        if not self.lr > 0 or self.epochs < 1 or self.first_phase_epochs < 0:
            raise ConfigError("gap_diff: lr must be positive, epochs at least 1 and first_phase_epochs at least 0")
        if min(self.clean_weight, self.processed_weight, self.discriminator_weight) < 0 or not self.blur_sigma > 0:
            raise ConfigError("gap_diff: the loss weights must be at least 0 and blur_sigma positive")
        if not (1 <= self.luma_coefficients <= 8 and 1 <= self.chroma_coefficients <= 8):
            raise ConfigError("gap_diff: luma_coefficients and chroma_coefficients must be from 1 to 8 (an 8x8 block)")
        if self.size < 512 or self.size % 256 or self.size > MAX_SIZE:
            raise ConfigError(f"gap_diff: size must be a multiple of 256 from 512 to {MAX_SIZE}, got {self.size}")
        if self.surrogate_size and not (8 <= self.surrogate_size <= MAX_SIZE and self.surrogate_size % 8 == 0):
            raise ConfigError(f"gap_diff: surrogate_size must be 0 or a multiple of 8 from 8 to {MAX_SIZE}, got {self.surrogate_size}")
        if not 1 <= self.discriminator_width <= 1024:
            raise ConfigError(f"gap_diff: discriminator_width must be from 1 to 1024, got {self.discriminator_width}")


#: Largest training and surrogate image side, in pixels.
MAX_SIZE = 4096


def _dct_matrix(size: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II matrix D: coefficients = D @ block @ D^T."""
    import torch

    k = torch.arange(size, dtype=torch.float64)[:, None]
    n = torch.arange(size, dtype=torch.float64)[None]
    matrix = torch.cos(math.pi * (2 * n + 1) * k / (2 * size)) * math.sqrt(2 / size)
    matrix[0] /= math.sqrt(2)
    return matrix.float()


#: JFIF RGB -> YCbCr (no offset: the transform is linear, as in the reference's HiDDeN layer).
_YCBCR = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]


class JpegMask:
    """Differentiable JPEG simulation (HiDDeN's JpegMask): RGB -> YCbCr, blockwise 8x8 DCT, keep
    the top-left ``luma`` x ``luma`` coefficients of Y and ``chroma`` x ``chroma`` of Cb and Cr,
    inverse DCT, back to RGB. Linear; no quantization tables.

    Shape:
        (N, 3, H, W) in [-1, 1] -> same shape in [-1, 1] (zero-padded to multiples of 8 inside).
    """

    def __init__(self, luma: int = 5, chroma: int = 3) -> None:
        import torch

        self.dct = _dct_matrix()
        self.mask = torch.zeros(3, 8, 8)
        self.mask[0, :luma, :luma] = 1
        self.mask[1:, :chroma, :chroma] = 1
        self.to_ycbcr = torch.tensor(_YCBCR)
        self.to_rgb = torch.linalg.inv(self.to_ycbcr)

    def __call__(self, images: Tensor) -> Tensor:
        import torch
        import torch.nn.functional as F

        height, width = images.shape[-2:]
        x = F.pad(images, (0, -width % 8, 0, -height % 8))
        dct, mask = self.dct.to(x), self.mask.to(x)
        x = torch.einsum("ij,njhw->nihw", self.to_ycbcr.to(x), x)
        n, c, h, w = x.shape
        blocks = x.reshape(n, c, h // 8, 8, w // 8, 8)
        coefficients = torch.einsum("ij,nchjwk,lk->nchiwl", dct, blocks, dct) * mask[None, :, None, :, None, :]
        blocks = torch.einsum("ji,nchjwk,kl->nchiwl", dct, coefficients, dct)
        x = torch.einsum("ij,njhw->nihw", self.to_rgb.to(x), blocks.reshape(n, c, h, w))
        return x[..., :height, :width].clamp(-1, 1)


class GaussianBlur:
    """Separable Gaussian blur, ``size`` x ``size`` kernel, reflected borders."""

    def __init__(self, sigma: float = 2.0, size: int = 7) -> None:
        import torch

        offsets = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
        self.kernel, self.size = kernel / kernel.sum(), size

    def __call__(self, images: Tensor) -> Tensor:
        import torch.nn.functional as F

        channels, pad = images.shape[1], self.size // 2
        kernel = self.kernel.to(images)
        x = F.pad(images, (pad, pad, pad, pad), mode="reflect")
        x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def build_discriminator(width: int = 64) -> Any:
    """GAP-Diff's discriminator (``models/Discriminator.py``, ``Discriminator(4, 3)``): conv3x3(3->64),
    then one conv3x3(64->64) applied three times, each convolution followed by the *same* batch norm
    and a ReLU, global average pooling, Linear(64->1) logit (about 39k parameters at width 64).

    The parameter names are the reference's (``conv_init``, ``conv``, ``bn``, ``linear``), so its
    ``D_per16.pth`` state dict loads with ``strict=True``.
    """
    from torch import nn

    class Discriminator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv_init = nn.Conv2d(3, width, 3, padding=1)
            self.conv = nn.Conv2d(width, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)  # one norm for all four convolutions, as the reference
            self.relu = nn.ReLU(inplace=True)
            self.linear = nn.Linear(width, 1)

        def forward(self, x):
            x = self.relu(self.bn(self.conv_init(x)))
            for _ in range(3):
                x = self.relu(self.bn(self.conv(x)))
            return self.linear(x.mean(dim=(2, 3)))

    return Discriminator()


class GAPObjective:
    """GAP-Diff's generator and discriminator losses for one batch (see the module docstring).

    Args:
        network: the ``GAPGenerator`` being trained.
        discriminator: from ``build_discriminator``.
        surrogates: the frozen models.
        eps: budget in [0, 1] units.
        options: ``GAPTrainingOptions``.
    """

    def __init__(self, network: Any, discriminator: Any, surrogates: list[Surrogate], eps: float, options: GAPTrainingOptions) -> None:
        self.network, self.discriminator, self.surrogates = network, discriminator, surrogates
        self.eps, self.options = eps, options
        jpeg = JpegMask(options.luma_coefficients, options.chroma_coefficients)
        # The reference lists JpegMask(50) and JpegMask(70), the same function: JPEG half the time.
        self.processings = [
            ("jpeg", jpeg),
            ("jpeg", jpeg),
            ("blur", GaussianBlur(options.blur_sigma)),
            ("identity", lambda x: x),
        ]

    def adversarial(self, images: Tensor, generator: torch.Generator, autocast: Any) -> Tensor:
        """Mean denoising loss of the models on ``images`` ([-1, 1]); differentiable to the images."""
        import torch
        import torch.nn.functional as F

        from facedefense_amortized.training.surrogates import draw, encode, predict_noise

        side = self.options.surrogate_size
        if side and side != images.shape[-1]:
            images = F.interpolate(images, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        losses = []
        for surrogate in self.surrogates:
            with autocast():
                latents = encode(surrogate, images, generator)
                timesteps, noise = draw(surrogate, latents, generator)
                noisy = surrogate.scheduler.add_noise(latents, noise, timesteps)
                losses.append(F.mse_loss(predict_noise(surrogate, noisy, timesteps), noise.float()))
        return torch.stack(losses).mean()

    def pick(self, generator: torch.Generator) -> tuple[str, Any]:
        import torch

        index = int(torch.randint(0, len(self.processings), (1,), generator=generator, device=generator.device))
        return self.processings[index]

    def protected(self, images: Tensor, autocast: Any) -> Tensor:
        x = images * 2 - 1
        with autocast():
            direction = self.network(x).float()
        return (x + 2 * self.eps * direction).clamp(-1, 1)

    def discriminator_loss(self, images: Tensor, processed: Tensor) -> Tensor:
        import torch
        import torch.nn.functional as F

        real = self.discriminator(images * 2 - 1)
        fake = self.discriminator(processed.detach())
        return F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(
            fake, torch.zeros_like(fake)
        )

    def generator_loss(
        self, protected: Tensor, processed: Tensor, epoch: int, generator: torch.Generator, autocast: Any
    ) -> dict[str, Tensor]:
        import torch
        import torch.nn.functional as F

        options = self.options
        logits = self.discriminator(processed)
        terms = {"adv_processed": self.adversarial(processed, generator, autocast)}
        terms["realism"] = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        if epoch < options.first_phase_epochs:
            adversarial = terms["adv_processed"]
        else:
            terms["adv_clean"] = self.adversarial(protected, generator, autocast)
            adversarial = options.clean_weight * terms["adv_clean"] + options.processed_weight * terms["adv_processed"]
        # the generator ascends the denoising loss (descends its negative) and looks real to D
        terms["loss"] = -adversarial + options.discriminator_weight * terms["realism"]
        return terms


def build_network(architecture: dict[str, Any]) -> Any:
    from facedefense.errors import ConfigError
    from facedefense_amortized.networks import GAPGenerator

    try:
        return GAPGenerator(**architecture)
    except TypeError as exc:
        raise ConfigError(f"gap_diff: bad architecture {architecture}: {exc}") from None


class GAPTrainer:
    """Adam on generator and discriminator, discriminator step first (the loop's ``Trainer``)."""

    def __init__(self, network, surrogates, eps, options: GAPTrainingOptions, pairs, accelerator, settings) -> None:
        import torch

        from facedefense.runtime import fused_adam
        from facedefense_amortized.training.loop import autocast_for

        discriminator = build_discriminator(options.discriminator_width).to(accelerator.device).train()
        weights, weights_d = list(network.parameters()), list(discriminator.parameters())
        optimizer = torch.optim.Adam(weights, lr=options.lr, fused=fused_adam(weights))
        optimizer_d = torch.optim.Adam(weights_d, lr=options.lr, fused=fused_adam(weights_d))
        self.network, self.discriminator, self.optimizer, self.optimizer_d = accelerator.prepare(
            network, discriminator, optimizer, optimizer_d
        )
        self.objective = GAPObjective(self.network, self.discriminator, surrogates, eps, options)
        self.accelerator, self.autocast = accelerator, autocast_for(accelerator)

    def step(self, images, step: int, epoch: int, generator, *, indices=None) -> dict[str, Any]:
        processing, function = self.objective.pick(generator)
        protected = self.objective.protected(images, self.autocast)
        processed = function(protected)
        loss_d = self.objective.discriminator_loss(images, processed)
        self.optimizer_d.zero_grad(set_to_none=True)
        self.accelerator.backward(loss_d)
        self.optimizer_d.step()
        terms = self.objective.generator_loss(protected, processed, epoch, generator, self.autocast)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(terms["loss"])
        self.optimizer.step()
        values = {name: float(value.detach()) for name, value in terms.items()}
        values["discriminator"] = float(loss_d.detach())
        values["processing"] = processing
        return values

    def state_dict(self) -> dict[str, Any]:
        discriminator = self.accelerator.unwrap_model(self.discriminator)
        return {
            "optimizer": self.optimizer.state_dict(),
            "optimizer_d": self.optimizer_d.state_dict(),
            "discriminator": {k: v.detach().cpu().clone() for k, v in discriminator.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accelerator.unwrap_model(self.discriminator).load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])


def _image_size(architecture: dict[str, Any], options: GAPTrainingOptions) -> int:
    return options.size  # checked with the options


def _recipe():
    from facedefense_amortized.networks import GAPGenerator
    from facedefense_amortized.training.loop import Recipe

    return Recipe(
        method="gap_diff",
        Options=GAPTrainingOptions,
        default_architecture={},
        build_network=build_network,
        image_size=_image_size,
        default_steps=lambda options, steps_per_epoch: options.epochs * steps_per_epoch,
        build_trainer=GAPTrainer,
        prompt=lambda options: options.prompt,
        default_batch_size=6,  # scripts/train_generator.sh (train_generator.py's own default is 4)
        network_class=GAPGenerator,
    )
