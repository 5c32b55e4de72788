"""Does `facedefense train --method rid` learn to protect? A check on the tiny trained SD model.

1. Builds the tiny Stable Diffusion whose UNet was fine-tuned on sample faces (the test suite's
   ``trained_tiny_sd_path`` recipe), unless ``--model`` names one.
2. Trains a small RID network (``--steps`` Adv-SDS steps, no regression pairs) on ``--train``
   sample faces through the same code as ``facedefense train``.
3. On ``--eval`` faces the network never saw (other crops and zooms of the sample portraits),
   compares the surrogate's denoising loss of clean photos, RID-protected photos, and photos with
   random noise of the same budget (uniform in [-eps, eps], and random signs +-eps), with common
   random numbers (the same timesteps and noise for every variant).

    PYTHONPATH=.:plugins .venv/bin/python benchmarks/rid_training_check.py --steps 400
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _faces(folder: Path, images) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index, face in enumerate(images):
        Image.fromarray((face.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{index}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a tiny SD folder (default: build and fine-tune one)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--train", type=int, default=8, help="training faces")
    parser.add_argument("--eval", type=int, default=8, help="unseen evaluation faces")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--draws", type=int, default=512, help="timestep/noise draws per image")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "facedefense-rid-check"))
    parser.add_argument("--json")
    args = parser.parse_args()

    import torch

    from facedefense.diffusion import TextEmbeddingCache, denoising_loss, encode_latents, load_components
    from facedefense.testing.tiny_models import build_tiny_sd, sample_faces, train_tiny_unet
    from facedefense_amortized.rid import RID
    from facedefense_amortized.training.loop import TrainSettings, train

    work = Path(args.work)
    model = Path(args.model) if args.model else work / "trained-tiny-sd"
    if not (model / "model_index.json").exists():
        start = time.perf_counter()
        build_tiny_sd(model, seed=0)
        train_tiny_unet(model, sample_faces(4, 128), steps=300, seed=0)
        print(f"built the trained tiny SD in {time.perf_counter() - start:.0f} s")
    pool = sample_faces(args.train + args.eval + 8, args.size)
    train_faces = _faces(work / "train", pool[: args.train])
    unseen = pool[args.train + 8 :]  # skip 8 so that no shifted twin of a training crop is evaluated
    run = work / f"rid-{args.steps}-{args.size}-{args.lr:g}-{args.seed}"
    if not (run / "rid.safetensors").exists():
        architecture = f"input_size={args.size},patch_size=8,hidden_size=64,depth=2,num_heads=4,num_classes=4"
        settings = TrainSettings(
            method="rid", data=train_faces, models=[str(model)], output=run, eps=args.eps, steps=args.steps,
            batch_size=2, device="cpu", progress=True, save_every=args.steps, seed=args.seed,
            options={"architecture": architecture, "warmup_steps": 0, "lr": args.lr},
        )
        start = time.perf_counter()
        train(settings, RID.training_recipe())
        print(f"trained {args.steps} RID steps in {time.perf_counter() - start:.0f} s")

    rid = RID(checkpoint=str(run / "rid.safetensors"), device="cpu", dtype="float32")
    generator = torch.Generator().manual_seed(1)
    variants = {
        "clean": unseen,
        "rid": rid.protect(unseen).images,
        "uniform noise": (unseen + (torch.rand(unseen.shape, generator=generator) * 2 - 1) * args.eps).clamp(0, 1),
        "sign noise": (unseen + torch.randint(0, 2, unseen.shape, generator=generator) * 2 * args.eps - args.eps).clamp(0, 1),
    }
    parts = load_components(str(model))
    prompt = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)("a photo of sks person")
    losses, per_draw = {}, {}
    with torch.no_grad():
        for name, images in variants.items():
            latents = encode_latents(parts.vae, images)
            draws = torch.Generator().manual_seed(0)  # common random numbers for every variant
            per_draw[name] = torch.stack(
                [denoising_loss(parts.unet, parts.scheduler, latents, prompt, generator=draws) for _ in range(args.draws)]
            )
            losses[name] = per_draw[name].mean().item()
    clean = losses["clean"]
    print(f"\nunseen faces: {len(unseen)}, budget {args.eps * 255:.3g}/255, {args.draws} draws each, RID trained {args.steps} steps")
    print("| images | denoising loss | vs clean | paired difference / its standard error |")
    print("|---|---|---|---|")
    for name, value in losses.items():
        # common random numbers: the same draws for every variant, so the paired differences are tight
        difference = per_draw[name] - per_draw["clean"]
        error = difference.std() / args.draws**0.5
        z = "-" if name == "clean" else f"{(difference.mean() / error).item():+.1f}"
        print(f"| {name} | {value:.4f} | {100 * (value / clean - 1):+.2f}% | {z} |")
    margins = {}
    for name in ("uniform noise", "sign noise"):
        difference = per_draw["rid"] - per_draw[name]
        margins[name] = (difference.mean() / (difference.std() / args.draws**0.5)).item()
        print(f"RID - {name}: {100 * difference.mean().item() / clean:+.2f}% of the clean loss, {margins[name]:+.1f} standard errors")
    verdict = "beats" if min(margins.values()) > 2 else "does not clearly beat"
    print(f"RID {verdict} random noise of the same budget (more than 2 standard errors above both)")
    if args.json:
        result = {"losses": losses, "margins_in_standard_errors": margins, "verdict": verdict, "args": vars(args)}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
