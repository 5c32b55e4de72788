"""Random draws happen where their generator lives: a method's generator is on its device, and
PyTorch refuses a CUDA generator for a CPU draw (every personalizer crashed on GPUs that way).

A source scan covers every file of the library and its plugins (on any machine); a run with a
generator on another device than the CPU's covers the personalizers where torch has such a device
(``FACEDEFENSE_TEST_DEVICE=cuda`` picks it; skipped on CPU-only builds).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
#: torch factories that draw from a generator on a device of their own choosing (CPU by default).
DRAWS = {"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "normal",
         "bernoulli", "multinomial", "poisson"}


def _is_torch_call(node: ast.AST, names: set[str]) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch")


def _parameters(function: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    arguments = function.args
    every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs, arguments.vararg, arguments.kwarg]
    return {argument.arg for argument in every if argument is not None}


class _CpuGenerators:
    """Which generator expressions of one file are CPU generators made in place:
    ``torch.Generator()`` / ``torch.Generator("cpu")`` (optionally ``.manual_seed(...)``), a local
    name only ever bound to one, or a module-level helper that only returns one."""

    def __init__(self, tree: ast.Module) -> None:
        self.helpers = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}

    def made_on_cpu(self, node: ast.AST, scope: ast.AST, seen: frozenset[str] = frozenset()) -> bool:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "manual_seed":
            return self.made_on_cpu(node.func.value, scope, seen)
        if _is_torch_call(node, {"Generator"}):
            given = [*node.args, *(k.value for k in node.keywords if k.arg == "device")]
            return all(isinstance(value, ast.Constant) and value.value == "cpu" for value in given)
        if isinstance(node, ast.Name):
            if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.id in _parameters(scope):
                return False
            bound = [assign.value for assign in ast.walk(scope) if isinstance(assign, ast.Assign)
                     and any(isinstance(t, ast.Name) and t.id == node.id for t in assign.targets)]
            return bool(bound) and all(self.made_on_cpu(value, scope, seen) for value in bound)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in self.helpers:
            helper = self.helpers[node.func.id]
            if helper.name in seen:
                return False
            returned = [r.value for r in ast.walk(helper) if isinstance(r, ast.Return) and r.value is not None]
            return bool(returned) and all(self.made_on_cpu(r, helper, seen | {helper.name}) for r in returned)
        return False


def draws_without_device(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line`` (relative to ``root``) of every torch draw given a generator but no ``device=``
    (so it draws on the CPU) whose generator is not a CPU generator made in place."""
    text = path.read_text(encoding="utf-8")
    if "generator" not in text:  # no ``generator=`` keyword anywhere: nothing to parse
        return []
    tree = ast.parse(text)
    cpu = _CpuGenerators(tree)
    found = []
    scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]
    for scope in scopes:
        for node in ast.walk(scope):
            if not _is_torch_call(node, DRAWS):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            generator = keywords.get("generator")
            if generator is None or (isinstance(generator, ast.Constant) and generator.value is None):
                continue
            if "device" not in keywords and not cpu.made_on_cpu(generator, scope):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return sorted(set(found))


def test_every_seeded_draw_names_its_device():
    files = sorted([*(ROOT / "facedefense").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])
    assert len(files) > 50
    offenders = [hit for path in files for hit in draws_without_device(path)]
    assert not offenders, f"torch draws from a generator on the CPU whatever its device: {offenders}"


def test_the_scan_finds_a_draw_on_the_wrong_device(tmp_path):
    """The scan flags the draws that crashed (a method's generator, no device) and passes the fixes
    and CPU generators made in place."""
    source = tmp_path / "sample.py"
    source.write_text(
        "import torch\n"
        "def _cpu(seed):\n    return torch.Generator().manual_seed(seed)\n"
        "def draw(generator, n):\n"
        "    bad = torch.randint(0, n, (2,), generator=generator)\n"
        "    good = torch.randn((2,), generator=generator, device=generator.device)\n"
        "    local = torch.Generator('cpu').manual_seed(0)\n"
        "    fine = torch.rand((2,), generator=local)\n"
        "    helper = torch.randperm(n, generator=_cpu(1))\n"
        "    unseeded = torch.rand((2,), generator=None)\n"
    )
    assert draws_without_device(source, tmp_path) == ["sample.py:5"]


# -- a generator on another device ------------------------------------------------------------


def _other_device() -> str | None:
    """The device of the run: ``$FACEDEFENSE_TEST_DEVICE`` when it is not the CPU, else CUDA or MPS
    when torch has them."""
    from facedefense.testing.fixtures import device_under_test

    wanted = device_under_test()
    if wanted != "cpu":
        return wanted
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return None


@pytest.mark.parametrize("name", ["dreambooth", "lora", "textual_inversion", "lora_ti"])
def test_personalizers_train_with_a_generator_on_another_device(tiny_sd_path, face_images, name):
    from facedefense.registry import get_registry

    device = _other_device()
    if device is None:
        pytest.skip("torch has no device other than the CPU here (set FACEDEFENSE_TEST_DEVICE=cuda on a GPU)")
    personalizer = get_registry().create("personalizer", name, model=str(tiny_sd_path), steps=2, resolution=32,
                                         prior_preservation=False, inference_steps=2, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    model = personalizer.fit(list(face_images), generator=generator)
    assert len(personalizer.last_training.losses) == 2
    images = model.generate([personalizer.config.instance_prompt],
                            generator=torch.Generator(device=device).manual_seed(0))
    assert images.shape == (1, 3, 32, 32)
