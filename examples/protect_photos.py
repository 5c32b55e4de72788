"""Protect a folder of portraits from Python, with the CLI's guarantees (manifest, budget check).

    facedefense make-tiny-model /tmp/tiny-sd          # or use a real model id on a GPU machine
    python examples/protect_photos.py photos/ protected/ --model /tmp/tiny-sd --steps 5
"""

import argparse

import facedefense
from facedefense.batch import protect_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("output", help="output folder")
    parser.add_argument("--model", default="runwayml/stable-diffusion-v1-5")
    parser.add_argument("--eps", default="8/255")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()

    defender = facedefense.create("defender", "photoguard", model=args.model, eps=args.eps, steps=args.steps)
    report = protect_files(defender, args.inputs, args.output)
    for entry in report.succeeded:
        print(f"{entry['output']}: max change {entry['linf_gray_levels']:.0f} gray levels")
    for failure in report.failed:
        print(f"skipped {failure['input']}: {failure['error']}")


if __name__ == "__main__":
    main()
