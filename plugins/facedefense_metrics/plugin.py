"""Registers the built-in metrics (targets import lazily)."""

import facedefense


@facedefense.hookimpl
def register_metrics(register):
    register("psnr", "facedefense_metrics.psnr:PSNR", summary="Peak signal-to-noise ratio against the reference (dB)", tags=("default",))
    register("ssim", "facedefense_metrics.ssim:SSIM", summary="Structural similarity against the reference (11x11 Gaussian, sigma 1.5)", tags=("default",))
