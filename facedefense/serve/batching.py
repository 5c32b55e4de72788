"""One worker thread per loaded defender: images queue up, same-size ones run in one forward pass.

An amortized image-scoped defender (RID, GAP-Diff) computes each image independently of the others
in its batch, so concurrent requests are batched: the first image waits at most ``max_wait_ms`` for
up to ``max_batch - 1`` others of its size, then all go through one ``protect`` call. Every other
defender gets one image per call (an iterative one draws its random start from a generator seeded
per call, so batching would change its output). The worker is a thread, not an event-loop task, so
the same runner serves any event loop (uvicorn, a test client, Ray Serve).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    from facedefense.interfaces import Defender


def batches_requests(defender: Defender) -> bool:
    """Whether concurrent images may share a forward pass of ``defender`` without changing its output."""
    return defender.kind == "amortized" and defender.scope == "image"


@dataclass(eq=False)  # compared by identity (a tensor's == is elementwise)
class _Job:
    pixels: Tensor
    listener: Callable[[str, int, int | None], None] | None = None
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> tuple[int, ...]:
        return tuple(self.pixels.shape)


class Runner:
    """Runs ``defender.protect`` in a worker thread; `submit` returns a future of ``(image, stats)``.

    Args:
        defender: the loaded defender (used by this thread only).
        max_batch: most images per call (1 unless `batches_requests`).
        max_wait_ms: how long the first image of a batch waits for others, in milliseconds.
        on_batch: called with each batch's size (statistics, tests).
    """

    def __init__(self, defender: Defender, *, max_batch: int = 8, max_wait_ms: float = 5.0,
                 on_batch: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.defender = defender
        self.max_batch = max_batch if batches_requests(defender) else 1
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self.pending: list[_Job] = []
        self.condition = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._work, name=f"facedefense-{defender.name}", daemon=True)
        self.thread.start()

    def submit(self, pixels: Tensor, listener: Callable[[str, int, int | None], None] | None = None) -> Future:
        """Queue one (1, 3, H, W) image; the future gives ``(protected (1, 3, H, W), stats)``. A future
        cancelled before its batch starts is skipped (a client that left). ``listener`` hears the
        defender's progress bars while it protects this image alone
        ([`listening`][facedefense.progress.listening]; it may raise to stop the work)."""
        job = _Job(pixels, listener)
        with self.condition:
            if self.closed:
                raise RuntimeError("the service is shutting down")
            self.pending.append(job)
            self.condition.notify()
        return job.future

    def close(self) -> None:
        """Stop after the images already queued."""
        with self.condition:
            self.closed = True
            self.condition.notify()
        self.thread.join(timeout=30)

    def _next_batch(self) -> list[_Job] | None:
        with self.condition:
            while not self.pending:
                if self.closed:
                    return None
                self.condition.wait()
            first = self.pending[0]
            while True:
                same = [job for job in self.pending if job.size == first.size][: self.max_batch]
                left = first.arrived + self.max_wait - time.monotonic()
                if len(same) >= self.max_batch or left <= 0 or self.closed:
                    break
                self.condition.wait(left)
            taken = {id(job) for job in same}
            self.pending = [job for job in self.pending if id(job) not in taken]
        return [job for job in same if job.future.set_running_or_notify_cancel()]

    def _work(self) -> None:
        import torch

        from facedefense.progress import listening

        while (batch := self._next_batch()) is not None:
            if not batch:
                continue
            try:
                if self.on_batch is not None:
                    self.on_batch(len(batch))
                listener = batch[0].listener if len(batch) == 1 else None
                with listening(listener) if listener is not None else contextlib.nullcontext():
                    result = self.defender.protect(torch.cat([job.pixels for job in batch]))
                answers = [
                    (result.images[index : index + 1], result.stats[index] if index < len(result.stats) else {})
                    for index in range(len(batch))
                ]
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request; the worker lives on
                for job in batch:
                    job.future.set_exception(exc)
                continue
            for job, answer in zip(batch, answers):
                job.future.set_result(answer)
