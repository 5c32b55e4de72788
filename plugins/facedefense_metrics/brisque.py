"""BRISQUE: Mittal, Moorthy and Bovik, "No-Reference Image Quality Assessment in the Spatial
Domain", IEEE TIP 2012; scored by the ``brisque`` package (its libsvm model ships in the wheel),
as the Anti-DreamBooth evaluation does."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

from facedefense.errors import MissingDependencyError
from facedefense.interfaces.metric import Metric

if TYPE_CHECKING:
    from torch import Tensor


#: Scores are rounded to this many decimals: the package's floating-point path (OpenCV threads,
#: denormal handling) moves them by about 1e-11 from run to run.
DIGITS = 6


@lru_cache(maxsize=1)
def _scorer():
    import numpy as np

    try:
        from brisque import BRISQUE as Reference
    except ImportError as error:
        raise MissingDependencyError("the brisque metric needs the brisque package: pip install brisque") from error

    class Scorer(Reference):
        """The package's scorer, with its feature scaling made to work on numpy >= 2 (features are
        one-element arrays there, which numpy 2 no longer turns into scalars)."""

        def scale_features(self, features):
            values = np.array([np.asarray(v, dtype=np.float64).ravel()[0] for v in features])
            low = np.asarray(self.scale_params["min_"], dtype=np.float64)
            high = np.asarray(self.scale_params["max_"], dtype=np.float64)
            return -1 + 2.0 / (high - low) * (values - low)

    return Scorer(url=False)


class BRISQUE(Metric):
    """No-reference quality from natural-scene statistics: about 0 (pristine) to 100 (heavily
    distorted); **lower is better quality**. Protections that wreck what an attacker generates
    raise it.

    Shape:
        images: any number, any sizes, (3, H, W) in [0, 1] -> one score each (8-bit RGB is scored).

    Examples:
        >>> BRISQUE().compute(generated).value
        23.4

    Differences from the reference code: the package's own features, SVM and scaling; only the
    scaling step is rewritten (identical arithmetic) so it runs on numpy >= 2. Scores are rounded
    to 6 decimals and OpenCV runs single-threaded while scoring, so repeated runs agree exactly.
    CPU only, not differentiable.
    """

    name: ClassVar[str] = "brisque"
    higher_is_better: ClassVar[bool] = False
    protected_if: ClassVar[str] = "higher"

    def _compute(self, images: list[Tensor], references, prompts) -> list[float]:
        import cv2

        from facedefense_metrics.faces.base import to_uint8_hwc

        scorer = _scorer()
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # OpenCV's parallel resize changes the score in the 11th digit
        try:
            return [round(float(scorer.score(to_uint8_hwc(image))), DIGITS) for image in images]
        finally:
            cv2.setNumThreads(threads)
