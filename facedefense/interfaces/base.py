"""The base class every pluggable method derives from."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.config import MethodConfig, build_config, config_to_dict
from facedefense.runtime import make_generator, resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch


class Method:
    """Owns what every method shares: its config, device, dtype and random generator.

    A subclass declares a nested ``Config`` dataclass (deriving from its kind's config) and
    overrides its kind's single hook (``_perturb``, ``_purify``, ...). Build one with keyword options
    (``PhotoGuard(eps=8/255, steps=50)``), a config object, or both (options override the config).

    Attributes:
        name: registry name, set by the subclass.
        Config: the options dataclass.
        cpu_bf16: whether ``dtype="auto"`` may pick bf16 on a CPU with native bf16 units.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    cpu_bf16: ClassVar[bool] = False

    def __init__(self, config: MethodConfig | None = None, **options: Any) -> None:
        label = self.name or type(self).__name__
        if config is not None:
            options = {**config_to_dict(config), **options}
        self.config = build_config(self.Config, options, method=label)
        self.device: torch.device = resolve_device(self.config.device)
        self.dtype: torch.dtype = resolve_dtype(self.config.dtype, self.device, cpu_bf16=self.cpu_bf16)

    def make_generator(self, generator: torch.Generator | None = None) -> torch.Generator:
        """The generator to use: ``generator`` if given, else a fresh one seeded with ``config.seed``."""
        return generator if generator is not None else make_generator(self.config.seed, self.device)

    def describe(self) -> dict[str, Any]:
        """Name, class and configuration, for manifests."""
        return {
            "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": config_to_dict(self.config),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"{type(self).__name__}({fields})"
