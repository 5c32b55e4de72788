"""Tiny random-weight IP-Adapters for the tiny Stable Diffusion of `facedefense.testing.tiny_models`,
saved in the layout of the released weights (h94/IP-Adapter), so they load through diffusers' own
``pipe.load_ip_adapter`` exactly as the real ones do.

Layout written by `build_tiny_ip_adapter`::

    DIR/models/ip-adapter_tiny.safetensors   image_proj.* and ip_adapter.* keys
    DIR/models/image_encoder/                a CLIPVisionModelWithProjection (save_pretrained)

The ``ip_adapter`` keys are numbered as in h94's files and diffusers' loader: the i-th
cross-attention processor of the UNet (in ``unet.attn_processors`` order) has
``{2i+1}.to_k_ip.weight`` and ``{2i+1}.to_v_ip.weight``, each (hidden size, cross-attention dim).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: Subfolder and weight file of the tiny IP-Adapter (h94/IP-Adapter keeps SD 1.5's in ``models/``).
SUBFOLDER = "models"
WEIGHT_NAME = "ip-adapter_tiny.safetensors"
#: Weight file of the tiny IP-Adapter Plus (a resampler on the encoder's hidden states).
PLUS_WEIGHT_NAME = "ip-adapter-plus_tiny.safetensors"
#: Side of the tiny image encoder's input (the real ViT-H/14 takes 224).
IMAGE_SIZE = 32


def _cross_attention_sizes(unet: Any) -> list[int]:
    """The hidden size of each cross-attention processor of ``unet``, in ``attn_processors`` order."""
    channels = list(unet.config.block_out_channels)
    sizes = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            sizes.append(channels[-1])
        elif name.startswith("up_blocks"):
            sizes.append(list(reversed(channels))[int(name[len("up_blocks.")])])
        else:
            sizes.append(channels[int(name[len("down_blocks.")])])
    return sizes


def _image_encoder(seed: int, projection_dim: int) -> Any:
    """A 2-layer CLIP vision tower of width 32 with a ``projection_dim`` image projection."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=projection_dim,
    )
    return CLIPVisionModelWithProjection(config).eval()


def _original_resampler_keys(state: dict[str, Any]) -> dict[str, Any]:
    """A diffusers resampler state dict (``IPAdapterPlusImageProjection`` or the FaceID Plus
    projection) with its ``layers.*`` keys in the original Resampler's layout, which diffusers'
    loader converts back (``to_kv`` = ``to_k`` and ``to_v`` stacked, ``1.1``/``1.3`` the
    feed-forward layers); other keys are kept."""
    import torch

    renamed: dict[str, Any] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] != "layers":
            renamed[key] = value
            continue
        head, rest = f"layers.{parts[1]}", ".".join(parts[2:])
        if rest.startswith("attn.to_v."):
            continue
        if rest.startswith("attn.to_k."):
            value_key = key.replace("attn.to_k.", "attn.to_v.")
            renamed[f"{head}.0.to_kv.weight"] = torch.cat([value, state[value_key]])
            continue
        for new, old in (
            ("0.norm1.", "ln0."),
            ("0.norm2.", "ln1."),
            ("0.to_q.", "attn.to_q."),
            ("0.to_out.", "attn.to_out.0."),
            ("1.0.", "ff.0."),
            ("1.1.", "ff.1.net.0.proj."),
            ("1.3.", "ff.1.net.2."),
        ):
            if rest.startswith(old):
                renamed[f"{head}.{new}{rest[len(old) :]}"] = value
                break
    return renamed


def _plus_projection(embed_dims: int, output_dims: int, num_tokens: int) -> dict[str, Any]:
    """A random IP-Adapter Plus resampler (diffusers' ``IPAdapterPlusImageProjection``: 4 blocks,
    one 64-wide head, width 64) as its state dict in the original Resampler's key layout."""
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    module = IPAdapterPlusImageProjection(
        embed_dims=embed_dims,
        output_dims=output_dims,
        hidden_dims=64,
        depth=4,
        dim_head=64,
        heads=1,
        num_queries=num_tokens,
    )
    return _original_resampler_keys(module.state_dict())


