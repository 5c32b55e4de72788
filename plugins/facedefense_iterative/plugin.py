"""Registers the built-in iterative defenders (targets import lazily)."""

import facedefense


@facedefense.hookimpl
def register_defenders(register):
    register(
        "photoguard",
        "facedefense_iterative.photoguard:PhotoGuard",
        summary="PhotoGuard: push the VAE latent (encoder attack) or the edit itself (diffusion attack) toward a target (Salman et al., 2023)",
        tags=("demo",),
    )
    register(
        "aspl",
        "facedefense_iterative.aspl:ASPL",
        summary="Anti-DreamBooth ASPL: alternate DreamBooth surrogate fine-tuning and PGD on one identity (Van Le et al., 2023)",
    )
    register(
        "fsmg",
        "facedefense_iterative.fsmg:FSMG",
        summary="Anti-DreamBooth FSMG: PGD against a DreamBooth surrogate trained on clean photos (Van Le et al., 2023)",
    )
    register(
        "caat",
        "facedefense_iterative.caat:CAAT",
        summary="CAAT: PGD on the photos and AdamW on the surrogate's cross-attention keys/values from one backward pass (Xu et al., 2024)",
    )
    register(
        "simac",
        "facedefense_iterative.simac:SimAC",
        summary="SimAC: ASPL on the timesteps a greedy search finds most vulnerable, plus decoder-feature interference (Wang et al., 2024)",
    )
    register(
        "metacloak",
        "facedefense_iterative.metacloak:MetaCloak",
        summary="MetaCloak: PGD against a pool of DreamBooth surrogate states, advanced while crafting, through random blur and flips (Liu et al., 2024)",
    )
    register(
        "ace",
        "facedefense_iterative.ace:ACE",
        summary="ACE / Mist v2: pull a LoRA surrogate's predicted noise toward a target pattern, retraining the LoRA on the photos (Zheng et al., 2023)",
    )
    register(
        "glaze",
        "facedefense_iterative.glaze:Glaze",
        summary="Glaze: pull the VAE-encoder features toward the photo's own style transfer, under an LPIPS penalty (Shan et al., 2023; the paper, not the app)",
    )
    register(
        "advdm",
        "facedefense_iterative.advdm:AdvDM",
        summary="AdvDM: maximize the diffusion model's denoising loss (Liang et al., 2023)",
    )
    register(
        "mist",
        "facedefense_iterative.mist:Mist",
        summary="Mist: textural loss toward a target pattern plus the surrogate's denoising loss (Liang et al., 2023)",
    )
    register(
        "sds",
        "facedefense_iterative.sds:SDS",
        summary="SDS(+/-): score-distillation gradient through the encoder only, optional texture target (Xue et al., 2024)",
    )
    register(
        "anti_encoder",
        "facedefense_iterative.anti_encoder:AntiEncoder",
        summary="anti_encoder: push the face embedding of the zero-shot attacks' encoder (insightface) away from the clean photo's (IDProtector / FaceShield style PGD)",
    )
    register(
        "facelock",
        "facedefense_iterative.facelock:FaceLock",
        summary="FaceLock: destroy the identity in the editor's VAE reconstruction (face embedding, latent and LPIPS terms; Wang et al., 2025)",
    )


@facedefense.hookimpl
def register_models(register):
    register(
        "arcface",
        "facedefense_iterative.face_embedders:build_arcface",
        summary="facexlib's ArcFace IR-SE50 face embedder, 512-D (weights recognition_arcface_ir_se50.pth by path)",
    )
    register(
        "insightface",
        "facedefense_iterative.face_embedders:build_insightface",
        summary="insightface's IResNet (antelopev2 glintr100, buffalo_l w600k_r50), 512-D, weights read from the ONNX file by path",
    )
    register(
        "random_face_embedder",
        "facedefense_iterative.face_embedders:build_random",
        summary="a seeded random-weight face embedder with the embedder contract (tests and plumbing only)",
    )
