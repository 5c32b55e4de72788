"""facedefense-example-plugin: registers the ``sign_noise`` defender."""

import facedefense


@facedefense.hookimpl
def register_defenders(register):
    register(
        "sign_noise",
        "facedefense_example_plugin.sign_noise:SignNoise",
        summary="Random +-eps sign noise: the baseline every protection must beat (example plugin)",
    )
