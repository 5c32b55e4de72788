"""Claiming outputs: the one mechanism every command that writes goes through (DESIGN section 3).

Before it writes anything, a command claims its output:
[`OutputFolder.claim`][facedefense.outputs.OutputFolder.claim] for a folder (``protect``, ``purify``,
``attack``, ``train``, ``benchmark``), [`claim_file`][facedefense.outputs.claim_file] for a single file
(``evaluate --json``, ``pairs``, ``export``). The rules:

1. An output that is an input, lies inside an input folder, or holds an input is refused.
2. A folder belongs to a run of a command only through its manifest (``facedefense.json``, written by
   the same command): every visible file in the folder must be listed there. Files of unknown origin
   (a user's photos, another command's run, a manifest that cannot be read) are never replaced or
   deleted: the claim is refused. Manifest entries that point outside the folder are ignored.
3. A folder that holds an earlier run is refused unless the new run continues it (``"add"``, or a
   resumed run) or replaces it (``"overwrite"``: only the files that run listed are removed).
4. A single file is replaced only when ``written_by`` proves that the same command wrote it.
5. A claimed folder is locked (``.facedefense.lock``, an advisory ``flock``) while the run works: a
   second run into it is refused instead of interleaving its files with the first's.

Writes go through [`facedefense.io`][facedefense.io]'s atomic helpers (temporary file, then rename; the
umask's permissions), and a folder's manifest records ``status`` (``running``, ``completed``,
``interrupted``, ``failed``), so whatever a failure or a signal leaves is marked as such.

Examples:
    >>> with OutputFolder.claim("out", "attack", inputs=[Path("photos")]) as folder:  # doctest: +SKIP
    ...     write_json({"command": "attack", "files": ["a.png"]}, folder.path / MANIFEST_NAME)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from facedefense.errors import ConfigError, OutputError

MANIFEST_NAME = "facedefense.json"
LOCK_NAME = ".facedefense.lock"
#: Folder inside an output where identity-scoped defenders keep by-products and resumable state.
WORK_DIR_NAME = ".facedefense-work"
#: What a run does with an output folder that holds an earlier run of the same command: refuse (the
#: default), add to it (its files kept unless rewritten), or overwrite it (its files removed first).
EXISTING = ("refuse", "add", "overwrite")


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of the run that wrote ``folder``, or None (absent, unreadable or not an object)."""
    try:
        data = json.loads((Path(folder) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _inside(folder: Path, relative: Any) -> bool:
    """Whether the manifest entry ``relative`` names a path inside ``folder`` (no absolute path, no
    ``..`` escape, no symlink out)."""
    if not isinstance(relative, str) or not relative or "\0" in relative or Path(relative).is_absolute():
        return False
    root = folder.resolve()
    return (root / relative).resolve().is_relative_to(root)


def listed_files(manifest: dict[str, Any], folder: str | Path) -> set[str]:
    """Relative paths (inside ``folder``) that a run's manifest says it planned or wrote: the
    ``output`` of its ``inputs`` and ``images`` entries and its ``files`` list."""
    folder = Path(folder)
    entries = [*_list(manifest.get("inputs")), *_list(manifest.get("images"))]
    names = [entry.get("output") for entry in entries if isinstance(entry, dict)] + _list(manifest.get("files"))
    return {str(Path(name)) for name in names if _inside(folder, name)}


def listed_folders(manifest: dict[str, Any], folder: str | Path) -> set[str]:
    """Relative folders that a run owns whole (its ``folders`` list, e.g. a benchmark's stage cache)."""
    return {str(Path(name)) for name in _list(manifest.get("folders")) if _inside(Path(folder), name)}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def visible_files(folder: Path) -> list[Path]:
    """Files under ``folder`` (subfolders included), hidden ones (the lock, the work folder) excepted."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            found.extend(p for p in sorted(entry.rglob("*")) if not p.is_dir() and not p.name.startswith("."))
        else:
            found.append(entry)
    return found


def check_location(output: str | Path, inputs: Iterable[str | Path] = (), *, kind: str = "output folder") -> Path:
    """Refuse an output that is an input, lies inside an input folder, or holds an input.

    Args:
        output: the folder or file a command is about to write.
        inputs: the files and folders it reads (photos, references, checkpoints, configs).
        kind: how messages name ``output`` (``"output folder"``, ``"--json file"``, ...).

    Raises:
        OutputError: one line naming the input.
    """
    output = Path(output)
    resolved = output.resolve()
    for source in inputs:
        source = Path(source)
        real = source.resolve()
        if real == resolved or source.absolute() == output.absolute():
            raise OutputError(f"{kind} {output} is the input {source}; choose another")
        if real.is_dir() and resolved.is_relative_to(real):
            raise OutputError(f"{kind} {output} lies inside the input folder {source}; choose another")
        if resolved in (real.parent, source.absolute().parent) or real.is_relative_to(resolved):
            raise OutputError(f"{kind} {output} holds the input {source}; choose another")
    return output


def _check_folder_writable(output: Path) -> None:
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: exists and is not a folder")
    existing = output.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create output folder {output}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == output.resolve() else f"cannot be created: {existing} is not writable"
        raise OutputError(f"output folder {output} {what} (permission denied)")


def _names(paths: Sequence[Path], root: Path) -> str:
    return ", ".join(str(p.relative_to(root)) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")


@dataclass
class OutputFolder:
    """A command run's claim on its output folder (see the module's rules). Use it as a context
    manager, or call [`release`][facedefense.outputs.OutputFolder.release] when the run ends (the lock is also
    freed when the process exits).

    Attributes:
        path: the folder (created by the claim unless ``dry_run``).
        command: the command that claimed it (``"attack"``, ``"train"``, ...).
        earlier: the manifest of the earlier run the new one adds to or resumes (None otherwise).
    """

    path: Path
    command: str
    earlier: dict[str, Any] | None = None
    how_to_continue: str = field(default="", repr=False)
    _lock: Any = field(default=None, repr=False)

    @classmethod
    def claim(
        cls,
        path: str | Path,
        command: str,
        *,
        inputs: Iterable[str | Path] = (),
        existing: str = "refuse",
        dry_run: bool = False,
        how_to_continue: str = "continue it (--add, existing='add'), replace it (--overwrite, existing='overwrite')",
    ) -> OutputFolder:
        """Check ``path`` against the rules, then create and lock it (nothing is created with ``dry_run``).

        Args:
            path: the output folder.
            command: the claiming command; an earlier run must be of the same command.
            inputs: files and folders the command reads (rule 1).
            existing: ``"refuse"``, ``"add"`` (also for a resumed run) or ``"overwrite"``.
            dry_run: check only (a CLI checks before it builds the method, then claims for real).
            how_to_continue: the refusal's advice for a folder holding an earlier run (the
                command's own flags, e.g. ``"continue it (--resume), replace it (--overwrite)"``).

        Raises:
            OutputError: a rule refuses the folder (one line).
        """
        if existing not in EXISTING:
            raise ConfigError(f"existing must be one of {', '.join(EXISTING)}, got {existing!r}")
        folder = Path(path)
        check_location(folder, inputs)
        _check_folder_writable(folder)
        claim = cls(folder, command, how_to_continue=how_to_continue)
        claim.earlier = claim._judge(existing, dry_run=True)  # read-only: nothing is created in a refused folder
        if dry_run:
            return claim
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"output folder {folder} cannot be created ({exc.strerror or exc})") from exc
        claim._lock = _acquire_lock(folder)
        try:  # again under the lock: another run may have finished in between
            claim.earlier = claim._judge(existing, dry_run=False)
        except BaseException:
            claim.release()
            raise
        return claim

    def _judge(self, existing: str, dry_run: bool) -> dict[str, Any] | None:
        """Apply rules 2 and 3 to what the folder holds; returns the earlier manifest to continue."""
        folder = self.path
        if not folder.is_dir():
            return None
        files = visible_files(folder)
        if not files:
            return None
        earlier = read_manifest(folder)
        if earlier is not None and earlier.get("command") != self.command:
            other = earlier.get("command")
            raise OutputError(
                f"output folder {folder} holds a run of another command ({other or 'unknown'}); "
                "it is never replaced or deleted: choose an empty or new folder"
            )
        if earlier is not None and [p.name for p in files] == [MANIFEST_NAME] and not listed_files(earlier, folder):
            return None  # only the manifest of a run that wrote nothing: nothing to keep or to lose
        ours = self.owned(earlier) if earlier is not None else set()
        whole = listed_folders(earlier, folder) if earlier is not None else set()
        foreign = [p for p in files if not _owned(p.relative_to(folder), ours, whole)]
        if foreign:
            raise OutputError(
                f"output folder {folder} holds files no facedefense {self.command} run wrote there "
                f"({_names(foreign, folder)}); they are never replaced or deleted: choose an empty or new folder"
            )
        if existing == "refuse":
            raise OutputError(
                f"output folder {folder} already holds an earlier run of {self.command} ({_names(files, folder)}); "
                f"{self.how_to_continue}, or choose another folder"
            )
        if existing == "add" or dry_run:
            return earlier
        for relative in sorted(ours - {MANIFEST_NAME}):
            (folder / relative).unlink(missing_ok=True)
        for relative in whole:
            shutil.rmtree(folder / relative, ignore_errors=True)
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
            if not sub.name.startswith(".") and not any(sub.iterdir()):
                sub.rmdir()
        shutil.rmtree(folder / WORK_DIR_NAME, ignore_errors=True)
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        return None

    def owned(self, manifest: dict[str, Any] | None = None) -> set[str]:
        """Relative paths the run of ``manifest`` (default: the earlier run) wrote, manifest included."""
        manifest = self.earlier if manifest is None else manifest
        return {MANIFEST_NAME, *listed_files(manifest, self.path)} if manifest is not None else set()

    def release(self) -> None:
        """Unlock the folder (idempotent)."""
        if self._lock is not None:
            handle, self._lock = self._lock, None
            try:
                (self.path / LOCK_NAME).unlink(missing_ok=True)
            except OSError:
                pass
            handle.close()

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _owned(relative: Path, files: set[str], folders: set[str]) -> bool:
    return str(relative) in files or any(relative.is_relative_to(folder) for folder in folders)


def _acquire_lock(folder: Path) -> Any:
    """An exclusive advisory lock on ``folder`` for this process's run (POSIX ``flock``; no lock
    where the platform has none). The kernel frees it when the process ends, however it ends."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        return None
    try:
        handle = open(folder / LOCK_NAME, "a+")  # noqa: SIM115 (held until release)
    except OSError as exc:
        raise OutputError(f"output folder {folder} cannot be written ({exc.strerror or exc})") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise OutputError(
            f"output folder {folder} is being written by another facedefense run; wait for it or choose another folder"
        ) from None
    return handle


