"""Score folders of images with registered metrics (what ``facedefense evaluate`` runs).

Each metric is computed once over the whole folder (model-based metrics batch inside): a paired
metric pairs each image with the reference of the same file stem, a set metric compares the folder
with the whole reference folder (any sizes and count), a prompt metric gets the prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facedefense.errors import ConfigError, ImageError
from facedefense.io import LoadedImage, collect_images, iter_images


def pair_by_stem(generated: Sequence[Path], references: Sequence[Path]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pair each generated image with the reference of the same file stem; return pairs and orphans."""
    by_stem = {path.stem: path for path in references}
    pairs = [(path, by_stem[path.stem]) for path in generated if path.stem in by_stem]
    orphans = [path for path in generated if path.stem not in by_stem]
    return pairs, orphans


def _load_all(paths: Sequence[Path], failures: list[dict[str, str]]) -> dict[Path, LoadedImage]:
    loaded: dict[Path, LoadedImage] = {}
    for path, item in iter_images(list(paths)):
        if isinstance(item, ImageError):
            failures.append({"input": str(path), "error": str(item)})
        else:
            loaded[path] = item
    return loaded


def default_metrics() -> list[str]:
    """The metrics ``evaluate`` computes when none is named: those registered with tag ``"default"``."""
    from facedefense.registry import get_registry

    return get_registry().tagged("metric", "default")


def evaluate_folder(
    generated: str | Path,
    reference: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    *,
    prompts: str | Sequence[str] | None = None,
    options: dict[str, dict[str, Any]] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Score every image of ``generated`` with each metric.

    Args:
        generated: folder or file of images.
        reference: folder of references: originals paired by file stem for paired metrics, a clean
            set (any sizes and count) for set metrics.
        metrics: registered metric names (default: the metrics tagged ``"default"``).
        prompts: for metrics that need prompts: one for all images, or one per image.
        options: per-metric options, ``{"ism": {"backend": "dlib"}}``.
        device: device for the metrics (default: each metric's own default).

    Returns:
        ``{"generated", "reference", "metrics": {name: {value, higher_is_better, protected_if,
        unit, count, pairing, details, per_image: {file name: value} | None}}, "failures": [...]}``

    Raises:
        ConfigError: a metric needs references or prompts that were not given.
        ImageError: nothing to score, or no image pairs with a reference.
    """
    from facedefense.registry import get_registry

    registry = get_registry()
    names = list(dict.fromkeys(metrics or default_metrics()))
    if not names:
        raise ConfigError("no metric given and none registered as a default; pass --metric NAME")
    extra = {"device": device} if device else {}
    instances = {name: registry.create("metric", name, **{**extra, **(options or {}).get(name, {})}) for name in names}
    if reference is None:
        needing = [name for name, m in instances.items() if m.needs_reference]
        if needing:
            raise ConfigError(f"metric(s) {', '.join(needing)} need --reference")
    needing_prompt = [name for name, m in instances.items() if m.needs_prompt]
    if needing_prompt and not prompts:
        raise ConfigError(f"metric(s) {', '.join(needing_prompt)} need --prompt")

    failures: list[dict[str, str]] = []
    generated_paths = collect_images([generated])
    images = _load_all(generated_paths, failures)
    reference_paths = collect_images([reference]) if reference is not None else []
    references = _load_all(reference_paths, failures) if reference_paths else {}
    if not images:
        raise ImageError(f"no readable image in {generated}")

    summary: dict[str, Any] = {}
    for name, metric in instances.items():
        paths = list(images)
        refs = None
        if metric.pairing == "paired":
            pairs, orphans = pair_by_stem(paths, list(references))
            for orphan in orphans:
                failures.append({"input": str(orphan), "error": f"{orphan.name}: no reference with stem '{orphan.stem}' ({name})"})
            sized = [(g, r) for g, r in pairs if images[g].size == references[r].size]
            for g, r in pairs:
                if images[g].size != references[r].size:
                    failures.append(
                        {"input": str(g), "error": f"{g.name}: size {images[g].size} differs from its reference {references[r].size} ({name})"}
                    )
            if not sized:
                raise ImageError(f"no image of {generated} has a same-size reference of the same name in {reference}")
            paths = [g for g, _ in sized]
            refs = [references[r].pixels[0] for _, r in sized]
        elif metric.pairing == "set":
            if not references:
                raise ImageError(f"metric '{name}' compares with a reference set, but {reference} has no readable image")
            refs = [item.pixels[0] for item in references.values()]
        prompt_list = prompts if isinstance(prompts, str) or prompts is None else list(prompts)
        result = metric.compute([images[p].pixels[0] for p in paths], refs, prompts=prompt_list if metric.needs_prompt else None)
        summary[name] = {
            "value": result.value,
            "higher_is_better": result.higher_is_better,
            "protected_if": result.protected_if,
            "unit": result.unit,
            "count": result.count,
            "pairing": metric.pairing,
            "details": result.details,
            "per_image": dict(zip((p.name for p in paths), result.per_image)) if result.per_image is not None else None,
        }
    return {
        "generated": str(generated),
        "reference": str(reference) if reference is not None else None,
        "metrics": summary,
        "failures": _unique(failures),
    }


def _unique(failures: list[dict[str, str]]) -> list[dict[str, str]]:
    seen, unique = set(), []
    for failure in failures:
        key = (failure["input"], failure["error"])
        if key not in seen:
            seen.add(key)
            unique.append(failure)
    return unique


def format_value(value: float) -> str:
    """A metric value for a table: 4 decimals, ``n/a`` when undefined."""
    return "n/a" if math.isnan(value) else f"{value:.4f}"
