"""Registers the built-in purifiers (targets import lazily)."""

import facedefense


@facedefense.hookimpl
def register_purifiers(register):
    register("jpeg", "facedefense_purifiers.jpeg:JPEG", summary="JPEG re-compression (PIL codec; differentiable approximation for EOT)")
