"""RID, Real-time Identity Defender (Guo et al., "Real-time Identity Defenses against Malicious
Personalization of Diffusion Models", arXiv:2412.09844)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.checkpoints import load_defender_network
from facedefense.errors import ConfigError
from facedefense.imaging import resize, to_vae_range
from facedefense.interfaces import AmortizedDefender, AmortizedDefenderConfig

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import Tensor

OFFICIAL_NAME = r"eps-?(\d+(?:\.\d+)?)_255"
WHERE_TO_GET = (
    "rid needs --checkpoint: the official RID weights (ASDS-eps-6_255.bin, ASDS-eps-8_255.bin, "
    "ASDS-eps-12_255.bin, ...) are linked from the README of github.com/Guohanzhong/RID (Google Drive); "
    "download one and pass its path"
)
QUANTIZE = ("auto", "int8", "none")


@dataclass
class RIDConfig(AmortizedDefenderConfig):
    """RID options.

    Attributes:
        checkpoint: path of the network weights (official ``.bin`` or facedefense ``.safetensors``).
        eps: L-infinity budget in [0, 1] units. Default None: the budget the checkpoint was trained
            for (official ``eps-12_255`` is 6/255 here, since the reference works in [-1, 1]). A
            different value is refused.
        quantize: ``"int8"`` runs the transformer's linear layers as oneDNN int8 products (about
            2.5x faster than fp32 on CPUs with VNNI but without bf16 matrix units, within a tenth of
            a gray level of fp32 at RID's budgets); ``"none"`` keeps ``dtype``; ``"auto"`` (default)
            uses int8 on such CPUs when ``dtype`` is ``"auto"``.
    """

    quantize: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.quantize not in QUANTIZE:
            raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE)}, got {self.quantize!r}")


class RID(AmortizedDefender):
    """Protect photos in one forward pass of RID's perturbation network.

    The network (a 342M-parameter DiT without conditioning, 16x16 patches at 512x512) predicts
    ``delta = eps * tanh(f(x))``: trained against an ensemble of Stable Diffusion models with an
    adversarial score-distillation loss (and regression to ASPL perturbations), it costs one forward
    pass instead of hundreds of optimization steps.

    Args:
        checkpoint, eps, quantize: see :class:`RIDConfig`.

    Shape:
        (N, 3, H, W) in [0, 1], any size: the network sees the photo resized to 512x512 and its
        perturbation is resized back to H x W (the original resolution and aspect are kept).

    Example:
        >>> rid = RID(checkpoint="ASDS-eps-8_255.bin")     # eps = 4/255 in [0, 1] units
        >>> protected = rid.protect(images).images

    Differences from the reference code:
        no center crop (resolution and aspect kept); budgets in [0, 1] units, read from the
        checkpoint; the zero-conditioning adaLN products are skipped (identical output); bf16 or
        int8 weights where they are faster; batched; PNG output with the original names.
    """

    name: ClassVar[str] = "rid"
    Config: ClassVar[type[RIDConfig]] = RIDConfig
    cpu_bf16: ClassVar[bool] = True

    def __init__(self, config: RIDConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        loaded = self._load()
        self.config = self.config.replace(eps=loaded.eps)
        self.budget_source = loaded.budget_source
        self.architecture = loaded.architecture
        self.input_size = loaded.architecture["input_size"]
        self._network: torch.nn.Module | None = loaded.network.eval().requires_grad_(False)
        self.engine = self._optimize(self._network)
        if self.engine is not self._network:
            self._network = None  # consumed by the int8 engine; reloaded on demand by .network

    def _load(self):
        from facedefense_amortized.networks import RID_ARCHITECTURE, PerturbationDiT

        return load_defender_network(
            "rid",
            self.config.checkpoint,
            PerturbationDiT,
            eps=self.config.eps,
            name_pattern=OFFICIAL_NAME,
            where_to_get=WHERE_TO_GET,
            defaults=RID_ARCHITECTURE,
        )

    @property
    def network(self) -> torch.nn.Module:
        """The trainable fp32 :class:`PerturbationDiT` (for training and export).

        When the int8 engine consumed the loaded weights, they are read again from the checkpoint on
        first access, so inference alone never holds both copies.
        """
        if self._network is None:
            self._network = self._load().network.eval().requires_grad_(False)
        return self._network

    def _optimize(self, network: torch.nn.Module) -> Callable[[Tensor], Tensor]:
        import torch

        from facedefense_amortized.networks.dit import Int8DiT, int8_supported

        use_int8 = self.config.quantize == "int8" or (
            self.config.quantize == "auto"
            and self.config.dtype == "auto"
            and self.device.type == "cpu"
            and self.dtype == torch.float32
            and int8_supported()
        )
        if use_int8:
            if self.device.type != "cpu":
                raise ConfigError("rid: quantize=int8 runs on the CPU only; use --dtype bfloat16 on a GPU")
            if not int8_supported():
                raise ConfigError("rid: this torch build has no oneDNN int8 kernels; use -o quantize=none")
            self.input_dtype = torch.float32
            return Int8DiT(network)
        self.input_dtype = self.dtype
        return network.to(device=self.device, dtype=self.dtype)

    def _perturb(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch

        size = (self.input_size, self.input_size)
        with torch.inference_mode():
            inputs = to_vae_range(resize(images, size)).to(self.device, self.input_dtype)
            delta = self.config.eps * torch.tanh(self.engine(inputs).float())
        return images + resize(delta, tuple(images.shape[-2:]))
