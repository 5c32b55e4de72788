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

import dataclasses
import datetime
import functools
import json
import os
import platform
import shutil
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.budget import check_budget
from facedefense.errors import ConfigError, ImageError, OutputError
from facedefense.io import (
    IMAGE_SUFFIXES,
    PNG_LEVEL,
    LoadedImage,
    check_output_dir,
    collect_images,
    io_workers,
    iter_images,
    load_image,
    prepare_output_dir,
    save_image,
    to_uint8,
    write_json,
)
from facedefense.outputs import (
    MANIFEST_NAME,
    WORK_DIR_NAME,
    OutputFolder,
    listed_files,
)

if TYPE_CHECKING:
    from torch import Tensor

    from facedefense.interfaces import Defender, Purifier

#: While a run works, its manifest is rewritten at most this often (seconds); always at the start and end.
MANIFEST_INTERVAL = 2.0
#: The side-by-side figure a ``protect`` run writes into its output folder (original, protected and
#: amplified difference, a row per photo: `facedefense.figures.compare_figure`). It lies in the
#: hidden work folder, not beside the photos: it shows the unprotected originals, so a user who
#: uploads ``protected/*.png`` must not publish it, and no command may read it as a photo.
COMPARE_NAME = f"{WORK_DIR_NAME}/compare.png"


@dataclass
class RunReport:
    """Outcome of a run over files: the manifest written, the images done and failed, and the
    outputs identical to their input (a defender that changed nothing)."""

    manifest_path: Path
    manifest: dict[str, Any]
    succeeded: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unchanged(self) -> list[dict[str, Any]]:
        return [entry for entry in self.succeeded if entry.get("unchanged")]


@dataclass
class IdentityFiles:
    """One identity's files: its name, photos, clean references and output subfolder ("" for none)."""

    name: str
    paths: list[Path]
    references: list[Path] = field(default_factory=list)
    subfolder: str = ""


def versions() -> dict[str, str]:
    """Versions of the software that produced an output (the method's plugin is in its description)."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    """Looked up once per process: each lookup scans the installed distributions (about 20 ms)."""
    from importlib.metadata import PackageNotFoundError, version

    found = [("python", platform.python_version())]
    for package in ("facedefense", "torch", "diffusers", "transformers", "numpy", "pillow"):
        try:
            found.append((package, version(package)))
        except PackageNotFoundError:
            continue
    return tuple(found)


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


def _has_nested_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*"))


def find_identities(inputs: Sequence[str | Path], references: str | Path | None = None) -> list[IdentityFiles]:
    """Group the inputs into identities (see the module docstring) and attach their references.

    Raises:
        ImageError: an input or the reference folder does not exist or holds no image.
    """
    paths = [Path(item) for item in inputs]
    if not paths:
        raise ImageError("no input images given")
    if len(paths) == 1 and paths[0].is_dir() and not _has_images(paths[0]):
        subfolders = sorted(p for p in paths[0].iterdir() if p.is_dir() and not p.name.startswith("."))
        folders = [p for p in subfolders if _has_images(p)]
        nested = [p.name for p in subfolders if p not in folders and _has_nested_images(p)]
        if nested:  # an identity's photos one level too deep: left out, and said so
            listed = ", ".join(nested[:3]) + (", ..." if len(nested) > 3 else "")
            warnings.warn(
                f"{paths[0]}: identity folder(s) {listed} hold their images only in subfolders and are left out "
                "(an identity's photos must lie directly in its folder)",
                UserWarning,
                stacklevel=2,
            )
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


def plan_outputs(identities: list[IdentityFiles], output_dir: str | Path) -> dict[Path, Path]:
    """Input path -> output path for every input, checked before any work (nothing is created).

    Raises:
        OutputError: the folder is unusable, holds an input, or two inputs would write the same file.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, [p for identity in identities for p in identity.paths])
    targets: dict[Path, Path] = {}
    for identity in identities:
        folder = output_dir / identity.subfolder if identity.subfolder else output_dir
        seen: dict[Path, Path] = {}
        for source in identity.paths:
            target = folder / f"{source.stem}.png"
            if target in seen:
                first = seen[target]
                detail = " (the same file given twice)" if first.resolve() == source.resolve() else ""
                raise OutputError(f"{first} and {source} would both be written as {target.name} in {target.parent}{detail}")
            seen[target] = source
            targets[source] = target
    return targets


