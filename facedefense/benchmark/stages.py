"""Running one stage and caching its output on disk, atomically.

A stage writes into a private temporary folder beside its final place and, once everything is
written (its ``stage.json`` last), renames it to ``cache/<kind>/<key>/``: a folder there is always
complete, so an interrupted run leaves nothing that looks finished, and workers sharing the cache
folder (Ray) never see half a stage. Images are stored as 8-bit PNG, what an attacker downloads.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.benchmark.graph import Stage, protected_count

if TYPE_CHECKING:
    from torch import Tensor

STAGE_FILE = "stage.json"
IMAGES = "images"


class Cache:
    """The stage cache under ``root``: ``root/<kind>/<key>/`` holds a finished stage."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, stage: Stage | str, kind: str | None = None) -> Path:
        if isinstance(stage, Stage):
            return self.root / stage.kind / stage.key
        return self.root / str(kind) / stage

    def done(self, stage: Stage) -> bool:
        return (self.path(stage) / STAGE_FILE).is_file()

    def info(self, stage: Stage) -> dict[str, Any]:
        return json.loads((self.path(stage) / STAGE_FILE).read_text(encoding="utf-8"))

    @contextlib.contextmanager
    def writing(self, stage: Stage) -> Iterator[Path]:
        """A temporary folder for the stage's files, moved into place when the block succeeds."""
        final = self.path(stage)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.parent / f".{stage.key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        temporary.mkdir()
        try:
            yield temporary
            try:
                os.rename(temporary, final)
            except OSError:  # another worker finished the same stage first: theirs is as good
                if not (final / STAGE_FILE).is_file():
                    raise
        finally:
            shutil.rmtree(temporary, ignore_errors=True)

    def clean_temporary(self) -> int:
        """Remove what interrupted stages left behind; returns how many folders."""
        removed = 0
        for folder in self.root.glob("*/.*.tmp-*"):
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
        return removed


class MethodCache:
    """The last few methods built, so consecutive stages of one method reuse its loaded networks."""

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self.methods: OrderedDict[str, Any] = OrderedDict()

    def get(self, description: dict[str, Any]) -> Any:
        import facedefense

        key = f"{description['kind']}:{description['name']}:{description['fingerprint']}"
        if key in self.methods:
            self.methods.move_to_end(key)
            return self.methods[key]
        method = facedefense.create(description["kind"], description["name"], **description["options"])
        self.methods[key] = method
        while len(self.methods) > self.size:
            self.methods.popitem(last=False)
        return method


# -- image folders -------------------------------------------------------------------------------


def load_images(paths: list[str] | list[Path]) -> list[Tensor]:
    from facedefense.io import load_image

    return [load_image(p).pixels[0] for p in paths]


def save_images(images: list[Tensor], names: list[str], folder: Path) -> list[str]:
    from facedefense.io import save_image

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for image, name in zip(images, names):
        save_image(image, folder / f"{name}.png")
        files.append(f"{name}.png")
    return files


def stage_images(cache: Cache, kind: str, key: str) -> tuple[list[Tensor], list[str], dict[str, Any]]:
    """The images a finished stage wrote, in its order, with its ``stage.json``."""
    folder = cache.path(key, kind)
    info = json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))
    files = info["files"]
    return load_images([folder / IMAGES / f for f in files]), [Path(f).stem for f in files], info


def _by_size(images: list[Tensor], apply: Any) -> list[Tensor]:
    """Apply a batch function to same-size runs of a list and put the results back in order."""
    from facedefense.imaging import group_by_size

    out: list[Any] = [None] * len(images)
    for indices, batch in group_by_size(images):
        for index, image in zip(indices, apply(batch)):
            out[index] = image.detach().cpu()
    return out


# -- the stages ----------------------------------------------------------------------------------


