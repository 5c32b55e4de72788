"""Run a defender or purifier over image files: identities, batching, prefetching, atomic output, manifest.

This is what ``facedefense protect`` and ``facedefense purify`` call; it is public so scripts get
the same guarantees (inputs never modified, budget checked on the written 8-bit values, a JSON
manifest per output folder, bad files reported without stopping the others).

Identities: a single input folder whose subfolders hold the images (and which holds no image itself)
is a set of identities, one per subfolder, each written to the output subfolder of the same name. An
identity-scoped defender (``scope = "identity"``: ASPL, FSMG, ...) protects each identity's photos
together, with that identity's clean references (``references``: a folder of images for one
identity, or a folder of subfolders matched by name for several).
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.budget import check_budget
from facedefense.errors import FaceDefenseError, ImageError
from facedefense.io import (
    IMAGE_SUFFIXES,
    LoadedImage,
    collect_images,
    iter_images,
    load_image,
    prepare_output_dir,
    save_image,
    to_uint8,
    write_json,
)

if TYPE_CHECKING:
    from torch import Tensor

    from facedefense.interfaces import Defender, Purifier

MANIFEST_NAME = "facedefense.json"
#: Folder inside the output where identity-scoped defenders keep by-products and resumable state.
WORK_DIR_NAME = ".facedefense-work"


@dataclass
class RunReport:
    """Outcome of a run over files: the manifest written and the failures."""

    manifest_path: Path
    manifest: dict[str, Any]
    succeeded: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class IdentityFiles:
    """One identity's files: its name, photos, clean references and output subfolder ("" for none)."""

    name: str
    paths: list[Path]
    references: list[Path] = field(default_factory=list)
    subfolder: str = ""


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


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def find_identities(inputs: Sequence[str | Path], references: str | Path | None = None) -> list[IdentityFiles]:
    """Group the inputs into identities (see the module docstring) and attach their references.

    Raises:
        ImageError: an input or the reference folder does not exist or holds no image.
    """
    paths = [Path(item) for item in inputs]
    if len(paths) == 1 and paths[0].is_dir() and not _has_images(paths[0]):
        folders = sorted(p for p in paths[0].iterdir() if p.is_dir() and not p.name.startswith(".") and _has_images(p))
        if not folders:
            raise ImageError(f"{paths[0]}: folder contains no images and no identity subfolders with images")
        identities = [IdentityFiles(f.name, collect_images([f]), subfolder=f.name) for f in folders]
    else:
        name = paths[0].name if len(paths) == 1 and paths[0].is_dir() else "identity"
        identities = [IdentityFiles(name, collect_images(paths))]
    if references is not None:
        reference_dir = Path(references)
        if not reference_dir.is_dir():
            raise ImageError(f"{reference_dir}: the reference folder does not exist")
        if len(identities) == 1 and identities[0].subfolder == "":
            identities[0].references = collect_images([reference_dir])
        else:
            for identity in identities:
                own = reference_dir / identity.name
                if own.is_dir():
                    identity.references = collect_images([own])
    return identities


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


def _manifest(command: str, method_info: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": method_info,
        **extra,
        "versions": versions(),
        "images": [],
        "failures": [],
    }


