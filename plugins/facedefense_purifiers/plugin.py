"""Registers the built-in purifiers (targets import lazily)."""

import facedefense


@facedefense.hookimpl
def register_purifiers(register):
    register("jpeg", "facedefense_purifiers.jpeg:JPEG", summary="JPEG re-compression (PIL codec; differentiable approximation for EOT)")
    register("gaussian_blur", "facedefense_purifiers.gaussian_blur:GaussianBlur", summary="Gaussian blur (kernel, sigma)")
    register("resize", "facedefense_purifiers.resize:Resize", summary="Shrink by a factor and enlarge back (interpolation named)")
    register("quantize", "facedefense_purifiers.quantize:Quantize", summary="Bit-depth reduction to 1-8 bits per channel")
    register("gaussian_noise", "facedefense_purifiers.gaussian_noise:GaussianNoise", summary="Additive Gaussian noise, clipped")
