"""``benchmarks/iterative_speed.py --against-reference``: the reference is imported from the user's
folder unedited and sees a ``torch`` whose CUDA device is the CPU and whose bf16 is fp32."""

from __future__ import annotations

import pytest
import torch

BENCHMARK_SCRIPT = "iterative_speed"

#: What the reference's train_one_epoch / pgd_attack hard-code, in a stand-in attacks/aspl.py.
STAND_IN = '''
import torch

def placement():
    weight_dtype = torch.bfloat16
    device = torch.device("cuda")
    return torch.zeros(2, device=device, dtype=weight_dtype), torch.cuda.is_available()
'''


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script


def test_reference_runs_on_the_cpu_in_float32_without_edits(bench, tmp_path):
    (tmp_path / "attacks").mkdir()
    source = tmp_path / "attacks" / "aspl.py"
    source.write_text(STAND_IN, encoding="utf-8")
    reference = bench.load_reference(tmp_path)
    tensor, _ = reference.placement()
    assert tensor.device.type == "cpu" and tensor.dtype == torch.float32
    assert reference.torch.randn(3).dtype == torch.float32  # everything else is torch itself
    assert source.read_text(encoding="utf-8") == STAND_IN
    assert torch.bfloat16 is not torch.float32  # the real torch is untouched


def test_a_folder_without_the_reference_is_refused_in_one_line(bench, tmp_path):
    with pytest.raises(SystemExit, match="no attacks/aspl.py"):
        bench.load_reference(tmp_path)


def test_every_recipe_is_a_valid_configuration_of_its_defender(bench):
    """A misspelt option would otherwise fail only after minutes of model loading in a benchmark."""
    from facedefense.registry import get_registry

    registry = get_registry()
    for method, recipe in bench.RECIPES.items():
        registry.load("defender", method.split(":")[0]).Config(model="unused", **recipe(1))


def test_the_metacloak_unit_is_one_iteration_against_a_one_state_pool(bench):
    from facedefense_iterative.metacloak import MetaCloakConfig, pool_steps

    config = MetaCloakConfig(model="unused", **bench.RECIPES["metacloak"](6))
    assert pool_steps(config.train_steps, config.interval) == [0]  # the untrained surrogate, no pool training
    assert (config.steps, config.iterations, config.pgd_steps, config.advance_steps) == (1, 1, 6, 2)