def claim_output_dir(output_dir: str | Path, existing: str = "refuse", *, command: str = "protect",
                     inputs: Sequence[Path] = (), dry_run: bool = False) -> OutputFolder:
    """Claim ``output_dir`` for a ``protect`` or ``purify`` run
    ([`OutputFolder.claim`][facedefense.outputs.OutputFolder.claim], whose rules every writing command
    follows); ``existing`` is one of `facedefense.outputs.EXISTING`."""
    return OutputFolder.claim(output_dir, command, inputs=inputs, existing=existing, dry_run=dry_run)


def method_files(method: Any) -> dict[str, dict[str, Any]]:
    """The files and folders a method's options name, resolved, with the SHA-256 of each file
    (checkpoints); recorded in manifests so a run names exactly the weights it used."""
    from facedefense.checkpoints import file_sha256

    found: dict[str, dict[str, Any]] = {}
    for option in dataclasses.fields(method.config):
        value = getattr(method.config, option.name)
        if not isinstance(value, str) or not value or option.name in ("device", "dtype"):
            continue
        path = Path(value).expanduser()
        try:
            if path.is_file():
                found[option.name] = {"path": str(path.resolve()), "sha256": file_sha256(path), "bytes": path.stat().st_size}
            elif path.is_dir():
                found[option.name] = {"path": str(path.resolve())}
        except OSError:
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


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _run(
    command: str,
    method_info: dict[str, Any],
    identities: list[IdentityFiles],
    output_dir: str | Path,
    process_batch: Callable[[Tensor], tuple[Tensor, list[dict[str, Any]]]] | None,
    process_identity: Callable[[IdentityFiles, list[LoadedImage], Path], tuple[list[Tensor], list[dict[str, Any]], dict[str, Any]]] | None,
    *,
    batch_size: int,
    progress: bool | None,
    existing: str,
    extra: dict[str, Any],
    prepare: Callable[[list[IdentityFiles]], None] | None = None,
    figure: Callable[[list[dict[str, Any]], Path], str | None] | None = None,
    png_level: int = PNG_LEVEL,
) -> RunReport:
    """Claim ``output_dir`` (held until the run ends), then process every identity into it; ``figure``
    draws a picture of the run's images into the folder once they are written (its name, listed in the
    manifest's ``files``; None when it drew nothing); ``png_level`` is the images' zlib level."""
    from facedefense.distributed import current_shard, gather

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    output_dir = Path(output_dir)
    shard = current_shard()  # under a launcher (accelerate, torchrun): this process's part of the work
    identities = _shard(identities, shard, whole=process_identity is not None)
    targets = plan_outputs(identities, output_dir)
    inputs = [path for identity in identities for path in (*identity.paths, *identity.references)]
    if shard.active:  # rank 0 claims the folder while the others wait, then all write into it
        claim = claim_output_dir(output_dir, existing, command=command, inputs=inputs) if shard.rank == 0 else None
        gather(None, shard)
    else:
        claim = claim_output_dir(output_dir, existing, command=command, inputs=inputs)
    try:
        return _run_claimed(
            command, method_info, identities, output_dir, targets, claim.earlier if claim else None,
            process_batch, process_identity, batch_size=batch_size, progress=progress, extra=extra, prepare=prepare,
            figure=figure, png_level=png_level,
        )
    finally:
        if claim is not None:
            claim.release()