def _faceid_plus_projection(clip_width: int, cross: int) -> dict[str, Any]:
    """A random FaceID Plus projection (diffusers' ``IPAdapterFaceIDPlusImageProjection`` with the
    sizes its loader infers: 4 blocks, 4 tokens, one 64-wide head, width ``cross`` so the v2
    shortcut adds up) in h94's layout: the face MLP ``proj.0``/``proj.2`` and ``norm`` at the top,
    the resampler under ``perceiver_resampler.``."""
    from diffusers.models.embeddings import IPAdapterFaceIDPlusImageProjection

    module = IPAdapterFaceIDPlusImageProjection(
        embed_dims=cross, output_dims=cross, hidden_dims=clip_width, id_embeddings_dim=FACE_EMBED_DIM, heads=1
    )
    state = _original_resampler_keys(module.state_dict())
    top = {"proj.net.0.proj.": "proj.0.", "proj.net.2.": "proj.2.", "norm.": "norm."}
    out = {}
    for key, value in state.items():
        prefix = next((p for p in top if key.startswith(p)), None)
        out[top[prefix] + key[len(prefix) :] if prefix else f"perceiver_resampler.{key}"] = value
    return out


def build_tiny_ip_adapter(
    directory: str | Path,
    sd_path: str | Path,
    *,
    seed: int = 0,
    num_tokens: int = 4,
    embed_dim: int = 16,
    weight_std: float = 0.5,
) -> Path:
    """Write a tiny IP-Adapter (plain: a linear image projection to ``num_tokens`` tokens, as
    ``WEIGHT_NAME``), a tiny IP-Adapter Plus (a resampler on the encoder's penultimate hidden
    states, as ``PLUS_WEIGHT_NAME``) and their CLIP image encoder for the Stable Diffusion folder
    ``sd_path``; return ``directory``.

    Args:
        directory: output folder (created).
        sd_path: the diffusers folder whose UNet the adapter fits (its processors and widths).
        seed: ``torch.manual_seed`` of the weights.
        num_tokens: image tokens the projection makes (4, as IP-Adapter's ``ImageProjModel``).
        embed_dim: the image encoder's projection width (1024 for ViT-H/14).
        weight_std: standard deviation of the random key/value projections: large enough that
            the image tokens visibly change what the tiny UNet predicts.

    Example:
        >>> adapter = build_tiny_ip_adapter("/tmp/tiny-ip", "/tmp/tiny-sd")
        >>> pipe.load_ip_adapter(str(adapter), subfolder="models", weight_name=WEIGHT_NAME)
    """
    from facedefense.testing.tiny_models import _isolated_rng, _prepare

    _prepare()  # before diffusers is imported
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(Path(sd_path) / "unet")
    cross = int(unet.config.cross_attention_dim)
    folder = Path(directory) / SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    with _isolated_rng():
        encoder = _image_encoder(seed, embed_dim)
        generator = torch.Generator().manual_seed(seed + 1)

        def draw(*shape: int, std: float) -> torch.Tensor:
            return (torch.randn(*shape, generator=generator, device=generator.device) * std).contiguous()

        weights = {
            "image_proj.proj.weight": draw(num_tokens * cross, embed_dim, std=embed_dim**-0.5),
            "image_proj.proj.bias": torch.zeros(num_tokens * cross),
            "image_proj.norm.weight": torch.ones(cross),
            "image_proj.norm.bias": torch.zeros(cross),
        }
        for index, hidden in enumerate(_cross_attention_sizes(unet)):
            for name in ("to_k_ip", "to_v_ip"):
                weights[f"ip_adapter.{2 * index + 1}.{name}.weight"] = draw(hidden, cross, std=weight_std)
        torch.manual_seed(seed + 3)
        plus = {
            f"image_proj.{key}": value.contiguous()
            for key, value in _plus_projection(int(encoder.config.hidden_size), cross, num_tokens).items()
        }
        plus.update({key: value for key, value in weights.items() if key.startswith("ip_adapter.")})
    save_file(weights, str(folder / WEIGHT_NAME))
    save_file(plus, str(folder / PLUS_WEIGHT_NAME))
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    return Path(directory)


