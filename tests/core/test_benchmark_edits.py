"""Paired metrics of an editing attack's outputs, as FaceLock's evaluation computes them: each edit
against the same edit of the clean photo (``edit_reference = "clean_edit"``: PSNR, SSIM, LPIPS) or
against its clean source photo (``"source"``: FR, CLIP-I, CLIP-S)."""

from __future__ import annotations

import json
from typing import ClassVar

import pytest

from facedefense.benchmark import run_benchmark
from facedefense.interfaces.editor import Editor
from facedefense.interfaces.metric import PairedMetric
from facedefense.io import load_image
from tests.core.test_benchmark import NoiseDefender, _setup


class TintEditor(Editor):
    """Halves the contrast and shifts toward a level set by the instruction's length (deterministic)."""

    name: ClassVar[str] = "bench_tint"

    def _edit(self, images, prompt, mask, generator):
        return images * 0.5 + (len(prompt) % 7) / 14


class MeanGap(PairedMetric):
    """Mean absolute difference of each image and its reference; compared with the source photo."""

    name: ClassVar[str] = "bench_gap"
    higher_is_better: ClassVar[bool] = False
    protected_if: ClassVar[str] = "higher"
    edit_reference: ClassVar[str] = "source"

    def _pairs(self, images, references):
        return (images - references).abs().flatten(1).mean(1)


GRID = """\
protocol: {profile: facedefense}
identities: [faces]
defenders: [none, bench_noise]
purifiers: [none, jpeg]
attacks:
  - editor: bench_tint
    options: {model: tint}
    instructions: ["make it sunny", "a zombie"]
metrics: [psnr, bench_gap]
seeds: [0]
"""


@pytest.fixture
def grid(tmp_path, register_method):
    register_method("defender", NoiseDefender)
    register_method("editor", TintEditor)
    register_method("metric", MeanGap)
    return _setup(tmp_path, GRID.replace("purifiers: [none, jpeg]", "purifiers: [none]"))  # the values read are unpurified


def _tint(image, prompt):
    return (image * 0.5 + (len(prompt) % 7) / 14).clamp(0, 1)


def test_edits_are_scored_against_the_clean_edit_and_against_their_source(tmp_path, grid):
    out = tmp_path / "out"
    summary = run_benchmark(grid, out)
    assert summary["failures"] == []
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    outputs = [row for row in rows if row["target"] == "output"]
    assert {(row["metric"], row["prompt"]) for row in outputs} == {
        (metric, prompt) for metric in ("psnr", "bench_gap") for prompt in ("make it sunny", "a zombie")
    }
    assert all(row["status"] == "ok" and len(row["per_image"]) == 2 for row in outputs)
    # The attacker's input is still scored once, against the clean photos.
    assert {row["metric"] for row in rows if row["target"] == "input"} == {"psnr", "bench_gap"}

    def value(defender, purifier, metric, prompt):
        (row,) = [r for r in outputs if (r["defender"], r["purifier"], r["metric"], r["prompt"]) == (defender, purifier, metric, prompt)]
        return row["per_image"]

    # Unprotected photos: the edit IS the clean edit (PSNR's cap), and its distance to the source photo
    # is what the tint does to it.
    assert value("none", "none", "psnr", "a zombie") == [100.0, 100.0]
    sources = sorted((tmp_path / "faces").rglob("set_B/*.png"))
    expected = [float((_tint(load_image(p).pixels[0], "a zombie") - load_image(p).pixels[0]).abs().mean()) for p in sources]
    assert value("none", "none", "bench_gap", "a zombie") == pytest.approx(expected, abs=2 / 255)
    # Protected photos: the edit differs from the clean edit by the tinted noise, no more.
    noisy = value("bench_noise", "none", "psnr", "a zombie")
    assert all(30 < psnr < 60 for psnr in noisy)  # 16/255 noise, halved by the tint
    report = (out / "report.md").read_text()
    assert "psnr ↓ P1 (vs clean edit)" in report and "bench_gap ↑ P2 (vs source)" in report
    assert "psnr ↑ (input)" in report


def test_a_personalizer_has_no_output_pairs(tmp_path, register_method):
    """Generated images have no partner: paired metrics score only the attacker's input."""
    from facedefense.benchmark.config import load_config
    from facedefense.benchmark.graph import plan
    from tests.core.test_benchmark import CLEAN, MeanPersonalizer

    register_method("personalizer", MeanPersonalizer)
    stages, cells, _ = plan(load_config(_setup(tmp_path, CLEAN.replace("metrics: [psnr, bench_color]", "metrics: [psnr]"))))
    assert all(len(cell.scores["psnr"]) == 1 for cell in cells)
    assert {stage.spec["target"] for stage in stages if stage.kind == "score"} == {"input"}


def test_the_clean_edit_is_planned_even_when_the_grid_has_no_clean_cell(tmp_path, register_method):
    from facedefense.benchmark.config import load_config
    from facedefense.benchmark.graph import plan

    register_method("defender", NoiseDefender)
    register_method("editor", TintEditor)
    register_method("metric", MeanGap)
    config = _setup(tmp_path, GRID.replace("defenders: [none, bench_noise]", "defenders: [bench_noise]"))
    stages, cells, _ = plan(load_config(config))
    edits = [stage for stage in stages if stage.kind == "edit"]
    assert len(edits) == 3  # noise x (none, jpeg), and the clean photos' edit the PSNR columns compare with
    psnr = [stage for stage in stages if stage.kind == "score" and stage.spec["target"] == "output"
            and stage.spec["metric"]["name"] == "psnr"]
    assert psnr and all(len(stage.deps) == 2 for stage in psnr)


def test_the_facelock_profile_gives_editors_its_25_instructions(tmp_path, register_method):
    from facedefense.benchmark.config import load_config
    from facedefense.benchmark.protocols import FACELOCK_INSTRUCTIONS
    from facedefense.errors import ConfigError

    register_method("editor", TintEditor)
    register_method("metric", MeanGap)
    text = GRID.replace("protocol: {profile: facedefense}", "protocol: {profile: facelock}").replace(
        '    instructions: ["make it sunny", "a zombie"]\n', "").replace("defenders: [none, bench_noise]", "defenders: [none]")
    config = load_config(_setup(tmp_path, text))
    assert config.attacks[0].prompts == FACELOCK_INSTRUCTIONS and len(FACELOCK_INSTRUCTIONS) == 25
    assert config.protocol.eps == pytest.approx(0.015) and config.protocol.lpips_net == "vgg"
    (tmp_path / "bench.yaml").write_text(text.replace("profile: facelock", "profile: facedefense"))
    with pytest.raises(ConfigError, match="needs instructions"):
        load_config(tmp_path / "bench.yaml")
