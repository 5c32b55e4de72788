"""Bulk runs over several processes (``accelerate launch -m facedefense protect ...`` or ``torchrun``).

A launcher starts one process per GPU (or per CPU slot) and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. The file runner then gives each process every
``WORLD_SIZE``-th unit of work, whole identities for identity-scoped defenders and single photos
otherwise, so that nothing is done twice or left out. The processes' manifest entries are gathered
over a gloo process group, and rank 0 writes the one manifest. Without a launcher
(``WORLD_SIZE`` unset or 1) nothing here does anything.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

#: How long a finished process waits for the slowest one before the gather fails.
GATHER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Shard:
    """This process's place in a multi-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def take(self, items: Sequence[T]) -> list[T]:
        """Every ``world``-th item starting at ``rank`` (round robin: balanced, disjoint, complete)."""
        return [item for index, item in enumerate(items) if index % self.world == self.rank]


def current_shard() -> Shard:
    """Read the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    return Shard(rank, world, local) if world > 1 else Shard()


def bind_device(shard: Shard) -> None:
    """Make ``cuda`` mean this process's GPU (``LOCAL_RANK``), so ``--device auto`` spreads the work."""
    if not shard.active:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(shard.local_rank % torch.cuda.device_count())


def gather(value: Any, shard: Shard) -> list[Any] | None:
    """Rank 0 gets every process's ``value`` (in rank order); the other ranks get None."""
    if not shard.active:
        return [value]
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=shard.rank, world_size=shard.world, timeout=GATHER_TIMEOUT)
    gathered: list[Any] | None = [None] * shard.world if shard.rank == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def merge_manifests(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """One manifest from the processes' partial ones: entries concatenated, summary recounted."""
    merged = dict(manifests[0])
    merged["images"] = [entry for manifest in manifests for entry in manifest["images"]]
    merged["failures"] = [entry for manifest in manifests for entry in manifest["failures"]]
    artifacts: dict[str, Any] = {}
    for manifest in manifests:
        artifacts.update(manifest.get("artifacts", {}))
    if artifacts:
        merged["artifacts"] = artifacts
    merged["summary"] = {"processed": len(merged["images"]), "failed": len(merged["failures"])}
    merged["processes"] = len(manifests)
    return merged
