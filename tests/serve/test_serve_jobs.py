"""Jobs: step progress from the defender's bars, the result once done, cancellation mid-way."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'facedefense[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from facedefense.interfaces import Defender  # noqa: E402
from facedefense.progress import bar  # noqa: E402
from facedefense.serve import Limits, create_app  # noqa: E402

EPS = 4 / 255


def png(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


class Stepper(Defender):
    """Adds eps over ``STEPS`` steps of a progress bar; each step waits for ``go`` (set by the test)."""

    name: ClassVar[str] = "test_stepper"
    STEPS = 3

    def __init__(self, **options):
        super().__init__(**options)
        self.go = threading.Semaphore(0)
        self.steps_taken = 0

    def _perturb(self, images, generator):
        for _ in bar(range(self.STEPS), desc="PGD"):
            assert self.go.acquire(timeout=10), "the test never let the step run"
            self.steps_taken += 1
        return images + self.config.eps


def wait_for(client, job_id, condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        state = client.get(f"/v1/jobs/{job_id}").json()
        if condition(state):
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.01)


def test_a_job_reports_its_steps_and_hands_over_the_png():
    stepper = Stepper(eps=EPS, device="cpu")
    client = TestClient(create_app({"stepper": stepper}))
    started = client.post("/v1/jobs", files={"file": ("me.png", png(), "image/png")})
    assert started.status_code == 202, started.text
    job = started.json()
    assert started.headers["location"] == f"/v1/jobs/{job['id']}" and job["images"] == 1
    stepper.go.release()
    state = wait_for(client, job["id"], lambda s: s["step"] and s["step"]["done"] == 1)
    assert state["status"] == "running" and state["step"] == {"image": 0, "name": "me.png", "desc": "PGD", "done": 1, "total": 3}
    early = client.get(f"/v1/jobs/{job['id']}/result")
    assert early.status_code == 409 and "running" in early.json()["error"]
    stepper.go.release()
    stepper.go.release()
    state = wait_for(client, job["id"], lambda s: s["status"] == "done")
    assert state["results"][0]["output"] == "me.png" and state["results"][0]["linf_gray_levels"] == 4
    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert result.headers["x-facedefense-within-budget"] == "true"
    assert client.app.state.service.admitted == 0  # the job gave its place back
    assert client.delete(f"/v1/jobs/{job['id']}").json()["status"] == "done"  # forgotten
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    client.app.state.service.close()


def test_cancelling_stops_the_running_image_and_drops_the_others():
    stepper = Stepper(eps=EPS, device="cpu")
    client = TestClient(create_app({"stepper": stepper}, Limits(queue_size=4)))
    service = client.app.state.service
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(3)]
    job = client.post("/v1/jobs", files=files).json()
    assert service.admitted == 3
    stepper.go.release()
    wait_for(client, job["id"], lambda s: s["step"] and s["step"]["done"] == 1)
    cancelled = client.delete(f"/v1/jobs/{job['id']}").json()
    assert cancelled["status"] == "cancelling"
    stepper.go.release()  # the running image's next step hears the cancellation after it
    state = wait_for(client, job["id"], lambda s: s["status"] == "cancelled")
    assert state["done"] == 0 and stepper.steps_taken == 2  # stopped mid-image; the other two never started
    assert service.admitted == 0
    assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 409
    service.close()


def test_a_job_of_several_images_gives_a_zip_and_lists_bad_uploads():
    client = TestClient(create_app({"example_texture": {"eps": EPS}}))
    files = [("files", ("a.png", png(1), "image/png")), ("files", ("b.jpg", b"not an image", "image/jpeg"))]
    job = client.post("/v1/jobs", files=files).json()
    state = wait_for(client, job["id"], lambda s: s["status"] in ("done", "failed"))
    assert state["status"] == "done" and state["failures"][0]["status"] == 415
    archive = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/result").content))
    assert archive.namelist() == ["a.png", "manifest.json"]
    assert client.get("/v1/jobs/0123").status_code == 404
    client.app.state.service.close()
