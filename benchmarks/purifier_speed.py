"""Seconds per 512x512 image of every built-in purifier, on the tiny models and on full-size
architectures with random weights (the speed of a network does not depend on its weights).

The model-based purifiers run a few of their steps only; the script reports the seconds measured
and the time their default settings would take, extrapolated linearly from the steps (rounds,
iterations) measured, so fixed costs (VAE passes, resizing) are counted that many times too: an
upper estimate. Classical purifiers: best of ``--repeats`` calls after a warm-up; model-based ones:
their first call after their networks are loaded.

    PYTHONPATH=.:plugins .venv/bin/python benchmarks/purifier_speed.py --set tiny
    PYTHONPATH=.:plugins .venv/bin/python benchmarks/purifier_speed.py --set full --only diffpure gridpure impress

Full-size architectures (random weights, built from configs, saved and loaded through
``from_pretrained`` like the real ones):

- pixel DDPM shaped like guided diffusion's ``256x256_diffusion_uncond.pt`` (DiffPure's and
  GrIDPure's model): channels 256-256-512-512-1024-1024, two residual blocks per level, attention at
  32, 16 and 8 pixels, learned variance (6 output channels); about 550M parameters;
- Stable Diffusion 1.5's VAE (IMPRESS; with LPIPS-VGG16), and SD 1.5's UNet for DiffPure through
  img2img (``--only diffpure_sd``: 860M parameters, about 4 GiB in float32, off by default);
- the x4 upscaler's UNet (7 input channels, 256-512-512-1024, noise-level class embeddings) and
  3-level VAE, with a 23-layer width-1024 text encoder (OpenCLIP ViT-H's shape; the tiny
  tokenizer's vocabulary).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

CLASSICAL = ["jpeg", "gaussian_blur", "resize", "quantize", "gaussian_noise"]


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def preload(purifier: Any) -> None:
    """Load a model-based purifier's networks (they load lazily on the first call)."""
    for attribute in ("denoiser", "pipeline"):
        if hasattr(type(purifier), attribute):
            getattr(purifier, attribute)
    if hasattr(purifier, "_load"):
        purifier._load()


def timed(purifier: Any, images: Any, repeats: int, warm_up: bool) -> float:
    """Best of ``repeats`` calls, after one warm-up call if ``warm_up`` (the networks are loaded first)."""
    preload(purifier)
    if warm_up:
        purifier.purify(images)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        purifier.purify(images)
        best = min(best, time.perf_counter() - start)
    return best


def _seeded(seed: int = 0) -> None:
    import torch

    torch.manual_seed(seed)


def full_pixel_ddpm(directory: Path) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    _seeded()
    unet = UNet2DModel(
        sample_size=256, in_channels=3, out_channels=6, layers_per_block=2,
        block_out_channels=(256, 256, 512, 512, 1024, 1024),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
        attention_head_dim=64, resnet_time_scale_shift="scale_shift",
    )
    scheduler = DDPMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, variance_type="learned_range")
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(directory, safe_serialization=True)
    return directory


def _text_parts(hidden: int, layers: int, heads: int) -> tuple[Any, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel

    from facedefense.testing.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer)
    config = CLIPTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
        pad_token_id=vocab - 1, hidden_act="gelu",
    )
    _seeded()
    return tokenizer, CLIPTextModel(config)


def _sd_vae(blocks: int = 4, scaling: float = 0.18215) -> Any:
    from diffusers import AutoencoderKL

    _seeded()
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512)[:blocks], layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        sample_size=512, scaling_factor=scaling,
    )


def full_sd(directory: Path, with_unet: bool) -> Path:
    from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer, text_encoder = _text_parts(768, 12, 12)
    _seeded()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768) if with_unet else UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    StableDiffusionPipeline(
        vae=_sd_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(directory, safe_serialization=True)
    return directory


def full_upscaler(directory: Path) -> Path:
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel

    tokenizer, text_encoder = _text_parts(1024, 23, 16)
    _seeded()
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=7, out_channels=4, layers_per_block=2, block_out_channels=(256, 512, 512, 1024),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=1024, attention_head_dim=8, num_class_embeds=1000, use_linear_projection=True,
        only_cross_attention=[True, True, True, False],
    )
    StableDiffusionUpscalePipeline(
        vae=_sd_vae(blocks=3, scaling=0.08333), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear", clip_sample=False),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False),
        max_noise_level=350,
    ).save_pretrained(directory, safe_serialization=True)
    return directory


