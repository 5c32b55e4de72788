"""Jobs: protect images in the background, report step progress, hand the result over, cancel.

For the iterative defenders (minutes per photo on a CPU) a request that waits for its answer is
the wrong shape: ``POST /v1/jobs`` answers at once with a job id, ``GET /v1/jobs/{id}`` reports
progress down to the optimization step (the defender's progress bars, heard through
[`listening`][facedefense.progress.listening]), ``GET /v1/jobs/{id}/result`` hands over the PNG (a
zip with a manifest for several images) and ``DELETE /v1/jobs/{id}`` cancels: images not started are
dropped and the one being protected stops at its next step. A job holds its places of the bounded
queue until it ends; finished jobs are kept in memory (the oldest beyond `KEEP_FINISHED` dropped).
"""

from __future__ import annotations

import datetime
import logging
import threading
import uuid
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any

from facedefense.errors import FaceDefenseError
from facedefense.serve.errors import ServeError

if TYPE_CHECKING:
    from facedefense.serve.images import Protected
    from facedefense.serve.service import LoadedMethod, Service

log = logging.getLogger("facedefense.serve")

#: Finished jobs kept for their result (the oldest beyond this are dropped).
KEEP_FINISHED = 32
#: A job's states; the last three are final.
STATES = ("queued", "running", "cancelling", "done", "failed", "cancelled")


class JobCancelled(Exception):
    """Raised from a progress report to stop the image being protected."""


class Job:
    """One upload of images protected in the background (see the module docstring)."""

    def __init__(self, service: Service, method: LoadedMethod, uploads: list[tuple[str | None, bytes]],
                 check: bool = False) -> None:  # fmt: skip
        self.id = uuid.uuid4().hex
        self.check = check
        self.service, self.method, self.uploads = service, method, uploads
        self.status = "queued"
        self.created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.results: list[Protected] = []
        self.failures: list[dict[str, Any]] = []
        self.step: dict[str, Any] | None = None
        self.futures: list[Future] = []
        self.cancelled = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"facedefense-job-{self.id[:8]}", daemon=True)

    @property
    def final(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/jobs/{id}`` answers."""
        with self.lock:
            return {
                "id": self.id,
                "method": self.method.name,
                "status": self.status,
                "created": self.created,
                "images": len(self.uploads),
                "done": len(self.results),
                "failed": len(self.failures),
                "step": dict(self.step) if self.step else None,
                "results": [result.facts for result in self.results],
                "failures": list(self.failures),
            }

    def cancel(self) -> None:
        """Drop the images not started; the one being protected stops at its next step."""
        with self.lock:
            if self.final:
                return
            self.status = "cancelling"
        self.cancelled.set()
        for future in self.futures:
            future.cancel()

    def _listener(self, index: int, name: str):  # type: ignore[no-untyped-def]
        def heard(desc: str, done: int, total: int | None) -> None:
            if self.cancelled.is_set():
                raise JobCancelled(f"job {self.id} cancelled")
            with self.lock:
                self.step = {"image": index, "name": name, "desc": desc, "done": done, "total": total}

        return heard

    def _run(self) -> None:
        try:
            self._protect_all()
        except Exception as exc:  # noqa: BLE001 - a bug: recorded, never a dead job that stays "running"
            log.exception("job %s failed", self.id)
            with self.lock:
                self.failures.append({"input": None, "status": 500, "error": f"internal error ({type(exc).__name__})"})
        finally:
            with self.lock:
                if self.cancelled.is_set():
                    self.status = "cancelled"
                else:
                    self.status = "done" if self.results else "failed"
                self.step = None
            self.service.release(len(self.uploads))

    def _protect_all(self) -> None:
        with self.lock:
            if self.cancelled.is_set():
                return
            self.status = "running"
        pending = []
        for index, (name, data) in enumerate(self.uploads):
            try:
                loaded = self.service.decode(data, name)
            except ServeError as exc:
                self.failures.append({"input": name, "status": exc.status, "error": exc.message})
                continue
            future = self.method.runner.submit(loaded.pixels, listener=self._listener(index, loaded.path.name))
            self.futures.append(future)
            pending.append((loaded, future))
        if self.cancelled.is_set():  # cancelled while decoding: drop what was queued
            for _, future in pending:
                future.cancel()
        for loaded, future in pending:
            try:
                protected, stats = future.result()
            except (CancelledError, JobCancelled):
                continue
            except FaceDefenseError as exc:
                self.failures.append({"input": loaded.path.name, "status": 422, "error": str(exc).splitlines()[0]})
                continue
            except Exception as exc:  # noqa: BLE001 - a bug of the method: logged, this image failed
                log.exception("job %s: %s failed", self.id, loaded.path.name)
                self.failures.append({"input": loaded.path.name, "status": 500, "error": f"internal error ({type(exc).__name__})"})
                continue
            result = self.service.finish(self.method, loaded, protected, stats, self.check)
            with self.lock:
                self.results.append(result)


class Jobs:
    """The service's jobs, by id."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()

    def start(self, method: LoadedMethod, uploads: list[tuple[str | None, bytes]], *, check: bool = False) -> Job:
        """Take the uploads' places in the queue (503 when full) and start protecting them."""
        self.service.reserve(len(uploads))
        job = Job(self.service, method, uploads, check)
        with self.lock:
            self.jobs[job.id] = job
            finished = [key for key, known in self.jobs.items() if known.final]
            for key in finished[: max(0, len(finished) - KEEP_FINISHED)]:
                del self.jobs[key]
        job.thread.start()
        return job

    def get(self, job_id: str) -> Job:
        """The job ``job_id`` (404 when unknown or dropped)."""
        with self.lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise ServeError(404, f"no job {job_id!r} (unknown, deleted, or dropped after {KEEP_FINISHED} newer jobs ended)")
        return job

    def delete(self, job_id: str) -> Job:
        """Cancel a job that runs; forget one that ended."""
        job = self.get(job_id)
        if job.final:
            with self.lock:
                self.jobs.pop(job_id, None)
        else:
            job.cancel()
        return job
