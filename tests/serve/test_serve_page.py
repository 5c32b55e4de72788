"""The page served at ``/``: self-contained (nothing loaded from elsewhere), calling routes that exist,
reading headers the API sends, and writing zips that unzip (its JavaScript run by Node when present)."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import zipfile

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'facedefense[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from facedefense.serve import create_app  # noqa: E402
from facedefense.serve.app import PAGE  # noqa: E402


@pytest.fixture(scope="module")
def client():
    client = TestClient(create_app({"example_texture": {"eps": 4 / 255}}))
    yield client
    client.app.state.service.close()


def script() -> str:
    return re.search(r"<script>(.*)</script>", PAGE.read_text(encoding="utf-8"), re.S).group(1)


def test_the_page_is_self_contained_and_says_when_it_runs_a_demo(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must load nothing from elsewhere"
    assert "@import" not in page and "url(" not in page and "<script src" not in page
    assert "protects NOTHING" in page  # the demo banner, shown when /v1/methods says demo
    assert "body.demo" in script()


def test_the_page_calls_routes_that_exist_and_reads_headers_the_api_sends(client):
    code = script()
    routes = {route.path for route in client.app.routes}
    called = set(re.findall(r'"(v1/[a-z/]+)', code))
    assert called == {"v1/methods", "v1/protect", "v1/jobs", "v1/jobs/"}
    assert {f"/{path}" for path in called if not path.endswith("/")} <= routes
    assert {"/v1/jobs/{job_id}", "/v1/jobs/{job_id}/result"} <= routes and '"/result"' in code
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(buffer, "PNG")
    answer = client.post("/v1/protect", files={"file": ("a.png", buffer.getvalue(), "image/png")})
    read = set(re.findall(r'answer\.header\("([^"]+)"\)', code))
    assert read == {"X-Facedefense-Facts", "X-Facedefense-Eps-Gray-Levels"}
    for header in read:
        assert header.lower() in answer.headers, header
    facts = json.loads(answer.headers["x-facedefense-facts"])
    for key in ("output", "linf_gray_levels", "within_budget"):
        assert key in facts and f"facts.{key}" in code


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed: the page's zip writer is not run")
def test_the_pages_zip_writer_makes_a_valid_zip():
    zip_code = re.search(r"// --- zip.*?// --- end zip", script(), re.S).group(0)
    driver = zip_code + """
const encoder = new TextEncoder();
const payload = new Uint8Array(70000).map((_, i) => (i * 7919) % 256);
zip([{ name: "portrait.png", data: payload }, { name: "ünïcode.png", data: encoder.encode("x") },
     { name: "manifest.json", data: encoder.encode('{"images": []}') }])
  .arrayBuffer().then((buffer) => process.stdout.write(Buffer.from(buffer).toString("base64")));
"""
    out = subprocess.run(["node", "-e", driver], capture_output=True, text=True, check=True, timeout=30).stdout
    archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(out)))
    assert archive.testzip() is None  # every CRC matches
    assert archive.namelist() == ["portrait.png", "ünïcode.png", "manifest.json"]
    assert archive.read("portrait.png") == bytes((i * 7919) % 256 for i in range(70000))
    assert json.loads(archive.read("manifest.json")) == {"images": []}
