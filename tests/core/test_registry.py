"""Registry and plugin loading: provenance, clashes, suggestions, isolation, env controls."""

from __future__ import annotations

import importlib.metadata
import types

import pytest

import facedefense
from facedefense.errors import DuplicateMethodError, PluginLoadError, UnknownMethodError
from facedefense.plugins import make_plugin_manager
from facedefense.registry import Registry, get_registry


def make_plugin(name: str, **methods: str) -> types.SimpleNamespace:
    @facedefense.hookimpl
    def register_defenders(register):
        for method, target in methods.items():
            register(method, target, summary=f"{method} from {name}")

    return types.SimpleNamespace(register_defenders=register_defenders)


def registry_with(*plugins: tuple[str, object]) -> Registry:
    pm, _ = make_plugin_manager(autoload=False)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    return Registry.from_plugin_manager(pm)


def test_builtins_are_registered_through_entry_points():
    registry = get_registry()
    assert "photoguard" in registry.names("defenders")
    assert {"psnr", "ssim"} <= set(registry.names("metric"))
    assert registry.get("purifier", "jpeg").plugin == "purifiers"


def test_provenance_is_recorded():
    registry = registry_with(("alpha", make_plugin("alpha", blur="mod:Blur")))
    spec = registry.get("defender", "blur")
    assert spec.plugin == "alpha" and spec.target_path == "mod:Blur"


def test_duplicate_name_is_an_error_naming_both_plugins():
    registry = registry_with(("alpha", make_plugin("alpha", blur="a:B")), ("beta", make_plugin("beta", blur="b:B")))
    with pytest.raises(DuplicateMethodError, match="alpha.*beta|beta.*alpha"):
        registry.get("defender", "blur")
    assert any("registered by both" in problem for problem in registry.problems)


def test_unknown_name_suggests_closest():
    registry = registry_with(("alpha", make_plugin("alpha", photoguard="a:P")))
    with pytest.raises(UnknownMethodError, match="Did you mean: photoguard"):
        registry.get("defender", "photogaurd")


def test_invalid_name_is_reported_not_registered():
    registry = registry_with(("alpha", make_plugin("alpha", **{"Bad-Name": "a:B"})))
    assert registry.names("defender") == []
    assert any("invalid" in problem for problem in registry.problems)


def test_plugin_whose_hook_raises_does_not_break_others():
    @facedefense.hookimpl
    def register_defenders(register):
        raise RuntimeError("boom")

    registry = registry_with(
        ("broken", types.SimpleNamespace(register_defenders=register_defenders)),
        ("good", make_plugin("good", fine="g:F")),
    )
    assert registry.names("defender") == ["fine"]
    assert any("broken" in problem and "boom" in problem for problem in registry.problems)


def test_lazy_target_errors_are_clear():
    registry = registry_with(("alpha", make_plugin("alpha", ghost="no_such_module_xyz:Ghost")))
    with pytest.raises(PluginLoadError, match="ghost.*cannot be imported"):
        registry.load("defender", "ghost")


def test_target_must_subclass_the_kind_base():
    registry = registry_with(("alpha", make_plugin("alpha", wrong="collections:OrderedDict")))
    with pytest.raises(PluginLoadError, match="not a Defender subclass"):
        registry.load("defender", "wrong")


class FakeEntryPoint:
    def __init__(self, name, loader):
        self.name, self.value, self._loader, self.dist = name, f"fake_{name}", loader, None

    def load(self):
        return self._loader()


def fake_entry_points(monkeypatch, *entries):
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: list(entries))


def test_broken_entry_point_is_reported_and_isolated(monkeypatch):
    def broken():
        raise ImportError("missing dependency xyz")

    fake_entry_points(
        monkeypatch, FakeEntryPoint("broken", broken), FakeEntryPoint("good", lambda: make_plugin("good", fine="g:F"))
    )
    pm, infos = make_plugin_manager()
    registry = Registry.from_plugin_manager(pm, infos)
    assert registry.names("defender") == ["fine"]
    failed = {info.name: info.error for info in infos}
    assert "missing dependency xyz" in failed["broken"] and failed["good"] is None


def test_env_controls(monkeypatch):
    fake_entry_points(
        monkeypatch,
        FakeEntryPoint("one", lambda: make_plugin("one", first="a:A")),
        FakeEntryPoint("two", lambda: make_plugin("two", second="b:B")),
    )
    monkeypatch.setenv("FACEDEFENSE_BLOCK_PLUGINS", "two")
    assert Registry.from_plugin_manager(*make_plugin_manager()).names("defender") == ["first"]
    monkeypatch.delenv("FACEDEFENSE_BLOCK_PLUGINS")
    monkeypatch.setenv("FACEDEFENSE_LOAD_PLUGINS", "two")
    assert Registry.from_plugin_manager(*make_plugin_manager()).names("defender") == ["second"]
    monkeypatch.setenv("FACEDEFENSE_LOAD_PLUGINS", "")
    assert Registry.from_plugin_manager(*make_plugin_manager()).names("defender") == []
    monkeypatch.delenv("FACEDEFENSE_LOAD_PLUGINS")
    monkeypatch.setenv("FACEDEFENSE_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert make_plugin_manager()[1] == []


def test_misspelled_hook_fails_loudly(monkeypatch):
    @facedefense.hookimpl
    def register_defender(register):  # missing "s"
        pass

    fake_entry_points(monkeypatch, FakeEntryPoint("typo", lambda: types.SimpleNamespace(register_defender=register_defender)))
    _, infos = make_plugin_manager()
    assert infos[0].error and "register_defender" in infos[0].error


def test_create_builds_a_method():
    metric = facedefense.create("metric", "psnr", device="cpu")
    assert metric.name == "psnr"
