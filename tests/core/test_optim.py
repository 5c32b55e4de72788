"""The optimization engine: steps, schedules, momentum, EOT, checkpoint/resume."""

from __future__ import annotations

import pytest
import torch

from facedefense.errors import ConfigError, ResumeError, UnknownMethodError
from facedefense.optim import EOT, LinfPGD, RunCheckpoint, linf_pgd, step_size_at, step_sizes
from facedefense.runtime import fused_adam


def _setup(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g)


def test_schedules() -> None:
    assert step_sizes(1.0, 3) == [1.0, 1.0, 1.0]
    assert [round(s, 2) for s in step_sizes(1.0, 3, "linear")] == [1.0, 0.67, 0.34]
    cosine = step_sizes(1.0, 4, "cosine")
    assert cosine[0] == pytest.approx(1.0) and all(a > b for a, b in zip(cosine, cosine[1:]))
    assert step_size_at(1.0, 4, 4, "cosine") == pytest.approx(0.01)
    with pytest.raises(ConfigError):
        step_sizes(1.0, 3, "exponential")  # type: ignore[arg-type]


def test_fused_adam_where_torch_has_it_with_the_default_update() -> None:
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    grads = [[torch.randn(w.shape, generator=g) for w in weights] for _ in range(3)]
    assert fused_adam(weights) is True
    # None (torch's foreach default), never False: fused=False would also turn foreach off
    assert fused_adam([torch.zeros(2, dtype=torch.long)]) is None
    assert fused_adam([torch.empty(2, device="meta")]) is None
    assert fused_adam([]) is None
    trained = []
    for fused in (None, fused_adam(weights)):
        copies = [w.clone().requires_grad_(True) for w in weights]
        optimizer = torch.optim.AdamW(copies, lr=1e-2, weight_decay=1e-2, fused=fused)
        for step_grads in grads:
            for copy, grad in zip(copies, step_grads):
                copy.grad = grad.clone()
            optimizer.step()
        trained.append(copies)
    assert optimizer.defaults["fused"] is True
    assert not torch.equal(trained[1][0], weights[0])
    for default, fused in zip(*trained):
        torch.testing.assert_close(fused, default, rtol=0, atol=1e-6)


