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
    """Options of ``SERFIQ`` (plus the face options: detector, upsample).

    Attributes:
        backend: must be ``"arcface"`` (weights by path, ``-o weights=``): the network must have been
            trained with dropout before its embedding layer, as SER-FIQ assumes. dlib's was not:
            dropout there gives near-orthogonal embeddings whatever the face (measured: mean
            distance 1.18 clean, 1.18 noisy, 1.20 blurred), so it is refused.
        passes: stochastic forward passes T (paper: 100).
        dropout: dropout probability on the embedding layer's input (paper: 0.5).
        alpha, r: the sigmoid that spreads the raw score, 1 / (1 + exp(-alpha (q - r))) (130, 0.88).
    """

    backend: str = "arcface"
    passes: int = 100
    dropout: float = 0.5
    alpha: float = 130.0
    r: float = 0.88

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend != "arcface":
            raise ConfigError(
                f"ser_fiq needs backend arcface (a network trained with dropout before its embedding layer), got '{self.backend}'"
            )
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

    Examples:
        >>> SERFIQ().compute(generated).value
        0.62

    Differences from the reference code: facexlib's ArcFace IR-SE50 (dropout before its embedding
    layer, as insightface's) on RetinaFace detections instead of insightface/mxnet with MTCNN;
    weights by path (none ship offline).
    """

    name: ClassVar[str] = "ser_fiq"
    Config: ClassVar[type[SERFIQConfig]] = SERFIQConfig
    higher_is_better: ClassVar[bool] = True
    protected_if: ClassVar[str] = "lower"

    def _compute(self, images: list[Tensor], references, prompts) -> MetricScores:
        import torch
        import torch.nn.functional as F

        from facedefense_metrics._faces import make_backend
        from facedefense_metrics.faces.arcface import align_112

        backend = make_backend(self, embed=True)
        network, head = backend.model, backend.model.output_layer  # BN2d, Dropout, Flatten, Linear, BN1d
        generator = self.make_generator()
        scores = []
        for image in images:
            faces = backend.detect(image)
            if not faces:
                scores.append(float("nan"))
                continue
            crop = align_112(image.to(backend.device), faces[0].landmarks)[None] * 2 - 1
            features = head[0](network.body(network.input_layer(crop))).flatten(1)  # (1, 512*7*7)
            keep = torch.rand((self.config.passes, features.shape[1]), generator=generator, device=generator.device)
            masks = (keep >= self.config.dropout).to(features) / (1 - self.config.dropout)
            embeddings = F.normalize(head[4](head[3](features * masks.to(features.device))), dim=-1).double()
            quality = 2 * torch.sigmoid(-torch.pdist(embeddings).mean())
            scores.append(float(torch.sigmoid(self.config.alpha * (quality - self.config.r))))
        missing = sum(s != s for s in scores)
        return MetricScores(per_image=scores, details={"backend": backend.name, "no_face": missing, "passes": self.config.passes})
