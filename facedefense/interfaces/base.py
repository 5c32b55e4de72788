"""The base class every pluggable method derives from."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.config import MethodConfig, build_config, config_to_dict
from facedefense.runtime import keep_freed_memory, make_generator, resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch
    from torch import Tensor


class Method:
    """Owns what every method shares: its frozen config, device, dtype, random generator, identity.

    A subclass declares a nested ``Config`` dataclass (deriving from its kind's config) and
    overrides its kind's single hook (``_perturb``, ``_purify``, ``_compute``, ...). Build one with
    keyword options (``PhotoGuard(eps=8/255, steps=50)``), a config object, or both (options override
    the config); [`facedefense.create`][facedefense.create] builds one by registry name and records its
    plugin.

    Attributes:
        name: registry name, set by the subclass.
        Config: the options dataclass.
        cpu_bf16: whether ``dtype="auto"`` may pick bf16 on a CPU with native bf16 units.
        plugin: the plugin that registered the method (set by ``Registry.create``; None otherwise).
        plugin_version: that plugin's version.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    cpu_bf16: ClassVar[bool] = False

    plugin: str | None = None
    plugin_version: str | None = None

    def __init__(self, config: MethodConfig | None = None, **options: Any) -> None:
        label = self.name or type(self).__name__
        if config is not None:
            options = {**config_to_dict(config), **options}
        self.config = build_config(self.Config, options, method=label).freeze()
        self.device: torch.device = resolve_device(self.config.device)
        self.dtype: torch.dtype = resolve_dtype(self.config.dtype, self.device, cpu_bf16=self.cpu_bf16)
        if self.device.type == "cpu":
            keep_freed_memory()  # large tensors reused, not re-faulted at every step

    @classmethod
    def configured(cls, *, plugin: str | None = None, plugin_version: str | None = None, **options: Any) -> Method:
        """An instance with its configuration checked and nothing built: only this base
        ``__init__`` runs (config checks, device, dtype), so no network loads. For what needs only
        the configuration and `fingerprint` (a resume check, the benchmark's stage keys).

        Examples:
            >>> ASPL.configured(model="sd", eps=8 / 255).fingerprint()
        """
        method = cls.__new__(cls)
        Method.__init__(method, **options)
        method.plugin, method.plugin_version = plugin, plugin_version
        return method

    def make_generator(self, generator: torch.Generator | None = None) -> torch.Generator:
        """The generator to use: ``generator`` if given, else a fresh one seeded with ``config.seed``."""
        return generator if generator is not None else make_generator(self.config.seed, self.device)

    def fingerprint(self) -> str:
        """A stable 16-hex key of what determines this method's output: name, class, plugin,
        plugin version and configuration. Caches (the benchmark's stages) key on it."""
        identity = {
            "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "config": config_to_dict(self.config),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """Name, class, provenance and configuration, for manifests."""
        return {
            "name": self.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "plugin": self.plugin,
            "plugin_version": self.plugin_version,
            "fingerprint": self.fingerprint(),
            "config": config_to_dict(self.config),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    # -- the checks every kind's template method shares -------------------------------------------

    def _to_device(self, images: Tensor) -> Tensor:
        """A private float32 copy of a checked batch on the method's device (the input is never touched)."""
        import torch

        return images.detach().to(device=self.device, dtype=torch.float32, copy=True)

    def _check_output(self, output: Tensor, like: Tensor, what: str) -> Tensor:
        """Bring a hook's output back next to ``like``: float32, same shape, NaN-free, in [0, 1].

        Raises:
            RuntimeError: the hook returned another shape (a bug of the method).
        """
        import torch

        output = output.detach().to(device=like.device, dtype=torch.float32)
        if output.shape != like.shape:
            raise RuntimeError(
                f"{type(self).__name__}.{what} returned shape {tuple(output.shape)}, expected {tuple(like.shape)}"
            )
        return torch.nan_to_num(output, nan=0.0).clamp(0.0, 1.0)

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"{type(self).__name__}({fields})"
