"""The networks of the amortized defenders (plain torch modules, checkpoint-compatible)."""

from facedefense_amortized.networks.dit import RID_ARCHITECTURE, PerturbationDiT
from facedefense_amortized.networks.gap_generator import GAPGenerator

__all__ = ["GAPGenerator", "PerturbationDiT", "RID_ARCHITECTURE"]
