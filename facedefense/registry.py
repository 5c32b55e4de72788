"""The registry: which plugin supplies which defender, purifier, attack and metric.

Methods are registered by name through the ``register_*`` hooks (see
[`facedefense.hookspecs`][facedefense.hookspecs]), called through pluggy's hook callers one plugin at a time
(so tracing shows every call and one plugin's failure is isolated); shared networks register the same way
through ``register_models``. A target is kept as a ``"module:Class"`` string until first use, so listing
imports no torch-heavy module. Building the registry never raises because of one plugin: import failures, bad
names and name clashes are recorded and reported; using a clashing name raises an error naming both plugins.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass, field
from typing import Any

import pluggy

from facedefense.errors import DuplicateMethodError, PluginLoadError, UnknownMethodError
from facedefense.plugins import PluginInfo, make_plugin_manager

#: Kind of method -> the hook that registers it.
KINDS: dict[str, str] = {
    "defender": "register_defenders",
    "purifier": "register_purifiers",
    "personalizer": "register_personalizers",
    "editor": "register_editors",
    "metric": "register_metrics",
    "model": "register_models",
}
#: Plural forms accepted by ``facedefense list``.
PLURALS: dict[str, str] = {f"{kind}s": kind for kind in KINDS}
#: Base class each kind's target must subclass (module, class), checked when the target is loaded.
BASES: dict[str, tuple[str, str]] = {
    "defender": ("facedefense.interfaces.defender", "Defender"),
    "purifier": ("facedefense.interfaces.purifier", "Purifier"),
    "personalizer": ("facedefense.interfaces.personalizer", "Personalizer"),
    "editor": ("facedefense.interfaces.editor", "Editor"),
    "metric": ("facedefense.interfaces.metric", "Metric"),
}
#: Kinds whose targets are methods built with [`Registry.create`][facedefense.registry.Registry.create]
#: (models are factories).
METHOD_KINDS = tuple(kind for kind in KINDS if kind in BASES)
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: name, provenance and a lazily imported target."""

    kind: str
    name: str
    target: Any
    plugin: str
    version: str | None = None
    summary: str = ""
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def target_path(self) -> str:
        """``"module:Class"`` of the target, without importing it."""
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"

    def load(self) -> type:
        """Import and return the method class, checking it subclasses its kind's base."""
        target = self.target
        if isinstance(target, str):
            module_name, _, attribute = target.partition(":")
            try:
                target = getattr(importlib.import_module(module_name), attribute)
            except ImportError as exc:
                raise PluginLoadError(
                    f"{self.kind} '{self.name}' (plugin '{self.plugin}') cannot be imported: {exc}"
                ) from exc
            except AttributeError as exc:
                raise PluginLoadError(
                    f"{self.kind} '{self.name}' (plugin '{self.plugin}'): {module_name} has no {attribute}"
                ) from exc
        if self.kind not in BASES:  # a shared-model factory
            if not callable(target):
                raise PluginLoadError(f"{self.kind} '{self.name}' (plugin '{self.plugin}') is not callable")
            return target
        base_module, base_name = BASES[self.kind]
        base = getattr(importlib.import_module(base_module), base_name)
        if not (isinstance(target, type) and issubclass(target, base)):
            raise PluginLoadError(
                f"{self.kind} '{self.name}' (plugin '{self.plugin}') is not a {base_name} subclass"
            )
        return target

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "plugin": self.plugin,
            "version": self.version,
            "summary": self.summary,
            "aliases": list(self.aliases),
            "tags": list(self.tags),
            "target": self.target_path,
        }


