"""Inputs of the tiny benchmark config: a tiny random-weight SD, sample identities, precomputed images.

``python -m facedefense.testing.benchmark_inputs benchmarks/configs/tiny-inputs`` writes

* ``tiny-sd/``:
  [`facedefense.testing.tiny_models.build_tiny_sd`][facedefense.testing.tiny_models.build_tiny_sd] (64 px);
* ``tiny-ip-adapter/``:
  [`facedefense.testing.tiny_adapters.build_tiny_ip_adapter`][facedefense.testing.tiny_adapters.build_tiny_ip_adapter]
  for it (the zero-shot attack);
* ``faces/id0``, ``faces/id1``, ...: ``set_A``, ``set_B``, ``set_C`` of sample portraits
  ([`sample_faces`][facedefense.testing.tiny_models.sample_faces], crops of one public-domain photo, so the
  "identities" are the same person: the tiny benchmark checks the machinery, not the numbers);
* ``precomputed/<identity>/``: set_B with seeded uniform noise at 8/255, standing in for
  protections made by another tool (the ``precomputed:`` defender).
"""

from __future__ import annotations

import sys
from pathlib import Path


def write_identities(folder: str | Path, *, identities: int = 2, per_set: int = 2, size: int = 64) -> Path:
    """Write ``folder/id<k>/set_{A,B,C}/<k>_<i>.png`` from the sample portraits; returns ``folder``."""
    from facedefense.io import save_image
    from facedefense.testing.tiny_models import sample_faces

    folder = Path(folder)
    faces = sample_faces(identities * 3 * per_set, size)
    index = 0
    for identity in range(identities):
        for name in ("set_A", "set_B", "set_C"):
            target = folder / f"id{identity}" / name
            target.mkdir(parents=True, exist_ok=True)
            for item in range(per_set):
                save_image(faces[index], target / f"{identity}_{name[-1]}{item}.png")
                index += 1
    return folder


def write_precomputed(faces: str | Path, folder: str | Path, *, eps: float = 8 / 255, seed: int = 0) -> Path:
    """For each identity of ``faces``, set_B plus seeded uniform noise in [-eps, eps], same names."""
    import torch

    from facedefense.io import load_image, save_image

    generator = torch.Generator().manual_seed(seed)
    for identity in sorted(p for p in Path(faces).iterdir() if p.is_dir()):
        target = Path(folder) / identity.name
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted((identity / "set_B").glob("*.png")):
            image = load_image(path).pixels[0]
            noise = (torch.rand(image.shape, generator=generator, device=generator.device) * 2 - 1) * eps
            save_image((image + noise).clamp(0, 1), target / path.name)
    return Path(folder)


def make_tiny_benchmark_inputs(folder: str | Path, *, identities: int = 2, per_set: int = 2) -> Path:
    """Everything ``benchmarks/configs/tiny.yaml`` reads, under ``folder``."""
    from facedefense.testing.tiny_adapters import build_tiny_ip_adapter
    from facedefense.testing.tiny_models import build_tiny_sd

    folder = Path(folder)
    build_tiny_sd(folder / "tiny-sd")
    build_tiny_ip_adapter(folder / "tiny-ip-adapter", folder / "tiny-sd")
    write_identities(folder / "faces", identities=identities, per_set=per_set)
    write_precomputed(folder / "faces", folder / "precomputed")
    return folder


if __name__ == "__main__":
    target = make_tiny_benchmark_inputs(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/configs/tiny-inputs")
    print(f"tiny benchmark inputs written to {target}")
