"""Hook specifications: the extension points of facedefense.

A plugin is a module (or object) with functions marked ``@facedefense.hookimpl`` whose names are the
hooks below. The ``register_*`` hooks receive a ``register`` callback::

    register(name, target, *, summary="", aliases=(), tags=())

``name`` is the registry name (``^[a-z][a-z0-9_]*$``), ``target`` the class or a lazy reference
``"package.module:Class"`` imported only when the method is used, so that listing stays fast. The
registry records which plugin registered what; a duplicate name is an error naming both plugins.
``tags`` are free labels; the core reads two: metrics tagged ``"default"`` are what
``facedefense evaluate`` computes when no ``--metric`` is given, and the defender tagged ``"demo"`` is
what ``facedefense demo`` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    import typer

hookspec = pluggy.HookspecMarker("facedefense")
hookimpl = pluggy.HookimplMarker("facedefense")


class RegisterFn(Protocol):
    """The callback a ``register_*`` hook receives."""

    def __call__(
        self, name: str, target: Any, *, summary: str = "", aliases: tuple[str, ...] = (), tags: tuple[str, ...] = ()
    ) -> None: ...


@hookspec
def register_defenders(register: RegisterFn) -> None:
    """Register [`Defender`][facedefense.interfaces.defender.Defender] subclasses (``rid``, ``photoguard``).

    :param register: call ``register(name, target, summary=..., aliases=...)`` once per defender.
    """


@hookspec
def register_purifiers(register: RegisterFn) -> None:
    """Register [`Purifier`][facedefense.interfaces.purifier.Purifier] subclasses (``jpeg``, ``diffpure``).

    :param register: call ``register(name, target, summary=..., aliases=...)`` once per purifier.
    """


@hookspec
def register_personalizers(register: RegisterFn) -> None:
    """Register [`Personalizer`][facedefense.interfaces.personalizer.Personalizer] subclasses (``dreambooth``,
    ``lora_ti``).

    :param register: call ``register(name, target, summary=..., aliases=...)`` once per personalizer.
    """


@hookspec
def register_editors(register: RegisterFn) -> None:
    """Register [`Editor`][facedefense.interfaces.editor.Editor] subclasses (``instruct_pix2pix``, ``sdedit``).

    :param register: call ``register(name, target, summary=..., aliases=...)`` once per editor.
    """


@hookspec
def register_metrics(register: RegisterFn) -> None:
    """Register [`Metric`][facedefense.interfaces.metric.Metric] subclasses (``psnr``, ``ssim``, ``ism``).

    :param register: call ``register(name, target, summary=..., aliases=...)`` once per metric.
    """


@hookspec
def register_models(register: RegisterFn) -> None:
    """Register shared networks (face embedders, CLIP, LPIPS, ...) that several methods use.

    ``target`` is a factory, ``"package.module:build"``, called as
    ``build(*, path: str | None, device: torch.device, dtype: torch.dtype, **options) -> torch.nn.Module``
    (``path``: weights file or folder, None for the factory's default). Use the models through
    [`facedefense.models.shared_model`][facedefense.models.shared_model], which builds each once per process.

    :param register: call ``register(name, target, summary=...)`` once per model.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Add commands or sub-command groups to the ``facedefense`` CLI.

    :param app: the root Typer application; call ``app.command()`` or ``app.add_typer()`` on it.
    """