#: Weight file of the tiny IP-Adapter-FaceID (h94/IP-Adapter-FaceID keeps its files at the root).
FACEID_WEIGHT_NAME = "ip-adapter-faceid_tiny.safetensors"
#: Weight file of the tiny IP-Adapter-FaceID Plus (v1 and v2 share the layout; v2 adds the shortcut).
FACEID_PLUS_WEIGHT_NAME = "ip-adapter-faceid-plus_tiny.safetensors"
#: Folder of the tiny FaceID Plus's CLIP image encoder beside its weights.
FACEID_ENCODER_FOLDER = "image_encoder"
#: Width of a face embedding (insightface's and ArcFace's 512).
FACE_EMBED_DIM = 512


def build_tiny_ip_adapter_faceid(
    directory: str | Path,
    sd_path: str | Path,
    *,
    seed: int = 0,
    num_tokens: int = 4,
    mult: int = 2,
    lora_rank: int = 4,
    weight_std: float = 0.5,
) -> Path:
    """Write a tiny IP-Adapter-FaceID (plain, SD 1.5 layout) for ``sd_path`` at
    ``DIR/FACEID_WEIGHT_NAME``, a tiny FaceID Plus at ``DIR/FACEID_PLUS_WEIGHT_NAME`` and the Plus
    variant's CLIP image encoder at ``DIR/FACEID_ENCODER_FOLDER``; return ``directory``.

    Its ``image_proj`` is the FaceID MLP of 512-D face embeddings (``proj.0``: 512 -> 512 *
    ``mult``, GELU, ``proj.2``: -> ``num_tokens`` x cross-attention dim, ``norm``); ``ip_adapter``
    holds the key/value projections of every cross-attention processor (odd indices, as
    `build_tiny_ip_adapter`) and, as the released weights do, rank-``lora_rank`` LoRA weights
    (``{i}.to_{q,k,v,out}_lora.{down,up}.weight``) for every attention processor ``i`` (0 turns
    them off). The Plus file has the same ``ip_adapter`` weights and a FaceID Plus projection
    (face MLP + resampler over the CLIP hidden states of the face crop, `_faceid_plus_projection`);
    plain FaceID takes no image encoder.
    """
    from facedefense.testing.tiny_models import _isolated_rng, _prepare

    _prepare()  # before diffusers is imported
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(Path(sd_path) / "unet")
    cross = int(unet.config.cross_attention_dim)
    hidden_sizes = dict(
        zip(
            [n for n in unet.attn_processors if not n.endswith("attn1.processor")],
            _cross_attention_sizes(unet),
        )
    )
    inner = FACE_EMBED_DIM * mult
    with _isolated_rng():
        generator = torch.Generator().manual_seed(seed + 2)

        def draw(*shape: int, std: float) -> torch.Tensor:
            return (torch.randn(*shape, generator=generator, device=generator.device) * std).contiguous()

        weights = {
            "image_proj.proj.0.weight": draw(inner, FACE_EMBED_DIM, std=FACE_EMBED_DIM**-0.5),
            "image_proj.proj.0.bias": torch.zeros(inner),
            "image_proj.proj.2.weight": draw(num_tokens * cross, inner, std=inner**-0.5),
            "image_proj.proj.2.bias": torch.zeros(num_tokens * cross),
            "image_proj.norm.weight": torch.ones(cross),
            "image_proj.norm.bias": torch.zeros(cross),
        }
        channels = list(unet.config.block_out_channels)
        for index, name in enumerate(unet.attn_processors):
            if name in hidden_sizes:
                for part in ("to_k_ip", "to_v_ip"):
                    weights[f"ip_adapter.{index}.{part}.weight"] = draw(
                        hidden_sizes[name], cross, std=weight_std
                    )
            if not lora_rank:
                continue
            if name.startswith("mid_block"):
                hidden = channels[-1]
            elif name.startswith("up_blocks"):
                hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
            else:
                hidden = channels[int(name[len("down_blocks.")])]
            source = hidden if name.endswith("attn1.processor") else cross
            for part, width in (("to_q", hidden), ("to_k", source), ("to_v", source), ("to_out", hidden)):
                weights[f"ip_adapter.{index}.{part}_lora.down.weight"] = draw(lora_rank, width, std=0.1)
                weights[f"ip_adapter.{index}.{part}_lora.up.weight"] = draw(hidden, lora_rank, std=0.1)
        encoder = _image_encoder(seed, 16)
        torch.manual_seed(seed + 4)
        plus = {
            f"image_proj.{key}": value.contiguous()
            for key, value in _faceid_plus_projection(int(encoder.config.hidden_size), cross).items()
        }
        plus.update({key: value for key, value in weights.items() if key.startswith("ip_adapter.")})
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / FACEID_WEIGHT_NAME))
    save_file(plus, str(folder / FACEID_PLUS_WEIGHT_NAME))
    encoder.save_pretrained(folder / FACEID_ENCODER_FOLDER, safe_serialization=True)
    return folder


