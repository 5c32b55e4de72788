"""FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017: the generated set against the clean set.

The papers' convention is the TensorFlow Inception of Heusel et al.'s ``TTUR`` code
(``2015-12-05``) as pytorch-fid ports it: RID's evaluation runs ``python -m pytorch_fid CLEAN
GENERATED`` (``evaluations/eva.sh``); DiffAdvPerturbationBench uses torchmetrics, which loads the
same weights. (Anti-DreamBooth's evaluation has no FID.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces.metric import Metric, MetricConfig, MetricScores

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: Weight file of each network (both are looked for in torch's hub cache, where pytorch-fid and
#: torchvision download them).
WEIGHTS = {"pytorch_fid": "pt_inception-2015-12-05-6726825d.pth", "torchvision": "inception_v3_google-0cc3c7bd.pth"}
ORIGINS = {"pytorch_fid": "github.com/mseitzer/pytorch-fid releases (fid_weights)", "torchvision": "download.pytorch.org/models"}
SIZE = 299


def _fid_blocks():
    """pytorch-fid's FID-Inception blocks: torchvision's InceptionA/C/E with the TF graph's pool
    branch (average pooling that leaves the zero padding out of the mean; a max-pool in the last
    block). Defined on first use (torchvision is imported lazily)."""
    import torch
    import torch.nn.functional as F
    from torchvision.models.inception import InceptionA, InceptionC, InceptionE

    def pool(x, kind: str):
        if kind == "max":
            return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)

    class FIDInceptionA(InceptionA):
        def _forward(self, x):
            b5 = self.branch5x5_2(self.branch5x5_1(x))
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return [self.branch1x1(x), b5, b3, self.branch_pool(pool(x, "avg"))]

    class FIDInceptionC(InceptionC):
        def _forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d7 = x
            for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                d7 = layer(d7)
            return [self.branch1x1(x), b7, d7, self.branch_pool(pool(x, "avg"))]

    class FIDInceptionE(InceptionE):
        def __init__(self, in_channels: int, pool_kind: str) -> None:
            super().__init__(in_channels)
            self.pool_kind = pool_kind

        def _forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d3 = torch.cat([self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3)], 1)
            return [self.branch1x1(x), b3, d3, self.branch_pool(pool(x, self.pool_kind))]

    return FIDInceptionA, FIDInceptionC, FIDInceptionE


def fid_inception_v3() -> torch.nn.Module:
    """pytorch-fid's FID-Inception (``fid_inception_v3``): torchvision's Inception-v3 with 1008
    classes, no auxiliary head and the FID blocks in Mixed_5b-d, 6b-e, 7b (average pools) and 7c
    (max-pool), so ``pt_inception-2015-12-05-6726825d.pth`` loads with strict key matching."""
    from torchvision.models import inception_v3

    block_a, block_c, block_e = _fid_blocks()
    model = inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False, transform_input=False)
    model.Mixed_5b, model.Mixed_5c, model.Mixed_5d = block_a(192, 32), block_a(256, 64), block_a(288, 64)
    model.Mixed_6b, model.Mixed_6c = block_c(768, 128), block_c(768, 160)
    model.Mixed_6d, model.Mixed_6e = block_c(768, 160), block_c(768, 192)
    model.Mixed_7b, model.Mixed_7c = block_e(1280, "avg"), block_e(2048, "max")
    return model


def build(*, path: str | None, device: torch.device, dtype: torch.dtype, network: str = "pytorch_fid") -> torch.nn.Module:
    """Shared-model factory: an Inception-v3 returning the 2048-D pool features of (N, 3, 299, 299)
    in [-1, 1]; ``network`` ``"pytorch_fid"`` (FID-Inception) or ``"torchvision"``.

    ``path="random"`` gives fixed random weights drawn so that activations keep their scale through
    the 90-odd layers (Kaiming-normal convolutions, seed 0; tests and plumbing only).

    Raises:
        ModelNotFoundError: no weights file (one line naming it and where it comes from).
        ConfigError: the file is the other network's (or not an Inception-v3 state dict).
    """
    import contextlib

    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable
    from facedefense_metrics._weights import resolve_weights

    weights = resolve_weights(path, WEIGHTS[network], ORIGINS[network], "fid")
    ensure_torchvision_importable()
    # with a weights file every weight comes from it: built on the meta device, no random initialization
    with contextlib.nullcontext() if weights is None else torch.device("meta"):
        if network == "pytorch_fid":
            model = fid_inception_v3()
        else:
            from torchvision.models import inception_v3

            model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    model = model.to_empty(device="cpu") if weights is not None else model
    if weights is None:
        generator = torch.Generator().manual_seed(0)
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        classes = tuple(state["fc.weight"].shape)[0] if "fc.weight" in state else None
        try:
            model.load_state_dict(state)
        except RuntimeError:
            other = {1008: "pytorch_fid", 1000: "torchvision"}.get(classes)
            hint = f"it is {other}'s Inception: pass -o network={other}" if other and other != network else "not an Inception-v3 state dict"
            raise ConfigError(f"fid: {weights} does not load into the {network} network ({hint})") from None
    model.fc = torch.nn.Identity()
    return model.to(device=device, dtype=dtype).eval()


def frechet_distance(a, b) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two (N, D) float64 feature arrays.

    With X_a, X_b the centered features divided by sqrt(n - 1), S_a S_b has the same non-zero
    eigenvalues as M M^T for M = X_a X_b^T, so Tr((S_a S_b)^(1/2)) is the sum of M's singular values:
    exact, and an (n, m) SVD instead of a (D, D) matrix square root.
    """
    import numpy as np

    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples per set")
    xa = (a - a.mean(0)) / np.sqrt(len(a) - 1)
    xb = (b - b.mean(0)) / np.sqrt(len(b) - 1)
    cross = np.linalg.svd(xa @ xb.T, compute_uv=False).sum()
    mean_term = ((a.mean(0) - b.mean(0)) ** 2).sum()
    return float(max(mean_term + (xa**2).sum() + (xb**2).sum() - 2 * cross, 0.0))


