"""``facedefense serve``'s HTTP API in-process: formats, the library's guarantees, limits, errors, the
bounded queue, disconnects, the token, and batched answers equal to one-at-a-time answers."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import zipfile
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'facedefense[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from facedefense.errors import ConfigError  # noqa: E402
from facedefense.interfaces import Defender  # noqa: E402
from facedefense.serve import Limits, create_app  # noqa: E402
from facedefense.serve.limits import check_bind, is_loopback, token_matches  # noqa: E402

EPS = 4 / 255


def encoded(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(height: int = 40, width: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_one_line_error(response, status: int, match: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"] and "Traceback" not in body["error"]
    assert match.lower() in body["error"].lower(), body["error"]


@pytest.fixture(scope="module")
def texture_client():
    client = TestClient(create_app({"example_texture": {"eps": EPS, "device": "cpu"}}))
    yield client
    client.app.state.service.close()


def test_protect_keeps_name_size_orientation_alpha_and_icc_and_checks_the_written_budget(texture_client):
    rgba = photo(40, 32, 4)
    rgba[..., 3] = np.linspace(0, 255, 32, dtype=np.uint8)[None, :]
    profile = b"\x00\x00\x02\x0cfake-icc-profile-for-the-test"
    response = texture_client.post("/v1/protect", files={"file": ("portrait.PNG", encoded(rgba, icc_profile=profile), "image/png")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert 'filename="portrait.png"' in response.headers["content-disposition"]
    out = decoded(response.content)
    assert out.format == "PNG" and out.mode == "RGBA" and out.size == (32, 40)
    assert out.info.get("icc_profile") == profile
    written = np.asarray(out)
    np.testing.assert_array_equal(written[..., 3], rgba[..., 3])  # alpha carried over untouched
    distance = np.abs(written[..., :3].astype(int) - rgba[..., :3]).max()
    assert 0 < distance <= 4  # protected, within 4/255 on the bytes written
    facts = json.loads(response.headers["x-facedefense-facts"])
    assert facts["linf_gray_levels"] == distance and facts["within_budget"] is True
    assert response.headers["x-facedefense-linf-gray-levels"] == str(distance)
    assert response.headers["x-facedefense-eps-gray-levels"] == "4"

    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise
    jpeg = encoded(photo(40, 32), "JPEG", exif=exif, quality=95)
    response = texture_client.post("/v1/protect", files={"file": ("dir/../rotated.jpeg", jpeg, "image/jpeg")})
    assert response.status_code == 200, response.text
    assert decoded(response.content).size == (40, 32)  # upright: width and height swapped
    assert 'filename="rotated.png"' in response.headers["content-disposition"]


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF", "GIF", "PPM"])
def test_every_accepted_format(texture_client, fmt):
    response = texture_client.post("/v1/protect", files={"file": (f"x.{fmt.lower()}", encoded(photo(), fmt), "application/octet-stream")})
    assert response.status_code == 200, response.text
    assert decoded(response.content).size == (32, 40)


def test_the_format_comes_from_the_bytes_not_the_name(texture_client):
    png = encoded(photo())
    assert texture_client.post("/v1/protect", files={"file": ("notes.txt", png, "text/plain")}).status_code == 200
    raw = texture_client.post("/v1/protect?filename=raw.bin", content=png, headers={"content-type": "application/octet-stream"})
    assert raw.status_code == 200 and 'filename="raw.png"' in raw.headers["content-disposition"]
    assert_one_line_error(texture_client.post("/v1/protect", files={"file": ("face.png", b"<svg>not an image</svg>", "image/png")}), 415, "face.png: not an image")
    html = b"<html>" + png  # a PNG inside another file is not a PNG
    assert_one_line_error(texture_client.post("/v1/protect", files={"file": ("face.png", html, "image/png")}), 415)


def test_bad_uploads_are_one_line_errors(texture_client):
    png = encoded(photo())
    cases = [
        ({"files": {"file": ("empty.png", b"", "image/png")}}, 400, "empty"),
        ({"files": {"file": ("cut.png", png[: len(png) // 2], "image/png")}}, 422, "cut.png"),
        ({"files": {"file": ("tiny.png", encoded(photo(8, 8)), "image/png")}}, 422, "too small"),
        ({"files": {"file": ("strip.png", encoded(photo(20, 400)), "image/png")}}, 422, "aspect"),
        ({"files": {"other": ("a.png", png, "image/png")}}, 400, "field 'file'"),
        ({"files": [("file", ("a.png", png, "image/png")), ("file", ("b.png", png, "image/png"))]}, 400, "batch"),
        ({"data": {"file": "text"}}, 415, "multipart"),
    ]
    for request, status, match in cases:
        assert_one_line_error(texture_client.post("/v1/protect", **request), status, match)
    assert_one_line_error(texture_client.post("/v1/protect?method=aspl", files={"file": ("a.png", png, "image/png")}), 404, "not loaded")
    assert_one_line_error(texture_client.post("/v1/protect?envelope=xml", files={"file": ("a.png", png, "image/png")}), 400, "envelope")
    assert_one_line_error(texture_client.get("/v1/nothing"), 404)
    assert_one_line_error(texture_client.get("/v1/protect"), 405)


def test_size_and_pixel_limits(monkeypatch):
    client = TestClient(create_app({"example_texture": {"eps": EPS}}, Limits(max_upload_bytes=2000, max_pixels=40 * 32)))
    flat = np.full((40, 32, 3), 120, np.uint8)  # compresses to a small file
    assert client.post("/v1/protect", content=encoded(flat), headers={"content-type": "image/png"}).status_code == 200
    taller = encoded(np.full((41, 32, 3), 120, np.uint8))
    assert_one_line_error(client.post("/v1/protect", content=taller, headers={"content-type": "image/png"}), 413, "1,280-pixel limit")
    assert_one_line_error(client.post("/v1/protect", files={"file": ("big.bmp", encoded(photo(30, 30), "BMP"), "image/bmp")}), 413, "2,000 bytes")
    bomb = encoded(np.zeros((400, 400, 3), np.uint8))  # small file, many pixels
    assert len(bomb) < 2000
    assert_one_line_error(client.post("/v1/protect", files={"file": ("bomb.png", bomb, "image/png")}), 413, "160,000 pixels")
    client.app.state.service.close()
    monkeypatch.setenv("FACEDEFENSE_MAX_PIXELS", "1000")  # the library's variable is the default limit
    assert Limits().max_pixels == 1000


def test_png_level_changes_the_bytes_not_the_pixels(texture_client):
    """--png-level 1 answers the pixels level 6 answers (same seed), in other bytes; 10 is refused."""
    upload = {"file": ("face.png", encoded(photo(64, 64)), "image/png")}
    fast = TestClient(create_app({"example_texture": {"eps": EPS, "device": "cpu"}}, Limits(png_level=1)))
    try:
        assert fast.get("/v1/methods").json()["limits"]["png_level"] == 1
        level1 = fast.post("/v1/protect", files=upload)
    finally:
        fast.app.state.service.close()
    level6 = texture_client.post("/v1/protect", files=upload)
    assert level1.status_code == level6.status_code == 200
    assert level1.content != level6.content
    assert np.array_equal(np.asarray(decoded(level1.content)), np.asarray(decoded(level6.content)))
    with pytest.raises(ConfigError, match="png_level"):
        Limits(png_level=10)


def test_nothing_is_written_to_disk_without_keep_even_for_large_uploads(texture_client, monkeypatch, tmp_path):
    import tempfile

    def refuse(self):
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", refuse)
    large = encoded(photo(620, 600, seed=2), "BMP")  # 1.1 MB, over Starlette's 1 MB spool
    assert len(large) > 1_100_000
    response = texture_client.post("/v1/protect", files={"file": ("large.bmp", large, "image/bmp")})
    assert response.status_code == 200, response.text

    client = TestClient(create_app({"example_texture": {"eps": EPS}}, keep=tmp_path / "kept"))
    assert client.post("/v1/protect", files={"file": ("me.jpg", encoded(photo(), "JPEG"), "image/jpeg")}).status_code == 200
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert len(kept) == 2 and kept[0].endswith("-me.png") and kept[1] == "served.jsonl"
    line = json.loads((tmp_path / "kept" / "served.jsonl").read_text())
    assert line["input"] == "me.jpg" and line["kept"] == kept[0] and line["within_budget"] is True
    client.app.state.service.close()


def test_batch_endpoint_zips_the_pngs_with_a_manifest(texture_client):
    files = [
        ("files", ("a.jpg", encoded(photo(seed=3), "JPEG"), "image/jpeg")),
        ("files", ("b.png", encoded(photo(48, 40, seed=4)), "image/png")),
        ("files", ("c.png", b"garbage", "image/png")),
    ]
    response = texture_client.post("/v1/protect/batch", files=files)
    assert response.status_code == 200, response.text
    bundle = zipfile.ZipFile(io.BytesIO(response.content))
    assert sorted(bundle.namelist()) == ["a.png", "b.png", "manifest.json"]
    manifest = json.loads(bundle.read("manifest.json"))
    assert [entry["output"] for entry in manifest["images"]] == ["a.png", "b.png"]
    assert manifest["failures"][0]["input"] == "c.png" and manifest["failures"][0]["status"] == 415
    assert manifest["budget"]["eps_gray_levels"] == 4 and manifest["method"]["name"] == "example_texture"
    single = texture_client.post("/v1/protect", files={"file": files[1][1]})
    assert bundle.read("b.png") == single.content  # the same bytes as one image at a time
    assert_one_line_error(texture_client.post("/v1/protect/batch", files=[files[2]]), 415)


def test_envelope_and_methods(texture_client):
    png = encoded(photo())
    envelope = texture_client.post("/v1/protect?envelope=json", files={"file": ("a.png", png, "image/png")}).json()
    plain = texture_client.post("/v1/protect", files={"file": ("a.png", png, "image/png")})
    import base64

    assert base64.b64decode(envelope["png_base64"]) == plain.content
    assert envelope["budget"]["eps_gray_levels"] == 4 and envelope["within_budget"] is True
    checked = texture_client.post("/v1/protect?check=true", files={"file": ("a.png", png, "image/png")})
    check = json.loads(checked.headers["x-facedefense-facts"])["check"]
    written = np.asarray(decoded(checked.content), dtype=float)
    mse = ((written - np.asarray(decoded(png), dtype=float)) ** 2).mean()
    assert check["psnr"] == pytest.approx(10 * np.log10(255**2 / mse), abs=1e-3)  # PSNR of the bytes sent
    assert 0 < check["ssim"] < 1
    assert_one_line_error(texture_client.post("/v1/protect?check=maybe", files={"file": ("a.png", png, "image/png")}), 422, "check")
    listed = texture_client.get("/v1/methods").json()
    assert listed["demo"] is False and listed["methods"][0]["name"] == "example_texture"
    assert listed["methods"][0]["max_batch"] == 1  # not amortized: one image per call
    assert texture_client.get("/healthz").json()["status"] == "ok"
    schema = texture_client.get("/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/v1/protect"]["post"]["requestBody"]["content"]


# --- the queue, disconnects, tokens -----------------------------------------------------------------


class Gate(Defender):
    """Adds eps, but only once ``release`` is set; counts its calls."""

    name: ClassVar[str] = "test_gate"

    def __init__(self, **options):
        super().__init__(**options)
        self.release = threading.Event()
        self.calls = 0

    def _perturb(self, images, generator):
        self.calls += 1
        assert self.release.wait(10), "the test never released the gate"
        return images + self.config.eps


def wait_until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_full_queue_answers_503_with_retry_after():
    gate = Gate(eps=EPS, device="cpu")
    client = TestClient(create_app({"gate": gate}, Limits(queue_size=1, retry_after_s=3)))
    service = client.app.state.service
    png = encoded(photo())
    first: list = []
    worker = threading.Thread(target=lambda: first.append(client.post("/v1/protect", files={"file": ("a.png", png, "image/png")})))
    worker.start()
    try:
        wait_until(lambda: gate.calls == 1)
        busy = client.post("/v1/protect", files={"file": ("b.png", png, "image/png")})
        assert_one_line_error(busy, 503, "busy")
        assert busy.headers["retry-after"] == "3"
    finally:
        gate.release.set()
        worker.join(10)
    assert first[0].status_code == 200 and service.admitted == 0
    assert client.post("/v1/protect", files={"file": ("c.png", png, "image/png")}).status_code == 200
    too_many = client.post("/v1/protect/batch", files=[("files", ("a.png", png, "image/png"))] * 2)
    assert_one_line_error(too_many, 413, "at most 1 at once")
    service.close()


def test_a_client_that_disconnects_frees_its_place_and_its_image_is_not_computed():
    gate = Gate(eps=EPS, device="cpu")
    app = create_app({"gate": gate}, Limits(queue_size=4))
    service = app.state.service
    png = encoded(photo())

    async def call(gone: asyncio.Event) -> list[dict]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
            "path": "/v1/protect", "raw_path": b"/v1/protect", "root_path": "", "query_string": b"",
            "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(png)).encode())],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
        }  # fmt: skip
        body = [{"type": "http.request", "body": png, "more_body": False}]
        sent: list[dict] = []

        async def receive():
            if body:
                return body.pop()
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent

    async def scenario():
        stays, leaves = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(call(stays))
        while gate.calls == 0:  # the first image is being protected
            await asyncio.sleep(0.005)
        second = asyncio.ensure_future(call(leaves))
        gate_runner = service.methods["gate"].runner
        while not gate_runner.pending:  # the second waits for the defender
            await asyncio.sleep(0.005)
        assert service.admitted == 2
        leaves.set()
        answer = await second
        assert answer[0]["status"] == 499 and service.admitted == 1  # its place is free again
        gate.release.set()
        done = await first
        stays.set()
        return done

    done = asyncio.run(scenario())
    assert done[0]["status"] == 200
    service.close()
    assert gate.calls == 1  # the image of the client that left was never computed


class Broken(Defender):
    """Fails on its first call, then works."""

    name: ClassVar[str] = "test_broken"
    failed = False

    def _perturb(self, images, generator):
        if not self.failed:
            self.failed = True
            raise RuntimeError("boom\nsecond line")
        return images + self.config.eps


def test_a_defender_bug_is_a_one_line_500_and_the_worker_lives_on():
    client = TestClient(create_app({"broken": Broken(eps=EPS, device="cpu")}))
    png = encoded(photo())
    assert_one_line_error(client.post("/v1/protect", files={"file": ("a.png", png, "image/png")}), 500, "internal error (RuntimeError)")
    assert client.post("/v1/protect", files={"file": ("a.png", png, "image/png")}).status_code == 200
    client.app.state.service.close()


def test_token_is_required_when_set_and_compared_in_constant_time(monkeypatch):
    client = TestClient(create_app({"example_texture": {"eps": EPS}}, token="s3cret"))
    png = encoded(photo())
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}, {"Authorization": "Basic s3cret"}):
        assert_one_line_error(client.post("/v1/protect", files={"file": ("a.png", png, "image/png")}, headers=headers), 401, "token")
    assert client.get("/v1/methods").status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert client.post("/v1/protect", files={"file": ("a.png", png, "image/png")}, headers=good).status_code == 200
    assert client.get("/healthz").json()["token_required"] is True  # no token needed for liveness
    assert client.get("/").status_code == 200
    client.app.state.service.close()

    import hmac

    compared = []
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or a == b)
    assert token_matches("abc", "Bearer abc") and not token_matches("abc", "Bearer abd") and token_matches(None, None)
    assert compared == [(b"abc", b"abc"), (b"abd", b"abc")]


def test_only_loopback_binds_without_a_token():
    for host in ("127.0.0.1", "127.5.0.1", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
        check_bind(host, None)
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(ConfigError, match="token"):
            check_bind(host, None)
        check_bind(host, "a-token")


def test_cli_refuses_a_public_bind_without_a_token_in_one_line(monkeypatch):
    import typer.main
    from click.testing import CliRunner

    from facedefense.cli import build_app

    monkeypatch.delenv("FACEDEFENSE_TOKEN", raising=False)
    command = typer.main.get_command(build_app(with_plugins=False))  # converted once for the three runs
    result = CliRunner().invoke(command, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --host 0.0.0.0") and "FACEDEFENSE_TOKEN" in lines[0]
    result = CliRunner().invoke(command, ["serve", "-o", "eps=4/255"])
    assert result.exit_code == 2 and "need --method" in result.output
    result = CliRunner().invoke(command, ["serve", "--replicas", "2"])
    assert result.exit_code == 2 and "go with --ray" in result.output


# `facedefense --help` and `serve --help` import no web framework: checked in the fresh interpreter of
# tests/core/test_cli.py::test_version_listing_and_help_import_no_heavy_module_nor_web_framework.
