"""``benchmarks/gpu_check.py``'s machinery on the CPU (cheap methods, in-process: rows, statuses,
exit codes, the "no recipe" failure) and the contract tests' device (``$FACEDEFENSE_TEST_DEVICE``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from facedefense.errors import ConfigError
from facedefense.interfaces import Defender
from facedefense.testing import fixtures
from facedefense.testing.contracts import on_test_device
from facedefense.testing.fixtures import TEST_DEVICE_VARIABLE, device_under_test

BENCHMARK_SCRIPT = "gpu_check"


@pytest.fixture(scope="module")
def gpu_check(benchmark_script):
    return benchmark_script


class Shift(Defender):
    """Adds +eps everywhere (a defender that works on any device and in any precision)."""

    name: ClassVar[str] = "gpu_check_shift"

    def _perturb(self, images, generator):
        return images + self.config.eps


class Idle(Shift):
    """Gives the photos back untouched: the check of the output must fail it."""

    name: ClassVar[str] = "gpu_check_idle"

    def _perturb(self, images, generator):
        return images


class Broken(Shift):
    name: ClassVar[str] = "gpu_check_broken"

    def _perturb(self, images, generator):
        raise RuntimeError("the surrogate diverged\nsecond line")


def test_runs_cheap_methods_and_writes_the_table(gpu_check, tmp_path, capsys):
    status, rows = gpu_check.run(["--device", "cpu", "--only", "quantize", "linf", "--json", str(tmp_path / "rows.json")])
    assert status == 0
    assert [(r.method, r.kind, r.dtype, r.status) for r in rows] == [
        ("quantize", "purifier", "float32", "ok"), ("linf", "metric", "float32", "ok")
    ]
    assert all(r.seconds > 0 and r.peak_mib is not None for r in rows)
    assert "gradient_abs_sum" in rows[0].facts and rows[1].facts["value"] >= 0
    document = json.loads((tmp_path / "rows.json").read_text())
    assert document["environment"]["device"] == "cpu" and len(document["rows"]) == 2
    out = capsys.readouterr().out
    assert "quantize" in out and "2 rows on cpu: 2 ok" in out


def test_every_registered_method_has_a_recipe(gpu_check):
    """What the GPU run would report as "no recipe", caught without a GPU."""
    missing = [f"{spec.kind} {spec.name}" for spec in gpu_check.selected_specs(None)
               if (spec.kind, spec.name) not in gpu_check.RECIPES]
    assert not missing, f"add recipes to benchmarks/gpu_check.py for: {', '.join(missing)}"


def test_a_method_without_recipe_fails_loudly(gpu_check, register_method, capsys):
    register_method("defender", Shift)
    status, rows = gpu_check.run(["--device", "cpu", "--only", "gpu_check_shift"])
    assert status == 1 and [(r.method, r.status) for r in rows] == [("gpu_check_shift", "no recipe")]
    assert "no recipe: gpu_check_shift" in capsys.readouterr().out


def test_precisions_failures_checks_and_skips(gpu_check, register_method, monkeypatch):
    for method in (Shift, Idle, Broken):
        register_method("defender", method)
    Recipe = gpu_check.Recipe
    monkeypatch.setitem(gpu_check.RECIPES, ("defender", "gpu_check_shift"), [
        Recipe(cpu_refuses=("float16",)), Recipe(variant="weights", dtypes=gpu_check.FLOAT32, needs="the real network"),
    ])
    monkeypatch.setitem(gpu_check.RECIPES, ("defender", "gpu_check_idle"), [Recipe(dtypes=gpu_check.FLOAT32)])
    monkeypatch.setitem(gpu_check.RECIPES, ("defender", "gpu_check_broken"), [Recipe(dtypes=gpu_check.FLOAT32)])

    status, rows = gpu_check.run(["--device", "cpu", "--only", "gpu_check_shift"])
    assert status == 0
    assert [(r.variant, r.dtype, r.status) for r in rows] == [
        ("", "float32", "ok"), ("", "bfloat16", "ok"), ("", "float16", "n/a"), ("weights", "float32", "skipped"),
    ]
    assert rows[-1].error == "needs weights: the real network"
    assert gpu_check.main(["--device", "cpu", "--only", "gpu_check_shift", "--dtypes", "float32", "--strict"]) == 1

    status, rows = gpu_check.run(["--device", "cpu", "--only", "gpu_check_idle", "gpu_check_broken"])
    assert status == 1
    broken, idle = rows  # registry order: sorted names
    assert (broken.status, broken.error) == ("FAIL", "RuntimeError: the surrogate diverged")
    assert "Traceback" in broken.traceback
    assert (idle.status, idle.error) == ("FAIL", "CheckFailed: an image came back unchanged")


def test_bad_arguments_are_refused(gpu_check, capsys):
    for argv, message in ((["--size", "100"], "--size"), (["--only", "nonexistent"], "nonexistent")):
        with pytest.raises(SystemExit) as exit_info:
            gpu_check.run(["--device", "cpu", *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


# --- FACEDEFENSE_TEST_DEVICE ---------------------------------------------------------------------------


def test_the_test_device_comes_from_the_variable(monkeypatch):
    monkeypatch.delenv(TEST_DEVICE_VARIABLE, raising=False)
    assert device_under_test() == "cpu"
    monkeypatch.setenv(TEST_DEVICE_VARIABLE, " cpu ")
    assert device_under_test() == "cpu"
    monkeypatch.setenv(TEST_DEVICE_VARIABLE, "gpu0")
    with pytest.raises(ConfigError, match=r"^FACEDEFENSE_TEST_DEVICE=gpu0: unknown device"):
        device_under_test()
    if not torch.cuda.is_available():
        monkeypatch.setenv(TEST_DEVICE_VARIABLE, "cuda")
        with pytest.raises(ConfigError, match=r"^FACEDEFENSE_TEST_DEVICE=cuda: .*CUDA is not available"):
            device_under_test()


def test_the_fixture_gives_the_test_device(test_device):
    assert test_device == device_under_test()


def test_contract_methods_are_rebuilt_on_the_test_device(monkeypatch):
    """On the CPU (the default) a contract's method is the one make_method built; elsewhere it is
    rebuilt there from its config (the meta device stands in for a GPU)."""
    method = Shift(eps=4 / 255, seed=3, device="cpu")
    method.plugin, method.plugin_version = "tests", "1.0"
    assert on_test_device(method) is method
    monkeypatch.setattr(fixtures, "device_under_test", lambda: "meta")
    moved = on_test_device(method)
    assert type(moved) is Shift and moved.device == torch.device("meta")
    assert moved.config == method.config.replace(device="meta")
    assert (moved.plugin, moved.plugin_version) == ("tests", "1.0")


def test_assets_are_built_on_first_use_into_a_fresh_folder(gpu_check, tmp_path):
    import numpy as np
    from PIL import Image

    assets = gpu_check.TinyAssets(tmp_path / "not" / "yet", 64)
    mask = np.asarray(Image.open(assets.mask))
    assert mask.shape == (64, 64) and (mask[:32] == 0).all() and (mask[32:] == 255).all()
    assert assets.folder("fit") != assets.folder("fit") and not list(Path(assets.folder("fit")).iterdir())
