"""``facedefense attack``: personalize a model on a folder of photos and generate with it, or edit
photos with an editor.

Personalizer run (``--personalizer NAME``), output layout::

    OUT/model/                 the trained weights in their diffusers format + facedefense_personalized.json
    OUT/images/<prompt>/       K images per prompt, 0000.png, 0001.png, ...
    OUT/facedefense.json       manifest (method, options, prompts, seed, versions, losses, status)

Editor run (``--editor NAME``): one edited PNG per input, same name, same size, plus the manifest.
An output folder that holds a run is refused unless ``--resume`` is given; a resumed run reuses
the saved model and writes only the images that are missing.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from facedefense.cli.common import fail, friendly_errors, method_options, progress_default
from facedefense.errors import ConfigError, ImageError, OutputError

MANIFEST = "facedefense.json"
#: Images per pipeline call when generating.
GENERATION_BATCH = 4


def _slug(prompt: str, taken: set[str]) -> str:
    """A folder name for a prompt: lowercase words joined by ``_`` (unique within ``taken``)."""
    base = re.sub(r"[^a-z0-9]+", "_", prompt.lower()).strip("_")[:80] or "prompt"
    name, index = base, 2
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    taken.add(name)
    return name


def _check_output(output: Path, resume: bool, kind: str, name: str) -> dict[str, Any] | None:
    """The manifest of a previous run in ``output`` (None when there is none); refuse without --resume."""
    import json

    manifest = output / MANIFEST
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: exists and is not a folder")
    if not manifest.is_file():
        return None
    try:
        previous = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputError(f"{manifest}: cannot be read ({exc}); choose another --output") from exc
    state = "a finished" if previous.get("status") == "finished" else "an unfinished"
    if not resume:
        raise OutputError(f"{output} holds {state} attack run; pass --resume to continue it or choose another --output")
    method = previous.get("method", {})
    if method.get("kind") != kind or method.get("name") != name:
        raise OutputError(
            f"{output} holds a run of {method.get('kind')} '{method.get('name')}', not {kind} '{name}'; choose another --output"
        )
    return previous


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


def _manifest(kind: str, spec: Any, method: Any, extra: dict[str, Any]) -> dict[str, Any]:
    from facedefense.batch import versions

    return {
        "command": "attack",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": {"kind": kind, "name": spec.name, "plugin": spec.plugin, "plugin_version": spec.version,
                   **method.describe()},
        **extra,
        "versions": versions(),
        "status": "running",
    }


def run_personalizer(
    personalizer: Any,
    spec: Any,
    inputs: list[Path],
    output: Path,
    *,
    prompts: list[str] | None,
    num_images: int,
    instance_prompt: str | None,
    class_prompt: str | None,
    resume: bool,
    progress: bool,
) -> dict[str, Any]:
    """Train ``personalizer`` on the photos of ``inputs`` (or reuse the saved model on resume), then
    generate ``num_images`` images per prompt into ``output``; returns the manifest."""
    import torch
    from tqdm.auto import tqdm

    from facedefense.interfaces.personalizer import load_personalized
    from facedefense.io import save_image, write_json

    if num_images < 1:
        raise ConfigError(f"--num-images must be at least 1, got {num_images}")
    previous = _check_output(output, resume, "personalizer", spec.name)
    photos, skipped = _load_photos(inputs)
    if any(item.path.parent == output.resolve() for item in photos):
        raise OutputError(f"output folder {output} holds the input photos; choose another --output")
    config = personalizer.config
    instance_prompt = instance_prompt or config.instance_prompt
    class_prompt = class_prompt or config.class_prompt
    prompts = list(prompts) if prompts else personalizer.default_prompts() if hasattr(personalizer, "default_prompts") else [instance_prompt]
    output.mkdir(parents=True, exist_ok=True)
    model_dir = output / "model"
    manifest = _manifest("personalizer", spec, personalizer, {
        "inputs": [str(item.path) for item in photos], "skipped": skipped, "instance_prompt": instance_prompt,
        "class_prompt": class_prompt, "num_images": num_images, "seed": config.seed, "model_dir": "model",
    })
    if previous is not None:
        manifest["created"] = previous.get("created", manifest["created"])
    personalizer.progress = progress
    if resume and (model_dir / "facedefense_personalized.json").is_file():
        model = load_personalized(model_dir, device=config.device, dtype=config.dtype)
        manifest["training"] = (previous or {}).get("training", {"resumed": True})
    else:
        write_json(manifest, output / MANIFEST)
        model = personalizer.fit(
            [item.pixels[0] for item in photos], instance_prompt=instance_prompt, class_prompt=class_prompt,
            output_dir=model_dir, generator=personalizer.make_generator(),
        )
        result = getattr(personalizer, "last_training", None)
        if result is not None:
            steps = max(1, len(result.losses))
            manifest["training"] = {"steps": len(result.losses), "first_loss": result.losses[0], "final_loss": result.losses[-1],
                                    "seconds": round(result.seconds, 3), "seconds_per_step": round(result.seconds / steps, 4)}
    taken: set[str] = set()
    folders = {prompt: _slug(prompt, taken) for prompt in prompts}
    manifest["prompts"] = [{"prompt": p, "folder": f"images/{folders[p]}"} for p in prompts]
    write_json(manifest, output / MANIFEST)
    bar = tqdm(total=len(prompts) * num_images, desc=f"generating ({spec.name})", unit="img", disable=not progress)
    for prompt_index, prompt in enumerate(prompts):
        folder = output / "images" / folders[prompt]
        folder.mkdir(parents=True, exist_ok=True)
        for start in range(0, num_images, GENERATION_BATCH):
            targets = [folder / f"{index:04d}.png" for index in range(start, min(num_images, start + GENERATION_BATCH))]
            if all(target.is_file() for target in targets):
                bar.update(len(targets))
                continue
            seed = (config.seed * 1_000_003 + prompt_index * 10_007 + start) % (2**63)
            images = model.generate([prompt], num_images=len(targets), generator=torch.Generator().manual_seed(seed))
            for image, target in zip(images, targets):
                save_image(image, target)
            bar.update(len(targets))
    bar.close()
    manifest["status"] = "finished"
    write_json(manifest, output / MANIFEST)
    return manifest


def _editor_mask(mask: str | None, editor: Any, pixels: Any) -> Any:
    """The (1, 1, H, W) mask for one photo: a file, an automatic face/background mask, or None."""
    from facedefense_attacks.masks import face_mask, load_mask

    choice = mask or ("background" if getattr(editor, "needs_mask", False) else None)
    if choice is None:
        return None
    if choice in ("face", "background"):
        return face_mask(pixels[0], choice)[None]
    path = Path(choice)
    if not path.is_file():
        raise ImageError(f"--mask {choice}: no such file (or use --mask face / --mask background)")
    return load_mask(path, tuple(pixels.shape[-2:]))[None]


def run_editor(
    editor: Any, spec: Any, inputs: list[Path], output: Path, *, prompt: str, mask: str | None, resume: bool,
    progress: bool,
) -> dict[str, Any]:
    """Edit every photo of ``inputs`` with ``prompt``; write ``output/<stem>.png`` (same size) and a
    manifest. Photos without a face (automatic masks) or unreadable files are reported and skipped."""
    from tqdm.auto import tqdm

    from facedefense.io import collect_images, iter_images, prepare_output_dir, save_image, write_json

    previous = _check_output(output, resume, "editor", spec.name)
    paths = collect_images(inputs)
    targets = dict(zip(paths, prepare_output_dir(output, paths)))
    manifest = _manifest("editor", spec, editor, {"prompt": prompt, "mask": mask, "seed": editor.config.seed,
                                                  "images": [], "failures": []})
    if previous is not None:
        manifest["images"] = [e for e in previous.get("images", []) if (output / e["output"]).is_file()]
    done = {entry["input"] for entry in manifest["images"]}
    write_json(manifest, output / MANIFEST)
    bar = tqdm(total=len(paths), desc=f"editing ({spec.name})", unit="img", disable=not progress)
    for path, item in iter_images([p for p in paths if str(p) not in done or not targets[p].is_file()]):
        try:
            if isinstance(item, ImageError):
                raise item
            edited = editor.edit(item.pixels, prompt, mask=_editor_mask(mask, editor, item.pixels),
                                 generator=editor.make_generator())
            save_image(edited[0], targets[path], alpha=item.alpha, icc_profile=item.icc_profile)
            manifest["images"].append({"input": str(path), "output": targets[path].name,
                                       "width": item.size[1], "height": item.size[0]})
        except ImageError as exc:
            manifest["failures"].append({"input": str(path), "error": str(exc)})
            typer.echo(f"skipped: {path.name}: {exc}", err=True)
        bar.update(1)
    bar.close()
    manifest["status"] = "finished"
    write_json(manifest, output / MANIFEST)
    return manifest


@friendly_errors
def attack(
    inputs: Annotated[list[Path], typer.Argument(help="A folder of one person's photos (personalizer), or image files/folders (editor).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", help="Output folder (created).")],
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
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output (reuse its model, write missing images).")] = False,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Show progress bars.")] = None,
) -> None:
    """Attack photos: personalize a model on them and generate, or edit them."""
    from facedefense.registry import get_registry

    if (personalizer is None) == (editor is None):
        raise fail("give exactly one of --personalizer NAME or --editor NAME")
    show = progress_default() if progress is None else progress
    kind, name = ("personalizer", personalizer) if personalizer else ("editor", editor)
    spec = get_registry().get(kind, name)
    options = method_options(option, model=model, steps=steps, seed=seed, device=device, dtype=dtype)
    if kind == "editor":
        if not prompt or not prompt[0].strip():
            raise fail(f"editor '{spec.name}' needs an instruction: --prompt \"...\"")
        if len(prompt) > 1:
            raise fail("an editor takes one --prompt; run it once per instruction")
        method = spec.load()(**options)
        manifest = run_editor(method, spec, inputs, output, prompt=prompt[0], mask=mask, resume=resume, progress=show)
        typer.echo(f"edited {len(manifest['images'])} image(s) into {output} (manifest: {MANIFEST})")
        if manifest["failures"]:
            raise fail(f"{len(manifest['failures'])} input(s) could not be edited", code=1)
        return
    if mask is not None:
        raise fail("--mask is for editors")
    if len(inputs) != 1 or not inputs[0].is_dir():
        raise fail("a personalizer takes one folder of photos of one person")
    method = spec.load()(**options)
    manifest = run_personalizer(
        method, spec, inputs, output, prompts=prompt, num_images=num_images, instance_prompt=instance_prompt,
        class_prompt=class_prompt, resume=resume, progress=show,
    )
    total = len(manifest["prompts"]) * num_images
    typer.echo(f"trained {spec.name} on {len(manifest['inputs'])} photo(s); {total} image(s) in {output / 'images'}")


def register(app: typer.Typer) -> None:
    app.command()(attack)
