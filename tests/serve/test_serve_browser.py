"""The page in a real browser: Debian's ``chromium`` driven by Selenium through ``chromium-driver``.

Opens the page, chooses two photos, protects them, downloads the zip and checks the budget on the
downloaded files; then protects a third photo with an iterative method (a job). Skipped, with the
reason, when the browser, its driver or Selenium is missing (``apt-get install chromium
chromium-driver``; ``pip install selenium``). ``FACEDEFENSE_SCREENSHOTS=DIR`` keeps the page's
screenshots there (docs/images/ holds the ones the docs show).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'facedefense[serve]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium is not installed: pip install selenium")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                       reason="no chromium and chromedriver on PATH (apt-get install chromium chromium-driver)"),
]  # fmt: skip


def portraits(folder: Path) -> list[Path]:
    from facedefense.io import save_image
    from facedefense.testing.tiny_models import sample_faces

    paths = []
    for index, face in enumerate(sample_faces(3, 96)):
        path = folder / f"portrait-{index}.png"
        save_image(face, path)
        paths.append(path)
    return paths


@pytest.fixture
def server(tmp_path):
    import uvicorn

    from facedefense.serve import create_app
    from facedefense.serve.demo import build_demo_checkpoint

    checkpoint = build_demo_checkpoint(tmp_path)
    app = create_app({
        "rid": {"checkpoint": str(checkpoint), "engine": "module", "device": "cpu", "dtype": "float32"},
        "example_texture": {"eps": 4 / 255},
    })  # fmt: skip
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    running = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/"
    running.should_exit = True
    thread.join(10)
    app.state.service.close()


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out waiting for the page"
        time.sleep(0.1)
    return value


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("FACEDEFENSE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def test_the_page_protects_two_photos_and_the_zip_keeps_the_budget(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    photos = portraits(tmp_path)
    browser.get(server)
    wait(lambda: len(Select(browser.find_element(By.ID, "method")).options) == 2)
    assert not browser.find_element(By.ID, "demo").is_displayed()  # real checkpoints: no demo banner
    chooser = browser.find_element(By.ID, "files")
    browser.execute_script("arguments[0].classList.remove('hidden')", chooser)
    chooser.send_keys("\n".join(str(path) for path in photos[:2]))
    browser.execute_script("arguments[0].classList.add('hidden')", chooser)  # as a user sees the page
    browser.find_element(By.ID, "check").click()  # check my protection: the server's PSNR and SSIM
    browser.find_element(By.ID, "protect").click()
    checks = wait(lambda: (found := browser.find_elements(By.CSS_SELECTOR, ".check.ok")) and len(found) == 2 and found)
    assert all("within budget" in check.text and "PSNR" in check.text for check in checks)
    assert all("SSIM" in line.text for line in browser.find_elements(By.CSS_SELECTOR, ".metrics")) and len(
        browser.find_elements(By.CSS_SELECTOR, ".metrics")) == 2
    browser.find_elements(By.CSS_SELECTOR, ".tabs button")[1].click()  # the amplified difference
    screenshot(browser, "browser-difference.png")
    browser.find_elements(By.CSS_SELECTOR, ".tabs button")[0].click()
    screenshot(browser, "browser-page.png")

    browser.find_element(By.ID, "zip").click()
    archive = wait(lambda: next((p for p in browser.downloads.glob("*.zip") if p.stat().st_size), None))
    time.sleep(0.3)  # the download is renamed into place when complete
    bundle = zipfile.ZipFile(archive)
    assert bundle.testzip() is None
    assert sorted(bundle.namelist()) == ["manifest.json", "portrait-0.png", "portrait-1.png"]
    manifest = json.loads(bundle.read("manifest.json"))
    assert [entry["method"] for entry in manifest["images"]] == ["rid", "rid"]
    for path in photos[:2]:
        original = np.asarray(Image.open(path), dtype=int)
        written = np.asarray(Image.open(io.BytesIO(bundle.read(path.name))), dtype=int)
        assert written.shape == original.shape
        assert 0 < np.abs(written - original).max() <= 8  # the demo checkpoint's budget, 8/255

    # An iterative method runs as a job; its result is checked the same way.
    Select(browser.find_element(By.ID, "method")).select_by_value("example_texture")
    browser.execute_script("arguments[0].classList.remove('hidden')", chooser)
    chooser.send_keys(str(photos[2]))
    wait(lambda: browser.find_element(By.ID, "protect").is_enabled())
    browser.find_element(By.ID, "protect").click()
    wait(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".check.ok")) == 3)
    assert "of 4 gray levels" in browser.find_elements(By.CSS_SELECTOR, ".check.ok")[2].text
    assert not browser.find_elements(By.CSS_SELECTOR, ".error")
