"""Registers the built-in purifiers (targets import lazily)."""

import facedefense


@facedefense.hookimpl
def register_purifiers(register):
    register("jpeg", "facedefense_purifiers.jpeg:JPEG", summary="JPEG re-compression (PIL codec; differentiable approximation for EOT)")
    register("gaussian_blur", "facedefense_purifiers.gaussian_blur:GaussianBlur", summary="Gaussian blur (kernel, sigma)")
    register("resize", "facedefense_purifiers.resize:Resize", summary="Shrink by a factor and enlarge back (interpolation named)")
    register("quantize", "facedefense_purifiers.quantize:Quantize", summary="Bit-depth reduction to 1-8 bits per channel")
    register("gaussian_noise", "facedefense_purifiers.gaussian_noise:GaussianNoise", summary="Additive Gaussian noise, clipped")
    register(
        "adverse_cleaner", "facedefense_purifiers.adverse_cleaner:AdverseCleaner",
        summary="AdverseCleaner: 64 bilateral filters, then a guided filter on the photo (lllyasviel, 2023)",
    )
    register("tvm", "facedefense_purifiers.tvm:TVM", summary="Total-variation minimization from 30% of the pixels (Guo et al., 2018)")
    register(
        "diffpure", "facedefense_purifiers.diffpure:DiffPure",
        summary="DiffPure: noise to a timestep and denoise (pixel DDPM or SD img2img; Nie et al., 2022)",
        tags=("needs_model",),
    )
    register(
        "gridpure", "facedefense_purifiers.gridpure:GridPure",
        summary="GrIDPure: iterative DiffPure on overlapping 256x256 crops (Zhao et al., 2024)",
        tags=("needs_model",),
    )
    register(
        "noisy_upscale", "facedefense_purifiers.noisy_upscale:NoisyUpscale",
        summary="Noisy upscaling: Gaussian noise, then the SD x4 upscaler (Hönig et al., 2025)",
        tags=("needs_model",),
    )
    register(
        "impress", "facedefense_purifiers.impress:Impress",
        summary="IMPRESS: VAE-consistency optimization under an LPIPS bound (Cao et al., 2023)",
        tags=("needs_model",),
    )
