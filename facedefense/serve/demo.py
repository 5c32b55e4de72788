"""The demo network ``facedefense serve`` runs when no method is named: a tiny RID with random weights.

It exercises everything the service does (upload, batching, budget check, PNG out) in a few
milliseconds per photo, offline, but it was never trained: its perturbation protects NOTHING. The
page and ``GET /v1/methods`` say so (``"demo": true``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

#: The demo network's architecture (RID's ``PerturbationDiT``, scaled down: 64 px input, 2 blocks).
DEMO_ARCHITECTURE = {"input_size": 64, "patch_size": 8, "in_channels": 3, "hidden_size": 48, "depth": 2,
                     "num_heads": 4, "mlp_ratio": 4.0, "num_classes": 1}  # fmt: skip
#: Its budget, in [0, 1] units.
DEMO_EPS = 8 / 255
#: The name the demo is served under.
DEMO_NAME = "demo"


def build_demo_checkpoint(folder: str | Path, seed: int = 0, architecture: dict[str, Any] | None = None) -> Path:
    """Write the demo RID checkpoint (safetensors and sidecar) into ``folder``; returns its path.
    ``architecture`` replaces `DEMO_ARCHITECTURE` (the load benchmark times RID-sized networks)."""
    import torch

    from facedefense.checkpoints import save_checkpoint

    try:
        from facedefense_amortized.networks import PerturbationDiT
    except ImportError as exc:  # pragma: no cover - the built-in plugin ships with facedefense
        from facedefense.errors import MissingDependencyError

        raise MissingDependencyError("the demo network needs the amortized plugin (facedefense_amortized)") from exc
    architecture = architecture or DEMO_ARCHITECTURE
    network = PerturbationDiT(**architecture)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # random weights everywhere (DiT zero-initializes its output layer)
        for tensor in network.parameters():
            if tensor.requires_grad:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
    path = Path(folder) / "demo-rid.safetensors"
    return save_checkpoint(network, path, method="rid", eps=DEMO_EPS, architecture=architecture,
                           note="facedefense serve demo: random weights, protects nothing")  # fmt: skip


def create_demo_defender() -> Any:
    """The demo RID, on the CPU in float32 (its checkpoint is written to a temporary folder, loaded,
    and removed: nothing stays on disk)."""
    from facedefense.registry import get_registry

    with tempfile.TemporaryDirectory(prefix="facedefense-serve-demo-") as folder:
        checkpoint = build_demo_checkpoint(folder)
        return get_registry().create("defender", "rid", checkpoint=str(checkpoint), engine="module",
                                     device="cpu", dtype="float32")  # fmt: skip
