"""SER-FIQ: Terhörst et al., "SER-FIQ: Unsupervised Estimation of Face Image Quality Based on
Stochastic Embedding Robustness", CVPR 2020; the face-quality score of the Anti-DreamBooth evaluation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces.metric import Metric, MetricScores
from facedefense_metrics._faces import FaceMetricConfig

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class SERFIQConfig(FaceMetricConfig):
    """Options of :class:`SERFIQ` (plus the face options: detector, upsample).

    Attributes:
        backend: must be ``"dlib_torch"`` (the embedding network runs in torch, with dropout).
        passes: stochastic forward passes T (paper: 100).
        dropout: dropout probability on the embedding layer's input (paper: 0.5).
        alpha, r: the sigmoid that spreads the raw score, 1 / (1 + exp(-alpha (q - r))) (130, 0.88).
    """

    backend: str = "dlib_torch"
    passes: int = 100
    dropout: float = 0.5
    alpha: float = 130.0
    r: float = 0.88

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend != "dlib_torch":
            raise ConfigError(f"ser_fiq needs backend dlib_torch (dropout inside the network), got '{self.backend}'")
        if self.passes < 2:
            raise ConfigError(f"passes must be >= 2, got {self.passes}")
        if not 0.0 < self.dropout < 1.0:
            raise ConfigError(f"dropout must be in (0, 1), got {self.dropout}")


class SERFIQ(Metric):
    """Face image quality from the robustness of the identity embedding to dropout: T embeddings of
    the largest face with random dropout masks on the last layer's input; quality
    q = 2 sigmoid(-mean pairwise distance of the unit embeddings), reported as
    1 / (1 + exp(-alpha (q - r))) in [0, 1]. Higher is a better face; protections that break the
    generated faces lower it. NaN (counted in the details) where no face is found.

    Shape:
        images: any number, any sizes -> one value each.

    Example:
        >>> SERFIQ().compute(generated).value
        0.62

    Differences from the reference code: the embedding network is dlib's ResNet (torch port), not
    insightface's ArcFace, with dropout on its 256-D pooled features (the reference drops out the
    input of ArcFace's embedding layer); faces are found by dlib instead of MTCNN. Values are on
    this model's scale, comparable between runs here, not with the paper's tables.
    """

    name: ClassVar[str] = "ser_fiq"
    Config: ClassVar[type[SERFIQConfig]] = SERFIQConfig
    higher_is_better: ClassVar[bool] = True
    protected_if: ClassVar[str] = "lower"

    def _compute(self, images: list[Tensor], references, prompts) -> MetricScores:
        import torch
        import torch.nn.functional as F

        from facedefense.models import shared_model
        from facedefense_metrics._faces import make_backend

        backend = make_backend(self, embed=True)
        model = shared_model("dlib_torch", device=self.device)
        generator = self.make_generator()
        scores = []
        for image in images:
            faces = backend.detect(image)
            if not faces:
                scores.append(float("nan"))
                continue
            pooled = model.pooled(image[None].to(self.device), faces[0].landmarks[None])  # (1, 256)
            keep = torch.rand((self.config.passes, pooled.shape[1]), generator=generator, device=generator.device)
            masks = (keep >= self.config.dropout).to(pooled.dtype) / (1 - self.config.dropout)
            embeddings = F.normalize(model.net.fc(pooled * masks.to(pooled.device)), dim=-1).double()
            distances = torch.pdist(embeddings)
            quality = 2 * torch.sigmoid(-distances.mean())
            scores.append(float(torch.sigmoid(self.config.alpha * (quality - self.config.r))))
        missing = sum(s != s for s in scores)
        return MetricScores(per_image=scores, details={"backend": backend.name, "no_face": missing, "passes": self.config.passes})