#: Weight file of the tiny InstantID face adapter (InstantX/InstantID ships ``ip-adapter.bin``).
INSTANTID_WEIGHT_NAME = "ip-adapter_instantid_tiny.safetensors"
#: Subfolder of the tiny IdentityNet (InstantX/InstantID's ``ControlNetModel``).
INSTANTID_CONTROLNET_FOLDER = "ControlNetModel"


def build_tiny_instantid(
    directory: str | Path,
    sdxl_path: str | Path,
    *,
    seed: int = 0,
    num_tokens: int = 16,
    weight_std: float = 0.5,
    control_std: float = 0.5,
) -> Path:
    """Write a tiny InstantID for the SDXL folder ``sdxl_path``: the face adapter at
    ``DIR/INSTANTID_WEIGHT_NAME`` and the IdentityNet at ``DIR/INSTANTID_CONTROLNET_FOLDER``; return
    ``directory``.

    The adapter's ``image_proj`` is InstantID's Resampler (IP-Adapter Plus layout: ``latents``,
    ``proj_in`` from the 512-D face embedding, 4 blocks, one 64-wide head, width 64 instead of
    1280, ``num_tokens`` queries, output the UNet's cross-attention width), which diffusers'
    ``load_ip_adapter`` loads as ``IPAdapterPlusImageProjection``; ``ip_adapter`` holds the
    key/value projections of every cross-attention processor (odd indices). The IdentityNet is
    ``ControlNetModel.from_unet`` of the SDXL UNet with the condition embedding's convolutions
    redrawn He-normal without bias (at the default init the keypoint image fades out in its eight
    layers) and its zero-initialised outputs (down and mid) redrawn with std ``control_std``, so
    the keypoint image changes what the tiny UNet predicts.
    """
    from facedefense.testing.tiny_models import _isolated_rng, _prepare

    _prepare()  # before diffusers is imported
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel
    from diffusers.models.embeddings import IPAdapterPlusImageProjection
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(Path(sdxl_path) / "unet")
    cross = int(unet.config.cross_attention_dim)
    with _isolated_rng():
        torch.manual_seed(seed + 5)
        resampler = IPAdapterPlusImageProjection(
            embed_dims=FACE_EMBED_DIM,
            output_dims=cross,
            hidden_dims=64,
            depth=4,
            dim_head=64,
            heads=1,
            num_queries=num_tokens,
        )
        weights = {
            f"image_proj.{k}": v.contiguous()
            for k, v in _original_resampler_keys(resampler.state_dict()).items()
        }
        generator = torch.Generator().manual_seed(seed + 6)
        for index, hidden in enumerate(_cross_attention_sizes(unet)):
            for name in ("to_k_ip", "to_v_ip"):
                weights[f"ip_adapter.{2 * index + 1}.{name}.weight"] = (
                    torch.randn(hidden, cross, generator=generator) * weight_std
                ).contiguous()
        controlnet = ControlNetModel.from_unet(unet)
        with torch.no_grad():
            for conv in controlnet.controlnet_cond_embedding.modules():
                if isinstance(conv, torch.nn.Conv2d):  # He-normal, no bias: the keypoints reach the output
                    fan_in = conv.weight[0].numel()
                    conv.weight.copy_(
                        torch.randn(conv.weight.shape, generator=generator) * (2 / fan_in) ** 0.5
                    )
                    conv.bias.zero_()
            for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * control_std)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / INSTANTID_WEIGHT_NAME))
    controlnet.save_pretrained(folder / INSTANTID_CONTROLNET_FOLDER, safe_serialization=True)
    return folder


