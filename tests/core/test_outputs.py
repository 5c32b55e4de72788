"""The output claim (facedefense.outputs): the rules every writing command follows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from facedefense.errors import OutputError
from facedefense.outputs import (
    LOCK_NAME,
    MANIFEST_NAME,
    OutputFolder,
    claim_file,
    json_written_by,
    listed_files,
)


def _manifest(folder, command="attack", **entries):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_NAME).write_text(json.dumps({"command": command, **entries}))


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_folder_of_user_files_is_refused_and_untouched(tmp_path):
    album = tmp_path / "album"
    album.mkdir()
    (album / "e0.png").write_bytes(b"user photo")
    before = _snapshot(tmp_path)
    for existing in ("refuse", "add", "overwrite"):
        with pytest.raises(OutputError, match=r"holds files no facedefense attack run wrote there \(e0.png\)"):
            OutputFolder.claim(album, "attack", existing=existing)
    assert _snapshot(tmp_path) == before and not (album / LOCK_NAME).exists()


def test_an_empty_or_new_folder_is_claimed_and_locked(tmp_path):
    with OutputFolder.claim(tmp_path / "new" / "out", "attack") as claim:
        assert claim.earlier is None and (claim.path / LOCK_NAME).exists()
        with pytest.raises(OutputError, match="being written by another facedefense run"):
            OutputFolder.claim(tmp_path / "new" / "out", "attack", existing="add")
    assert not (claim.path / LOCK_NAME).exists()
    OutputFolder.claim(tmp_path / "new" / "out", "attack").release()  # free again


def test_dry_run_creates_nothing(tmp_path):
    claim = OutputFolder.claim(tmp_path / "out", "train", dry_run=True)
    assert claim.earlier is None and not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["is", "inside", "holds"])
def test_an_output_that_is_inside_or_holds_an_input_is_refused(tmp_path, where):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"x")
    output = {"is": photos, "inside": photos / "out", "holds": tmp_path}[where]
    with pytest.raises(OutputError, match={"is": "is the input", "inside": "lies inside the input folder", "holds": "holds the input"}[where]):
        OutputFolder.claim(output, "attack", inputs=[photos])
    with pytest.raises(OutputError):
        claim_file(photos / "a.png" if where == "is" else photos / "d0.json", "pairs", inputs=[photos])
    assert (photos / "a.png").read_bytes() == b"x" and not (photos / "out").exists()


def test_another_commands_run_is_not_ours(tmp_path):
    out = tmp_path / "out"
    _manifest(out, "protect", images=[{"output": "a.png"}])
    (out / "a.png").write_bytes(b"protected")
    with pytest.raises(OutputError, match=r"holds a run of another command \(protect\)"):
        OutputFolder.claim(out, "attack", existing="overwrite")
    assert (out / "a.png").read_bytes() == b"protected"


def test_an_earlier_run_is_refused_continued_or_replaced_file_by_file(tmp_path):
    out = tmp_path / "out"
    _manifest(out, files=["model/w.safetensors", "images/p/0000.png"])
    for name in ("model/w.safetensors", "images/p/0000.png"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(b"ours")
    with pytest.raises(OutputError, match="already holds an earlier run of attack"):
        OutputFolder.claim(out, "attack")
    with OutputFolder.claim(out, "attack", existing="add") as claim:
        assert claim.earlier["files"] == ["model/w.safetensors", "images/p/0000.png"]
        assert claim.owned() == {MANIFEST_NAME, "model/w.safetensors", "images/p/0000.png"}
    with OutputFolder.claim(out, "attack", existing="overwrite") as claim:
        assert claim.earlier is None
    assert [p.name for p in out.iterdir()] == []  # everything listed removed, the lock released


def test_a_user_file_beside_an_earlier_run_blocks_even_overwrite(tmp_path):
    out = tmp_path / "out"
    _manifest(out, files=["model/w.safetensors"])
    (out / "model").mkdir()
    (out / "model" / "w.safetensors").write_bytes(b"ours")
    (out / "images" / "p").mkdir(parents=True)
    (out / "images" / "p" / "0000.png").write_bytes(b"the user's")
    before = _snapshot(tmp_path)
    with pytest.raises(OutputError, match=r"\(images/p/0000.png\)"):
        OutputFolder.claim(out, "attack", existing="overwrite")
    assert _snapshot(tmp_path) == before


def test_planted_entries_outside_the_folder_are_ignored(tmp_path):
    out = tmp_path / "out"
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"keep me")
    _manifest(out, files=["../victim.png", str(victim), "ok.png", "a\0b"], images=[{"output": "../victim.png"}])
    (out / "ok.png").write_bytes(b"ours")
    assert listed_files(json.loads((out / MANIFEST_NAME).read_text()), out) == {"ok.png"}
    OutputFolder.claim(out, "attack", existing="overwrite").release()
    assert victim.read_bytes() == b"keep me" and not (out / "ok.png").exists()


def test_an_unreadable_manifest_proves_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("{not json")
    (out / "a.png").write_bytes(b"?")
    with pytest.raises(OutputError, match="no facedefense attack run wrote"):
        OutputFolder.claim(out, "attack", existing="overwrite")
    assert (out / "a.png").exists()


def test_a_single_file_is_replaced_only_when_the_command_wrote_it(tmp_path):
    photo = tmp_path / "d0.png"
    photo.write_bytes(b"photo")
    with pytest.raises(OutputError, match="already exists and no facedefense evaluate run wrote it"):
        claim_file(photo, "evaluate", written_by=json_written_by("evaluate"))
    ours = tmp_path / "scores.json"
    ours.write_text(json.dumps({"command": "evaluate"}))
    assert claim_file(ours, "evaluate", written_by=json_written_by("evaluate")) == ours
    with pytest.raises(OutputError, match="no facedefense pairs run wrote it"):
        claim_file(ours, "pairs", written_by=json_written_by("pairs"))
    with pytest.raises(OutputError, match="is a folder"):
        claim_file(tmp_path, "evaluate")
    assert photo.read_bytes() == b"photo"


def test_the_lock_is_freed_when_the_process_dies(tmp_path):
    out = tmp_path / "out"
    code = f"import os; from facedefense.outputs import OutputFolder; OutputFolder.claim({str(out)!r}, 'train'); os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True)  # claims, then dies without releasing
    assert (out / LOCK_NAME).exists()
    OutputFolder.claim(out, "train").release()  # not refused: the kernel dropped the dead run's lock


def test_sigterm_ends_a_command_like_ctrl_c():
    """Every command handles KeyboardInterrupt (manifest ``interrupted``, exit 130): SIGTERM becomes one."""
    import signal

    from facedefense.cli.common import stop_on_sigterm

    previous = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_identity_with_its_photos_one_level_too_deep_is_named(tmp_path):
    from PIL import Image

    from facedefense.batch import find_identities

    for folder in ("people/alice", "people/bob/set_A"):
        (tmp_path / folder).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / folder / "a.png")
    with pytest.warns(UserWarning, match=r"identity folder\(s\) bob hold their images only in subfolders"):
        identities = find_identities([tmp_path / "people"])
    assert [identity.name for identity in identities] == ["alice"]


def test_cli_warnings_are_one_line():
    import warnings

    from facedefense.cli.common import one_line_warnings

    previous = warnings.formatwarning
    try:
        one_line_warnings()
        assert warnings.formatwarning("left out\nmore", UserWarning, "x.py", 3) == "warning: left out\n"
    finally:
        warnings.formatwarning = previous
