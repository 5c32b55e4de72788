"""Score folders of images with registered metrics (what ``facedefense evaluate`` runs)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from facedefense.errors import ConfigError, ImageError
from facedefense.io import collect_images, iter_images


def pair_by_stem(generated: Sequence[Path], references: Sequence[Path]) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pair each generated image with the reference of the same file stem; return pairs and orphans."""
    by_stem = {path.stem: path for path in references}
    pairs = [(path, by_stem[path.stem]) for path in generated if path.stem in by_stem]
    orphans = [path for path in generated if path.stem not in by_stem]
    return pairs, orphans


def evaluate_folder(
    generated: str | Path,
    reference: str | Path | None,
    metrics: Sequence[str],
    *,
    device: str | None = None,
) -> dict[str, Any]:
    """Score every image of ``generated`` with each metric.

    Args:
        generated: folder or file of images.
        reference: folder of references paired by file stem, or None for no-reference metrics.
        metrics: registered metric names.
        device: device for the metrics (default: each metric's own default).

    Returns:
        ``{"metrics": {name: {value, higher_is_better, unit, count, per_image}}, "failures": [...]}``
    """
    from facedefense.registry import get_registry

    registry = get_registry()
    options = {"device": device} if device else {}
    instances = {name: registry.load("metric", name)(**options) for name in dict.fromkeys(metrics)}
    generated_paths = collect_images([generated])
    failures: list[dict[str, str]] = []
    if reference is not None:
        pairs, orphans = pair_by_stem(generated_paths, collect_images([reference]))
        failures += [{"input": str(p), "error": f"{p.name}: no reference with stem '{p.stem}'"} for p in orphans]
        if not pairs:
            raise ImageError(f"no image of {generated} has a reference of the same name in {reference}")
    else:
        needing = [name for name, m in instances.items() if m.needs_reference]
        if needing:
            raise ConfigError(f"metric(s) {', '.join(needing)} need --reference")
        pairs = [(path, None) for path in generated_paths]
    per_image: dict[str, dict[str, float]] = {name: {} for name in instances}
    references = dict(iter_images([r for _, r in pairs if r is not None])) if reference is not None else {}
    reference_of = dict(pairs)
    for path, image in iter_images([g for g, _ in pairs]):
        ref_path = reference_of[path]
        ref = references.get(ref_path) if ref_path is not None else None
        problem = image if isinstance(image, ImageError) else ref if isinstance(ref, ImageError) else None
        if problem is None and ref is not None and ref.size != image.size:
            problem = ImageError(f"{path.name}: size {image.size} differs from its reference {ref.size}")
        if problem is not None:
            failures.append({"input": str(path), "error": str(problem)})
            continue
        for name, metric in instances.items():
            result = metric.compute(image.pixels, ref.pixels if ref is not None else None)
            per_image[name][path.name] = result.per_image[0]
    summary = {}
    for name, metric in instances.items():
        values = [v for v in per_image[name].values() if not math.isnan(v)]
        summary[name] = {
            "value": sum(values) / len(values) if values else math.nan,
            "higher_is_better": metric.higher_is_better,
            "unit": metric.unit,
            "count": len(values),
            "per_image": per_image[name],
        }
    return {
        "generated": str(generated),
        "reference": str(reference) if reference is not None else None,
        "metrics": summary,
        "failures": failures,
    }
