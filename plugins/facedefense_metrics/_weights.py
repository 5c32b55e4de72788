"""Finding the weight files of metrics whose weights do not ship in a wheel (LPIPS backbones,
Inception for FID, CLIP): given by path, else looked for where torch keeps downloads."""

from __future__ import annotations

from pathlib import Path

from facedefense.errors import ModelNotFoundError

#: ``weights`` value that builds the network with random weights (tests and plumbing only).
RANDOM = "random"


def resolve_weights(path: str | None, filename: str, origin: str, metric: str, option: str = "weights") -> Path | None:
    """The weights file to load: ``path``; else ``<torch hub dir>/checkpoints/<filename>``, where
    torchvision and ``torch.hub`` keep what they download (``$TORCH_HOME/hub/checkpoints``, by
    default ``~/.cache/torch/hub/checkpoints``). Nothing is downloaded.

    Args:
        path: the file the user gave, None to look in the cache, or ``"random"``.
        filename: the file's name in the cache (e.g. ``vgg16-397923af.pth``).
        origin: where the file comes from, for the error message.
        metric: the method's name, for the error message.
        option: the option that takes the path (``-o OPTION=PATH`` in the error message).

    Returns None when ``path`` is ``"random"``.

    Raises:
        ModelNotFoundError: one line naming the file and where it comes from.
    """
    if path == RANDOM:
        return None
    if path is not None:
        candidate = Path(path).expanduser()
        if candidate.is_file():
            return candidate
        raise ModelNotFoundError(f"{metric}: weights file {candidate} not found (expected {filename}, from {origin})")
    import torch.hub

    candidate = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if candidate.is_file():
        return candidate
    raise ModelNotFoundError(
        f"{metric} needs {filename} (from {origin}): pass -o {option}=PATH or put it in {candidate.parent}"
    )