@dataclass
class FIDConfig(MetricConfig):
    """Options of ``FID``.

    Attributes:
        network: ``"pytorch_fid"`` (default): pytorch-fid's FID-Inception, the TF Inception the
            papers' FIDs come from (``pt_inception-2015-12-05-6726825d.pth``); ``"torchvision"``:
            torchvision's ImageNet Inception-v3 (``inception_v3_google-0cc3c7bd.pth``), whose FIDs
            are not comparable with published ones.
        weights: the network's weights file (loaded with ``weights_only``, never downloaded);
            default: looked for in torch's hub cache (``~/.cache/torch/hub/checkpoints``), where
            pytorch-fid and torchvision keep them; ``"random"``: random weights (tests only).
    """

    network: str = "pytorch_fid"
    weights: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.network not in WEIGHTS:
            raise ConfigError(f"fid network must be one of {', '.join(WEIGHTS)}, got '{self.network}'")


class FID(Metric):
    """Fréchet distance between Inception-v3 pool features (2048-D) of the images and of the
    reference set (any sizes and counts). One value for the whole set; higher means the generated
    set is further from the clean photos (protection worked). The network and weights file are
    named in the details.

    Images are resized as pytorch-fid resizes them (bilinear to 299x299, ``align_corners=False``,
    no antialiasing) and scaled to [-1, 1] (``2 x - 1``).

    Shape:
        images: N >= 2 images, references: M >= 2 images, any sizes -> one value.

    Examples:
        >>> FID(weights="pt_inception-2015-12-05-6726825d.pth").compute(generated, clean).value
        212.4
    """

    name: ClassVar[str] = "fid"
    Config: ClassVar[type[FIDConfig]] = FIDConfig
    pairing: ClassVar[str] = "set"
    per_image: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = False

    def _features(self, model, images: list[Tensor]):
        import torch
        import torch.nn.functional as F

        features = torch.zeros(len(images), 2048, dtype=torch.float64)
        for indices, batch in self.batches(images):
            resized = F.interpolate(batch, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            features[indices] = model(resized * 2 - 1).double().cpu()
        return features.numpy()

    def _compute(self, images: list[Tensor], references: list[Tensor] | None, prompts) -> MetricScores:
        from facedefense.models import shared_model
        from facedefense_metrics._weights import resolve_weights

        if len(images) < 2 or len(references) < 2:
            raise ConfigError("fid needs at least 2 images and 2 references (it compares feature covariances)")
        network = self.config.network
        weights = resolve_weights(self.config.weights, WEIGHTS[network], ORIGINS[network], "fid")
        model = shared_model("inception_v3", path=self.config.weights, device=self.device, network=network)
        value = frechet_distance(self._features(model, images), self._features(model, references))
        return MetricScores(value=value, details={"network": network, "weights": weights.name if weights else "random"})
