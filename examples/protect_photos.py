"""Protect portraits from Python with PhotoGuard, with the CLI's guarantees: PNG outputs with the
input names, the budget checked on the written 8-bit values, a facedefense.json manifest.

    facedefense make-tiny-model /tmp/tiny-sd      # tiny random model: a pipeline check, no real protection
    python examples/protect_photos.py photos/ protected/ --model /tmp/tiny-sd --steps 5

    # real protection (GPU recommended)
    python examples/protect_photos.py photos/ protected/ --device cuda \
        --model stable-diffusion-v1-5/stable-diffusion-v1-5
"""

import argparse

import facedefense
from facedefense.batch import protect_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("output", help="output folder (must not be an input folder)")
    parser.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5")
    parser.add_argument("--eps", default="8/255", help="L-infinity budget in [0, 1] units")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=512, help="short side the model sees (pixels)")
    args = parser.parse_args()

    defender = facedefense.create(
        "defender", "photoguard", model=args.model, eps=args.eps, steps=args.steps, device=args.device,
        seed=args.seed, resolution=args.resolution,
    )  # fmt: skip
    report = protect_files(defender, args.inputs, args.output)
    for entry in report.succeeded:
        print(f"{entry['output']}: max change {entry['linf_gray_levels']:.0f} gray levels")
    for failure in report.failed:
        print(f"skipped {failure['input']}: {failure['error']}")
    print(f"manifest: {report.manifest_path}")


if __name__ == "__main__":
    main()
