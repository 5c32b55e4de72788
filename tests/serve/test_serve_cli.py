"""``facedefense serve`` as a process: it starts, answers, and stops on SIGTERM (integration tier)."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'facedefense[serve]'")
import httpx  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.integration
def test_serve_starts_the_demo_answers_and_stops_on_sigterm(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "facedefense", "serve", "--port", str(port), "--keep", str(tmp_path / "kept")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[1]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        buffer = io.BytesIO()
        Image.fromarray(np.full((40, 32, 3), 90, np.uint8)).save(buffer, "JPEG")
        answer = httpx.post(f"{url}/v1/protect", files={"file": ("me.jpg", buffer.getvalue(), "image/jpeg")}, timeout=30)
        assert answer.status_code == 200 and answer.headers["x-facedefense-demo"] == "true"
        assert "protects NOTHING" in httpx.get(url, timeout=5).text
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert "DEMO" in stderr and f"http://127.0.0.1:{port}" in stderr and "Traceback" not in stderr
    assert sorted(p.suffix for p in (tmp_path / "kept").iterdir()) == [".jsonl", ".png"]
