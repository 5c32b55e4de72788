"""``facedefense benchmark``: config checks, the stage cache, resume, failures, outputs, Ray.

The grid here runs on small test methods registered for the test (a noise defender, a personalizer
that "learns" the mean photo, a set metric), so a whole benchmark takes a second; the Ray test and
the tiny config use registered plugins only, since Ray workers build their own registry.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from facedefense.benchmark import load_config, run_benchmark
from facedefense.errors import ConfigError, OutputError, UnknownMethodError
from facedefense.interfaces.defender import Defender
from facedefense.interfaces.metric import Metric
from facedefense.interfaces.personalizer import PersonalizedModel, Personalizer, read_metadata, write_metadata
from facedefense.testing.benchmark_inputs import write_identities, write_precomputed
from facedefense.testing.cli import invoke

CALLS: dict[str, int] = {"fit": 0, "interrupt_at": 0}
#: Called at the start of every training (what another process does while a run works).
DURING_FIT: list[Callable[[], None]] = []


class NoiseDefender(Defender):
    """Seeded uniform noise at the full budget (image scope)."""

    name: ClassVar[str] = "bench_noise"

    def _perturb(self, images, generator):
        noise = torch.rand(images.shape, generator=generator, device=images.device) * 2 - 1
        return images + noise * self.config.eps


class BrokenDefender(NoiseDefender):
    name: ClassVar[str] = "bench_broken"

    def _perturb(self, images, generator):
        raise RuntimeError("the surrogate diverged")


class MeanModel(PersonalizedModel):
    format: ClassVar[str] = "pipeline"

    def __init__(self, mean: torch.Tensor, personalizer: str = "bench_mean") -> None:
        self.mean, self.personalizer = mean, personalizer

    def generate(self, prompts, *, num_images=1, generator=None, steps=None, guidance_scale=None):
        count = len(prompts) * num_images
        noise = torch.rand((count, *self.mean.shape), generator=generator) * 0.1
        return (self.mean[None] * 0.9 + noise).clamp(0, 1)

    def save(self, directory):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.mean, directory / "mean.pt")
        write_metadata(directory, personalizer=self.personalizer, format=self.format)
        return directory

    @classmethod
    def load(cls, directory, *, device="auto", dtype="auto"):
        return cls(torch.load(Path(directory) / "mean.pt"), read_metadata(directory)["personalizer"])


@dataclass
class MeanConfig(Personalizer.Config):
    model: str = "mean-of-photos"
    steps: int = 1


class MeanPersonalizer(Personalizer):
    """"Learns" an identity as the mean of its photos (resized to 32 px)."""

    name: ClassVar[str] = "bench_mean"
    Config = MeanConfig
    Model = MeanModel

    def _fit(self, images, *, instance_prompt, class_images, class_prompt, output_dir, generator):
        CALLS["fit"] += 1
        for hook in DURING_FIT:
            hook()
        if CALLS["interrupt_at"] and CALLS["fit"] == CALLS["interrupt_at"]:
            raise KeyboardInterrupt  # what a kill half-way looks like to the runner
        resized = torch.stack([torch.nn.functional.interpolate(i[None], size=(32, 32), mode="area")[0] for i in images])
        model = MeanModel(resized.mean(0), self.name)
        if output_dir is not None:
            model.save(output_dir)
        return model


class BrokenMean(MeanPersonalizer):
    name: ClassVar[str] = "bench_broken_mean"

    def _fit(self, images, **kwargs):
        raise RuntimeError("the training diverged")


class MeanDistance(Metric):
    """Distance of each image's mean colour to the reference set's (a set metric)."""

    name: ClassVar[str] = "bench_color"
    pairing: ClassVar[str] = "set"
    higher_is_better: ClassVar[bool] = False

    def _compute(self, images, references, prompts):
        center = torch.stack([r.mean((1, 2)) for r in references]).mean(0)
        return [float((image.mean((1, 2)) - center).abs().sum()) for image in images]


@pytest.fixture
def methods(register_method):
    register_method("defender", NoiseDefender)
    register_method("defender", BrokenDefender)
    register_method("personalizer", MeanPersonalizer, version="1")
    register_method("personalizer", BrokenMean)
    register_method("metric", MeanDistance)
    CALLS.update(fit=0, interrupt_at=0)
    DURING_FIT.clear()
    yield register_method
    DURING_FIT.clear()


GRID = """\
protocol: {profile: gap_diff, num_images: 2, prompts: ["a photo of sks person", "a dslr portrait of sks person"]}
identities: [faces]
defenders:
  - none
  - name: bench_noise
  - {label: other_tool, precomputed: published}
