"""Registers the built-in iterative defenders (targets import lazily)."""

import facedefense


@facedefense.hookimpl
def register_defenders(register):
    register(
        "photoguard",
        "facedefense_iterative.photoguard:PhotoGuard",
        summary="PhotoGuard: push the VAE latent (encoder attack) or the edit itself (diffusion attack) toward a target (Salman et al., 2023)",
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
