"""IMPRESS: make the image consistent under the VAE's encode-decode, within an LPIPS bound.

Cao, Li, Zhang, Chen, Lyu, Yu, Chen, Xu. *IMPRESS: Evaluating the Resilience of Imperceptible
Perturbations Against Unauthorized Data Usage in Diffusion-Based Generative AI.* NeurIPS 2023.
Reference code: AAAAAAsuka/Impress (``impress.py``).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from facedefense.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from facedefense.interfaces import Purifier, PurifierConfig
from facedefense_purifiers.diffpure import check_model
from facedefense_purifiers.gaussian_noise import check_sigma

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: torchvision's ``features`` indices of each LPIPS slice (VGG16: conv1_2, conv2_2, conv3_3, conv4_3, conv5_3).
_VGG_SLICES = {1: range(0, 4), 2: range(4, 9), 3: range(9, 16), 4: range(16, 23), 5: range(23, 30)}
#: Indices of VGG16's convolutions in ``features`` (the only layers with weights).
_VGG_CONVS = {0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28}


@functools.lru_cache(maxsize=2)
def build_lpips(weights: str, device: torch.device) -> Any:
    """LPIPS-VGG (Zhang et al., CVPR 2018) with its linear heads from the ``lpips`` wheel and the
    VGG16 backbone from ``weights``: a torchvision ``vgg16`` state dict (``vgg16-397923af.pth``, or
    the same tensors as ``.safetensors``), or ``"random"`` (seeded random weights, for tests).

    Returns:
        the frozen ``lpips.LPIPS`` module in eval mode; it takes images in [-1, 1]. Built once per
        (weights, device) and process.

    Raises:
        MissingDependencyError: ``lpips`` (the ``metrics`` extra) is not installed.
        ModelNotFoundError: the weights file is missing or does not hold VGG16's features.
    """
    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable

    try:
        ensure_torchvision_importable()
        import lpips
    except ImportError as exc:
        raise MissingDependencyError("impress needs the lpips package: pip install 'facedefense[metrics]'") from exc
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation of `pretrained=`, used by lpips
        torch.manual_seed(0)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    if weights != "random":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"LPIPS backbone weights '{weights}' not found; pass torchvision's vgg16-397923af.pth")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
            mapped = {
                f"slice{k}.{i}.{p}": state[f"features.{i}.{p}"]
                for k, indices in _VGG_SLICES.items() for i in indices if i in _VGG_CONVS for p in ("weight", "bias")
            }
            model.net.load_state_dict(mapped, strict=True)
        except Exception as exc:  # an unreadable or foreign file: one line, the user's to fix
            raise ModelNotFoundError(
                f"LPIPS backbone weights '{weights}' are not torchvision's VGG16 ({str(exc).splitlines()[0][:120]})"
            ) from exc
    return model.to(device).eval().requires_grad_(False)


@dataclass
class ImpressConfig(PurifierConfig):
    """IMPRESS options (the reference's argument names in brackets).

    Attributes:
        model: Stable Diffusion folder or id whose ``vae/`` is used.
        iterations: Adam steps. Default 1000 (the reference's setting against PhotoGuard; 3000 against Glaze).
        learning_rate: Adam's initial learning rate, cosine-annealed to 1e-5 [``lr``]. Default 0.005.
        lpips_bound: LPIPS distance to the input allowed before the penalty starts [``eps``, Δ]. Default 0.1.
        alpha: weight of the LPIPS penalty [``pur_alpha``]. Default 0.01.
        sigma: standard deviation of the Gaussian noise of the start, [0, 1] units [``noise``]. Default 0.05.
        lpips_weights: VGG16 backbone weights of LPIPS: a file (torchvision's
            ``vgg16-397923af.pth``) or ``random`` (seeded random weights, for tests only).
        lpips_net: LPIPS backbone; only ``vgg`` (the reference's).
    """

    model: str = ""
    iterations: int = 1000
    learning_rate: float = 0.005
    lpips_bound: float = 0.1
    alpha: float = 0.01
    sigma: float = 0.05
    lpips_weights: str = ""
    lpips_net: Literal["vgg"] = "vgg"

    def __post_init__(self) -> None:
        check_model(self.model, "impress", "a Stable Diffusion model; its VAE is used")
        check_sigma(self.sigma, "impress")
        if not self.lpips_weights:
            raise ConfigError("impress needs lpips_weights=PATH (torchvision's vgg16-397923af.pth) for its LPIPS bound")
        if self.iterations < 1:
            raise ConfigError(f"impress iterations must be at least 1, got {self.iterations}")
        if self.learning_rate <= 0 or self.lpips_bound < 0 or self.alpha < 0:
            raise ConfigError("impress learning_rate must be > 0, lpips_bound and alpha >= 0")


class Impress(Purifier):
    """Find ``x_p`` near the protected image that the VAE reconstructs well.

    Start from ``x_p = x + N(0, sigma^2)``, then minimize with Adam (cosine learning rate down to
    1e-5), clamping to [0, 1] after each step::

        || D(E(x_p)) - x_p ||^2  +  alpha * max(LPIPS(x_p, x) - lpips_bound, 0)

    Protective perturbations are not consistent under the VAE's encode-decode, so removing the
    inconsistency removes much of them. Per-image losses: batching changes nothing but speed.

    Runs with gradients (``needs_grad``); the differentiable version is the straight-through default.

    Shape:
        (N, 3, H, W) float in [0, 1] -> same (optimized at the size rounded to a multiple of 8).

    Example:
        >>> purifier = Impress(model="stable-diffusion-v1-5/stable-diffusion-v1-5", lpips_weights="vgg16-397923af.pth")
        >>> purified = purifier.purify(images)

    Differences from the reference code:
        The reference runs in fp16 on one image; here the VAE runs in the method's dtype, the images
        in float32, a batch at once with per-image losses. The mean squared error is taken in the
        VAE's input range [-1, 1] and LPIPS gets [-1, 1] images, as both networks expect.
    """

    name: ClassVar[str] = "impress"
    Config: ClassVar[type[ImpressConfig]] = ImpressConfig
    needs_grad: ClassVar[bool] = True
    _vae: Any = None
    _lpips: Any = None

    def __init__(self, config: Any = None, **options: Any) -> None:
        from facedefense.diffusion import refuse_pixel_ddpm

        super().__init__(config, **options)
        refuse_pixel_ddpm(self.config.model)  # before any output is written

    def _load(self) -> tuple[Any, Any]:
        if self._vae is None:
            from facedefense.diffusion import load_components

            self._vae = load_components(self.config.model, components=("vae",), device=self.device, dtype=self.dtype).vae
            self._lpips = build_lpips(self.config.lpips_weights, self.device)
        return self._vae, self._lpips

    def _purify(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch
        from tqdm.auto import tqdm

        from facedefense.imaging import resize, to_vae_range, working_size

        vae, lpips = self._load()
        config = self.config
        height, width = images.shape[-2:]
        target = resize(images.detach(), working_size(height, width, None, 8)).clamp(0, 1).to(self.device)
        target_vae = to_vae_range(target)
        noise = torch.randn(target.shape, generator=generator, device=generator.device).to(target)
        purified = (target + config.sigma * noise).requires_grad_(True)
        optimizer = torch.optim.Adam([purified], lr=config.learning_rate, eps=1e-5)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.iterations, eta_min=1e-5)
        with torch.enable_grad():
            for _ in tqdm(range(config.iterations), desc="impress", leave=False, disable=None):
                scaled = to_vae_range(purified)
                reconstruction = vae(scaled.to(vae.dtype)).sample.float()
                consistency = (reconstruction - scaled).pow(2).flatten(1).mean(1)
                distance = lpips(scaled, target_vae).flatten()
                loss = (consistency + config.alpha * (distance - config.lpips_bound).clamp(min=0)).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    purified.clamp_(0.0, 1.0)
        return resize(purified.detach(), (height, width)).clamp(0.0, 1.0).to(images.device)