protected_share: [1.0, 0.5]
purifiers: [none, jpeg]
attacks:
  - personalizer: bench_mean
metrics: [psnr, bench_color]
seeds: [0]
"""


def _setup(tmp_path: Path, text: str = GRID, identities: int = 1) -> Path:
    write_identities(tmp_path / "faces", identities=identities, per_set=2, size=32)
    write_precomputed(tmp_path / "faces", tmp_path / "published")
    (tmp_path / "bench.yaml").write_text(text, encoding="utf-8")
    return tmp_path / "bench.yaml"


SMALL = GRID.replace("protected_share: [1.0, 0.5]", "protected_share: [1.0]")
#: Clean photos only: one protection, a training per purifier.
CLEAN = SMALL.replace("  - name: bench_noise\n  - {label: other_tool, precomputed: published}\n", "")


def _values(output: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (output / "results.jsonl").read_text().splitlines()]
    return [(r["cell"], r["metric"], r["prompt"], r["status"], r["per_image"]) for r in rows]


def test_grid_runs_through_the_cli_then_finishes_from_the_cache(tmp_path, methods):
    config = _setup(tmp_path)
    first = invoke("benchmark", config, "--output", tmp_path / "out", "--no-progress")
    assert first.exit_code == 0, first.output
    out = tmp_path / "out"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # cells: none + (noise, published) x 2 shares = 5 protections x 2 purifiers x 1 attack = 10
    assert len({r["cell"] for r in rows}) == 10
    assert {r["status"] for r in rows} == {"ok"}
    psnr = [r for r in rows if r["metric"] == "psnr"]
    assert all(r["target"] == "input" and len(r["per_image"]) == 2 for r in psnr)
    clean = next(r for r in psnr if r["defender"] == "none" and r["purifier"] == "none")
    assert clean["per_image"] == [100.0, 100.0]  # the clean photos are their own reference (PSNR's cap)
    half = next(r for r in psnr if r["defender"] == "bench_noise" and r["share"] == 0.5 and r["purifier"] == "none")
    assert half["per_image"][0] < 50 and half["per_image"][1] == 100.0  # one of two protected
    color = [r for r in rows if r["metric"] == "bench_color"]
    assert {r["prompt"] for r in color} == {"a photo of sks person", "a dslr portrait of sks person"}
    assert all(len(r["per_image"]) == 2 for r in color)
    assert rows[0]["protocol"]["profile"] == "gap_diff" and rows[0]["protocol"]["eps"] == pytest.approx(16 / 255)
    noise = next(r for r in rows if r["defender"] == "bench_noise")
    assert noise["methods"]["defender"]["options"]["eps"] == pytest.approx(16 / 255)  # the protocol's budget
    assert CALLS["fit"] == 10
    # one protection per identity/defender/share serves both purifiers: 5 protect stages, not 10
    assert len(list((out / "cache" / "protect").iterdir())) == 5
    report = (out / "report.md").read_text()
    assert "| defender | purifier | psnr ↑ (input) | bench_color ↑ P1 | bench_color ↑ P2 |" in report
    assert "| bench_noise | **worst case** |" in report and "| none | none |" in report
    # The settings the attack ran with (issue 25 item 9), not protocol fields no method of the grid took.
    settings = next(line for line in report.splitlines() if line.startswith("Settings: "))
    assert "model `mean-of-photos`" in settings and "steps 1" in settings, settings
    assert "Generation: 2 image(s) per prompt" in settings, settings
    assert re.search(r"\| dreambooth_steps \| \d+ \(not used by this grid\) \|", report)  # only a personalizer named dreambooth takes it
    assert not re.search(r"\| num_images \| .*not used", report)
    assert (out / "examples.png").is_file() and len(list((out / "examples").glob("*.png"))) == 10

    again = invoke("benchmark", config, "--output", tmp_path / "out", "--no-progress")
    assert again.exit_code == 0, again.output
    summary = json.loads((out / "run.json").read_text())
    assert summary["computed"] == 0 and summary["cached"] == summary["stages"]
    assert CALLS["fit"] == 10
    assert _values(out) == [(c, m, p, s, v) for c, m, p, s, v in _values(out)]


def test_an_interrupted_run_resumes_without_redoing_finished_stages_and_a_new_method_version_recomputes_its_own(tmp_path, methods):
    import dataclasses

    from facedefense.registry import get_registry

    config = _setup(tmp_path, SMALL)
    reference = run_benchmark(config, tmp_path / "reference")
    assert CALLS["fit"] == 6
    CALLS.update(fit=0, interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config, tmp_path / "out")
    assert len(list((tmp_path / "out" / "cache" / "train").glob("*/stage.json"))) == 3
    assert not list((tmp_path / "out" / "cache" / "train").glob(".*"))  # nothing half-written looks finished
    assert json.loads((tmp_path / "out" / "facedefense.json").read_text())["status"] == "interrupted"
    CALLS.update(fit=0, interrupt_at=0)
    resumed = run_benchmark(config, tmp_path / "out")
    assert CALLS["fit"] == 3  # the 3 trainings finished before the interruption are reused
    assert resumed["cached"] > 0 and resumed["stages"] == reference["stages"]
    assert _values(tmp_path / "out") == _values(tmp_path / "reference")

    # the finished reference run again, after the personalizer's plugin was upgraded
    CALLS.update(fit=0)
    specs = get_registry().specs["personalizer"]
    specs["bench_mean"] = dataclasses.replace(specs["bench_mean"], version="2")
    summary = run_benchmark(config, tmp_path / "reference")
    assert CALLS["fit"] == 6  # every training (and what follows it) again
    # protections (3), purifications (6) and the input metrics (6) are still valid
    assert summary["cached"] == 3 + 6 + 6 and summary["computed"] == summary["stages"] - 15


def test_a_failing_cell_is_recorded_and_the_rest_continue(tmp_path, methods):
    config = _setup(tmp_path, CLEAN.replace("  - none\n", "  - none\n  - bench_broken\n"))
    result = invoke("benchmark", config, "--output", tmp_path / "out", "--no-progress")
    assert result.exit_code == 1
    assert "cell(s) failed" in result.output and "the surrogate diverged" in result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    broken = [r for r in rows if r["defender"] == "bench_broken"]
    assert broken and all(r["status"] in ("failed", "skipped") and "surrogate diverged" in r["error"] for r in broken)
    assert all(r["status"] == "ok" for r in rows if r["defender"] != "bench_broken")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Failures" in report and "surrogate diverged" in report


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("purifiers: [none, jpeg]", "purifers: [none, jpeg]"), "bench.yaml:8: unknown key 'purifers' in the config (did you mean 'purifiers'?)"),
        (("  - name: bench_noise", "  - name: bench_nosie"), "bench.yaml:5: unknown defender 'bench_nosie'. Did you mean: bench_noise, bench_broken? Available:"),
        (("metrics: [psnr, bench_color]", "metrics: [psnr, jpeg]"), "bench.yaml:11: 'jpeg' is a purifier, not a metric"),
        (("  - personalizer: bench_mean", "  - personalizer: bench_mean\n    options: {stpes: 3}"), "bench.yaml:11: personalizer 'bench_mean' has no option 'stpes' (did you mean 'steps'?)"),
        (("profile: gap_diff", "profile: gapdiff"), "bench.yaml:1: unknown protocol profile 'gapdiff' (did you mean 'gap_diff'?)"),
        (("num_images: 2", "num_imgs: 2"), "bench.yaml:1: unknown key 'num_imgs' in protocol (did you mean 'num_images'?)"),
        (("seeds: [0]", "seeds: [0, -1]"), "bench.yaml:12: seeds are integers from 0 to"),
    ],
)
def test_bad_config_is_one_line_naming_the_line(tmp_path, methods, edit, message):
    config = _setup(tmp_path, GRID.replace(*edit))
    with pytest.raises((ConfigError, UnknownMethodError)) as raised:
        load_config(config)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_identity_without_set_b_and_mismatched_precomputed_names(tmp_path, methods):
    config = _setup(tmp_path)
    (tmp_path / "published" / "id0" / "0_B1.png").rename(tmp_path / "published" / "id0" / "other.png")
    with pytest.raises(ConfigError, match=r"bench.yaml:6: precomputed images in .*id0 do not match id0/set_B by name: missing 0_B1; unexpected other"):
        load_config(config)
    for path in (tmp_path / "faces" / "id0" / "set_B").iterdir():
        path.unlink()
    (tmp_path / "faces" / "id0" / "set_B").rmdir()
    result = invoke("benchmark", config, "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert "bench.yaml:2: identity folder" in result.output and "has no set_B (the photos to protect)" in result.output
    assert not (tmp_path / "out").exists()


def test_protocol_fields_reach_the_methods_unless_the_entry_sets_them(tmp_path, methods):
    from facedefense.benchmark.graph import plan

    config = load_config(_setup(tmp_path, GRID.replace("  - name: bench_noise", "  - name: bench_noise\n    options: {eps: 4/255}")))
    assert config.protocol.eps == pytest.approx(16 / 255) and config.protocol.num_images == 2
    stages, cells, described = plan(config)
    assert described["defender:bench_noise"]["config"]["eps"] == pytest.approx(4 / 255)
    assert described["personalizer:bench_mean"]["options"]["instance_prompt"] == "a photo of sks person"
    generate = next(s for s in stages if s.kind == "generate")
    assert generate.spec["num_images"] == 2 and generate.spec["steps"] == 100  # gap_diff: 100 sampling steps


@pytest.mark.integration
def test_ray_executor_gives_the_local_results(tmp_path, tiny_sd_path):
    pytest.importorskip("ray", reason="ray is an optional extra: pip install 'facedefense[ray]'")
    text = f"""\
