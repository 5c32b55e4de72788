"""Run a defender or purifier over image files: batching, prefetching, atomic output, manifest.

This is what ``facedefense protect`` and ``facedefense purify`` call; it is public so scripts get
the same guarantees (inputs never modified, budget checked on the written 8-bit values, a JSON
manifest per output folder, bad files reported without stopping the others).
"""

from __future__ import annotations

import datetime
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.budget import check_budget
from facedefense.errors import FaceDefenseError, ImageError
from facedefense.io import (
    LoadedImage,
    collect_images,
    iter_images,
    prepare_output_dir,
    save_image,
    to_uint8,
    write_json,
)

if TYPE_CHECKING:
    from torch import Tensor

    from facedefense.interfaces import Defender, Purifier

MANIFEST_NAME = "facedefense.json"


@dataclass
class RunReport:
    """Outcome of a run over files: the manifest written and the failures."""

    manifest_path: Path
    manifest: dict[str, Any]
    succeeded: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


def versions() -> dict[str, str]:
    """Versions of the software that produced an output."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("facedefense", "torch", "diffusers", "transformers"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _batches(
    loaded: Iterator[tuple[Path, LoadedImage | ImageError]], batch_size: int, failed: list[dict[str, Any]]
) -> Iterator[list[LoadedImage]]:
    """Group consecutive same-size images into batches of at most ``batch_size``; record bad files."""
    batch: list[LoadedImage] = []
    for path, item in loaded:
        if isinstance(item, ImageError):
            failed.append({"input": str(path), "error": str(item)})
            continue
        if batch and (item.size != batch[0].size or len(batch) == batch_size):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _run(
    command: str,
    method_info: dict[str, Any],
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    process: Callable[[Tensor], tuple[Tensor, list[dict[str, Any]]]],
    *,
    batch_size: int,
    progress: bool,
    extra: dict[str, Any],
) -> RunReport:
    import torch
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise FaceDefenseError(f"--batch-size must be at least 1, got {batch_size}")
    paths = collect_images(inputs)
    targets = dict(zip(paths, prepare_output_dir(output_dir, paths)))
    output_dir = Path(output_dir)
    manifest: dict[str, Any] = {
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": method_info,
        **extra,
        "versions": versions(),
        "images": [],
        "failures": [],
    }
    report = RunReport(output_dir / MANIFEST_NAME, manifest, manifest["images"], manifest["failures"])
    bar = tqdm(total=len(paths), desc=f"{command} ({method_info.get('name', '')})", unit="img", disable=not progress)
    try:
        for batch in _batches(iter_images(paths, prefetch=batch_size + 1), batch_size, report.failed):
            started = time.perf_counter()
            images = torch.cat([item.pixels for item in batch])
            outputs, stats = process(images)
            seconds = (time.perf_counter() - started) / len(batch)
            for index, item in enumerate(batch):
                target = targets[item.path]
                save_image(outputs[index], target, alpha=item.alpha, icc_profile=item.icc_profile)
                entry = {"input": str(item.path), "output": target.name, "width": item.size[1], "height": item.size[0]}
                entry.update(stats[index] if index < len(stats) else {})
                entry["seconds"] = round(seconds, 4)
                report.succeeded.append(entry)
            bar.update(len(batch))
        bar.update(len(report.failed))
    finally:
        bar.close()
        manifest["summary"] = {"processed": len(report.succeeded), "failed": len(report.failed)}
        write_json(manifest, report.manifest_path)
    return report


def protect_files(
    defender: Defender,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    batch_size: int = 1,
    progress: bool = True,
    method_info: dict[str, Any] | None = None,
) -> RunReport:
    """Protect image files into ``output_dir`` (PNG, same stem) and write the manifest.

    Each written image is checked on its 8-bit values: ``max |written - original| <= eps``; the
    manifest records the distance in gray levels for every image.

    Raises:
        BudgetViolationError: a written image would exceed its budget (never expected; a bug).
    """
    eps = defender.config.eps

    def process(images: Tensor) -> tuple[Tensor, list[dict[str, Any]]]:
        import numpy as np
        import torch

        result = defender.protect(images)
        written_uint8 = np.stack([to_uint8(image) for image in result.images])
        written = torch.from_numpy(written_uint8).permute(0, 3, 1, 2).double() / 255.0
        levels = check_budget(written, images, eps)  # raises BudgetViolationError
        stats = [
            {"linf_gray_levels": round(level, 4), "within_budget": True, **(result.stats[i] if i < len(result.stats) else {})}
            for i, level in enumerate(levels)
        ]
        return result.images, stats

    info = {**defender.describe(), **(method_info or {})}
    budget = {"eps": eps, "eps_gray_levels": round(eps * 255.0, 4)}
    return _run("protect", info, inputs, output_dir, process, batch_size=batch_size, progress=progress, extra={"budget": budget})


def purify_files(
    purifier: Purifier,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    batch_size: int = 1,
    progress: bool = True,
    method_info: dict[str, Any] | None = None,
) -> RunReport:
    """Purify image files into ``output_dir`` (PNG, same stem) and write the manifest."""

    def process(images: Tensor) -> tuple[Tensor, list[dict[str, Any]]]:
        return purifier.purify(images), []

    info = {**purifier.describe(), **(method_info or {})}
    return _run("purify", info, inputs, output_dir, process, batch_size=batch_size, progress=progress, extra={})
