"""Protect one photo in memory, purify it with JPEG as an adversary would, and measure both: image
quality against the original (PSNR, SSIM) and how much of the perturbation survives the codec.

    facedefense make-tiny-model /tmp/tiny-sd
    python examples/evaluate_protection.py portrait.jpg --model /tmp/tiny-sd --steps 5 --output out/
"""

import argparse
from pathlib import Path

import facedefense
from facedefense.io import load_image, save_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality of the purification")
    parser.add_argument("--output", type=Path, help="also save protected.png and purified.png here")
    parser.add_argument("--resolution", type=int, default=512, help="short side the model sees (pixels)")
    args = parser.parse_args()

    loaded = load_image(args.image)  # EXIF orientation applied; alpha and ICC profile kept aside
    original = loaded.pixels  # (1, 3, H, W) float32 in [0, 1]
    defender = facedefense.create("defender", "photoguard", model=args.model, steps=args.steps, resolution=args.resolution)
    protected = defender.protect(original)
    jpeg = facedefense.create("purifier", "jpeg", quality=args.quality)
    purified = jpeg.purify(protected.images)
    psnr, ssim = facedefense.create("metric", "psnr"), facedefense.create("metric", "ssim")
    for label, images in (("protected", protected.images), (f"jpeg q{args.quality}", purified)):
        print(f"{label:>10}: PSNR {psnr.compute(images, original).value:.2f} dB, "
              f"SSIM {ssim.compute(images, original).value:.4f}")
    print(f"budget: max change {max(protected.linf):.0f} gray levels (eps {protected.eps * 255:.1f}/255)")
    # What JPEG leaves of the perturbation: the change it keeps, projected onto the perturbation.
    delta, kept = protected.images - original, purified - jpeg.purify(original)
    print(f"JPEG keeps {((kept * delta).sum() / (delta * delta).sum()).item():.0%} of the perturbation")
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        for name, images in (("protected", protected.images), ("purified", purified)):
            save_image(images, args.output / f"{name}.png", alpha=loaded.alpha, icc_profile=loaded.icc_profile)


if __name__ == "__main__":
    main()
