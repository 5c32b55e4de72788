"""FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", NeurIPS 2017; generated set against clean set, as the Anti-DreamBooth evaluation does
with pytorch-fid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.interfaces.metric import Metric, MetricConfig

if TYPE_CHECKING:
    import torch
    from torch import Tensor

WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"


def build(*, path: str | None, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Shared-model factory: Inception-v3 returning the 2048-D pool features of (N, 3, 299, 299) in [-1, 1]."""
    import torch

    from facedefense._compat.torchvision_ops import ensure_torchvision_importable
    from facedefense_metrics._weights import resolve_weights

    weights = resolve_weights(path, WEIGHTS_FILE, "https://download.pytorch.org/models/", "fid")
    ensure_torchvision_importable()
    from torchvision.models import inception_v3

    model = inception_v3(weights=None, aux_logits=True, init_weights=weights is None, transform_input=False)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
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
    """Options of :class:`FID`.

    Attributes:
        weights: torchvision's Inception-v3 checkpoint (``inception_v3_google-0cc3c7bd.pth``);
            default: looked for in torch's hub cache; ``"random"``: random weights (tests only).
    """

    weights: str | None = None


class FID(Metric):
    """Fréchet distance between Inception-v3 pool features of the images and of the reference set
    (any sizes and counts; images are resized to 299x299). One value for the whole set; higher
    means the generated set is further from the clean photos (protection worked).

    Shape:
        images: N >= 2 images, references: M >= 2 images, any sizes -> one value.

    Example:
        >>> FID(weights="inception_v3_google-0cc3c7bd.pth").compute(generated, clean).value
        212.4

    Differences from the reference code: pytorch-fid uses the TF-ported Inception
    (``pt_inception-2015-12-05``) and its own resizing; this uses torchvision's Inception-v3 and
    bilinear resizing, so values are comparable between runs here, not digit for digit with papers.
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
            resized = F.interpolate(batch, size=(299, 299), mode="bilinear", align_corners=False)
            features[indices] = model(resized * 2 - 1).double().cpu()
        return features.numpy()

    def _compute(self, images: list[Tensor], references: list[Tensor] | None, prompts) -> float:
        from facedefense.errors import ConfigError
        from facedefense.models import shared_model

        if len(images) < 2 or len(references) < 2:
            raise ConfigError("fid needs at least 2 images and 2 references (it compares feature covariances)")
        model = shared_model("inception_v3", path=self.config.weights, device=self.device)
        return frechet_distance(self._features(model, images), self._features(model, references))
