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
    """Pair each generated image with the reference of the same file stem; return pairs and orphans
    ([`facedefense.pairing.pair_by_pattern`][facedefense.pairing.pair_by_pattern] with other name
    patterns)."""
    from facedefense.pairing import pair_by_pattern

    return pair_by_pattern(generated, references)


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
    match: str = "{stem}",
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
        match: how a generated file's stem is built from its reference's, for paired metrics:
            ``"{stem}"`` (same names, default), ``"noisy_{stem}"`` (MetaCloak's release), ...

    Returns:
        ``{"generated", "reference", "metrics": {name: {value, higher_is_better, protected_if,
        unit, count, pairing, details, per_image: {file name: value} | None}}, "failures": [...]}``

    Raises:
        ConfigError: a metric needs references or prompts that were not given.
        ImageError: nothing to score, or no image pairs with a reference (the message lists the
            unmatched names).
    """
    from facedefense.pairing import pair_by_pattern
    from facedefense.registry import get_registry

    registry = get_registry()
    names = list(dict.fromkeys(metrics or default_metrics()))
    if not names:
        raise ConfigError("no metric given and none registered as a default; name one (metrics=[...], --metric NAME on the command line)")
    extra = {"device": device} if device else {}
    instances = {name: registry.create("metric", name, **{**extra, **(options or {}).get(name, {})}) for name in names}
    if reference is None:
        needing = [name for name, m in instances.items() if m.needs_reference]
        if needing:
            raise ConfigError(f"metric(s) {', '.join(needing)} need reference images (reference=..., --reference)")
    needing_prompt = [name for name, m in instances.items() if m.needs_prompt]
    if needing_prompt and not prompts:
        raise ConfigError(f"metric(s) {', '.join(needing_prompt)} need a prompt (prompts=..., --prompt)")

    failures: list[dict[str, str]] = []
    generated_paths = collect_images([generated])
    images = _load_all(generated_paths, failures)
    reference_paths = collect_images([reference]) if reference is not None else []
    references = _load_all(reference_paths, failures) if reference_paths else {}
    if not images:
        raise ImageError(f"no readable image in {generated}" + (f" ({failures[0]['error']})" if failures else ""))

    summary: dict[str, Any] = {}
    for name, metric in instances.items():
        paths = list(images)
        refs = None
        if metric.pairing == "paired":
            pairs, orphans = pair_by_pattern(paths, list(references), match)
            if not pairs:
                shown = ", ".join(p.name for p in orphans[:5]) + (f" and {len(orphans) - 5} more" if len(orphans) > 5 else "")
                raise ImageError(
                    f"metric '{name}' pairs images by name (--match '{match}'), but none of {generated} matches "
                    f"a reference in {reference}: unmatched {shown}"
                )
            for orphan in orphans:
                failures.append({"input": str(orphan), "error": f"{orphan.name}: no reference matching '{match}' ({name})"})
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


def evaluate_identities(
    generated: str | Path,
    reference: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """[`evaluate_folder`][facedefense.evaluation.evaluate_folder] per identity when ``generated`` holds one
    subfolder per person.

    References come from the subfolder of ``reference`` with the same name, or from ``reference``
    itself when it has no subfolders (see
    [`facedefense.pairing.identity_groups`][facedefense.pairing.identity_groups]). With a single folder of
    images this is [`evaluate_folder`][facedefense.evaluation.evaluate_folder] plus ``"identities"``.

    Args:
        generated: as [`evaluate_folder`][facedefense.evaluation.evaluate_folder].
        reference: as [`evaluate_folder`][facedefense.evaluation.evaluate_folder].
        metrics: as [`evaluate_folder`][facedefense.evaluation.evaluate_folder].
        kwargs: ``prompts``, ``options``, ``device``, ``match`` of
            [`evaluate_folder`][facedefense.evaluation.evaluate_folder].

    Returns:
        ``{"generated", "reference", "identities": {name: evaluate_folder result}, "metrics": {name:
        {value: mean over identities, ..., "identities": count}}, "failures": [...]}``.
    """
    from facedefense.pairing import identity_groups

    groups = identity_groups(generated, reference)
    per_identity = {group.name: evaluate_folder(group.generated, group.reference, metrics, **kwargs) for group in groups}
    if len(per_identity) == 1:
        (only,) = per_identity.values()
        return {**only, "identities": per_identity}
    summary: dict[str, Any] = {}
    for name in next(iter(per_identity.values()))["metrics"]:
        entries = [result["metrics"][name] for result in per_identity.values()]
        defined = [e["value"] for e in entries if not math.isnan(e["value"])]
        summary[name] = {
            **{key: entries[0][key] for key in ("higher_is_better", "protected_if", "unit", "pairing")},
            "value": sum(defined) / len(defined) if defined else math.nan,
            "count": sum(e["count"] for e in entries),
            "identities": len(defined),
            "details": {},
            "per_image": None,
        }
    return {
        "generated": str(generated),
        "reference": str(reference) if reference is not None else None,
        "identities": per_identity,
        "metrics": summary,
        "failures": [f for result in per_identity.values() for f in result["failures"]],
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
