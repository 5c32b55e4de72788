"""Micro-batching of the amortized defenders: concurrent uploads share a forward pass and get the
very bytes they would get one at a time; the demo network says it is one."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'facedefense[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from facedefense.serve import Limits, create_app  # noqa: E402
from facedefense.serve.demo import create_demo_defender  # noqa: E402


def png(height: int, width: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def demo():
    return create_demo_defender()


def test_concurrent_uploads_are_batched_and_give_the_one_at_a_time_bytes(demo):
    uploads = [png(40, 32, 0), png(48, 48, 1), png(40, 32, 2), png(48, 48, 3), png(40, 32, 4), png(48, 48, 5)]
    one_at_a_time = TestClient(create_app({"rid": demo}, Limits(max_batch=1)))
    expected = [one_at_a_time.post("/v1/protect", files={"file": (f"{i}.png", data, "image/png")}).content
                for i, data in enumerate(uploads)]  # fmt: skip
    one_at_a_time.app.state.service.close()

    batched = TestClient(create_app({"rid": demo}, Limits(max_batch=3, max_wait_ms=1000)))
    loaded = batched.app.state.service.methods["rid"]
    assert loaded.runner.max_batch == 3
    answers: dict[int, bytes] = {}

    def post(index: int) -> None:
        response = batched.post("/v1/protect", files={"file": (f"{index}.png", uploads[index], "image/png")})
        assert response.status_code == 200, response.text
        answers[index] = response.content

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(uploads))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    batched.app.state.service.close()
    # The three 40x32 photos went through one forward pass, the three 48x48 ones through another.
    assert loaded.batches == {3: 2}
    assert batched.get("/healthz").json()["forward_passes"] == {"rid": {"calls": 2, "images": 6}}
    assert [answers[i] for i in range(len(uploads))] == expected
    assert all(a != b for a, b in zip(expected, uploads))


def test_the_demo_network_says_it_protects_nothing():
    client = TestClient(create_app())
    listed = client.get("/v1/methods").json()
    assert listed["demo"] is True and listed["methods"][0]["name"] == "demo"
    assert listed["methods"][0]["kind"] == "amortized" and listed["methods"][0]["max_batch"] == 8
    assert listed["methods"][0]["config"]["checkpoint"] == "demo-rid.safetensors"  # no server path published
    response = client.post("/v1/protect", files={"file": ("me.png", png(40, 32, 5), "image/png")})
    assert response.status_code == 200 and response.headers["x-facedefense-demo"] == "true"
    assert client.get("/healthz").json()["demo"] is True
    client.app.state.service.close()
