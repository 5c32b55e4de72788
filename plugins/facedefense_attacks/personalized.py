"""The personalized model every built-in personalizer returns: a diffusers text-to-image pipeline
(fine-tuned, or the base model with an adapter or a new token) that generates with a seed, saves in
the format diffusers loads, and loads back.

A subclass names its ``format`` and writes/attaches its weights (`_save_weights`,
`_attach`); generation, metadata and loading are shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from facedefense.errors import ConfigError, FaceDefenseError, ModelNotFoundError, OutputError
from facedefense.interfaces.personalizer import PersonalizedModel, read_metadata, write_metadata

if TYPE_CHECKING:
    import torch
    from torch import Tensor

class PipelinePersonalized(PersonalizedModel):
    """A personalized Stable Diffusion pipeline.

    Args:
        pipeline: the ``StableDiffusionPipeline`` carrying the personalization.
        info: metadata: ``personalizer``, ``base_model``, ``instance_prompt``, ``identifier``,
            ``resolution``, ``inference_steps``, ``guidance_scale`` (and anything else to record).

    Example:
        >>> model = LoRA(model="stable-diffusion-v1-5/stable-diffusion-v1-5").fit(photos)
        >>> images = model.generate(["a dslr portrait of sks person"], num_images=4, generator=g)
        >>> model.save("out/lora")                # pytorch_lora_weights.safetensors + metadata
        >>> again = LoRAModel.load("out/lora")
    """

    format: ClassVar[str] = "pipeline"

    def __init__(self, pipeline: Any, info: dict[str, Any]) -> None:
        self.pipeline = pipeline
        self.info = {**info, "format": self.format}

    @property
    def identifier(self) -> str:
        """The word that names the identity in prompts."""
        return str(self.info.get("identifier", "sks"))

    def generate(
        self,
        prompts: Sequence[str] | str,
        *,
        num_images: int = 1,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> Tensor:
        """Render ``num_images`` images per prompt at the training resolution.

        Args:
            prompts: one prompt or several.
            num_images: images per prompt.
            generator: randomness of the initial noise (a fresh seed-0 generator when None).
            steps: denoising steps (default: the personalizer's ``inference_steps``).
            guidance_scale: classifier-free guidance (default: the personalizer's).

        Returns:
            (len(prompts) * num_images, 3, R, R) float32 in [0, 1], prompt-major.
        """
        import torch

        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or num_images < 1:
            raise ConfigError("generate needs at least one prompt and num_images >= 1")
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        size = int(self.info.get("resolution", 512))
        guidance = float(guidance_scale if guidance_scale is not None else self.info.get("guidance_scale", 7.5))
        with torch.no_grad():
            images = self.pipeline(
                prompts,
                num_images_per_prompt=num_images,
                num_inference_steps=steps or int(self.info.get("inference_steps", 50)),
                guidance_scale=guidance,
                height=size,
                width=size,
                generator=generator,
                output_type="pt",
                **self._pipeline_inputs(len(prompts), guidance),
            ).images
        return images.float().cpu().clamp(0, 1)

    def save(self, directory: str | Path) -> Path:
        """Write the weights in their diffusers format and ``facedefense_personalized.json``.

        The weights are written in the pipeline's dtype: ``fit(output_dir=...)`` saves the float32
        training result before the pipeline is cast to the inference dtype for generation.

        Raises:
            OutputError: a file cannot be written (a full disk, a permission), naming the folder.
        """
        import os
        import time

        from safetensors import SafetensorError

        from facedefense.io import umask_mode

        directory = Path(directory)
        started = time.time_ns() - 2 * 10**9  # file systems with coarse time stamps
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._save_weights(directory)
            write_metadata(directory, **self.info)
            for path in directory.rglob("*"):  # safetensors writes 0600: the umask's mode, as every file
                if path.is_file() and not path.is_symlink() and path.stat().st_mtime_ns >= started:
                    os.chmod(path, umask_mode())
        except (OSError, SafetensorError) as exc:
            if isinstance(exc, OutputError):
                raise
            text = str(exc).strip()
            reason = getattr(exc, "strerror", None) or (text.splitlines()[0] if text else type(exc).__name__)
            raise OutputError(f"{directory}: the model cannot be written ({reason})") from exc
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "auto", dtype: str = "auto") -> PipelinePersonalized:
        """Rebuild the model saved in ``directory`` (the base model must be reachable for adapters)."""
        import pickle

        from safetensors import SafetensorError

        from facedefense.runtime import resolve_device, resolve_dtype

        directory = Path(directory)
        info = read_metadata(directory)
        torch_device = resolve_device(device)
        try:
            pipeline = cls._attach(directory, info, torch_device, resolve_dtype(dtype, torch_device, cpu_bf16=False))
        except FaceDefenseError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError, SafetensorError, pickle.UnpicklingError) as exc:
            text = str(exc).strip()
            reason = text.splitlines()[0][:200] if text else type(exc).__name__
            raise ModelNotFoundError(f"{directory}: the saved {cls.format} model cannot be read ({reason})") from exc
        from facedefense.progress import progress_enabled

        pipeline.set_progress_bar_config(disable=not progress_enabled(), leave=False)  # denoising steps
        return cls(pipeline, info)

    # -- hooks -------------------------------------------------------------------------------

    def _pipeline_inputs(self, prompts: int, guidance_scale: float) -> dict[str, Any]:
        """Extra arguments of the pipeline call for ``prompts`` prompts (none by default; a
        zero-shot model gives its reference embeddings)."""
        return {}

    def _save_weights(self, directory: Path) -> None:
        """Write the weights (the whole pipeline folder by default)."""
        self.pipeline.save_pretrained(directory, safe_serialization=True)

    @classmethod
    def _attach(cls, directory: Path, info: dict[str, Any], device: Any, dtype: Any) -> Any:
        """The pipeline of a saved model (the folder itself by default)."""
        from facedefense.diffusion import load_pipeline

        return load_pipeline(str(directory), "text2img", device=device, dtype=dtype)

    @staticmethod
    def _base_pipeline(info: dict[str, Any], device: Any, dtype: Any) -> Any:
        from facedefense.diffusion import load_pipeline

        return load_pipeline(str(info["base_model"]), "text2img", device=device, dtype=dtype)

