"""The service behind the HTTP app: loaded defenders, the bounded queue, protecting one upload.

Independent of the web framework, so the FastAPI app (`facedefense.serve.app`) stays a thin layer
of routes and a Ray Serve deployment could wrap the same object.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facedefense.serve.batching import Runner
from facedefense.serve.errors import ServeError
from facedefense.serve.images import Protected, decode_upload, encode_protected
from facedefense.serve.limits import Limits

if TYPE_CHECKING:
    from facedefense.interfaces import Defender
    from facedefense.io import LoadedImage

#: The metrics ``?check=true`` adds to each image's facts (protected against the upload).
CHECKS = ("psnr", "ssim")
#: What ``methods`` may be: names, or name -> options (created through the registry) or -> a defender.
MethodsArg = Sequence[str] | Mapping[str, "Mapping[str, Any] | Defender"] | None


@dataclass
class LoadedMethod:
    """A defender the service keeps warm, with its worker thread."""

    name: str
    defender: Defender
    runner: Runner
    demo: bool = False
    #: How many forward passes took how many images (batch size -> count; bounded by ``max_batch``).
    batches: Counter = field(default_factory=Counter)

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/methods`` says about it."""
        from facedefense.config import config_to_dict
        from facedefense.registry import get_registry

        defender, eps = self.defender, self.defender.config.eps
        spec = get_registry().specs.get("defender", {}).get(defender.name)
        return {
            "name": self.name,
            "method": defender.name,
            "summary": spec.summary if spec is not None else "",
            "kind": defender.kind,
            "scope": defender.scope,
            "eps": eps,
            "eps_gray_levels": round(eps * 255.0, 4),
            "max_batch": self.runner.max_batch,
            "demo": self.demo,
            "config": public_options(config_to_dict(defender.config)),
        }

    def manifest_entry(self) -> dict[str, Any]:
        """The method as a served manifest records it (the defender's description, paths reduced)."""
        described = self.defender.describe()
        return {**described, "config": public_options(described["config"]), "served_as": self.name, "demo": self.demo}


