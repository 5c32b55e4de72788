"""Plugin discovery: built-in and third-party plugins load through the same entry points.

Every distribution that declares an entry point in the group ``facedefense`` is a plugin. Loading
is isolated: a plugin that fails to import is recorded (``facedefense plugins`` shows it) and the
others still load. Environment controls:

- ``FACEDEFENSE_LOAD_PLUGINS=a,b``: load only these entry points (``""`` loads none).
- ``FACEDEFENSE_BLOCK_PLUGINS=a,b``: never load these (resolves a name clash between two plugins).
- ``FACEDEFENSE_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry point at all.
- ``FACEDEFENSE_TRACE_PLUGINS=1``: trace hook calls to stderr.

Nothing here imports torch.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from dataclasses import dataclass

import pluggy

from facedefense import hookspecs

ENTRY_POINT_GROUP = "facedefense"


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as discovered: its name, distribution, version and load error (if any)."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    error: str | None = None


def _env_list(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def make_plugin_manager(*, autoload: bool = True) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Create the plugin manager and load the entry-point plugins.

    Args:
        autoload: load the ``facedefense`` entry points (subject to the environment controls).
            ``False`` gives an empty manager, for tests that register plugins by hand.

    Returns:
        The manager and one [`PluginInfo`][facedefense.plugins.PluginInfo] per entry point seen, failed ones
        included.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    if os.environ.get("FACEDEFENSE_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda message: sys.stderr.write(message))
        pm.enable_tracing()
    infos: list[PluginInfo] = []
    if not autoload or os.environ.get("FACEDEFENSE_DISABLE_PLUGIN_AUTOLOAD"):
        return pm, infos
    allowed = _env_list("FACEDEFENSE_LOAD_PLUGINS")
    blocked = _env_list("FACEDEFENSE_BLOCK_PLUGINS") or set()
    for ep in _entry_points():
        if (allowed is not None and ep.name not in allowed) or ep.name in blocked:
            pm.set_blocked(ep.name)
            continue
        if pm.has_plugin(ep.name):
            continue
        dist = getattr(ep, "dist", None)
        info = dict(
            name=ep.name,
            distribution=dist.name if dist else None,
            version=dist.version if dist else None,
            module=ep.value,
        )
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            pm.check_pending()
        except Exception as exc:  # a broken plugin must not break the others
            if pm.get_plugin(ep.name) is not None:
                pm.unregister(name=ep.name)
            infos.append(PluginInfo(**info, error=f"{type(exc).__name__}: {exc}"))
            continue
        infos.append(PluginInfo(**info))
    return pm, infos