def _run(
    command: str,
    method_info: dict[str, Any],
    identities: list[IdentityFiles],
    output_dir: str | Path,
    process_batch: Callable[[Tensor], tuple[Tensor, list[dict[str, Any]]]] | None,
    process_identity: Callable[[IdentityFiles, list[LoadedImage], Path], tuple[list[Tensor], list[dict[str, Any]], dict[str, Any]]] | None,
    *,
    batch_size: int,
    progress: bool,
    extra: dict[str, Any],
) -> RunReport:
    import torch
    from tqdm.auto import tqdm

    from facedefense.distributed import current_shard, gather, merge_manifests

    if batch_size < 1:
        raise FaceDefenseError(f"--batch-size must be at least 1, got {batch_size}")
    output_dir = Path(output_dir)
    shard = current_shard()
    identities = _shard(identities, shard, whole=process_identity is not None)
    targets: dict[Path, Path] = {}
    for identity in identities:
        folder = output_dir / identity.subfolder if identity.subfolder else output_dir
        targets.update(zip(identity.paths, prepare_output_dir(folder, identity.paths)))
    manifest = _manifest(command, method_info, extra)
    report = RunReport(output_dir / MANIFEST_NAME, manifest, manifest["images"], manifest["failures"])
    total = sum(len(identity.paths) for identity in identities)
    bar = tqdm(total=total, desc=f"{command} ({method_info.get('name', '')})", unit="img", disable=not progress)

    def record(item: LoadedImage, output: Tensor, stats: dict[str, Any], seconds: float, identity: IdentityFiles) -> None:
        target = targets[item.path]
        save_image(output, target, alpha=item.alpha, icc_profile=item.icc_profile)
        entry: dict[str, Any] = {"input": str(item.path), "output": str(target.relative_to(output_dir))}
        if len(identities) > 1 or identity.subfolder:
            entry["identity"] = identity.name
        entry.update({"width": item.size[1], "height": item.size[0], **stats, "seconds": round(seconds, 4)})
        report.succeeded.append(entry)

    try:
        for identity in identities:
            before = len(report.failed)
            if process_identity is not None:
                loaded = []
                for path, item in iter_images(identity.paths, prefetch=2):
                    if isinstance(item, ImageError):
                        report.failed.append({"input": str(path), "error": str(item)})
                    else:
                        loaded.append(item)
                if loaded:
                    started = time.perf_counter()
                    work = output_dir / WORK_DIR_NAME / identity.name
                    outputs, stats, artifacts = process_identity(identity, loaded, work)
                    seconds = (time.perf_counter() - started) / len(loaded)
                    for index, item in enumerate(loaded):
                        record(item, outputs[index], stats[index], seconds, identity)
                    if artifacts:
                        manifest.setdefault("artifacts", {})[identity.name] = {k: str(v) for k, v in artifacts.items()}
                    bar.update(len(loaded))
            else:
                assert process_batch is not None
                for batch in _batches(iter_images(identity.paths, prefetch=batch_size + 1), batch_size, report.failed):
                    started = time.perf_counter()
                    outputs, stats = process_batch(torch.cat([item.pixels for item in batch]))
                    seconds = (time.perf_counter() - started) / len(batch)
                    for index, item in enumerate(batch):
                        record(item, outputs[index], stats[index] if index < len(stats) else {}, seconds, identity)
                    bar.update(len(batch))
            bar.update(len(report.failed) - before)
    finally:
        bar.close()
        manifest["summary"] = {"processed": len(report.succeeded), "failed": len(report.failed)}
        if not shard.active:
            write_json(manifest, report.manifest_path)
    if shard.active:  # one manifest for the whole run, written by rank 0
        gathered = gather(manifest, shard)
        if gathered is not None:
            write_json(merge_manifests(gathered), report.manifest_path)
    return report


def _shard(identities: list[IdentityFiles], shard: Any, *, whole: bool) -> list[IdentityFiles]:
    """This process's part of the work: whole identities (identity scope) or single photos."""
    if not shard.active:
        return identities
    if whole:
        return shard.take(identities)
    numbered = [(identity, path) for identity in identities for path in identity.paths]
    mine = {id(pair[1]) for pair in shard.take(numbered)}
    parts = [replace(identity, paths=[p for p in identity.paths if id(p) in mine]) for identity in identities]
    return [part for part in parts if part.paths]


def _written_levels(protected: Tensor, original: Tensor, eps: float) -> list[float]:
    """Check the budget on the exact 8-bit values that will be written (raises BudgetViolationError)."""
    import numpy as np
    import torch

    written_uint8 = np.stack([to_uint8(image) for image in protected])
    written = torch.from_numpy(written_uint8).permute(0, 3, 1, 2).double() / 255.0
    return check_budget(written, original, eps)


def _budget_stats(levels: list[float], method_stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"linf_gray_levels": round(level, 4), "within_budget": True, **(method_stats[i] if i < len(method_stats) else {})}
        for i, level in enumerate(levels)
    ]


