"""facedefense-example-plugin: registers the ``example_texture`` defender.

This module holds the hook implementation only and imports no torch: the class is registered as a
``"module:Class"`` string, imported the first time the method is used, so ``facedefense list``
stays fast.
"""

import facedefense


@facedefense.hookimpl
def register_defenders(register):
    register(
        "example_texture",
        "facedefense_example_plugin.texture:ExampleTexture",
        summary="Seeded high-frequency texture at the full budget, no model: a baseline (example plugin)",
    )