@dataclass
class Registry:
    """All registered methods, by kind and name.

    Build it with [`get_registry`][facedefense.registry.get_registry] (cached, entry points loaded) or
    ``Registry.from_plugin_manager(pm)`` in tests.
    """

    specs: dict[str, dict[str, MethodSpec]] = field(default_factory=lambda: {k: {} for k in KINDS})
    aliases: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in KINDS})
    plugins: list[PluginInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    clashes: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    plugin_manager: pluggy.PluginManager | None = None

    @classmethod
    def from_plugin_manager(
        cls, pm: pluggy.PluginManager, plugins: list[PluginInfo] | None = None
    ) -> Registry:
        registry = cls(plugins=list(plugins or []), plugin_manager=pm)
        versions = {info.name: info.version for info in registry.plugins}
        for kind, hook_name in KINDS.items():
            failures = call_each_plugin(
                pm,
                hook_name,
                lambda plugin, kind=kind: {"register": registry._register_fn(kind, plugin, versions.get(plugin))},
            )
            for plugin, exc in failures:  # one plugin's bug must not hide the others
                registry.problems.append(f"plugin '{plugin}' failed in {hook_name}: {exc}")
        for info in registry.plugins:
            if info.error:
                registry.problems.append(f"plugin '{info.name}' failed to load: {info.error}")
        return registry

    def _register_fn(self, kind: str, plugin: str, version: str | None) -> _Register:
        return _Register(self, kind, plugin, version)

    def add(self, spec: MethodSpec) -> None:
        """Add one method; a bad or clashing name is recorded as a problem, never a silent override."""
        for name in (spec.name, *spec.aliases):
            if not NAME_PATTERN.match(name):
                self.problems.append(
                    f"plugin '{spec.plugin}': {spec.kind} name '{name}' is invalid (use ^[a-z][a-z0-9_]*$)"
                )
                return
        for name in (spec.name, *spec.aliases):
            owner = self._owner(spec.kind, name)
            if owner is not None:
                key = (spec.kind, name)
                plugins = self.clashes.setdefault(key, [owner.plugin])
                plugins.append(spec.plugin)
                self.problems.append(
                    f"{spec.kind} '{name}' is registered by both plugin '{owner.plugin}' and plugin "
                    f"'{spec.plugin}'; block one with FACEDEFENSE_BLOCK_PLUGINS"
                )
                return
        self.specs[spec.kind][spec.name] = spec
        for alias in spec.aliases:
            self.aliases[spec.kind][alias] = spec.name

    def remove(self, kind: str, name: str) -> MethodSpec:
        """Remove one method and its aliases (tests use it through ``facedefense.testing``)."""
        kind = normalize_kind(kind)
        spec = self.specs[kind].pop(name)
        for alias in spec.aliases:
            self.aliases[kind].pop(alias, None)
        return spec

    def _owner(self, kind: str, name: str) -> MethodSpec | None:
        canonical = self.aliases[kind].get(name, name)
        return self.specs[kind].get(canonical)

    def names(self, kind: str) -> list[str]:
        """Sorted canonical names of one kind."""
        return sorted(self.specs[normalize_kind(kind)])

    def all_specs(self, kind: str | None = None) -> list[MethodSpec]:
        kinds = [normalize_kind(kind)] if kind else list(KINDS)
        return [self.specs[k][n] for k in kinds for n in sorted(self.specs[k])]

    def get(self, kind: str, name: str) -> MethodSpec:
        """Look a method up by name or alias.

        Raises:
            DuplicateMethodError: two plugins registered that name.
            UnknownMethodError: no such method; the message suggests the closest names.
        """
        kind = normalize_kind(kind)
        if (kind, name) in self.clashes:
            plugins = self.clashes[(kind, name)]
            raise DuplicateMethodError(
                f"{kind} '{name}' is registered by both plugin '{plugins[0]}' and plugin '{plugins[1]}'; "
                f"block one with FACEDEFENSE_BLOCK_PLUGINS={plugins[1]}"
            )
        spec = self._owner(kind, name)
        if spec is None:
            candidates = sorted([*self.specs[kind], *self.aliases[kind]])
            close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            known = ", ".join(self.names(kind)) or "none"
            raise UnknownMethodError(f"unknown {kind} '{name}'.{hint} Available: {known}.")
        return spec

    def load(self, kind: str, name: str) -> type:
        """Import and return the class registered under ``name``."""
        return self.get(kind, name).load()

    def create(self, kind: str, name: str, **options: Any) -> Any:
        """Build the method registered under ``name`` with ``options``: the one construction path.

        The instance records its provenance (``method.plugin``, ``method.plugin_version``), which
        manifests and cache fingerprints use.

        Raises:
            UnknownMethodError: no such method (the message suggests the closest names and, when the
                name belongs to another kind, says which: ``jpeg`` is a purifier, not a defender).
        """
        kind = normalize_kind(kind)
        if kind not in METHOD_KINDS:
            raise UnknownMethodError(f"'{kind}' entries are not methods; use facedefense.models.shared_model")
        try:
            spec = self.get(kind, name)
        except UnknownMethodError:
            elsewhere = [k for k in METHOD_KINDS if k != kind and self._owner(k, name) is not None]
            if elsewhere:
                raise UnknownMethodError(
                    f"'{name}' is a {elsewhere[0]}, not a {kind} (see `facedefense list {kind}s`)"
                ) from None
            raise
        method = spec.load()(**options)
        method.plugin, method.plugin_version = spec.plugin, spec.version
        return method

    def tagged(self, kind: str, tag: str) -> list[str]:
        """Sorted names of one kind registered with ``tag`` (e.g. the ``"default"`` metrics)."""
        return [spec.name for spec in self.all_specs(kind) if tag in spec.tags]


class _Register:
    """The ``register`` callback one plugin receives for one kind (its repr names both, for tracing)."""

    def __init__(self, registry: Registry, kind: str, plugin: str, version: str | None) -> None:
        self.registry, self.kind, self.plugin, self.version = registry, kind, plugin, version

    def __call__(
        self,
        name: str,
        target: Any,
        *,
        summary: str = "",
        aliases: tuple[str, ...] | list[str] = (),
        tags: tuple[str, ...] | list[str] = (),
    ) -> None:
        spec = MethodSpec(
            self.kind, name, target, self.plugin, self.version, summary=summary, aliases=tuple(aliases), tags=tuple(tags)
        )
        self.registry.add(spec)

    def __repr__(self) -> str:
        return f"<register {self.kind}s for plugin '{self.plugin}'>"


def normalize_kind(kind: str) -> str:
    """``defenders`` or ``defender`` -> ``defender``; an unknown kind raises UnknownMethodError."""
    kind = PLURALS.get(kind, kind)
    if kind not in KINDS:
        raise UnknownMethodError(f"unknown kind '{kind}'; expected one of {', '.join(KINDS)}")
    return kind


def call_each_plugin(
    pm: pluggy.PluginManager, hook_name: str, arguments: Any
) -> list[tuple[str, Exception]]:
    """Call hook ``hook_name`` through pluggy, one plugin at a time.

    Each call goes through a pluggy subset hook caller (so ``FACEDEFENSE_TRACE_PLUGINS`` traces it)
    with the keyword arguments ``arguments(plugin_name)`` returns, e.g. a ``register`` callback that
    knows its plugin. Returns ``(plugin_name, exception)`` for each plugin whose implementation raised.
    """
    caller = getattr(pm.hook, hook_name)
    impls = caller.get_hookimpls()
    everyone = [impl.plugin for impl in impls]
    failures: list[tuple[str, Exception]] = []
    for impl in impls:
        others = [plugin for plugin in everyone if plugin is not impl.plugin]
        kwargs = arguments(impl.plugin_name)
        try:
            try:
                subset = pm.subset_hook_caller(hook_name, remove_plugins=others)
            except TypeError:  # an unhashable plugin object: call its implementation directly (untraced)
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            else:
                subset(**kwargs)
        except Exception as exc:
            failures.append((impl.plugin_name, exc))
    return failures


_REGISTRY: Registry | None = None


def get_registry(*, refresh: bool = False) -> Registry:
    """The process-wide registry, built once from the installed plugins."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        pm, plugins = make_plugin_manager()
        _REGISTRY = Registry.from_plugin_manager(pm, plugins)
    return _REGISTRY
