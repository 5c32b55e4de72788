"""FaceLock's facial-recognition similarity (FR): Wang et al., "Edit Away and My Face Will not
Stay: Personal Biometric Defense against Malicious Generative Editing", CVPR 2025."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import ConfigError
from facedefense.interfaces.metric import Metric, MetricScores
from facedefense_metrics._faces import FaceMetricConfig, make_backend

if TYPE_CHECKING:
    from torch import Tensor

#: What FR does with an edit in which no face is found (see ``FRConfig``).
NO_FACE = ("whole", "zero", "skip")


@dataclass
class FRConfig(FaceMetricConfig):
    """Options of ``FR`` (plus the face options).

    Attributes:
        no_face: an edit in which the backend finds no face is ``"whole"`` (default): scored with
            the embedding of the whole edit resized to the network's input, as FaceLock's aligner
            always returns a crop and ``evaluation/eval_facial.py`` averages over every edit;
            ``"zero"``: scored 0 (no identity kept); ``"skip"``: NaN, left out of the mean (the
            pre-fix behaviour, which rewards a protection for destroying the face less than for
            changing it).
    """

    no_face: str = "whole"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.no_face not in NO_FACE:
            raise ConfigError(f"no_face must be one of {', '.join(NO_FACE)}, got '{self.no_face}'")


class FR(Metric):
    """Cosine similarity between the largest face of each edited image and that of its source photo
    (paired by name).

    FaceLock protects a photo so that an edit of it no longer shows the person: FR drops. Every
    edit counts: one whose face is gone is scored by ``no_face`` (default: its whole image embedded)
    and counted in ``details["no_face"]``. A source photo without a face gives NaN (no identity to
    keep; counted in ``details["no_source_face"]``). The backend is named.

    Shape:
        images (edits) and references (their source photos): N pairs of equal sizes -> N values in [-1, 1].

    Examples:
        >>> FR().compute(edits, references=photos).value
        0.93
    """

    name: ClassVar[str] = "fr"
    measures: ClassVar[str] = "identity similarity of each edit to its source photo"
    Config: ClassVar[type[FRConfig]] = FRConfig
    pairing: ClassVar[str] = "paired"
    edit_reference: ClassVar[str] = "source"  # FaceLock's evaluation compares the edit with --src_dir
    higher_is_better: ClassVar[bool] = True
    protected_if: ClassVar[str] = "lower"

    def _compute(self, images: list[Tensor], references: list[Tensor] | None, prompts) -> MetricScores:
        import torch

        backend = make_backend(self, embed=True)
        edited, sources = backend.embed_largest(images), backend.embed_largest(references)
        edited_found = list(edited)
        faceless = [i for i, (a, b) in enumerate(zip(edited, sources)) if a is None and b is not None]
        if faceless and self.config.no_face == "whole":
            for index, embedding in zip(faceless, backend.embed_whole([images[i] for i in faceless])):
                edited[index] = embedding
        scores = []
        for a, b in zip(edited, sources):
            if b is None or (a is None and self.config.no_face == "skip"):
                scores.append(float("nan"))
            elif a is None:
                scores.append(0.0)
            else:
                scores.append(float(torch.nn.functional.cosine_similarity(a, b, dim=0)))
        details = {
            "backend": backend.name,
            "no_face": sum(a is None for a in edited_found),
            "no_face_scored_as": self.config.no_face,
            "no_source_face": sum(b is None for b in sources),
        }
        return MetricScores(per_image=scores, details=details)