@pytest.mark.parametrize("minimize", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_pgd_moves_objective_within_budget(minimize: bool, momentum: float) -> None:
    x, w = _setup()
    eps = 8 / 255
    adversarial, start, end = linf_pgd(
        x, lambda a: (a * w).flatten(1).sum(1), eps=eps, steps=6, step_size=2 / 255, minimize=minimize,
        momentum=momentum, random_start=True, generator=torch.Generator().manual_seed(1),
    )
    assert (adversarial - x).abs().max() <= eps + 1e-6 and adversarial.min() >= 0 and adversarial.max() <= 1
    assert ((end < start) if minimize else (end > start)).all()


def test_generator_makes_it_reproducible() -> None:
    x, w = _setup()

    def run(seed: int) -> torch.Tensor:
        return linf_pgd(x, lambda a: (a * w).flatten(1).sum(1), eps=0.03, steps=2, step_size=0.01, minimize=False,
                        random_start=True, generator=torch.Generator().manual_seed(seed))[0]

    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


def test_eot_through_registered_purifier() -> None:
    x, w = _setup()
    eot = EOT.from_names("none, jpeg", samples=3)
    assert eot.names == ["none", "jpeg"]
    picks = [name for name, _ in eot.draw(torch.Generator().manual_seed(0))]
    assert len(picks) == 3 and set(picks) <= {"none", "jpeg"}
    pgd = LinfPGD(eps=8 / 255, step_size=2 / 255, eot=EOT.from_names("jpeg"))
    state = pgd.run(x, lambda a: (a * w).flatten(1).sum(1), steps=2, generator=torch.Generator().manual_seed(0))
    assert state.step == 2 and not torch.equal(state.adversarial, x)
    assert EOT.from_names("") is None
    with pytest.raises(UnknownMethodError):
        EOT.from_names("jpeg,no-such-purifier")


class _Interrupt(Exception):
    pass


def test_checkpoint_resume_gives_the_uninterrupted_result(tmp_path) -> None:
    x, w = _setup()

    def objective_factory(generator: torch.Generator, stop_at: int | None):
        calls = {"n": 0}

        def objective(a: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            if stop_at is not None and calls["n"] > stop_at:
                raise _Interrupt
            noise = torch.randn(a.shape, generator=generator)  # the objective draws randomness too
            return ((a + 0.1 * noise) * w).flatten(1).sum(1)

        return objective

    def run(checkpoint, stop_at=None):
        generator = torch.Generator().manual_seed(5)
        return linf_pgd(x, objective_factory(generator, stop_at), eps=0.05, steps=7, step_size=0.01, minimize=False,
                        momentum=0.5, random_start=True, generator=generator, checkpoint=checkpoint,
                        checkpoint_every=2, progress=False)

    reference = run(None)
    checkpoint = RunCheckpoint(tmp_path / "work", {"method": "test", "eps": 0.05})
    with pytest.raises(_Interrupt):
        run(checkpoint, stop_at=5)
    assert checkpoint.load()["pgd"]["step"] == 4
    resumed = run(checkpoint)
    for a, b in zip(reference, resumed):
        assert torch.equal(a, b)


def test_checkpoint_refuses_another_run(tmp_path) -> None:
    RunCheckpoint(tmp_path, {"method": "aspl", "eps": 0.025}).save({"round": 3})
    assert RunCheckpoint(tmp_path, {"method": "aspl", "eps": 0.025}).load() == {"round": 3}
    with pytest.raises(ResumeError, match="eps=0.025"):
        RunCheckpoint(tmp_path, {"method": "aspl", "eps": 0.05}).load()
    with pytest.raises(ResumeError, match="method='aspl'"):
        RunCheckpoint(tmp_path, {"method": "fsmg", "eps": 0.025}).load()
    (tmp_path / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeError, match="unreadable"):
        RunCheckpoint(tmp_path, {"method": "aspl"}).load()
    assert RunCheckpoint(None, {}).load() is None


@pytest.mark.parametrize("saved", [[1, 2, 3], {"key": [1], "state": {}}, {"key": {}, "state": [1]}, {"key": {}}, "text"])
def test_checkpoint_of_the_wrong_structure_is_one_resume_error(tmp_path, saved) -> None:
    """An ASPL ``state.pt`` holding a list raised AttributeError in ``RunCheckpoint.load``."""
    torch.save(saved, tmp_path / "state.pt")
    with pytest.raises(ResumeError, match=r"state.pt: not a saved run state"):
        RunCheckpoint(tmp_path, {}).load()


def test_shards_are_disjoint_and_complete():
    from pathlib import Path

    from facedefense.batch import IdentityFiles, _shard
    from facedefense.distributed import Shard, merge_manifests

    identities = [IdentityFiles(f"id{i}", [Path(f"id{i}/{j}.png") for j in range(i + 1)]) for i in range(3)]
    for whole in (True, False):
        parts = [_shard(identities, Shard(rank, 2), whole=whole) for rank in range(2)]
        files = [p for part in parts for identity in part for p in identity.paths]
        assert sorted(files) == sorted(p for identity in identities for p in identity.paths)
        if whole:  # an identity is never split
            assert [[i.name for i in part] for part in parts] == [["id0", "id2"], ["id1"]]
    merged = merge_manifests([{"images": [1], "failures": []}, {"images": [2, 3], "failures": [4]}])
    assert merged["summary"] == {"processed": 3, "failed": 1} and merged["processes"] == 2


@pytest.mark.integration
def test_accelerate_launch_two_cpu_processes(tmp_path, tiny_sd_path):
    """`accelerate launch -m facedefense protect` with two processes: every photo once, one manifest."""
    import json
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from facedefense.io import save_image
    from facedefense.testing.tiny_models import sample_faces

    inputs = tmp_path / "in"
    inputs.mkdir()
    for index, face in enumerate(sample_faces(5, 32)):
        save_image(face, inputs / f"{index}.png")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # accelerate's CLI imports timm -> torchvision, which needs the same shim as facedefense here
    launcher = ("import sys; from facedefense._compat.torchvision_ops import ensure_torchvision_importable;"
                "ensure_torchvision_importable(); from accelerate.commands.accelerate_cli import main;"
                "sys.argv = ['accelerate', *sys.argv[1:]]; main()")
    command = [sys.executable, "-c", launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "facedefense", "protect", str(inputs), "--method", "photoguard", "--model", str(tiny_sd_path),
               "--steps", "1", "--device", "cpu", "--dtype", "float32", "--output", str(tmp_path / "out"), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((tmp_path / "out" / "facedefense.json").read_text())
    assert manifest["processes"] == 2 and manifest["status"] == "completed"
    assert manifest["summary"] == {"processed": 5, "failed": 0, "planned": 5, "not_processed": 0, "unchanged": 0, "completed": True}
    assert sorted(Path(e["input"]).name for e in manifest["images"]) == [f"{i}.png" for i in range(5)]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"{i}.png" for i in range(5)]


def test_run_checkpoint_save_is_atomic_and_one_line_on_a_full_disk(tmp_path, monkeypatch):
    """A failed save leaves the previous state and no temporary file, and says so in one line."""
    import errno

    from facedefense.errors import OutputError

    checkpoint = RunCheckpoint(tmp_path, {"method": "aspl"})
    checkpoint.save({"round": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OutputError, match="No space left on device"):
        checkpoint.save({"round": 2})
    monkeypatch.undo()
    assert checkpoint.load() == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.path.name]
