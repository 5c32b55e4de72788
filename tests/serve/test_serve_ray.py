"""``facedefense serve --ray``: the app as a Ray Serve deployment on a local Ray instance, batching kept
(integration tier: starting Ray takes seconds)."""

from __future__ import annotations

import importlib.util
import io
import socket
import threading

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'facedefense[serve]'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from facedefense.serve import Limits, create_app  # noqa: E402

# Ray Serve is imported by the test itself (1.7 s): the unit tier collects this module without it.
pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray Serve is not installed: pip install 'ray[serve]'")


def png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.integration
def test_the_demo_on_ray_serve_batches_and_gives_the_in_process_bytes():
    serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install 'ray[serve]'")
    import ray

    from facedefense.serve.rayserve import ray_application

    uploads = [png(seed) for seed in range(4)]
    local = TestClient(create_app())
    expected = [local.post("/v1/protect", files={"file": (f"{i}.png", data, "image/png")}).content for i, data in enumerate(uploads)]
    local.app.state.service.close()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_application(None, Limits(max_batch=4, max_wait_ms=1000)), name="facedefense", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        listed = httpx.get(f"{url}/v1/methods", timeout=30).json()
        assert listed["demo"] is True and listed["methods"][0]["max_batch"] == 4
        answers: dict[int, httpx.Response] = {}

        def post(index: int) -> None:
            answers[index] = httpx.post(f"{url}/v1/protect", files={"file": (f"{index}.png", uploads[index], "image/png")}, timeout=60)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(len(uploads))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [answers[i].status_code for i in range(len(uploads))] == [200] * len(uploads)
        assert [answers[i].content for i in range(len(uploads))] == expected
        passes = httpx.get(f"{url}/healthz", timeout=30).json()["forward_passes"]["demo"]
        assert passes["images"] == 4 and passes["calls"] < 4  # concurrent requests shared a forward pass
        bad = httpx.post(f"{url}/v1/protect", files={"file": ("x.png", b"nope", "image/png")}, timeout=30)
        assert bad.status_code == 415 and list(bad.json()) == ["error"]
    finally:
        serve.shutdown()
        ray.shutdown()
