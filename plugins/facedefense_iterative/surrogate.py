"""What the Anti-DreamBooth family shares: photos of any sizes as one optimizable batch, the
DreamBooth surrogate (full or LoRA fine-tuning with prior preservation), cached class images, and
the denoising objective with its targeted variant.

Nothing here is a method; ``aspl``, ``fsmg`` and ``advdm`` are thin files on top of it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.errors import ConfigError, ImageError
from facedefense.imaging import resize, to_vae_range, working_size
from facedefense.runtime import fused_adam, module_dtype

if TYPE_CHECKING:
    import torch
    from torch import Tensor


# ----------------------------------------------------------------------------------------------
# Photos of any sizes


@dataclass
class PhotoBatch:
    """Images of any sizes packed into one zero-padded batch the optimizer can move as one tensor.

    Each image keeps its own size; the model sees it resized so that its short side is
    ``resolution`` (aspect kept, a multiple of 8), the perturbation lives at the original size and is
    optimized through the (differentiable) resize, and images whose working sizes agree share one
    forward pass. Padding receives no gradient and is cut away by ``unpack``.

    Attributes:
        padded: (N, 3, Hmax, Wmax) float32 in [0, 1].
        sizes: original (H, W) per image.
        work_sizes: working (h, w) per image.
    """

    padded: Tensor
    sizes: list[tuple[int, int]]
    work_sizes: list[tuple[int, int]]
    groups: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    @classmethod
    def pack(cls, images: Sequence[Tensor], resolution: int | None, *, device: Any = None) -> PhotoBatch:
        import torch

        if not images:
            raise ImageError("no images to protect")
        sizes = [(int(i.shape[-2]), int(i.shape[-1])) for i in images]
        height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
        padded = torch.zeros(len(images), 3, height, width, device=device or images[0].device)
        for index, (image, (h, w)) in enumerate(zip(images, sizes)):
            padded[index, :, :h, :w] = image.reshape(3, h, w)
        work = [working_size(h, w, resolution) for h, w in sizes]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(work):
            groups.setdefault(size, []).append(index)
        return cls(padded, sizes, work, groups)

    def unpack(self, padded: Tensor) -> list[Tensor]:
        return [padded[i, :, :h, :w] for i, (h, w) in enumerate(self.sizes)]

    def working(self, padded: Tensor) -> list[tuple[list[int], Tensor]]:
        """``(indices, batch)`` per working size: the images the model sees (differentiable)."""
        import torch

        out = []
        for size, indices in self.groups.items():
            crops = [resize(padded[i : i + 1, :, : self.sizes[i][0], : self.sizes[i][1]], size) for i in indices]
            out.append((indices, torch.cat(crops)))
        return out

    def square(self, padded: Tensor, resolution: int) -> Tensor:
        """DreamBooth's training view: short side to ``resolution``, centre crop, (N, 3, r, r)."""
        import torch

        return torch.cat([square_crop(padded[i : i + 1, :, :h, :w], resolution) for i, (h, w) in enumerate(self.sizes)])


def square_crop(image: Tensor, resolution: int) -> Tensor:
    """Resize the short side to ``resolution`` and centre-crop a square, as DreamBooth's loader does."""
    h, w = image.shape[-2:]
    scale = resolution / min(h, w)
    size = (max(resolution, round(h * scale)), max(resolution, round(w * scale)))
    resized = resize(image, size)
    top, left = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return resized[..., top : top + resolution, left : left + resolution]


# ----------------------------------------------------------------------------------------------
# Class images for prior preservation


def cache_root() -> Path:
    """facedefense's cache folder: ``$FACEDEFENSE_CACHE``, else ``~/.cache/facedefense``
    (``facedefense.io.cache_dir``)."""
    from facedefense.io import cache_dir

    return cache_dir()


def class_image_files(folder: str | Path) -> list[Path]:
    """The images of a user's class-image folder (not recursive), sorted.

    Raises:
        ConfigError: ``folder`` is not a folder, or holds no images.
    """
    from facedefense.io import collect_images

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ConfigError(f"class image folder {folder} is not a folder")
    try:
        return collect_images([path])
    except ImageError:
        raise ConfigError(f"class image folder {folder} holds no images") from None


