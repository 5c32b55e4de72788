"""Face backends: detection, alignment and identity embeddings on real offline models.

One file per backend. ``dlib`` wraps dlib itself (detector, 5-point landmarks, 128-D embedding);
``dlib_torch`` is a torch port of dlib's embedding network that needs no dlib at run time (batched,
differentiable); ``mtcnn`` is facenet-pytorch's detector; ``retinaface`` and ``arcface`` (RetinaFace + ArcFace, the
papers' models) are facexlib's architectures with weights given by path; ``vgg_face`` is RetinaFace +
deepface's VGG-Face (MetaCloak's identity model), weights by path; ``insightface`` is RetinaFace +
insightface's released ONNX recognition models (glintr100, w600k_r50) in ONNX Runtime or as a torch IResNet. ``get_backend`` builds one by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from facedefense.errors import ConfigError

if TYPE_CHECKING:
    from facedefense_metrics.faces.base import FaceBackend

#: Backend name -> "module:class" (imported on first use).
BACKENDS = {
    "dlib": "facedefense_metrics.faces.dlib:DlibBackend",
    "dlib_torch": "facedefense_metrics.faces.dlib_torch:DlibTorchBackend",
    "mtcnn": "facedefense_metrics.faces.mtcnn:MTCNNBackend",
    "retinaface": "facedefense_metrics.faces.retinaface:RetinaFaceBackend",
    "arcface": "facedefense_metrics.faces.arcface:ArcFaceBackend",
    "vgg_face": "facedefense_metrics.faces.vgg_face:VGGFaceBackend",
    "insightface": "facedefense_metrics.faces.insightface:InsightFaceBackend",
}


def get_backend(name: str, **options) -> FaceBackend:
    """Build the face backend called ``name`` (see ``BACKENDS``); options it does not take are ignored."""
    import importlib
    import inspect

    if name not in BACKENDS:
        raise ConfigError(f"unknown face backend '{name}'; choose one of: {', '.join(BACKENDS)}")
    module, _, attribute = BACKENDS[name].partition(":")
    backend = getattr(importlib.import_module(module), attribute)
    accepted = inspect.signature(backend).parameters
    return backend(**{key: value for key, value in options.items() if key in accepted})