#: Weight file of the tiny PhotoMaker v1 adapter (TencentARC/PhotoMaker ships ``photomaker-v1.bin``).
PHOTOMAKER_WEIGHT_NAME = "photomaker-v1_tiny.safetensors"


def build_tiny_photomaker(
    directory: str | Path,
    sdxl_path: str | Path,
    *,
    seed: int = 0,
    lora_rank: int = 4,
    lora_std: float = 0.3,
    fuse_gain: float = 16.0,
) -> Path:
    """Write a tiny PhotoMaker v1 adapter for the SDXL folder ``sdxl_path`` at
    ``DIR/PHOTOMAKER_WEIGHT_NAME``; return ``directory``.

    The file holds the two parts of the released one under their key prefixes (the layout
    ``load_photomaker_adapter`` reads from a ``.safetensors``): ``id_encoder.*``, a 2-layer CLIP
    vision tower of width 64 (one 64-wide head, 32 px, patch 8) whose ``visual_projection`` and
    ``visual_projection_2`` give the widths of the two text encoders, and the FuseModule
    (``fuse_module.mlp1`` on the concatenated pair, ``mlp2``, ``layer_norm`` with gain ``fuse_gain``,
    so the fused tokens stand out of the tiny text encoders' and the photos steer generation) of
    their sum; and
    ``lora_weights.*``, rank-``lora_rank`` LoRA (``unet.{module}.lora_A/lora_B.weight``, std
    ``lora_std``) on every attention projection of the UNet.
    """
    from facedefense.testing.tiny_models import _isolated_rng, _prepare

    _prepare()  # before diffusers is imported
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    sdxl = Path(sdxl_path)
    widths = [
        int(json.loads((sdxl / folder / "config.json").read_text())["hidden_size"])
        for folder in ("text_encoder", "text_encoder_2")
    ]
    unet_config = json.loads((sdxl / "unet" / "config.json").read_text())
    with _isolated_rng():
        torch.manual_seed(seed + 7)
        tower = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=64,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=1,
                image_size=IMAGE_SIZE,
                patch_size=8,
                projection_dim=widths[0],
            )
        )
        width = sum(widths)
        weights = {f"id_encoder.{k}": v for k, v in tower.state_dict().items() if not k.endswith("position_ids")}
        weights["id_encoder.visual_projection_2.weight"] = torch.nn.Linear(64, widths[1], bias=False).weight
        for name, inputs in (("mlp1", 2 * width), ("mlp2", width)):
            for part, module in (
                ("layernorm", torch.nn.LayerNorm(inputs)),
                ("fc1", torch.nn.Linear(inputs, width)),
                ("fc2", torch.nn.Linear(width, width)),
            ):
                for key, value in module.state_dict().items():
                    weights[f"id_encoder.fuse_module.{name}.{part}.{key}"] = value
        weights["id_encoder.fuse_module.layer_norm.weight"] = torch.full((width,), fuse_gain)
        weights["id_encoder.fuse_module.layer_norm.bias"] = torch.zeros(width)
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_config(unet_config)
        generator = torch.Generator().manual_seed(seed + 8)
        for name, module in unet.named_modules():
            if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in ("to_q", "to_k", "to_v", "0"):
                if ".attn" not in name or (name.endswith(".0") and not name.endswith("to_out.0")):
                    continue
                weights[f"lora_weights.unet.{name}.lora_A.weight"] = (
                    torch.randn(lora_rank, module.in_features, generator=generator) * lora_std
                )
                weights[f"lora_weights.unet.{name}.lora_B.weight"] = (
                    torch.randn(module.out_features, lora_rank, generator=generator) * lora_std
                )
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in weights.items()}, str(folder / PHOTOMAKER_WEIGHT_NAME))
    return folder
