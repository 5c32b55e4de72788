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

    from facedefense.progress import status

    summary: dict[str, Any] = {}
    for name, metric in instances.items():
        # a model-based metric loads its network on first use, then scores: say so before it starts
        status(f"{name}: scoring {len(images)} image(s) of {generated}")
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
            "measures": metric.measures,
            "visibility": metric.visibility,
            "details": result.details,
            "per_image": dict(zip((p.name for p in paths), result.per_image)) if result.per_image is not None else None,
        }
    return {
        "generated": str(generated),
        "reference": str(reference) if reference is not None else None,
        "metrics": summary,
        "failures": _unique(failures),
    }


def generation_prompts(folder: str | Path) -> dict[str, str]:
    """The prompt behind each prompt folder of an ``attack`` run: ``{folder name: prompt}`` for
    ``OUT/images`` (its subfolders) or one ``OUT/images/<prompt>`` folder, read from the run's
    manifest; empty for any other folder."""
    from facedefense.outputs import read_manifest

    folder = Path(folder)
    for root in (folder.parent, folder.parent.parent):
        manifest = read_manifest(root) or {}
        listed = manifest.get("prompts")
        if manifest.get("command") == "attack" and isinstance(listed, list):
            found = {}
            for entry in listed:
                if isinstance(entry, dict) and isinstance(entry.get("folder"), str) and isinstance(entry.get("prompt"), str):
                    path = (root / entry["folder"]).resolve()
                    if path.parent == folder.resolve() or path == folder.resolve():
                        found[path.name] = entry["prompt"]
            return found
    return {}


def evaluate_identities(
    generated: str | Path,
    reference: str | Path | None = None,
    metrics: Sequence[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """[`evaluate_folder`][facedefense.evaluation.evaluate_folder] per group when ``generated`` holds
    subfolders of images: one identity each, or one prompt each (an ``attack`` run's ``images/``).

    References come from the subfolder of ``reference`` with the same name, or from ``reference``
    itself when it has no subfolders (see
    [`facedefense.pairing.identity_groups`][facedefense.pairing.identity_groups]). A prompt folder
    gets its prompt (from the attack's manifest) for the metrics that need one, unless ``prompts``
    is given. With a single folder of images this is
    [`evaluate_folder`][facedefense.evaluation.evaluate_folder].

    Args:
        generated: as [`evaluate_folder`][facedefense.evaluation.evaluate_folder].
        reference: as [`evaluate_folder`][facedefense.evaluation.evaluate_folder].
        metrics: as [`evaluate_folder`][facedefense.evaluation.evaluate_folder].
        kwargs: ``prompts``, ``options``, ``device``, ``match`` of
            [`evaluate_folder`][facedefense.evaluation.evaluate_folder].

    Returns:
        One folder: the result of [`evaluate_folder`][facedefense.evaluation.evaluate_folder]. Several:
        ``{"generated", "reference", "grouped_by": "identity" | "prompt", "identities" | "prompts":
        {name: {"generated", "reference", ("prompt",) "metrics"}}, "metrics": {name: {value: mean
        over the groups with a value, ..., "identities" | "prompts": that count, "details":
        {"undefined": why a group has no value}}}, "failures": [...]}``: each value once.
    """
    from facedefense.pairing import identity_groups

    groups = identity_groups(generated, reference)
    prompts = generation_prompts(generated) if len(groups) > 1 else {}
    if len(groups) == 1:
        own = generation_prompts(groups[0].generated).get(Path(groups[0].generated).name)
        if own and kwargs.get("prompts") is None:
            kwargs = {**kwargs, "prompts": own}
        return evaluate_folder(groups[0].generated, groups[0].reference, metrics, **kwargs)
    kind, plural = ("prompt", "prompts") if prompts and all(g.name in prompts for g in groups) else ("identity", "identities")
    results: dict[str, Any] = {}
    failures: list[dict[str, str]] = []
    for group in groups:
        options = dict(kwargs)
        if kind == "prompt" and options.get("prompts") is None:
            options["prompts"] = prompts[group.name]
        result = evaluate_folder(group.generated, group.reference, metrics, **options)
        failures += result.pop("failures")
        results[group.name] = {**({"prompt": prompts[group.name]} if kind == "prompt" else {}), **result}
    summary: dict[str, Any] = {}
    for name in next(iter(results.values()))["metrics"]:
        entries = {group: result["metrics"][name] for group, result in results.items()}
        defined = [e["value"] for e in entries.values() if not math.isnan(e["value"])]
        undefined = {group: e["details"].get("undefined", "no value") for group, e in entries.items() if math.isnan(e["value"])}
        details: dict[str, Any] = {}
        if undefined:
            reasons = set(undefined.values())
            every = f"all {len(entries)}" if len(undefined) == len(entries) else f"{len(undefined)} of {len(entries)}"
            details["undefined"] = (
                f"{reasons.pop()} ({every} {plural})" if len(reasons) == 1
                else "; ".join(f"{group}: {reason}" for group, reason in undefined.items())
            )
        first = next(iter(entries.values()))
        summary[name] = {
            **{key: first[key] for key in ("higher_is_better", "protected_if", "unit", "pairing", "measures", "visibility")},
            "value": sum(defined) / len(defined) if defined else math.nan,
            "count": sum(e["count"] for e in entries.values()),
            plural: len(defined),
            "details": details,
            "per_image": None,
        }
    return {
        "generated": str(generated),
        "reference": str(reference) if reference is not None else None,
        "grouped_by": kind,
        plural: results,
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
