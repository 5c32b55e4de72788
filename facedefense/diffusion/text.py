"""Text embeddings computed once per prompt and reused (they never change during an attack)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from facedefense.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor


class TextEmbeddingCache:
    """Encode prompts with a CLIP text encoder, once per distinct prompt.

    Prompts are padded to ``tokenizer.model_max_length`` (77) and truncated, as the Stable
    Diffusion pipelines do; the embeddings are the encoder's last hidden state, computed without
    gradients and kept on the encoder's device and dtype.

    Args:
        tokenizer: the model's ``CLIPTokenizer``.
        text_encoder: the model's ``CLIPTextModel`` (frozen).

    Attributes:
        encoder_calls: how many times the encoder ran (one per distinct prompt).

    Examples:
        >>> cache = TextEmbeddingCache(parts.tokenizer, parts.text_encoder)
        >>> cache(["a photo of sks person"] * 4).shape   # (4, 77, 768) for SD 1.x
        >>> cache.uncond.shape                           # (1, 77, 768): the empty prompt
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
        )
        device = self.text_encoder.device
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        with torch.no_grad():
            self.encoder_calls += 1
            return self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]

    def __call__(self, prompts: str | Sequence[str]) -> Tensor:
        """Embeddings (N, L, D) for ``prompts`` (a string gives N = 1), in prompt order."""
        import torch

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ConfigError("TextEmbeddingCache needs at least one prompt")
        for prompt in dict.fromkeys(prompts):
            if prompt not in self._cache:
                self._cache[prompt] = self._encode(prompt)
        return torch.cat([self._cache[p] for p in prompts])

    @property
    def uncond(self) -> Tensor:
        """Embedding (1, L, D) of the empty prompt (classifier-free guidance's unconditional branch)."""
        return self("")

    def __len__(self) -> int:
        return len(self._cache)
