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
* ``instructions`` -> the editing instructions of every editor attack that names none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ADB_PROMPTS = ("a photo of sks person", "a dslr portrait of sks person")
#: FaceLock's 25 editing instructions (taco-group/FaceLock, ``utils.py`` ``edit_prompts``), as written.
FACELOCK_INSTRUCTIONS = (
    "Turn the person's hair pink", "Let the person turn bald", "Let the person have a tatto",
    "Let the person wear purple makeup", "Let the person grow a mustach", "Turn the person into a zombie",
    "Change the skin color to Avatar blue", "Add elf-like ears", "Add large vampire fangs", "Apply Goth style makeup",
    "Let the person wear a police suit", "Let the person wear a bowtie", "Let the person wear a helmet",
    "Let the person wear sunglasses", "Let the person wear earrings", "Let the person smoke a cigar",
    "Place a headband in the hair", "Place a tiara on the top of the head", "Let it be snowy",
    "Change the background to a beach", "Add a city skyline background", "Add a forest background",
    "Change the background to a desert", "Set the background in a library", "Let the person stand under the moon",
)


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
        instructions: the editing instructions of editor attacks that name none (empty: each editor
            attack must name its own).
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
    instructions: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["prompts"] = list(self.prompts)
        values["instructions"] = list(self.instructions)
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
    "instructions": (),
}

#: The profiles: Anti-DreamBooth (ICCV'23; scripts/train_dreambooth_alone.sh, infer.py, evaluations/),
#: MetaCloak (CVPR'24; eps r=11 on 0-255, ISM with VGG-Face), GAP-Diff (NDSS'25; scripts/db_infer.sh,
#: 4 prompts x 30 images, set_C as ISM reference), FaceLock (CVPR'25; defend.py's 0.03 in [-1, 1], the
#: 25 instructions of utils.py, evaluation/ with LPIPS-VGG) and facedefense's own (8/255, offline dlib faces).
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
    "facelock": {
        **_COMMON,
        "eps": 0.03 / 2,  # 0.03 in [-1, 1]: 3.8/255
        "prompts": ADB_PROMPTS,  # personalizers are not part of FaceLock's protocol
        "num_images": 16,
        "face_backend": "dlib",  # FaceLock's FR model (CVLFace AdaFace) is gated on the Hub: the offline one
        "reference_set": "set_B",  # FR, CLIP-S and CLIP-I compare each edit with its own source photo
        "lpips_net": "vgg",
        "instructions": FACELOCK_INSTRUCTIONS,
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
    values["instructions"] = tuple(values["instructions"])
    return Protocol(profile=profile, **values)
