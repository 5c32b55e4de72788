"""Training data for the amortized defenders: a folder of face photos, and RID's regression pairs.

The pairs are the reference's ``output_pairs.json`` entries,
``{"source_path": clean photo, "attacked_path": its protected version}`` (relative paths are
relative to the JSON file's folder). ``facedefense pairs CLEAN/ PROTECTED/ --output pairs.json``
writes them from a folder of clean photos and ``facedefense protect CLEAN/ --method aspl --output
PROTECTED/``'s output (matched by file stem) as ``{"command": "pairs", "pairs": [...]}``: the
``command`` proves the file is facedefense's, so a rerun may replace it (and nothing else: see
`facedefense.outputs.claim_file`). ``--pairs`` reads that and the reference's plain list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from facedefense.errors import ConfigError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
#: The command a pairs file names (``{"command": "pairs", "pairs": [...]}``).
PAIRS_COMMAND = "pairs"


def list_images(folder: str | Path, what: str = "--data") -> list[Path]:
    """Image files in ``folder`` and its subfolders (one per identity is common), sorted; ``what``
    names the folder in messages."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{what} {folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_square(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) float32 in [0, 1]: short side resized to ``size`` (bilinear), center crop."""
    import torch.nn.functional as F

    from facedefense.io import load_image

    image = load_image(path).pixels[0]
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    new = (max(size, round(height * scale)), max(size, round(width * scale)))
    image = F.interpolate(image[None], size=new, mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return image[:, top : top + size, left : left + size].clamp(0, 1).contiguous()


class ImageSet:
    """Every image of a folder, loaded once at ``size`` x ``size`` (training sets here are small;
    a large one would stream)."""

    def __init__(self, folder: str | Path, size: int, *, batch_size: int) -> None:
        import torch

        self.paths = list_images(folder)
        if len(self.paths) < batch_size:
            raise ConfigError(
                f"--data {folder} has {len(self.paths)} image(s), fewer than --batch-size {batch_size}; "
                "add images or lower --batch-size"
            )
        self.images = torch.stack([load_square(path, size) for path in self.paths])

    def __len__(self) -> int:
        return len(self.paths)


def read_pairs(path: str | Path, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and protected images of a pairs JSON, each (P, 3, size, size) in [0, 1].

    Raises:
        ConfigError: unreadable JSON, wrong layout, a file that does not exist, or pairs of different sizes.
    """
    import torch

    from facedefense.io import load_image

    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--pairs {path} cannot be read as JSON: {str(exc).splitlines()[0]}") from None
    if isinstance(entries, dict) and entries.get("command") == PAIRS_COMMAND:
        entries = entries.get("pairs")
    if not isinstance(entries, list) or not entries or not all(
        isinstance(e, dict) and {"source_path", "attacked_path"} <= set(e) for e in entries
    ):
        raise ConfigError(f"--pairs {path} must be a non-empty JSON list of {{\"source_path\", \"attacked_path\"}}")
    clean, attacked = [], []
    for entry in entries:
        if not all(isinstance(entry[key], str) and entry[key] and "\0" not in entry[key] for key in ("source_path", "attacked_path")):
            raise ConfigError(f"--pairs {path.name}: source_path and attacked_path must be file names")
        source, protected = (path.parent / entry["source_path"], path.parent / entry["attacked_path"])
        for file in (source, protected):
            if not file.is_file():
                raise ConfigError(f"--pairs {path.name} names {file}, which does not exist")
        if load_image(source).size != load_image(protected).size:
            raise ConfigError(f"--pairs {path.name}: {source.name} and {protected.name} differ in size")
        clean.append(load_square(source, size))
        attacked.append(load_square(protected, size))
    return torch.stack(clean), torch.stack(attacked)


def write_pairs(clean: str | Path, protected: str | Path, output: str | Path) -> int:
    """Write a pairs JSON matching ``clean/NAME.*`` with ``protected/NAME.*``; returns the count.

    ``output`` is claimed before anything is read (`facedefense.outputs.claim_file`): it may not
    be, lie in or hold ``clean`` or ``protected``, its folder must exist, and an existing file is
    replaced only when it is an earlier ``pairs`` output. Written atomically, the umask's mode.

    Raises:
        ConfigError: a folder is missing, ``output`` does not end in ``.json``, or no pair is found.
        OutputError: the output claim refuses ``output``.
    """
    from facedefense.io import write_json
    from facedefense.outputs import claim_file, json_written_by

    clean, protected, output = Path(clean), Path(protected), Path(output)
    for folder, what in ((clean, "clean folder"), (protected, "protected folder")):
        if not folder.is_dir():
            raise ConfigError(f"{what} {folder} is not a folder")
    claim_file(output, PAIRS_COMMAND, inputs=[clean, protected], written_by=json_written_by(PAIRS_COMMAND), kind="pairs file")
    if output.suffix.lower() != ".json":
        raise ConfigError(f"--output must be a .json file, got {output.name}")
    by_stem = {p.relative_to(protected).with_suffix("").as_posix(): p for p in list_images(protected, "protected folder")}
    base = output.resolve().parent
    entries = []
    for image in list_images(clean, "clean folder"):
        match = by_stem.get(image.relative_to(clean).with_suffix("").as_posix())
        if match is not None:
            entries.append(
                {"source_path": _relative(image, base), "attacked_path": _relative(match, base)}
            )
    if not entries:
        raise ConfigError(f"no image of {clean} has a protected version (same name) in {protected}")
    write_json({"command": PAIRS_COMMAND, "clean": str(clean.resolve()), "protected": str(protected.resolve()), "pairs": entries}, output)
    return len(entries)


def _relative(path: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(path.resolve(), base)).as_posix()