def claim_file(
    path: str | Path,
    command: str,
    *,
    inputs: Iterable[str | Path] = (),
    written_by: Callable[[Path], bool] | None = None,
    kind: str = "output file",
) -> Path:
    """Check that ``path`` may be written as one file (rules 1 and 4), before any work.

    Args:
        path: the file to write (its folder must exist and be writable).
        command: the writing command, for messages.
        inputs: files and folders the command reads.
        written_by: proves that an existing ``path`` is this command's earlier output (e.g.
            [`json_written_by`][facedefense.outputs.json_written_by]); without it an existing file is never
            replaced.
        kind: how messages name ``path`` (``"--json file"``, ...).

    Raises:
        OutputError: one line naming the reason.
    """
    from facedefense.io import check_writable_file

    path = Path(path)
    check_location(path, inputs, kind=kind)
    check_writable_file(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise OutputError(f"{kind} {path} exists and is not a plain file; choose another name")
    if path.exists() and not (written_by is not None and written_by(path)):
        raise OutputError(
            f"{kind} {path} already exists and no facedefense {command} run wrote it; it is never "
            "replaced: choose another name"
        )
    return path


def json_written_by(command: str) -> Callable[[Path], bool]:
    """A ``written_by`` for JSON outputs: the file is an object whose ``command`` is ``command``."""

    def check(path: Path) -> bool:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and data.get("command") == command

    return check