protocol: {{profile: facedefense, resolution: 32}}
model: {tiny_sd_path}
device: cpu
identities: [faces]
defenders: [none, {{label: other_tool, precomputed: published}}]
purifiers: [none, jpeg]
attacks:
  - editor: sdedit
    options: {{steps: 2, resolution: 32}}
    instructions: ["a painting of a person"]
metrics: [psnr]
"""
    config = _setup(tmp_path, text)
    local = run_benchmark(config, tmp_path / "local")
    distributed = run_benchmark(config, tmp_path / "ray", executor="ray", num_cpus=1)  # one worker: one model load
    assert distributed["failures"] == [] and distributed["computed"] == local["computed"] == local["stages"]
    ray, here = _values(tmp_path / "ray"), _values(tmp_path / "local")
    assert [row[:4] for row in ray] == [row[:4] for row in here]
    for (cell, _metric, prompt, _, values), (*_, expected) in zip(ray, here):
        if prompt is None:  # the attacker's input: JPEG and copies, exactly the same
            assert values == expected, cell
        else:  # an edit scored against the clean edit: sdedit's floats, rounded to 8 bits, may flip a
            assert values == pytest.approx(expected, rel=1e-3), cell  # pixel with another thread count


def test_stage_keys_follow_model_weights_not_folders_a_method_writes_into(tmp_path):
    from facedefense.benchmark.graph import local_signature

    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "weights.safetensors").write_bytes(b"0" * 10)
    (model / "model_index.json").write_text("{}")
    before = local_signature(str(model))
    (model / "model_index.json").write_text('{"touched": true}')  # configs and caches do not count
    assert local_signature(str(model)) == before
    (model / "unet" / "weights.safetensors").write_bytes(b"1" * 11)  # rebuilt weights do
    assert local_signature(str(model)) != before
    assert local_signature(str(tmp_path / "missing")) is None and local_signature("a photo of sks person") is None


# -- the output folder: claimed, locked, listed (issue 26) ----------------------------------------


def test_the_manifest_lists_the_run_and_a_rerun_drops_what_it_no_longer_makes(tmp_path, methods):
    config, out = _setup(tmp_path, CLEAN), tmp_path / "out"
    previous = os.umask(0o022)
    try:
        run_benchmark(config, out)
        manifest = json.loads((out / "facedefense.json").read_text())
        assert manifest["command"] == "benchmark" and manifest["status"] == "completed"
        assert manifest["folders"] == ["cache"] and manifest["summary"]["failed"] == 0
        written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] not in ("cache", "facedefense.json")}
        assert written == set(manifest["files"]) and {"results.jsonl", "report.md", "report.html", "run.json", "examples.png"} <= written
        page = (out / "report.html").read_text(encoding="utf-8")  # one self-contained page: the tables and examples.png
        assert "<table" in page and 'src="data:image/png;base64,' in page and not re.search(r'(src|href)="(?!data:|#)', page)
        assert {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()} == {"0o644"}  # the umask's, not 0600
        config.write_text(CLEAN.replace("purifiers: [none, jpeg]", "purifiers: [none]"))
        run_benchmark(config, out)  # the same output, one purifier fewer: its cells' examples go
    finally:
        os.umask(previous)
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "completed" and [run["status"] for run in manifest["earlier_runs"]] == ["completed"]
    examples = sorted(p.name for p in (out / "examples").iterdir())
    assert examples == ["id0__none__none__bench_mean__seed0.png"]
    assert {f"examples/{name}" for name in examples} <= set(manifest["files"]) and not any("__jpeg__" in f for f in manifest["files"])


def test_a_second_run_is_refused_while_the_first_works_and_its_stages_survive(tmp_path, methods):
    """Two processes on one output (or one shared cache): the second's clean-up used to delete the
    first's unfinished stage. The folder locks refuse the second run before it touches anything."""
    config, out, shared = _setup(tmp_path, CLEAN), tmp_path / "out", tmp_path / "shared"
    seen: list[str] = []

    def another_run() -> None:
        if seen:
            return
        unfinished = list((shared / "train").glob(".*.tmp-*"))
        for output in (out, tmp_path / "other"):  # the same output; another output on the same cache
            try:
                run_benchmark(config, output, cache=shared)
                seen.append("not refused")
            except OutputError as exc:
                seen.append(str(exc))
        seen.append(f"unfinished stage kept: {bool(unfinished) and all(p.is_dir() for p in unfinished)}")

    DURING_FIT.append(another_run)
    first = run_benchmark(config, out, cache=shared)
    assert "being written by another facedefense run" in seen[0] and str(out) in seen[0]
    assert "being written by another facedefense run" in seen[1] and str(shared) in seen[1]
    assert seen[2] == "unfinished stage kept: True" and first["failed"] == 0 and not (tmp_path / "other").exists()
    DURING_FIT.clear()
    again = run_benchmark(config, tmp_path / "other", cache=shared)  # one run at a time shares the cache
    assert again["computed"] == 0 and again["cached"] == again["stages"]
    assert json.loads((shared / "facedefense.json").read_text())["command"] == "benchmark-cache"
    assert json.loads((out / "facedefense.json").read_text())["folders"] == []  # its cache is elsewhere


