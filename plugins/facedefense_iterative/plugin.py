"""Registers the built-in iterative defenders (targets import lazily)."""

import facedefense


@facedefense.hookimpl
def register_defenders(register):
    register(
        "photoguard",
        "facedefense_iterative.photoguard:PhotoGuard",
        summary="PhotoGuard encoder attack: push the VAE latent toward a target (Salman et al., 2023)",
        tags=("demo",),
    )