def protect_files(
    defender: Defender,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    references: str | Path | None = None,
    batch_size: int = 1,
    progress: bool = True,
    method_info: dict[str, Any] | None = None,
    resume: bool = False,
) -> RunReport:
    """Protect image files into ``output_dir`` (PNG, same stem) and write the manifest.

    Args:
        defender: any defender; identity-scoped ones get each identity's photos together.
        inputs: files and/or folders; one folder of identity subfolders protects each identity.
        output_dir: created; one subfolder per identity when there are several.
        references: clean photos of the person (a folder), or for several identities a folder of
            subfolders named like the identities. Without references an identity-scoped defender
            learns from the photos it protects.
        batch_size: images per call for image-scoped defenders.
        resume: continue an interrupted run into the same ``output_dir`` from the state its
            identity-scoped defender saved (its last round), instead of starting over. The run
            must be the same method, budget and options (else :class:`~facedefense.errors.ResumeError`).

    Identity-scoped defenders keep their by-products and resumable state in
    ``output_dir/.facedefense-work/<identity>/``; a run without ``resume`` clears it first.

    Each written image is checked on its 8-bit values: ``max |written - original| <= eps``; the
    manifest records the distance in gray levels for every image.

    Raises:
        BudgetViolationError: a written image would exceed its budget (never expected; a bug).
    """
    from facedefense.interfaces import IdentitySet

    eps = defender.config.eps
    identities = find_identities(inputs, references)
    _prepare_work(defender, Path(output_dir), identities, resume)

    def process_batch(images: Tensor) -> tuple[Tensor, list[dict[str, Any]]]:
        result = defender.protect(images)
        return result.images, _budget_stats(_written_levels(result.images, images, eps), result.stats)

    def process_identity(
        identity: IdentityFiles, loaded: list[LoadedImage], workdir: Path
    ) -> tuple[list[Tensor], list[dict[str, Any]], dict[str, Any]]:
        clean = [load_image(path).pixels[0] for path in identity.references]
        photos = IdentitySet(
            [item.pixels[0] for item in loaded],
            [item.path.name for item in loaded],
            clean,
            identity.name,
            **_prompts(defender),
        )
        result = defender.protect_identity(photos, workdir=workdir)
        stats = []
        for index, (image, item) in enumerate(zip(result.images, loaded)):
            levels = _written_levels(image[None], item.pixels, eps)
            stats += _budget_stats(levels, result.stats[index : index + 1])
        return result.images, stats, result.artifacts

    info = {**defender.describe(), **(method_info or {})}
    budget = {"eps": eps, "eps_gray_levels": round(eps * 255.0, 4)}
    extra: dict[str, Any] = {"budget": budget, "batch_size": batch_size}
    if references is not None:
        extra["references"] = str(Path(references).resolve())
    scoped = defender.scope == "identity"
    return _run(
        "protect",
        info,
        identities,
        output_dir,
        None if scoped else process_batch,
        process_identity if scoped else None,
        batch_size=batch_size,
        progress=progress,
        extra=extra,
    )


def _prepare_work(defender: Defender, output_dir: Path, identities: list[IdentityFiles], resume: bool) -> None:
    """Check that ``resume`` continues the same run; without it, clear the identities' saved state."""
    import json
    import shutil

    from facedefense.errors import ResumeError

    work = output_dir / WORK_DIR_NAME
    marker = work / "run.json"
    run = {"method": defender.name, "eps": defender.config.eps, "fingerprint": defender.fingerprint()}
    if resume and marker.is_file():
        try:
            saved = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ResumeError(f"cannot resume {output_dir}: its run record {marker} is unreadable") from exc
        for key, label in (("method", "method"), ("eps", "budget"), ("fingerprint", "options")):
            if saved.get(key) != run[key]:
                raise ResumeError(
                    f"cannot resume {output_dir}: it was made with {label} {saved.get(key)!r}, this run has {run[key]!r}"
                )
    elif resume and output_dir.is_dir() and any(output_dir.iterdir()):
        raise ResumeError(f"cannot resume {output_dir}: it holds no saved run (no {WORK_DIR_NAME}/run.json)")
    if defender.scope != "identity":
        return
    if not resume:
        from facedefense.distributed import current_shard

        for identity in current_shard().take(identities):  # another process's identities are its own
            shutil.rmtree(work / identity.name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    temporary = marker.with_name(f".run.json.{os.getpid()}")
    temporary.write_text(json.dumps(run), encoding="utf-8")
    os.replace(temporary, marker)


def _prompts(defender: Defender) -> dict[str, str]:
    """The instance and class prompts a defender's config names, if any."""
    return {key: getattr(defender.config, key) for key in ("instance_prompt", "class_prompt") if hasattr(defender.config, key)}


def purify_files(
    purifier: Purifier,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    batch_size: int = 1,
    progress: bool = True,
    method_info: dict[str, Any] | None = None,
) -> RunReport:
    """Purify image files into ``output_dir`` (PNG, same stem; identity subfolders kept) and write the manifest."""

    def process(images: Tensor) -> tuple[Tensor, list[dict[str, Any]]]:
        return purifier.purify(images), []

    info = {**purifier.describe(), **(method_info or {})}
    identities = find_identities(inputs)
    return _run("purify", info, identities, output_dir, process, None, batch_size=batch_size, progress=progress, extra={"batch_size": batch_size})
