"""Image files in and out: the only place where PIL and numpy meet the image-batch contract.

Reading applies the EXIF orientation, converts every mode (grayscale, palette, CMYK, 16-bit, with
or without alpha) to RGB float32 in [0, 1] and keeps the alpha channel and ICC profile aside so the
output can carry them again. Writing is lossless PNG, atomic (a temporary file renamed into place:
never a half-written image), with the permissions the umask gives a new file, and never onto an
input. Every operating-system error becomes an [`OutputError`][facedefense.errors.OutputError] whose
one-line message names the file.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.errors import ImageError, OutputError

if TYPE_CHECKING:
    import numpy as np
    from torch import Tensor

#: File suffixes treated as images when a folder is given.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})
#: Smallest side accepted, in pixels (a VAE downsamples by 8; smaller images carry no face to protect).
MIN_SIDE = 16
#: Largest image accepted, in pixels: a header that declares more is refused as a possible
#: decompression bomb before anything is decoded. The environment variable
#: ``FACEDEFENSE_MAX_PIXELS`` overrides it (e.g. ``FACEDEFENSE_MAX_PIXELS=250000000``). Pillow's own
#: limit is not used (this one replaces it).
MAX_PIXELS = 100_000_000
#: Largest ratio of the long side to the short side accepted (a 4000x16 strip is no portrait, and
#: scaling its short side to a model's resolution would make a gigantic working image).
MAX_ASPECT_RATIO = 16


def max_pixels() -> int:
    """The decompression-bomb limit in pixels: ``FACEDEFENSE_MAX_PIXELS`` if set, else ``MAX_PIXELS``.

    Raises:
        ConfigError: the environment variable is not a positive integer.
    """
    text = os.environ.get("FACEDEFENSE_MAX_PIXELS", "").strip().replace("_", "")
    if not text:
        return MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        from facedefense.errors import ConfigError

        raise ConfigError(f"FACEDEFENSE_MAX_PIXELS must be a positive number of pixels, got {text!r}")
    return int(text)


@dataclass
class LoadedImage:
    """A decoded image.

    Attributes:
        path: the file it came from.
        pixels: (1, 3, H, W) float32 RGB in [0, 1], upright (EXIF orientation applied).
        alpha: (H, W) uint8 alpha channel, or None.
        icc_profile: the embedded ICC profile bytes, or None.
    """

    path: Path
    pixels: Tensor
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.pixels.shape[-2]), int(self.pixels.shape[-1])


def load_image(path: str | Path, data: bytes | None = None) -> LoadedImage:
    """Decode one image file, or ``data``: the bytes of an upload named ``path`` (then nothing is
    read from disk; ``path`` only names the image in messages and in the result).

    Raises:
        ImageError: missing, empty, not an image, truncated or corrupt, too small or too large.
    """
    import io

    import numpy as np
    import torch
    from PIL import Image, ImageOps

    path = Path(path)
    limit = max_pixels()
    if data is None and not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        if (len(data) if data is not None else path.stat().st_size) == 0:
            raise ImageError(f"{path}: empty file (0 bytes)")
        # Pillow warns above its own limit and refuses above twice that; the one limit is ours.
        with warnings.catch_warnings(), _pillow_limit_off():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path if data is None else io.BytesIO(data)) as opened:
                width, height = opened.size
                if width * height > limit:
                    raise ImageError(
                        f"{path}: {width}x{height} is {width * height:,} pixels, over the {limit:,}-pixel "
                        "limit (possible decompression bomb; FACEDEFENSE_MAX_PIXELS raises it)"
                    )
                _check_aspect(path, width, height)
                icc_profile = opened.info.get("icc_profile")
                opened.load()
                image = ImageOps.exif_transpose(opened)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: image too large (possible decompression bomb): {exc}") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not an image file PIL can read") from exc
    except PermissionError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{path}: corrupt or truncated image ({exc})") from exc
    rgb, alpha = _to_rgb_array(image)
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"{path}: {width}x{height} is too small (minimum {MIN_SIDE}x{MIN_SIDE} pixels)")
    pixels = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    return LoadedImage(path, pixels, alpha, icc_profile)


class _pillow_limit_off:
    """Switch Pillow's decompression-bomb limit off while a file whose size we checked is decoded."""

    lock = threading.Lock()
    depth = 0
    saved: int | None = None

    def __enter__(self) -> None:
        from PIL import Image

        with self.lock:
            if type(self).depth == 0:
                type(self).saved = Image.MAX_IMAGE_PIXELS
                Image.MAX_IMAGE_PIXELS = None
            type(self).depth += 1

    def __exit__(self, *exc: object) -> None:
        from PIL import Image

        with self.lock:
            type(self).depth -= 1
            if type(self).depth == 0:
                Image.MAX_IMAGE_PIXELS = type(self).saved


