"""Write a defender in a script, without a plugin, and run it with the library's guarantees.

``LatentPush`` pushes each photo's VAE latent away from the original's (an untargeted encoder attack,
like FaceLock's ``encoder`` baseline) with facedefense's PGD. To offer it to ``facedefense protect``,
package it as a plugin instead (examples/facedefense-example-plugin).

    facedefense make-tiny-model /tmp/tiny-sd
    python examples/custom_defender_inline.py photos/ pushed/ --model /tmp/tiny-sd --steps 5
"""

import argparse

from facedefense import Defender, IterativeDefenderConfig
from facedefense.batch import protect_files
from facedefense.diffusion import latent_mean, load_components
from facedefense.imaging import resize, working_size
from facedefense.optim import linf_pgd


class LatentPush(Defender):
    """Maximize ``|| mu_E(x + delta) - mu_E(x) ||_2`` per image; the base class enforces the budget."""

    name = "latent_push"
    Config = IterativeDefenderConfig  # model, eps, steps, step_size, resolution, seed, device, dtype

    def __init__(self, config=None, **options):
        super().__init__(config, **options)
        self.vae = load_components(self.config.model, components=("vae",), device=self.device, dtype=self.dtype).vae

    def _perturb(self, images, generator):
        size = working_size(*images.shape[-2:], self.config.resolution)
        clean = latent_mean(self.vae, resize(images, size)).float().detach()

        def distance(adversarial):  # one value per image
            return (latent_mean(self.vae, resize(adversarial, size)).float() - clean).flatten(1).norm(dim=1)

        c = self.config
        adversarial, _, end = linf_pgd(images, distance, eps=c.eps, steps=c.steps, step_size=c.step_size,
                                       minimize=False, random_start=True, generator=generator)
        return adversarial, [{"latent_distance": float(value)} for value in end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    parser.add_argument("output", help="output folder")
    parser.add_argument("--model", default="stable-diffusion-v1-5/stable-diffusion-v1-5")
    parser.add_argument("--eps", default="8/255", help="L-infinity budget in [0, 1] units")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--resolution", type=int, default=512, help="short side the VAE sees")
    args = parser.parse_args()

    defender = LatentPush(model=args.model, eps=args.eps, steps=args.steps, resolution=args.resolution)
    report = protect_files(defender, args.inputs, args.output, method_info={"plugin": "__main__"})
    print("\n".join(f"{e['output']}: latent distance {e['latent_distance']:.3f}" for e in report.succeeded))


if __name__ == "__main__":
    main()
