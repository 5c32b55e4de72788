"""The benchmark's output folder and stage cache under the output claim (`facedefense.outputs`).

Before its first stage, ``benchmark`` claims its output folder, and its cache folder when
``--cache`` puts it elsewhere: an output or cache that is, lies in or holds a photo folder, a
model or the config itself is refused, and so is a folder holding files no benchmark run listed.
A folder holding an earlier benchmark run is continued (its stages are the cache: that is how a
benchmark resumes). Both folders stay locked while the run works, so a second run can neither
interleave its files with the first's nor clean the first's unfinished stages away.

The output's manifest (``facedefense.json``, command ``benchmark``) lists the files the run
writes and owns the cache folder inside the output (``folders``); it is written with status
``running`` before the first stage and ``completed``, ``failed`` or ``interrupted`` at the end. A
cache folder outside the output gets its own manifest (command ``benchmark-cache``), which owns
its stage folders, so outputs sharing it can find it theirs.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from facedefense.benchmark.graph import KINDS
from facedefense.errors import OutputError
from facedefense.io import write_json
from facedefense.outputs import MANIFEST_NAME, OutputFolder, listed_files, listed_folders

COMMAND = "benchmark"
#: The command a shared cache folder's manifest names (an output folder is not a cache, and back).
CACHE_COMMAND = "benchmark-cache"
#: The files every run writes into its output folder (besides ``examples/<cell>.png``).
OUTPUT_FILES = ("results.jsonl", "report.md", "report.html", "run.json", "examples.png")
EXAMPLES = "examples"
#: Earlier runs a manifest remembers (the newest).
EARLIER_RUNS = 20


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class RunFolders:
    """A benchmark run's claims on its output and cache folders, and its manifest.

    Use `claim`, then `start` before the first stage and `finish` at the end;
    as a context manager it releases both locks however the run ends.
    """

    def __init__(self, output: OutputFolder, cache: Path, cache_claim: OutputFolder | None, cache_inside: str | None) -> None:
        self.output = output
        self.cache = cache
        self.cache_claim = cache_claim
        self.cache_inside = cache_inside
        self.manifest: dict[str, Any] = {}
        self.carried: set[str] = set()
        self.planned: list[str] = []

    @property
    def path(self) -> Path:
        return self.output.path

    @classmethod
    def claim(cls, output: str | Path, cache: str | Path, inputs: Iterable[str | Path]) -> RunFolders:
        """Check both folders (nothing is created in a refused one), then claim and lock them.

        Raises:
            OutputError: a rule of `facedefense.outputs` refuses a folder, the cache is the output
                or holds it, or another run holds a lock (one line).
        """
        output, cache, inputs = Path(output), Path(cache), list(inputs)
        inside = _cache_inside(output, cache)
        OutputFolder.claim(output, COMMAND, inputs=inputs, existing="add", dry_run=True)
        if inside is None:
            OutputFolder.claim(cache, CACHE_COMMAND, inputs=inputs, existing="add", dry_run=True)
        new = [folder for folder in (output, cache) if not folder.exists()]
        claimed = OutputFolder.claim(output, COMMAND, inputs=inputs, existing="add")
        cache_claim = None
        try:
            if inside is None:
                cache_claim = OutputFolder.claim(cache, CACHE_COMMAND, inputs=inputs, existing="add")
                if cache_claim.earlier is None:
                    write_json({"command": CACHE_COMMAND, "created": _now(), "folders": list(KINDS)}, cache / MANIFEST_NAME)
        except BaseException:  # e.g. another run holds the cache: leave no folder this run created
            for claim in (cache_claim, claimed):
                if claim is not None:
                    claim.release()
            for folder in new:
                (folder / MANIFEST_NAME).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            raise
        return cls(claimed, cache, cache_claim, inside)

    def start(self, config_path: Path, planned: Sequence[str]) -> None:
        """Write the manifest, status ``running``, listing every file the run may write (and the
        earlier run's files it keeps until it has written its own)."""
        from facedefense.batch import versions

        folder, earlier = self.path, self.output.earlier
        self.planned = list(dict.fromkeys(planned))
        folders: set[str] = {self.cache_inside} if self.cache_inside else set()
        if earlier is not None:
            self.carried = {name for name in listed_files(earlier, folder) if (folder / name).is_file()} - {MANIFEST_NAME}
            folders |= {name for name in listed_folders(earlier, folder) if (folder / name).is_dir()}
        self.manifest = {
            "command": COMMAND,
            "status": "running",
            "created": _now(),
            "finished": None,
            "argv": list(sys.argv),
            "config": str(config_path.resolve()),
            "output": str(folder.resolve()),
            "cache": str(self.cache.resolve()),
            "files": sorted({*self.planned, *self.carried}),
            "folders": sorted(folders),
            "versions": versions(),
            "summary": None,
        }
        if earlier is not None:
            runs = earlier.get("earlier_runs") if isinstance(earlier.get("earlier_runs"), list) else []
            previous = {key: earlier.get(key) for key in ("created", "finished", "status", "config")}
            self.manifest["earlier_runs"] = [*runs, previous][-EARLIER_RUNS:]
        write_json(self.manifest, folder / MANIFEST_NAME)

    def finish(self, status: str, *, summary: dict[str, Any] | None = None, error: str | None = None, written: bool = False) -> None:
        """Write the manifest's final ``status``; once the run has written its outputs
        (``written``), the earlier run's files it did not write again are removed (they were that
        run's: its manifest listed them) and the manifest lists the new run's files only."""
        if not self.manifest:
            return
        if written:
            for name in sorted(self.carried - set(self.planned)):
                (self.path / name).unlink(missing_ok=True)
            self.manifest["files"] = sorted(self.planned)
        self.manifest.update(status=status, finished=_now(), summary=summary)
        if error:
            self.manifest["error"] = error
        write_json(self.manifest, self.path / MANIFEST_NAME)

    def release(self) -> None:
        """Unlock both folders (idempotent)."""
        if self.cache_claim is not None:
            self.cache_claim.release()
        self.output.release()

    def __enter__(self) -> RunFolders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _cache_inside(output: Path, cache: Path) -> str | None:
    """The cache's path relative to the output when it lies inside it, else None.

    Raises:
        OutputError: the cache is the output, holds it, or would take the name of an output file.
    """
    out, root = output.resolve(), cache.resolve()
    if root == out:
        raise OutputError(f"--cache {cache} is the output folder; give the cache its own folder (default: OUTPUT/cache)")
    if out.is_relative_to(root):
        raise OutputError(f"output folder {output} lies inside the cache folder {cache}; choose another")
    if not root.is_relative_to(out):
        return None
    relative = root.relative_to(out)
    if relative.parts[0] in (*OUTPUT_FILES, EXAMPLES, MANIFEST_NAME) or relative.parts[0].startswith("."):
        raise OutputError(f"--cache {cache} would take the place of the benchmark's {relative.parts[0]}; choose another folder")
    return str(relative)


def run_inputs(sources: Sequence[Path], methods: dict[str, dict[str, Any]]) -> list[Path]:
    """What a run reads, which no output may be, lie in or hold: the config's ``sources`` and every
    existing local path a method's options name (model folders, checkpoints, weights)."""
    from facedefense.config import looks_like_local_path

    found = list(sources)
    for description in methods.values():
        for value in description.get("options", {}).values():
            if isinstance(value, str) and value and looks_like_local_path(value) and Path(value).expanduser().exists():
                found.append(Path(value).expanduser())
    return list(dict.fromkeys(found))
