"""IMPRESS: make the image consistent under the VAE's encode-decode, within an LPIPS bound.

Cao, Li, Zhang, Chen, Lyu, Yu, Chen, Xu. *IMPRESS: Evaluating the Resilience of Imperceptible
Perturbations Against Unauthorized Data Usage in Diffusion-Based Generative AI.* NeurIPS 2023.
Reference code: AAAAAAsuka/Impress (``impress.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from facedefense.errors import ConfigError
from facedefense.interfaces import Purifier, PurifierConfig
from facedefense.runtime import fused_adam, module_dtype
from facedefense_purifiers.diffpure import check_model
from facedefense_purifiers.gaussian_noise import check_sigma

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def lpips_features(model: Any, images: Tensor) -> list[Tensor]:
    """Unit-normalized VGG features of ``images`` in [-1, 1], as LPIPS v0.1 compares them."""
    import lpips

    return [lpips.normalize_tensor(f) for f in model.net.forward(model.scaling_layer(images))]


def lpips_distance(model: Any, features: list[Tensor], reference: list[Tensor]) -> Tensor:
    """Per-image LPIPS distance (N,) between two feature lists of `lpips_features`: what
    ``model(x, y)`` returns, with the reference's features computed once instead of every call."""
    total = 0
    for lin, a, b in zip(model.lins, features, reference):
        total = total + lin((a - b) ** 2).mean(dim=(2, 3))
    return total.flatten()


@dataclass
class ImpressConfig(PurifierConfig):
    """IMPRESS options (the reference's argument names in brackets). The reference optimizes the
    image in the VAE's range [-1, 1]; so does this purifier.

    Attributes:
        model: Stable Diffusion folder or id whose ``vae/`` is used.
        iterations: Adam steps. Default 1000 (the reference's setting against PhotoGuard; 3000 against Glaze).
        learning_rate: Adam's initial learning rate on the [-1, 1] image, cosine-annealed to 1e-5
            [``lr``]; as in the reference, so Adam's steps of about ``lr`` are half that in [0, 1]
            pixel units. Default 0.005.
        lpips_bound: LPIPS distance to the input allowed before the penalty starts [``eps``, Δ]. Default 0.1.
        alpha: weight of the LPIPS penalty [``pur_alpha``]. Default 0.01.
        sigma: standard deviation of the Gaussian noise of the start in [0, 1] pixel units. Default
            0.025: the reference's ``noise`` 0.05, which is in [-1, 1] units (0.1 against Glaze -> 0.05).
        lpips_weights: VGG16 backbone of LPIPS: torchvision's ``vgg16-397923af.pth`` (or the same
            tensors as ``.safetensors``); None (default): found in torch.hub's cache
            (``$TORCH_HOME/hub/checkpoints``); ``random``: seeded random weights (tests only).
        lpips_net: LPIPS backbone; only ``vgg`` (the reference's).
    """

    model: str = ""
    iterations: int = 1000
    learning_rate: float = 0.005
    lpips_bound: float = 0.1
    alpha: float = 0.01
    sigma: float = 0.025
    lpips_weights: str | None = None
    lpips_net: Literal["vgg"] = "vgg"

    def __post_init__(self) -> None:
        check_model(self.model, "impress", "a Stable Diffusion model; its VAE is used")
        check_sigma(self.sigma, "impress")
        if self.iterations < 1:
            raise ConfigError(f"impress iterations must be at least 1, got {self.iterations}")
        if self.learning_rate <= 0 or self.lpips_bound < 0 or self.alpha < 0:
            raise ConfigError("impress learning_rate must be > 0, lpips_bound and alpha >= 0")


class Impress(Purifier):
    """Find ``x_p`` near the protected image that the VAE reconstructs well.

    In the VAE's range [-1, 1] (the reference's), start from ``x_p = x + N(0, (2 sigma)^2)``, then
    minimize with Adam (cosine learning rate down to 1e-5), clamping to [-1, 1] after each step::

        || D(E(x_p)) - x_p ||^2  +  alpha * max(LPIPS(x_p, x) - lpips_bound, 0)

    Protective perturbations are not consistent under the VAE's encode-decode, so removing the
    inconsistency removes much of them. Per-image losses: batching changes nothing but speed. The
    input's LPIPS features are computed once, not at every iteration.

    Runs with gradients (``needs_grad``); the differentiable version is the straight-through default.

    Shape:
        (N, 3, H, W) float in [0, 1] -> same (optimized at the size rounded to a multiple of 8).

    Examples:
        >>> purifier = Impress(model="stable-diffusion-v1-5/stable-diffusion-v1-5")  # LPIPS-VGG from torch.hub's cache
        >>> purified = purifier.purify(images)

    Differences from the reference code:
        The reference runs in fp16 on one image; here the VAE runs in the method's dtype, the image
        in float32, a batch at once with per-image losses.
    """

    name: ClassVar[str] = "impress"
    Config: ClassVar[type[ImpressConfig]] = ImpressConfig
    needs_grad: ClassVar[bool] = True
    _vae: Any = None
    _lpips: Any = None

    def __init__(self, config: Any = None, **options: Any) -> None:
        from facedefense.diffusion import refuse_pixel_ddpm
        from facedefense_metrics.lpips import backbone_file

        super().__init__(config, **options)
        refuse_pixel_ddpm(self.config.model)  # before any output is written
        found = backbone_file(self.config.lpips_weights, self.config.lpips_net, "impress", "lpips_weights")  # likewise
        self._lpips_file = "random" if found is None else str(found)

    def _load(self) -> tuple[Any, Any]:
        if self._vae is None:
            from facedefense.diffusion import load_components
            from facedefense.models import shared_model

            self._vae = load_components(self.config.model, components=("vae",), device=self.device, dtype=self.dtype).vae
            self._lpips = shared_model("lpips", path=self._lpips_file, device=self.device, net=self.config.lpips_net)
        return self._vae, self._lpips

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch
        from tqdm.auto import tqdm

        from facedefense.imaging import from_vae_range, resize, to_vae_range, working_size

        vae, lpips = self._load()
        config = self.config
        height, width = images.shape[-2:]
        target = to_vae_range(resize(images.detach(), working_size(height, width, None, 8)).clamp(0, 1).to(self.device))
        with torch.no_grad():
            reference = lpips_features(lpips, target)  # constant: computed once
        noise = torch.randn(target.shape, generator=generator, device=generator.device).to(target)
        # In [-1, 1] units, like the reference: the noise's std is 2 sigma, Adam's steps about lr.
        purified = (target + 2 * config.sigma * noise).requires_grad_(True)
        optimizer = torch.optim.Adam([purified], lr=config.learning_rate, eps=1e-5, fused=fused_adam([purified]))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.iterations, eta_min=1e-5)
        with torch.enable_grad():
            for _ in tqdm(range(config.iterations), desc="impress", leave=False, disable=None):
                reconstruction = vae(purified.to(module_dtype(vae))).sample.float()
                consistency = (reconstruction - purified).pow(2).flatten(1).mean(1)
                distance = lpips_distance(lpips, lpips_features(lpips, purified), reference)
                loss = (consistency + config.alpha * (distance - config.lpips_bound).clamp(min=0)).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    purified.clamp_(-1.0, 1.0)
        return resize(from_vae_range(purified.detach()), (height, width)).clamp(0.0, 1.0).to(images.device)
