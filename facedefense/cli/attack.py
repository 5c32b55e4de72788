"""``facedefense attack``: personalize a model on a folder of photos and generate with it, or edit
photos with an editor.

Personalizer run (``--personalizer NAME``), output layout::

    OUT/model/                 the trained weights in their diffusers format + facedefense_personalized.json
    OUT/images/<prompt>/       K images per prompt, 0000.png, 0001.png, ...
    OUT/facedefense.json       manifest (method, options, prompts, seed, versions, losses, files, status)

Editor run (``--editor NAME``): one edited PNG per input, same name, same size, plus the manifest.

Output rules (`facedefense.outputs`, as for every command that writes): the photos, the mask, the
prompts, the options and the model (loaded and checked) are all checked before anything is
written; then the output folder is claimed: an output that is, lies in or holds an input, or that
holds files no attack run listed in its manifest, is refused; one that holds an earlier attack run
is refused unless ``--resume`` continues it (same method: the saved model and the files the manifest
lists and that are present are reused) or ``--overwrite`` replaces it (only the files it listed are
removed). The manifest lists every file the run writes as soon as it is written (the model's files
once saved: they are saved in a hidden work folder first and moved into ``model/``), and records
``status``: ``running``, ``completed``, ``failed`` (with the error) or ``interrupted``.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from facedefense.cli.common import (
    check_method_paths,
    fail,
    first_line,
    friendly_errors,
    method_options,
    progress_default,
)
from facedefense.errors import ConfigError, ImageError, OutputError
from facedefense.outputs import MANIFEST_NAME, WORK_DIR_NAME, OutputFolder, listed_files

MANIFEST = MANIFEST_NAME
COMMAND = "attack"
#: Images per pipeline call when generating.
GENERATION_BATCH = 4
#: The folder of the personalized model inside the output folder.
MODEL_DIR = "model"


def _slug(prompt: str, taken: set[str]) -> str:
    """A folder name for a prompt: lowercase words joined by ``_`` (unique within ``taken``)."""
    base = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:80] or "prompt"
    name, index = base, 2
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    taken.add(name)
    return name


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _is_main_process() -> bool:
    """False in the non-main processes of ``accelerate launch`` / torchrun (they only train)."""
    return int(os.environ.get("RANK", "0")) == 0


def _load_photos(inputs: list[Path]) -> tuple[list[Any], list[dict[str, str]]]:
    """Decode every image of ``inputs``; bad files are reported, not fatal, unless none is usable."""
    from facedefense.io import collect_images, iter_images

    photos, skipped = [], []
    for path, item in iter_images(collect_images(inputs)):
        if isinstance(item, ImageError):
            skipped.append({"input": str(path), "error": str(item)})
            typer.echo(f"skipped: {item}", err=True)
        else:
            photos.append(item)
    if not photos:
        raise ImageError(f"no usable image in {', '.join(map(str, inputs))}")
    return photos, skipped


def _method_inputs(method: Any) -> list[Path]:
    """The local files and folders a method's options name (its model, a class-image cache): no
    output may be, lie in or hold them."""
    from facedefense.batch import method_files

    found = [Path(entry["path"]) for entry in method_files(method).values()]
    cache = getattr(method.config, "class_cache", "")
    if cache:  # written by the run too: it may not lie in the output, existing or not
        found.append(Path(cache).expanduser())
    return found


def _check_same_method(
    earlier: dict[str, Any] | None, output: Path, kind: str, name: str, same: dict[str, Any] | None = None
) -> None:
    """A run continued with ``--resume`` must be of the same method (and have the facts ``same``
    names: an editor's prompt, mask and options, so that one folder never mixes two edits)."""
    if earlier is None:
        return
    method = earlier.get("method") if isinstance(earlier.get("method"), dict) else {}
    if method.get("kind") != kind or method.get("name") != name:
        raise OutputError(
            f"output folder {output} holds a run of {method.get('kind')} '{method.get('name')}', "
            f"not {kind} '{name}'; --overwrite replaces it, or choose another --output"
        )
    for key, value in (same or {}).items():
        before = earlier.get(key)
        if key == "options" and isinstance(method.get("config"), dict):
            before = _options(method["config"])
        if before != value:
            raise OutputError(
                f"cannot resume {output}: it was made with {key} {before!r}, this run has {value!r}; "
                "--overwrite replaces it, or choose another --output"
            )


def _options(config: dict[str, Any]) -> dict[str, Any]:
    """What determines a method's output among its options (not where or in which precision it runs)."""
    import json

    kept = {key: value for key, value in config.items() if key not in ("device", "dtype")}
    return json.loads(json.dumps(kept, default=str))  # as a manifest holds them


def _trusted(earlier: dict[str, Any] | None, output: Path) -> set[str]:
    """The files an earlier run's manifest lists that are present: the only ones a resumed run reuses."""
    if earlier is None:
        return set()
    return {name for name in listed_files(earlier, output) if (output / name).is_file()} - {MANIFEST}


class _Manifest:
    """One attack run's manifest: written when the run starts, after every file, and at the end with
    its status (``completed``, ``failed`` with the error's first line, ``interrupted``)."""

    def __init__(self, output: Path, data: dict[str, Any], *, write: bool = True) -> None:
        self.path = output / MANIFEST
        self.data = data
        self.write = write

    def save(self) -> None:
        from facedefense.io import write_json

        if self.write:
            write_json(self.data, self.path)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Run the body; whatever ends it, the manifest records how."""
        status = "failed"
        try:
            yield
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException as exc:
            self.data["error"] = first_line(exc)
            raise
        finally:
            self.data.update(status=status, finished=_now())
            try:
                self.save()
            except OutputError:
                if status == "completed":
                    raise  # otherwise the run's own error is the one to report (a full disk: both)


def _manifest(kind: str, method: Any, extra: dict[str, Any], earlier: dict[str, Any] | None) -> dict[str, Any]:
    import sys

    from facedefense.batch import versions

    data: dict[str, Any] = {
        "command": COMMAND,
        "status": "running",
        "created": _now(),
        "finished": None,
        "argv": list(sys.argv),
        "method": {"kind": kind, **method.describe()},
        **extra,
        "versions": versions(),
    }
    if earlier is not None:
        runs = earlier.get("earlier_runs") if isinstance(earlier.get("earlier_runs"), list) else []
        previous = {key: earlier.get(key) for key in ("created", "finished", "status")}
        data["earlier_runs"] = [*runs, previous][-20:]
    return data


def _claim(output: Path, sources: list[Path], existing: str, *, dry_run: bool = False) -> OutputFolder:
    return OutputFolder.claim(output, COMMAND, inputs=sources, existing=existing, dry_run=dry_run,
                              how_to_continue="continue it (--resume), replace it (--overwrite)")


# -- personalizers ---------------------------------------------------------------------------------


def run_personalizer(
    personalizer: Any,
    inputs: list[Path],
    output: Path,
    *,
    prompts: list[str] | None,
    num_images: int,
    instance_prompt: str | None,
    class_prompt: str | None,
    existing: str = "refuse",
    progress: bool = False,
) -> dict[str, Any]:
    """Train ``personalizer`` on the photos of ``inputs`` (or reuse the saved model when continuing
    a run), then generate ``num_images`` images per prompt into ``output``; returns the manifest.

    Args:
        existing: ``"refuse"`` an output folder holding an earlier run, continue it (``"add"``:
            ``--resume``) or replace it (``"overwrite"``); see the module docstring.

    Raises:
        ConfigError, ModelNotFoundError, ImageError, OutputError: before anything is written.
    """
    from facedefense.interfaces.personalizer import METADATA_NAME, load_personalized

    if num_images < 1:
        raise ConfigError(f"--num-images must be at least 1, got {num_images}")
    photos, skipped = _load_photos(inputs)
    config = personalizer.config
    instance_prompt = config.instance_prompt if instance_prompt is None else instance_prompt
    class_prompt = config.class_prompt if class_prompt is None else class_prompt
    if prompts:
        prompts = list(prompts)
    elif hasattr(personalizer, "default_prompts"):
        prompts = personalizer.default_prompts()
    else:
        prompts = [instance_prompt]
    if any(not prompt.strip() for prompt in prompts):
        raise ConfigError("a --prompt is empty; give the text to generate")
    sources = [*inputs, *(item.path for item in photos), *_method_inputs(personalizer)]
    probe = _claim(output, sources, existing, dry_run=True)
    earlier = probe.earlier if existing == "add" else None
    _check_same_method(earlier, output, "personalizer", personalizer.name)
    reuse = f"{MODEL_DIR}/{METADATA_NAME}" in _trusted(earlier, output)
    personalizer.progress = progress
    if reuse:  # read-only: the saved model must load before anything is written
        model = load_personalized(output / MODEL_DIR, device=config.device, dtype=config.dtype)
    else:
        personalizer.prepare(instance_prompt=instance_prompt, class_prompt=class_prompt)
    if not _is_main_process():  # under a launcher the other processes only train; the main one writes
        if not reuse:
            personalizer.fit([item.pixels[0] for item in photos], instance_prompt=instance_prompt,
                             class_prompt=class_prompt, generator=personalizer.make_generator())
        return {}
    with _claim(output, sources, existing) as claim:
        earlier = claim.earlier if existing == "add" else None
        _check_same_method(earlier, output, "personalizer", personalizer.name)
        trusted = _trusted(earlier, output)
        if not reuse:  # the earlier run's model (unfinished: no metadata) is replaced
            for name in sorted(n for n in trusted if n.startswith(f"{MODEL_DIR}/")):
                (output / name).unlink(missing_ok=True)
            trusted = {n for n in trusted if not n.startswith(f"{MODEL_DIR}/")}
        taken: set[str] = set()
        folders = {prompt: _slug(prompt, taken) for prompt in prompts}
        facts = {
            "inputs": [str(item.path) for item in photos], "skipped": skipped, "instance_prompt": instance_prompt,
            "class_prompt": class_prompt, "num_images": num_images, "seed": config.seed, "model_dir": MODEL_DIR,
            "prompts": [{"prompt": p, "folder": f"images/{folders[p]}"} for p in prompts],
            "files": sorted(trusted),
        }
        manifest = _Manifest(output, _manifest("personalizer", personalizer, facts, earlier))
        if reuse:
            manifest.data["training"] = (earlier or {}).get("training", {"resumed": True})
        manifest.save()
        with manifest.recording():
            if not reuse:
                model = _train(personalizer, photos, output, manifest, instance_prompt, class_prompt)
            _generate(model, personalizer, prompts, folders, num_images, output, manifest, trusted, progress)
        return manifest.data


def _train(personalizer: Any, photos: list[Any], output: Path, manifest: _Manifest, instance_prompt: str,
           class_prompt: str) -> Any:
    """Train; the model is saved in a hidden work folder, listed in the manifest, then moved into
    ``model/`` (its metadata last: a model without it is never reused)."""
    from facedefense.interfaces.personalizer import METADATA_NAME

    work = output / WORK_DIR_NAME
    staging = work / MODEL_DIR
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
    try:
        model = personalizer.fit(
            [item.pixels[0] for item in photos], instance_prompt=instance_prompt, class_prompt=class_prompt,
            output_dir=staging, generator=personalizer.make_generator(),
        )
        result = getattr(personalizer, "last_training", None)
        if result is not None and result.losses:
            steps = len(result.losses)
            manifest.data["training"] = {
                "steps": steps, "first_loss": result.losses[0], "final_loss": result.losses[-1],
                "seconds": round(result.seconds, 3), "seconds_per_step": round(result.seconds / steps, 4),
            }
        saved = sorted((p.relative_to(staging) for p in staging.rglob("*") if p.is_file()),
                       key=lambda p: (p.name == METADATA_NAME, str(p)))
        names = [f"{MODEL_DIR}/{p.as_posix()}" for p in saved]
        manifest.data["files"] = sorted({*manifest.data["files"], *names})
        manifest.save()  # listed before they appear in model/: never a file of unknown origin there
        for relative in saved:
            target = output / MODEL_DIR / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / relative, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.rmdir()
    return model


def _generate(model: Any, personalizer: Any, prompts: list[str], folders: dict[str, str], num_images: int,
              output: Path, manifest: _Manifest, trusted: set[str], progress: bool) -> None:
    """Write ``num_images`` images per prompt; an image counts as done only when the earlier run
    listed it and it is present (``trusted``). Each batch of images has its own seed."""
    import torch
    from tqdm.auto import tqdm

    from facedefense.io import save_image

    config = personalizer.config
    done = set(trusted)
    total = len(prompts) * num_images
    bar = tqdm(total=total, desc=f"generating ({personalizer.name})", unit="img", disable=not progress)
    for prompt_index, prompt in enumerate(prompts):
        folder = f"images/{folders[prompt]}"
        for start in range(0, num_images, GENERATION_BATCH):
            stop = min(num_images, start + GENERATION_BATCH)
            names = [f"{folder}/{index:04d}.png" for index in range(start, stop)]
            if all(name in done for name in names):
                bar.update(len(names))
                continue
            (output / folder).mkdir(parents=True, exist_ok=True)
            seed = (config.seed * 1_000_003 + prompt_index * 10_007 + start) % (2**63)
            generator = torch.Generator().manual_seed(seed)
            images = model.generate([prompt], num_images=len(names), generator=generator)
            for image, name in zip(images, names):
                save_image(image, output / name)
                done.add(name)
                manifest.data["files"] = sorted({*manifest.data["files"], name})
            manifest.save()
            bar.update(len(names))
    bar.close()


# -- editors -----------------------------------------------------------------------------------------


def _read_mask(mask: str | None) -> Any:
    """The (1, 1, H, W) gray mask read from an image file (white = edit), or None; checked once,
    before any work.

    Raises:
        ConfigError: the file is missing, a folder, or not a readable image.
    """
    from facedefense.io import load_image

    if mask is None:
        return None
    path = Path(mask)
    if path.is_dir():
        raise ConfigError(
            f"--mask {mask} is a folder; give an image file (white = repaint), or 'face' / 'background'"
        )
    if not path.is_file():
        raise ConfigError(f"--mask {mask}: no such file (or use --mask face / --mask background)")
    try:
        return load_image(path).pixels.mean(dim=1, keepdim=True)
    except ImageError as exc:
        raise ConfigError(f"--mask: {exc}") from exc


def _fit_mask(gray: Any, pixels: Any) -> Any:
    from facedefense.imaging import resize

    return None if gray is None else resize(gray, tuple(pixels.shape[-2:])).clamp(0, 1)


def run_editor(
    editor: Any, inputs: list[Path], output: Path, *, prompt: str, mask: str | None = None,
    existing: str = "refuse", progress: bool = False,
) -> dict[str, Any]:
    """Edit every photo of ``inputs`` with ``prompt``; write ``output/<stem>.png`` (same size) and a
    manifest. Photos without a face (automatic masks) or unreadable files are reported and skipped.

    Args:
        existing: ``"refuse"`` an output folder holding an earlier run, continue it (``"add"``:
            ``--resume``: photos whose edit it listed and that is present are not edited again) or
            replace it (``"overwrite"``).

    Raises:
        ConfigError, ModelNotFoundError, ImageError, OutputError: before anything is written.
    """
    from facedefense.batch import IdentityFiles, plan_outputs
    from facedefense.io import collect_images

    paths = collect_images(inputs)
    targets = plan_outputs([IdentityFiles("photos", paths)], output)
    gray = _read_mask(mask)
    if gray is None and getattr(editor, "needs_mask", False):
        raise ConfigError(f"editor '{editor.name}' needs a mask: --mask FILE")
    sources = [*inputs, *paths, *([Path(mask)] if mask else []), *_method_inputs(editor)]
    same = {"prompt": prompt, "mask": mask, "options": _options(editor.describe()["config"])}
    probe = _claim(output, sources, existing, dry_run=True)
    _check_same_method(probe.earlier if existing == "add" else None, output, "editor", editor.name, same)
    editor.prepare()
    with _claim(output, sources, existing) as claim:
        earlier = claim.earlier if existing == "add" else None
        _check_same_method(earlier, output, "editor", editor.name, same)
        trusted = _trusted(earlier, output)
        listed = (earlier or {}).get("images")
        carried = [  # kept until the run writes a file of the same name
            entry for entry in (listed if isinstance(listed, list) else [])
            if isinstance(entry, dict) and str(entry.get("output")) in trusted
        ]
        done = {(entry.get("input"), entry["output"]) for entry in carried}
        manifest = _Manifest(output, _manifest("editor", editor, {
            "prompt": prompt, "mask": mask, "seed": editor.config.seed, "images": carried, "failures": [],
        }, earlier))
        manifest.save()
        with manifest.recording():
            todo = [path for path in paths if (str(path), targets[path].name) not in done]
            _edit_all(editor, todo, targets, output, prompt, gray, manifest, progress)
        return manifest.data


def _edit_all(editor: Any, paths: list[Path], targets: dict[Path, Path], output: Path, prompt: str, gray: Any,
              manifest: _Manifest, progress: bool) -> None:
    from tqdm.auto import tqdm

    from facedefense.io import iter_images, save_image

    bar = tqdm(total=len(paths), desc=f"editing ({editor.name})", unit="img", disable=not progress)
    for path, item in iter_images(paths):
        try:
            if isinstance(item, ImageError):
                raise item
            mask = _fit_mask(gray, item.pixels)
            edited = editor.edit(item.pixels, prompt, mask=mask, generator=editor.make_generator())
        except ImageError as exc:
            manifest.data["failures"].append({"input": str(path), "error": str(exc)})
            typer.echo(f"skipped: {path.name}: {exc}", err=True)
        else:
            name = targets[path].name
            save_image(edited[0], targets[path], alpha=item.alpha, icc_profile=item.icc_profile)
            images = [entry for entry in manifest.data["images"] if entry["output"] != name]
            entry = {"input": str(path), "output": name, "width": item.size[1], "height": item.size[0]}
            manifest.data["images"] = [*images, entry]
            manifest.save()
        bar.update(1)
    bar.close()


# -- the command -------------------------------------------------------------------------------------


@friendly_errors
def attack(
    inputs: Annotated[list[Path], typer.Argument(help="A folder of one person's photos (personalizer), or image files/folders (editor).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", help="Output folder (created; never an input folder).")],
    personalizer: Annotated[str | None, typer.Option("--personalizer", "-p", help="Personalizer name (see `facedefense list personalizers`).")] = None,
    editor: Annotated[str | None, typer.Option("--editor", "-e", help="Editor name (see `facedefense list editors`).")] = None,
    model: Annotated[str | None, typer.Option(help="Diffusers folder or Hugging Face id of the base / editing model.")] = None,
    instance_prompt: Annotated[str | None, typer.Option("--instance-prompt", help="Training prompt with the identifier (default: the personalizer's, 'a photo of sks person').")] = None,
    class_prompt: Annotated[str | None, typer.Option("--class-prompt", help="Prior-preservation prompt (default 'a photo of person').")] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", help="Generation prompt (repeatable; default: Anti-DreamBooth's five) or the edit instruction.")] = None,
    num_images: Annotated[int, typer.Option("--num-images", help="Images per prompt (Anti-DreamBooth: 16).")] = 16,
    steps: Annotated[int | None, typer.Option(help="Training steps (personalizer) or denoising steps (editor).")] = None,
    mask: Annotated[str | None, typer.Option(help="Inpainting mask: an image file (white = repaint), or 'face' / 'background' (automatic, needs scikit-image).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default 0).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16 or float16.")] = None,
    option: Annotated[list[str] | None, typer.Option("-o", "--option", help="Method option key=value (repeatable).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output (same method: reuse its saved model, write the missing images or edits).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="The output folder holds an earlier attack run: remove its files first (files no run wrote are never deleted).")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Show progress bars.")] = None,
) -> None:
    """Attack photos: personalize a model on them and generate, or edit them.

    Everything is checked (photos, mask, prompts, options, the model) before anything is written;
    an output folder that holds an earlier run is refused unless --resume or --overwrite says what to do.
    """
    if (personalizer is None) == (editor is None):
        raise fail("give exactly one of --personalizer NAME or --editor NAME")
    if resume and overwrite:
        raise fail("--resume and --overwrite exclude each other")
    existing = "overwrite" if overwrite else "add" if resume else "refuse"
    show = progress_default() if progress is None else progress
    from facedefense.progress import progress_enabled_as

    with progress_enabled_as(show):  # model loading, class images and denoising steps say what they do
        _attack(inputs, output, personalizer, editor, prompt, mask, option, model, steps, seed, device, dtype,
                num_images, instance_prompt, class_prompt, existing, show)


def _attack(inputs: list[Path], output: Path, personalizer: str | None, editor: str | None, prompt: list[str],
            mask: str | None, option: list[str], model: str | None, steps: int | None, seed: int | None,
            device: str | None, dtype: str | None, num_images: int, instance_prompt: str | None,
            class_prompt: str | None, existing: str, show: bool) -> None:
    """The ``attack`` command once its flags are read."""
    from facedefense.registry import get_registry

    kind, name = ("personalizer", personalizer) if personalizer else ("editor", editor)
    options = method_options(option, model=model, steps=steps, seed=seed, device=device, dtype=dtype)
    if kind == "editor":
        if not prompt or not prompt[0].strip():
            raise fail(f"editor '{name}' needs an instruction: --prompt \"...\"")
        if len(prompt) > 1:
            raise fail("an editor takes one --prompt; run it once per instruction")
        if mask in ("face", "background"):  # the editor's automatic mask (inpaint: auto_mask)
            options["auto_mask"], mask = mask, None
        check_method_paths(options)
        method = get_registry().create(kind, name, **options)
        manifest = run_editor(method, inputs, output, prompt=prompt[0], mask=mask, existing=existing, progress=show)
        typer.echo(f"edited {len(manifest['images'])} image(s) into {output} (manifest: {MANIFEST})")
        if manifest["failures"]:
            raise fail(f"{len(manifest['failures'])} input(s) could not be edited", code=1)
        return
    if mask is not None:
        raise fail("--mask is for editors")
    if len(inputs) != 1 or not inputs[0].is_dir():
        raise fail("a personalizer takes one folder of photos of one person")
    check_method_paths(options)
    method = get_registry().create(kind, name, **options)
    manifest = run_personalizer(
        method, inputs, output, prompts=prompt, num_images=num_images, instance_prompt=instance_prompt,
        class_prompt=class_prompt, existing=existing, progress=show,
    )
    if manifest:
        total = len(manifest["prompts"]) * num_images
        done = f"trained {method.name} on" if method.trains else f"{method.name} encoded"
        typer.echo(f"{done} {len(manifest['inputs'])} photo(s); {total} image(s) in {output / 'images'}")


def register(app: typer.Typer) -> None:
    app.command()(attack)