def public_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as clients see them: a local file or folder (a checkpoint, a model folder) is reduced
    to its name, so that the service does not publish its file system; hub ids stay whole."""
    from facedefense.config import looks_like_local_path

    def shown(value: Any) -> Any:
        if isinstance(value, str) and value and (looks_like_local_path(value) or Path(value).expanduser().exists()):
            return Path(value.rstrip("/\\")).name
        return value

    return {key: shown(value) for key, value in options.items()}


def load_methods(methods: MethodsArg, limits: Limits) -> list[LoadedMethod]:
    """Create every defender once (a missing one is the registry's one-line error) and start its worker.

    ``None`` or an empty list loads the demo network (`facedefense.serve.demo`) as ``demo``.
    """
    from facedefense.interfaces import Defender
    from facedefense.registry import get_registry

    if isinstance(methods, str):
        methods = [methods]
    if not methods:
        from facedefense.serve.demo import DEMO_NAME, create_demo_defender

        entries: list[tuple[str, Defender, bool]] = [(DEMO_NAME, create_demo_defender(), True)]
    else:
        named = {name: {} for name in methods} if not isinstance(methods, Mapping) else dict(methods)
        entries = []
        for name, given in named.items():
            defender = given if isinstance(given, Defender) else get_registry().create("defender", name, **dict(given))
            entries.append((name, defender, False))
    loaded = []
    for name, defender, demo in entries:
        record: Counter = Counter()
        runner = Runner(defender, max_batch=limits.max_batch, max_wait_ms=limits.max_wait_ms,
                        on_batch=lambda size, record=record: record.update((size,)))  # fmt: skip
        loaded.append(LoadedMethod(name, defender, runner, demo, record))
    return loaded


class Service:
    """Loaded defenders, admission into the bounded queue, and the work of one upload.

    Args:
        methods: names, or name -> options, or name -> a defender instance; None: the demo network.
        limits: see [`Limits`][facedefense.serve.limits.Limits].
        token: the API token (None: no token asked).
        keep: a folder that receives every protected PNG and a ``served.jsonl`` line per image;
            None (default): nothing is written to disk.
    """

    def __init__(self, methods: MethodsArg = None, limits: Limits | None = None, *, token: str | None = None,
                 keep: str | Path | None = None) -> None:  # fmt: skip
        self.limits = limits or Limits()
        self.token = token
        self.keep = Path(keep) if keep is not None else None
        if self.keep is not None:
            from facedefense.io import check_output_dir

            check_output_dir(self.keep)
            self.keep.mkdir(parents=True, exist_ok=True)
        self.methods = {loaded.name: loaded for loaded in load_methods(methods, self.limits)}
        self.admitted = 0
        self.metrics: dict[str, Any] | None = None
        self.lock = threading.Lock()
        self.served = 0
        from facedefense.serve.jobs import Jobs

        self.jobs = Jobs(self)

    @property
    def demo(self) -> bool:
        """Whether any loaded method is the demo network (it protects nothing)."""
        return any(loaded.demo for loaded in self.methods.values())

    def method(self, name: str | None) -> LoadedMethod:
        """The loaded method ``name`` (None: the first loaded).

        Raises:
            ServeError: 404 when it is not loaded.
        """
        if name is None or name == "":
            return next(iter(self.methods.values()))
        if name not in self.methods:
            raise ServeError(404, f"method '{name}' is not loaded here; loaded: {', '.join(self.methods)}")
        return self.methods[name]

    @contextlib.contextmanager
    def admit(self, count: int = 1) -> Iterator[None]:
        """Hold ``count`` places of the bounded queue for the block (see `reserve`)."""
        self.reserve(count)
        try:
            yield
        finally:
            self.release(count)

    def release(self, count: int = 1) -> None:
        """Give back places taken by `reserve`."""
        with self.lock:
            self.admitted -= count

    def reserve(self, count: int = 1) -> None:
        """Take ``count`` places of the bounded queue (give them back with `release`).

        Raises:
            ServeError: 503 with ``Retry-After`` when they are not free (the request is not queued);
                413 when ``count`` exceeds the whole queue.
        """
        if count > self.limits.queue_size:
            raise ServeError(413, f"{count} images in one request; this service takes at most {self.limits.queue_size} at once")
        with self.lock:
            if self.admitted + count > self.limits.queue_size:
                busy = self.admitted
                full = True
            else:
                self.admitted += count
                full = False
        if full:
            raise ServeError(
                503, f"busy: {busy} image(s) in progress, at most {self.limits.queue_size}; retry later",
                {"Retry-After": str(self.limits.retry_after_s)},
            )

    def decode(self, data: bytes, filename: str | None) -> LoadedImage:
        """Decode one upload (see [`decode_upload`][facedefense.serve.images.decode_upload])."""
        return decode_upload(data, filename, self.limits.max_pixels)

    def finish(self, method: LoadedMethod, loaded: LoadedImage, protected: Any, stats: dict[str, Any],
               check: bool = False) -> Protected:  # fmt: skip
        """Encode and check one protected image, and keep it when ``keep`` is set; ``check`` adds
        ``facts["check"]``: the `CHECKS` metrics of the protected image against the upload."""
        result = encode_protected(loaded, protected, method.defender.config.eps, stats, png_level=self.limits.png_level)
        result.facts["method"] = method.name
        if method.demo:
            result.facts["demo"] = True
        if check:
            result.facts["check"] = self.check(loaded.pixels, protected)
        with self.lock:
            self.served += 1
        if self.keep is not None:
            self._keep(result)
        return result

    def check(self, original: Any, protected: Any) -> dict[str, float]:
        """The `CHECKS` metrics (the library's, from the registry) of ``protected`` against ``original``,
        both (1, 3, H, W) on the 8-bit grid."""
        import math

        with self.lock:
            if self.metrics is None:
                from facedefense.registry import get_registry

                self.metrics = {name: get_registry().create("metric", name) for name in CHECKS}
        values = {name: float(metric.compute(protected, original).value) for name, metric in self.metrics.items()}
        return {name: round(value, 4) if math.isfinite(value) else None for name, value in values.items()}

    def _keep(self, result: Protected) -> None:
        from facedefense.io import atomic_path

        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        name = f"{stamp}-{uuid.uuid4().hex[:8]}-{result.name}"
        with atomic_path(self.keep / name) as temporary:
            temporary.write_bytes(result.png)
        line = json.dumps({**result.facts, "kept": name, "time": stamp}) + "\n"
        with self.lock, open(self.keep / "served.jsonl", "a", encoding="utf-8") as log:
            log.write(line)

    def close(self) -> None:
        """Cancel the jobs and stop the worker threads (after the images already queued)."""
        for job in list(self.jobs.jobs.values()):
            job.cancel()
        for loaded in self.methods.values():
            loaded.runner.close()