def _run_claimed(
    command: str,
    method_info: dict[str, Any],
    identities: list[IdentityFiles],
    output_dir: Path,
    targets: dict[Path, Path],
    earlier: dict[str, Any] | None,
    process_batch: Callable[[Tensor], tuple[Tensor, list[dict[str, Any]]]] | None,
    process_identity: Callable[[IdentityFiles, list[LoadedImage], Path], tuple[list[Tensor], list[dict[str, Any]], dict[str, Any]]] | None,
    *,
    batch_size: int,
    progress: bool | None,
    extra: dict[str, Any],
    prepare: Callable[[list[IdentityFiles]], None] | None,
    figure: Callable[[list[dict[str, Any]], Path], str | None] | None = None,
    png_level: int = PNG_LEVEL,
) -> RunReport:
    """``_run`` once the output folder is claimed."""
    import torch

    from facedefense.distributed import current_shard, gather, merge_manifests
    from facedefense.progress import bar as progress_bar
    from facedefense.progress import progress_enabled_as

    shard = current_shard()
    if prepare is not None:
        prepare(identities)
    for identity in identities:
        folder = output_dir / identity.subfolder if identity.subfolder else output_dir
        prepare_output_dir(folder, identity.paths)
    planned = []
    for identity in identities:
        for path in identity.paths:
            entry = {"input": str(path), "output": str(targets[path].relative_to(output_dir))}
            if path.is_symlink():
                entry["target"] = str(path.resolve())
            if len(identities) > 1 or identity.subfolder:
                entry["identity"] = identity.name
            planned.append(entry)
    manifest: dict[str, Any] = {
        "command": command,
        "status": "running",
        "created": _now(),
        "finished": None,
        "argv": list(sys.argv),
        "output": str(output_dir.resolve()),
        "method": method_info,
        **extra,
        "versions": versions(),
        "inputs": planned,
        "images": [],
        "failures": [],
    }
    report = RunReport(output_dir / MANIFEST_NAME, manifest, manifest["images"], manifest["failures"])
    rewritten = {entry["output"] for entry in planned}
    carried: list[dict[str, Any]] = []
    if earlier is not None:
        runs = [*earlier.get("earlier_runs", []), {k: earlier.get(k) for k in ("command", "created", "finished", "status", "method", "summary")}]
        manifest["earlier_runs"] = runs
        kept = listed_files(earlier, output_dir)  # entries naming a path outside the folder are dropped
        carried = [
            {**entry, "run": earlier.get("created")}
            for entry in earlier.get("images", [])
            if isinstance(entry, dict) and entry.get("output") not in rewritten and str(Path(str(entry.get("output")))) in kept
        ]

    def summary(completed: bool) -> dict[str, Any]:
        done = len(report.succeeded)
        return {
            "planned": len(planned),
            "processed": done,
            "failed": len(report.failed),
            "not_processed": len(planned) - done - len(report.failed),
            "unchanged": len(report.unchanged),
            "completed": completed,
            **({"earlier_outputs_kept": len(carried)} if earlier is not None else {}),
        }

    last_saved = [0.0]

    def save_manifest(status: str, *, every: float = 0.0) -> None:
        """Write the manifest (while running, at most once per ``every`` seconds: a long run with
        thousands of images must not spend its time rewriting a growing file)."""
        if time.monotonic() - last_saved[0] < every or shard.active:  # a sharded run: rank 0 writes at the end
            return
        last_saved[0] = time.monotonic()
        manifest["status"] = status
        manifest["summary"] = summary(status == "completed")
        images = manifest["images"]
        manifest["images"] = [*carried, *images]
        try:
            write_json(manifest, report.manifest_path)
        finally:
            manifest["images"] = images

    workers = io_workers()
    writer = _Writer(workers, report.succeeded)

    def record(item: LoadedImage, output: Tensor, stats: dict[str, Any], seconds: float, identity: IdentityFiles) -> None:
        target = targets[item.path]
        entry: dict[str, Any] = {"input": str(item.path), "output": str(target.relative_to(output_dir))}
        if len(identities) > 1 or identity.subfolder:
            entry["identity"] = identity.name
        entry.update({"width": item.size[1], "height": item.size[0], "input_sha256": _sha256(item.path)})
        entry.update({**stats, "seconds": round(seconds, 4)})
        writer.submit(entry, save_image, output.detach().cpu(), target, alpha=item.alpha, icc_profile=item.icc_profile,
                      compress_level=png_level)

    save_manifest("running")
    total = len(planned)
    status = "failed"
    with progress_enabled_as(progress):
        files_bar = progress_bar(total=total, desc=f"{command} ({method_info.get('name', '')})", unit="img", leave=True)
        try:
            for identity in identities:
                before = len(report.failed)
                if process_identity is not None:
                    loaded = []
                    for path, item in iter_images(identity.paths, prefetch=2, workers=workers):
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
                        files_bar.update(len(loaded))
                        save_manifest("running", every=MANIFEST_INTERVAL)
                else:
                    assert process_batch is not None
                    images = iter_images(identity.paths, prefetch=batch_size + 1, workers=workers)
                    for batch in _batches(images, batch_size, report.failed):
                        started = time.perf_counter()
                        outputs, stats = process_batch(torch.cat([item.pixels for item in batch]))
                        seconds = (time.perf_counter() - started) / len(batch)
                        for index, item in enumerate(batch):
                            record(item, outputs[index], stats[index] if index < len(stats) else {}, seconds, identity)
                        files_bar.update(len(batch))
                        save_manifest("running", every=MANIFEST_INTERVAL)
                files_bar.update(len(report.failed) - before)
            writer.settle()
            if process_identity is not None:  # every photo written: the saved states (surrogates, pools:
                kept = manifest.get("artifacts", {})  # gigabytes per identity) only served a resume; a
                for identity in identities:  # folder holding a by-product the manifest lists stays
                    if identity.name not in kept:
                        shutil.rmtree(output_dir / WORK_DIR_NAME / identity.name, ignore_errors=True)
            if figure is not None and not shard.active:
                _draw(figure, manifest, [*report.succeeded, *carried], output_dir)
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException as exc:
            manifest["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise
        finally:
            writer.close()  # the manifest lists exactly the files written
            files_bar.close()
            manifest["finished"] = _now()
            try:
                save_manifest(status)
            except OutputError:
                if status == "completed":
                    raise
    if shard.active:  # one manifest for the whole run, written by rank 0
        manifest["status"], manifest["summary"] = status, summary(True)
        gathered = gather(manifest, shard)
        if gathered is not None:
            merged = merge_manifests(gathered)
            if figure is not None:
                _draw(figure, merged, merged.get("images", []), output_dir)
            write_json(merged, report.manifest_path)
    return report


def _draw(figure: Callable[[list[dict[str, Any]], Path], str | None], manifest: dict[str, Any],
          entries: list[dict[str, Any]], output_dir: Path) -> None:
    """Draw the run's figure and record its name (``manifest["compare"]``); a figure that cannot be
    drawn or written is a warning, never a failed run (the images are written)."""
    try:
        name = figure(entries, output_dir)
    except (OSError, ValueError, ImageError, OutputError) as exc:
        warnings.warn(f"{COMPARE_NAME} was not written: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                      UserWarning, stacklevel=2)
        name = None
    if name is not None:
        manifest["compare"] = name
    else:
        manifest.pop("compare", None)


def write_compare(entries: Sequence[dict[str, Any]], output_dir: str | Path, eps: float) -> str | None:
    """Draw ``COMPARE_NAME`` in ``output_dir``: original, protected and the difference amplified to
    the budget ``eps``, a row per photo for the first `facedefense.figures.COMPARE_ROWS` manifest
    entries (``input`` file, ``output`` relative to ``output_dir``) whose files can be read.

    Returns:
        ``COMPARE_NAME``, or None when no entry could be drawn (nothing is written then).
    """
    from facedefense.figures import COMPARE_ROWS, compare_figure, save_png

    output_dir = Path(output_dir)
    pairs = []
    for entry in entries:
        if len(pairs) == COMPARE_ROWS:
            break
        try:
            original = load_image(entry["input"]).pixels[0]
            protected = load_image(output_dir / entry["output"]).pixels[0]
        except (ImageError, KeyError, TypeError):
            continue
        if original.shape == protected.shape:
            levels = entry.get("linf_gray_levels")
            shown = f"  max {levels:g}/255" if isinstance(levels, (int, float)) else ""
            pairs.append((f"{entry['output']}{shown}", original, protected))
    if not pairs:
        return None
    (output_dir / COMPARE_NAME).parent.mkdir(parents=True, exist_ok=True)
    save_png(compare_figure(pairs, eps), output_dir / COMPARE_NAME)
    return COMPARE_NAME


class _Writer:
    """Writes output files in ``workers`` threads, at most ``2 * workers`` files behind the caller.

    A file's manifest entry joins ``succeeded`` once the file is written, in submission order; a
    failed write raises its error (an [`OutputError`][facedefense.errors.OutputError]) from the call that
    collects it.
    """

    def __init__(self, workers: int, succeeded: list[dict[str, Any]]) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers)
        self.pending: deque[tuple[Future[Any], dict[str, Any]]] = deque()
        self.behind = 2 * workers
        self.succeeded = succeeded

    def submit(self, entry: dict[str, Any], write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.pending.append((self.pool.submit(write, *args, **kwargs), entry))
        self.settle(self.behind)

    def settle(self, behind: int = 0) -> None:
        """Wait until at most ``behind`` writes are pending, recording those done."""
        while len(self.pending) > behind:
            future, entry = self.pending.popleft()
            future.result()
            self.succeeded.append(entry)

    def close(self) -> None:
        """Wait for every pending write (after a failure elsewhere: record those that succeeded)."""
        while self.pending:
            future, entry = self.pending.popleft()
            if future.exception() is None:
                self.succeeded.append(entry)
        self.pool.shutdown()


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


def _sha256(path: Path) -> str | None:
    from facedefense.checkpoints import file_sha256

    try:
        return file_sha256(path)
    except OSError:
        return None


def written_levels(protected: Tensor, original: Tensor, eps: float) -> list[float]:
    """The budget checked on the exact 8-bit values that will be written: ``protected`` (N, 3, H, W)
    in [0, 1] rounded as `facedefense.io.to_uint8` rounds it, against ``original``; the distance of
    each image in gray levels.

    Raises:
        BudgetViolationError: an image would exceed ``eps`` once written (never expected; a bug).
    """
    import numpy as np
    import torch

    written_uint8 = np.stack([to_uint8(image) for image in protected])
    written = torch.from_numpy(written_uint8).permute(0, 3, 1, 2).double() / 255.0
    return check_budget(written, original, eps)


def budget_stats(levels: list[float], method_stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-image manifest facts: the distance written (``written_levels``), ``unchanged`` when the
    output equals its input, and what the method reported for that image."""
    return [
        {
            "linf_gray_levels": round(level, 4),
            "within_budget": True,
            **({"unchanged": True} if level == 0 else {}),
            **(method_stats[i] if i < len(method_stats) else {}),
        }
        for i, level in enumerate(levels)
    ]


def protect_files(
    defender: Defender,
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    references: str | Path | None = None,
    batch_size: int = 1,
    progress: bool | None = None,
    existing: str = "refuse",
    method_info: dict[str, Any] | None = None,
    warn_unchanged: bool = True,
    resume: bool = False,
    png_level: int = PNG_LEVEL,
) -> RunReport:
    """Protect image files into ``output_dir`` (PNG, same stem) and write the manifest.

    Args:
        defender: any defender; identity-scoped ones get each identity's photos together.
        inputs: files and/or folders; one folder of identity subfolders protects each identity.
        output_dir: created; one subfolder per identity when there are several.
        references: clean photos of the person (a folder), or for several identities a folder of
            subfolders named like the identities. Without references an identity-scoped defender
            learns from the photos it protects.
        batch_size: images per call for image-scoped defenders (it changes the output bytes of
            some methods, so the manifest records it).
        progress: show progress bars (files and optimization steps); None: the library's setting
            ([`facedefense.progress`][facedefense.progress]: on unless switched off).
        existing: when ``output_dir`` already holds files: ``"refuse"`` (default), ``"add"`` or
            ``"overwrite"`` (see `facedefense.outputs.EXISTING`).
        method_info: extra facts merged into the manifest's ``method`` entry.
        warn_unchanged: emit a ``UserWarning`` when a protected image equals its input (the
            manifest marks it ``"unchanged": true`` in any case).
        resume: continue an interrupted run into the same ``output_dir`` from the state its
            identity-scoped defender saved (its last round), instead of starting over; implies
            ``existing="add"``. The run must be the same method, budget and options (else
            [`ResumeError`][facedefense.errors.ResumeError]).

    Identity-scoped defenders keep their by-products and resumable state in
    ``output_dir/.facedefense-work/<identity>/``; a run without ``resume`` clears it first.

    The manifest is written when the run starts and after every batch: it lists the inputs planned,
    the images done and failed, and ``status`` (``running``, ``completed``, ``interrupted`` or
    ``failed``); ``summary.completed`` is true only for a run that went through all its inputs.
    It also records what determines the output: the method's configuration and fingerprint, the
    resolved paths of the files its options name (``method_files``, with the SHA-256 of checkpoint
    files), the batch size, the budget and the software versions.

    Each written image is checked on its 8-bit values: ``max |written - original| <= eps``; the
    manifest records the distance in gray levels for every image.

    Once the images are written, ``.facedefense-work/compare.png`` shows the first photos (at most
    `facedefense.figures.COMPARE_ROWS`) as original, protected and difference amplified to the
    budget; the manifest names it (``compare``) and lists it in ``files``. It is kept out of the
    photos' folder: it shows the unprotected originals.

    Raises:
        BudgetViolationError: a written image would exceed its budget (never expected; a bug).
    """
    from facedefense.interfaces import IdentitySet

    eps = defender.config.eps
    identities = find_identities(inputs, references)

    def process_batch(images: Tensor) -> tuple[Tensor, list[dict[str, Any]]]:
        result = defender.protect(images)
        return result.images, budget_stats(written_levels(result.images, images, eps), result.stats)

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
            levels = written_levels(image[None], item.pixels, eps)
            stats += budget_stats(levels, result.stats[index : index + 1])
        return result.images, stats, result.artifacts

    info = {**defender.describe(), **(method_info or {})}
    budget = {"eps": eps, "eps_gray_levels": round(eps * 255.0, 4)}
    extra: dict[str, Any] = {
        "budget": budget, "batch_size": batch_size, "png_level": png_level, "method_files": method_files(defender),
        "files": [COMPARE_NAME],
    }
    if references is not None:
        extra["references"] = str(Path(references).resolve())
    scoped = defender.scope == "identity"
    if resume and existing == "refuse":
        existing = "add"
    report = _run(
        "protect",
        info,
        identities,
        output_dir,
        None if scoped else process_batch,
        process_identity if scoped else None,
        batch_size=batch_size,
        progress=progress,
        existing=existing,
        extra=extra,
        prepare=lambda mine: _prepare_work(defender, Path(output_dir), mine, resume),
        figure=lambda entries, folder: write_compare(entries, folder, eps),
        png_level=png_level,
    )
    if warn_unchanged and report.unchanged:
        warnings.warn(unchanged_message(report), UserWarning, stacklevel=2)
    return report


def unchanged_message(report: RunReport) -> str:
    """One line about the protected images identical to their input (the defender changed nothing)."""
    names = ", ".join(entry["output"] for entry in report.unchanged[:3]) + (", ..." if len(report.unchanged) > 3 else "")
    return (
        f"{len(report.unchanged)} protected image(s) are identical to their input ({names}): the defender "
        "changed nothing, so they are NOT protected (an untrained or wrong checkpoint, or a zero budget?)"
    )


def run_record(defender: Defender) -> dict[str, Any]:
    """What a resumed run must share with the run it continues (``.facedefense-work/run.json``):
    the method, its budget and its fingerprint (its options)."""
    return {"method": defender.name, "eps": defender.config.eps, "fingerprint": defender.fingerprint()}


def check_resume(output_dir: str | Path, run: dict[str, Any]) -> None:
    """Check that resuming into ``output_dir`` continues the run ``run`` (a
    [`run_record`][facedefense.batch.run_record]); nothing to check in a missing or empty folder.

    Raises:
        ResumeError: the folder holds files but no saved run, an unreadable one, or one made with
            another method, budget or options.
    """
    from facedefense.errors import ResumeError

    output_dir = Path(output_dir)
    marker = output_dir / WORK_DIR_NAME / "run.json"
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ResumeError(f"cannot resume {output_dir}: its run record {marker} is unreadable") from exc
        for key, label in (("method", "method"), ("eps", "budget"), ("fingerprint", "options")):
            if saved.get(key) != run[key]:
                raise ResumeError(
                    f"cannot resume {output_dir}: it was made with {label} {saved.get(key)!r}, this run has {run[key]!r}"
                )
    elif output_dir.is_dir() and any(output_dir.iterdir()):
        raise ResumeError(f"cannot resume {output_dir}: it holds no saved run (no {WORK_DIR_NAME}/run.json)")


def _prepare_work(defender: Defender, output_dir: Path, identities: list[IdentityFiles], resume: bool) -> None:
    """Check that ``resume`` continues the same run; without it, clear the saved state of the
    identities this process protects (after the output folder was claimed)."""
    work = output_dir / WORK_DIR_NAME
    marker = work / "run.json"
    run = run_record(defender)
    if resume:
        check_resume(output_dir, run)
    if defender.scope != "identity":
        return
    if not resume:
        for identity in identities:
            shutil.rmtree(work / identity.name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    temporary = marker.with_name(f".run.json.{os.getpid()}")
    temporary.write_text(json.dumps(run), encoding="utf-8")
    os.replace(temporary, marker)


def _prompts(defender: Defender) -> dict[str, str]:
    """The instance and class prompts a defender's config names, if any."""
    return {key: getattr(defender.config, key) for key in ("instance_prompt", "class_prompt") if hasattr(defender.config, key)}


def purify_files(
    purifier: Purifier | Sequence[Purifier],
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    batch_size: int = 1,
    progress: bool | None = None,
    existing: str = "refuse",
    method_info: dict[str, Any] | None = None,
    png_level: int = PNG_LEVEL,
) -> RunReport:
    """Purify image files into ``output_dir`` (PNG, same stem; identity subfolders kept) and write the
    manifest; the arguments are those of [`protect_files`][facedefense.batch.protect_files].

    ``purifier`` may be a sequence: a chain applied in order (an adversary's JPEG then DiffPure);
    the manifest's ``method`` then names the chain (``jpeg+diffpure``) and lists each method under ``chain``.
    """
    chain = list(purifier) if isinstance(purifier, Sequence) else [purifier]
    if not chain:
        raise ConfigError("purify_files needs at least one purifier")

    def process(images: Tensor) -> tuple[Tensor, list[dict[str, Any]]]:
        for step in chain:
            images = step.purify(images)
        return images, []

    described = [step.describe() for step in chain]
    info = described[0] if len(chain) == 1 else {"name": "+".join(d["name"] for d in described), "chain": described}
    info = {**info, **(method_info or {})}
    identities = find_identities(inputs)
    files = method_files(chain[0]) if len(chain) == 1 else {
        f"{index}.{option}": found for index, step in enumerate(chain, 1) for option, found in method_files(step).items()
    }
    extra = {"batch_size": batch_size, "png_level": png_level, "method_files": files}
    return _run(
        "purify", info, identities, output_dir, process, None,
        batch_size=batch_size, progress=progress, existing=existing, extra=extra, png_level=png_level,
    )  # fmt: skip
