"""Registers the built-in amortized defenders (targets import lazily)."""

import facedefense


@facedefense.hookimpl
def register_defenders(register):
    register(
        "rid",
        "facedefense_amortized.rid:RID",
        summary="RID: real-time identity defender, a DiT predicting the perturbation (Guo et al., 2024)",
    )
    register(
        "gap_diff",
        "facedefense_amortized.gap_diff:GAPDiff",
        summary="GAP-Diff: U-Net generator of preprocessing-robust perturbations (Zhu et al., NDSS 2025)",
    )


@facedefense.hookimpl
def register_commands(app):
    from facedefense_amortized.commands import register

    register(app)