def cases(kind: str, root: Path, names: list[str], lpips: str) -> list[tuple[str, dict[str, Any], float, str]]:
    """(purifier, options, default_units / measured_units, unit) for each purifier to time."""
    from facedefense.testing import tiny_models

    found: list[tuple[str, dict[str, Any], float, str]] = [(name, {}, 1.0, "image") for name in CLASSICAL]
    if kind == "tiny":
        ddpm = str(tiny_models.build_tiny_pixel_ddpm(root / "ddpm"))
        sd = str(tiny_models.build_tiny_sd(root / "sd"))
        upscaler = str(tiny_models.build_tiny_upscaler(root / "up"))
        found += [
            # The tiny DDPM's native size is 32; run it at 512 so the UNet sees 512x512.
            ("diffpure", {"model": ddpm, "steps": 2, "resolution": 512}, 100 / 2, "step"),
            ("diffpure_sd", {"model": sd, "steps": 5, "strength": 0.1, "resolution": 512}, 1.0, "image"),
            ("gridpure", {"model": ddpm, "iterations": 1, "steps": 1}, 20 * 10, "round x step"),
            ("noisy_upscale", {"model": upscaler, "steps": 1}, 75.0, "step"),
            ("impress", {"model": sd, "iterations": 2, "lpips_weights": lpips}, 1000 / 2, "iteration"),
        ]
    else:
        if {"diffpure", "gridpure"} & set(names):
            ddpm = str(full_pixel_ddpm(root / "ddpm"))
            found += [
                ("diffpure", {"model": ddpm, "steps": 1, "batch_size": 1}, 100.0, "step"),
                ("gridpure", {"model": ddpm, "iterations": 1, "steps": 1, "batch_size": 2}, 20 * 10, "round x step"),
            ]
        if {"impress", "diffpure_sd"} & set(names):
            sd = str(full_sd(root / "sd", with_unet="diffpure_sd" in names))
            found += [
                ("impress", {"model": sd, "iterations": 1, "lpips_weights": lpips}, 1000.0, "iteration"),
                ("diffpure_sd", {"model": sd, "steps": 2, "strength": 0.1}, 5 / 2, "step"),
            ]
        if "noisy_upscale" in names:
            upscaler = str(full_upscaler(root / "up"))
            found.append(("noisy_upscale", {"model": upscaler, "steps": 1, "resolution": 128}, 75.0, "step (128 px input)"))
    return [case for case in found if case[0] in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--only", nargs="+", help="purifiers to time (default: all; diffpure_sd = DiffPure via SD img2img)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lpips-weights", default="random", help="VGG16 weights for IMPRESS's LPIPS (speed does not depend on them)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch

    import facedefense
    from facedefense.diffusion.loading import _prepare_imports
    from facedefense.testing.tiny_models import sample_faces

    _prepare_imports()
    default = CLASSICAL + ["diffpure", "gridpure", "noisy_upscale", "impress"] + (["diffpure_sd"] if args.set == "tiny" else [])
    names = args.only or default
    images = sample_faces(1, args.size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="purifier-speed-") as root:
        for name, options, scale, unit in cases(args.set, Path(root), names, args.lpips_weights):
            registry_name = "diffpure" if name == "diffpure_sd" else name
            purifier = facedefense.create("purifier", registry_name, device=args.device, **options)
            classical = name in CLASSICAL
            seconds = timed(purifier, images, args.repeats if classical else 1, warm_up=classical)
            row = {"purifier": name, "set": args.set, "size": args.size, "options": {k: v for k, v in options.items() if k != "model"},
                   "seconds_measured": round(seconds, 4), "seconds_at_defaults": round(seconds * scale, 2),
                   "unit": unit, "peak_rss_gib": round(peak_rss_gib(), 2), "threads": torch.get_num_threads()}
            rows.append(row)
            print(f"{name:>14} {args.set:>4} {args.size}px: {seconds:8.3f} s measured; at the defaults ~{seconds * scale:9.2f} s/image "
                  f"(x{scale:g}, per {unit}); peak RSS {row['peak_rss_gib']:.2f} GiB", flush=True)
            del purifier
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "results": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
