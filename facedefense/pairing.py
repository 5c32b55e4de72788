"""Pairing generated images with their references for ``facedefense evaluate``: by file name, with a
name pattern for third-party sets, and per identity when a folder holds one subfolder per person.

Third-party releases rarely share names with the clean photos: MetaCloak's protected images are
``noisy_0051_01.png`` beside the clean ``0051_01.png``, one subfolder per identity. The pattern
``"noisy_{stem}"`` says how a generated file's stem is built from its reference's stem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from facedefense.errors import ConfigError, ImageError
from facedefense.io import IMAGE_SUFFIXES, collect_images


def stem_matcher(pattern: str = "{stem}"):
    """Function mapping a generated file stem to its reference stem (None when it does not fit).

    Args:
        pattern: the generated stem written with ``{stem}`` for the reference's stem, e.g.
            ``"noisy_{stem}"``, ``"{stem}_protected"``, ``"{stem}"`` (same names, the default).

    Examples:
        >>> stem_matcher("noisy_{stem}")("noisy_0051_01")
        '0051_01'
    """
    if pattern.count("{stem}") != 1:
        raise ConfigError(f"--match pattern must contain {{stem}} exactly once, got '{pattern}'")
    before, after = pattern.split("{stem}")
    regex = re.compile(re.escape(before) + "(?P<stem>.+)" + re.escape(after))

    def match(stem: str) -> str | None:
        found = regex.fullmatch(stem)
        return found["stem"] if found else None

    return match


def pair_by_pattern(
    generated: Sequence[Path], references: Sequence[Path], pattern: str = "{stem}"
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pair each generated image with the reference whose stem the pattern gives; return the pairs
    and the generated images left unmatched."""
    match = stem_matcher(pattern)
    by_stem = {path.stem: path for path in references}
    pairs, unmatched = [], []
    for path in generated:
        stem = match(path.stem)
        if stem is not None and stem in by_stem:
            pairs.append((path, by_stem[stem]))
        else:
            unmatched.append(path)
    return pairs, unmatched


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())


@dataclass(frozen=True)
class Group:
    """One identity (or the whole input): its generated images and its reference folder.

    Attributes:
        name: the identity subfolder's name (the input folder's name when there are no subfolders).
        generated: folder (or file) of generated images.
        reference: folder of references for this identity, or None.
    """

    name: str
    generated: Path
    reference: Path | None = None


def identity_groups(generated: str | Path, reference: str | Path | None = None) -> list[Group]:
    """One group per identity subfolder of ``generated`` (a folder holding only subfolders of
    images), else one group for ``generated`` itself.

    References: the subfolder of ``reference`` with the same name when ``reference`` is a folder of
    subfolders; else the whole ``reference`` folder for every group.

    Raises:
        ImageError: ``generated`` holds no images, or an identity has no reference subfolder of its name.
    """
    root = Path(generated)
    ref_root = Path(reference) if reference is not None else None
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _has_images(p)) if root.is_dir() else []
    if not subfolders or _has_images(root):
        collect_images([root])  # raises when there is nothing to score
        return [Group(root.name, root, ref_root)]
    if ref_root is None:
        return [Group(folder.name, folder) for folder in subfolders]
    ref_subfolders = {p.name: p for p in ref_root.iterdir() if p.is_dir() and _has_images(p)} if ref_root.is_dir() else {}
    if ref_subfolders and not _has_images(ref_root):
        missing = [folder.name for folder in subfolders if folder.name not in ref_subfolders]
        if missing:
            raise ImageError(f"{ref_root}: no reference subfolder for {', '.join(missing)}")
        return [Group(folder.name, folder, ref_subfolders[folder.name]) for folder in subfolders]
    return [Group(folder.name, folder, ref_root) for folder in subfolders]