def test_a_failed_stage_is_a_failed_run_even_when_no_cell_reads_it(tmp_path, methods):
    """An attack scored only by input metrics: no row depends on it, yet the run is incomplete."""
    text = CLEAN.replace("personalizer: bench_mean", "personalizer: bench_broken_mean").replace("metrics: [psnr, bench_color]", "metrics: [psnr]")
    config, out = _setup(tmp_path, text), tmp_path / "out"
    result = invoke("benchmark", config, "--output", out, "--no-progress")
    assert result.exit_code == 1, result.output
    assert "2 stage(s) failed, 0 cell(s) failed" in result.output and "the training diverged" in result.output
    summary = json.loads((out / "run.json").read_text())
    assert summary["failed"] == 2 and summary["failed_cells"] == 0
    report = (out / "report.md").read_text()
    assert "**Incomplete: 2 stage(s) failed**" in report and "| train bench_broken_mean on " in report
    manifest = json.loads((out / "facedefense.json").read_text())
    assert manifest["status"] == "failed" and "2 stage(s) failed" in manifest["error"]


def test_example_file_names_fit_a_file_system():
    from facedefense.benchmark.graph import Cell
    from facedefense.benchmark.report import example_file

    def cell(attack: str) -> Cell:
        return Cell("é" * 100, "d" * 100, 0.5, "p" * 100, attack, 7, "k", "k", "k")

    long_a, long_b = example_file(cell("a" * 99 + "1")), example_file(cell("a" * 99 + "2"))
    assert long_a != long_b and all(len(Path(name).name.encode()) <= 255 for name in (long_a, long_b))
    assert example_file(Cell("id0", "none", 0.0, "jpeg", "lora", 0, "k", "k", "k")) == "examples/id0__none__jpeg__lora__seed0.png"
