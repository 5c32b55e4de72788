"""Protect one image in memory, purify it with JPEG, and score both against the original.

    python examples/evaluate_protection.py portrait.jpg --model /tmp/tiny-sd --steps 5
"""

import argparse

import facedefense
from facedefense.io import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("--model", default="runwayml/stable-diffusion-v1-5")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--quality", type=int, default=75, help="JPEG quality of the purification")
    args = parser.parse_args()

    original = load_image(args.image).pixels  # (1, 3, H, W) float32 in [0, 1]
    protected = facedefense.create("defender", "photoguard", model=args.model, steps=args.steps).protect(original)
    purified = facedefense.create("purifier", "jpeg", quality=args.quality).purify(protected.images)
    psnr, ssim = facedefense.create("metric", "psnr"), facedefense.create("metric", "ssim")
    for label, images in (("protected", protected.images), (f"jpeg q{args.quality}", purified)):
        print(f"{label:>10}: PSNR {psnr.compute(images, original).value:.2f} dB, "
              f"SSIM {ssim.compute(images, original).value:.4f}")
    print(f"budget respected: max change {max(protected.linf):.0f} gray levels (eps {protected.eps * 255:.1f}/255)")


if __name__ == "__main__":
    main()
