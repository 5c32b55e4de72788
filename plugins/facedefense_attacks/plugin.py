"""Registers the built-in personalizers and editors (targets import lazily)."""

import facedefense


@facedefense.hookimpl
def register_personalizers(register):
    register(
        "dreambooth",
        "facedefense_attacks.dreambooth:DreamBooth",
        summary="DreamBooth: fine-tune the UNet (and text encoder) with prior preservation (Ruiz et al., 2023)",
    )
    register(
        "lora",
        "facedefense_attacks.lora:LoRA",
        summary="DreamBooth-LoRA: low-rank adapters on the UNet's attention (Hu et al., 2022)",
    )
    register(
        "textual_inversion",
        "facedefense_attacks.textual_inversion:TextualInversion",
        summary="Textual inversion: learn one new token's embedding (Gal et al., 2023)",
        aliases=("ti",),
    )
    register(
        "lora_ti",
        "facedefense_attacks.lora_ti:LoRATI",
        summary="LoRA and a new token trained together, as in RID's evaluation (Guo et al., 2024)",
    )
    register(
        "ip_adapter",
        "facedefense_attacks.ip_adapter:IPAdapter",
        summary="IP-Adapter: zero-shot, the photos' CLIP image embeddings condition generation (Ye et al., 2023)",
    )
    register(
        "ip_adapter_faceid",
        "facedefense_attacks.ip_adapter_faceid:IPAdapterFaceID",
        summary="IP-Adapter-FaceID (plain, Plus v1/v2): zero-shot, the photos' face embeddings condition generation (h94, 2023)",
    )
    register(
        "instantid",
        "facedefense_attacks.instantid:InstantID",
        summary="InstantID: zero-shot on SDXL, face embedding tokens + IdentityNet on the face keypoints (Wang et al., 2024)",
    )
    register(
        "photomaker",
        "facedefense_attacks.photomaker:PhotoMaker",
        summary="PhotoMaker v1: zero-shot on SDXL, the photos' CLIP ID embeddings fused into the class word (Li et al., 2024)",
    )


@facedefense.hookimpl
def register_editors(register):
    register(
        "instruct_pix2pix",
        "facedefense_attacks.instruct_pix2pix:InstructPix2Pix",
        summary="InstructPix2Pix: edit a photo from an instruction (Brooks et al., 2023)",
        aliases=("ip2p",),
    )
    register(
        "sdedit",
        "facedefense_attacks.sdedit:SDEdit",
        summary="SDEdit: noise the photo to a strength and denoise it with a prompt (Meng et al., 2022)",
        aliases=("img2img",),
    )
    register(
        "inpaint",
        "facedefense_attacks.inpaint:Inpaint",
        summary="Stable Diffusion inpainting: regenerate the masked region from a prompt",
    )
