"""Identity sets: one person's photos to protect, with that person's clean references and prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from facedefense.errors import ImageError

if TYPE_CHECKING:
    from torch import Tensor

DEFAULT_INSTANCE_PROMPT = "a photo of sks person"
DEFAULT_CLASS_PROMPT = "a photo of person"


@dataclass
class IdentitySet:
    """The typed input of identity-scoped defenders (ASPL, FSMG, MetaCloak, ...).

    Attributes:
        images: the photos to protect, each (3, H, W) float32 in [0, 1]; sizes may differ.
        names: one label per photo (its file name in the CLI).
        references: clean photos of the same person (any sizes and count) that a surrogate may learn
            from; empty when none were given, and then
            [`clean`][facedefense.interfaces.identity.IdentitySet.clean] is the photos themselves.
        name: the identity's name (its folder name in the CLI).
        instance_prompt: the prompt an attacker binds the identity to.
        class_prompt: the prompt of the class (prior preservation).

    Examples:
        >>> identity = IdentitySet.from_images(set_b_batch, references=set_a_list, name="n000050")
        >>> result = aspl.protect_identity(identity)
    """

    images: list[Tensor]
    names: list[str]
    references: list[Tensor] = field(default_factory=list)
    name: str = "identity"
    instance_prompt: str = DEFAULT_INSTANCE_PROMPT
    class_prompt: str = DEFAULT_CLASS_PROMPT

    def __post_init__(self) -> None:
        from facedefense.imaging import as_image_list

        self.images = as_image_list(self.images, "identity images")
        self.references = as_image_list(self.references, "references") if len(self.references) else []
        if len(self.names) != len(self.images):
            raise ImageError(f"identity '{self.name}': {len(self.images)} image(s) but {len(self.names)} name(s)")

    @classmethod
    def from_images(
        cls,
        images: Tensor | Sequence[Tensor],
        names: Sequence[str] | None = None,
        references: Tensor | Sequence[Tensor] | None = None,
        **options: str,
    ) -> IdentitySet:
        """Build from a batch or a list (names default to ``image_0``, ``image_1``, ...)."""
        from facedefense.imaging import as_image_list

        listed = as_image_list(images)
        labels = list(names) if names is not None else [f"image_{i}" for i in range(len(listed))]
        refs = as_image_list(references, "references") if references is not None and len(references) else []
        return cls(listed, labels, refs, **options)

    @property
    def clean(self) -> list[Tensor]:
        """The clean photos a surrogate learns from: the references, or the photos when there are none."""
        return self.references or self.images

    def __len__(self) -> int:
        return len(self.images)
