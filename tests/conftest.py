"""Shared fixtures: the tiny-model kit, a fast test defender, sample files."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import ClassVar

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist (`-n auto`), share the cores among the workers instead of letting each start one
# thread per core: oversubscribed, two workers on 2 cores run slower than one. Set before torch is
# imported, so subprocesses the tests start (CLI runs, accelerate launch) inherit it too.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, _threads)
# The suite must not write into the user's cache folder (--dtype auto's measurements, class images),
# except its trained tiny models, kept there between runs (facedefense.testing.fixtures).
os.environ.setdefault("FACEDEFENSE_TEST_CACHE", str(__import__("facedefense.io").io.cache_dir() / "tests"))
if "PYTEST_XDIST_WORKER" not in os.environ:  # xdist's workers inherit the controller's folder
    os.environ["FACEDEFENSE_CACHE"] = tempfile.mkdtemp(prefix="facedefense-test-cache-")

pytest_plugins = ["facedefense.testing.fixtures"]

# Fewer cyclic garbage collections: torch, diffusers and transformers leave about a million
# long-lived objects, and each full collection walks them all (10-12 per test file, 0.15 s each).
# Collected 20x less often, the suite's tests take about 4% less CPU; peak memory is unchanged.
gc.set_threshold(20_000, 10, 10)


def pytest_configure(config):
    """Check ``$FACEDEFENSE_TEST_DEVICE`` (the contract tests' device, default cpu) before any test:
    a bad value is one usage error, not an error in every contract test."""
    from facedefense.errors import ConfigError
    from facedefense.testing.fixtures import device_under_test

    try:
        device_under_test()
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    if hasattr(config, "workerinput"):
        atexit.register(_end_finished_worker_now)  # registered first, so it runs after every other handler


_worker_session_finished = False


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    global _worker_session_finished
    _worker_session_finished = hasattr(session.config, "workerinput")


def _end_finished_worker_now() -> None:
    """End an xdist worker whose session finished (its reports are sent) once the other exit handlers
    have run, without tearing the interpreter down: freeing torch's, diffusers' and transformers' modules
    object by object takes 1-2 s, and the controller waits for every worker to end before it reports
    the suite's time. A worker that did not finish exits as usual, with its own status."""
    if _worker_session_finished:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def pytest_report_header(config):
    from facedefense.testing.fixtures import device_under_test

    return f"facedefense contract tests on: {device_under_test()} ($FACEDEFENSE_TEST_DEVICE)"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under ``--dist load`` (the integration tier, long tests that start processes), keep each test
    class on one worker. ``load`` hands out tests in chunks that cut through classes, and each worker
    then builds the class's fixtures again (a contract's method and its protect run: seconds). Here a
    class is one unit of work, the largest classes first; every other test is its own unit, in
    collection order. (`scripts/test.sh` runs the unit tier with ``--dist loadfile``: whole files.)"""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ClassScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            parts = nodeid.split("::")
            return "::".join(parts[:2]) if len(parts) > 2 else nodeid

    return ClassScheduling(config, log)


def pytest_collection_modifyitems(items):
    """Tests marked ``integration`` first: under ``-n auto`` the workers then end on short tests together
    instead of one worker finishing a 20 s launcher test alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)  # stable: order kept otherwise


@pytest.fixture(scope="module")
def benchmark_script(request):
    """The ``benchmarks/`` script the test module names in ``BENCHMARK_SCRIPT`` (e.g. ``"gpu_check"``),
    imported as a module: registered in ``sys.modules`` while it runs, as its dataclasses need."""
    import importlib.util
    import sys
    from pathlib import Path

    name = request.module.BENCHMARK_SCRIPT
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.fixture
def shift_defender(register_method):
    """Register ``test_shift`` (adds +eps everywhere it can) in the process registry for CLI tests."""
    from facedefense.interfaces import Defender, DefenderConfig

    @dataclass
    class ShiftConfig(DefenderConfig):
        device: str = "cpu"

    class Shift(Defender):
        name: ClassVar[str] = "test_shift"
        Config: ClassVar[type] = ShiftConfig

        def _perturb(self, images, generator):
            return images + self.config.eps

    register_method("defender", Shift)
    return Shift


@pytest.fixture
def png_folder(tmp_path):
    """A folder with three small RGB PNGs (two 48x40, one 40x56)."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (48, 40), "b": (48, 40), "c": (40, 56)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder
