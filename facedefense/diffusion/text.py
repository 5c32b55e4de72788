"""Text embeddings computed once per prompt and reused (they never change during an attack)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


class TextEmbeddingCache:
    """Encode prompts with a CLIP text encoder, caching each distinct prompt.

    Args:
        tokenizer: the model's ``CLIPTokenizer``.
        text_encoder: the model's ``CLIPTextModel`` (frozen).

    Example:
        >>> cache = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)
        >>> cache(["a photo of sks person"] * 4).shape   # (4, 77, 768) for SD 1.x
    """

    def __init__(self, tokenizer: Any, text_encoder: Any) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self._cache: dict[str, Tensor] = {}
        self.encoder_calls = 0

    def _encode(self, prompt: str) -> Tensor:
        import torch

        tokens = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        with torch.no_grad():
            self.encoder_calls += 1
            return self.text_encoder(tokens)[0]

    def __call__(self, prompts: str | Sequence[str]) -> Tensor:
        """Embeddings (N, L, D) for ``prompts`` (a string gives N = 1)."""
        import torch

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._cache:
                self._cache[prompt] = self._encode(prompt)
        return torch.cat([self._cache[p] for p in prompts])