def run_stage(stage: Stage, cache: Cache, methods: MethodCache, kinds: dict[str, str]) -> dict[str, Any]:
    """Compute one stage into the cache (``kinds`` maps each dependency key to its stage kind)."""
    import time

    seed_globals(stage.key)
    if stage.threads:
        import torch

        torch.set_num_threads(stage.threads)
    started = time.perf_counter()
    with cache.writing(stage) as folder:
        info = RUNNERS[stage.kind](stage, folder, cache, methods, kinds)
        info = {
            "kind": stage.kind, "key": stage.key, "label": stage.label, "deps": list(stage.deps),
            "seconds": round(time.perf_counter() - started, 3), **info,
        }
        (folder / STAGE_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n", encoding="utf-8")
    return info


def seed_globals(key: str) -> None:
    """Seed the process-wide generators (torch, numpy, random) from the stage key, so a stage gives
    the same output whatever ran before it in the process (methods that draw from the global
    generator, e.g. a LoRA adapter's initialization, become reproducible too)."""
    import random

    import numpy as np
    import torch

    seed = int(key[:8], 16)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _protect(stage: Stage, folder: Path, cache: Cache, methods: MethodCache, kinds: dict[str, str]) -> dict[str, Any]:
    from facedefense.errors import ImageError
    from facedefense.interfaces.identity import IdentitySet

    spec = stage.spec
    identity = spec["identity"]
    clean = load_images(identity["set_B"])
    names = [Path(p).stem for p in identity["set_B"]]
    count = protected_count(spec["share"], len(clean))
    info: dict[str, Any] = {"protected": names[:count], "clean": identity["set_B"]}
    if "precomputed" in spec:
        made = load_images(spec["precomputed"][:count])
        for name, image, original in zip(names, made, clean):
            if image.shape != original.shape:
                raise ImageError(
                    f"precomputed image for {identity['name']}/{name} is {image.shape[2]}x{image.shape[1]}, "
                    f"set_B's is {original.shape[2]}x{original.shape[1]}"
                )
        protected = made
    elif "method" in spec:
        defender = methods.get(spec["method"])
        subject = IdentitySet(
            clean[:count], names[:count], load_images(identity["set_A"]), name=identity["name"],
            instance_prompt=identity["instance_prompt"], class_prompt=identity["class_prompt"],
        )
        work = folder / "work"
        work.mkdir()
        result = defender.protect_identity(subject, workdir=work)
        protected = list(result.images)
        info.update(linf=list(result.linf), stats=result.stats, artifacts={k: str(v) for k, v in result.artifacts.items()})
        shutil.rmtree(work, ignore_errors=True)
    else:
        protected = []
    images = [image.cpu() for image in protected] + clean[count:]
    info["files"] = save_images(images, names, folder / IMAGES)
    return info


def _purify(stage: Stage, folder: Path, cache: Cache, methods: MethodCache, kinds: dict[str, str]) -> dict[str, Any]:
    (source,) = stage.deps
    images, names, _ = stage_images(cache, kinds[source], source)
    for description in stage.spec["chain"]:
        purifier = methods.get(description)
        images = _by_size(images, lambda batch, p=purifier: p.purify(batch))
    return {"files": save_images(images, names, folder / IMAGES)}


def _train(stage: Stage, folder: Path, cache: Cache, methods: MethodCache, kinds: dict[str, str]) -> dict[str, Any]:
    from facedefense.interfaces.personalizer import METADATA_NAME

    (source,) = stage.deps
    images, _, _ = stage_images(cache, kinds[source], source)
    personalizer = methods.get(stage.spec["method"])
    model = personalizer.fit(
        images, instance_prompt=stage.spec["instance_prompt"], class_prompt=stage.spec["class_prompt"], output_dir=folder / "model"
    )
    if not (folder / "model" / METADATA_NAME).is_file():
        model.save(folder / "model")
    return {"model": "model", "format": model.format}


def _generate(stage: Stage, folder: Path, cache: Cache, methods: MethodCache, kinds: dict[str, str]) -> dict[str, Any]:
    from facedefense.interfaces.personalizer import load_personalized
    from facedefense.runtime import make_generator, resolve_device

    (source,) = stage.deps
    spec = stage.spec
    model = load_personalized(cache.path(source, "train") / "model", device=spec["device"])
    prompts, count = spec["prompts"], spec["num_images"]
    generator = make_generator(spec["seed"], resolve_device(spec["device"]))
    images, names, groups = [], [], []
    for index, prompt in enumerate(prompts):  # one prompt at a time: memory stays bounded by num_images
        batch = model.generate([prompt], num_images=count, generator=generator, steps=spec["steps"], guidance_scale=spec["guidance_scale"])
        images += [image.cpu() for image in batch]
        names += [f"p{index}_{j:03d}" for j in range(len(batch))]
        groups += [index] * len(batch)
    return {"files": save_images(images, names, folder / IMAGES), "prompts": prompts, "groups": groups}


def _edit(stage: Stage, folder: Path, cache: Cache, methods: MethodCache, kinds: dict[str, str]) -> dict[str, Any]:
    (source,) = stage.deps
    sources, source_names, _ = stage_images(cache, kinds[source], source)
    editor = methods.get(stage.spec["method"])
    images, names, groups = [], [], []
    for index, instruction in enumerate(stage.spec["instructions"]):
        edited = _by_size(sources, lambda batch, text=instruction: editor.edit(batch, text))
        images += edited
        names += [f"p{index}_{name}" for name in source_names]
        groups += [index] * len(edited)
    return {"files": save_images(images, names, folder / IMAGES), "prompts": stage.spec["instructions"], "groups": groups}


def _score(stage: Stage, folder: Path, cache: Cache, methods: MethodCache, kinds: dict[str, str]) -> dict[str, Any]:
    import dataclasses

    source, *against = stage.deps
    spec = stage.spec
    images, names, info = stage_images(cache, kinds[source], source)
    metric = methods.get(spec["metric"])
    if against:  # the images of another stage, paired by name (an edit with the same edit of the clean photo)
        others, other_names, _ = stage_images(cache, kinds[against[0]], against[0])
        by_name = dict(zip(other_names, others))
    elif spec["target"] == "output":  # the clean photos, paired by name (an edit "p<i>_<photo>" with its photo)
        by_name = {Path(path).stem: image for path, image in zip(spec["references"], load_images(spec["references"]))}
    references = load_images(spec["references"]) if metric.pairing != "none" and spec["target"] != "output" else None
    if spec["target"] == "input":
        groups, prompts = [0] * len(images), [None]
    else:
        groups, prompts = info["groups"], info["prompts"]
    results = []
    for index, prompt in enumerate(prompts):
        chosen = [i for i, group in enumerate(groups) if group == index]
        if spec["target"] == "output":
            references = [by_name[names[i] if against else names[i].split("_", 1)[1]] for i in chosen]
        result = metric.compute([images[i] for i in chosen], references, prompts=prompt if metric.needs_prompt else None)
        entry = dataclasses.asdict(result)
        entry.update(prompt=prompt, images=[names[i] for i in chosen], target=spec["target"])
        results.append(entry)
    return {"results": results}


RUNNERS = {"protect": _protect, "purify": _purify, "train": _train, "generate": _generate, "edit": _edit, "score": _score}