def _check_aspect(path: Path, width: int, height: int) -> None:
    if min(width, height) >= 1 and max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f"{path}: {width}x{height} has an extreme aspect ratio (at most {MAX_ASPECT_RATIO}:1 is accepted)"
        )


def _to_rgb_array(image: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """PIL image of any mode -> (H, W, 3) float32 in [0, 1] and an optional (H, W) uint8 alpha."""
    import numpy as np

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        gray = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or gray.max(initial=0) > 255 else 255.0
        if mode == "F" and gray.max(initial=0) <= 1.0:
            peak = 1.0
        gray = np.clip(gray / peak, 0.0, 1.0).astype(np.float32)
        return np.repeat(gray[..., None], 3, axis=2), None
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"))
        return rgba[..., :3].astype(np.float32) / 255.0, np.ascontiguousarray(rgba[..., 3])
    return np.asarray(image.convert("RGB")).astype(np.float32) / 255.0, None


def to_uint8(pixels: Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounding to nearest."""
    import torch

    if pixels.ndim == 4:
        if pixels.shape[0] != 1:
            raise ImageError(f"expected one image, got a batch of {pixels.shape[0]}")
        pixels = pixels[0]
    values = torch.round(pixels.detach().float().clamp(0, 1) * 255.0).to(torch.uint8)
    return values.permute(1, 2, 0).cpu().numpy()


#: zlib level of the PNGs written (Pillow's default). The pixels are the same at every level; a noisy
#: 512x512 photo encodes about 1.45x faster at level 1, for about 9% more bytes.
PNG_LEVEL = 6


def save_image(
    pixels: Tensor, path: str | Path, *, alpha: np.ndarray | None = None, icc_profile: bytes | None = None,
    compress_level: int = PNG_LEVEL,
) -> Path:
    """Write one image as lossless PNG, atomically.

    Args:
        pixels: (3, H, W) or (1, 3, H, W) float in [0, 1]; rounded to the nearest 8-bit value.
        path: destination (``.png``).
        alpha: optional (H, W) uint8 alpha channel to carry over.
        icc_profile: optional ICC profile to embed (keeps the colours of the original).
        compress_level: zlib level, 0 (none, fastest) to 9 (smallest). Default ``PNG_LEVEL``.
    """
    image, options = _png_image(pixels, alpha, icc_profile, compress_level)
    path = Path(path)
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG", **options)
    return path


def png_bytes(pixels: Tensor, *, alpha: np.ndarray | None = None, icc_profile: bytes | None = None,
              compress_level: int = PNG_LEVEL) -> bytes:
    """The PNG file `save_image` writes, as bytes in memory (arguments as there)."""
    import io

    image, options = _png_image(pixels, alpha, icc_profile, compress_level)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _png_image(pixels: Tensor, alpha: np.ndarray | None, icc_profile: bytes | None,
               compress_level: int = PNG_LEVEL) -> tuple[Any, dict[str, Any]]:
    """The PIL image (RGB, or RGBA with ``alpha``) and PNG options (level, ICC profile) to write."""
    import numpy as np
    from PIL import Image

    if isinstance(compress_level, bool) or not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
        raise ImageError(f"PNG compression level must be an integer from 0 to 9, got {compress_level!r}")

    array = to_uint8(pixels)
    if alpha is not None:
        array = np.concatenate([array, alpha[..., None].astype(np.uint8)], axis=2)
    image = Image.fromarray(array, mode="RGBA" if alpha is not None else "RGB")
    return image, {"compress_level": compress_level, **({"icc_profile": icc_profile} if icc_profile else {})}


def umask_mode() -> int:
    """The permission bits a new file gets: 0o666 minus the umask (read from /proc on Linux, where
    reading it does not change it even for an instant; elsewhere set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


class atomic_path:
    """Context manager giving a temporary path beside ``path``, renamed onto it on success: the
    one way facedefense writes a file (images, JSON, reports, checkpoints, ONNX exports).

    The file gets the mode a file created by ``open`` would get (the umask's), not ``mkstemp``'s
    0600 (nor the 0600 some writers, e.g. safetensors, create); on any failure, Ctrl-C included,
    the temporary file is removed (``path`` keeps its earlier content, if any), and an operating
    system error becomes an `OutputError` naming ``path``.

    Examples:
        >>> with atomic_path(Path("out/weights.safetensors")) as temporary:  # doctest: +SKIP
        ...     save_file(state, str(temporary))
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        if self.path.is_dir():
            raise OutputError(f"{self.path}: is a folder; give a file name")
        try:
            handle, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot be written ({_reason(exc)})") from exc
        os.close(handle)
        self.temporary = Path(name)
        return self.temporary

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                os.chmod(self.temporary, umask_mode())
                os.replace(self.temporary, self.path)
                return False
            except OSError as error:
                self.temporary.unlink(missing_ok=True)
                raise OutputError(f"{self.path}: cannot be written ({_reason(error)})") from error
        self.temporary.unlink(missing_ok=True)
        if issubclass(exc_type, OSError) and not issubclass(exc_type, OutputError):
            raise OutputError(f"{self.path}: cannot be written ({_reason(exc)})") from exc
        return False



def _reason(exc: OSError) -> str:
    """An OSError's reason without the file name Python appends (the message names the file itself)."""
    return (exc.strerror or str(exc) or type(exc).__name__).strip()


def check_writable_file(path: str | Path) -> Path:
    """Check, before any work, that ``path`` can be written as a file (its folder exists and is writable).

    Raises:
        OutputError: ``path`` is a folder, its folder is missing or not a folder, or is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    parent = path.parent
    if not parent.exists():
        raise OutputError(f"{path}: its folder {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"{path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: the folder {parent} is not writable (permission denied)")
    if path.exists() and not os.access(path, os.W_OK) and not os.access(parent, os.W_OK):
        raise OutputError(f"{path}: is not writable (permission denied)")
    return path


def write_json(data: Any, path: str | Path) -> Path:
    """Write strict JSON atomically (indented, UTF-8): NaN and infinities (undefined metric values)
    become ``null``, so any JSON parser reads the file."""
    path = Path(path)
    with atomic_path(path) as temporary:
        text = json.dumps(_finite(data), indent=2, sort_keys=False, allow_nan=False)
        temporary.write_text(text + "\n", encoding="utf-8")
    return path


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (recursively)."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (not recursive) into a sorted, de-duplicated list of image paths.

    A file named explicitly is kept whatever its suffix (a bad one is reported when read); a
    folder contributes the files with an image suffix. Paths are made absolute but symbolic links
    are NOT followed: an output is named after the name the user gave (``my_face.jpg`` linking to
    ``astro.jpg`` writes ``my_face.png``).

    Raises:
        ImageError: a path does not exist, or nothing to process was found.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not entries:
                raise ImageError(f"{path}: folder contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.extend(entries)
        elif path.exists():
            found.append(path)
        elif path.is_symlink():
            raise ImageError(f"{path}: broken symbolic link (its target does not exist)")
        else:
            raise ImageError(f"{path}: no such file or folder")
    unique = list(dict.fromkeys(Path(os.path.abspath(p)) for p in found))
    if not unique:
        raise ImageError("no input images given")
    return unique


def check_output_dir(output: str | Path, inputs: Sequence[Path] = ()) -> Path:
    """Check, before any work and without creating anything, that ``output`` can be the output folder.

    Raises:
        OutputError: it is a file, holds an input, lies under a file, or cannot be created or written.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: exists and is not a folder")
    resolved = output.resolve()
    for source in inputs:
        if resolved in (source.parent, source.parent.resolve(), source.resolve().parent):
            raise OutputError(f"output folder {output} holds the input {source.name}; choose another output folder")
    existing = resolved
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create output folder {output}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == resolved else f"cannot be created: {existing} is not writable"
        raise OutputError(f"output folder {output} {what} (permission denied)")
    return output


def prepare_output_dir(output: str | Path, inputs: Sequence[Path], *, suffix: str = ".png") -> list[Path]:
    """Create the output folder and return one output path per input (same name, ``suffix``).

    Raises:
        OutputError: the folder is an input folder, is not writable, or two inputs share a name.
    """
    output = check_output_dir(output, inputs)
    targets = [output / f"{source.stem}{suffix}" for source in inputs]
    seen: dict[Path, Path] = {}
    for source, target in zip(inputs, targets):
        if target in seen:
            first = seen[target]
            detail = " (the same file given twice)" if first.resolve() == source.resolve() else ""
            raise OutputError(f"{first} and {source} would both be written as {target.name} in {target.parent}{detail}")
        seen[target] = source
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=output, prefix=".facedefense-probe-")
        probe.close()
    except OSError as exc:
        raise OutputError(f"output folder {output} cannot be created or written ({_reason(exc)})") from exc
    return targets


#: The environment variable that moves facedefense's cache folder; ``FACEDEFENSE_CACHE_DIR``, its
#: former name, is still read when it is not set.
CACHE_VARIABLE = "FACEDEFENSE_CACHE"


def cache_dir() -> Path:
    """facedefense's cache folder: ``$FACEDEFENSE_CACHE``, else ``$XDG_CACHE_HOME/facedefense``, else
    ``~/.cache/facedefense``. It holds what can be rebuilt: prior-preservation class images
    (``class_images/``), what ``--dtype auto`` measured (``autotune.json``) and the test suite's
    trained tiny models (``tests/``). Not created here."""
    configured = os.environ.get(CACHE_VARIABLE) or os.environ.get("FACEDEFENSE_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "facedefense"


def io_workers() -> int:
    """Threads for decoding and encoding image files: Pillow's PNG/JPEG codecs run without the GIL,
    so files keep up with a GPU that protects hundreds of photos per second (one thread decodes
    about 90 and encodes about 25 noisy 512x512 PNGs per second)."""
    return max(1, min(8, os.cpu_count() or 1))


def iter_images(
    paths: Sequence[Path], *, prefetch: int = 2, workers: int = 1
) -> Iterator[tuple[Path, LoadedImage | ImageError]]:
    """Decode ``paths`` in ``workers`` background threads, ``prefetch`` images ahead of the consumer.

    Yields ``(path, image)`` or ``(path, error)`` in order, so the caller computes while the next
    images decode and reports bad files without stopping.
    """

    def decode(path: Path) -> LoadedImage | ImageError:
        try:
            return load_image(path)
        except ImageError as exc:
            return exc

    prefetch = max(prefetch, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = [pool.submit(decode, p) for p in paths[:prefetch]]
        for index, path in enumerate(paths):
            result = pending.pop(0).result()
            if index + prefetch < len(paths):
                pending.append(pool.submit(decode, paths[index + prefetch]))
            yield path, result


def load_images(inputs: Iterable[str | Path]) -> list[LoadedImage]:
    """Load every image of ``inputs`` (files or folders); raise on the first bad one."""
    return [load_image(p) for p in collect_images(inputs)]