def class_images(
    model: str,
    prompt: str,
    count: int,
    *,
    resolution: int,
    steps: int,
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    folder: str | Path | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Prior-preservation images of ``prompt`` drawn from the base model once, then cached.

    Generating them shows a bar over the denoising steps (``progress``: None follows the library's
    setting, `facedefense.progress`), so 200 images at 50 steps never look like a hang.

    The cache key is the model, prompt, count, resolution, sampling steps and seed; the images are
    PNG files under ``cache_root()/class_images/<key>/`` written atomically (a folder renamed into
    place), so concurrent runs never see half a set. A user ``folder`` of images replaces generation.

    Returns:
        (count, 3, resolution, resolution) float32 in [0, 1] on the CPU.
    """
    import torch

    from facedefense.io import load_image

    if folder is not None:
        paths = class_image_files(folder)
        return torch.cat([square_crop(load_image(p).pixels, resolution) for p in paths[:count]]).clamp(0, 1)
    key_text = json.dumps([str(model), prompt, count, resolution, steps, seed])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    target = cache_root() / "class_images" / key
    if (target / "done.json").is_file():
        paths = sorted(target.glob("*.png"))
        return torch.cat([load_image(p).pixels for p in paths])
    images = _generate(model, prompt, count, resolution=resolution, steps=steps, seed=seed, device=device,
                       dtype=dtype, progress=progress)
    _store(images, target, key_text)
    return images


def _generate(model: str, prompt: str, count: int, *, resolution: int, steps: int, seed: int, device: Any,
              dtype: Any, progress: bool | None) -> Tensor:
    import torch

    from facedefense.diffusion import load_pipeline
    from facedefense.progress import bar as progress_bar
    from facedefense.progress import denoising_callback, progress_enabled_as, status

    with progress_enabled_as(progress):
        status(f"class images: generating {count} of '{prompt}' with {model} ({steps} steps each; cached for later runs)")
        pipeline = load_pipeline(model, "text2img", device=device, dtype=dtype)
        pipeline.scheduler.set_timesteps(steps)
        per_call = len(pipeline.scheduler.timesteps)  # a few schedulers take one step more than asked
        bar = progress_bar(total=-(-count // 4) * per_call, desc=f"class images 0/{count}", unit="step")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batches = []
    with bar:
        for start in range(0, count, 4):
            number = min(4, count - start)
            latents = torch.randn(number, pipeline.unet.config.in_channels, resolution // pipeline.vae_scale_factor,
                                  resolution // pipeline.vae_scale_factor, generator=generator)
            out = pipeline([prompt] * number, height=resolution, width=resolution, num_inference_steps=steps,
                           latents=latents.to(device, dtype), output_type="pt",
                           callback_on_step_end=denoising_callback(bar)).images
            batches.append(out.float().cpu().clamp(0, 1))
            bar.set_description(f"class images {start + number}/{count}")
    del pipeline
    return torch.round(torch.cat(batches) * 255) / 255


def _store(images: Tensor, target: Path, key_text: str) -> None:
    import shutil

    from facedefense.io import save_image

    staging = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for index, image in enumerate(images):
            save_image(image, staging / f"{index:04d}.png")
        (staging / "done.json").write_text(key_text, encoding="utf-8")
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except OSError:  # a read-only cache or a concurrent writer: the images in memory are as good
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# The DreamBooth surrogate


class Surrogate:
    """A Stable Diffusion model fine-tuned DreamBooth-style: UNet and text encoder (or LoRA adapters).

    The VAE stays frozen. Training is the DreamBooth loss with prior preservation
    (``L_inst + w * L_prior`` on ``batch_size`` instance and class images per step, AdamW, gradient
    clipping at 1.0), as in Anti-DreamBooth's ``train_one_epoch``; the optimizer is recreated per
    call as there. ``snapshot`` / ``restore`` copy only the trainable tensors, which is how
    ASPL's ``f' = copy(f)`` costs one memory copy instead of a deep copy of the networks.

    Precision: the trainable weights (the UNet and the trained text encoder, or the LoRA adapters)
    and so AdamW's state are float32 whatever ``dtype``; the forward passes run under autocast in
    ``dtype`` (float16 with a gradient scaler), as diffusers' ``train_dreambooth.py`` trains. The
    frozen parts (the VAE, an untrained text encoder, the base weights under LoRA) are stored in
    ``dtype``. In bfloat16 weights an AdamW step of lr 5e-7 is below the weights' resolution, so
    the surrogate would hardly train.

    Args:
        model: diffusers folder or Hugging Face id.
        device: where the networks live.
        dtype: compute precision (autocast) and the precision of the frozen parts.
        train_text_encoder: fine-tune the text encoder too (the reference does).
        lora_rank: 0 for a full fine-tune, else LoRA adapters of this rank on the attention
            projections of the UNet (and of the text encoder when it is trained).
        gradient_checkpointing: trade compute for memory in the UNet.
    """

    LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
    TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")

    def __init__(
        self,
        model: str,
        *,
        device: torch.device,
        dtype: torch.dtype,
        train_text_encoder: bool = True,
        lora_rank: int = 0,
        gradient_checkpointing: bool = False,
    ) -> None:
        import torch

        from facedefense.diffusion import TextEmbeddingCache, load_components

        self.model = model
        self.device, self.dtype = device, dtype
        self.train_text_encoder = train_text_encoder
        self.lora_rank = lora_rank
        trained = () if lora_rank > 0 else ("unet", "text_encoder") if train_text_encoder else ("unet",)
        frozen = [name for name in ("vae", "unet", "text_encoder", "tokenizer", "scheduler") if name not in trained]
        self.parts = load_components(model, components=frozen, device=device, dtype=dtype)
        if trained:
            master = load_components(model, components=trained, device=device, dtype=torch.float32)
            for name in trained:
                setattr(self.parts, name, getattr(master, name).requires_grad_(True))
        self.unet, self.text_encoder, self.vae = self.parts.unet, self.parts.text_encoder, self.parts.vae
        self.scheduler, self.tokenizer = self.parts.scheduler, self.parts.tokenizer
        if lora_rank > 0:
            self._add_lora()
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.trainable = {
            **{f"unet.{k}": p for k, p in self.unet.named_parameters() if p.requires_grad},
            **{f"text_encoder.{k}": p for k, p in self.text_encoder.named_parameters() if p.requires_grad},
        }
        self._frozen_text = TextEmbeddingCache(self.tokenizer, self.text_encoder) if not self.text_trained else None
        #: The frozen VAE's posterior (mean, std) per training image, keyed by its pixels: class
        #: images and clean photos recur every round (see ``latent_samples``).
        self._posteriors: OrderedDict[str, tuple[Tensor, Tensor]] = OrderedDict()

    #: Posteriors kept (least recently used dropped): 128 KiB each at 512x512.
    POSTERIOR_CACHE = 256

    def latent_samples(self, pixels: Tensor, generator: torch.Generator) -> Tensor:
        """Scaled latents drawn from the VAE posterior of each image, as ``encode_latents(...,
        sample=True)`` draws them (one normal sample of the batch's shape from ``generator``), with
        each image's posterior encoded once (alone, so a cached and a fresh one are identical) and
        kept: the class images and the clean photos are encoded once per run instead of at every
        surrogate step (a third of a surrogate step's time at 512x512 on the tiny model)."""
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        means, stds = [], []
        for image in pixels:
            key = hashlib.blake2b(image.detach().float().cpu().numpy().tobytes(), digest_size=16).hexdigest()
            if key not in self._posteriors:
                with torch.no_grad():
                    posterior = self.vae.encode(to_vae_range(image[None]).to(module_dtype(self.vae))).latent_dist
                self._posteriors[key] = (posterior.mean, posterior.std)
                if len(self._posteriors) > self.POSTERIOR_CACHE:
                    self._posteriors.popitem(last=False)
            self._posteriors.move_to_end(key)
            means.append(self._posteriors[key][0])
            stds.append(self._posteriors[key][1])
        mean, std = torch.cat(means), torch.cat(stds)
        noise = randn_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return ((mean + std * noise) * self.vae.config.scaling_factor).float()

    @property
    def text_trained(self) -> bool:
        return self.train_text_encoder

    def _add_lora(self) -> None:
        try:
            from peft import LoraConfig
        except ImportError as exc:
            from facedefense.errors import MissingDependencyError

            raise MissingDependencyError("the LoRA surrogate needs peft: pip install 'facedefense[iterative]'") from exc
        self.unet.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        rank = self.lora_rank
        self.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                         target_modules=list(self.LORA_TARGETS)))
        if self.train_text_encoder:
            from peft import get_peft_model

            config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=list(self.TEXT_LORA_TARGETS))
            self.text_encoder = get_peft_model(self.text_encoder, config)
        for module in (self.unet, self.text_encoder):
            for name, parameter in module.named_parameters():
                parameter.requires_grad_("lora_" in name)
                if "lora_" in name:
                    parameter.data = parameter.data.float()  # peft creates them in the base layer's dtype

    # -- weights ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Tensor]:
        """A copy of the trainable tensors (on their device)."""
        return {name: p.detach().clone() for name, p in self.trainable.items()}

    def restore(self, snapshot: dict[str, Tensor]) -> None:
        import torch

        with torch.no_grad():
            for name, p in self.trainable.items():
                p.copy_(snapshot[name])

    def state_dict(self) -> dict[str, Tensor]:
        """The trainable tensors on the CPU (what a checkpoint needs to continue a run)."""
        return {name: p.detach().cpu().clone() for name, p in self.trainable.items()}

    # -- conditioning ------------------------------------------------------------------------

    def embed(self, prompts: Sequence[str], *, grad: bool) -> Tensor:
        """Text embeddings (N, L, D); with gradients to the text encoder when it is being trained."""
        import torch

        if self._frozen_text is not None:
            return self._frozen_text(list(prompts))
        tokens = self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(self.device)
        with torch.set_grad_enabled(grad):
            return self.text_encoder(tokens)[0]

    # -- training ----------------------------------------------------------------------------

    def train(
        self,
        instances: Tensor,
        *,
        instance_prompt: str,
        steps: int,
        learning_rate: float,
        generator: torch.Generator,
        class_images: Tensor | None = None,
        class_prompt: str = "",
        prior_loss_weight: float = 1.0,
        batch_size: int = 1,
        on_step: Callable[[float], None] | None = None,
    ) -> list[float]:
        """``steps`` DreamBooth steps on randomly drawn instance (and class) images.

        Args:
            instances: (N, 3, r, r) in [0, 1], the training view (``square_crop``).
            class_images: (M, 3, r, r) for prior preservation, or None.
            batch_size: instance images per step (and as many class images). Default 1.
            on_step: called with each step's loss (a progress bar advances with it).

        Returns:
            The loss of every step: the mean instance loss plus ``prior_loss_weight`` times the mean
            prior loss, as diffusers' DreamBooth computes it.
        """
        import torch

        params = list(self.trainable.values())
        optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8,
                                      fused=fused_adam(params))
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        use_prior = class_images is not None and len(class_images) > 0 and prior_loss_weight > 0
        prompts = [instance_prompt] * batch_size + ([class_prompt] * batch_size if use_prior else [])
        self.unet.train()
        if self.text_trained:
            self.text_encoder.train()
        losses = []
        try:
            for _ in range(steps):
                picks = torch.randint(len(instances), (batch_size,), generator=generator, device=generator.device)
                batch = [instances[picks.to(instances.device)]]
                if use_prior:
                    others = torch.randint(len(class_images), (batch_size,), generator=generator, device=generator.device)
                    batch.append(class_images[others.to(class_images.device)].to(instances.device))
                latents = self.latent_samples(torch.cat(batch).to(self.device), generator)
                with self.autocast():
                    states = self.embed(prompts, grad=self.text_trained)
                    per_image = self.denoising(latents, states, generator=generator)
                loss = per_image[:batch_size].mean()
                if use_prior:
                    loss = loss + prior_loss_weight * per_image[batch_size:].mean()
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
                if on_step is not None:
                    on_step(losses[-1])
        finally:
            optimizer.zero_grad(set_to_none=True)
            self.unet.eval()
            self.text_encoder.eval()
        return losses

    # -- the objective ------------------------------------------------------------------------

    def frozen(self) -> Any:
        """Trainable tensors stop requiring gradients inside the block (PGD differentiates the images only)."""
        import contextlib

        @contextlib.contextmanager
        def block() -> Any:
            for p in self.trainable.values():
                p.requires_grad_(False)
            try:
                yield
            finally:
                for p in self.trainable.values():
                    p.requires_grad_(True)

        return block()

    def target_latents(self, target: Tensor | None, photos: PhotoBatch) -> dict:
        """Scaled latents (posterior means) of the target image at each working size of ``photos``."""
        import torch

        from facedefense.diffusion import encode_latents

        if target is None:
            return {}
        with torch.no_grad():
            return {
                size: encode_latents(self.vae, resize(target.to(self.device), size)).float()
                for size in photos.groups
            }

    def photo_loss(
        self,
        photos: PhotoBatch,
        padded: Tensor,
        states: Tensor,
        *,
        generator: torch.Generator,
        targets: dict | None = None,
    ) -> Tensor:
        """Per-image denoising loss (N,) of the photos in ``padded`` (any sizes), VAE posterior sampled."""
        import torch

        from facedefense.diffusion import encode_latents

        values, order = [], []
        for indices, batch in photos.working(padded):
            latents = encode_latents(self.vae, batch, sample=True, generator=generator).float()
            target = (targets or {}).get(tuple(batch.shape[-2:]))
            with self.autocast():
                values.append(self.denoising(latents, states, generator=generator, target_latents=target))
            order.extend(indices)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return torch.cat(values)[inverse.to(values[0].device)]


    def autocast(self) -> Any:
        """Autocast to the compute dtype (the float32 trainable weights run in ``dtype``); a no-op in float32."""
        import contextlib

        import torch

        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def denoising(
        self,
        latents: Tensor,
        states: Tensor,
        *,
        generator: torch.Generator,
        target_latents: Tensor | None = None,
        timesteps: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """Per-image denoising loss ``|| target - eps_theta(z_t, t, c) ||^2`` at a random t.

        With ``target_latents`` (targeted ASPL) the value is ``L_LDM - || x_{t-1}(pred) - q(z_target, t-1) ||^2``:
        the DDPM posterior mean of the prediction is pulled toward the target latent noised with the
        same eps at t-1 (the reference's target-shift loss). ``timesteps`` (N,) and ``noise`` (like
        ``latents``), when given, replace the draws from ``generator`` (SimAC's chosen timesteps,
        a second pass with the same draws).
        """
        import torch

        from facedefense.diffusion import sample_timesteps

        scheduler = self.scheduler
        kind = scheduler.config.prediction_type
        count = latents.shape[0]
        if timesteps is None:
            timesteps = sample_timesteps(scheduler, count, generator=generator, device=latents.device)
        if noise is None:
            noise = torch.randn(latents.shape, generator=generator, device=generator.device)
        noise = noise.to(latents.device, latents.dtype)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if states.shape[0] == 1 and count > 1:
            states = states.expand(count, -1, -1)
        dtype = module_dtype(self.unet)
        prediction = self.unet(noisy.to(dtype), timesteps, states.to(dtype)).sample.float()
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            raise ConfigError(f"unsupported prediction_type '{kind}' for the DreamBooth surrogate")
        loss = (prediction - target.float()).pow(2).flatten(1).mean(1)
        if target_latents is None:
            return loss
        previous = _posterior_mean(scheduler, noisy.float(), prediction, timesteps, kind)
        before = (timesteps - 1).clamp_min(0)
        shifted = scheduler.add_noise(target_latents.float().expand_as(latents), noise.float(), before)
        return loss - (previous - shifted).pow(2).flatten(1).mean(1)


def _posterior_mean(scheduler: Any, noisy: Tensor, prediction: Tensor, timesteps: Tensor, kind: str) -> Tensor:
    """DDPM ``x_{t-1}`` posterior mean given the model's prediction (no sampling noise)."""
    alphas = scheduler.alphas_cumprod.to(noisy.device, noisy.dtype)
    shape = (-1,) + (1,) * (noisy.ndim - 1)
    a_t = alphas[timesteps].view(shape)
    a_prev = _alpha_prev(alphas, timesteps).view(shape)
    if kind == "epsilon":
        x0 = (noisy - (1 - a_t).sqrt() * prediction) / a_t.sqrt()
    else:
        x0 = a_t.sqrt() * noisy - (1 - a_t).sqrt() * prediction
    beta_t = 1 - a_t / a_prev
    first = a_prev.sqrt() * beta_t / (1 - a_t)
    second = (1 - beta_t).sqrt() * (1 - a_prev) / (1 - a_t)
    return first * x0 + second * noisy


def _alpha_prev(alphas: Tensor, timesteps: Tensor) -> Tensor:
    """``alpha_bar_{t-1}``, with ``alpha_bar_{-1} = 1``."""
    import torch

    previous = (timesteps - 1).clamp_min(0)
    return torch.where(timesteps > 0, alphas[previous], torch.ones_like(alphas[previous]))


def file_digest(images: Sequence[Tensor]) -> str:
    """A short hash of image contents (checkpoint keys: a resumed run must see the same photos)."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(str(tuple(image.shape)).encode())
        digest.update((image.detach().float().cpu() * 255).round().to(dtype=_uint8()).numpy().tobytes())
    return digest.hexdigest()[:16]


def _uint8() -> Any:
    import torch

    return torch.uint8


def load_target_image(path: str) -> Tensor:
    """A target image (targeted ASPL), (1, 3, H, W) in [0, 1]; a one-line error when it is not one."""
    from facedefense.io import load_image

    try:
        return load_image(path).pixels
    except ImageError as exc:
        raise ConfigError(f"target_image: {exc}") from exc
