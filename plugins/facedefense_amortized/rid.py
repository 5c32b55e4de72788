"""RID, Real-time Identity Defender (Guo et al., "Real-time Identity Defenses against Malicious
Personalization of Diffusion Models", arXiv:2412.09844)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.checkpoints import load_defender_network
from facedefense.errors import ConfigError
from facedefense.imaging import resize, to_vae_range
from facedefense.interfaces import AmortizedDefender, AmortizedDefenderConfig
from facedefense_amortized.common import check_runtime, onnx_engine, uses_onnx

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from torch import Tensor

    from facedefense.autotune import Choice
    from facedefense.checkpoints import LoadedNetwork

OFFICIAL_NAME = r"eps-?(\d+(?:\.\d+)?)_255"
WHERE_TO_GET = (
    "rid needs --checkpoint: the official RID weights (ASDS-eps-6_255.bin, ASDS-eps-8_255.bin, "
    "ASDS-eps-12_255.bin, ...) are linked from the README of github.com/Guohanzhong/RID (Google Drive); "
    "download one and pass its path"
)
ENGINES = ("auto", "module", "float32", "bfloat16", "float16", "int8", "int8+bf16")


@dataclass
class RIDConfig(AmortizedDefenderConfig):
    """RID options.

    Attributes:
        checkpoint: path of the network weights (official ``.bin``, facedefense ``.safetensors``, or
            an ``.onnx`` file written by ``facedefense export``).
        eps: L-infinity budget in [0, 1] units. Default None: the budget the checkpoint was trained
            for (official ``eps-12_255`` is 6/255 here, since the reference works in [-1, 1]). A
            different value is refused.
        engine: how the network runs. ``"auto"`` (default): on a CPU with ``--dtype auto`` the
            fastest of the engine's paths as measured on this machine (once, then cached: see
            ``facedefense info --hardware``), elsewhere the engine's path of ``--dtype`` (on a GPU
            bf16, or fp16 without bf16); ``"float32"``, ``"bfloat16"``, ``"int8"`` (CPU: int8
            linears, fp32 attention), ``"int8+bf16"`` (CPU: int8 linears, bf16 attention) or
            ``"float16"`` (GPU) force a path of the engine; ``"module"`` runs the PyTorch module
            itself in ``--dtype``.
        runtime: ``"auto"`` (default: ONNX Runtime for an ``.onnx`` checkpoint, else PyTorch),
            ``"torch"`` or ``"onnx"``.
    """

    engine: str = "auto"
    runtime: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        check_runtime(self.runtime)


class RID(AmortizedDefender):
    """Protect photos in one forward pass of RID's perturbation network.

    The network (a 342M-parameter DiT without conditioning, 16x16 patches at 512x512) predicts
    ``delta = eps * tanh(f(x))``: trained against an ensemble of Stable Diffusion models with an
    adversarial score-distillation loss (and regression to ASPL perturbations), it costs one forward
    pass instead of hundreds of optimization steps.

    Args:
        checkpoint, eps, engine, runtime: see ``RIDConfig``.

    Shape:
        (N, 3, H, W) in [0, 1], any size: the network sees the photo resized to 512x512 and its
        perturbation is resized back to H x W (the original resolution and aspect are kept).

    Examples:
        >>> rid = RID(checkpoint="ASDS-eps-8_255.bin")     # eps = 4/255 in [0, 1] units
        >>> protected = rid.protect(images).images

    Differences from the reference code:
        no center crop (resolution and aspect kept); budgets in [0, 1] units, read from the
        checkpoint; the zero-conditioning adaLN products are skipped (identical output); bf16 or
        int8 products where they are faster; batched; PNG output with the original names.
    """

    name: ClassVar[str] = "rid"
    Config: ClassVar[type[RIDConfig]] = RIDConfig
    cpu_bf16: ClassVar[bool] = True

    def __init__(self, config: RIDConfig | None = None, **options: Any) -> None:
        super().__init__(config, **options)
        self._network: torch.nn.Module | None = None
        #: How ``engine`` was chosen (``--dtype auto`` on a CPU: the measurement).
        self.choice: Choice | None = None
        if uses_onnx(self.config.runtime, self.config.checkpoint):
            self.engine, eps = onnx_engine("rid", self.config.checkpoint, self.config.eps, self.device.type)
            self.config = self.config.replace(eps=eps)
            self.budget_source, self.architecture = "its ONNX metadata", self.engine.architecture
            self.input_size, self.input_dtype, self.path = self.architecture.get("input_size", 512), None, "onnx"
            return
        loaded = self.load_trained(self.config.checkpoint, self.config.eps)
        self.config = self.config.replace(eps=loaded.eps)
        self.budget_source = loaded.budget_source
        self.architecture = loaded.architecture
        self.input_size = loaded.architecture["input_size"]
        self._network = loaded.network.eval().requires_grad_(False)
        self.engine = self._optimize(self._network)
        if self.engine is not self._network:
            self._network = None  # consumed by the CPU engine; reloaded on demand by .network

    @classmethod
    def load_trained(cls, checkpoint: str, eps: float | None = None) -> LoadedNetwork:
        """The trainable ``PerturbationDiT`` of ``checkpoint`` and its budget (fp32, CPU)."""
        from facedefense_amortized.networks import RID_ARCHITECTURE, PerturbationDiT

        return load_defender_network(
            "rid",
            checkpoint,
            PerturbationDiT,
            eps=eps,
            name_pattern=OFFICIAL_NAME,
            where_to_get=WHERE_TO_GET,
            defaults=RID_ARCHITECTURE,
        )

    @classmethod
    def training_recipe(cls):
        """``facedefense train --method rid``: Adv-SDS + regression (see ``training/rid.py``)."""
        from facedefense_amortized.training.rid import _recipe

        return _recipe()

    @classmethod
    def export_onnx(cls, checkpoint: str, output: str | Path, *, eps: float | None = None) -> Path:
        """Write the network of ``checkpoint`` as ONNX (batch dynamic; 512x512, or the trained size)."""
        import torch

        from facedefense_amortized.onnx_io import export_onnx

        loaded = cls.load_trained(checkpoint, eps)
        side = loaded.architecture["input_size"]
        return export_onnx(
            loaded.network, output, method="rid", eps=loaded.eps, architecture=loaded.architecture,
            example=torch.zeros(1, loaded.architecture.get("in_channels", 3), side, side), dynamic_size=False,
        )

    @property
    def network(self) -> torch.nn.Module:
        """The trainable fp32 ``PerturbationDiT`` (for training and export).

        When the CPU engine consumed the loaded weights, they are read again from the checkpoint on
        first access, so inference alone never holds both copies.
        """
        if self.path == "onnx":
            raise ConfigError("rid: an .onnx checkpoint holds no trainable network; load the .safetensors one")
        if self._network is None:
            self._network = self.load_trained(self.config.checkpoint, self.config.eps).network
            self._network.eval().requires_grad_(False)
        return self._network

    def _optimize(self, network: torch.nn.Module) -> Callable[[Tensor], Tensor]:
        """Pick and build the inference engine (see ``RIDConfig.engine``); sets ``self.path``."""
        import torch

        from facedefense_amortized.networks.dit import (
            ENGINE_PATHS,
            TORCH_ENGINE_PATHS,
            DiTEngine,
            engine_paths,
        )

        engine, on_cpu = self.config.engine, self.device.type == "cpu"
        available = engine_paths() if on_cpu else list(TORCH_ENGINE_PATHS)
        if engine not in ("auto", "module"):
            if engine not in available:
                if not on_cpu:
                    where = "the CPU"
                elif engine in ENGINE_PATHS:
                    where = "oneDNN kernels that this torch build or CPU lacks (bf16: AVX-512 BW/VL/DQ or AVX-NE-CONVERT; int8: VNNI or AMX)"
                else:
                    where = "a GPU"
                raise ConfigError(
                    f"rid: engine={engine} needs {where} (available on {self.device.type}: "
                    f"{', '.join(available) or 'none'}); use -o engine=auto or -o engine=module"
                )
            path = engine
        elif engine == "module" or not available:
            path = "module"
        elif on_cpu and self.config.dtype == "auto":
            self.choice = self._measure(network, available)
            path = self.choice.name
        else:  # an explicit --dtype, or a GPU (whose --dtype auto is bf16, or fp16 without bf16)
            path = str(self.dtype).removeprefix("torch.")
            path = path if path in available else "module"
        self.path = path
        if path == "module":
            self.input_dtype = self.dtype
            return network.to(device=self.device, dtype=self.dtype)
        self.input_dtype = torch.float32
        return DiTEngine(network, path, self.device)

    def _measure(self, network: torch.nn.Module, paths: list[str]) -> Choice:
        from facedefense import autotune
        from facedefense_amortized.networks.dit import block_probe

        problem = {key: self.architecture[key] for key in ("input_size", "patch_size", "hidden_size", "num_heads")}
        problem["mlp_ratio"] = self.architecture.get("mlp_ratio", 4.0)
        problem["engine"] = 2  # the engine's revision: a new one is measured again, not read from the cache
        return autotune.choose(
            "rid", paths, lambda: {path: block_probe(network, path) for path in paths}, problem=problem, budget_s=0.6
        )

    def _perturb(self, images: Tensor, generator: torch.Generator) -> Tensor:
        import torch

        size = (self.input_size, self.input_size)
        with torch.inference_mode():
            inputs = to_vae_range(resize(images, size)).to(self.device)
            if self.input_dtype is not None:
                inputs = inputs.to(self.input_dtype)
            delta = self.config.eps * torch.tanh(self.engine(inputs).float().to(images.device))
        return images + resize(delta, tuple(images.shape[-2:]))
