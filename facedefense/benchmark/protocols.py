"""Protocol profiles: the evaluation settings each paper fixes, so numbers compare like with like.

Published numbers disagree partly because each paper fixes its protocol differently: the budget
(Anti-DreamBooth's 0.05 in [-1, 1] is 6.4/255 in [0, 1]; MetaCloak 11/255; GAP-Diff 16/255), the
DreamBooth length, the prompts, the number of generated images and the face model behind ISM. A
benchmark config names a profile and may override any field; every result row records the full
protocol it was computed under.

How a field reaches the methods (only where the method's config has that option and the config
file did not set it for that entry):

* ``eps`` -> every defender's ``eps``; ``resolution`` -> defenders' and personalizers' ``resolution``.
* ``instance_prompt``, ``class_prompt``, ``num_class_images`` -> personalizers (and the identity set).
* ``dreambooth_steps`` -> the ``steps`` of the personalizer named ``dreambooth`` (LoRA and TI keep
  their own protocol lengths).
* ``prompts``, ``num_images``, ``inference_steps``, ``guidance_scale`` -> generation after personalization.
* ``face_backend`` -> the ``backend`` of metrics tagged ``face`` (ISM, FDFR, ...).
* ``lpips_net`` -> the ``net`` of the ``lpips`` metric (``alex``, or ``vgg`` as FaceLock's evaluation).
* ``reference_set`` -> the clean set that set-level metrics (ISM, FID) compare with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ADB_PROMPTS = ("a photo of sks person", "a dslr portrait of sks person")


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol (see the module docstring for where each field goes).

    Attributes:
        profile: the profile it started from.
        eps: L-inf budget in [0, 1] units.
        resolution: working resolution of defenders and personalizers (pixels).
        dreambooth_steps: training steps of full DreamBooth.
        num_class_images: prior-preservation images.
        instance_prompt: the prompt that binds the identity.
        class_prompt: the class prompt.
        prompts: the evaluation prompts (one column group each in the report).
        num_images: images generated per prompt.
        inference_steps: sampling steps of generation.
        guidance_scale: classifier-free guidance of generation.
        face_backend: the face model of ISM / FDFR.
        lpips_net: the backbone of the LPIPS metric. None of the four profiles' reference code
            computes LPIPS: ``alex`` is the ``lpips`` package's default (Diff-Protect's and
            DiffAdvPerturbationBench's evaluations); FaceLock's ``eval_lpips.py`` uses ``vgg``.
        reference_set: the clean set (``set_A``, ``set_B`` or ``set_C``) set-level metrics compare with.
    """

    profile: str
    eps: float
    resolution: int
    dreambooth_steps: int
    num_class_images: int
    instance_prompt: str
    class_prompt: str
    prompts: tuple[str, ...]
    num_images: int
    inference_steps: int
    guidance_scale: float
    face_backend: str
    reference_set: str
    lpips_net: str

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["prompts"] = list(self.prompts)
        return values


_COMMON: dict[str, Any] = {
    "resolution": 512,
    "dreambooth_steps": 1000,
    "num_class_images": 200,
    "instance_prompt": "a photo of sks person",
    "class_prompt": "a photo of person",
    "inference_steps": 100,
    "guidance_scale": 7.5,
    "lpips_net": "alex",
}

#: The profiles: Anti-DreamBooth (ICCV'23; scripts/train_dreambooth_alone.sh, infer.py, evaluations/),
#: MetaCloak (CVPR'24; eps r=11 on 0-255, ISM with VGG-Face), GAP-Diff (NDSS'25; scripts/db_infer.sh,
#: 4 prompts x 30 images, set_C as ISM reference), and facedefense's own (8/255, offline dlib faces).
PROFILES: dict[str, dict[str, Any]] = {
    "anti_dreambooth": {
        **_COMMON,
        "eps": 0.05 / 2,  # 0.05 in [-1, 1]
        "prompts": ADB_PROMPTS,
        "num_images": 16,
        "face_backend": "arcface",
        "reference_set": "set_C",
    },
    "metacloak": {
        **_COMMON,
        "eps": 11 / 255,
        "prompts": ADB_PROMPTS,
        "num_images": 16,
        "face_backend": "vgg_face",
        "reference_set": "set_C",
    },
    "gap_diff": {
        **_COMMON,
        "eps": 16 / 255,
        "prompts": (*ADB_PROMPTS, "a photo of sks person looking at the mirror", "a photo of sks person in front of eiffel tower"),
        "num_images": 30,
        "face_backend": "arcface",
        "reference_set": "set_C",
    },
    "facedefense": {
        **_COMMON,
        "eps": 8 / 255,
        "prompts": ADB_PROMPTS,
        "num_images": 16,
        "inference_steps": 50,
        "face_backend": "dlib",
        "reference_set": "set_C",
    },
}

FIELDS = tuple(field.name for field in dataclasses.fields(Protocol) if field.name != "profile")
REFERENCE_SETS = ("set_A", "set_B", "set_C")


def make_protocol(profile: str, overrides: dict[str, Any]) -> Protocol:
    """The profile's values with ``overrides`` (already checked field names and types) applied."""
    values = {**PROFILES[profile], **overrides}
    values["prompts"] = tuple(values["prompts"])
    return Protocol(profile=profile, **values)
